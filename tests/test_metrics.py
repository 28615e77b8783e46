"""Link time by quality level, as ops read it from /metrics: it runs up to the moment of the
scrape, never goes back, and stops when the room ends."""

from __future__ import annotations

from fallback.scoring import Pair, Quality, RoomQuality
from signaling.hub import RoomEvent, RoomHub
from signaling.metrics import SessionMetrics
from telehealth.tokens import PersonId, RoomId

T, A, B = PersonId("p_t"), PersonId("p_a"), PersonId("p_b")
TA, TB, AB = frozenset((T, A)), frozenset((T, B)), frozenset((A, B))
ROOM = RoomId("r_1")
G, P = Quality.GOOD, Quality.POOR


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def quality(at: float, pairs: dict[Pair, Quality]) -> RoomQuality:
    return RoomQuality(at, {}, pairs, {}, ())


def scraped_seconds(metrics: SessionMetrics) -> dict[str, float]:
    text = metrics.render().decode()
    prefix = 'telehealth_link_quality_seconds_total{level="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def test_link_time_counts_up_to_the_scrape_and_stops_when_the_room_ends() -> None:
    clock = Clock()
    metrics = SessionMetrics(RoomHub(grace_seconds=30), sockets=lambda: 0, messages=lambda: 0, clock=clock)
    metrics.on_quality(ROOM, quality(100.0, {TA: G, TB: G, AB: G}))
    # One judgement and no other yet: the three links have still been good for 2.5 s.
    clock.now = 102.5
    assert scraped_seconds(metrics) == {"good": 7.5, "fair": 0.0, "poor": 0.0, "lost": 0.0}
    # The next judgement covers the span the scrape already counted: nothing counts twice.
    metrics.on_quality(ROOM, quality(103.0, {TA: G, TB: P, AB: P}))
    clock.now = 104.0
    assert scraped_seconds(metrics) == {"good": 10.0, "fair": 0.0, "poor": 2.0, "lost": 0.0}
    metrics.on_hub_event(RoomEvent("ended", ROOM, 105.0))
    clock.now = 200.0
    assert scraped_seconds(metrics) == {"good": 11.0, "fair": 0.0, "poor": 4.0, "lost": 0.0}
