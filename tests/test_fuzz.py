"""Fuzzing the signaling endpoint and the HTTP forms of a real server with hypothesis.

Signaling: random JSON values, random messages with valid and invalid types and fields,
oversize frames and binary frames, sent by a partner in a live call and by a socket that has
not joined. Each must be answered with a documented error code (or, when it happens to be a
valid message, with nothing worse), never ``internal`` or a closed socket: a ping after it
gets its pong, and the hub's rooms are exactly as they were.

Forms: the console's and the ops sign-in, session creation with a valid CSRF token and random
fields, and the room actions with random ids: never a 500, always a clear 4xx (or the page
a valid form gets).

What the fuzzer found (huge numbers in stats reaching the scorer, a partner dropping from
the lobby left in the socket list, console forms that were not UTF-8 answered with a 500) is
fixed, and each has a test of its own below.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from signaling import protocol as p
from signaling.endpoint import SIGNALING
from telehealth import accounts
from telehealth.app import create_app
from telehealth.config import Config
from telehealth.errors import ErrorCode, ProtocolError
from tests.conftest import RunningServer
from tests.test_hub import snapshot
from web.forms import LOGIN_COOKIE, SESSION_COOKIE

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"

# The error codes docs/protocol.md documents; `internal` is documented as a bug of ours.
DOCUMENTED = set(re.findall(r"^\| `([a-z_]+)` \|", (ROOT / "docs" / "protocol.md").read_text().split(
    "## Errors", 1)[1].split("## Close reasons", 1)[0], re.MULTILINE))
# What the server may push to a partner in a call at any moment, unasked.
PUSHED = {"quality", "fallback", "notice", "presence", "peer_joined", "peer_media", "room", "sdp",
          "candidate", "restart", "mute_request"}

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def test_the_documented_codes_are_the_codes() -> None:
    assert DOCUMENTED == {code.value for code in ErrorCode}


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """The app as create_app builds it, with the ops pages mounted if it does not yet."""
    from web import ops

    # The sender's budget is lifted: hundreds of fuzzed frames on one socket are a flood by
    # design, and each must still get its own answer (test_sender_limits covers floods).
    config = make_config(sender_burst_messages=1_000_000, sender_burst_bytes=2**31)
    app = create_app(config)
    if "ops-dashboard" not in app.router.named_resources():
        ops.setup(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    yield RunningServer(config, app, runner)
    await runner.cleanup()


# -- a live room and raw sockets ------------------------------------------------------------


@dataclass
class Socket:
    """A raw signaling socket that keeps every message it gets."""

    ws: aiohttp.ClientWebSocketResponse
    received: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    reader: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.received.append(json.loads(message.data))
                self.arrived.set()
        self.closed = True
        self.arrived.set()

    async def wait(self, kind: str, timeout: float = 5.0, *, since: int = 0, **match: Any) -> dict[str, Any]:
        """The first message of ``kind`` matching ``match`` from index ``since`` on."""
        async def found() -> dict[str, Any]:
            while True:
                for m in self.received[since:]:
                    if m["type"] == kind and all(m.get(k) == v for k, v in match.items()):
                        return m
                if self.closed:
                    raise AssertionError(f"socket closed waiting for {kind}: {self.received[-3:]}")
                self.arrived.clear()
                await self.arrived.wait()
        return await asyncio.wait_for(found(), timeout)

    async def exchange(self, frame: str | bytes, n: float) -> list[dict[str, Any]]:
        """Send ``frame`` then a ping; everything that came back before the pong."""
        # A ping time no fuzzed ping will carry, so that its pong marks the end.
        t = -1e15 - n
        start = len(self.received)
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)
        await self.ws.send_json({"type": "ping", "t": t})
        pong = await self.wait("pong", since=start, t=t)
        replies = self.received[start:]
        return replies[:replies.index(pong)]


@dataclass
class LiveCall:
    server: RunningServer
    therapist: Socket
    partner: Socket
    waiting: Socket
    stranger: Socket
    ids: dict[str, str]
    pings: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


async def connect(http: aiohttp.ClientSession, server: RunningServer) -> Socket:
    ws = await http.ws_connect(f"{server.base_url.replace('http', 'ws', 1)}/ws",
                               max_msg_size=8 * 1024 * 1024)
    sock = Socket(ws)
    sock.start()
    return sock


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


@pytest.fixture
async def call(server: RunningServer) -> AsyncIterator[LiveCall]:
    room = server.create_room()
    async with aiohttp.ClientSession() as http:
        therapist, partner, waiting, stranger = [await connect(http, server) for _ in range(4)]
        await therapist.ws.send_json({"type": "join", "v": 1, "token": token_of(room.therapist_link)})
        welcome = await therapist.wait("welcome")
        await partner.ws.send_json({"type": "join", "v": 1, "token": token_of(room.partner_links[0])})
        await waiting.ws.send_json({"type": "join", "v": 1, "token": token_of(room.partner_links[1])})
        partner_id = (await partner.wait("waiting"))["you"]["id"]
        waiting_id = (await waiting.wait("waiting"))["you"]["id"]
        await therapist.ws.send_json({"type": "admit", "participant": partner_id})
        await partner.wait("welcome")
        ids = {"therapist": welcome["you"]["id"], "partner": partner_id, "waiting": waiting_id,
               "room": welcome["room"]["id"]}
        yield LiveCall(server, therapist, partner, waiting, stranger, ids)
        for sock in (therapist, partner, waiting, stranger):
            await sock.ws.close()


# -- what to send ---------------------------------------------------------------------------

# No lone surrogates: they cannot be sent as UTF-8 text at all.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
TYPES = sorted(p.CLIENT_TYPES) + ["", "JOIN", "pong", "welcome", "error", "admin", "sdp ", "__class__"]
FIELDS = ["to", "pc", "description", "candidate", "participant", "kind", "locked", "audio", "video",
          "links", "t", "v", "token", "step", "ok", "type", "peer"]


@st.composite
def messages(draw: st.DrawFn, ids: list[str]) -> dict[str, Any]:
    """A message-shaped dict: a real or made-up type, real or made-up fields and values."""
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # now and then, no type at all
        message["type"] = draw(st.sampled_from(TYPES) | TEXT)
    values = (JSON | st.sampled_from(ids) | st.sampled_from(["offer", "answer", "audio", "video",
              "ice_restart", "relay"]) | st.fixed_dictionaries({"type": st.sampled_from(["offer", "answer"]),
              "sdp": TEXT}) | st.lists(st.fixed_dictionaries({"peer": st.sampled_from(ids)}, optional={
                  "packets_in": st.integers(), "rtt_ms": st.floats(allow_nan=False), "loss": JSON}), max_size=9))
    for name in draw(st.lists(st.sampled_from(FIELDS) | TEXT, max_size=5)):
        message[name] = draw(values)
    return message


def shaped(ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Messages of every client type with fields of the right types (and random values):
    these reach the hub and the watch instead of stopping at the parser."""
    ref = st.sampled_from(ids) | st.text(min_size=1, max_size=70)
    pc = st.text(min_size=1, max_size=10)
    number = st.floats(allow_nan=False) | st.integers(-(2**40), 2**40)
    link_stats = st.fixed_dictionaries({"peer": ref}, optional={
        "pc": pc, "rtt_ms": number, "jitter_ms": number, "loss": number, "packets_in": st.integers(-5, 2**40),
        "fps": number, "candidate": st.sampled_from(["host", "srflx", "prflx", "relay"]), "video": st.booleans()})
    by_type: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "sdp": {"to": ref, "pc": pc, "description": st.fixed_dictionaries(
            {"type": st.sampled_from(["offer", "answer"]), "sdp": TEXT})},
        "candidate": {"to": ref, "pc": pc, "candidate": st.none() | st.fixed_dictionaries(
            {"candidate": TEXT}, optional={"sdpMid": TEXT, "sdpMLineIndex": st.integers(-1, 5)})},
        "restart": {"to": ref},
        "ping": {"t": number},
        "join": {"token": st.text(min_size=1, max_size=128), "v": st.just(1)},
        "media": {"audio": st.booleans(), "video": st.booleans()},
        "stats": {"links": st.lists(link_stats, max_size=9)},
        "admit": {"participant": ref}, "remove": {"participant": ref},
        "mute": {"participant": ref, "kind": st.sampled_from(["audio", "video"])},
        "lock": {"locked": st.booleans()}, "end": {}, "hold": {}, "resume": {}, "get_ledger": {},
        "switch_to_phone": {"participant": ref}, "return_to_video": {"participant": ref},
        "rejoin_result": {"step": st.sampled_from(["ice_restart", "fresh_connection", "page_rejoin"]),
                          "ok": st.booleans()},
    }
    return st.one_of(*(st.fixed_dictionaries({"type": st.just(kind), **fields})
                       for kind, fields in by_type.items()))


def frames(ids: list[str]) -> st.SearchStrategy[str | bytes]:
    oversize = st.integers(64 * 1024 - 20, 200 * 1024).map(
        lambda n: json.dumps({"type": "ping", "pad": "x" * n}))
    return st.one_of(
        JSON.map(json.dumps),
        messages(ids).map(json.dumps),
        shaped(ids).map(json.dumps),
        shaped(ids).map(json.dumps),
        TEXT,
        oversize,
        st.binary(max_size=300),
        messages(ids).map(lambda m: json.dumps(m).encode()),
    )


def ends_the_socket_by_design(frame: str | bytes) -> bool:
    """Inputs whose documented answer closes the socket or changes the room on purpose:
    ``leave``, and a ``join`` of another protocol version."""
    try:
        msg = p.parse_client(frame, 64 * 1024)
    except ProtocolError:
        return False
    return isinstance(msg, p.Leave) or (isinstance(msg, p.Join) and msg.v != p.VERSION)


def expected_error(frame: str | bytes) -> str | None:
    """The code a malformed frame must get, or None for a well-formed message."""
    try:
        p.parse_client(frame, 64 * 1024)
    except ProtocolError as exc:
        return exc.code.value
    return None


def answers(frame: str | bytes) -> set[str]:
    """Replies a well-formed frame may get besides an error: a ping's pong."""
    try:
        return {"pong"} if isinstance(p.parse_client(frame, 64 * 1024), p.Ping) else set()
    except ProtocolError:
        return set()


def check_replies(frame: str | bytes, replies: list[dict[str, Any]]) -> None:
    errors = [m for m in replies if m["type"] == "error"]
    others = [m for m in replies if m["type"] != "error" and m["type"] not in PUSHED | answers(frame)]
    assert not others, (frame[:200], others)
    for error in errors:
        assert error["code"] in DOCUMENTED and error["code"] != "internal", (frame[:200], error)
    expected = expected_error(frame)
    if expected is not None:
        assert [e["code"] for e in errors] == [expected], (frame[:200], errors)
    else:
        assert len(errors) <= 1, (frame[:200], errors)


# -- signaling ------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
async def test_a_partner_in_a_call_cannot_break_the_endpoint_or_the_room(call: LiveCall, data: st.DataObject) -> None:
    hub = call.server.app[SIGNALING].hub
    frame = data.draw(frames(list(call.ids.values())))
    assume(not ends_the_socket_by_design(frame))
    before = snapshot(hub)
    replies = await call.partner.exchange(frame, float(next(call.pings)))
    # --hypothesis-show-statistics tells how deep the inputs went.
    event(f"answered {sorted({m.get('code', m['type']) for m in replies}) or 'nothing'}")
    check_replies(frame, replies)
    assert not call.partner.closed
    assert snapshot(hub) == before


@FUZZ
@given(data=st.data())
async def test_a_socket_that_has_not_joined_gets_not_joined_or_a_parse_error(
    call: LiveCall, data: st.DataObject,
) -> None:
    hub = call.server.app[SIGNALING].hub
    frame = data.draw(frames(list(call.ids.values())))
    try:
        msg: p.ClientMessage | None = p.parse_client(frame, 64 * 1024)
    except ProtocolError:
        msg = None
    # A join would be judged by its link (and a refused link closes the socket, by design).
    assume(not isinstance(msg, p.Join))
    before = snapshot(hub)
    replies = await call.stranger.exchange(frame, float(next(call.pings)))
    codes = [m["code"] for m in replies if m["type"] == "error"]
    assert not [m for m in replies if m["type"] not in {"error"} | answers(frame)], replies
    if msg is None:
        assert codes == [expected_error(frame)]
    elif not isinstance(msg, p.Ping):
        assert codes == ["not_joined"], (frame[:200], codes)
    assert not call.stranger.closed
    assert snapshot(hub) == before


async def test_stats_with_huge_numbers_are_refused_not_a_crash(call: LiveCall) -> None:
    huge = json.dumps({"type": "stats", "links": [{"peer": call.ids["therapist"], "rtt_ms": 1.7e308}]})
    for t in (0.5, 0.75):
        replies = await call.partner.exchange(huge, t)
        assert "internal" not in [m.get("code") for m in replies], replies
    assert not call.partner.closed


async def test_a_partner_who_drops_from_the_waiting_room_is_cleaned_up(call: LiveCall) -> None:
    sig = call.server.app[SIGNALING]
    open_before = len(sig.sockets)
    await call.waiting.ws.close()
    deadline = asyncio.get_running_loop().time() + 3.0
    while len(sig.sockets) == open_before and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert len(sig.sockets) == open_before - 1


@pytest.mark.parametrize("size", [64 * 1024 + 1, 200 * 1024])
async def test_oversize_frames_get_too_large_and_the_socket_stays(call: LiveCall, size: int) -> None:
    hub = call.server.app[SIGNALING].hub
    before = snapshot(hub)
    frame = json.dumps({"type": "media", "audio": True, "video": True, "pad": "x" * size})
    replies = await call.partner.exchange(frame, 0.25)
    assert [m["code"] for m in replies if m["type"] == "error"] == ["too_large"]
    assert snapshot(hub) == before


async def test_frames_over_the_hard_cap_close_only_their_own_socket(call: LiveCall) -> None:
    hub = call.server.app[SIGNALING].hub
    before = snapshot(hub)
    await call.stranger.ws.send_str(json.dumps({"type": "ping", "pad": "x" * (300 * 1024)}))
    assert call.stranger.reader is not None
    await asyncio.wait_for(call.stranger.reader, 5.0)
    assert call.stranger.closed
    assert snapshot(hub) == before
    replies = await call.partner.exchange(json.dumps({"type": "media", "audio": True, "video": True}), 0.5)
    assert all(m["type"] in PUSHED for m in replies), replies


# -- forms ----------------------------------------------------------------------------------


def set_cookies(response: aiohttp.ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


@dataclass
class SignedIn:
    http: aiohttp.ClientSession
    base_url: str
    cookie: str
    csrf: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}", "Sec-Fetch-Site": "same-origin"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def sign_in(http: aiohttp.ClientSession, server: RunningServer, username: str,
                  path: str = "/console/login") -> SignedIn:
    async with http.get(f"{server.base_url}{path}") as page:
        nonce = set_cookies(page)[LOGIN_COOKIE].value
    async with http.post(f"{server.base_url}{path}", allow_redirects=False,
                         data={"csrf": nonce, "username": username, "password": PASSWORD},
                         headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"}) as response:
        assert response.status == 303
        cookie = set_cookies(response)[SESSION_COOKIE].value
    return SignedIn(http, server.base_url, cookie, accounts.csrf_token(cookie))


FORM_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120) | st.sampled_from(
    ["", " ", "\x00", "2026-11-20T10:00", "+1 555 0100 200", "a" * 5000, "<script>", "opsdesk"])
FORM_FIELDS = ["csrf", "username", "password", "timezone", "therapist", "partner1", "phone1", "partner2",
               "phone2", "starts_at"]


# Field names a browser could send (the client refuses control characters in them).
NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)


@st.composite
def forms(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(FORM_FIELDS) | NAMES, max_size=8))
    return {name: draw(FORM_TEXT) for name in names}


BODIES = st.one_of(
    forms().map(lambda form: ("form", form)),
    st.binary(max_size=400).map(lambda body: ("raw", body)),
)


async def post(http: aiohttp.ClientSession, url: str, body: tuple[str, Any], headers: dict[str, str]) -> int:
    kind, content = body
    extra = {} if kind == "form" else {"Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(url, data=content, headers={**headers, **extra}, allow_redirects=False) as response:
        text = await response.text(errors="replace")
        assert response.status < 500, (url, body, response.status, text[:300])
        assert text.strip(), (url, response.status)
        return response.status


FORMS = settings(max_examples=40, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
async def therapist(server: RunningServer, http: aiohttp.ClientSession) -> SignedIn:
    """Signed in once per test, however many examples run."""
    accounts.add_user(server.store, "drfuzz", PASSWORD, "therapist", now=time.time())
    return await sign_in(http, server, "drfuzz")


@pytest.fixture
async def operator(server: RunningServer, http: aiohttp.ClientSession) -> SignedIn:
    accounts.add_user(server.store, "opsdesk", PASSWORD, "ops", now=time.time())
    return await sign_in(http, server, "opsdesk", "/ops/login")


NONCE = "nonce-from-the-form"


@FORMS
@given(body=BODIES, with_cookie=st.booleans(), right_nonce=st.booleans(),
       path=st.sampled_from(["/console/login", "/ops/login"]))
async def test_sign_in_forms_answer_every_input_with_a_clear_4xx(
    server: RunningServer, http: aiohttp.ClientSession, body: tuple[str, Any], with_cookie: bool,
    right_nonce: bool, path: str,
) -> None:
    headers = {"Cookie": f"{LOGIN_COOKIE}={NONCE}"} if with_cookie else {}
    if right_nonce and body[0] == "form":
        # The nonce matches, so the credentials themselves get checked (and refused).
        body = ("form", {**body[1], "csrf": NONCE})
    status = await post(http, f"{server.base_url}{path}", body, headers)
    assert status in (400, 401, 403, 429), status


@FORMS
@given(form=forms(), csrf=st.sampled_from(["valid", "missing", "wrong"]))
async def test_creating_a_session_answers_every_form_without_a_500(
    therapist: SignedIn, form: dict[str, str], csrf: str,
) -> None:
    # Bodies that are not forms at all have a test of their own below.
    if csrf == "valid":
        form["csrf"] = therapist.csrf
    elif csrf == "missing":
        form.pop("csrf", None)
    else:
        form["csrf"] = accounts.csrf_token("another session")
    status = await post(therapist.http, f"{therapist.base_url}/console/rooms", ("form", form),
                        therapist.headers)
    if csrf == "valid":
        assert status in (201, 400), status
    else:
        assert status == 403, status


async def test_console_forms_refuse_a_body_that_is_not_utf8(therapist: SignedIn) -> None:
    for path in ("/console/login", "/console/rooms", "/console/logout"):
        status = await post(therapist.http, f"{therapist.base_url}{path}", ("raw", b"csrf=\x80"),
                            therapist.headers)
        assert status == 400, (path, status)


async def test_ops_forms_refuse_a_body_that_is_not_utf8(operator: SignedIn) -> None:
    for path in ("/ops/login", "/ops/logout"):
        status = await post(operator.http, f"{operator.base_url}{path}", ("raw", b"csrf=\x80"),
                            operator.headers)
        assert status == 400, (path, status)


@FORMS
@given(room_id=TEXT, person_id=TEXT, action=st.sampled_from(["open", "end", "link"]))
async def test_room_actions_with_any_ids_are_refused_clearly(
    therapist: SignedIn, room_id: str, person_id: str, action: str,
) -> None:
    assume(room_id.strip("./") and person_id.strip("./"))
    room, person = quote(room_id, safe=""), quote(person_id, safe="")
    path = f"/console/rooms/{room}/people/{person}/link" if action == "link" else f"/console/rooms/{room}/{action}"
    status = await post(therapist.http, f"{therapist.base_url}{path}", ("form", {"csrf": therapist.csrf}),
                        therapist.headers)
    assert status == 404, status


@FORMS
@given(room_id=TEXT)
async def test_past_sessions_with_any_id_are_not_found(
    server: RunningServer, operator: SignedIn, room_id: str,
) -> None:
    assume(room_id.strip("./"))
    async with operator.http.get(f"{operator.base_url}/ops/sessions/{quote(room_id, safe='')}",
                                 headers=operator.headers, allow_redirects=False) as response:
        assert response.status == 404, (room_id, response.status)
    assert server.store.audit.verify().ok
