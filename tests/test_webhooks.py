"""Ops webhooks against a real local receiver: signatures, retries with backoff, order, and
payloads that never carry a name or a number."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from telehealth import rooms
from telehealth import webhooks as wh
from telehealth.app import create_app
from telehealth.config import Config
from tests.conftest import RunningServer, eventually, free_port

SECRET = "test-ops-secret"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """The clinic's ops endpoint: records every attempt; answers from ``answers`` first."""

    url: str = ""
    attempts: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.attempts if d.headers.get("X-Answer") == "204"]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        status = self.answers.pop(0) if self.answers else 204
        headers["X-Answer"] = str(status)
        self.attempts.append(Delivery(headers, body, time.monotonic()))
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/ops", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}/ops"
    yield found
    await runner.cleanup()


def signature_ok(delivery: Delivery, secret: str = SECRET) -> bool:
    expected = wh.sign(secret, delivery.headers[wh.TIMESTAMP_HEADER], delivery.body)
    return hmac.compare_digest(expected, delivery.headers[wh.SIGNATURE_HEADER])


@pytest.fixture
async def hooks(receiver: Receiver) -> AsyncIterator[wh.OpsWebhooks]:
    sender = wh.OpsWebhooks(receiver.url, SECRET, attempts=4, backoff_s=0.2, timeout_s=2.0)
    task = asyncio.create_task(sender.run())
    yield sender
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_events_arrive_signed_in_order(receiver: Receiver, hooks: wh.OpsWebhooks) -> None:
    hooks.emit(wh.room_started("r_0123456789abcdef", 1000.0))
    hooks.emit(wh.phone_fallback("r_0123456789abcdef", "p_aaaaaaaaaaaa", "p_tttttttttttt", 1001.5))
    hooks.emit(wh.disruption("r_0123456789abcdef", "p_aaaaaaaaaaaa", "partner", "own_network",
                             1001.0, 1030.0, "recovered", ["ice_restart", "phone", "return_to_video"]))
    hooks.emit(wh.room_ended("r_0123456789abcdef", 1060.0, "ended"))
    await eventually(lambda: hooks.delivered == 4, 5.0)

    kinds = [d.payload["event"] for d in receiver.attempts]
    assert kinds == ["room_started", "phone_fallback", "disruption", "room_ended"]
    for delivery in receiver.attempts:
        assert signature_ok(delivery)
        assert not signature_ok(delivery, "another secret")
        assert delivery.headers[wh.EVENT_HEADER] == delivery.payload["event"]
        assert delivery.headers[wh.DELIVERY_HEADER] == delivery.payload["delivery"]
        assert delivery.headers["Content-Type"] == "application/json"
        assert abs(int(delivery.headers[wh.TIMESTAMP_HEADER]) - time.time()) < 60
    assert receiver.attempts[2].payload == {
        "event": "disruption", "delivery": receiver.attempts[2].payload["delivery"],
        "room_id": "r_0123456789abcdef", "person_id": "p_aaaaaaaaaaaa", "role": "partner",
        "cause": "own_network", "started_at": 1001.0, "ended_at": 1030.0, "outcome": "recovered",
        "steps": ["ice_restart", "phone", "return_to_video"],
    }


async def test_failures_are_retried_with_growing_waits(receiver: Receiver, hooks: wh.OpsWebhooks) -> None:
    receiver.answers = [503, 500, 429]
    hooks.emit(wh.room_started("r_0123456789abcdef", 1000.0))
    await eventually(lambda: hooks.delivered == 1, 10.0)
    assert [d.headers["X-Answer"] for d in receiver.attempts] == ["503", "500", "429", "204"]
    # One delivery id across the retries, so the receiver can drop duplicates.
    assert len({d.headers[wh.DELIVERY_HEADER] for d in receiver.attempts}) == 1
    assert all(signature_ok(d) for d in receiver.attempts)
    waits = [b.at - a.at for a, b in zip(receiver.attempts, receiver.attempts[1:])]
    assert waits[0] >= 0.18 and waits[1] >= 0.38 and waits[2] >= 0.78, waits


async def test_a_refusal_is_not_retried_and_the_next_event_still_goes(
    receiver: Receiver, hooks: wh.OpsWebhooks,
) -> None:
    receiver.answers = [400]
    hooks.emit(wh.room_started("r_0123456789abcdef", 1000.0))
    hooks.emit(wh.room_ended("r_0123456789abcdef", 1001.0, "closed"))
    await eventually(lambda: hooks.delivered == 1 and hooks.failed == 1, 5.0)
    assert [(d.payload["event"], d.headers["X-Answer"]) for d in receiver.attempts] == [
        ("room_started", "400"), ("room_ended", "204")]


async def test_an_unreachable_endpoint_is_given_up_after_the_attempts() -> None:
    sender = wh.OpsWebhooks(f"http://127.0.0.1:{free_port()}/ops", SECRET, attempts=3,
                            backoff_s=0.05, timeout_s=1.0)
    task = asyncio.create_task(sender.run())
    try:
        sender.emit(wh.room_started("r_0123456789abcdef", 1000.0))
        await eventually(lambda: sender.failed == 1, 5.0)
    finally:
        task.cancel()


async def test_a_full_queue_drops_instead_of_blocking() -> None:
    sender = wh.OpsWebhooks("http://127.0.0.1:9/ops", SECRET, queue_limit=2)
    for at in range(3):
        sender.emit(wh.room_started("r_0123456789abcdef", float(at)))
    assert (sender.queue.qsize(), sender.dropped) == (2, 1)


@pytest.mark.parametrize(("fields", "private"), [
    ({"room_id": "r_1", "name": "r_1"}, None),  # a key outside the allow-list
    ({"room_id": "Alex Morgan"}, "Alex Morgan"),  # spaces: a name
    ({"person_id": "+15555550101"}, "+15555550101"),  # "+": a phone number
    ({"person_id": "alex@example.com"}, "alex@example.com"),  # "@": an address
    ({"steps": ["phone", "call Alex"]}, "call Alex"),
    ({"at": float("nan")}, None),
])
def test_payloads_refuse_anything_but_ids(fields: dict[str, Any], private: str | None) -> None:
    with pytest.raises(ValueError) as refused:
        wh.OpsEvent(wh.OpsEventKind.ROOM_STARTED, fields)
    # The message names the key, never the refused value.
    assert private is None or private not in str(refused.value)


def test_a_webhook_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        wh.OpsWebhooks("http://127.0.0.1:9/ops", "")


# -- a real session ---------------------------------------------------------------------------


class Client:
    """A bare signaling client: joins with a link and keeps what the server says."""

    def __init__(self, http: aiohttp.ClientSession, link: str) -> None:
        self.http = http
        self.link = link
        self.received: list[dict[str, Any]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None

    async def join(self) -> None:
        base, token = self.link.rsplit("/j/", 1)
        self.ws = await self.http.ws_connect(f"{base.replace('http', 'ws', 1)}/ws")
        self.reader = asyncio.create_task(self._read(self.ws))
        await self.send({"type": "join", "v": 1, "token": token})

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            self.received.append(json.loads(message.data))

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_json(message)

    async def wait(self, kind: str) -> dict[str, Any]:
        await eventually(lambda: any(m["type"] == kind for m in self.received), 5.0)
        return next(m for m in self.received if m["type"] == kind)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


async def test_a_session_sends_its_events_without_a_name_or_number(
    make_config: Callable[..., Config], receiver: Receiver,
) -> None:
    from web import ops

    config = make_config()
    app = create_app(config)
    hooks = wh.OpsWebhooks(receiver.url, SECRET, backoff_s=0.1)
    ops.send_webhooks(app, hooks)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    server = RunningServer(config, app, runner)
    created = rooms.create_room(
        server.store, therapist="Dr Ada Quill",
        partners=[rooms.PartnerSpec("Alex Morgan", "+1 202 555 0120"),
                  rooms.PartnerSpec("Sam Lee", "+1 202 555 0130")],
        base_url=server.base_url, link_ttl=3600, now=time.time(),
    )
    receiver.answers = [503]  # the first delivery fails once: it is retried, in order
    try:
        async with aiohttp.ClientSession() as http:
            therapist, partner = Client(http, created.therapist_link), Client(http, created.partner_links[0])
            await therapist.join()
            await therapist.wait("welcome")
            await partner.join()
            waiting = await partner.wait("waiting")
            partner_id = waiting["you"]["id"]
            await therapist.send({"type": "admit", "participant": partner_id})
            await partner.wait("welcome")
            await therapist.send({"type": "switch_to_phone", "participant": partner_id})
            await therapist.wait("call_prompt")
            await therapist.send({"type": "return_to_video", "participant": partner_id})
            await therapist.send({"type": "end"})
            await therapist.wait("bye")
            await eventually(lambda: hooks.delivered == 4, 10.0)
            therapist_id = therapist.received[0]["you"]["id"]
            await therapist.close()
            await partner.close()
    finally:
        await runner.cleanup()

    payloads = [d.payload for d in receiver.attempts if d.headers["X-Answer"] == "204"]
    assert [p["event"] for p in payloads] == ["room_started", "phone_fallback", "disruption", "room_ended"]
    assert receiver.attempts[0].headers["X-Answer"] == "503"
    assert all(signature_ok(d) for d in receiver.attempts)
    started, phone, disruption, ended = payloads
    assert started["room_id"] == phone["room_id"] == disruption["room_id"] == ended["room_id"] == created.room_id
    assert (phone["callee_id"], phone["therapist_id"]) == (partner_id, therapist_id)
    assert (disruption["person_id"], disruption["role"], disruption["outcome"]) == (partner_id, "partner", "recovered")
    assert disruption["steps"] == ["phone", "return_to_video"]
    assert ended["reason"] == "ended"
    sent = "\n".join(d.body.decode() for d in receiver.attempts)
    # Names, and the numbers in any format (ids and times are hex and decimals: they could
    # hold a short run of these digits by chance, but not all ten).
    for private in ("Ada", "Quill", "Alex", "Morgan", "Sam Lee", "+1 202", "555 0120", "2025550120",
                    "2025550130"):
        assert private not in sent
