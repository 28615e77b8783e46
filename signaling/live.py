"""The live rooms as a reader outside signaling sees them: a read model for dashboards.

``LiveRooms`` is the one door through which the ops dashboard (``web/ops.py``) looks at the
hub, the room watch and the quality history. It answers with frozen snapshots built at the
moment of asking, so a reader holds no reference into live state and cannot change it.

What a snapshot carries: opaque ids, roles and ordinals, states, link levels (names and
level codes, ``signaling.history``), relays, causes and counts. Never a name, a phone number
or an email address: ops never sees a person's details, so none are handed out here.

The quality history itself is created and subscribed by the wiring (``create_app``), whether
or not a dashboard is mounted; this module only reads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from signaling import protocol as p
from signaling.history import PastSession, QualityHistory, link_key
from signaling.hub import RoomHub
from signaling.watch import RoomWatch
from telehealth.errors import StateError
from telehealth.tokens import PersonId, Role, RoomId


@dataclass(frozen=True, slots=True)
class PersonView:
    """One person of a live room. ``state`` is the hub's (``absent`` when not connected),
    ``level`` their latest judged quality, ``flow``/``video`` their fallback state (None
    before they entered the call)."""

    id: PersonId
    role: Role
    ordinal: int
    state: str
    level: str | None
    flow: str | None
    video: str | None


@dataclass(frozen=True, slots=True)
class LinkView:
    """One link as last judged: ``key`` is ``signaling.history.link_key`` of the pair."""

    key: str
    level: str
    relay: bool


@dataclass(frozen=True, slots=True)
class RoomView:
    """One live room. ``samples`` holds the history's samples taken after the time the reader
    asked from: their ``times`` and each link's level codes, in ``link_keys`` order."""

    id: RoomId
    opened: bool
    locked: bool
    # None until the room's first quality report.
    started_at: float | None
    people: tuple[PersonView, ...]
    links: tuple[LinkView, ...]
    # Every link with samples in the history's window.
    link_keys: tuple[str, ...]
    usable: float | None
    session_s: float
    times: tuple[float, ...]
    samples: tuple[tuple[str, tuple[int, ...]], ...]
    ledger: tuple[p.LedgerRow, ...]


class LiveRooms:
    """Read-only: ``rooms(since)`` for what is live, ``past``/``past_session`` for what
    ended, ``saved`` to tell when the past has grown."""

    def __init__(self, hub: RoomHub, watch: RoomWatch, history: QualityHistory) -> None:
        self._hub, self._watch, self._history = hub, watch, history

    @property
    def window_s(self) -> float:
        """How far back the live samples reach."""
        return self._history.window * self._history.sample_every_s

    @property
    def saved(self) -> int:
        """How many sessions the history has saved since the start: grows when one ends."""
        return self._history.saved

    def rooms(self, since: Mapping[RoomId, float] | None = None) -> list[RoomView]:
        """Every live room by id, with the samples of each taken after ``since[room_id]``."""
        since = since or {}
        return [self._room(room_id, since.get(room_id, float("-inf"))) for room_id in sorted(self._hub.rooms)]

    def _room(self, room_id: RoomId, after: float) -> RoomView:
        room = self._hub.rooms[room_id]
        watched = self._watch.rooms.get(room_id)
        series = self._history.rooms.get(room_id)
        latest = series.latest if series is not None else None
        people = []
        for person in sorted(room.record.people, key=lambda x: x.ordinal):
            member = room.members.get(person.id)
            flow = video = None
            if watched is not None:
                with contextlib.suppress(StateError):
                    status = watched.flow.status(person.id)
                    flow, video = status.state.value, status.video.value
            level = latest.participants.get(person.id) if latest is not None else None
            people.append(PersonView(person.id, person.role, person.ordinal,
                                     member.state if member else "absent",
                                     level.value if level is not None else None, flow, video))
        relayed = watched.relayed if watched is not None else set()
        links = tuple(LinkView(link_key(pair), level.value, pair in relayed)
                      for pair, level in (latest.pairs.items() if latest is not None else ()))
        times: list[float] = []
        samples: dict[str, list[int]] = {}
        if series is not None:
            times, samples = series.since(after)
        return RoomView(
            id=room_id, opened=room.opened, locked=room.locked,
            started_at=series.started_at if series is not None else None,
            people=tuple(people), links=links,
            link_keys=tuple(series.links) if series is not None else (),
            usable=series.usable_share if series is not None else None,
            session_s=series.session_s if series is not None else 0.0,
            times=tuple(times), samples=tuple((key, tuple(codes)) for key, codes in samples.items()),
            ledger=tuple(self._watch.ledger_rows(watched)) if watched is not None else (),
        )

    def past(self, *, limit: int) -> list[PastSession]:
        """The most recently ended sessions, newest first."""
        return self._history.past(limit=limit)

    def past_session(self, room_id: str) -> PastSession | None:
        return self._history.past_session(room_id)


LIVE = web.AppKey("live", LiveRooms)
