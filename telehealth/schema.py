"""Every table of the database, and the ordered steps that bring an older file up to date.

The file's schema version is SQLite's ``PRAGMA user_version``: 0 in a new file and in files
written before versions existed. ``migrate`` runs at every open (server and CLI alike): each
step whose version is above the file's runs in its own transaction together with the version
bump, so a crash mid-upgrade leaves the file at the last finished step and the next start goes
on from there. Two processes opening an old file at once are fine: a step takes the write lock
and re-reads the version before it runs. A file written by a newer telehealth is refused,
because this code cannot know what its tables mean.

To change the schema, append ``Migration(<last version + 1>, "what and why", SQL or function)``
to MIGRATIONS. A function gets the connection inside the step's transaction and must not
commit. Never edit a step that has shipped: databases out there already ran it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from telehealth.audit import GENESIS_HASH


class StoreError(Exception):
    """The database cannot be used as it is; ``str()`` is one line saying what to do."""


class NewerSchemaError(StoreError):
    pass


class DamagedStoreError(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: str | Callable[[sqlite3.Connection], None]


# Version 1 is the schema as it stood before versions existed, statement for statement, so it
# also completes a file of that time that lacks some tables (one only the CLI had opened has
# no accounts or quality history yet): IF NOT EXISTS everywhere.
_BASELINE = f"""
CREATE TABLE IF NOT EXISTS rooms (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    starts_at REAL,
    started_at REAL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS people (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES rooms(id),
    role TEXT NOT NULL CHECK (role IN ('therapist', 'partner')),
    ordinal INTEGER NOT NULL,
    name BLOB,
    phone BLOB
);
CREATE INDEX IF NOT EXISTS people_room ON people(room_id);
CREATE TABLE IF NOT EXISTS links (
    token_hash TEXT PRIMARY KEY,
    person_id TEXT NOT NULL REFERENCES people(id),
    room_id TEXT NOT NULL REFERENCES rooms(id),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS links_person ON links(person_id);
-- The disruption ledger of a session: opaque ids, causes, steps and times, no names.
CREATE TABLE IF NOT EXISTS ledgers (
    room_id TEXT PRIMARY KEY REFERENCES rooms(id),
    rows TEXT NOT NULL,
    updated_at REAL NOT NULL
);

-- The audit log (telehealth.audit): hash-chained entries, and the head of the chain.
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    room_id TEXT,
    person_id TEXT,
    actor TEXT,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE TABLE IF NOT EXISTS audit_head (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    count INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT OR IGNORE INTO audit_head (only, count, hash) VALUES (1, 0, '{GENESIS_HASH}');
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Staff accounts (telehealth.accounts).
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('therapist', 'ops')),
    display_name TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until REAL
);
CREATE TABLE IF NOT EXISTS user_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    timezone TEXT NOT NULL DEFAULT 'UTC'
);
CREATE INDEX IF NOT EXISTS user_sessions_user ON user_sessions(user_id);
CREATE TABLE IF NOT EXISTS room_owners (
    room_id TEXT PRIMARY KEY REFERENCES rooms(id),
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE
);

-- Quality history of ended sessions (signaling.history).
CREATE TABLE IF NOT EXISTS quality_history (
    room_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    session_seconds REAL NOT NULL,
    usable_seconds REAL NOT NULL,
    -- {{"links": {{"<id>|<id>": [[t, code], ...]}}}}: one entry per change of a link's code.
    series TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quality_history_ended ON quality_history(ended_at);
"""

# Live sessions (telehealth.sessions, written by signaling.keeper): what a running session
# needs to survive its server, as opaque JSON of ids, levels and times.
_LIVE_SESSIONS = """
CREATE TABLE live_rooms (
    room_id TEXT PRIMARY KEY REFERENCES rooms(id),
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE live_quality (
    room_id TEXT PRIMARY KEY REFERENCES rooms(id),
    series TEXT NOT NULL,
    updated_at REAL NOT NULL
);
-- One row: when the server last said it was running, and when it last stopped cleanly.
CREATE TABLE server_clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    alive_at REAL NOT NULL,
    stopped_at REAL
);
"""

# Appointments and email (issue 17): a room's length, each person's address (encrypted like
# names), and one email per person waiting to go out or gone (telehealth.mail).
_APPOINTMENTS_AND_EMAIL = """
ALTER TABLE rooms ADD COLUMN minutes INTEGER;
ALTER TABLE people ADD COLUMN email BLOB;
CREATE TABLE mail (
    person_id TEXT PRIMARY KEY REFERENCES people(id),
    room_id TEXT NOT NULL REFERENCES rooms(id),
    -- The whole message (it holds the person's link), encrypted; NULL once it is sent.
    message BLOB,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL,
    sent_at REAL,
    -- Why it failed, in the console's words (never the server's reply: it may hold the address).
    reason TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX mail_due ON mail(state, next_at);
CREATE INDEX mail_room ON mail(room_id);
"""

# The baseline's per-account sign-in counters were never written: failed sign-ins are counted
# in memory, per address and per account (telehealth.ratelimit, LoginLimits).
_NO_ACCOUNT_LOCKOUT_COLUMNS = """
ALTER TABLE users DROP COLUMN failed_logins;
ALTER TABLE users DROP COLUMN locked_until;
"""

MIGRATIONS: list[Migration] = [
    Migration(1, "baseline: rooms, people, links, ledgers, audit, accounts, quality history", _BASELINE),
    Migration(2, "live sessions: room state, quality so far and the server's heartbeat, for restarts",
              _LIVE_SESSIONS),
    Migration(3, "appointments and email: rooms.minutes, people.email, the mail table", _APPOINTMENTS_AND_EMAIL),
    Migration(4, "users: drop failed_logins and locked_until, never used (sign-in limits are in memory)",
              _NO_ACCOUNT_LOCKOUT_COLUMNS),
]


def connect(path: Path, *, check: bool = False) -> sqlite3.Connection:
    """Open the database file as every process here uses it, at the latest schema version.

    ``check`` (the server's start) reads every page first (``PRAGMA quick_check``), so that a
    damaged file is refused at once rather than failing join after join. Raises StoreError.
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # The timeout first: switching a fresh file to WAL takes a lock that the CLI or the
        # server, opening the same file at that moment, may hold.
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL is safe against a crash of the process (a power cut may lose the
        # last commits); FULL would stop the event loop on a disk sync at every join.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        # Deleted personal data is zeroed in the file, not left in free pages.
        db.execute("PRAGMA secure_delete=ON")
        if check:
            check_integrity(db, path)
        migrate(db, path)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise refusal(path, exc) from None
    except BaseException:
        db.close()
        raise
    return db


def check_integrity(db: sqlite3.Connection, path: Path | str, *, thorough: bool = False) -> None:
    """Raise DamagedStoreError unless SQLite finds every page of the file sound.

    ``quick_check`` walks every page and cell in time linear in the file's size;
    ``integrity_check`` (``thorough``) also matches every index against its table.
    """
    pragma = "integrity_check" if thorough else "quick_check"
    findings = [str(r[0]) for r in db.execute(f"PRAGMA {pragma}(3)").fetchall()]
    if findings != ["ok"]:
        raise DamagedStoreError(_damaged(path, " ".join(findings[0].split())))


def refusal(path: Path | str, exc: sqlite3.DatabaseError) -> StoreError:
    # OperationalError: the file could not be used (locked, no permission, disk full);
    # any other DatabaseError: its content is not a sound SQLite database.
    if isinstance(exc, sqlite3.OperationalError):
        return StoreError(f"cannot use the database {path}: {exc}")
    return DamagedStoreError(_damaged(path, str(exc)))


def _damaged(path: Path | str, finding: str) -> str:
    return (f"the database {path} is damaged ({finding}): stop here and restore it from a backup "
            "with `telehealth restore BACKUP` (docs/deployment.md, \"Backups and the way back\")")


def latest_version() -> int:
    return MIGRATIONS[-1].version


def version_of(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def check_version(db: sqlite3.Connection, path: Path | str) -> int:
    """The file's version; raises NewerSchemaError for a file this code does not know."""
    found = version_of(db)
    if found > latest_version():
        raise NewerSchemaError(
            f"{path} was written by a newer telehealth (schema version {found}; this one knows up to "
            f"{latest_version()}): run the newer telehealth, or restore a backup made by this version"
        )
    return found


def migrate(db: sqlite3.Connection, path: Path | str = "the database") -> int:
    """Bring ``db`` (autocommit mode, ``isolation_level=None``) to the latest version.

    Returns the version the file had before. Raises NewerSchemaError, leaving it untouched.
    """
    before = check_version(db, path)
    for step in MIGRATIONS:
        if step.version <= before:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have run this step while we waited for the lock.
            if check_version(db, path) < step.version:
                if isinstance(step.apply, str):
                    for statement in statements(step.apply):
                        db.execute(statement)
                else:
                    step.apply(db)
                db.execute(f"PRAGMA user_version = {int(step.version)}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return before


def statements(script: str) -> Iterator[str]:
    """Split a script into statements, keeping a trigger's ``BEGIN ... END;`` whole.

    Not ``executescript``: it commits any open transaction first, and a step must run in one.
    """
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if _code(pending):
                yield pending.strip()
            pending = ""
    if _code(pending.rstrip(";")):
        raise ValueError(f"incomplete SQL statement: {pending.strip()[:60]!r}")


def _code(sql: str) -> bool:
    """Whether ``sql`` holds anything but blanks, comments and semicolons."""
    lines = (line.split("--", 1)[0] for line in sql.splitlines())
    return any(line.strip(" ;\t") for line in lines)
