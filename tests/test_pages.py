"""The pages over HTTP: security headers, link errors, the network-check endpoint with a real
aiortc peer, and the console's login, CSRF and ownership rules."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
import zoneinfo
from collections.abc import AsyncIterator, Callable
from http.cookies import SimpleCookie

import aiohttp
import pytest
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from media.participant import SyntheticParticipant
from telehealth import accounts, rooms
from telehealth.appkeys import REFUSALS
from telehealth.config import Config
from telehealth.tokens import new_token
from tests.conftest import RunningServer, session_from, start_server
from web.forms import LOGIN_COOKIE, SESSION_COOKIE
from web.netcheck import PROBE

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # Cookies are handled by hand: these tests look at their flags, and aiohttp's jar would
    # (rightly) not send Secure cookies over plain http.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def set_cookies(response: aiohttp.ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


# -- headers and pages ------------------------------------------------------------------------


async def test_every_page_sends_strict_security_headers(server: RunningServer, http: aiohttp.ClientSession) -> None:
    room = server.create_room()
    for url in (room.partner_links[0], room.therapist_link, f"{server.base_url}/",
                f"{server.base_url}/console/login", f"{server.base_url}/j/{'A' * 43}",
                f"{server.base_url}/nowhere", f"{server.base_url}/static/session.js"):
        async with http.get(url, allow_redirects=False) as response:
            h = response.headers
            csp = h["Content-Security-Policy"]
            assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, url
            for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                              "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'",
                              "require-trusted-types-for 'script'"):
                assert directive in csp, (url, directive)
            assert h["Referrer-Policy"] == "no-referrer"
            assert h["X-Content-Type-Options"] == "nosniff"
            assert h["X-Frame-Options"] == "DENY"
            assert "camera=(self)" in h["Permissions-Policy"]
            expected_cache = "no-cache" if "/static/" in url else "no-store"
            assert h["Cache-Control"] == expected_cache, url


async def test_pages_have_no_inline_script_or_style_and_no_foreign_assets(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    room = server.create_room()
    for url in (room.partner_links[0], room.therapist_link, f"{server.base_url}/console/login"):
        async with http.get(url) as response:
            html = await response.text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), url
        assert "<style" not in html and " style=" not in html, url
        assert not re.search(r"""(src|href)=["']https?://""", html), url
        for script in re.findall(r'<script[^>]*src="([^"]+)"', html):
            assert script.startswith("/static/") and 'type="module"' in html


async def test_names_are_escaped_in_pages(server: RunningServer, http: aiohttp.ClientSession) -> None:
    created = rooms.create_room(
        server.store, therapist="Dr <b>Bold</b>", partners=[rooms.PartnerSpec("<script>alert(1)</script>")],
        base_url=server.base_url, link_ttl=3600, now=time.time(),
    )
    async with http.get(created.partner_links[0]) as response:
        html = await response.text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>Bold</b>" not in html


async def test_links_that_do_not_work_say_why(server: RunningServer, http: aiohttp.ClientSession) -> None:
    room = server.create_room()
    expired = server.create_room(link_ttl=-1)
    cases = {
        f"{server.base_url}/j/{new_token()}": (404, "not valid"),
        f"{server.base_url}/j/short": (404, "not valid"),
        expired.partner_links[0]: (410, "expired"),
    }
    for url, (status, words) in cases.items():
        async with http.get(url) as response:
            assert response.status == status, url
            assert words in await response.text()
    record = server.store.get_room(room.room_id)
    assert record is not None
    person = record.partners[0]
    rooms.reissue_link(server.store, record, person.id, base_url=server.base_url, link_ttl=3600, now=time.time())
    async with http.get(room.partner_links[0]) as response:
        assert response.status == 410 and "no longer works" in await response.text()
    rooms.end_room(server.store, room.room_id, now=time.time())
    async with http.get(room.therapist_link) as response:
        assert response.status == 410 and "ended" in await response.text()


# -- the network check ------------------------------------------------------------------------


async def offer_for_probe() -> tuple[RTCPeerConnection, RTCDataChannel]:
    """A peer like the page's: the two channels, the whole offer once gathering is done."""
    pc = RTCPeerConnection()
    ping = pc.createDataChannel("ping", ordered=False, maxRetransmits=0)
    pc.createDataChannel("bulk")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, ping


async def test_the_network_check_answers_a_real_peer_and_echoes_pings(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    room = server.create_room()
    url = f"{room.partner_links[0]}/netcheck"
    async with http.get(url) as response:
        assert response.status == 200
        assert (await response.json())["ice_servers"] == []
    pc, ping = await offer_for_probe()
    try:
        async with http.post(url, json={"type": "offer", "sdp": pc.localDescription.sdp}) as response:
            assert response.status == 200
            answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        opened = asyncio.Event()
        ping.on("open", opened.set)
        if ping.readyState != "open":
            await asyncio.wait_for(opened.wait(), 10)
        echoed: asyncio.Queue[str] = asyncio.Queue()
        ping.on("message", echoed.put_nowait)
        ping.send("7:hello")
        assert await asyncio.wait_for(echoed.get(), 5) == "7:hello"
        assert server.app[PROBE].running == 1
    finally:
        await pc.close()


async def test_the_network_check_refuses_forged_links_foreign_sites_and_crowds(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    room = server.create_room()
    url = f"{room.partner_links[0]}/netcheck"
    pc, _ = await offer_for_probe()
    offer = {"type": "offer", "sdp": pc.localDescription.sdp}
    try:
        async with http.post(f"{server.base_url}/j/{new_token()}/netcheck", json=offer) as response:
            assert response.status == 404 and (await response.json())["code"] == "bad_link"
        async with http.post(url, json=offer, headers={"Origin": "https://evil.example"}) as response:
            assert response.status == 403
        async with http.post(url, json=offer, headers={"Sec-Fetch-Site": "cross-site"}) as response:
            assert response.status == 403
        async with http.post(url, data=b"not json") as response:
            assert response.status == 400
        async with http.post(url, json={"type": "answer", "sdp": "v=0"}) as response:
            assert response.status == 400
        probe = server.app[PROBE]
        probe.max_checks = 1
        async with http.post(url, json=offer) as response:
            assert response.status == 200
        second, _ = await offer_for_probe()
        try:
            async with http.post(url, json={"type": "offer", "sdp": second.localDescription.sdp}) as response:
                assert response.status == 429 and (await response.json())["code"] == "rate_limited"
        finally:
            await second.close()
    finally:
        await pc.close()


# -- the console ------------------------------------------------------------------------------


class Staff:
    """A signed-in console user, with the cookie a browser would keep."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, cookie: str) -> None:
        self.http = http
        self.base_url = base_url
        self.cookie = cookie

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}"}

    async def csrf(self) -> str:
        async with self.http.get(f"{self.base_url}/console", headers=self.headers) as response:
            assert response.status == 200
            found = re.search(r'name="csrf" value="([^"]+)"', await response.text())
        assert found
        return found.group(1)

    async def post(self, path: str, form: dict[str, str], **headers: str) -> aiohttp.ClientResponse:
        return await self.http.post(f"{self.base_url}{path}", data=form, headers={**self.headers, **headers},
                                    allow_redirects=False)


async def sign_in(http: aiohttp.ClientSession, base_url: str, username: str, password: str) -> aiohttp.ClientResponse:
    async with http.get(f"{base_url}/console/login") as page:
        nonce = set_cookies(page)[LOGIN_COOKIE].value
        csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert csrf and csrf.group(1) == nonce
    return await http.post(
        f"{base_url}/console/login", allow_redirects=False,
        data={"csrf": nonce, "username": username, "password": password, "timezone": "Europe/Paris"},
        headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"},
    )


async def staff(http: aiohttp.ClientSession, server: RunningServer, username: str, role: accounts.StaffRole) -> Staff:
    accounts.add_user(server.store, username, PASSWORD, role, now=time.time())
    response = await sign_in(http, server.base_url, username, PASSWORD)
    assert response.status == 303 and response.headers["Location"] == "/console"
    return Staff(http, server.base_url, set_cookies(response)[SESSION_COOKIE].value)


async def test_signing_in_sets_a_strict_cookie_and_wrong_passwords_are_refused(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    async with http.get(f"{server.base_url}/console", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/console/login"
    accounts.add_user(server.store, "drtest", PASSWORD, "therapist", now=time.time())

    # The login form only works with the cookie it was served with.
    response = await http.post(f"{server.base_url}/console/login", allow_redirects=False,
                               data={"csrf": "x", "username": "drtest", "password": PASSWORD})
    assert response.status == 400

    for _ in range(5):
        response = await sign_in(http, server.base_url, "drtest", "wrong password!")
        assert response.status == 401 and "do not match" in await response.text()
    response = await sign_in(http, server.base_url, "drtest", PASSWORD)
    assert response.status == 429  # this address waits after five misses on this account

    # The account itself is not locked: from another address the right password works.
    async with session_from("127.0.0.2", cookie_jar=aiohttp.DummyCookieJar()) as elsewhere:
        response = await sign_in(elsewhere, server.base_url, "drtest", PASSWORD)
    assert response.status == 303
    cookie = set_cookies(response)[SESSION_COOKIE]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert set_cookies(await sign_in(http, server.base_url, "nobody", PASSWORD)).get(SESSION_COOKIE) is None


async def test_console_forms_need_the_csrf_token_and_this_site(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    user = await staff(http, server, "drtest", "therapist")
    csrf = await user.csrf()
    day = datetime.date.today() + datetime.timedelta(days=30)
    form = {"therapist": "Dr Test", "partner1": "Alex", "phone1": "+1 202 555 0120",
            "partner2": "Sam", "phone2": "", "starts_at": f"{day.isoformat()}T15:00"}
    assert (await user.post("/console/rooms", form)).status == 403
    assert (await user.post("/console/rooms", {**form, "csrf": "0" * 64})).status == 403
    assert (await user.post("/console/rooms", {**form, "csrf": csrf}, Origin="https://evil.example")).status == 403
    assert (await user.post("/console/rooms", {**form, "csrf": csrf}, **{"Sec-Fetch-Site": "same-site"})).status == 403

    response = await user.post("/console/rooms", {**form, "csrf": csrf}, **{"Sec-Fetch-Site": "same-origin"})
    assert response.status == 201
    links = re.findall(r'value="(http://[^"]+/j/[A-Za-z0-9_-]{43})"', await response.text())
    assert len(links) == 3
    record = server.store.list_rooms()[-1]
    # The time was read in the user's own zone.
    paris = datetime.datetime(day.year, day.month, day.day, 15, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    assert record.starts_at == paris.timestamp()
    assert [p.phone for p in record.partners] == ["+12025550120", None]

    bad = await user.post("/console/rooms", {**form, "partner1": "", "csrf": csrf})
    assert bad.status == 400 and "A name is required." in await bad.text()


async def test_a_therapist_manages_only_their_own_rooms_and_ending_one_closes_it_live(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    mine = await staff(http, server, "drone", "therapist")
    other = await staff(http, server, "drtwo", "therapist")
    form = {"therapist": "Dr One", "partner1": "Alex", "partner2": "Sam",
            "starts_at": datetime.datetime.fromtimestamp(time.time() + 600, zoneinfo.ZoneInfo("Europe/Paris"))
            .strftime("%Y-%m-%dT%H:%M")}
    created = await mine.post("/console/rooms", {**form, "csrf": await mine.csrf()})
    assert created.status == 201
    therapist_link = re.findall(r'value="(http://[^"]+/j/[A-Za-z0-9_-]{43})"', await created.text())[0]
    room_id = server.store.list_rooms()[-1].id

    async with http.get(f"{server.base_url}/console", headers=other.headers) as page:
        assert room_id not in await page.text()
    assert (await other.post(f"/console/rooms/{room_id}/end", {"csrf": await other.csrf()})).status == 403

    # "Open session" issues the therapist a fresh link; the old one stops working.
    opened = await mine.post(f"/console/rooms/{room_id}/open", {"csrf": await mine.csrf()})
    assert opened.status == 303 and re.search(r"/j/[A-Za-z0-9_-]{43}$", opened.headers["Location"])
    async with http.get(therapist_link) as response:
        assert response.status == 410

    therapist = SyntheticParticipant(opened.headers["Location"])
    try:
        await therapist.join()
        await therapist.wait_message("welcome")
        ended = await mine.post(f"/console/rooms/{room_id}/end", {"csrf": await mine.csrf()})
        assert ended.status == 303 and ended.headers["Location"] == "/console?done=ended"
        await therapist.wait_for(lambda: therapist.bye is not None, 5)
        assert therapist.bye and therapist.bye["reason"] == "room_ended"
    finally:
        await therapist.close()


async def test_signing_out_ends_the_session(server: RunningServer, http: aiohttp.ClientSession) -> None:
    user = await staff(http, server, "drtest", "therapist")
    response = await user.post("/console/logout", {"csrf": await user.csrf()})
    assert response.status == 303 and response.headers["Location"] == "/console/login"
    async with http.get(f"{server.base_url}/console", headers=user.headers, allow_redirects=False) as page:
        assert page.status == 303


@pytest.fixture
async def slow_refill_server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    # Sign-in budgets refilled over an hour: on a busy machine eleven sign-ins may take
    # longer than a minute's refill of one token, which is not what is tested.
    running = await start_server(make_config(login_window_seconds=3600.0))
    yield running
    await running.runner.cleanup()


async def test_logins_are_audited_and_one_address_guessing_passwords_is_slowed(
    slow_refill_server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    server = slow_refill_server
    accounts.add_user(server.store, "drlog", PASSWORD, "therapist", now=time.time())
    assert (await sign_in(http, server.base_url, "drlog", PASSWORD)).status == 303
    statuses = [(await sign_in(http, server.base_url, f"guess{i}", "not the password")).status for i in range(11)]
    assert statuses[:10] == [401] * 10 and statuses[10] == 429
    # Even the right password waits now, from that address.
    blocked = await sign_in(http, server.base_url, "drlog", PASSWORD)
    assert blocked.status == 429 and "Too many attempts" in await blocked.text()
    # Failures are summarised (one entry per address, reason and account a window), the
    # sign-in is an entry of its own.
    server.app[REFUSALS].flush()
    events = [json.loads(x) for x in server.store.audit.export()]
    logins = [(e["event"], e["actor"], e["detail"].get("reason"), e["detail"].get("attempts"))
              for e in events if e["event"].startswith("login")]
    user_id = accounts.list_users(server.store)[0].id
    assert sorted(logins, key=str) == sorted([
        ("login_ok", f"u_{user_id}", None, None),
        ("login_failed", None, "unknown_user", 10),
        ("login_failed", None, "rate_limited", 1),
        ("login_failed", f"u_{user_id}", "rate_limited", 1),
    ], key=str)
    assert "guess" not in json.dumps(events)
