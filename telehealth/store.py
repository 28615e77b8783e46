"""The SQLite store: rooms, the people in them, and their join links.

One file in the data dir, in WAL mode so the CLI can write while the server runs. Names,
phone numbers and email addresses are encrypted with the FieldCipher before they reach SQLite; join tokens are
stored only as SHA-256 hashes. Calls are synchronous and short: they run on joins and
commands, never per signaling message.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from telehealth import datadir, keys, schema
from telehealth.audit import AuditLog
from telehealth.crypto import FieldCipher, field_binding
from telehealth.keys import finish_interrupted_rotation, key_for
from telehealth.model import Person, RoomRecord  # plain core types, handed out from here
from telehealth.tokens import JoinLink, PersonId, RoomId


@dataclass(frozen=True, slots=True)
class NewLink:
    token_hash: str
    person_id: PersonId
    expires_at: float


class Store:
    def __init__(self, path: Path, cipher: FieldCipher, *, db: sqlite3.Connection | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.cipher = cipher
        # Every table, at the latest version (telehealth.schema).
        self._db = db if db is not None else schema.connect(path)
        # The tamper-evident log of security events lives in the same file.
        self.audit = AuditLog(self._db, time.time)

    @classmethod
    def open(cls, data_dir: Path, key_path: Path | None = None, *, check: bool = False) -> Store:
        """Open the data folder's database with its key, refusing (StoreError, KeyFileError)
        a key that does not open the data, a file from a newer version, or, with ``check``
        (the server's start), a damaged file."""
        datadir.make_private(data_dir)
        key_path = key_path or data_dir / "telehealth.key"
        db_path = data_dir / "telehealth.sqlite3"
        # A key rotation stopped by a crash is settled before the key is read.
        finish_interrupted_rotation(db_path, key_path)
        datadir.create_private_file(db_path)
        db = schema.connect(db_path, check=check)
        try:
            cipher = FieldCipher(key_for(db, db_path, key_path))
        except BaseException:
            db.close()
            raise
        return cls(db_path, cipher, db=db)

    def close(self) -> None:
        self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for feature modules that keep tables of their own here."""
        return self._db

    def data_version(self) -> int:
        """Changes whenever another connection (the CLI) commits to the file."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def rotate_key(self, key_path: Path, *, audit: AuditLog | None = None, actor: str | None = None) -> int:
        """Re-encrypt every personal field under a fresh key (telehealth/keys.py); from then
        on this store works under it. Returns how many values were re-encrypted."""
        count, self.cipher = keys.rotate_key(self._db, self.cipher, key_path, audit=audit, actor=actor)
        return count

    def check_writable(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("ROLLBACK")

    # -- personal fields ---------------------------------------------------------------

    def _seal(self, value: str | None, person_id: str, column: str) -> bytes | None:
        return None if value is None else self.cipher.encrypt(value, field_binding(column, person_id))

    def _open(self, blob: bytes | None, person_id: str, column: str) -> str | None:
        return None if blob is None else self.cipher.decrypt(blob, field_binding(column, person_id))

    # -- rooms -----------------------------------------------------------------------

    def insert_room(self, room: RoomRecord, links: Sequence[NewLink]) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO rooms (id, created_at, starts_at, started_at, ended_at, minutes)"
                " VALUES (?,?,?,?,?,?)",
                (room.id, room.created_at, room.starts_at, room.started_at, room.ended_at, room.minutes),
            )
            self._db.executemany(
                "INSERT INTO people (id, room_id, role, ordinal, name, phone, email) VALUES (?,?,?,?,?,?,?)",
                [
                    (p.id, room.id, p.role, p.ordinal, self._seal(p.name, p.id, "name"),
                     self._seal(p.phone, p.id, "phone"), self._seal(p.email, p.id, "email"))
                    for p in room.people
                ],
            )
            self._db.executemany(
                "INSERT INTO links (token_hash, person_id, room_id, created_at, expires_at)"
                " VALUES (?,?,?,?,?)",
                [(l.token_hash, l.person_id, room.id, room.created_at, l.expires_at) for l in links],
            )

    def get_room(self, room_id: str) -> RoomRecord | None:
        row = self._db.execute(
            "SELECT id, created_at, starts_at, started_at, ended_at, minutes FROM rooms WHERE id = ?", (room_id,)
        ).fetchone()
        if row is None:
            return None
        return self._room_from_row(row)

    def list_rooms(self, *, since: float | None = None) -> list[RoomRecord]:
        rows = self._db.execute(
            "SELECT id, created_at, starts_at, started_at, ended_at, minutes FROM rooms"
            " WHERE created_at >= ? ORDER BY created_at",
            (since or 0.0,),
        ).fetchall()
        return [self._room_from_row(r) for r in rows]

    def _room_from_row(self, row: tuple) -> RoomRecord:
        people = tuple(
            Person(
                id=PersonId(pid), room_id=RoomId(row[0]), role=role, ordinal=ordinal,
                name=self._open(name, pid, "name") or "", phone=self._open(phone, pid, "phone"),
                email=self._open(email, pid, "email"),
            )
            for pid, role, ordinal, name, phone, email in self._db.execute(
                "SELECT id, role, ordinal, name, phone, email FROM people WHERE room_id = ? ORDER BY ordinal",
                (row[0],),
            )
        )
        return RoomRecord(RoomId(row[0]), row[1], row[2], row[3], row[4], people, row[5])

    def set_phone(self, person_id: str, phone: str | None) -> None:
        """A partner's corrected number (already E.164), encrypted like the rest."""
        self._db.execute("UPDATE people SET phone = ? WHERE id = ?",
                         (self._seal(phone, person_id, "phone"), person_id))

    def mark_started(self, room_id: str, now: float) -> None:
        self._db.execute(
            "UPDATE rooms SET started_at = ? WHERE id = ? AND started_at IS NULL", (now, room_id)
        )

    def end_room(self, room_id: str, now: float) -> bool:
        """End the room and revoke its links. False if it was unknown or already ended."""
        with self._transaction():
            cur = self._db.execute(
                "UPDATE rooms SET ended_at = ? WHERE id = ? AND ended_at IS NULL", (now, room_id)
            )
            if cur.rowcount == 0:
                return False
            self._db.execute(
                "UPDATE links SET revoked_at = ? WHERE room_id = ? AND revoked_at IS NULL", (now, room_id)
            )
        return True

    def ended_among(self, room_ids: Iterable[str]) -> set[RoomId]:
        ids = list(room_ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = self._db.execute(
            f"SELECT id FROM rooms WHERE ended_at IS NOT NULL AND id IN ({marks})", ids
        ).fetchall()
        return {RoomId(r[0]) for r in rows}

    # -- links -----------------------------------------------------------------------

    def find_link(self, token_hash: str) -> JoinLink | None:
        row = self._db.execute(
            "SELECT l.token_hash, l.room_id, l.person_id, p.role, l.expires_at, l.revoked_at,"
            " r.ended_at, CASE WHEN r.minutes IS NULL THEN NULL ELSE r.starts_at END"
            " FROM links l JOIN people p ON p.id = l.person_id"
            " JOIN rooms r ON r.id = l.room_id WHERE l.token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        return JoinLink(row[0], RoomId(row[1]), PersonId(row[2]), row[3], row[4], row[5], row[6], row[7])

    def replace_link(self, person_id: str, link: NewLink, now: float) -> None:
        """Revoke a person's links and issue a new one (a lost or leaked link)."""
        with self._transaction():
            room_id = self._db.execute(
                "SELECT room_id FROM people WHERE id = ?", (person_id,)
            ).fetchone()[0]
            self._db.execute(
                "UPDATE links SET revoked_at = ? WHERE person_id = ? AND revoked_at IS NULL",
                (now, person_id),
            )
            self._db.execute(
                "INSERT INTO links (token_hash, person_id, room_id, created_at, expires_at)"
                " VALUES (?,?,?,?,?)",
                (link.token_hash, person_id, room_id, now, link.expires_at),
            )

    # -- ledgers ---------------------------------------------------------------------

    def save_ledger(self, room_id: str, rows_json: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO ledgers (room_id, rows, updated_at) VALUES (?,?,?)"
            " ON CONFLICT(room_id) DO UPDATE SET rows = excluded.rows, updated_at = excluded.updated_at",
            (room_id, rows_json, now),
        )

    def load_ledger(self, room_id: str) -> str | None:
        row = self._db.execute("SELECT rows FROM ledgers WHERE room_id = ?", (room_id,)).fetchone()
        return None if row is None else str(row[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
