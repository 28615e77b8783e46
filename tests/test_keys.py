"""Key rotation against a real store and key files, including real crashes mid-rotation."""

from __future__ import annotations

import base64
import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telehealth import rooms
from telehealth.audit import AuditLog
from telehealth.crypto import FieldCipher, KeyFileError, write_key
from telehealth.keys import (
    KeyBusyError,
    Recovery,
    finish_interrupted_rotation,
    key_in_use,
)
from telehealth.store import Store

THERAPIST = "Dr Quentin Zebedee"
PARTNERS = (("Alicia Fernandez-Okafor", "+442079460123"), ("Bartholomew Nakagawa", "+12025554477"))
PERSONAL = [THERAPIST.encode(), *(s.encode() for pair in PARTNERS for s in pair)]
REPO = Path(__file__).resolve().parents[1]


def read_key(path: Path) -> bytes:
    return base64.b64decode(path.read_bytes().strip())


def raw_bytes(store_path: Path) -> bytes:
    files = [store_path, Path(f"{store_path}-wal"), Path(f"{store_path}-shm")]
    return b"".join(f.read_bytes() for f in files if f.exists())


def names_of(store: Store, room_id: str) -> list[tuple[str, str | None]]:
    room = store.get_room(room_id)
    assert room is not None
    return [(p.name, p.phone) for p in room.people]


EXPECTED = [(THERAPIST, None), *PARTNERS]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def key_path(data_dir: Path) -> Path:
    return data_dir / "telehealth.key"


@pytest.fixture
def room_id(data_dir: Path) -> str:
    store = Store.open(data_dir)
    try:
        return rooms.create_room(
            store, therapist=THERAPIST, partners=[rooms.PartnerSpec(n, p) for n, p in PARTNERS],
            base_url="https://video.clinic.example", link_ttl=3600.0, now=time.time(),
        ).room_id
    finally:
        store.close()


@pytest.fixture
def store(data_dir: Path, room_id: str) -> Iterator[Store]:
    opened = Store.open(data_dir)
    yield opened
    opened.close()


def test_rotation_re_encrypts_everything_and_the_new_key_reads_it_back(
    store: Store, data_dir: Path, key_path: Path, room_id: str
) -> None:
    old_key = read_key(key_path)
    old_blobs = store.db.execute("SELECT id, name, phone FROM people").fetchall()
    assert not any(value in raw_bytes(store.path) for value in PERSONAL)

    assert store.rotate_key(key_path) == 5  # three names, two phones

    new_key = read_key(key_path)
    assert new_key != old_key and len(new_key) == 32
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert names_of(store, room_id) == EXPECTED  # the same Store goes on working
    store.close()
    reopened = Store.open(data_dir)
    try:
        assert names_of(reopened, room_id) == EXPECTED
        new_blobs = reopened.db.execute("SELECT id, name, phone FROM people").fetchall()
    finally:
        reopened.close()
    assert not any(value in raw_bytes(store.path) for value in PERSONAL)
    assert {row[1] for row in new_blobs}.isdisjoint({row[1] for row in old_blobs})


def test_the_old_key_no_longer_decrypts_anything(store: Store, key_path: Path) -> None:
    old_key = read_key(key_path)
    store.rotate_key(key_path)
    old_cipher, old_aead = FieldCipher(old_key), AESGCM(old_key)
    for person_id, name, _ in store.db.execute("SELECT id, name, phone FROM people"):
        aad = f"people.name:{person_id}"
        with pytest.raises(KeyFileError):
            old_cipher.decrypt(name, aad)
        # Not just the key-id check: the AES-GCM tag itself refuses the old key.
        with pytest.raises(InvalidTag):
            old_aead.decrypt(name[5:17], name[17:], aad.encode())


def test_the_old_key_is_kept_aside_with_mode_0600(store: Store, data_dir: Path, key_path: Path) -> None:
    old_key = read_key(key_path)
    store.rotate_key(key_path)
    store.rotate_key(key_path)
    backups = sorted(data_dir.glob("telehealth.key.old-*"))
    assert len(backups) == 2
    assert read_key(backups[0]) == old_key
    assert all(b.stat().st_mode & 0o777 == 0o600 for b in backups)
    assert not (data_dir / "telehealth.key.new").exists()


def test_rotation_is_audited_without_any_key_material(store: Store, key_path: Path) -> None:
    audit = AuditLog(store.db, time.time)
    old_key = read_key(key_path)
    store.rotate_key(key_path, audit=audit, actor="cli")
    [entry] = [e for e in map(json.loads, audit.export()) if e["event"] == "key_rotated"]
    assert entry["event"] == "key_rotated" and entry["actor"] == "cli"
    assert entry["detail"]["values"] == 5
    assert entry["detail"]["old_key_id"] == FieldCipher(old_key).key_id.hex()
    assert entry["detail"]["new_key_id"] == FieldCipher(read_key(key_path)).key_id.hex()
    assert audit.verify().ok


def test_rotation_is_refused_while_a_server_holds_the_key(
    store: Store, key_path: Path, room_id: str
) -> None:
    old_key = read_key(key_path)
    with key_in_use(key_path), pytest.raises(KeyBusyError, match="stop the server"):
        store.rotate_key(key_path)
    assert read_key(key_path) == old_key
    assert names_of(store, room_id) == EXPECTED
    assert store.rotate_key(key_path) == 5  # released: now it works


def test_a_server_cannot_start_during_a_rotation(store: Store, key_path: Path) -> None:
    # Hold the lock the way a rotation in another process would.
    with open(f"{key_path}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        with pytest.raises(KeyBusyError, match="rotation is under way"), key_in_use(key_path):
            pass
    with key_in_use(key_path):
        pass


def test_rotation_refuses_a_key_file_that_is_not_the_stores_key(
    store: Store, data_dir: Path, key_path: Path, room_id: str
) -> None:
    other = data_dir / "other.key"
    write_key(other, AESGCM.generate_key(bit_length=256))
    with pytest.raises(KeyFileError, match="not the key this store was opened with"):
        store.rotate_key(other)
    assert names_of(store, room_id) == EXPECTED


def test_a_failed_re_encryption_changes_nothing(
    store: Store, data_dir: Path, key_path: Path, room_id: str
) -> None:
    # A value sealed under some other key cannot be re-encrypted: the whole rotation rolls back.
    stray = FieldCipher(AESGCM.generate_key(bit_length=256))
    person_id = store.db.execute("SELECT id FROM people WHERE ordinal = 2").fetchone()[0]
    store.db.execute(
        "UPDATE people SET phone = ? WHERE id = ?",
        (stray.encrypt("+1 555 010 9999", f"people.phone:{person_id}"), person_id),
    )
    old_key = read_key(key_path)
    before = store.db.execute("SELECT id, name, phone FROM people ORDER BY id").fetchall()
    with pytest.raises(KeyFileError):
        store.rotate_key(key_path)
    assert store.db.execute("SELECT id, name, phone FROM people ORDER BY id").fetchall() == before
    assert read_key(key_path) == old_key and store.cipher.key_id == FieldCipher(old_key).key_id
    assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith("telehealth.key")) == [
        "telehealth.key", "telehealth.key.lock",
    ]


def test_nothing_to_recover_after_a_clean_rotation(store: Store, key_path: Path) -> None:
    store.rotate_key(key_path)
    assert finish_interrupted_rotation(store.path, key_path) is Recovery.NOTHING


# A real process that dies (os._exit, no cleanup) at a chosen step of Store.rotate_key.
CRASHING_ROTATION = """
import os, sys, time
from pathlib import Path
from telehealth.audit import AuditLog
from telehealth.store import Store

data_dir, step = Path(sys.argv[1]), sys.argv[2]
store = Store.open(data_dir)
key_path = data_dir / "telehealth.key"
if step == "after_commit":
    real_replace = os.replace
    def replace(src, dst):
        if str(src).endswith(".new"):
            os._exit(3)  # the database committed; the key file swap never happens
        real_replace(src, dst)
    os.replace = replace
    store.rotate_key(key_path)
else:
    class DiesBeforeCommit(AuditLog):
        def append(self, *args, **kwargs):
            os._exit(3)  # inside the re-encryption transaction, before COMMIT
    store.rotate_key(key_path, audit=DiesBeforeCommit(store.db, time.time))
"""


def crash_rotation(data_dir: Path, step: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_ROTATION, str(data_dir), step],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 3, done.stderr


def test_a_crash_after_the_commit_is_finished_on_the_next_start(
    data_dir: Path, key_path: Path, room_id: str
) -> None:
    old_key = read_key(key_path)
    crash_rotation(data_dir, "after_commit")
    new_path = data_dir / "telehealth.key.new"
    assert new_path.exists() and read_key(key_path) == old_key  # the dangerous state

    assert finish_interrupted_rotation(data_dir / "telehealth.sqlite3", key_path) is Recovery.COMPLETED

    assert not new_path.exists() and read_key(key_path) != old_key
    store = Store.open(data_dir)
    try:
        assert names_of(store, room_id) == EXPECTED
    finally:
        store.close()


def test_a_crash_before_the_commit_keeps_the_old_key(
    data_dir: Path, key_path: Path, room_id: str
) -> None:
    old_key = read_key(key_path)
    crash_rotation(data_dir, "before_commit")
    assert (data_dir / "telehealth.key.new").exists()

    assert finish_interrupted_rotation(data_dir / "telehealth.sqlite3", key_path) is Recovery.DISCARDED

    assert not (data_dir / "telehealth.key.new").exists() and read_key(key_path) == old_key
    store = Store.open(data_dir)
    try:
        assert names_of(store, room_id) == EXPECTED
        assert store.rotate_key(key_path) == 5  # and a new rotation goes through
    finally:
        store.close()


def test_rotation_refuses_to_start_over_an_unsettled_one(
    data_dir: Path, key_path: Path, room_id: str
) -> None:
    crash_rotation(data_dir, "after_commit")
    store = Store(data_dir / "telehealth.sqlite3", FieldCipher(read_key(key_path)))
    try:
        with pytest.raises(KeyFileError, match="interrupted rotation"):
            store.rotate_key(key_path)
    finally:
        store.close()
    assert finish_interrupted_rotation(data_dir / "telehealth.sqlite3", key_path) is Recovery.COMPLETED
