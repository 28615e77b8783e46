"""A session outlives its server process: live state on disk, back after a restart.

Signaling only (the media side is in tests/test_browser_restart.py): a second server on the
same data folder takes over from one that stopped writing (a crash), and every participant
comes back with the same identity, admissions, lock, phone step, hold and ledger.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from fallback import events as fe
from fallback.flow import FallbackFlow, VideoMode
from fallback.ledger import Step
from fallback.scoring import Cause
from signaling.endpoint import SIGNALING
from telehealth.config import Config
from tests.conftest import RunningServer, eventually, free_port, start_server
from tests.test_flow import A, F, room, run


class Client:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session, self.ws = session, ws
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def join(cls, base_url: str, link: str) -> Client:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(f"{base_url.replace('http', 'ws')}/ws")
        await ws.send_json({"type": "join", "v": 1, "token": link.rsplit("/", 1)[1]})
        return cls(session, ws)

    async def expect(self, match: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        for seen in self.seen:
            if match(seen):
                return seen
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            self.seen.append(data)
            if match(data):
                return data

    def typed(self, kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda m: m["type"] == kind

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


async def test_a_restart_mid_session_loses_no_admission_lock_phone_step_hold_or_ledger(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    first = await start_server(config)
    room = first.create_room()
    clients: list[Client] = []
    second: RunningServer | None = None
    try:
        therapist = await Client.join(first.base_url, room.therapist_link)
        await therapist.expect(therapist.typed("welcome"))
        partners = [await Client.join(first.base_url, link) for link in room.partner_links]
        clients += [therapist, *partners]
        ids = []
        for partner in partners:
            ids.append((await partner.expect(partner.typed("waiting")))["you"]["id"])
        for pid in ids:
            await therapist.ws.send_json({"type": "admit", "participant": pid})
        for partner in partners:
            await partner.expect(partner.typed("welcome"))
        a, b = ids
        await therapist.ws.send_json({"type": "lock", "locked": True})
        await therapist.ws.send_json({"type": "switch_to_phone", "participant": a})
        await therapist.expect(lambda m: m["type"] == "call_prompt" and m["callee"] == a)
        await therapist.ws.send_json({"type": "hold"})
        await therapist.expect(lambda m: m["type"] == "fallback" and m["action"] == "hold")
        keeper = first.app[SIGNALING].keeper
        assert keeper is not None
        # Within a quarter second everything is on disk; then the server stops (a crash is
        # tests/test_browser_restart.py's, with SIGKILL) and a new one starts on the same data.
        await eventually(lambda: not keeper.pending(), timeout=5)
        crash_at = time.time()
        await first.runner.cleanup()
        second = await start_server(config.replace(port=free_port()))
        hub = second.app[SIGNALING].hub
        assert set(hub.rooms[room.room_id].members) == {therapist_id(second, room.room_id), a, b}

        back = [await Client.join(second.base_url, link)
                for link in (room.therapist_link, *room.partner_links)]
        clients += back
        welcomes = [await c.expect(c.typed("welcome")) for c in back]
        # Same people, resumed; nobody in the waiting room; the same side offers on each pair.
        assert [w["resumed"] for w in welcomes] == [True] * 3
        assert [w["you"]["id"] for w in welcomes[1:]] == ids
        assert welcomes[0]["room"]["locked"] is True
        first_welcome = await partners[1].expect(partners[1].typed("welcome"))
        before = {p["id"]: p["offer"] for p in first_welcome["peers"]}
        after = {p["id"]: p["offer"] for p in welcomes[2]["peers"]}
        assert before.items() <= after.items() and len(after) == 2
        # Others not back yet still show as in the call: their media never stopped.
        assert {p["state"] for w in welcomes for p in w["peers"]} == {"in_call"}
        for c in back:
            assert not any(m["type"] in ("waiting", "peer_joined") for m in c.seen)
            assert not any(m["type"] == "presence" for m in c.seen), c.seen
        # The flow's state is sent again: the phone step and the hold.
        t2 = back[0]
        await t2.expect(lambda m: m["type"] == "fallback" and m["action"] == "phone" and m["person"] == a)
        await t2.expect(lambda m: m["type"] == "fallback" and m["action"] == "hold" and m["waiting_for"] == a)

        await t2.ws.send_json({"type": "get_ledger"})
        rows = (await t2.expect(t2.typed("ledger")))["rows"]
        phone = [r for r in rows if r["person"] == a and r["cause"] != "server_restart"]
        assert {r["step"] for r in phone} >= {"phone", "hold"}
        restart = [r for r in rows if r["cause"] == "server_restart"]
        assert {r["person"] for r in restart} == {therapist_id(second, room.room_id), a, b}
        for r in restart:
            # From the stop to the page back; nobody's network blamed.
            assert crash_at - 1.5 <= r["started_at"] <= time.time()
            assert r["outcome"] == "recovered" and r["ended_at"] is not None
    finally:
        for c in clients:
            await c.close()
        if second is not None:
            await second.runner.cleanup()
        else:
            await first.runner.cleanup()


async def test_a_lock_the_therapist_has_seen_is_on_disk_already(make_config: Callable[..., Config]) -> None:
    """A crash in the quarter second after a lock must not undo it: a SIGKILL right after the
    click came back unlocked (tests/test_browser_restart.py). Here the background pass waits
    a minute, so only the lock's own write can have put it on disk."""
    server = await start_server(make_config(store_poll_seconds=60.0))
    room = server.create_room()
    therapist = await Client.join(server.base_url, room.therapist_link)
    try:
        await therapist.expect(therapist.typed("welcome"))
        await therapist.ws.send_json({"type": "lock", "locked": True})
        await therapist.expect(lambda m: m["type"] == "room" and m["room"]["locked"] is True)
        keeper = server.app[SIGNALING].keeper
        assert keeper is not None
        (saved,) = [r for r in keeper.sessions.rooms() if r.room_id == room.room_id]
        assert json.loads(saved.state)["locked"] is True
    finally:
        await therapist.close()
        await server.runner.cleanup()


def therapist_id(server: RunningServer, room_id: str) -> str:
    record = server.store.get_room(room_id)
    assert record is not None
    return record.therapist.id


def test_the_flow_comes_back_from_its_snapshot_as_it_was() -> None:
    flow = room()
    run(flow, lambda t: {A: F}, 0, 6)
    assert flow.status(A).video == VideoMode.LOWERED
    data = json.loads(json.dumps(flow.snapshot()))
    again = FallbackFlow.restore(data)
    assert again.status(A) == flow.status(A) and again.ledger.entries == flow.ledger.entries
    again.server_restarted(100.0)
    again.handle(fe.SignalingBack(A), 103.0)
    restart = [d for d in again.ledger.entries if d.cause == Cause.SERVER_RESTART]
    assert [(d.person, d.started_at, d.ended_at, [s.step for s in d.steps]) for d in restart if d.person == A] == [
        (A, 100.0, 103.0, [Step.DROPPED, Step.BACK])]
    # The lowered video goes on where it was: still lowered, its disruption still open.
    assert again.status(A).video == VideoMode.LOWERED
