"""The fallback flow with real peers and a real network cut.

The therapist and partner A are aiortc participants on the host; partner B runs in its own
network namespace, so cutting the namespace's link cuts B's media and signaling only. The
server must see B as lost within 2 s from the others' stats alone, tell everyone in plain
words, and — if B does not come back within the rejoin window — put the phone step in front
of the therapist with B's number, and call the clinic's phone system (a real local receiver).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from media.participant import SyntheticParticipant
from telehealth.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.conftest import RunningServer, free_port, start_server
from tests.netfault import Namespace
from tests.remote_participant import CounterWatch, call, media_everywhere

pytestmark = pytest.mark.netns

WINDOW = 6.0
WEBHOOK_SECRET = "test-phone-secret"


class PhoneSystem:
    """The clinic's phone system: a real HTTP receiver that checks the signature."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.received = asyncio.Event()
        self.failures_left = 1  # the first attempt fails: the dialer must retry

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = sign(WEBHOOK_SECRET, request.headers[TIMESTAMP_HEADER], body)
        if not hmac.compare_digest(expected, request.headers[SIGNATURE_HEADER]):
            return web.Response(status=401)
        if self.failures_left:
            self.failures_left -= 1
            return web.Response(status=503)
        self.calls.append(json.loads(body))
        self.received.set()
        return web.Response(status=204)


@pytest.fixture
async def phone_system() -> AsyncIterator[tuple[PhoneSystem, str]]:
    system = PhoneSystem()
    app = web.Application()
    app.router.add_post("/dial", system.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield system, f"http://127.0.0.1:{port}/dial"
    await runner.cleanup()


@contextlib.asynccontextmanager
async def fallback_server(make_config: Any, webhook: str) -> AsyncIterator[RunningServer]:
    server = await start_server(make_config(
        host="0.0.0.0", rejoin_window_seconds=WINDOW, grace_seconds=WINDOW + 30,
        phone_webhook_url=webhook, phone_webhook_secret=WEBHOOK_SECRET,
    ))
    try:
        yield server
    finally:
        await server.runner.cleanup()


def quality_when(person: SyntheticParticipant, b_id: str, level: str) -> float | None:
    """monotonic time at which ``person`` first heard that B's quality is ``level``."""
    return next((t for t, m in person.timed if m["type"] == "quality" and m["people"].get(b_id) == level), None)


async def test_cut_partner_is_lost_within_2s_and_recovers_inside_the_window(
    make_config: Any, ns: Namespace, phone_system: tuple[PhoneSystem, str],
) -> None:
    async with fallback_server(make_config, phone_system[1]) as server, call(server, ns) as c:
        _t_id, _a_id, b_id = c.ids()
        await media_everywhere(c)
        await c.therapist.wait_for(lambda: quality_when(c.therapist, b_id, "good") is not None, 10)
        frames_from_b = CounterWatch(lambda: c.therapist.frames_from(b_id)["video"])

        cut = await ns.cut()
        await c.therapist.wait_for(lambda: quality_when(c.therapist, b_id, "lost") is not None, 5)
        detected = quality_when(c.therapist, b_id, "lost") - cut.began  # type: ignore[operator]
        assert detected < 2.0, f"lost after {detected:.2f} s"
        quality = next(m for _, m in reversed(c.therapist.timed) if m["type"] == "quality")
        assert quality["weak"] == b_id  # B's own network, not "everyone's call is poor"
        dropped = await c.therapist.wait_message("notice", kind="dropped", about=b_id)
        assert "Partner 2's connection dropped" in dropped["text"]
        told_a = await c.a.wait_message("notice", kind="dropped", about=b_id)
        assert "Partner 2" in told_a["text"] and "Please wait" in told_a["text"]

        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - cut.began)))  # a 3 s outage
        restored = await ns.restore()
        recovery = await frames_from_b.growth_after(restored.at, 5) - restored.began
        assert recovery < 2.0, f"video back after {recovery:.2f} s"
        await c.therapist.wait_message("notice", kind="back", about=b_id, timeout=5)
        frames_from_b.stop()
        assert not any(m["type"] == "call_prompt" for m in c.therapist.received)
        assert phone_system[0].calls == []
        print(f"detection {detected:.3f} s, recovery {recovery:.3f} s")


async def test_still_gone_at_the_end_of_the_window_brings_the_phone_step(
    make_config: Any, ns: Namespace, phone_system: tuple[PhoneSystem, str],
) -> None:
    system, url = phone_system
    async with fallback_server(make_config, url) as server, call(server, ns) as c:
        _t_id, _a_id, b_id = c.ids()
        await media_everywhere(c)
        cut = await ns.cut()
        prompt = await c.therapist.wait_message("call_prompt", timeout=WINDOW + 6)
        waited = time.monotonic() - cut.began
        assert WINDOW - 0.5 <= waited <= WINDOW + 4, waited
        assert prompt["callee"] == b_id
        assert prompt["text"] == "Call Partner 2 at +1 202-555-0102"
        assert prompt["href"] == "tel:+12025550102"
        told_a = await c.a.wait_message("notice", kind="phone", about=b_id)
        assert "Partner 2 will join by phone" in told_a["text"]
        # The clinic's phone system was asked to place the call, signed, after one retry.
        await asyncio.wait_for(system.received.wait(), 10)
        assert system.calls[0]["phone"] == "+12025550102" and system.calls[0]["callee_id"] == b_id
        # The ledger names what happened, by id, with times.
        await c.therapist.send({"type": "get_ledger"})
        ledger = await c.therapist.wait_message("ledger")
        steps = [row["step"] for row in ledger["rows"] if row["person"] == b_id]
        assert "dropped" in steps and "phone" in steps
        assert all("Partner" not in json.dumps(row) for row in ledger["rows"])
        audit = [json.loads(x) for x in server.store.audit.export()]
        assert any(e["event"] == "phone_switch" and e["person_id"] == b_id for e in audit)


async def test_a_page_that_reconnects_learns_the_phone_step_it_missed(make_config: Any) -> None:
    server = await start_server(make_config())
    room = server.create_room()
    therapist = SyntheticParticipant(room.therapist_link, auto_admit=True)
    a, b = SyntheticParticipant(room.partner_links[0]), SyntheticParticipant(room.partner_links[1])
    try:
        for person in (therapist, a, b):
            await person.join()
        for person in (therapist, a, b):
            await person.wait_for(lambda person=person: person.state == "in_call", 10)
        b_id = b.me["id"]
        # A is away while the therapist moves B to the phone.
        await a.drop_signaling()
        await b.drop_signaling()
        await therapist.wait_message("presence", peer=b_id, state="reconnecting")
        await therapist.send({"type": "switch_to_phone", "participant": b_id})
        await therapist.wait_message("call_prompt")
        await a.join()
        await a.wait_message("fallback", action="phone", person=b_id)
    finally:
        for person in (therapist, a, b):
            await person.close()
        await server.runner.cleanup()
