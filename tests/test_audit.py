"""The audit log against a real SQLite file: the chain catches tampering, appends stay ordered
across connections, exports filter by time, and details refuse personal data."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from telehealth import schema
from telehealth.audit import AuditEvent, AuditLog, LinkRejectReason

ENTRIES = 12
START = 1_800_000_000.0


class StepClock:
    """Each reading is one second after the last."""

    def __init__(self, start: float = START) -> None:
        self.now = start - 1.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # The timeout first: switching a fresh file to WAL takes a lock another opener may hold.
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("PRAGMA journal_mode=WAL")
    schema.migrate(db)
    return db


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "telehealth.sqlite3"


@pytest.fixture
def db(db_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(db_path)
    yield conn
    conn.close()


@pytest.fixture
def audit(db: sqlite3.Connection) -> AuditLog:
    return AuditLog(db, StepClock())


@pytest.fixture
def filled(audit: AuditLog) -> AuditLog:
    """Twelve entries of a session: ids 1..12 at START+0..START+11."""
    audit.append(AuditEvent.ROOM_CREATED, room_id="r_1", actor="cli")
    for n in range(3):
        audit.append(AuditEvent.LINK_ISSUED, room_id="r_1", person_id=f"p_{n}", actor="cli")
    audit.append(AuditEvent.LINK_OPENED, room_id="r_1", person_id="p_0", actor="ip:3f2a")
    audit.append(
        AuditEvent.LINK_REJECTED, actor="ip:9c0d",
        detail={"reason": LinkRejectReason.FORGED, "link_hash": "ab12cd34"},
    )
    audit.append(AuditEvent.LINK_OPENED, room_id="r_1", person_id="p_1", actor="ip:3f2a")
    audit.append(AuditEvent.PARTICIPANT_ADMITTED, room_id="r_1", person_id="p_1", actor="therapist")
    audit.append(AuditEvent.PHONE_SWITCH, room_id="r_1", person_id="p_1", detail={"mode": "phone"})
    audit.append(AuditEvent.PARTICIPANT_REMOVED, room_id="r_1", person_id="p_2", actor="therapist")
    audit.append(AuditEvent.OPS_ACCESS, actor="u_ops1", detail={"method": "GET", "path": "/ops/rooms"})
    audit.append(AuditEvent.ROOM_ENDED, room_id="r_1", actor="therapist")
    return audit


def tamper(db_path: Path, *statements: str) -> None:
    """What someone with write access to the file can do: drop the guards and edit rows."""
    with sqlite3.connect(db_path, isolation_level=None) as raw:
        raw.execute("DROP TRIGGER IF EXISTS audit_no_update")
        raw.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for statement in statements:
            raw.execute(statement)


def test_an_untouched_chain_verifies(filled: AuditLog, db: sqlite3.Connection) -> None:
    result = filled.verify()
    assert result.ok, result.reason
    assert (result.checked, result.first_broken_id) == (ENTRIES, None)
    assert result.head_hash == db.execute("SELECT hash FROM audit WHERE id = ?", (ENTRIES,)).fetchone()[0]


def test_an_empty_log_verifies(audit: AuditLog) -> None:
    result = audit.verify()
    assert result.ok and result.checked == 0 and result.head_hash == "0" * 64


@pytest.mark.parametrize(
    "change",
    [
        "at = at + 60",
        "event = 'room_created'",
        "room_id = 'r_other'",
        "person_id = 'p_9'",
        "actor = 'therapist'",
        """detail = '{"link_hash":"ab12cd34","reason":"expired"}'""",
        "prev_hash = '" + "1" * 64 + "'",
        "hash = '" + "2" * 64 + "'",
    ],
)
def test_altering_any_field_of_one_entry_is_caught_at_that_entry(
    filled: AuditLog, db_path: Path, change: str
) -> None:
    tamper(db_path, f"UPDATE audit SET {change} WHERE id = 6")
    result = filled.verify()
    assert not result.ok
    assert result.first_broken_id == 6
    assert result.checked == 5


def test_an_altered_entry_with_a_recomputed_hash_still_breaks_the_next_link(
    filled: AuditLog, db: sqlite3.Connection, db_path: Path
) -> None:
    from telehealth.audit import entry_digest

    row = db.execute(
        "SELECT id, at, event, room_id, person_id, actor, detail, prev_hash FROM audit WHERE id = 6"
    ).fetchone()
    forged = entry_digest(row[0], row[1], row[2], row[3], row[4], "cli", row[6], row[7])
    tamper(db_path, f"UPDATE audit SET actor = 'cli', hash = '{forged}' WHERE id = 6")
    result = filled.verify()
    assert (result.ok, result.first_broken_id) == (False, 7)


def test_deleting_an_entry_in_the_middle_names_the_missing_entry(
    filled: AuditLog, db_path: Path
) -> None:
    tamper(db_path, "DELETE FROM audit WHERE id = 5")
    result = filled.verify()
    assert (result.ok, result.first_broken_id, result.checked) == (False, 5, 4)
    assert "missing" in result.reason


def test_deleting_an_entry_and_renumbering_the_rest_is_caught(filled: AuditLog, db_path: Path) -> None:
    tamper(
        db_path,
        "DELETE FROM audit WHERE id = 5",
        "UPDATE audit SET id = id - 1 WHERE id > 5",
        f"UPDATE audit_head SET count = {ENTRIES - 1}",
    )
    result = filled.verify()
    assert (result.ok, result.first_broken_id) == (False, 5)


def test_swapping_two_entries_is_caught_at_the_first_of_them(
    filled: AuditLog, db_path: Path
) -> None:
    columns = "at, event, room_id, person_id, actor, detail, prev_hash, hash"
    tamper(
        db_path,
        f"CREATE TEMP TABLE keep AS SELECT id, {columns} FROM audit WHERE id IN (7, 8)",
        *[
            f"UPDATE audit SET ({columns}) = (SELECT {columns} FROM keep WHERE keep.id = {other})"
            f" WHERE id = {target}"
            for target, other in ((7, 8), (8, 7))
        ],
    )
    result = filled.verify()
    assert (result.ok, result.first_broken_id, result.checked) == (False, 7, 6)


def test_cutting_entries_off_the_end_is_caught(filled: AuditLog, db_path: Path) -> None:
    tamper(db_path, f"DELETE FROM audit WHERE id = {ENTRIES}")
    result = filled.verify()
    assert (result.ok, result.first_broken_id, result.checked) == (False, ENTRIES, ENTRIES - 1)
    assert "cut off the end" in result.reason


def test_a_cut_tail_stays_visible_after_new_appends(filled: AuditLog, db_path: Path) -> None:
    tamper(db_path, f"DELETE FROM audit WHERE id >= {ENTRIES - 1}")
    filled.append(AuditEvent.LOGIN_OK, actor="u_ops1")
    result = filled.verify()
    assert (result.ok, result.first_broken_id) == (False, ENTRIES - 1)


def test_an_entry_slipped_in_behind_the_log_is_caught(
    filled: AuditLog, db: sqlite3.Connection, db_path: Path
) -> None:
    from telehealth.audit import entry_digest

    head = db.execute("SELECT hash FROM audit_head").fetchone()[0]
    at = START + 100
    digest = entry_digest(ENTRIES + 1, at, "login_ok", None, None, "u_x", None, head)
    tamper(
        db_path,
        "INSERT INTO audit (id, at, event, actor, prev_hash, hash)"
        f" VALUES ({ENTRIES + 1}, {at}, 'login_ok', 'u_x', '{head}', '{digest}')",
    )
    result = filled.verify()
    assert (result.ok, result.first_broken_id) == (False, ENTRIES + 1)


def test_plain_updates_and_deletes_are_refused(filled: AuditLog, db: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'x' WHERE id = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE id = 1")
    assert filled.verify().ok


def test_a_reopened_log_continues_the_chain(filled: AuditLog, db_path: Path) -> None:
    other = connect(db_path)
    try:
        again = AuditLog(other, StepClock(START + 1000))
        assert again.append(AuditEvent.LOGIN_FAILED, actor="ip:77aa", detail={"reason": "bad_password"}) == ENTRIES + 1
        assert again.verify().ok and filled.verify().checked == ENTRIES + 1
    finally:
        other.close()


def test_two_connections_appending_at_once_keep_one_valid_chain(db_path: Path) -> None:
    """The server and the CLI, each with its own connection, append in the same instants."""
    per_writer = 60
    # Both writers start each append together; left to run freely, SQLite's busy handler
    # lets one writer finish all its appends before the other gets in, and nothing races.
    same_instant = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(name: str) -> None:
        conn = connect(db_path)
        try:
            log = AuditLog(conn, StepClock())
            for n in range(per_writer):
                same_instant.wait(timeout=30)
                log.append(AuditEvent.LINK_OPENED, room_id=f"r_{name}", person_id=f"p_{n}")
        except (sqlite3.Error, threading.BrokenBarrierError) as exc:  # else lost with the thread
            errors.append(exc)
            same_instant.abort()
        finally:
            conn.close()

    # The file exists in WAL mode before the writers start, as it does once a server ran.
    connect(db_path).close()
    threads = [threading.Thread(target=write, args=(name,)) for name in ("server", "cli")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    conn = connect(db_path)
    try:
        result = AuditLog(conn, StepClock()).verify()
        rooms = [r[0] for r in conn.execute("SELECT room_id FROM audit ORDER BY id")]
    finally:
        conn.close()
    assert result.ok, result.reason
    assert result.checked == 2 * per_writer
    assert rooms.count("r_server") == rooms.count("r_cli") == per_writer


def test_an_entry_appended_in_a_rolled_back_transaction_disappears_with_it(
    filled: AuditLog, db: sqlite3.Connection
) -> None:
    db.execute("BEGIN IMMEDIATE")
    filled.append(AuditEvent.PURGE, detail={"rooms": 1})
    db.execute("ROLLBACK")
    result = filled.verify()
    assert result.ok and result.checked == ENTRIES
    assert filled.append(AuditEvent.LOGIN_OK, actor="u_ops1") == ENTRIES + 1


def test_export_yields_json_lines_within_the_time_window(filled: AuditLog) -> None:
    lines = list(filled.export(since=START + 3, until=START + 6))
    entries = [json.loads(line) for line in lines]
    assert [e["id"] for e in entries] == [4, 5, 6]
    assert entries[2]["event"] == "link_rejected"
    assert entries[2]["detail"] == {"link_hash": "ab12cd34", "reason": "forged"}
    assert set(entries[0]) == {
        "id", "at", "event", "room_id", "person_id", "actor", "detail", "prev_hash", "hash",
    }
    assert all("\n" not in line for line in lines)


def test_export_without_bounds_yields_everything_in_order(filled: AuditLog) -> None:
    assert [json.loads(line)["id"] for line in filled.export()] == list(range(1, ENTRIES + 1))
    assert [json.loads(line)["id"] for line in filled.export(since=START + 10)] == [11, 12]
    assert [json.loads(line)["id"] for line in filled.export(until=START + 2)] == [1, 2]


def test_export_pages_through_a_long_log(audit: AuditLog) -> None:
    for n in range(1234):
        audit.append(AuditEvent.LINK_OPENED, person_id=f"p_{n}")
    exported = [json.loads(line)["id"] for line in audit.export()]
    assert exported == list(range(1, 1235))


@pytest.mark.parametrize(
    "bad",
    [
        lambda log: log.append(AuditEvent.LOGIN_FAILED, detail={"reason": "x" * 65}),
        lambda log: log.append(AuditEvent.LOGIN_FAILED, detail={"reason": "Maria Gonzalez typed it"}),
        lambda log: log.append(AuditEvent.PHONE_SWITCH, detail={"mode": "+44 7700 900123"}),
        lambda log: log.append(AuditEvent.PHONE_SWITCH, detail={"mode": "+447700900123"}),
        lambda log: log.append(AuditEvent.LOGIN_FAILED, detail={"reason": "maria@example.org"}),
        lambda log: log.append(AuditEvent.ROOM_CREATED, detail={"name": "Maria"}),
        lambda log: log.append(AuditEvent.ROOM_CREATED, detail={"rooms": {"nested": 1}}),
        lambda log: log.append(AuditEvent.ROOM_CREATED, detail={"rooms": [1, 2]}),
        lambda log: log.append(AuditEvent.ROOM_CREATED, detail={"cutoff": float("nan")}),
        lambda log: log.append(AuditEvent.LOGIN_OK, actor="Maria Gonzalez"),
        lambda log: log.append(AuditEvent.LINK_OPENED, person_id="p 1"),
        lambda log: log.append(AuditEvent.ROOM_CREATED, room_id="r_" + "0" * 80),
    ],
)
def test_details_that_could_carry_personal_data_are_refused_and_not_written(
    filled: AuditLog, bad: Callable[[AuditLog], int]
) -> None:
    with pytest.raises(ValueError) as refused:
        bad(filled)
    for fragment in ("Maria", "7700", "example.org"):
        assert fragment not in str(refused.value)
    result = filled.verify()
    assert result.ok and result.checked == ENTRIES


def test_unknown_events_are_refused(audit: AuditLog) -> None:
    with pytest.raises(ValueError):
        audit.append("sneaked_in")  # type: ignore[arg-type]
    assert audit.verify().checked == 0


def test_a_deleted_head_stops_appends_and_fails_verify(filled: AuditLog, db_path: Path) -> None:
    tamper(db_path, "DELETE FROM audit_head")
    with pytest.raises(sqlite3.IntegrityError, match="audit_head"):
        filled.append(AuditEvent.LOGIN_OK, actor="u_ops1")
    result = filled.verify()
    assert not result.ok and "audit_head" in result.reason
