"""Prometheus metrics for operations. Labels carry roles, states, levels and codes only:
never a name, a number, or (to keep series bounded) a room or person id."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fallback.ledger import Disruption
from fallback.scoring import RoomQuality
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


class SessionMetrics:
    def __init__(self, hub: RoomHub, *, sockets: Callable[[], int], messages: Callable[[], int],
                 clock: Callable[[], float]) -> None:
        self.hub = hub
        self.clock = clock
        self.sockets = sockets
        self.messages = messages
        self.last_quality: dict[RoomId, RoomQuality] = {}
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
