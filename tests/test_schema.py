"""The schema's version and its migration steps, against real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from telehealth import schema
from telehealth.schema import Migration, NewerSchemaError


def tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_new_file_gets_every_table_at_the_latest_version(tmp_path: Path) -> None:
    db = schema.connect(tmp_path / "t.sqlite3")
    try:
        assert schema.version_of(db) == schema.latest_version()
        assert {"rooms", "people", "links", "ledgers", "audit", "audit_head", "users",
                "user_sessions", "room_owners", "quality_history"} <= tables(db)
    finally:
        db.close()


def test_users_keep_no_unused_lockout_columns(tmp_path: Path) -> None:
    db = schema.connect(tmp_path / "t.sqlite3")
    try:
        columns = {r[1] for r in db.execute("PRAGMA table_info(users)")}
        assert columns == {"id", "username", "role", "display_name", "password_hash", "created_at"}
    finally:
        db.close()


def test_steps_run_in_order_once_each_and_a_failed_step_leaves_the_file_at_the_last_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.sqlite3"
    base = schema.latest_version()
    ran: list[int] = []

    def add_column(db: sqlite3.Connection) -> None:
        ran.append(base + 1)
        db.execute("ALTER TABLE rooms ADD COLUMN room_note TEXT")

    def broken(db: sqlite3.Connection) -> None:
        ran.append(base + 3)
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("step failed")

    monkeypatch.setattr(schema, "MIGRATIONS", [
        *schema.MIGRATIONS,
        Migration(base + 1, "rooms get a note", add_column),
        Migration(base + 2, "an index", "CREATE INDEX rooms_room_note ON rooms(room_note);"),
        Migration(base + 3, "a step that fails", broken),
    ])
    db = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(RuntimeError, match="step failed"):
        schema.migrate(db)
    # The failed step left nothing behind; the two before it are in and counted.
    assert schema.version_of(db) == base + 2
    assert "half_done" not in tables(db)
    assert "room_note" in {r[1] for r in db.execute("PRAGMA table_info(rooms)")}
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:-1])
    assert schema.migrate(db) == base + 2  # nothing left to do, nothing run twice
    assert ran == [base + 1, base + 3]
    db.close()


def test_a_file_from_a_newer_version_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    schema.connect(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {schema.latest_version() + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(NewerSchemaError) as refused:
        schema.connect(path)
    message = str(refused.value)
    assert "\n" not in message
    assert str(path) in message and "newer telehealth" in message
    assert path.read_bytes() == before


def test_scripts_split_into_whole_statements_triggers_included() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x);
    CREATE TRIGGER a_no_delete BEFORE DELETE ON a
        BEGIN SELECT RAISE(ABORT, 'no; never'); END;
    """
    parts = list(schema.statements(script))
    assert len(parts) == 2
    assert parts[1].startswith("CREATE TRIGGER") and parts[1].endswith("END;")
    assert list(schema.statements("CREATE TABLE b (x)")) == ["CREATE TABLE b (x);"]
    with pytest.raises(ValueError, match="incomplete"):
        list(schema.statements("INSERT INTO a VALUES ('x);"))
