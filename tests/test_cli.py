"""The command line as an operator uses it: a real `telehealth serve` process and room commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import aiohttp
import pytest

from media.participant import SyntheticParticipant
from tests.conftest import free_port
from tests.served import START_TIMEOUT, read_from_start

TELEHEALTH = [sys.executable, "-m", "telehealth.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TELEHEALTH, *args], capture_output=True, text=True, env=env, timeout=30)


def create(data_dir: Path, *extra: str) -> dict:
    result = run("room", "create", "--data-dir", str(data_dir), "--therapist", "Dr Ada Lovelace",
                 "--partner", "Sam Rivera", "--phone", "+1 202 555 0102", "--partner", "Alex Kim", *extra, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_room_create_prints_the_stable_json_contract(tmp_path: Path) -> None:
    room = create(tmp_path, "--base-url", "https://video.clinic.example")
    assert room["room_id"].startswith("r_")
    assert room["therapist_link"].startswith("https://video.clinic.example/j/")
    assert len(room["partner_links"]) == 2
    assert len({room["therapist_link"], *room["partner_links"]}) == 3
    listed = json.loads(run("room", "list", "--data-dir", str(tmp_path), "--json").stdout)
    assert [r["room_id"] for r in listed] == [room["room_id"]]
    # Personal data is not in the database file in clear text, and neither are the links.
    raw = (tmp_path / "telehealth.sqlite3").read_bytes()
    for secret in (b"Sam Rivera", b"Alex Kim", b"Ada Lovelace", b"555 0102", b"2025550102",
                   room["partner_links"][0].rsplit("/", 1)[1].encode()):
        assert secret not in raw
    assert (tmp_path / "telehealth.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--therapist", "T", "--phone", "123456789", "--partner", "A"], "--phone must follow"),
        (["--therapist", "T", "--partner", "A", "--partner", "B", "--partner", "C"], "one or two partners"),
        (["--therapist", "T", "--partner", "A", "--phone", "call me maybe"], "phone number"),
        (["--therapist", " ", "--partner", "A"], "name is required"),
        # A regex let these through as numbers ("1------" became tel:1).
        (["--therapist", "T", "--partner", "A", "--phone", "1------"], "not a phone number we can call"),
        (["--therapist", "T", "--partner", "A", "--email", "sam at home"], "not an email address"),
        (["--therapist", "T", "--email", "a@b.example", "--partner", "A"], "--email must follow"),
        (["--therapist", "T", "--partner", "A", "--starts-at", "tomorrow"], "not a date and time"),
        (["--therapist", "T", "--partner", "A", "--starts-at", "2026-12-24T15:00"], "does not say its time zone"),
        (["--therapist", "T", "--partner", "A", "--starts-at", "9999-12-31T23:59Z"], "at most a year ahead"),
        (["--therapist", "T", "--partner", "A", "--starts-at", "0001-01-01T00:00+01:00"], "already passed"),
        (["--therapist", "T", "--partner", "A", "--starts-at", "2030-01-01T00:00Z", "--minutes", "0"], "between 1 and 480"),
        (["--therapist", "T", "--partner", "A", "--minutes", "50"], "--minutes needs --starts-at"),
    ],
)
def test_room_create_refuses_bad_input_and_stores_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("room", "create", "--data-dir", str(tmp_path), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    listed = run("room", "list", "--data-dir", str(tmp_path), "--json")
    assert json.loads(listed.stdout or "[]") == []


def test_ending_an_unknown_or_ended_room_is_a_clear_error(tmp_path: Path) -> None:
    room = create(tmp_path)
    assert run("room", "end", "--data-dir", str(tmp_path), room["room_id"]).returncode == 0
    again = run("room", "end", "--data-dir", str(tmp_path), room["room_id"])
    assert again.returncode == 2 and "already ended" in again.stderr
    unknown = run("room", "end", "--data-dir", str(tmp_path), "r_nope")
    assert unknown.returncode == 2 and "No room" in unknown.stderr


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, base_url: str, err_file: IO[bytes]) -> None:
        self.proc = proc
        self.base_url = base_url
        self.err_file = err_file  # a file, not a pipe: see tests/served.py

    def stderr(self) -> str:
        return read_from_start(self.err_file)


async def start_serve(data_dir: Path, port: int, *extra: str, scheme: str = "http") -> Served:
    env = {**os.environ, "TELEHEALTH_PORT": str(port)}  # configured through the environment
    err_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop_serve
    proc = await asyncio.create_subprocess_exec(
        *TELEHEALTH, "serve", "--data-dir", str(data_dir), *extra, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=err_file,
    )
    base_url = f"{scheme}://127.0.0.1:{port}"
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    # A deadline, not a count of tries: a loaded machine takes many seconds to import aiortc.
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            try:
                async with session.get(base_url + "/", ssl=ctx if scheme == "https" else True) as r:
                    if r.status == 200:
                        return Served(proc, base_url, err_file)
            except aiohttp.ClientError:
                if proc.returncode is not None:
                    raise RuntimeError(read_from_start(err_file))
                await asyncio.sleep(0.05)
    raise TimeoutError("server did not start")


async def stop_serve(served: Served) -> tuple[int, str]:
    served.proc.send_signal(signal.SIGINT)  # Ctrl-C
    await asyncio.wait_for(served.proc.wait(), 10)
    err = served.stderr()
    served.err_file.close()
    return served.proc.returncode or 0, err


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = await start_serve(tmp_path / "data", free_port())
    yield s
    if s.proc.returncode is None:
        await stop_serve(s)


async def test_serve_restart_keeps_rooms_and_links_and_ctrl_c_is_clean(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    served = await start_serve(data, port)
    room = create(data, "--base-url", served.base_url)
    code, err = await stop_serve(served)
    assert code == 0, err
    assert "Traceback" not in err
    served = await start_serve(data, port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(room["partner_links"][0]) as r:
                assert r.status == 200
        person = SyntheticParticipant(room["therapist_link"])
        await person.join()
        await person.wait_message("welcome")
        await person.close()
    finally:
        code, err = await stop_serve(served)
    assert code == 0
    # Logs are JSON lines without names or numbers.
    for line in err.splitlines():
        entry = json.loads(line)
        assert "Ada" not in line and "Sam" not in line and "0102" not in line, entry


async def test_a_room_ended_from_the_cli_is_refused_at_once_by_the_running_server(served: Served, tmp_path: Path) -> None:
    room = create(tmp_path / "data", "--base-url", served.base_url)
    therapist = SyntheticParticipant(room["therapist_link"])
    try:
        await therapist.join()
        await therapist.wait_message("welcome")
        assert run("room", "end", "--data-dir", str(tmp_path / "data"), room["room_id"]).returncode == 0
        await therapist.wait_for(lambda: therapist.bye is not None, 3)
        assert therapist.bye["reason"] == "room_ended"
    finally:
        await therapist.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(room["partner_links"][1]) as r:
            assert r.status == 410
            assert "session has ended" in await r.text()


async def test_self_signed_tls_for_a_lan_demo(tmp_path: Path) -> None:
    served = await start_serve(tmp_path / "data", free_port(), "--tls-self-signed", scheme="https")
    try:
        room = create(tmp_path / "data", "--base-url", served.base_url)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        person = SyntheticParticipant(room["therapist_link"], ssl_context=ctx)
        await person.join()
        await person.wait_message("welcome")
        await person.close()
        assert (tmp_path / "data" / "tls" / "self-signed.key").stat().st_mode & 0o777 == 0o600
    finally:
        await stop_serve(served)


def test_audit_verify_export_purge_and_key_rotation_from_the_command_line(tmp_path: Path) -> None:
    import sqlite3

    room = create(tmp_path)
    assert run("room", "end", "--data-dir", str(tmp_path), room["room_id"]).returncode == 0
    verified = run("audit", "verify", "--data-dir", str(tmp_path))
    assert verified.returncode == 0 and verified.stdout.startswith("OK")
    lines = [json.loads(x) for x in run("audit", "export", "--data-dir", str(tmp_path)).stdout.splitlines()]
    assert [e["event"] for e in lines] == ["room_created", "link_issued", "link_issued", "link_issued", "room_ended"]
    assert "Sam" not in json.dumps(lines)

    rotated = run("key", "rotate", "--data-dir", str(tmp_path))
    assert rotated.returncode == 0 and "Re-encrypted 4 values" in rotated.stdout  # three names, one phone
    # Names still read back under the new key; the room was ended just now, so a 0 s purge erases them.
    purged = run("purge", "--data-dir", str(tmp_path), "--older-than", "0s")
    assert purged.returncode == 0 and "Purged 1 rooms" in purged.stdout

    # Someone edits history behind our back: verify names the entry and fails.
    db = sqlite3.connect(tmp_path / "telehealth.sqlite3")
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute("UPDATE audit SET actor = 'ops' WHERE id = 2")
    db.commit()
    db.close()
    broken = run("audit", "verify", "--data-dir", str(tmp_path))
    assert broken.returncode == 1
    assert "first broken entry: 2" in broken.stdout


def test_turn_config_prints_a_ready_coturn_file() -> None:
    given = run("turn", "config", "--realm", "turn.clinic.example", "--secret", "s3cret-value")
    assert given.returncode == 0
    assert "static-auth-secret=s3cret-value" in given.stdout and "use-auth-secret" in given.stdout
    assert "tls-listening-port=443" in given.stdout
    generated = run("turn", "config", "--realm", "turn.clinic.example")
    secret = next(l for l in generated.stderr.splitlines() if "TELEHEALTH_TURN_SECRET=" in l).split("=", 1)[1]
    assert f"static-auth-secret={secret}" in generated.stdout and len(secret) >= 40


def test_staff_accounts_from_the_command_line(tmp_path: Path) -> None:
    added = subprocess.run([*TELEHEALTH, "user", "add", "--data-dir", str(tmp_path), "--username", "ada",
                            "--role", "therapist", "--display-name", "Dr Ada"],
                           input="correct horse battery staple\n", capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    again = subprocess.run([*TELEHEALTH, "user", "add", "--data-dir", str(tmp_path), "--username", "ada",
                            "--role", "ops"], input="another long password\n", capture_output=True, text=True)
    assert again.returncode == 2 and "taken" in again.stderr
    short = subprocess.run([*TELEHEALTH, "user", "add", "--data-dir", str(tmp_path), "--username", "bob",
                            "--role", "ops"], input="short\n", capture_output=True, text=True)
    assert short.returncode == 2 and "at least" in short.stderr
    assert run("user", "list", "--data-dir", str(tmp_path)).stdout.split() == ["ada", "therapist"]
    raw = (tmp_path / "telehealth.sqlite3").read_bytes()
    assert b"correct horse" not in raw
