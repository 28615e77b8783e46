"""What `telehealth serve` refuses at start, as a careless operator meets it: a missing or
wrong key, a second server on the same folder, a damaged database, and files others could
read. Each refusal is one line and exit code 2, and leaves the data as it was."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telehealth.crypto import write_key
from tests.conftest import free_port
from tests.served import Launcher, Outcome, assert_refused, run


def create_room(data_dir: Path, base_url: str = "http://127.0.0.1:1") -> dict:
    made = run("room", "create", "--data-dir", str(data_dir), "--therapist", "Dr Ada Lovelace",
               "--partner", "Sam Rivera", "--phone", "+1 202 555 0102", "--base-url", base_url, "--json")
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)


async def link_status(link: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(link) as r:
            return r.status


async def readyz(served: Outcome) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(served.base_url + "/readyz") as r:
            return r.status, await r.json()


# -- the key -----------------------------------------------------------------------------


async def test_a_missing_key_file_over_encrypted_data_is_refused_and_no_new_key_is_made(
    serve: Launcher, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    room = create_room(data, f"http://127.0.0.1:{port}")
    key = (data / "telehealth.key").read_bytes()
    (data / "telehealth.key").unlink()
    before = (data / "telehealth.sqlite3").read_bytes()

    refused = await serve(data, port)
    assert_refused(refused, str(data / "telehealth.key"), "missing", "put that key file back")
    assert not (data / "telehealth.key").exists()
    assert (data / "telehealth.sqlite3").read_bytes() == before

    # The key put back, the same room's links work again.
    write_key(data / "telehealth.key", base64.b64decode(key))
    served = await serve(data, port)
    assert served.serving
    assert await link_status(room["partner_links"][0]) == 200


async def test_another_valid_key_is_refused_and_left_as_it_was(serve: Launcher, tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    create_room(data)
    other = AESGCM.generate_key(bit_length=256)
    write_key(data / "telehealth.key", other)
    key_bytes = (data / "telehealth.key").read_bytes()

    refused = await serve(data, port)
    assert_refused(refused, str(data / "telehealth.key"), "does not open", "another key")
    assert (data / "telehealth.key").read_bytes() == key_bytes


async def test_readyz_stops_saying_ready_when_the_key_file_is_swapped_under_a_running_server(
    serve: Launcher, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    create_room(data)
    key_path = data / "telehealth.key"
    original = key_path.read_bytes()
    served = await serve(data, port)
    assert served.serving
    write_key(key_path, AESGCM.generate_key(bit_length=256))
    status, body = await readyz(served)
    assert status == 503 and body["status"] == "not ready"
    assert any("key file replaced" in p for p in body["problems"]), body
    key_path.unlink()
    status, body = await readyz(served)
    assert status == 503 and any("key file missing" in p for p in body["problems"]), body
    write_key(key_path, base64.b64decode(original))
    assert await readyz(served) == (200, {"status": "ready", "problems": []})


# -- one server per folder -----------------------------------------------------------------


async def test_a_second_server_on_the_same_folder_is_refused_and_the_first_keeps_serving(
    serve: Launcher, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    room = create_room(data, f"http://127.0.0.1:{port}")
    first = await serve(data, port)
    assert first.serving
    second = await serve(data, free_port())
    assert_refused(second, "another telehealth server", str(data))
    assert await link_status(room["partner_links"][0]) == 200
    assert (await readyz(first))[0] == 200
    # A crash leaves no stale lock: the next start takes over at once.
    await first.stop(signal.SIGKILL)
    again = await serve(data, port)
    assert again.serving
    assert await link_status(room["partner_links"][0]) == 200


# -- a damaged database ------------------------------------------------------------------


def truncate(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def garbage(db: Path) -> None:
    db.write_bytes(os.urandom(db.stat().st_size))


def scramble_links_page(db: Path) -> None:
    # The page holding every join link: the server used to start, say ready, and fail each join.
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'links'").fetchone()[0]
    conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(os.urandom(page_size))


@pytest.mark.parametrize("damage", [truncate, garbage, scramble_links_page])
async def test_a_damaged_database_is_refused_in_one_line_naming_the_file_and_the_way_back(
    serve: Launcher, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    data = tmp_path / "data"
    create_room(data)
    db = data / "telehealth.sqlite3"
    assert not (data / "telehealth.sqlite3-wal").exists()  # the CLI checkpointed on close
    damage(db)
    before = db.read_bytes()
    refused = await serve(data, free_port())
    assert_refused(refused, str(db), "is damaged", "restore it from a backup", "telehealth restore")
    assert db.read_bytes() == before


# -- private files -----------------------------------------------------------------------


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


async def test_the_data_folder_and_every_file_in_it_are_private_to_the_service_user(
    serve: Launcher, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    # The usual umask of a login shell, which would leave new files readable by everyone.
    served = await serve(data, port, preexec_fn=lambda: os.umask(0o022))
    assert served.serving
    create_room(data, served.base_url)  # the server and the CLI both have the file open
    found = modes(data)
    assert {"telehealth.sqlite3", "telehealth.sqlite3-wal", "telehealth.sqlite3-shm",
            "telehealth.key", "telehealth.key.lock", "server.lock"} <= set(found), found
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {name: mode for name, mode in found.items() if mode != 0o600} == {}


async def test_files_an_older_version_left_readable_are_made_private_at_start(
    serve: Launcher, tmp_path: Path
) -> None:
    data, port = tmp_path / "data", free_port()
    room = create_room(data, f"http://127.0.0.1:{port}")
    data.chmod(0o755)
    (data / "telehealth.sqlite3").chmod(0o644)  # as versions before this one created it
    served = await serve(data, port)
    assert served.serving
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "telehealth.sqlite3").stat().st_mode) == 0o600
    assert await link_status(room["partner_links"][0]) == 200
