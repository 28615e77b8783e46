"""`telehealth backup` while the server writes, and `telehealth restore` with its checks,
through the real commands and a real `telehealth serve`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telehealth import schema
from telehealth.audit import AuditLog
from telehealth.crypto import FieldCipher, load_key, write_key
from telehealth.store import Store
from tests.conftest import free_port
from tests.served import TELEHEALTH, Launcher, run


def create_room(data_dir: Path, base_url: str) -> dict:
    made = run("room", "create", "--data-dir", str(data_dir), "--therapist", "Dr Ada Lovelace",
               "--partner", "Sam Rivera", "--phone", "+1 202 555 0102", "--base-url", base_url, "--json")
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)


def ws_url(link: str) -> tuple[str, str]:
    base, token = link.rsplit("/j/", 1)
    return base.replace("http", "ws", 1) + "/ws", token


async def join_once(session: aiohttp.ClientSession, link: str, *, limited_ok: bool = False) -> dict | None:
    """Join with ``link`` over the real WebSocket and leave; the server audits each join.
    ``limited_ok``: a refusal for joining too often (the link's limit) is None, not a failure."""
    url, token = ws_url(link)
    async with session.ws_connect(url) as ws:
        await ws.send_json({"type": "join", "v": 1, "token": token})
        async for msg in ws:
            data = json.loads(msg.data)
            if data["type"] == "welcome":
                return data
            if data["type"] == "error" and data.get("code") == "rate_limited" and limited_ok:
                return None
            assert data["type"] != "error", data
    raise AssertionError("closed before welcome")


def audit_count(db_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return int(db.execute("SELECT count FROM audit_head").fetchone()[0])


def open_copy(path: Path, key_path: Path) -> Store:
    return Store(path, FieldCipher(load_key(key_path)))


async def test_a_backup_taken_while_the_server_writes_is_whole_and_opens_with_the_key(
    serve: Launcher, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    served = await serve(data, port)
    assert served.serving
    # Enough links that joining as fast as it can stays under each link's limit (20 a minute)
    # for a few seconds. A backup that a busy machine holds up for longer may meet a refusal for
    # joining too often (CI did): the server's limit, not the backup's fault; the writer goes on.
    rooms = [create_room(data, served.base_url) for _ in range(12)]
    copy = tmp_path / "backups" / "monday.sqlite3"
    copy.parent.mkdir()

    joins: list[float] = []
    stop = asyncio.Event()

    async def keep_joining() -> None:
        # The server writes an audit entry per join, all through the backup.
        attempts = 0
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                welcome = await join_once(session, rooms[attempts % len(rooms)]["therapist_link"], limited_ok=True)
                attempts += 1
                if welcome is not None:
                    assert welcome["you"]["name"] == "Dr Ada Lovelace"
                    joins.append(time.monotonic())

    writer = asyncio.create_task(keep_joining())
    while len(joins) < 5:  # writing before the backup starts
        await asyncio.wait([writer], timeout=0.05)
        assert not writer.done(), writer
    before = audit_count(data / "telehealth.sqlite3")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *TELEHEALTH, "backup", "--data-dir", str(data), str(copy),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    finished = time.monotonic()
    while not any(t > finished for t in joins):  # and after it
        await asyncio.wait([writer], timeout=0.05)
        assert not writer.done(), writer
    stop.set()
    await writer
    after = audit_count(data / "telehealth.sqlite3")

    assert proc.returncode == 0, err.decode()
    assert "Backed up 12 rooms" in out.decode()
    assert "key file is not in the backup" in out.decode() and str(data / "telehealth.key") in out.decode()
    assert any(started < t < finished for t in joins), "the server did not write during the backup"
    assert not copy.with_name(copy.name + ".partial").exists()
    assert copy.stat().st_mode & 0o777 == 0o600
    assert not copy.with_name(copy.name + "-wal").exists()  # one self-contained file
    # The copy is the database at one instant: its audit chain is whole, its rooms read back
    # with the key, and it holds the writes from before the backup (and none from after).
    store = open_copy(copy, data / "telehealth.key")
    try:
        verified = AuditLog(store.db, time.time).verify()
        assert verified.ok, verified.reason
        assert before <= verified.checked <= after
        names = {p.name for r in store.list_rooms() for p in r.people}
        assert names == {"Dr Ada Lovelace", "Sam Rivera"}
        assert {r.id for r in store.list_rooms()} == {r["room_id"] for r in rooms}
    finally:
        store.close()
    # The server went on serving throughout.
    assert served.proc.returncode is None


async def test_restore_brings_back_the_backup_and_keeps_the_replaced_database(
    serve: Launcher, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    base_url = f"http://127.0.0.1:{port}"
    room = create_room(data, base_url)
    copy = tmp_path / "before-the-mistake.sqlite3"
    assert run("backup", "--data-dir", str(data), str(copy)).returncode == 0
    # The mistake: the room is ended, its links revoked.
    assert run("room", "end", "--data-dir", str(data), room["room_id"]).returncode == 0

    restored = run("restore", "--data-dir", str(data), str(copy))
    assert restored.returncode == 0, restored.stderr
    assert "Restored 1 rooms" in restored.stdout
    kept = [p for p in data.iterdir() if ".before-restore-" in p.name]
    assert len(kept) == 1 and kept[0].stat().st_mode & 0o777 == 0o600
    with contextlib.closing(sqlite3.connect(kept[0])) as db:  # the replaced one, as it was
        assert db.execute("SELECT ended_at FROM rooms").fetchone()[0] is not None

    served = await serve(data, port)
    assert served.serving
    async with aiohttp.ClientSession() as session:
        async with session.get(room["partner_links"][0]) as r:
            assert r.status == 200
        welcome = await join_once(session, room["therapist_link"])
        assert welcome is not None and welcome["you"]["name"] == "Dr Ada Lovelace"


async def test_restore_is_refused_while_a_server_runs_on_the_folder(serve: Launcher, tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    create_room(data, f"http://127.0.0.1:{port}")
    copy = tmp_path / "b.sqlite3"
    assert run("backup", "--data-dir", str(data), str(copy)).returncode == 0
    served = await serve(data, port)
    assert served.serving
    before = sorted(p.name for p in data.iterdir())
    refused = run("restore", "--data-dir", str(data), str(copy))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert "another telehealth server is running" in refused.stderr and "stop it before restoring" in refused.stderr
    assert sorted(p.name for p in data.iterdir()) == before


def damaged(copy: Path, key: Path) -> None:
    with copy.open("r+b") as f:
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096)


def newer(copy: Path, key: Path) -> None:
    with contextlib.closing(sqlite3.connect(copy)) as db:
        db.execute(f"PRAGMA user_version = {schema.latest_version() + 1}")
        db.commit()


def other_key(copy: Path, key: Path) -> None:
    write_key(key, AESGCM.generate_key(bit_length=256))


def no_key(copy: Path, key: Path) -> None:
    key.unlink()


@pytest.mark.parametrize(("spoil", "words"), [
    (damaged, ["is damaged"]),
    (newer, ["newer telehealth", "schema version"]),
    (other_key, ["does not open the names and numbers"]),
    (no_key, ["is missing", "put back the key"]),
])
def test_restore_refuses_a_backup_that_does_not_pass_and_changes_nothing(
    tmp_path: Path, spoil: Callable[[Path, Path], None], words: list[str]
) -> None:
    data = tmp_path / "data"
    create_room(data, "http://127.0.0.1:1")
    copy = tmp_path / "b.sqlite3"
    assert run("backup", "--data-dir", str(data), str(copy)).returncode == 0
    spoil(copy, data / "telehealth.key")
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.name.startswith("telehealth.sqlite3")}
    refused = run("restore", "--data-dir", str(data), str(copy))
    assert refused.returncode == 2, refused.stdout
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    for word in words:
        assert word in refused.stderr
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.name.startswith("telehealth.sqlite3")} == before


def test_restore_after_a_key_rotation_names_the_kept_key_that_opens_the_backup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    create_room(data, "http://127.0.0.1:1")
    copy = tmp_path / "b.sqlite3"
    assert run("backup", "--data-dir", str(data), str(copy)).returncode == 0
    assert run("key", "rotate", "--data-dir", str(data)).returncode == 0
    refused = run("restore", "--data-dir", str(data), str(copy))
    assert refused.returncode == 2
    old = next(data.glob("telehealth.key.old-*"))
    assert str(old) in refused.stderr and "kept from a key rotation" in refused.stderr
    # Doing what it says restores the backup.
    write_key(data / "telehealth.key", base64.b64decode(old.read_bytes()))
    assert run("restore", "--data-dir", str(data), str(copy)).returncode == 0
