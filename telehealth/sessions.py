"""Live sessions on disk: what a running session needs to survive its server.

Every statement on the tables is here; the tables themselves are telehealth.schema's
(migration 2). What is stored is opaque JSON made by ``signaling/keeper.py``:
each live room's admissions, lock and offer order, its fallback flow (states, timers, holds,
the ledger so far) and its quality history so far. Ids, levels and times only: no names,
no numbers (those stay encrypted in ``people``).

Writes come as one batch, one transaction (``write``); the server's heartbeat (``alive``)
says, after a crash, up to when it was still running.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

# A table name per kind of state; None as a value deletes the row.
TABLES = {"room": "live_rooms", "quality": "live_quality"}
Changes = Mapping[tuple[str, str], str | None]


@dataclass(frozen=True, slots=True)
class SavedRoom:
    room_id: str
    state: str
    series: str | None


class LiveSessions:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def write(self, changes: Changes, now: float) -> None:
        """Apply ``{(kind, room_id): json or None}`` in one transaction."""
        if not changes:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for (kind, room_id), value in changes.items():
                table = TABLES[kind]
                if value is None:
                    db.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))
                else:
                    column = "state" if kind == "room" else "series"
                    db.execute(
                        f"INSERT INTO {table} (room_id, {column}, updated_at) VALUES (?,?,?)"
                        f" ON CONFLICT(room_id) DO UPDATE SET {column} = excluded.{column},"
                        " updated_at = excluded.updated_at",
                        (room_id, value, now),
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def rooms(self) -> list[SavedRoom]:
        """Every live room saved, with its quality series if any; rooms ended since (by the
        CLI, or before a crash) are left out."""
        rows = self._db.execute(
            "SELECT l.room_id, l.state, q.series FROM live_rooms l JOIN rooms r ON r.id = l.room_id"
            " LEFT JOIN live_quality q ON q.room_id = l.room_id WHERE r.ended_at IS NULL"
        ).fetchall()
        return [SavedRoom(*row) for row in rows]

    def forget_ended(self) -> None:
        """Drop what is kept of rooms that ended while no server ran (from the CLI)."""
        ended = self._db.execute(
            "SELECT room_id FROM live_rooms WHERE room_id IN (SELECT id FROM rooms WHERE ended_at IS NOT NULL)"
        ).fetchall()
        self.write({(kind, room_id): None for (room_id,) in ended for kind in TABLES}, 0.0)

    def alive(self, now: float, *, stopping: bool = False) -> None:
        self._db.execute(
            "INSERT INTO server_clock (id, alive_at, stopped_at) VALUES (1, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET alive_at = excluded.alive_at, stopped_at = excluded.stopped_at",
            (now, now if stopping else None),
        )

    def last_alive(self) -> float | None:
        """When the server last ran: its clean stop, or its last heartbeat before a crash."""
        row = self._db.execute("SELECT alive_at, stopped_at FROM server_clock WHERE id = 1").fetchone()
        if row is None:
            return None
        return float(row[1] if row[1] is not None else row[0])
