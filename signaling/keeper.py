"""The session keeper: every live room's state on disk as it changes, and back after a restart.

What a session needs to outlive its server process (a crash, a SIGTERM for an upgrade, a
reboot) is written as it changes: the hub's admissions, lock and offer order, the fallback
flow's states, timers, holds and ledger, and the quality history so far. Rooms are marked by
the hub's events and by the watch and history when their state moves; ``flush``, from the
background loop every ``store_poll_seconds`` (0.25 s), writes what differs from what is on
disk, all of it in one transaction: a crash loses at most that last quarter second (never a
therapist's decision: the endpoint flushes before it tells anyone of one), and a
burst of thousands of joins costs four transactions a second, not one each. A steady call
writes nothing: stats messages alone never cause a write (docs/scaling.md).

At start, before the server answers, ``restore`` puts every saved room back into the hub, the
watch and the history. Pages that come back with their link resume where they were; the outage
is recorded in the ledger as a disruption of everyone with the cause "server restart".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import msgspec

from signaling.history import QualityHistory
from signaling.hub import HubEvent, RoomHub
from signaling.watch import RoomWatch
from telehealth.sessions import LiveSessions
from telehealth.store import Store
from telehealth.tokens import RoomId

log = logging.getLogger("telehealth.keeper")

_encode = msgspec.json.Encoder().encode


class SessionKeeper:
    def __init__(self, sessions: LiveSessions, hub: RoomHub, watch: RoomWatch, history: QualityHistory,
                 clock: Callable[[], float]) -> None:
        self.sessions = sessions
        self.hub, self.watch, self.history = hub, watch, history
        self.clock = clock
        self._dirty: set[RoomId] = set()
        # What is on disk, so that a change that changes nothing is not written.
        self._written: dict[tuple[str, str], str] = {}

    def on_hub_event(self, event: HubEvent) -> None:
        self._dirty.add(event.room_id)

    def pending(self) -> bool:
        """Whether a change is waiting for the next flush."""
        return bool(self._dirty or self.watch.changed or self.history.changed)

    def flush(self) -> None:
        if not self.pending():
            return
        changes: dict[tuple[str, str], str | None] = {}
        for room_id in self._dirty | self.watch.changed:
            live = self.hub.rooms.get(room_id)
            value = None
            if live is not None:
                state = self.hub.snapshot(live)
                state["watch"] = self.watch.snapshot(room_id)
                value = _encode(state).decode()
            self._change(changes, ("room", room_id), value)
            if live is None:
                self._change(changes, ("quality", room_id), None)
        for room_id in self.history.changed:
            series = self.history.snapshot(room_id) if room_id in self.hub.rooms else None
            self._change(changes, ("quality", room_id), None if series is None else _encode(series).decode())
        self._dirty.clear()
        self.watch.changed.clear()
        self.history.changed.clear()
        if not changes:
            return
        self.sessions.write(changes, self.clock())
        for key, value in changes.items():
            if value is None:
                self._written.pop(key, None)
            else:
                self._written[key] = value

    def _change(self, changes: dict[tuple[str, str], str | None], key: tuple[str, str], value: str | None) -> None:
        if self._written.get(key) != value and (value is not None or key in self._written or key in changes):
            changes[key] = value

    def restore(self, store: Store) -> int:
        """Put every saved live room back; returns how many. Call before serving."""
        self.sessions.forget_ended()
        now = self.clock()
        down_at = self.sessions.last_alive() or now
        restored = 0
        for saved in self.sessions.rooms():
            record = store.get_room(saved.room_id)
            if record is None:
                continue
            state = json.loads(saved.state)
            live = self.hub.restore(record, state, now)
            if state.get("watch"):
                self.watch.restore(live, state["watch"], down_at)
            if saved.series:
                self.history.restore(live.id, json.loads(saved.series), down_at)
                self._written[("quality", live.id)] = saved.series
            self._written[("room", live.id)] = saved.state
            restored += 1
        if restored:
            log.info("restored %d live rooms (server away %.1f s)", restored, max(0.0, now - down_at))
        return restored
