"""Hostile but well-formed inputs get a clear error and change nothing; no traceback reaches
the log, whatever they hold.

Through the real server, every log record captured at DEBUG: the console's forms (appointment
dates from year 1 to 9999 in the time zones furthest from UTC, names and numbers of every
shape), sign-in time zones, ops routes, page and network-check routes, cookies and headers.
Each answer is below 500, the log has no record with a traceback, and afterwards the console
still lists the rooms, the links still open their pages and the audit chain verifies. And the
CLI: every hostile argument exits 2 with one line saying what is wrong, not a traceback.

What this found and is now fixed: a far-future or far-past appointment in a time zone far from
UTC was stored and then made every console page answer 500 (the date could not be shown);
an unreadable password file or data folder ended the CLI in a traceback; ``--older-than`` and
``--starts-at`` took values that were not durations or times.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from telehealth import accounts, cli
from telehealth.tokens import check_link, hash_token
from tests.conftest import LogCapture, RunningServer
from tests.test_fuzz import FORMS, PASSWORD, SignedIn, set_cookies
from web.forms import LOGIN_COOKIE, SESSION_COOKIE

# The zones furthest from UTC either way, a zone with DST, and names that are not zones.
ZONES = ["Etc/GMT+12", "Etc/GMT-14", "Pacific/Kiritimati", "America/St_Johns", "UTC", "Factory",
         "right/UTC", "../../../etc/passwd", "Etc/GMT+12\x00", "A" * 63]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def sign_in(http: aiohttp.ClientSession, server: RunningServer, username: str, timezone: str,
                  path: str = "/console/login") -> SignedIn:
    async with http.get(f"{server.base_url}{path}") as page:
        nonce = set_cookies(page)[LOGIN_COOKIE].value
    async with http.post(f"{server.base_url}{path}", allow_redirects=False,
                         data={"csrf": nonce, "username": username, "password": PASSWORD, "timezone": timezone},
                         headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"}) as response:
        assert response.status == 303, await response.text()
        cookie = set_cookies(response)[SESSION_COOKIE].value
    return SignedIn(http, server.base_url, cookie, accounts.csrf_token(cookie))


@pytest.fixture
async def therapists(server: RunningServer, http: aiohttp.ClientSession) -> dict[str, SignedIn]:
    """One console session per time zone (the zone is chosen at sign-in)."""
    accounts.add_user(server.store, "drzone", PASSWORD, "therapist", now=time.time())
    return {zone: await sign_in(http, server, "drzone", zone) for zone in ZONES}


async def answer(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> int:
    async with http.request(method, url, allow_redirects=False, **kwargs) as response:
        # The ops live stream never ends by itself: its first event is enough.
        stream = response.content_type == "text/event-stream"
        body = await (response.content.readline() if stream else response.read())
        assert response.status < 500, (method, url, response.status, body[:300])
        return response.status


def local(moment: datetime.datetime) -> str:
    # %Y does not pad years below 1000 on every platform.
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M}"


@FORMS
@given(zone=st.sampled_from(ZONES), moment=st.datetimes(datetime.datetime(1, 1, 1), datetime.datetime(9999, 12, 31, 23, 59))
       | st.sampled_from([datetime.datetime(9999, 12, 31, 23, 59), datetime.datetime(1, 1, 1)]),
       name=st.sampled_from(["Alex", "\u202eAlex", "e\u0301" * 40, "<b>Alex</b>", "A" * 80]),
       phone=st.sampled_from(["", "+1 555 0100 200", "+" + "9" * 24, "\uff11\uff12\uff13\uff14\uff15\uff16"]))
async def test_console_appointments_of_any_date_in_any_zone_never_break_the_console(
    server: RunningServer, therapists: dict[str, SignedIn], captured_logs: LogCapture, zone: str,
    moment: datetime.datetime, name: str, phone: str,
) -> None:
    therapist = therapists[zone]
    before = len(server.store.list_rooms())
    status = await answer(therapist.http, "POST", f"{server.base_url}/console/rooms", headers=therapist.headers,
                          data={"csrf": therapist.csrf, "therapist": "Dr Zone", "partner1": name, "phone1": phone,
                                "starts_at": local(moment)})
    assert status in (201, 400)
    assert len(server.store.list_rooms()) == before + (status == 201)
    for signed in therapists.values():
        async with signed.http.get(f"{server.base_url}/console", headers=signed.headers) as page:
            assert page.status == 200, (zone, local(moment), page.status)
    assert not captured_logs.tracebacks, captured_logs.tracebacks[:3]


# Requests a careless or hostile visitor can make, each with its own path, headers and body.
def corpus(link: str, room_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    token = link.rsplit("/", 1)[1]
    sdp = {"type": "offer", "sdp": "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 x\r\n"}
    cookies = ["%00", "é" * 200, "a" * 129, "=;=;=", f"{SESSION_COOKIE}=\u00ff"]
    hosts = ["", "[::1", "evil.example", "a" * 300, "127.0.0.1:99999"]
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for path in ("/", "/console", "/console/login", "/ops", "/ops/live", f"/ops/sessions/{room_id}",
                 "/ops/sessions/%00", "/ops/sessions/r_0000000000000000", f"/j/{token}", f"/j/{token}/netcheck",
                 "/j/%00", "/j/" + "A" * 43, "/j/" + "A" * 4000, "/metrics", "/readyz", "/static/%2e%2e/x",
                 "/static/app.css%00", "/console?done=%ff%fe", "/j/" + token + "?x=" + "%00" * 50):
        requests.append(("GET", path, {}))
        requests.append(("GET", path, {"headers": {"Cookie": cookies[len(requests) % len(cookies)]}}))
        requests.append(("GET", path, {"headers": {"Host": hosts[len(requests) % len(hosts)]}}))
    for body in (b"", b"{}", b"[]", b"null", b'{"type": 1, "sdp": []}', b'{"type": "offer", "sdp": ""}',
                 b'{"type": "offer", "sdp": "' + b"x" * 70000 + b'"}', b"\xff\xfe",
                 b'{"type": "answer", "sdp": "v=0"}', str(sdp).replace("'", '"').encode()):
        for headers in ({}, {"Origin": "http://["}, {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
                        {"Content-Type": "multipart/form-data; boundary=x"}):
            requests.append(("POST", f"/j/{token}/netcheck", {"data": body, "headers": headers}))
    for path in ("/console/login", "/ops/login", "/console/rooms", f"/console/rooms/{room_id}/open",
                 f"/console/rooms/{room_id}/end", "/console/logout", "/ops/logout"):
        for body in (b"csrf=\x00&username=\xff", b"a=" + b"%" * 1000,
                     # Year 1 at UTC+14 (the therapist's zone below) is year 0 in UTC.
                     b"csrf=\x00&therapist=T&partner1=A&starts_at=0001-01-01T00:00",
                     b"--x\r\nContent-Disposition: form-data; name=\"csrf\"; filename=\"a\"\r\n\r\nabc\r\n--x--\r\n"):
            requests.append(("POST", path, {"data": body, "headers": {
                "Content-Type": "multipart/form-data; boundary=x" if body.startswith(b"--") else
                "application/x-www-form-urlencoded", "Origin": "null"}}))
    for auth in ("Bearer", "Bearer ", "Bearer \u00e9" * 3, "Basic Og==", "x" * 8000):
        requests.append(("GET", "/metrics", {"headers": {"Authorization": auth}}))
    return requests


async def test_hostile_requests_to_every_route_get_a_clear_answer_and_change_nothing(
    server: RunningServer, http: aiohttp.ClientSession, captured_logs: LogCapture,
) -> None:
    accounts.add_user(server.store, "drzone", PASSWORD, "therapist", now=time.time())
    accounts.add_user(server.store, "opsdesk", PASSWORD, "ops", now=time.time())
    room = server.create_room()
    therapist = await sign_in(http, server, "drzone", "Etc/GMT-14")
    operator = await sign_in(http, server, "opsdesk", "UTC", "/ops/login")
    rooms_before = [(r.id, r.ended_at) for r in server.store.list_rooms()]
    statuses: dict[int, int] = {}
    for method, path, kwargs in corpus(room.partner_links[0], room.room_id):
        for signed in (None, therapist, operator):
            options = dict(kwargs)
            if signed is not None:
                options["headers"] = {**signed.headers, **options.get("headers", {})}
                if method == "POST" and isinstance(options.get("data"), bytes) and b"csrf=" in options["data"]:
                    options["data"] = options["data"].replace(b"csrf=\x00", f"csrf={signed.csrf}".encode())
            status = await answer(http, method, f"{server.base_url}{path}", **options)
            statuses[status] = statuses.get(status, 0) + 1
    assert not captured_logs.tracebacks, captured_logs.tracebacks[:3]
    assert set(statuses) <= {200, 303, 400, 401, 403, 404, 405, 410, 413, 414, 429, 431}, statuses
    # Nothing changed: the same rooms, none ended, and every link still lets its person in (read
    # from the store: this many requests for one link from one address are rate limited, 429).
    assert [(r.id, r.ended_at) for r in server.store.list_rooms()] == rooms_before
    for link in (room.therapist_link, *room.partner_links):
        check_link(server.store.find_link(hash_token(link.rsplit("/", 1)[1])), time.time())
    assert server.store.audit.verify().ok


# -- the CLI --------------------------------------------------------------------------------


def hostile_arguments(tmp: Path) -> list[list[str]]:
    data = ["--data-dir", str(tmp / "data")]
    a_file = tmp / "a-file"
    a_file.write_text("not a folder")
    binary = tmp / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    return [
        ["user", "add", *data, "--username", "drx", "--role", "ops", "--password-file", str(tmp / "missing")],
        ["user", "add", *data, "--username", "drx", "--role", "ops", "--password-file", str(tmp)],
        ["user", "add", *data, "--username", "drx", "--role", "ops", "--password-file", str(binary)],
        ["user", "add", *data, "--username", "\x00", "--role", "ops", "--password-file", str(a_file)],
        ["room", "list", "--data-dir", str(a_file)],
        ["room", "create", "--data-dir", str(a_file / "below"), "--therapist", "T", "--partner", "A"],
        ["room", "create", *data, "--therapist", "T", "--partner", "A", "--starts-at", "9999-12-31T23:59-12:00"],
        ["room", "create", *data, "--therapist", "T", "--partner", "A", "--starts-at", "0001-01-01T00:00+14:00"],
        ["room", "create", *data, "--therapist", "T", "--partner", "A", "--starts-at", "2026-12-01T10:00+99:00"],
        ["room", "create", *data, "--therapist", "T", "--partner", "A", "--starts-at", "tomorrow"],
        ["room", "create", *data, "--therapist", "\x00" * 100, "--partner", "A"],
        ["room", "end", *data, "r_\x00"],
        ["purge", *data, "--older-than=-5d"],
        ["purge", *data, "--older-than", "1e400d"],
        ["purge", *data, "--older-than", "nand"],
        ["audit", "export", *data, "--since", "0001-01-01T00:00+14:00", "--until", "the end"],
        ["turn", "config", "--realm", "bad realm\nx"],
    ]


def test_hostile_cli_arguments_exit_2_with_one_line_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["room", "create", "--data-dir", str(tmp_path / "data"), "--therapist", "T",
                     "--partner", "A", "--json"]) == 0
    capsys.readouterr()
    for argv in hostile_arguments(tmp_path):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's own refusal: usage, then one error line
            code = int(exc.code or 0)
            err = capsys.readouterr().err.strip().splitlines()[-1:]
        else:
            err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (argv, code)
        assert len(err) == 1 and err[0].startswith("telehealth"), (argv, err)
    # Nothing changed: still the one room made first.
    assert cli.main(["room", "list", "--data-dir", str(tmp_path / "data"), "--json"]) == 0
    assert capsys.readouterr().out.count('"room_id"') == 1
