"""Bad input through the real server: a clear error, a stable code, and nothing changed."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from media.participant import SyntheticParticipant
from signaling.endpoint import SIGNALING
from telehealth.appkeys import REFUSALS
from tests.conftest import RunningServer, start_server
from tests.test_hub import snapshot


async def seated(server: RunningServer) -> tuple[SyntheticParticipant, SyntheticParticipant, SyntheticParticipant]:
    room = server.create_room()
    people = (SyntheticParticipant(room.therapist_link, auto_admit=True),
              SyntheticParticipant(room.partner_links[0]), SyntheticParticipant(room.partner_links[1]))
    for person in people:
        await person.join()
    for person in people:
        await person.wait_for(lambda person=person: person.state == "in_call", 5)
    return people


async def last_error(person: SyntheticParticipant, count: int) -> dict[str, Any]:
    await person.wait_for(lambda: len(person.errors) >= count, 5)
    return person.errors[count - 1]


BAD_FRAMES = [
    ("{not json", "bad_json"),
    ('{"type": "teleport"}', "unknown_type"),
    ('{"type": "sdp", "to": "x"}', "invalid_message"),
    (json.dumps({"type": "sdp", "to": "x", "pc": "1", "description": {"type": "offer", "sdp": "x" * 70_000}}),
     "too_large"),
    ('{"type": "admit", "participant": "p_123"}', "forbidden"),
    ('{"type": "end"}', "forbidden"),
    ('{"type": "join", "token": "again"}', "already_joined"),
]


async def test_bad_frames_get_their_code_and_change_nothing(server: RunningServer) -> None:
    therapist, a, b = await seated(server)
    other_room = await seated(server)
    hub = server.app[SIGNALING].hub
    # Messages are handled inside aiohttp's parser, not queued for the handler task: an
    # aiohttp whose internals moved would silently lose that (and a tenth of a core).
    assert all(type(s.ws._reader).__name__ == "_Inbox" for s in server.app[SIGNALING].sockets)
    try:
        before = snapshot(hub)
        for i, (frame, code) in enumerate(BAD_FRAMES, 1):
            await a.send_raw(frame)
            error = await last_error(a, i)
            assert error["code"] == code, frame[:40]
            assert error["message"]
        # A target in another room is refused, and nothing reaches that room.
        stranger = other_room[0].me["id"]
        await a.send({"type": "sdp", "to": stranger, "pc": "1", "description": {"type": "offer", "sdp": "v=0"}})
        assert (await last_error(a, len(BAD_FRAMES) + 1))["code"] == "unknown_target"
        assert snapshot(hub) == before
        assert a.bye is None and a._ws is not None  # the socket stays usable
        await a.send({"type": "ping", "t": 1})
        await a.wait_message("pong")
        assert not [m for m in other_room[0].received if m.get("from") == a.me["id"]]
    finally:
        for person in (therapist, a, b, *other_room):
            await person.close()


async def test_message_over_the_hard_cap_closes_only_that_socket(server: RunningServer) -> None:
    therapist, a, b = await seated(server)
    try:
        await a.send_raw("x" * (server.config.max_message_bytes * 4 + 1))
        await a.wait_for(lambda: a.state == "disconnected", 5)
        await therapist.wait_message("presence", peer=a.me["id"], state="reconnecting")
        await a.join()  # and it can come back
        await a.wait_message("welcome", resumed=True)
    finally:
        for person in (therapist, a, b):
            await person.close()


async def test_messages_before_join_are_refused(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.base_url}/ws") as ws:
            await ws.send_str('{"type": "restart", "to": "p_1"}')
            reply = json.loads((await ws.receive()).data)
            assert reply["code"] == "not_joined"


@pytest.mark.parametrize("kind", ["forged", "malformed", "expired", "revoked"])
async def test_refused_links_over_signaling_and_http(make_config: Any, kind: str) -> None:
    server = await start_server(make_config())
    try:
        room = server.create_room(link_ttl=0.0 if kind == "expired" else 3600.0)
        link = room.partner_links[0]
        expected = {"forged": "bad_link", "malformed": "bad_link", "expired": "link_expired",
                    "revoked": "room_ended"}[kind]
        if kind == "forged":
            link = link[:-5] + ("AAAAA" if not link.endswith("AAAAA") else "BBBBB")
        elif kind == "malformed":
            link = link + "'<script>"
        elif kind == "revoked":
            server.store.end_room(room.room_id, time.time())
        person = SyntheticParticipant(link)
        try:
            await person.join()
            error = await last_error(person, 1)
            assert error["code"] == expected
            await person.wait_for(lambda: person.bye is not None, 5)
            assert person.bye["reason"] == "link_refused"
        finally:
            await person.close()
        assert server.app[SIGNALING].hub.rooms == {}
        async with aiohttp.ClientSession() as session:
            async with session.get(link) as response:
                body = await response.text()
                assert response.status in (404, 410)
                assert "Traceback" not in body and "<script>" not in body
                assert "ask your therapist" in body or "session has ended" in body
                assert response.headers["Cache-Control"] == "no-store"
                assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    finally:
        await server.runner.cleanup()


async def test_a_foreign_origin_cannot_open_the_socket(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(f"{server.base_url}/ws", headers={"Origin": "https://evil.example"})
        assert caught.value.status == 403
        async with session.ws_connect(f"{server.base_url}/ws", headers={"Origin": server.base_url}) as ws:
            await ws.send_str('{"type": "ping"}')
            assert json.loads((await ws.receive()).data)["type"] == "pong"


async def test_a_slow_reader_is_closed_without_stalling_the_room(make_config: Any) -> None:
    # The sender's budget is lifted here: this is about a reader that stops, not a flood
    # (test_sender_limits covers those).
    server = await start_server(make_config(send_queue_limit=8, sender_burst_bytes=2**30,
                                            sender_burst_messages=10_000))
    room = server.create_room()
    therapist = SyntheticParticipant(room.therapist_link, auto_admit=True)
    a = SyntheticParticipant(room.partner_links[0])
    try:
        await therapist.join()
        await a.join()
        await a.wait_for(lambda: a.state == "in_call", 5)
        async with aiohttp.ClientSession() as session:
            # b joins and is admitted, then stops reading, as a frozen tab would.
            b = await session.ws_connect(f"{server.base_url}/ws")
            await b.send_str(json.dumps({"type": "join", "token": room.partner_links[1].rsplit("/", 1)[1]}))
            await therapist.wait_for(lambda: len([m for m in therapist.received if m["type"] == "peer_joined"]) == 2, 5)
            b_id = [m for m in therapist.received if m["type"] == "peer_joined"][-1]["peer"]["id"]
            big = {"type": "sdp", "to": b_id, "pc": "1", "description": {"type": "offer", "sdp": "x" * 60_000}}
            for _ in range(400):
                await a.send(big)
                if any(m["type"] == "presence" and m["peer"] == b_id for m in therapist.received):
                    break
            await therapist.wait_message("presence", peer=b_id, state="reconnecting")
            # The room goes on for everyone else.
            await a.send({"type": "ping"})
            await a.wait_message("pong")
            await b.close()
    finally:
        await therapist.close()
        await a.close()
        await server.runner.cleanup()


async def test_health_and_readiness(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.base_url}/healthz") as r:
            assert r.status == 200
        async with session.get(f"{server.base_url}/readyz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"
        # A stalled background loop makes the server not ready.
        server.app[SIGNALING].last_tick -= 60
        async with session.get(f"{server.base_url}/readyz") as r:
            body = await r.json()
            assert r.status == 503 and "background loop stale" in body["problems"]


async def test_opening_links_too_often_is_rate_limited_with_a_clear_message(server: RunningServer) -> None:
    room = server.create_room()
    base = room.partner_links[0][:-6]
    async with aiohttp.ClientSession() as session:
        statuses = []
        for i in range(21):  # someone guessing links from one address
            async with session.get(f"{base}Z{i:05d}") as r:
                statuses.append(r.status)
        assert statuses[:20] == [404] * 20 and statuses[20] == 429
        async with session.get(f"{base}ZZZZZZ") as r:
            assert r.status == 429 and "Too many attempts" in await r.text()
    # The address is refused over signaling too, even with a good link, until it cools down.
    person = SyntheticParticipant(room.partner_links[1])
    try:
        await person.join()
        error = await last_error(person, 1)
        assert error["code"] == "rate_limited" and "wait" in error["message"]
    finally:
        await person.close()
    server.app[REFUSALS].flush()
    summary = {(e["actor"], e["detail"]["reason"]): e["detail"]["attempts"]
               for e in map(json.loads, server.store.audit.export()) if e["event"] == "link_rejected"}
    assert summary == {("web", "forged"): 20, ("web", "rate_limited"): 2, ("signaling", "rate_limited"): 1}


async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def test_a_connection_that_goes_silent_is_noticed_and_a_quiet_one_is_not(make_config: Any) -> None:
    """A partner whose network vanished sends nothing, not even a close: the server's pings
    go unanswered and it lets the room know. A partner who is quiet but there answers."""
    server = await start_server(make_config(heartbeat_seconds=0.2))
    room = server.create_room()
    therapist = SyntheticParticipant(room.therapist_link, auto_admit=True)
    await therapist.join()
    await therapist.wait_for(lambda: therapist.state == "in_call", 5)
    quiet, gone = (SyntheticParticipant(link) for link in room.partner_links)
    try:
        async with aiohttp.ClientSession() as session:
            # The quiet one reads, so aiohttp answers pings; the gone one never reads again.
            quiet_ws = await session.ws_connect(quiet.ws_url, autoping=True)
            gone_ws = await session.ws_connect(gone.ws_url, autoping=False)
            ids = []
            for ws, who in ((quiet_ws, quiet), (gone_ws, gone)):
                await ws.send_json({"type": "join", "v": 1, "token": who.token})
                while (msg := await ws.receive_json())["type"] != "welcome":
                    pass
                ids.append(msg["you"]["id"])
                if ws is quiet_ws:
                    reading = asyncio.ensure_future(drain(quiet_ws))
            quiet_id, gone_id = ids
            await therapist.wait_message("presence", timeout=5, peer=gone_id, state="reconnecting")
            # Two sweeps at least have passed: the quiet one was pinged, answered, and stays.
            changes = [m["state"] for m in therapist.received if m["type"] == "presence" and m["peer"] == quiet_id]
            assert "reconnecting" not in changes, changes
            assert not reading.done()
            reading.cancel()
    finally:
        await therapist.close()
        await server.runner.cleanup()
