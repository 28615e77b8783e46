"""Backups of the database while the server runs, and a checked way back.

``backup`` copies the database with SQLite's online backup API in one step, so the copy is
the database as it stood at one instant, while the server goes on writing (WAL mode: one
reader does not stop the writer). The copy is a single self-contained file (journal mode
DELETE), 0600, written beside its destination and renamed into place only once SQLite has
checked it, so a half-written backup never carries the final name.

The key file is not in the copy, on purpose: a stolen backup alone reveals no name or number.
Keep a copy of the key somewhere else than the backups; without it a backup cannot be read.

``restore`` puts a backup in place of the data folder's database, only after checking it:
SQLite finds it sound (``integrity_check``), its schema version is one this telehealth knows
(an older one is upgraded at the next start), and the key file opens its names and numbers.
It refuses while a server runs on the folder (it takes the server's lock for the whole
restore), and keeps the database it replaces beside it, so a restore can be undone too.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from telehealth import datadir, schema
from telehealth.crypto import FieldCipher, KeyFileError, load_key
from telehealth.keys import SealedValue, first_sealed_value, key_in_use, opens
from telehealth.schema import StoreError


@dataclass(frozen=True, slots=True)
class Copied:
    """What a backup or a restore holds: its schema version and its rooms."""

    path: Path
    version: int
    rooms: int


@dataclass(frozen=True, slots=True)
class Restored:
    copied: Copied
    # The database the restore replaced (with its -wal/-shm beside it), or None if none.
    kept_aside: Path | None


def backup(db_path: Path, dest: Path) -> Copied:
    """Copy the live database at ``db_path`` to ``dest`` (a new file). Raises StoreError."""
    if not db_path.exists():
        raise StoreError(f"no database at {db_path}")
    if dest.exists():
        raise StoreError(f"{dest} already exists: give the backup a new name")
    if not dest.parent.is_dir():
        raise StoreError(f"the folder {dest.parent} does not exist")
    partial = dest.with_name(dest.name + ".partial")
    with _written(partial, db_path):
        # Not schema.connect: a backup must not migrate the file under a running server.
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as source:
            source.execute("PRAGMA busy_timeout=5000")
            copied = Copied(dest, *_copy_checked(source, partial, db_path))
        os.replace(partial, dest)
        datadir.sync(dest.parent)
    return copied


def restore(source: Path, data_dir: Path, key_path: Path) -> Restored:
    """Put the backup at ``source`` in place of ``data_dir``'s database. Raises StoreError or
    KeyFileError, having changed nothing, if a server runs there or the backup does not pass."""
    if not source.is_file():
        raise StoreError(f"no backup at {source}")
    db_path = data_dir / datadir.DATABASE_NAME
    with datadir.ServerLock(data_dir).acquire(
        "stop it before restoring (systemctl stop telehealth), then run restore again"
    ), key_in_use(key_path):
        # Copied first, then checked: what is checked is what gets installed, and the backup
        # itself is only read.
        incoming = data_dir / f"{datadir.DATABASE_NAME}.restoring"
        with _written(incoming, source):
            with contextlib.closing(_open_read_only(source)) as backup_db:
                found = _copy_checked(backup_db, incoming, source,
                                      lambda copy: schema.check_version(copy, source),
                                      lambda copy: _check_key(copy, source, key_path))
            kept = _set_aside(db_path)
            os.replace(incoming, db_path)
            datadir.sync(data_dir)
    return Restored(Copied(db_path, *found), kept)


def _open_read_only(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    return db


@contextlib.contextmanager
def _written(path: Path, origin: Path) -> Iterator[None]:
    """``path`` created empty and 0600 for a copy, and removed again if anything fails (a
    SQLite error becomes the one-line refusal naming ``origin``)."""
    path.unlink(missing_ok=True)
    datadir.create_private_file(path)
    try:
        yield
    except sqlite3.DatabaseError as exc:
        path.unlink(missing_ok=True)
        raise schema.refusal(origin, exc) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _copy_checked(source: sqlite3.Connection, dest: Path, origin: Path,
                  *checks: Callable[[sqlite3.Connection], object]) -> tuple[int, int]:
    """Copy ``source`` into ``dest`` as one self-contained file, check it, sync it; return its
    schema version and number of rooms."""
    with contextlib.closing(sqlite3.connect(dest, isolation_level=None)) as copy:
        # pages=-1: the whole file in one step, under one read transaction.
        source.backup(copy, pages=-1)
        copy.execute("PRAGMA journal_mode=DELETE")
        found = _checked(copy, origin)
        for check in checks:
            check(copy)
    datadir.sync(dest)
    return found


def _checked(copy: sqlite3.Connection, origin: Path) -> tuple[int, int]:
    """Every page and index of the copy sound (or the refusal names ``origin``); its schema
    version and number of rooms."""
    schema.check_integrity(copy, origin, thorough=True)
    has_rooms = copy.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rooms'").fetchone()
    rooms = int(copy.execute("SELECT count(*) FROM rooms").fetchone()[0]) if has_rooms else 0
    return schema.version_of(copy), rooms


def _check_key(db: sqlite3.Connection, source: Path, key_path: Path) -> None:
    sealed = first_sealed_value(db)
    if sealed is None:
        return
    if not key_path.exists():
        raise KeyFileError(
            f"the key file {key_path} is missing: put back the key that was in use when {source} "
            "was made, then run restore again"
        )
    if opens(FieldCipher(load_key(key_path)), sealed):
        return
    # A rotation since the backup keeps the key it replaced beside the current one.
    for older in sorted(key_path.parent.glob(f"{key_path.name}.old-*")):
        if _opens_with(older, sealed):
            raise KeyFileError(
                f"the key file {key_path} does not open {source}, but {older} (kept from a key "
                f"rotation) does: copy it over {key_path} (keep a copy of the current one), "
                "then run restore again"
            )
    raise KeyFileError(
        f"the key file {key_path} does not open the names and numbers in {source}: put back the "
        "key that was in use when the backup was made, then run restore again"
    )


def _opens_with(key_path: Path, sealed: SealedValue) -> bool:
    try:
        return opens(FieldCipher(load_key(key_path)), sealed)
    except (KeyFileError, OSError):
        return False


def _set_aside(db_path: Path) -> Path | None:
    """Rename the current database and its -wal/-shm together, so it stays openable."""
    if not db_path.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = db_path.with_name(f"{db_path.name}.before-restore-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db_path.with_name(f"{db_path.name}.before-restore-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    os.replace(db_path, aside)
    return aside

