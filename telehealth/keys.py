"""Rotation of the key that encrypts names and phone numbers, safe against a crash at any step.

``rotate_key`` works under an exclusive lock on ``<key>.lock``:

1. copy the current key to ``<key>.old-<UTC time>`` (0600). It is kept afterwards: database
   backups taken before the rotation need it. Delete it once those backups are gone.
2. write the new key to ``<key>.new`` (0600) and fsync it.
3. in one transaction, re-encrypt every name and phone under the new key (and append the
   ``key_rotated`` audit entry); commit.
4. rename ``<key>.new`` over ``<key>`` (atomic) and fsync the directory.

Recovery: a ``<key>.new`` left behind means a rotation stopped between steps 2 and 4.
``finish_interrupted_rotation`` runs before the store loads its key and asks the database
which side of step 3 it stopped on. Step 3 is one transaction, so all values are under one
key: if they are still under the current key the commit never happened and ``<key>.new`` is
discarded; otherwise (or with no values at all) ``<key>.new`` is moved into place. Either way
the key file ends up matching the database and nothing is lost.

A running server keeps the key in memory and would go on writing under the old one, so it
holds a shared lock on ``<key>.lock`` (``key_in_use``) for its lifetime, and ``rotate_key``
refuses instead of waiting while that lock is held: rotate with the server stopped.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telehealth.audit import AuditEvent, AuditLog
from telehealth.crypto import FieldCipher, KeyFileError, field_binding, load_key, load_or_create_key, write_key
from telehealth.datadir import sync


class KeyBusyError(KeyFileError):
    """The key's lock is held: a server is running on it, or a rotation is under way."""


class KeyMismatchError(KeyFileError):
    """The key file is missing or is another key, and the database holds data under its key."""


class Recovery(str, enum.Enum):
    NOTHING = "nothing"        # no rotation had been interrupted
    COMPLETED = "completed"    # the database was under the new key: it is now the key file
    DISCARDED = "discarded"    # the database was still under the old key: new key dropped


def rotate_key(
    db: sqlite3.Connection, cipher: FieldCipher, key_path: Path, *, audit: AuditLog | None = None,
    actor: str | None = None,
) -> tuple[int, FieldCipher]:
    """Re-encrypt every stored name and phone under a fresh 256-bit key: how many, and the
    cipher of the new key (``Store.rotate_key`` takes it up).

    ``cipher`` must be the key at ``key_path``, the one ``db``'s values are sealed under.
    Raises KeyBusyError while a server holds ``key_in_use``.
    """
    new_path = _sibling(key_path, ".new")
    with _locked(key_path, fcntl.LOCK_EX, "the key is in use: stop the server, then rotate"):
        if new_path.exists():
            raise KeyFileError(
                f"{new_path} is left from an interrupted rotation; open the store once to settle it"
            )
        if not key_path.exists():
            raise KeyFileError(f"{key_path} does not exist")
        old_key = load_or_create_key(key_path)
        old_cipher = FieldCipher(old_key)
        if old_cipher.key_id != cipher.key_id:
            raise KeyFileError(f"{key_path} is not the key this store was opened with")
        new_key = AESGCM.generate_key(bit_length=256)
        new_cipher = FieldCipher(new_key)
        backup_path = _backup_path(key_path)
        _write_durably(backup_path, old_key)
        _write_durably(new_path, new_key)
        try:
            count = _reencrypt(db, old_cipher, new_cipher, audit, actor)
        except BaseException:
            # Only drop the new key when the database is certainly not under it; otherwise
            # leave <key>.new for finish_interrupted_rotation.
            if not _first_value_is_under(db, new_cipher):
                new_path.unlink()
                backup_path.unlink()
            raise
        os.replace(new_path, key_path)
        sync(key_path.parent)
    return count, new_cipher


def finish_interrupted_rotation(db_path: Path, key_path: Path) -> Recovery:
    """Settle a rotation that stopped between writing ``<key>.new`` and renaming it.

    Call before loading the key (Store.open). Cheap when there is nothing to do.
    """
    new_path = _sibling(key_path, ".new")
    if not new_path.exists():
        return Recovery.NOTHING
    with _locked(key_path, fcntl.LOCK_EX, "a key rotation is under way; try again in a moment"):
        if not new_path.exists():
            return Recovery.NOTHING
        if key_path.exists() and db_path.exists():
            current = FieldCipher(load_or_create_key(key_path))
            with contextlib.closing(sqlite3.connect(db_path)) as db:
                if _first_value_is_under(db, current):
                    new_path.unlink()
                    return Recovery.DISCARDED
        os.replace(new_path, key_path)
        sync(key_path.parent)
        return Recovery.COMPLETED


@contextlib.contextmanager
def key_in_use(key_path: Path) -> Iterator[None]:
    """Held by the server while it runs, so that no rotation swaps the key under it."""
    with _locked(key_path, fcntl.LOCK_SH, "a key rotation is under way; start the server after it"):
        yield


def _reencrypt(
    db: sqlite3.Connection,
    old: FieldCipher,
    new: FieldCipher,
    audit: AuditLog | None,
    actor: str | None,
) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        rows = db.execute(
            "SELECT id, name, phone, email FROM people"
            " WHERE name IS NOT NULL OR phone IS NOT NULL OR email IS NOT NULL"
        ).fetchall()
        count = 0
        for person_id, *blobs in rows:
            sealed: list[bytes | None] = []
            for column, blob in zip(("name", "phone", "email"), blobs):
                if blob is None:
                    sealed.append(None)
                    continue
                aad = field_binding(column, person_id)
                sealed.append(new.encrypt(old.decrypt(blob, aad), aad))
                count += 1
            db.execute("UPDATE people SET name = ?, phone = ?, email = ? WHERE id = ?", (*sealed, person_id))
        # Emails not sent yet hold a link: encrypted too (telehealth.mail).
        for person_id, blob in db.execute(
                "SELECT person_id, message FROM mail WHERE message IS NOT NULL").fetchall():
            aad = f"mail.message:{person_id}"
            db.execute("UPDATE mail SET message = ? WHERE person_id = ?",
                       (new.encrypt(old.decrypt(blob, aad), aad), person_id))
            count += 1
        if audit is not None:
            audit.append(
                AuditEvent.KEY_ROTATED, actor=actor,
                detail={"values": count, "old_key_id": old.key_id.hex(),
                        "new_key_id": new.key_id.hex()},
            )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return count


def _first_value_is_under(db: sqlite3.Connection, cipher: FieldCipher) -> bool:
    """Whether the first encrypted value decrypts under ``cipher``; False if there is none.

    One value speaks for all: re-encryption is one transaction.
    """
    sealed = first_sealed_value(db)
    return sealed is not None and opens(cipher, sealed)


SealedValue = tuple[str, str, bytes]  # person id, column, ciphertext


def first_sealed_value(db: sqlite3.Connection) -> SealedValue | None:
    """One encrypted value of the database, or None if it holds none (new, or all purged)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'people'").fetchone() is None:
        return None
    row = db.execute(
        "SELECT id, name, phone FROM people WHERE name IS NOT NULL OR phone IS NOT NULL LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    person_id, name, phone = row
    return (person_id, "name", name) if name is not None else (person_id, "phone", phone)


def opens(cipher: FieldCipher, sealed: SealedValue) -> bool:
    person_id, column, blob = sealed
    try:
        cipher.decrypt(blob, field_binding(column, person_id))
    except (KeyFileError, InvalidTag):
        return False
    return True


def key_for(db: sqlite3.Connection, db_path: Path, key_path: Path) -> bytes:
    """The key at ``key_path`` if it opens what ``db`` holds; a new key only if it holds nothing.

    A new key over encrypted data would make every name and number unreadable and every link
    fail, so a missing or different key file is refused in one line instead.
    """
    sealed = first_sealed_value(db)
    if sealed is not None and not key_path.exists():
        raise KeyMismatchError(
            f"the key file {key_path} is missing, and {db_path} holds names and numbers encrypted "
            "under it: put that key file back from where you keep its copy (or point --key-file "
            "at it); telehealth will not make a new key over them"
        )
    key = load_or_create_key(key_path)
    if sealed is not None and not opens(FieldCipher(key), sealed):
        raise KeyMismatchError(
            f"the key file {key_path} does not open the names and numbers in {db_path} (it is "
            "another key): put back the key file that belongs to this database (a key rotation "
            f"keeps the previous one as {key_path.name}.old-<time>)"
        )
    return key


def key_problem(db: sqlite3.Connection, cipher: FieldCipher, key_path: Path) -> str | None:
    """Why the server's key is not fit to go on, for /readyz; None when it is.

    Cheap (one row, one decryption, one small file): the check runs on every probe.
    """
    sealed = first_sealed_value(db)
    if sealed is not None and not opens(cipher, sealed):
        return "key does not open the stored data"
    try:
        on_disk = FieldCipher(load_key(key_path))
    except (OSError, KeyFileError, ValueError):
        return "key file missing or unreadable (the next start would fail)"
    if on_disk.key_id != cipher.key_id:
        return "key file replaced on disk (the next start would fail)"
    return None




@contextlib.contextmanager
def _locked(key_path: Path, mode: int, busy: str) -> Iterator[None]:
    # flock, not a pid file: the kernel drops it when its holder dies, so a crash leaves no
    # stale lock. The lock file itself is never deleted (that would race with a new holder).
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(_sibling(key_path, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeyBusyError(busy) from None
        yield
    finally:
        os.close(fd)


def _sibling(key_path: Path, suffix: str) -> Path:
    return key_path.with_name(key_path.name + suffix)


def _backup_path(key_path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = _sibling(key_path, f".old-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = _sibling(key_path, f".old-{stamp}-{n}")
    return candidate


def _write_durably(path: Path, key: bytes) -> None:
    """write_key, then fsync file and folder: the key must be on disk before the commit."""
    write_key(path, key)
    sync(path)
    sync(path.parent)
