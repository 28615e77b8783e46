"""Quality history on a real SQLite store: samples once a second, the usable share, past sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fallback.scoring import Pair, Quality, RoomQuality
from signaling.history import NO_DATA, RELAYED, QualityHistory, link_key
from signaling.hub import RoomEvent
from telehealth.store import Store
from telehealth.tokens import PersonId, RoomId

T, A, B = PersonId("p_t"), PersonId("p_a"), PersonId("p_b")
TA, TB, AB = frozenset((T, A)), frozenset((T, B)), frozenset((A, B))
ROOM = RoomId("r_1")
G, F, P, L = Quality.GOOD, Quality.FAIR, Quality.POOR, Quality.LOST


def quality(at: float, pairs: dict[Pair, Quality]) -> RoomQuality:
    return RoomQuality(at, {}, pairs, {}, ())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "data")
    yield opened
    opened.close()


def feed(history: QualityHistory, start: float, end: float, pairs: dict[Pair, Quality],
         tick: float = 0.25) -> float:
    """Ticks every ``tick`` from start (inclusive) to end (exclusive), like the watch's loop."""
    t = start
    while t < end - 1e-9:
        history.on_quality(ROOM, quality(t, pairs))
        t += tick
    return t


def test_one_sample_a_second_not_one_a_tick(store: Store) -> None:
    history = QualityHistory(store, lambda room: ())
    feed(history, 0.0, 10.0, {TA: G, TB: G, AB: F})
    series = history.rooms[ROOM]
    assert list(series.times) == [float(s) for s in range(10)]
    assert list(series.links[link_key(AB)]) == [F.rank] * 10
    assert link_key(AB) == link_key(frozenset((B, A))) == "p_a|p_b"


def test_the_window_is_bounded_and_old_links_fall_out(store: Store) -> None:
    history = QualityHistory(store, lambda room: (), window_s=5.0)
    t = feed(history, 0.0, 4.0, {TA: G, TB: G, AB: G})
    t = feed(history, t, 20.0, {TA: G})  # B left: their links stop being judged
    series = history.rooms[ROOM]
    assert len(series.times) == 5 and series.times[0] == 15.0
    assert set(series.links) == {link_key(TA)}
    # The whole session's changes are kept beyond the window.
    assert series.changes[link_key(TB)] == [(0.0, G.rank), (4.0, NO_DATA)]


def test_a_new_link_has_no_data_before_it_appeared(store: Store) -> None:
    history = QualityHistory(store, lambda room: ())
    t = feed(history, 0.0, 3.0, {TA: G})
    feed(history, t, 5.0, {TA: G, TB: P})
    assert list(history.rooms[ROOM].links[link_key(TB)]) == [NO_DATA] * 3 + [P.rank] * 2


def test_relayed_links_are_marked(store: Store) -> None:
    history = QualityHistory(store, lambda room: {TB})
    feed(history, 0.0, 2.0, {TA: G, TB: F})
    links = history.rooms[ROOM].links
    assert list(links[link_key(TB)]) == [F.rank + RELAYED] * 2
    assert list(links[link_key(TA)]) == [G.rank] * 2


@pytest.mark.parametrize(("phases", "share"), [
    # (seconds, levels of the links): the share of time with every link fair or better.
    ([(60, {TA: G, TB: G, AB: G})], 1.0),
    ([(30, {TA: G, TB: G, AB: G}), (30, {TA: G, TB: P, AB: F})], 0.5),
    ([(45, {TA: F, TB: F, AB: F}), (15, {TA: L, TB: G, AB: L})], 0.75),
    # Alone in the room is not time in session; it neither helps nor hurts.
    ([(30, {}), (30, {TA: G})], 1.0),
])
def test_usable_share(store: Store, phases: list[tuple[int, dict[Pair, Quality]]], share: float) -> None:
    history = QualityHistory(store, lambda room: ())
    t = 0.0
    for seconds, pairs in phases:
        t = feed(history, t, t + seconds, pairs)
    history.on_quality(ROOM, quality(t, phases[-1][1]))
    assert history.rooms[ROOM].usable_share == pytest.approx(share, abs=0.01)


def test_a_dip_between_two_samples_still_counts(store: Store) -> None:
    history = QualityHistory(store, lambda room: ())
    t = feed(history, 0.0, 9.5, {TA: G})
    t = feed(history, t, 10.0, {TA: P})  # half a second, between samples
    feed(history, t, 20.25, {TA: G})
    series = history.rooms[ROOM]
    assert P.rank not in series.links[link_key(TA)]
    assert series.usable_share == pytest.approx(19.5 / 20.0, abs=0.02)


def test_an_ended_room_is_saved_with_its_share_and_changes(store: Store) -> None:
    history = QualityHistory(store, lambda room: ())
    t = feed(history, 100.0, 130.0, {TA: G, TB: G, AB: G})
    t = feed(history, t, 160.0, {TA: G, TB: P, AB: P})
    history.on_quality(ROOM, quality(t, {TA: G, TB: P, AB: P}))
    history.on_hub_event(RoomEvent("ended", ROOM, t))
    assert ROOM not in history.rooms

    # A fresh history (a restarted server) finds it in the database.
    reopened = QualityHistory(store, lambda room: ())
    [past] = reopened.past()
    assert (past.room_id, past.started_at, past.ended_at) == (ROOM, 100.0, 160.0)
    assert past.usable_share == pytest.approx(0.5, abs=0.01)
    assert past.links[link_key(TB)] == [(100.0, G.rank), (130.0, P.rank)]
    assert reopened.past_session(ROOM) == past
    assert reopened.past_session("r_unknown") is None
    # Opaque ids and numbers only.
    raw = store.db.execute("SELECT series FROM quality_history").fetchone()[0]
    assert set(raw) <= set('{}[]":,.|-_0123456789abcdefghijklmnopqrstuvwxyz')


def test_a_room_that_closes_and_opens_again_adds_up(store: Store) -> None:
    history = QualityHistory(store, lambda room: ())
    t = feed(history, 0.0, 10.25, {TA: G})
    history.on_hub_event(RoomEvent("closed", ROOM, t))
    t = feed(history, 100.0, 110.25, {TA: P})
    history.on_hub_event(RoomEvent("ended", ROOM, t))
    past = history.past_session(ROOM)
    assert past is not None
    assert (past.started_at, past.ended_at) == (0.0, 110.25)
    # Each part lasts until it closes (10.25 s), past its last judgement (at 10.0).
    assert past.session_s == pytest.approx(20.5, abs=0.01)
    assert past.usable_share == pytest.approx(0.5, abs=0.01)
    assert past.links[link_key(TA)] == [(0.0, G.rank), (100.0, P.rank)]


def test_samples_since_a_time(store: Store) -> None:
    history = QualityHistory(store, lambda room: ())
    feed(history, 0.0, 5.0, {TA: G})
    times, links = history.rooms[ROOM].since(2.0)
    assert times == [3.0, 4.0]
    assert links == {link_key(TA): [G.rank, G.rank]}
    assert history.rooms[ROOM].since(4.0) == ([], {link_key(TA): []})
