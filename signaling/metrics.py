"""Prometheus metrics for operations. Labels carry roles, states, levels and codes only:
never a name, a number, or (to keep series bounded) a room or person id.

Who may read them (docs/operations.md, "Metrics"): on the main port only with
``Authorization: Bearer <the token in TELEHEALTH_METRICS_TOKEN_FILE>`` (401 without it; 404
when no token file is set), and without a token on the optional separate listener
``TELEHEALTH_METRICS_ADDRESS`` (host:port, meant for loopback or a private network).
The alert rules built on them are in deploy/prometheus/alerts.yml.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fallback.ledger import Disruption
from fallback.scoring import Pair, Quality, RoomQuality
from signaling.hub import HubEvent, MemberEvent, RoomEvent, RoomHub
from telehealth.errors import ErrorCode
from telehealth.tokens import RoomId

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _LiveState(Collector):
    """Gauges read from the hub at scrape time, so they can never drift from the truth."""

    def __init__(self, metrics: SessionMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        hub = self.m.hub
        rooms = GaugeMetricFamily("telehealth_rooms", "Live rooms by state", labels=["state"])
        opened = sum(1 for r in hub.rooms.values() if r.opened)
        rooms.add_metric(["open"], opened)
        rooms.add_metric(["waiting_for_therapist"], len(hub.rooms) - opened)
        yield rooms
        people = GaugeMetricFamily("telehealth_participants", "Participants by role and state",
                                   labels=["role", "state"])
        counts: dict[tuple[str, str], int] = {}
        for room in hub.rooms.values():
            for member in room.members.values():
                key = (member.role, member.state)
                counts[key] = counts.get(key, 0) + 1
        for (role, state), n in sorted(counts.items()):
            people.add_metric([role, state], n)
        yield people
        yield GaugeMetricFamily("telehealth_websocket_connections", "Open signaling sockets",
                                value=self.m.sockets())
        yield CounterMetricFamily("telehealth_signaling_messages", "Signaling messages received",
                                  value=self.m.messages())
        links = GaugeMetricFamily("telehealth_links", "Peer links by current quality level", labels=["level"])
        levels: dict[str, int] = {}
        for quality in self.m.last_quality.values():
            for level in quality.pairs.values():
                levels[level.value] = levels.get(level.value, 0) + 1
        for name in ("good", "fair", "poor", "lost"):
            links.add_metric([name], levels.get(name, 0))
        yield links
        seconds = CounterMetricFamily("telehealth_link_quality_seconds",
                                      "Time peer links spent at each quality level", labels=["level"])
        for name, value in self.m.link_seconds(self.m.clock()).items():
            seconds.add_metric([name], value)
        yield seconds
        now = self.m.clock()
        yield GaugeMetricFamily(
            "telehealth_lost_link_longest_seconds",
            "How long the peer link lost the longest has been lost, now (0 when none is)",
            value=max((now - since for room in self.m.lost_since.values() for since in room.values()),
                      default=0.0))
        yield GaugeMetricFamily("telehealth_ready", "1 when /readyz says ready, else 0",
                                value=1 if self.m.ready() else 0)
        yield GaugeMetricFamily("telehealth_turn_configured", "1 when a TURN relay is configured, else 0",
                                value=1 if self.m.turn_configured else 0)


class SessionMetrics:
    def __init__(self, hub: RoomHub, *, sockets: Callable[[], int], messages: Callable[[], int],
                 clock: Callable[[], float], ready: Callable[[], bool] = lambda: True,
                 turn_configured: bool = False) -> None:
        self.hub = hub
        self.clock = clock
        self.sockets = sockets
        self.messages = messages
        self.ready = ready
        self.turn_configured = turn_configured
        self.last_quality: dict[RoomId, RoomQuality] = {}
        # Per room, since when each of its lost links has been lost (the last judgements).
        self.lost_since: dict[RoomId, dict[Pair, float]] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.joins = Counter("telehealth_joins", "Entrances into a call or lobby", ["role"], registry=r)
        self.presence = Counter("telehealth_presence_changes", "Reconnecting, back and left",
                                ["role", "change"], registry=r)
        self.errors = Counter("telehealth_signaling_errors", "Refused signaling messages by code",
                              ["code"], registry=r)
        # Plain floats, read at scrape time: rooms are judged thousands of times a second.
        self.link_seconds_by_level = {"good": 0.0, "fair": 0.0, "poor": 0.0, "lost": 0.0}
        self.disruptions = Counter("telehealth_disruptions", "Disruptions by attributed cause and outcome",
                                   ["cause", "outcome"], registry=r)
        self.disruption_seconds = Histogram("telehealth_disruption_seconds", "How long disruptions lasted",
                                            buckets=(1, 2, 5, 10, 20, 45, 90, 300, 1800), registry=r)
        self.rejoins = Counter("telehealth_rejoin_steps", "Rejoin steps taken and their outcome",
                               ["step", "outcome"], registry=r)
        self.phone = Counter("telehealth_phone_fallbacks", "Partners moved to the phone step", registry=r)
        r.register(_LiveState(self))

    def on_hub_event(self, event: HubEvent) -> None:
        if isinstance(event, MemberEvent):
            if event.kind in ("joined", "waiting"):
                self.joins.labels(event.role).inc()
            elif event.kind in ("reconnecting", "back", "left", "expired", "removed", "replaced", "revoked"):
                self.presence.labels(event.role, event.kind).inc()
        elif isinstance(event, RoomEvent) and event.kind in ("ended", "closed"):
            self.lost_since.pop(event.room_id, None)
            last = self.last_quality.pop(event.room_id, None)
            if last is not None:
                self._elapse(last, event.at, self.link_seconds_by_level)

    def on_error(self, code: ErrorCode) -> None:
        self.errors.labels(code.value).inc()

    def on_quality(self, room_id: RoomId, quality: RoomQuality) -> None:
        # A room is judged when something may have changed, and at least every second: its
        # links held the previous judgement's levels until now.
        previous = self.last_quality.get(room_id)
        self.last_quality[room_id] = quality
        was_lost = self.lost_since.get(room_id, {})
        lost = {pair: was_lost.get(pair, quality.at) for pair, level in quality.pairs.items()
                if level is Quality.LOST}
        if lost:
            self.lost_since[room_id] = lost
        else:
            self.lost_since.pop(room_id, None)
        if previous is not None:
            self._elapse(previous, quality.at, self.link_seconds_by_level)

    def link_seconds(self, now: float) -> dict[str, float]:
        """Time links spent at each level, up to ``now``: since its last judgement a room's
        links count at the levels it gave."""
        seconds = dict(self.link_seconds_by_level)
        for quality in self.last_quality.values():
            self._elapse(quality, now, seconds)
        return seconds

    @staticmethod
    def _elapse(quality: RoomQuality, until: float, seconds: dict[str, float]) -> None:
        elapsed = until - quality.at
        if elapsed > 0:
            for level in quality.pairs.values():
                seconds[level.value] += elapsed

    def on_disruption(self, record: Disruption) -> None:
        outcome = record.outcome.value if record.outcome else "open"
        self.disruptions.labels(record.cause.value, outcome).inc()
        if record.ended_at is not None:
            self.disruption_seconds.observe(record.ended_at - record.started_at)
        for step in record.steps:
            if step.step.value in ("ice_restart", "fresh_connection", "page_rejoin"):
                self.rejoins.labels(step.step.value, step.outcome or "unknown").inc()

    def on_phone(self) -> None:
        self.phone.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- who may read them ------------------------------------------------------------------------


def read_token(path: Path) -> str:
    """The bearer token for /metrics on the main port: the file's content, trimmed. Raises
    ValueError (serve refuses to start) when it cannot be read or is too short to be secret."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"TELEHEALTH_METRICS_TOKEN_FILE: cannot read {path} "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    if len(token) < 16 or not token.isascii() or any(c.isspace() for c in token):
        raise ValueError(f"TELEHEALTH_METRICS_TOKEN_FILE: {path} must hold one token of at least 16 "
                         "characters, no spaces (e.g. the output of: openssl rand -hex 32)")
    return token


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) of the metrics listener; ValueError if not."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"TELEHEALTH_METRICS_ADDRESS: {text!r} is not host:port (e.g. 127.0.0.1:9464)")
    return host, int(port)


def _page(metrics: SessionMetrics) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE,
                                                         "Cache-Control": "no-store"})


def main_port_handler(metrics: SessionMetrics, token: str | None) -> Callable[[web.Request], Any]:
    """/metrics on the main port: not there without a token (404, like any unknown page, so a
    proxy that forwards everything shows nothing), 401 without the right bearer token."""
    expected = f"Bearer {token}".encode() if token else None

    async def handler(request: web.Request) -> web.Response:
        if expected is None:
            raise web.HTTPNotFound()
        given = request.headers.get("Authorization", "").encode(errors="replace")
        if not hmac.compare_digest(given, expected):
            raise web.HTTPUnauthorized(text="A bearer token is needed for /metrics.",
                                       headers={"WWW-Authenticate": 'Bearer realm="telehealth metrics"'})
        return _page(metrics)

    return handler


def metrics_listener(metrics: SessionMetrics, host: str, port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that serves /metrics, and nothing else, without a token on host:port."""

    async def listener(app: web.Application) -> AsyncIterator[None]:
        side = web.Application()

        async def page(request: web.Request) -> web.Response:
            return _page(metrics)

        side.router.add_get("/metrics", page)
        runner = web.AppRunner(side, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        try:
            yield
        finally:
            await runner.cleanup()

    return listener
