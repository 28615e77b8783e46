"""Retention: ended rooms lose their personal data and links once they are old enough.

A purged room keeps its row and its people keep their opaque ids and roles, so the ledger
and the audit log still add up; only names, phone numbers, email addresses (and any email
not sent) and link hashes go. The old bytes
go too: SQLite overwrites freed space with zeros (secure_delete) and the write-ahead log is
checkpointed and truncated, so the ciphertexts do not linger in the files.
"""

from __future__ import annotations

from dataclasses import dataclass

from telehealth.audit import AuditEvent, AuditLog
from telehealth.store import Store


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """Counts of what this run removed; a room already purged counts nothing again."""

    rooms: int
    people: int
    links: int
    cutoff: float
    # False when a reader kept the write-ahead log from being truncated; the next
    # checkpoint (SQLite runs them on its own) overwrites the old pages instead.
    wal_truncated: bool


_ENDED_BEFORE = "SELECT id FROM rooms WHERE ended_at IS NOT NULL AND ended_at < :cutoff"


def purge(
    store: Store, audit: AuditLog, *, older_than: float, now: float, actor: str | None = None
) -> PurgeResult:
    """Purge rooms that ended before ``now - older_than``; record the counts in the audit log.

    Runs in one transaction with its audit entry: either both happen or neither does. Every
    run leaves an audit entry, even one that found nothing, as proof that retention ran.
    """
    if older_than < 0:
        raise ValueError("older_than must not be negative")
    db = store.db
    cutoff = now - older_than
    params = {"cutoff": cutoff}
    secure_delete = db.execute("PRAGMA secure_delete").fetchone()[0]
    db.execute("PRAGMA secure_delete = ON")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            rooms = db.execute(
                f"SELECT COUNT(*) FROM ({_ENDED_BEFORE}) AS r WHERE"
                " EXISTS (SELECT 1 FROM people p WHERE p.room_id = r.id"
                "         AND (p.name IS NOT NULL OR p.phone IS NOT NULL OR p.email IS NOT NULL))"
                " OR EXISTS (SELECT 1 FROM mail m WHERE m.room_id = r.id)"
                " OR EXISTS (SELECT 1 FROM links l WHERE l.room_id = r.id)",
                params,
            ).fetchone()[0]
            people = db.execute(
                f"UPDATE people SET name = NULL, phone = NULL, email = NULL WHERE room_id IN ({_ENDED_BEFORE})"
                " AND (name IS NOT NULL OR phone IS NOT NULL OR email IS NOT NULL)",
                params,
            ).rowcount
            db.execute(f"DELETE FROM mail WHERE room_id IN ({_ENDED_BEFORE})", params)
            links = db.execute(
                f"DELETE FROM links WHERE room_id IN ({_ENDED_BEFORE})", params
            ).rowcount
            audit.append(
                AuditEvent.PURGE, actor=actor,
                detail={"rooms": rooms, "people": people, "links": links, "cutoff": cutoff,
                        "older_than": older_than},
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    finally:
        db.execute(f"PRAGMA secure_delete = {int(secure_delete)}")
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return PurgeResult(rooms, people, links, cutoff, wal_truncated=busy == 0)
