"""Retention purge against a real store: old ended rooms lose names, phones and links, down to
the bytes of the SQLite files; recent and live rooms keep theirs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from telehealth import mail, rooms
from telehealth.audit import AuditLog
from telehealth.config import Config
from telehealth.retention import purge
from telehealth.store import Store

DAY = 24 * 3600.0
NOW = 1_800_000_000.0
KEEP = 30 * DAY


def raw_bytes(store: Store) -> bytes:
    files = [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")]
    return b"".join(f.read_bytes() for f in files if f.exists())


def sealed_values(store: Store, room_id: str) -> list[bytes]:
    rows = [*store.db.execute("SELECT name, phone, email FROM people WHERE room_id = ?", (room_id,)),
            *store.db.execute("SELECT message FROM mail WHERE room_id = ?", (room_id,))]
    return [blob for row in rows for blob in row if blob is not None]


def link_hashes(store: Store, room_id: str) -> list[str]:
    return [r[0] for r in store.db.execute("SELECT token_hash FROM links WHERE room_id = ?", (room_id,))]


def make_room(store: Store, created: float, *, ended: float | None, tag: str) -> str:
    made = rooms.create_room(
        store, therapist=f"Dr {tag} Therapist",
        partners=[rooms.PartnerSpec(f"{tag} One", "+442079460111", f"one@{tag.lower()}.example"),
                  rooms.PartnerSpec(f"{tag} Two", "+442079460222")],
        base_url="https://video.clinic.example", link_ttl=7 * DAY, now=created,
    )
    # An email never sent holds the link: it goes with the rest.
    record = store.get_room(made.room_id)
    assert record is not None
    assert mail.queue_links(store, record, made.links, Config(), created)
    if ended is not None:
        rooms.end_room(store, made.room_id, now=ended)
    return made.room_id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "data")
    yield opened
    opened.close()


@pytest.fixture
def audit(store: Store) -> AuditLog:
    return AuditLog(store.db, time.time)


@pytest.fixture
def three_rooms(store: Store) -> dict[str, str]:
    return {
        "old": make_room(store, NOW - 60 * DAY, ended=NOW - 45 * DAY, tag="Oldroom"),
        "recent": make_room(store, NOW - 3 * DAY, ended=NOW - 2 * DAY, tag="Recentroom"),
        # Created long ago but never ended: still in use, whatever its age.
        "live": make_room(store, NOW - 90 * DAY, ended=None, tag="Liveroom"),
    }


def test_old_ended_rooms_lose_names_phones_and_links(
    store: Store, audit: AuditLog, three_rooms: dict[str, str]
) -> None:
    result = purge(store, audit, older_than=KEEP, now=NOW)

    assert (result.rooms, result.people, result.links) == (1, 3, 3)
    assert result.cutoff == NOW - KEEP
    old = store.get_room(three_rooms["old"])
    assert old is not None and len(old.people) == 3
    assert sealed_values(store, three_rooms["old"]) == []
    assert link_hashes(store, three_rooms["old"]) == []
    # Rooms and opaque ids stay, so the ledger and the audit log still add up.
    assert [p.role for p in old.people] == ["therapist", "partner", "partner"]
    assert old.ended_at == NOW - 45 * DAY


def test_recent_and_live_rooms_keep_everything(
    store: Store, audit: AuditLog, three_rooms: dict[str, str]
) -> None:
    purge(store, audit, older_than=KEEP, now=NOW)

    for key, tag in (("recent", "Recentroom"), ("live", "Liveroom")):
        room = store.get_room(three_rooms[key])
        assert room is not None
        assert room.therapist.name == f"Dr {tag} Therapist"
        assert [(p.name, p.phone) for p in room.partners] == [
            (f"{tag} One", "+442079460111"), (f"{tag} Two", "+442079460222"),
        ]
        assert len(link_hashes(store, three_rooms[key])) == 3


def test_purged_ciphertexts_and_link_hashes_are_gone_from_the_files(
    store: Store, audit: AuditLog, three_rooms: dict[str, str]
) -> None:
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    purged = sealed_values(store, three_rooms["old"]) + [
        h.encode() for h in link_hashes(store, three_rooms["old"])
    ]
    kept = sealed_values(store, three_rooms["recent"])
    before = raw_bytes(store)
    assert all(value in before for value in purged + kept)

    result = purge(store, audit, older_than=KEEP, now=NOW)

    assert result.wal_truncated
    after = raw_bytes(store)
    assert [value for value in purged if value in after] == []
    assert all(value in after for value in kept)


def test_every_run_is_audited_with_counts_only(
    store: Store, audit: AuditLog, three_rooms: dict[str, str]
) -> None:
    purge(store, audit, older_than=KEEP, now=NOW, actor="cli")
    again = purge(store, audit, older_than=KEEP, now=NOW + DAY, actor="server")

    assert (again.rooms, again.people, again.links) == (0, 0, 0)
    entries = [e for e in map(json.loads, audit.export()) if e["event"] == "purge"]
    assert [(e["event"], e["actor"], e["room_id"], e["person_id"]) for e in entries] == [
        ("purge", "cli", None, None), ("purge", "server", None, None),
    ]
    assert entries[0]["detail"] == {
        "rooms": 1, "people": 3, "links": 3, "cutoff": NOW - KEEP, "older_than": KEEP,
    }
    assert audit.verify().ok
    exported = "\n".join(audit.export())
    assert "Oldroom" not in exported and "7946" not in exported


def test_the_purge_and_its_audit_entry_commit_together(
    store: Store, audit: AuditLog, three_rooms: dict[str, str]
) -> None:
    # An actor the audit log refuses makes the append fail inside the purge's transaction.
    before = audit.verify().checked
    with pytest.raises(ValueError):
        purge(store, audit, older_than=KEEP, now=NOW, actor="Ops Person")

    old = store.get_room(three_rooms["old"])
    assert old is not None and old.therapist.name == "Dr Oldroom Therapist"
    assert len(link_hashes(store, three_rooms["old"])) == 3
    assert audit.verify().checked == before


def test_a_room_ended_just_after_the_cutoff_is_kept(store: Store, audit: AuditLog) -> None:
    edge = make_room(store, NOW - 40 * DAY, ended=NOW - KEEP, tag="Edgeroom")
    assert purge(store, audit, older_than=KEEP, now=NOW).rooms == 0
    room = store.get_room(edge)
    assert room is not None and room.therapist.name == "Dr Edgeroom Therapist"
    assert purge(store, audit, older_than=KEEP, now=NOW + 1).rooms == 1


def test_a_negative_age_is_refused(store: Store, audit: AuditLog) -> None:
    with pytest.raises(ValueError):
        purge(store, audit, older_than=-1.0, now=NOW)
