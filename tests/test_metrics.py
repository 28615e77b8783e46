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
G, P, L = Quality.GOOD, Quality.POOR, Quality.LOST


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


def gauge(metrics: SessionMetrics, name: str) -> float:
    line = next(x for x in metrics.render().decode().splitlines() if x.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def test_the_longest_lost_link_is_timed_from_when_it_was_lost_until_it_is_back() -> None:
    clock = Clock()
    metrics = SessionMetrics(RoomHub(grace_seconds=30), sockets=lambda: 0, messages=lambda: 0, clock=clock)
    assert gauge(metrics, "telehealth_lost_link_longest_seconds") == 0
    metrics.on_quality(ROOM, quality(100.0, {TA: L, TB: G, AB: G}))
    metrics.on_quality(ROOM, quality(130.0, {TA: L, TB: G, AB: L}))
    metrics.on_quality(RoomId("r_2"), quality(125.0, {TA: L}))
    clock.now = 170.0
    assert gauge(metrics, "telehealth_lost_link_longest_seconds") == 70.0
    # Back: what remains lost is timed from when it was lost, not from the latest judgement.
    metrics.on_quality(ROOM, quality(171.0, {TA: G, TB: G, AB: L}))
    clock.now = 172.0
    assert gauge(metrics, "telehealth_lost_link_longest_seconds") == 47.0
    metrics.on_hub_event(RoomEvent("closed", RoomId("r_2"), 172.0))
    assert gauge(metrics, "telehealth_lost_link_longest_seconds") == 42.0
    metrics.on_hub_event(RoomEvent("ended", ROOM, 172.0))
    assert gauge(metrics, "telehealth_lost_link_longest_seconds") == 0
