"""Quality history: each live room's link levels over the last minutes, and its usable share.

Fed from ``RoomWatch.quality_listeners`` (every tick, a few times a second). To stay cheap it
keeps one compact sample per link every ``sample_every_s`` (a small int in a bounded deque),
not every tick; only the usable-time sums are updated on every tick, so a short dip between
two samples still counts against the session.

A room's life here::

    (first quality report) -> live: samples of the last window_s, per-link changes since start
    live --room ended or closed--> finished: series and usable share saved in quality_history

A link's level is coded as one int: the quality rank (0 lost, 1 poor, 2 fair, 3 good), plus
``RELAYED`` when the pair ran through the TURN relay, or ``NO_DATA`` when it was not judged.

The usable share of a session is the time with every link at fair or better, over the time in
session: the time with at least one link judged (two people with media between them). Ids and
levels only: no names, no numbers.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from fallback.scoring import Pair, Quality, RoomQuality
from signaling.hub import HubEvent, RoomEvent
from telehealth.store import Store
from telehealth.tokens import RoomId

RELAYED = 4
NO_DATA = -1
FAIR_RANK = Quality.FAIR.rank

Relayed = Callable[[RoomId], Collection[Pair]]


def link_key(pair: Pair) -> str:
    """A pair as ``"<smaller id>|<larger id>"``: the same key from either end."""
    return "|".join(sorted(pair))


def level_code(level: Quality, relayed: bool) -> int:
    return level.rank + (RELAYED if relayed else 0)


def _usable(quality: RoomQuality) -> bool:
    for level in quality.pairs.values():
        if level.rank < FAIR_RANK:
            return False
    return True


@dataclass(slots=True)
class RoomSeries:
    """One live room: dense samples of the last window, and every change since it started.

    ``links[key][i]`` is the code of link ``key`` at ``times[i]``; every deque has the same
    length as ``times``.
    """

    started_at: float
    window: int
    times: deque[float] = field(init=False)
    links: dict[str, deque[int]] = field(default_factory=dict)
    changes: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    session_s: float = 0.0
    usable_s: float = 0.0
    last_sample: float = -math.inf
    # When each link last had data; a link unseen for the whole window is dropped.
    last_seen: dict[str, float] = field(default_factory=dict)
    keys: dict[Pair, str] = field(default_factory=dict)
    latest: RoomQuality | None = None

    def __post_init__(self) -> None:
        self.times = deque(maxlen=self.window)

    @property
    def usable_share(self) -> float | None:
        return self.usable_s / self.session_s if self.session_s > 0 else None

    def since(self, after: float) -> tuple[list[float], dict[str, list[int]]]:
        """The samples taken after ``after``: their times and each link's codes."""
        start = len(self.times)
        while start > 0 and self.times[start - 1] > after:
            start -= 1
        times = list(self.times)[start:]
        return times, {key: list(codes)[start:] for key, codes in self.links.items()}


@dataclass(frozen=True, slots=True)
class PastSession:
    """A finished session as saved: usable time and each link's changes over the session."""

    room_id: RoomId
    started_at: float
    ended_at: float
    session_s: float
    usable_s: float
    links: dict[str, list[tuple[float, int]]]

    @property
    def usable_share(self) -> float | None:
        return self.usable_s / self.session_s if self.session_s > 0 else None


class QualityHistory:
    """Events: ``on_quality`` (each tick of each room), ``on_hub_event`` (a room ends).

    ``relayed(room_id)`` says which pairs currently run through the TURN relay.
    """

    def __init__(self, store: Store, relayed: Relayed, *, window_s: float = 600.0,
                 sample_every_s: float = 1.0) -> None:
        self.store = store
        self.relayed = relayed
        self.sample_every_s = sample_every_s
        self.window = max(1, int(window_s / sample_every_s))
        self.rooms: dict[RoomId, RoomSeries] = {}
        # Counts sessions saved, so that readers can tell when the past has grown.
        self.saved = 0
        # Live rooms whose changes grew since the keeper last looked (it saves them).
        self.changed: set[RoomId] = set()

    # -- inputs -------------------------------------------------------------------------

    def on_quality(self, room_id: RoomId, quality: RoomQuality) -> None:
        t = quality.at
        series = self.rooms.get(room_id)
        if series is None:
            series = self.rooms[room_id] = RoomSeries(started_at=t, window=self.window)
        self._elapse(series, t)
        series.latest = quality
        if t - series.last_sample >= self.sample_every_s:
            self._sample(room_id, series, quality)

    @staticmethod
    def _elapse(series: RoomSeries, t: float) -> None:
        """Judgements come when something may have changed (and at least every second): the
        time since the last one counts as the last one said."""
        last = series.latest
        if last is not None and t > last.at and last.pairs:
            dt = t - last.at
            series.session_s += dt
            if _usable(last):
                series.usable_s += dt

    def on_hub_event(self, event: HubEvent) -> None:
        if isinstance(event, RoomEvent) and event.kind in ("ended", "closed"):
            self.finish(event.room_id, event.at)

    # -- samples ------------------------------------------------------------------------

    def _sample(self, room_id: RoomId, series: RoomSeries, quality: RoomQuality) -> None:
        t = quality.at
        series.last_sample = t
        relayed = self.relayed(room_id)
        keys = series.keys
        codes = {}
        for pair, level in quality.pairs.items():
            key = keys.get(pair)
            if key is None:
                key = keys[pair] = link_key(pair)
            codes[key] = level_code(level, pair in relayed)
        series.times.append(t)
        for key, code in codes.items():
            if key not in series.links:
                # A new link: no data for the samples before it appeared.
                series.links[key] = deque([NO_DATA] * (len(series.times) - 1), maxlen=self.window)
            series.last_seen[key] = t
        oldest = series.times[0]
        for key in list(series.links):
            code = codes.get(key, NO_DATA)
            if code == NO_DATA and series.last_seen[key] < oldest:
                del series.links[key]  # out of the window entirely
                continue
            series.links[key].append(code)
            changes = series.changes.setdefault(key, [])
            if not changes or changes[-1][1] != code:
                changes.append((round(t, 1), code))
                self.changed.add(room_id)

    # -- surviving a restart ----------------------------------------------------------

    def snapshot(self, room_id: RoomId) -> dict[str, object] | None:
        """A live room's history so far, JSON-ready. Taken when a link's level changes: the
        time sums run on from it at the rate the levels then said (``restore``)."""
        series = self.rooms.get(room_id)
        if series is None:
            return None
        latest = series.latest
        return {"started_at": series.started_at, "session_s": series.session_s, "usable_s": series.usable_s,
                "changes": series.changes, "at": latest.at if latest else None,
                "judged": bool(latest and latest.pairs), "usable": bool(latest and _usable(latest))}

    def restore(self, room_id: RoomId, saved: dict[str, Any], down_at: float) -> None:
        """A room's history as it stood when the server stopped at ``down_at``."""
        series = self.rooms[room_id] = RoomSeries(started_at=float(saved["started_at"]), window=self.window)
        series.changes = {key: [(float(t), int(code)) for t, code in changes]
                          for key, changes in saved["changes"].items()}
        series.session_s, series.usable_s = float(saved["session_s"]), float(saved["usable_s"])
        at = saved["at"]
        if saved["judged"] and at is not None and down_at > at:
            series.session_s += down_at - at
            if saved["usable"]:
                series.usable_s += down_at - at

    # -- results ------------------------------------------------------------------------

    def finish(self, room_id: RoomId, at: float) -> PastSession | None:
        """Save a room that ended; None if it never had a quality report.

        A room can close (everyone gone) and open again later: its parts add up.
        """
        series = self.rooms.pop(room_id, None)
        if series is None:
            return None
        self._elapse(series, at)
        earlier = self.past_session(room_id)
        links = {key: list(changes) for key, changes in series.changes.items()}
        past = PastSession(room_id, series.started_at, at, series.session_s, series.usable_s, links)
        if earlier is not None:
            merged = dict(earlier.links)
            for key, changes in links.items():
                merged[key] = merged.get(key, []) + changes
            past = PastSession(room_id, earlier.started_at, at, earlier.session_s + series.session_s,
                               earlier.usable_s + series.usable_s, merged)
        self.store.db.execute(
            "INSERT OR REPLACE INTO quality_history (room_id, started_at, ended_at, session_seconds,"
            " usable_seconds, series) VALUES (?,?,?,?,?,?)",
            (room_id, past.started_at, past.ended_at, past.session_s, past.usable_s,
             json.dumps({"links": past.links}, separators=(",", ":"))),
        )
        self.saved += 1
        return past

    def past(self, *, limit: int = 50) -> list[PastSession]:
        """The most recently ended sessions, newest first."""
        rows = self.store.db.execute(
            "SELECT room_id, started_at, ended_at, session_seconds, usable_seconds, series"
            " FROM quality_history ORDER BY ended_at DESC LIMIT ?", (limit,),
        ).fetchall()
        return list(_past_sessions(rows))

    def past_session(self, room_id: str) -> PastSession | None:
        rows = self.store.db.execute(
            "SELECT room_id, started_at, ended_at, session_seconds, usable_seconds, series"
            " FROM quality_history WHERE room_id = ?", (room_id,),
        ).fetchall()
        return next(_past_sessions(rows), None)


def _past_sessions(rows: list[tuple]) -> Iterator[PastSession]:
    for room_id, started_at, ended_at, session_s, usable_s, series in rows:
        links = {key: [(float(t), int(code)) for t, code in changes]
                 for key, changes in json.loads(series)["links"].items()}
        yield PastSession(RoomId(room_id), started_at, ended_at, session_s, usable_s, links)
