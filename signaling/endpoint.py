"""The WebSocket endpoint: parse, validate, call the hub, deliver what it returns.

Only the handler task reads a socket. Messages go out straight into the transport while the
client keeps up; behind a slow client they queue, bounded, for a writer task, and a client
that cannot keep up is closed rather than allowed to stall its room (Galène's writer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from signaling import fastws
from signaling import protocol as p
from signaling.hub import HubEvent, Outbox, RoomHub
from signaling.keeper import SessionKeeper
from signaling.watch import RoomWatch
from telehealth import phones, rooms
from telehealth.audit import AuditEvent, AuditLog
from telehealth.config import Config
from telehealth.errors import ErrorCode, LinkError, ProtocolError, TelehealthError
from telehealth.origins import own_origin
from telehealth.ratelimit import LinkOpenLimits
from telehealth.refusals import RefusalTally
from telehealth.store import Store

log = logging.getLogger("telehealth.signaling")

# The hard cap at which aiohttp drops the socket; between max_message_bytes and this a
# message gets a `too_large` error and the socket stays open.
HARD_CAP_FACTOR = 4

StatsSink = Callable[[Any, Any, p.Stats, float], None]
EventSink = Callable[[HubEvent], None]
ErrorSink = Callable[[ErrorCode], None]


@dataclass(frozen=True, slots=True)
class SenderBudget:
    """What one socket may send: ``burst_*`` at once, then ``*_per_second``; in messages and
    in bytes. A flood is refused where it enters, so it never fills the queues of the people
    it is aimed at (whom the slow-reader rule would otherwise close)."""

    burst_messages: float
    messages_per_second: float
    burst_bytes: float
    bytes_per_second: float

    @classmethod
    def from_config(cls, config: Config) -> SenderBudget:
        return cls(config.sender_burst_messages, config.sender_messages_per_second,
                   config.sender_burst_bytes, config.sender_bytes_per_second)


# A sender over its budget is told once (`rate_limited`); if it sends this many more messages
# while still over, it is closed with `too_fast`.
REFUSED_BEFORE_CLOSE = 20


@dataclass
class Signaling:
    """Everything the endpoint needs; lives in the app under SIGNALING."""

    config: Config
    store: Store
    hub: RoomHub
    clock: Callable[[], float]
    # The fallback flow and quality monitor over the hub (signaling/watch.py).
    watch: RoomWatch
    audit: AuditLog | None = None
    # Refused joins are counted here and summarised, not audited one by one.
    refusals: RefusalTally | None = None
    link_limits: LinkOpenLimits = field(default_factory=LinkOpenLimits)
    # Each socket's sending budget, from the config.
    budget: SenderBudget = field(init=False)
    # Saves live room state as it changes (signaling/keeper.py), from expire_loop; set by the app.
    keeper: SessionKeeper | None = None
    stats_sinks: list[StatsSink] = field(default_factory=list)
    event_sinks: list[EventSink] = field(default_factory=list)
    error_sinks: list[ErrorSink] = field(default_factory=list)
    sockets: set[ClientSocket] = field(default_factory=set)
    # Messages received, for the messages-per-second metric (a plain int: the hot path).
    received: int = 0
    # time.monotonic() of the background loop's last pass, for /readyz.
    last_tick: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.budget = SenderBudget.from_config(self.config)

    def deliver(self, out: Outbox) -> None:
        encoded: dict[int, bytes] = {}
        for conn, msg in out.sends:
            data = encoded.get(id(msg))
            if data is None:
                data = encoded[id(msg)] = p.encode(msg)
            if not conn.send(data):  # type: ignore[attr-defined]
                self._drop_slow(conn)  # type: ignore[arg-type]
        for conn, reason in out.closes:
            conn.close_after_flush(reason)  # type: ignore[attr-defined]
        for event in out.events:
            # An observer's failure must not undo the room change that already happened,
            # nor stop the other observers: log it (no personal data) and go on.
            try:
                self.deliver(self.watch.on_hub_event(event, self.clock()))
                for sink in self.event_sinks:
                    sink(event)
            except Exception:
                log.exception("an observer failed on a %s event", event.kind, extra={"room_id": event.room_id})

    def _drop_slow(self, conn: ClientSocket) -> None:
        log.warning("closing a socket that cannot keep up", extra={"room_id": conn.room_id})
        conn.abort(p.CloseReason.TOO_SLOW)
        self.deliver(self.hub.disconnect(conn, self.clock()))


_CLOSE = object()
# Above this many bytes waiting in the transport, messages queue for the writer task instead.
WRITE_BUFFER_LIMIT = 64 * 1024


class ClientSocket:
    """One participant's socket and its way out.

    While the client keeps up, a message goes straight into the transport: no queue, no
    task switch. Only when the transport holds more than WRITE_BUFFER_LIMIT unsent bytes do
    messages queue, up to ``limit``, for a writer task that waits for the client to drain; a
    client that fills its queue is closed rather than allowed to stall its room (Galène's
    writer). Order is kept: while the writer has anything queued, everything queues behind it.

    What comes in is metered against a SenderBudget (``spend``): two counters that only go
    down per message, refilled for the time elapsed only when one runs out, so a sender
    within budget costs two subtractions a message.
    """

    __slots__ = ("ws", "transport", "backlog", "limit", "writer", "room_id", "closing", "heard", "pinged",
                 "address", "budget", "messages_left", "bytes_left", "refilled_at", "refused", "__weakref__")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, limit: int,
                 budget: SenderBudget, address: str = "?") -> None:
        self.ws = ws
        # The client's address (behind a trusted proxy, the one it forwarded), for the limits.
        self.address = address
        self.transport = transport
        self.backlog: deque[Any] = deque()
        self.limit = limit
        self.writer: asyncio.Task[None] | None = None
        self.room_id: str | None = None
        self.closing = False
        # Liveness (see liveness_loop): anything received since the last sweep; a ping sent.
        self.heard = True
        self.pinged = False
        self.budget = budget
        self.messages_left = budget.burst_messages
        self.bytes_left = budget.burst_bytes
        self.refilled_at = time.monotonic()
        # Messages refused in a row for being over budget.
        self.refused = 0

    def spend(self, size: int) -> bool:
        """Charge one received message of ``size`` bytes; False when the sender is over budget."""
        self.messages_left -= 1
        self.bytes_left -= size
        return (self.messages_left >= 0 and self.bytes_left >= 0) or self._refill()

    def _refill(self) -> bool:
        # Refused messages stay charged: a sender that keeps flooding stays in debt.
        budget, now = self.budget, time.monotonic()
        elapsed, self.refilled_at = now - self.refilled_at, now
        self.messages_left = min(budget.burst_messages, self.messages_left + elapsed * budget.messages_per_second)
        self.bytes_left = min(budget.burst_bytes, self.bytes_left + elapsed * budget.bytes_per_second)
        if self.messages_left >= 0 and self.bytes_left >= 0:
            self.refused = 0
            return True
        self.refused += 1
        return False

    def send(self, data: bytes) -> bool:
        if self.closing:
            return True
        if self.writer is None:
            transport = self.transport
            if transport.is_closing() or self.ws.closed:
                return True
            if transport.get_write_buffer_size() < WRITE_BUFFER_LIMIT:
                transport.write(fastws.text_frame(data))
                return True
        if len(self.backlog) >= self.limit:
            return False
        self._queue(data)
        return True

    def close_after_flush(self, reason: p.CloseReason) -> None:
        if self.closing:
            return
        self.closing = True
        self._queue((_CLOSE, reason))

    def abort(self, reason: p.CloseReason) -> None:
        self.closing = True
        self.backlog.clear()
        self._queue((_CLOSE, reason))

    def _queue(self, item: Any) -> None:
        self.backlog.append(item)
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write_backlog())

    async def _write_backlog(self) -> None:
        ws, backlog = self.ws, self.backlog
        try:
            while backlog:
                item = backlog.popleft()
                if item is None:
                    return
                if isinstance(item, tuple):
                    await ws.close(code=p.CLOSE_CODES[item[1]], message=item[1].value.encode())
                    return
                await ws.send_frame(item, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            return
        finally:
            self.writer = None

    async def finish(self, timeout: float) -> None:
        """The handler is done: let what is queued go out (and a queued close happen)."""
        writer = self.writer
        if writer is None:
            return
        if not self.closing:
            self.backlog.append(None)
        try:
            await asyncio.wait_for(writer, timeout=timeout)
        except (TimeoutError, ConnectionError):
            writer.cancel()


SIGNALING = web.AppKey("signaling", Signaling)


def origin_allowed(request: web.Request, config: Config) -> bool:
    """Browsers always send Origin; it must be our own site. Programs may omit it."""
    return own_origin(request, config.public_base_url, null=False)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    sig = request.app[SIGNALING]
    if not origin_allowed(request, sig.config):
        log.warning("websocket refused: foreign origin")
        raise web.HTTPForbidden(text="This page may only be used from its own site.")
    # No aiohttp heartbeat: it reschedules a timer on every message received. One sweep over
    # all sockets (liveness_loop) does the same job; so pings and pongs come to this loop.
    ws = web.WebSocketResponse(
        autoping=False,
        max_msg_size=sig.config.max_message_bytes * HARD_CAP_FACTOR,
        compress=False,
        decode_text=False,
    )
    await ws.prepare(request)
    transport = request.transport
    if transport is None:
        return ws
    sock = ClientSocket(ws, transport, sig.config.send_queue_limit, sig.budget,  # type: ignore[arg-type]
                        request.remote or "?")
    sig.sockets.add(sock)
    _handle_in_parser(sig, sock, request)
    try:
        # Data messages are handled in the parser (see _handle_in_parser); what comes here
        # is control frames, and data messages only if aiohttp lacks what that needs.
        async for msg in ws:
            sock.heard = True
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                sig.received += 1
                if sock.spend(len(msg.data)):
                    _handle(sig, sock, msg.data)
                else:
                    _over_budget(sock)
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
            if sock.closing:
                break
    finally:
        sig.sockets.discard(sock)
        sig.deliver(sig.hub.disconnect(sock, sig.clock()))
        await sock.finish(timeout=5.0)
        if not ws.closed:
            await ws.close()
        fastws.release(request)
    return ws


def _handle_in_parser(sig: Signaling, sock: ClientSocket, request: web.Request) -> None:
    """Data messages are handled inside aiohttp's parser (signaling/fastws.py says why)."""

    def on_data(data: bytes, size: int) -> None:
        sock.heard = True
        if not sock.closing:
            sig.received += 1
            if sock.spend(size):
                _handle(sig, sock, data)
            else:
                _over_budget(sock)

    fastws.install(sock.ws, request, sig.config.max_message_bytes * HARD_CAP_FACTOR, on_data)


def _handle(sig: Signaling, sock: ClientSocket, data: bytes) -> None:
    ref: str | None = None
    try:
        msg = p.parse_client(data, sig.config.max_message_bytes)
        ref = type(msg).__struct_config__.tag  # type: ignore[assignment]  # every client message is tagged by name
        _dispatch(sig, sock, msg)
    except LinkError as exc:
        _refuse(sig, sock, exc, ref)
        _say_bye(sock, p.CloseReason.LINK_REFUSED, p.RecoveryAction.NONE, exc.detail)
    except ProtocolError as exc:
        _refuse(sig, sock, exc, ref)
        if exc.close:
            _say_bye(sock, p.CloseReason.PROTOCOL, p.RecoveryAction.NONE, exc.detail)
    except TelehealthError as exc:
        _refuse(sig, sock, exc, ref)
    except Exception:
        log.exception("internal error handling a %s message", ref or "client",
                      extra={"room_id": sock.room_id})
        _refuse(sig, sock, TelehealthError(ErrorCode.INTERNAL), ref)
        _say_bye(sock, p.CloseReason.INTERNAL, p.RecoveryAction.RESUME, "")


TOO_FAST_WARNING = ("You are sending messages too fast. What you send now is dropped, "
                    "and the connection will close if this goes on.")
TOO_FAST_BYE = "This connection sent too much, too fast, and was closed."


def _over_budget(sock: ClientSocket) -> None:
    """A message over the sender's budget: dropped unread. The first is answered with
    `rate_limited`; after REFUSED_BEFORE_CLOSE more the socket is closed with `too_fast`
    (and the page reconnects, like after any drop)."""
    if sock.refused == 1:
        log.warning("a socket is over its sending budget", extra={"room_id": sock.room_id})
        sock.send(p.encode(p.Error(code=ErrorCode.RATE_LIMITED, message=TOO_FAST_WARNING)))
    elif sock.refused > REFUSED_BEFORE_CLOSE:
        log.warning("closing a socket that sends too fast", extra={"room_id": sock.room_id})
        _say_bye(sock, p.CloseReason.TOO_FAST, p.RecoveryAction.RESUME, TOO_FAST_BYE)


def _say_bye(sock: ClientSocket, reason: p.CloseReason, action: p.RecoveryAction, text: str) -> None:
    sock.send(p.encode(p.Bye(reason=reason, action=action, message=text)))
    sock.close_after_flush(reason)


def _refuse(sig: Signaling, sock: ClientSocket, exc: TelehealthError, ref: str | None) -> None:
    log.info("refused %s: %s", ref or "message", exc.code.value, extra={"room_id": sock.room_id})
    for sink in sig.error_sinks:
        sink(exc.code)
    sock.send(p.encode(p.error_message(exc, ref)))


def _dispatch(sig: Signaling, sock: ClientSocket, msg: p.ClientMessage) -> None:
    hub = sig.hub
    if isinstance(msg, (p.ClientSdp, p.ClientCandidate, p.ClientRestart)):
        sig.deliver(hub.relay(sock, msg))
    elif isinstance(msg, p.Stats):
        room, member = hub.seat_of(sock)
        now = sig.clock()
        judged = sig.watch.on_stats(room, member, msg, now)
        if judged is not None:
            sig.deliver(judged)
        for sink in sig.stats_sinks:
            sink(room, member, msg, now)
    elif isinstance(msg, p.Ping):
        sock.send(p.encode(p.Pong(t=msg.t, server_time=sig.clock())))
    elif isinstance(msg, p.Join):
        _join(sig, sock, msg)
    elif isinstance(msg, p.MediaState):
        sig.deliver(hub.set_media(sock, msg))
    elif isinstance(msg, p.Leave):
        sig.deliver(hub.leave(sock, sig.clock(), closing=msg.closing))
    elif isinstance(msg, p.Admit):
        _deliver_kept(sig, hub.admit(sock, msg.participant, sig.clock()))
    elif isinstance(msg, p.Remove):
        _deliver_kept(sig, hub.remove(sock, msg.participant, sig.clock()))
    elif isinstance(msg, p.Mute):
        sig.deliver(hub.mute(sock, msg.participant, msg.kind))
    elif isinstance(msg, p.Lock):
        _deliver_kept(sig, hub.lock(sock, msg.locked, sig.clock()))
    elif isinstance(msg, (p.SwitchToPhone, p.ReturnToVideo, p.Hold, p.Resume)):
        room, member = hub.seat_of(sock)
        _deliver_kept(sig, sig.watch.command(room, member, msg, sig.clock()))
    elif isinstance(msg, (p.RejoinResult, p.GetLedger)):
        room, member = hub.seat_of(sock)
        sig.deliver(sig.watch.command(room, member, msg, sig.clock()))
    elif isinstance(msg, p.CheckIn):
        sig.deliver(hub.check_in(sock, msg.answers))
    elif isinstance(msg, p.ConfirmPhone):
        _confirm_phone(sig, sock, msg)
    elif isinstance(msg, p.End):
        room_id = hub.require_therapist(sock)
        now = sig.clock()
        rooms.end_room(sig.store, room_id, now=now, actor="therapist")
        sig.deliver(hub.end_room(room_id, now))


def _deliver_kept(sig: Signaling, out: Outbox) -> None:
    """A therapist's decision (admit, remove, lock, the phone step, a hold) is on disk before
    anyone is told it happened: a crash in the keeper's next quarter second would otherwise
    undo a lock the therapist has already seen take effect. They are few; joins and stats
    still wait for the background pass."""
    if sig.keeper is not None:
        try:
            for event in out.events:
                sig.keeper.on_hub_event(event)
            sig.keeper.flush()
        except Exception:
            log.exception("saving live room state failed")
    sig.deliver(out)


def _join(sig: Signaling, sock: ClientSocket, msg: p.Join) -> None:
    if msg.v != p.VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, close=True)
    if sock in sig.hub.seats:
        raise ProtocolError(ErrorCode.ALREADY_JOINED)
    now = sig.clock()
    _, record, person = rooms.open_link(
        sig.store, msg.token, now=now, lead_s=sig.config.link_lead_seconds, limits=sig.link_limits,
        address=sock.address, refusals=sig.refusals, actor="signaling",
        # A live room's record is in the hub (its people never change): no database read and
        # no decryption of names on every rejoin.
        record_of=lambda room_id: live.record if (live := sig.hub.rooms.get(room_id)) else None)
    sock.room_id = record.id
    if sig.audit is not None:
        sig.audit.append(AuditEvent.LINK_OPENED, room_id=record.id, person_id=person.id, actor=person.role)
    sig.deliver(sig.hub.join(sock, record, person, now))
    if person.role == "therapist" and record.started_at is None:
        sig.store.mark_started(record.id, now)


def _confirm_phone(sig: Signaling, sock: ClientSocket, msg: p.ConfirmPhone) -> None:
    """A partner confirms their number or corrects it: checked, stored, audited (ids only),
    and the therapist's call list and the fallback flow's call prompt follow."""
    room, _ = sig.hub.seat_of(sock)
    phone = phones.parse_phone(msg.phone, sig.config.phone_region) if msg.phone is not None else None
    out, person = sig.hub.set_phone(sock, phone, sig.clock())
    if phone is not None:
        sig.store.set_phone(person.id, phone)
        sig.watch.person_changed(room.id, person)
    if sig.audit is not None:
        event = AuditEvent.PHONE_CONFIRMED if phone is None else AuditEvent.PHONE_CHANGED
        sig.audit.append(event, room_id=room.id, person_id=person.id, actor="partner")
    sig.deliver(out)


async def liveness_loop(sig: Signaling) -> None:
    """Notice sockets whose other end has vanished without a word (a network gone, a laptop
    lid shut): TCP alone may take many minutes. Every heartbeat_seconds, a socket that sent
    nothing since the last sweep gets a ping; one still silent at the next sweep is closed,
    so its participant shows as reconnecting and the grace window starts."""
    every = sig.config.heartbeat_seconds
    while True:
        await asyncio.sleep(every)
        for sock in list(sig.sockets):
            if sock.heard:
                sock.heard = sock.pinged = False
            elif not sock.pinged:
                sock.pinged = True
                if not sock.transport.is_closing():
                    sock.transport.write(fastws.PING_FRAME)
            else:
                log.info("closing a socket silent for %.0f s", 2 * every, extra={"room_id": sock.room_id})
                sock.transport.abort()


async def expire_loop(sig: Signaling, interval: float = 0.5) -> None:
    """End grace windows on time, run the fallback flow's clock, and notice rooms ended by
    another process."""
    version = sig.store.data_version()
    poll = sig.config.store_poll_seconds
    next_expire = 0.0
    while True:
        await asyncio.sleep(poll)
        sig.last_tick = time.monotonic()
        now = sig.clock()
        sig.deliver(sig.watch.tick(now))
        if now >= next_expire:
            sig.deliver(sig.hub.expire(now))
            next_expire = now + interval
        if sig.keeper is not None:
            # What changed since the last pass, in one transaction: a crash loses at most the
            # last store_poll_seconds, and a burst of joins costs a few writes a second.
            try:
                sig.keeper.flush()
            except Exception:
                log.exception("saving live room state failed")
        current = sig.store.data_version()
        if current != version:
            version = current
            for room_id in sig.store.ended_among(sig.hub.rooms):
                sig.deliver(sig.hub.end_room(room_id, now))
