"""Request ids and per-request log lines on a real server: the route's pattern, never the token."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web

from telehealth import requestlog
from telehealth.app import create_app
from telehealth.config import Config
from tests.conftest import LogCapture, RunningServer, capturing_logs, eventually, free_port


@pytest.fixture
def lines() -> Iterator[LogCapture]:
    """Every record as the server would print it: a JSON line, with the request-id filter."""
    with capturing_logs(logging.INFO) as handler:
        requestlog.install([handler])
        yield handler


@pytest.fixture
async def logged_server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    config = make_config()
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    yield RunningServer(config, app, runner)
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_join_page_is_logged_by_its_pattern_never_its_token(
    logged_server: RunningServer, http: aiohttp.ClientSession, lines: LogCapture,
) -> None:
    room = logged_server.create_room()
    token = room.partner_links[0].rsplit("/", 1)[1]
    async with http.get(room.partner_links[0]) as response:
        assert response.status == 200
        request_id = response.headers["X-Request-Id"]
    async with http.get(f"{logged_server.base_url}/j/{'A' * 43}") as response:
        assert response.status == 404

    [ok, missing] = [r for r in lines.requests() if r["route"] == "/j/{token}"]
    assert (ok["method"], ok["status"], ok["request_id"]) == ("GET", 200, request_id)
    assert missing["status"] == 404
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] >= 0
    entry = lines.entries("telehealth.request")[0]
    assert entry["request_id"] == request_id
    assert str(entry["msg"]).startswith("GET /j/{token} 200 ")
    printed = "\n".join(lines.lines)
    assert token not in printed and "A" * 43 not in printed


async def test_a_well_formed_request_id_is_kept_and_a_bad_one_replaced(
    logged_server: RunningServer, http: aiohttp.ClientSession, lines: LogCapture,
) -> None:
    url = f"{logged_server.base_url}/healthz"
    async with http.get(url, headers={"X-Request-Id": "3f2a9c1e-proxy-id"}) as response:
        assert response.headers["X-Request-Id"] == "3f2a9c1e-proxy-id"
    for bad in ("short", "x" * 65, "abc def ghi jkl", 'id"}{"level":"error'):
        async with http.get(url, headers={"X-Request-Id": bad}) as response:
            given = response.headers["X-Request-Id"]
            assert given != bad and len(given) == 16
    ids = [r["request_id"] for r in lines.requests()]
    assert ids[0] == "3f2a9c1e-proxy-id" and len(set(ids)) == 5


async def test_lines_logged_during_a_request_carry_its_id(
    logged_server: RunningServer, http: aiohttp.ClientSession, lines: LogCapture,
) -> None:
    # A forged link on the signaling socket is logged by the endpoint, inside the socket's
    # upgrade request: that line carries the request's id.
    async with http.ws_connect(f"{logged_server.base_url.replace('http', 'ws')}/ws",
                               headers={"X-Request-Id": "socket-request-1"}) as ws:
        await ws.send_json({"type": "join", "v": 1, "token": "B" * 43})
        reply = await ws.receive_json(timeout=5)
        assert reply["code"] == "bad_link"
    await eventually(lambda: any(r["route"] == "/ws" for r in lines.requests()), 5.0)
    refused = [e for e in lines.entries("telehealth.signaling") if "bad_link" in str(e["msg"])]
    assert refused and refused[0]["request_id"] == "socket-request-1"
    [upgrade] = [r for r in lines.requests() if r["route"] == "/ws"]
    assert (upgrade["status"], upgrade["request_id"]) == (101, "socket-request-1")
    # Outside a request, nothing is attached.
    logging.getLogger("telehealth.test").info("between requests")
    assert "request_id" not in lines.entries("telehealth.test")[0]


async def test_routes_with_a_room_say_which_and_failures_are_errors(
    http: aiohttp.ClientSession, lines: LogCapture,
) -> None:
    async def fails(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def refuses(request: web.Request) -> web.Response:
        raise web.HTTPForbidden()

    app = web.Application(middlewares=[requestlog.middleware])
    app.router.add_get("/rooms/{room_id}/broken", fails)
    app.router.add_get("/rooms/{room_id}/closed", refuses)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with http.get(f"http://127.0.0.1:{port}/rooms/r_0123456789abcdef/broken") as response:
            assert response.status == 500
        async with http.get(f"http://127.0.0.1:{port}/rooms/r_0123456789abcdef/closed") as response:
            assert response.status == 403 and response.headers["X-Request-Id"]
        async with http.get(f"http://127.0.0.1:{port}/nowhere/at/all") as response:
            assert response.status == 404
    finally:
        await runner.cleanup()
    broken, closed, nowhere = lines.requests()
    assert (broken["route"], broken["status"], broken["levelname"]) == (
        "/rooms/{room_id}/broken", 500, "ERROR")
    assert broken["room_id"] == "r_0123456789abcdef"
    assert (closed["status"], closed["levelname"]) == (403, "INFO")
    assert (nowhere["route"], nowhere["status"]) == ("unmatched", 404)
    assert lines.entries("telehealth.request")[0]["room_id"] == "r_0123456789abcdef"
