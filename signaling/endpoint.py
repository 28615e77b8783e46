"""The WebSocket endpoint: parse, validate, call the hub, deliver what it returns.

Only the handler task reads a socket; every socket has one writer task draining a bounded
queue, and a client that cannot keep up is closed rather than allowed to stall its room
(Galène's writer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from signaling import protocol as p
from signaling.hub import HubEvent, Outbox, RoomHub
from signaling.watch import RoomWatch
from telehealth import rooms
from telehealth.audit import AuditEvent, AuditLog, LinkRejectReason
from telehealth.config import Config
from telehealth.errors import ErrorCode, LinkError, ProtocolError, TelehealthError
from telehealth.store import Store
from telehealth.tokens import check_link, hash_token, well_formed

log = logging.getLogger("telehealth.signaling")

# The hard cap at which aiohttp drops the socket; between max_message_bytes and this a
# message gets a `too_large` error and the socket stays open.
HARD_CAP_FACTOR = 4

StatsSink = Callable[[Any, Any, p.Stats, float], None]
EventSink = Callable[[HubEvent], None]
ErrorSink = Callable[[ErrorCode], None]


@dataclass
class Signaling:
    """Everything the endpoint needs; lives in the app under SIGNALING."""

    config: Config
    store: Store
    hub: RoomHub
    clock: Callable[[], float]
    audit: AuditLog | None = None
    watch: RoomWatch | None = None
    stats_sinks: list[StatsSink] = field(default_factory=list)
    event_sinks: list[EventSink] = field(default_factory=list)
    error_sinks: list[ErrorSink] = field(default_factory=list)
    sockets: set[ClientSocket] = field(default_factory=set)
    # Messages received, for the messages-per-second metric (a plain int: the hot path).
    received: int = 0
    # time.monotonic() of the background loop's last pass, for /readyz.
    last_tick: float = field(default_factory=time.monotonic)

    def deliver(self, out: Outbox) -> None:
        encoded: dict[int, bytes] = {}
        for conn, msg in out.sends:
            data = encoded.get(id(msg))
            if data is None:
                data = encoded[id(msg)] = p.encode(msg)
            if not conn.send(data):  # type: ignore[attr-defined]
                self._drop_slow(conn)
        for conn, reason in out.closes:
            conn.close_after_flush(reason)  # type: ignore[attr-defined]
        for event in out.events:
            if self.watch is not None:
                self.deliver(self.watch.on_hub_event(event, self.clock()))
            for sink in self.event_sinks:
                sink(event)

    def _drop_slow(self, conn: ClientSocket) -> None:
        log.warning("closing a socket that cannot keep up", extra={"room_id": conn.room_id})
        conn.abort(p.CloseReason.TOO_SLOW)
        self.deliver(self.hub.disconnect(conn, self.clock()))


_CLOSE = object()


class ClientSocket:
    """One participant's socket: a bounded send queue and the writer that drains it."""

    __slots__ = ("ws", "queue", "room_id", "closing", "__weakref__")

    def __init__(self, ws: web.WebSocketResponse, limit: int) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[Any] = asyncio.Queue(limit)
        self.room_id: str | None = None
        self.closing = False

    def send(self, data: bytes) -> bool:
        if self.closing:
            return True
        try:
            self.queue.put_nowait(data)
            return True
        except asyncio.QueueFull:
            return False

    def close_after_flush(self, reason: p.CloseReason) -> None:
        if self.closing:
            return
        self.closing = True
        self._put_close(reason)

    def abort(self, reason: p.CloseReason) -> None:
        self.closing = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self._put_close(reason)

    def _put_close(self, reason: p.CloseReason) -> None:
        try:
            self.queue.put_nowait((_CLOSE, reason))
        except asyncio.QueueFull:
            self.queue.get_nowait()
            self.queue.put_nowait((_CLOSE, reason))

    async def run_writer(self) -> None:
        ws = self.ws
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, tuple):
                await ws.close(code=p.CLOSE_CODES[item[1]], message=item[1].value.encode())
                return
            try:
                await ws.send_frame(item, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return

    def stop_writer(self) -> None:
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.queue.get_nowait()
            self.queue.put_nowait(None)


SIGNALING = web.AppKey("signaling", Signaling)


def origin_allowed(request: web.Request, config: Config) -> bool:
    """Browsers always send Origin; it must be our own site. Programs may omit it."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    own = {config.public_base_url, f"{request.scheme}://{request.host}"}
    return origin.rstrip("/") in own


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    sig = request.app[SIGNALING]
    if not origin_allowed(request, sig.config):
        log.warning("websocket refused: foreign origin")
        raise web.HTTPForbidden(text="This page may only be used from its own site.")
    ws = web.WebSocketResponse(
        heartbeat=15.0,
        max_msg_size=sig.config.max_message_bytes * HARD_CAP_FACTOR,
        compress=False,
        decode_text=False,
    )
    await ws.prepare(request)
    sock = ClientSocket(ws, sig.config.send_queue_limit)
    sig.sockets.add(sock)
    writer = asyncio.create_task(sock.run_writer())
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                sig.received += 1
                _handle(sig, sock, msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
            if sock.closing:
                break
    finally:
        sig.deliver(sig.hub.disconnect(sock, sig.clock()))
        sig.sockets.discard(sock)
        if not sock.closing:
            sock.stop_writer()
        try:
            await asyncio.wait_for(writer, timeout=5.0)
        except (asyncio.TimeoutError, ConnectionError):
            writer.cancel()
        if not ws.closed:
            await ws.close()
    return ws


def _handle(sig: Signaling, sock: ClientSocket, data: bytes) -> None:
    ref: str | None = None
    try:
        msg = p.parse_client(data, sig.config.max_message_bytes)
        ref = type(msg).__struct_config__.tag  # type: ignore[attr-defined]
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
        if sig.watch is not None:
            sig.watch.on_stats(room, member, msg, now)
        for sink in sig.stats_sinks:
            sink(room, member, msg, now)
    elif isinstance(msg, p.Ping):
        sock.send(p.encode(p.Pong(t=msg.t, server_time=sig.clock())))
    elif isinstance(msg, p.Join):
        _join(sig, sock, msg)
    elif isinstance(msg, p.MediaState):
        sig.deliver(hub.set_media(sock, msg))
    elif isinstance(msg, p.Leave):
        sig.deliver(hub.leave(sock, sig.clock()))
    elif isinstance(msg, p.Admit):
        sig.deliver(hub.admit(sock, msg.participant, sig.clock()))
    elif isinstance(msg, p.Remove):
        sig.deliver(hub.remove(sock, msg.participant, sig.clock()))
    elif isinstance(msg, p.Mute):
        sig.deliver(hub.mute(sock, msg.participant, msg.kind))
    elif isinstance(msg, p.Lock):
        sig.deliver(hub.lock(sock, msg.locked, sig.clock()))
    elif isinstance(msg, (p.SwitchToPhone, p.ReturnToVideo, p.Hold, p.Resume, p.RejoinResult, p.GetLedger)):
        if sig.watch is None:
            raise TelehealthError(ErrorCode.FORBIDDEN, "The fallback flow is not running.")
        room, member = hub.seat_of(sock)
        sig.deliver(sig.watch.command(room, member, msg, sig.clock()))
    elif isinstance(msg, p.End):
        room_id = hub.require_therapist(sock)
        now = sig.clock()
        rooms.end_room(sig.store, room_id, now=now, actor="therapist")
        sig.deliver(hub.end_room(room_id, now))


LINK_REJECT_REASONS = {
    ErrorCode.BAD_LINK: LinkRejectReason.FORGED,
    ErrorCode.LINK_EXPIRED: LinkRejectReason.EXPIRED,
    ErrorCode.LINK_REVOKED: LinkRejectReason.REVOKED,
    ErrorCode.ROOM_ENDED: LinkRejectReason.ROOM_ENDED,
    ErrorCode.RATE_LIMITED: LinkRejectReason.RATE_LIMITED,
}


def _join(sig: Signaling, sock: ClientSocket, msg: p.Join) -> None:
    if msg.v != p.VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, close=True)
    if sock in sig.hub.seats:
        raise ProtocolError(ErrorCode.ALREADY_JOINED)
    now = sig.clock()
    try:
        link = check_link(sig.store.find_link(hash_token(msg.token)) if well_formed(msg.token) else None, now)
        record = sig.store.get_room(link.room_id)
        person = next((x for x in record.people if x.id == link.person_id), None) if record else None
        if record is None or person is None:
            raise LinkError(ErrorCode.BAD_LINK)
    except LinkError as exc:
        if sig.audit is not None:
            sig.audit.append(AuditEvent.LINK_REJECTED, actor="signaling",
                             detail={"reason": LINK_REJECT_REASONS[exc.code].value})
        raise
    sock.room_id = record.id
    if sig.audit is not None:
        sig.audit.append(AuditEvent.LINK_OPENED, room_id=record.id, person_id=person.id, actor=person.role)
    sig.deliver(sig.hub.join(sock, record, person, now))
    if person.role == "therapist" and record.started_at is None:
        sig.store.mark_started(record.id, now)


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
        if sig.watch is not None:
            sig.deliver(sig.watch.tick(now))
        if now >= next_expire:
            sig.deliver(sig.hub.expire(now))
            next_expire = now + interval
        current = sig.store.data_version()
        if current != version:
            version = current
            for room_id in sig.store.ended_among(sig.hub.rooms):
                sig.deliver(sig.hub.end_room(room_id, now))
