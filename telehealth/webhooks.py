"""Ops webhooks: signed notices to the clinic's own endpoint when something happens.

Events: a room started (its therapist came in), a room ended or closed, a disruption ended
(its cause, steps and outcome), a partner was moved to the phone step. Payloads carry opaque
ids, roles, causes, steps and times only: ``OpsEvent`` refuses any other key and any value
that is not a number or a short id-like string, so a name or a phone number cannot be sent.

Each POST is JSON with ``X-Telehealth-Timestamp`` and ``X-Telehealth-Signature: sha256=<hex>``
(HMAC-SHA256 over ``timestamp + "." + body``; the phone dialer's requests are signed the same
way, by the same code: ``post_signed``), ``X-Telehealth-Event``
and ``X-Telehealth-Delivery`` (the same on every retry of one event, so a receiver can drop
duplicates). Delivery, in order, from one background task::

    emit --queue (bounded; full: the event is dropped and counted)--> POST
    POST --2xx--> delivered
    POST --network error, timeout, 429, 5xx--> wait (backoff doubling up to backoff_max_s), again
    POST --other 4xx, or attempts used up--> failed (logged with the event and room id only)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

log = logging.getLogger("telehealth.webhooks")

SIGNATURE_HEADER = "X-Telehealth-Signature"
TIMESTAMP_HEADER = "X-Telehealth-Timestamp"
EVENT_HEADER = "X-Telehealth-Event"
DELIVERY_HEADER = "X-Telehealth-Delivery"


class OpsEventKind(str, enum.Enum):
    ROOM_STARTED = "room_started"
    ROOM_ENDED = "room_ended"
    DISRUPTION = "disruption"
    PHONE_FALLBACK = "phone_fallback"


# Keys a payload may carry. Adding one is a privacy decision, made here in review.
FIELDS = frozenset({
    "room_id", "person_id", "role", "callee_id", "therapist_id",  # opaque ids and roles
    "reason",  # room_ended: "ended" (by the therapist or an operator) or "closed" (all gone)
    "cause", "outcome", "steps",  # disruption: attributed cause, outcome, the steps taken
    "at", "started_at", "ended_at",  # times, seconds since the epoch
})
# At shutdown, how long queued events may still take to go out.
DRAIN_SECONDS = 2.0
_OPAQUE = re.compile(r"^[A-Za-z0-9_.:-]{0,64}$")

Value = str | int | float | bool | None | Sequence[str]


def _check(key: str, value: Value) -> Value:
    # Errors name the key only: the refused value may be the very thing to keep out.
    if key not in FIELDS:
        raise ValueError(f"ops webhook field {key!r} is not in FIELDS")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"ops webhook field {key!r} must be a finite number")
        return value
    if isinstance(value, str):
        if not _OPAQUE.match(value):
            raise ValueError(f"ops webhook field {key!r} must be an id-like string")
        return value
    return [_check(key, item) for item in value]  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class OpsEvent:
    """One notice. Built through the functions below; refuses anything but FIELDS of ids."""

    kind: OpsEventKind
    fields: Mapping[str, Value]
    delivery: str = field(default_factory=lambda: secrets.token_hex(8))

    def __post_init__(self) -> None:
        for key, value in self.fields.items():
            _check(key, value)

    def body(self) -> bytes:
        payload = {"event": self.kind.value, "delivery": self.delivery, **self.fields}
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def room_started(room_id: str, at: float) -> OpsEvent:
    return OpsEvent(OpsEventKind.ROOM_STARTED, {"room_id": room_id, "at": at})


def room_ended(room_id: str, at: float, reason: str) -> OpsEvent:
    return OpsEvent(OpsEventKind.ROOM_ENDED, {"room_id": room_id, "at": at, "reason": reason})


def disruption(
    room_id: str, person_id: str, role: str | None, cause: str, started_at: float,
    ended_at: float | None, outcome: str | None, steps: Sequence[str],
) -> OpsEvent:
    return OpsEvent(OpsEventKind.DISRUPTION, {
        "room_id": room_id, "person_id": person_id, "role": role, "cause": cause,
        "started_at": started_at, "ended_at": ended_at, "outcome": outcome, "steps": list(steps),
    })


def phone_fallback(room_id: str, callee_id: str, therapist_id: str, at: float) -> OpsEvent:
    return OpsEvent(OpsEventKind.PHONE_FALLBACK, {
        "room_id": room_id, "callee_id": callee_id, "therapist_id": therapist_id, "at": at,
    })


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``timestamp.body``: a receiver can reject replays by time."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


async def post_signed(
    session: aiohttp.ClientSession, url: str, secret: str, body: bytes, *, attempts: int,
    backoff_s: float, backoff_max_s: float = math.inf, clock: Callable[[], float] = time.time,
    headers: Mapping[str, str] | None = None,
) -> int | None:
    """POST a signed JSON ``body`` (these webhooks and the phone dialer's, telehealth/dialers.py).

    A network error, a timeout, 429 or 5xx is tried again after a wait that doubles, up to
    ``backoff_max_s``. Returns the status that ended it (below 300: delivered; any other:
    refused), or None when ``attempts`` ran out first. Freshly stamped and signed each time.
    """
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        stamp = str(int(clock()))
        sent = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: sign(secret, stamp, body), **(headers or {})}
        try:
            async with session.post(url, data=body, headers=sent) as response:
                if response.status < 300 or (response.status < 500 and response.status != 429):
                    return response.status
        except (TimeoutError, aiohttp.ClientError):
            pass
        if attempt < attempts:
            await asyncio.sleep(delay)
            delay = min(delay * 2, backoff_max_s)
    return None


class OpsWebhooks:
    """Delivers OpsEvents to one URL, in order, from the task ``run`` (see the module doc).

    ``delivered``, ``failed`` and ``dropped`` count events for tests and operators.
    """

    def __init__(
        self, url: str, secret: str, *, attempts: int = 5, backoff_s: float = 1.0,
        backoff_max_s: float = 60.0, timeout_s: float = 5.0, queue_limit: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("an ops webhook needs a secret to sign with")
        self.url = url
        self.secret = secret
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.clock = clock
        self.queue: asyncio.Queue[OpsEvent] = asyncio.Queue(queue_limit)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def emit(self, event: OpsEvent) -> None:
        """Queue an event; never blocks the caller (the signaling loop)."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("ops webhook queue full: %s dropped", event.kind.value,
                        extra={"room_id": event.fields.get("room_id"), "event": event.kind.value})

    async def run(self) -> None:
        """Deliver queued events until cancelled."""
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            while True:
                event = await self.queue.get()
                try:
                    if await self.deliver(session, event):
                        self.delivered += 1
                    else:
                        self.failed += 1
                finally:
                    self.queue.task_done()

    async def deliver(self, session: aiohttp.ClientSession, event: OpsEvent) -> bool:
        room_id = event.fields.get("room_id")
        status = await post_signed(
            session, self.url, self.secret, event.body(), attempts=self.attempts, backoff_s=self.backoff_s,
            backoff_max_s=self.backoff_max_s, clock=self.clock,
            headers={EVENT_HEADER: event.kind.value, DELIVERY_HEADER: event.delivery})
        if status is not None and status < 300:
            return True
        if status is not None:
            log.warning("ops webhook refused %s: HTTP %s", event.kind.value,
                        status, extra={"room_id": room_id, "event": event.kind.value})
            return False
        log.warning("ops webhook unreachable after %d attempts: %s dropped", self.attempts,
                    event.kind.value, extra={"room_id": room_id, "event": event.kind.value})
        return False

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: deliver while the app runs; at the end, a little longer."""
        task = asyncio.create_task(self.run())
        yield
        # The rooms closed at shutdown are worth a moment to tell.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.queue.join(), DRAIN_SECONDS)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
