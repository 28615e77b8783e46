"""Upgrading: a database written before schema versions existed, with a live room in it, is
migrated at start by a real `telehealth serve` and then served as it was."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telehealth import schema
from telehealth.accounts import hash_password
from telehealth.audit import AuditEvent, AuditLog
from telehealth.crypto import FieldCipher, write_key
from telehealth.tokens import hash_token, new_token
from tests.conftest import free_port
from tests.served import Launcher, assert_refused, run

BEFORE_VERSIONS = Path(__file__).parent / "data" / "schema-before-versions.sql"
PEOPLE = [("p_therapist01", "therapist", 0, "Dr Ada Lovelace", None),
          ("p_partner0001", "partner", 1, "Sam Rivera", "+1 555 555 0102"),
          ("p_partner0002", "partner", 2, "Alex Kim", None)]
ROOM = "r_0123456789abcdef"


def old_database(data_dir: Path, base_url: str) -> dict[str, str]:
    """The data folder as the previous version left it mid-session; returns each person's link.

    The tables come from that version's own SQL; the rows are written as its store wrote them.
    """
    data_dir.mkdir()
    key = AESGCM.generate_key(bit_length=256)
    write_key(data_dir / "telehealth.key", key)
    cipher = FieldCipher(key)
    now = time.time()
    links = {}
    with contextlib.closing(sqlite3.connect(data_dir / "telehealth.sqlite3", isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(BEFORE_VERSIONS.read_text())
        assert schema.version_of(db) == 0
        # A live room: started a quarter of an hour ago, not ended, links valid for a week.
        db.execute("INSERT INTO rooms (id, created_at, starts_at, started_at, ended_at) VALUES (?,?,?,?,?)",
                   (ROOM, now - 3600, now - 900, now - 900, None))
        for pid, role, ordinal, name, phone in PEOPLE:
            db.execute(
                "INSERT INTO people (id, room_id, role, ordinal, name, phone) VALUES (?,?,?,?,?,?)",
                (pid, ROOM, role, ordinal, cipher.encrypt(name, f"people.name:{pid}"),
                 None if phone is None else cipher.encrypt(phone, f"people.phone:{pid}")))
            token = new_token()
            db.execute("INSERT INTO links (token_hash, person_id, room_id, created_at, expires_at)"
                       " VALUES (?,?,?,?,?)", (hash_token(token), pid, ROOM, now - 3600, now + 7 * 86400))
            links[role if role == "therapist" else pid] = f"{base_url}/j/{token}"
        db.execute("INSERT INTO ledgers (room_id, rows, updated_at) VALUES (?,?,?)", (ROOM, json.dumps([
            {"disruption": 1, "person": "p_partner0001", "cause": "network", "started_at": now - 600,
             "ended_at": now - 590, "outcome": "rejoined"}]), now - 590))
        db.execute("INSERT INTO users (username, role, display_name, password_hash, created_at)"
                   " VALUES (?,?,?,?,?)", ("ada", "therapist", "Dr Ada Lovelace",
                                           hash_password("correct horse battery"), now - 86400))
        db.execute("INSERT INTO room_owners (room_id, user_id) VALUES (?, 1)", (ROOM,))
        db.execute("INSERT INTO quality_history (room_id, started_at, ended_at, session_seconds,"
                   " usable_seconds, series) VALUES ('r_earlier', ?, ?, 3000, 2900, '{\"links\": {}}')",
                   (now - 90000, now - 87000))
        audit = AuditLog(db, time.time)
        audit.append(AuditEvent.ROOM_CREATED, room_id=ROOM, detail={"people": 3})
        for pid, role, *_ in PEOPLE:
            audit.append(AuditEvent.LINK_ISSUED, room_id=ROOM, person_id=pid, actor=role)
        audit.append(AuditEvent.LINK_OPENED, room_id=ROOM, person_id="p_therapist01", actor="therapist")
    return links


async def join(link: str) -> dict:
    base, token = link.rsplit("/j/", 1)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(base.replace("http", "ws", 1) + "/ws") as ws:
            await ws.send_json({"type": "join", "v": 1, "token": token})
            async for msg in ws:
                data = json.loads(msg.data)
                if data["type"] in ("welcome", "waiting", "error"):
                    return data
    raise AssertionError("closed before an answer")


def version_and_ledger(db_path: Path) -> tuple[int, str]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return schema.version_of(db), db.execute("SELECT rows FROM ledgers WHERE room_id = ?", (ROOM,)).fetchone()[0]


async def test_a_database_from_before_versions_is_upgraded_at_start_and_its_live_room_goes_on(
    serve: Launcher, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    links = old_database(data, f"http://127.0.0.1:{port}")
    _, ledger_before = version_and_ledger(data / "telehealth.sqlite3")

    served = await serve(data, port)
    assert served.serving
    assert version_and_ledger(data / "telehealth.sqlite3") == (schema.latest_version(), ledger_before)
    async with aiohttp.ClientSession() as session:
        async with session.get(links["p_partner0001"]) as r:
            assert r.status == 200
    # The same links, the same people, names read back with the same key.
    therapist = await join(links["therapist"])
    assert therapist["type"] == "welcome", therapist
    assert therapist["you"] == {"id": "p_therapist01", "role": "therapist", "name": "Dr Ada Lovelace"}
    partner = await join(links["p_partner0002"])
    assert partner["type"] in ("welcome", "waiting") and partner["you"]["name"] == "Alex Kim"
    code, err = await served.stop()
    assert code == 0 and "Traceback" not in err

    # The audit chain written before the upgrade goes on unbroken; the account is still there.
    verified = run("audit", "verify", "--data-dir", str(data))
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout
    assert "ada  therapist" in run("user", "list", "--data-dir", str(data)).stdout
    # A second start has nothing left to migrate and serves the same.
    again = await serve(data, port)
    assert again.serving
    assert (await join(links["therapist"]))["type"] == "welcome"


async def test_a_database_from_a_newer_version_is_refused_in_one_line_and_left_untouched(
    serve: Launcher, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    old_database(data, "http://127.0.0.1:1")
    db_path = data / "telehealth.sqlite3"
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute(f"PRAGMA user_version = {schema.latest_version() + 7}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = db_path.read_bytes()
    refused = await serve(data, free_port())
    assert_refused(refused, str(db_path), "newer telehealth", f"schema version {schema.latest_version() + 7}")
    assert db_path.read_bytes() == before
    # The CLI refuses the same way rather than writing into a file it does not understand.
    listed = run("room", "list", "--data-dir", str(data))
    assert listed.returncode == 2 and "newer telehealth" in listed.stderr and "Traceback" not in listed.stderr
