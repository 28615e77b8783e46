"""The live rooms' read model (signaling/live.py) on a real server: what the ops dashboard
may read, and the quality history recorded whether or not the dashboard is mounted."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import aiohttp

from signaling.live import LIVE, LiveRooms
from telehealth.config import Config
from tests.conftest import eventually, start_server
from tests.test_keeper import Client

# What the read model must never hand out (the conftest's rooms: "Dr Test", "Partner n",
# +1 202 555 010n).
PRIVATE = ("Dr Test", "Partner 1", "Partner 2", "5550101", "5550102", "555 0101", "555 0102")


def stats_to(peer: str) -> dict[str, object]:
    return {"type": "stats", "links": [{"peer": peer, "rtt_ms": 20, "jitter_ms": 2, "loss": 0.0,
                                        "fps": 30, "packets_in": 1000, "bytes_in": 100_000,
                                        "frames_decoded": 300, "candidate": "host"}]}


async def test_history_is_recorded_without_the_ops_dashboard(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(), ops_dashboard=False)
    clients: list[Client] = []
    try:
        assert "ops-dashboard" not in running.app.router.named_resources()
        async with aiohttp.ClientSession() as http, http.get(f"{running.base_url}/ops") as response:
            assert response.status == 404
        live: LiveRooms = running.app[LIVE]
        room = running.create_room(partners=1)
        therapist = await Client.join(running.base_url, room.therapist_link)
        clients.append(therapist)
        me = (await therapist.expect(therapist.typed("welcome")))["you"]["id"]
        partner = await Client.join(running.base_url, room.partner_links[0])
        clients.append(partner)
        partner_id = (await partner.expect(partner.typed("waiting")))["you"]["id"]
        await therapist.ws.send_json({"type": "admit", "participant": partner_id})
        await partner.expect(partner.typed("welcome"))

        async def judged() -> bool:
            await therapist.ws.send_json(stats_to(partner_id))
            await partner.ws.send_json(stats_to(me))
            views = live.rooms()
            return bool(views and views[0].links and views[0].times)

        deadline = time.monotonic() + 10.0
        while not await judged():
            assert time.monotonic() < deadline, live.rooms()
            await asyncio.sleep(0.25)
        view, = live.rooms()
        assert view.id == room.room_id and view.started_at is not None
        assert [(p.role, p.state) for p in view.people] == [("therapist", "in_call"), ("partner", "in_call")]
        assert [link.key for link in view.links] == ["|".join(sorted((me, partner_id)))]
        for secret in PRIVATE:
            assert secret not in repr(dataclasses.astuple(view)), secret

        saved = live.saved
        await therapist.ws.send_json({"type": "end"})
        await eventually(lambda: live.saved > saved, 5.0)
        past = live.past_session(room.room_id)
        assert past is not None and past.links
        assert [p.room_id for p in live.past(limit=5)] == [room.room_id]
        assert live.rooms() == []
    finally:
        for client in clients:
            await client.close()
        await running.runner.cleanup()
