"""Refused attempts without a credential are summarised in the audit log: the database's
growth from unauthenticated traffic is bounded, and real events stay findable."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from media.participant import SyntheticParticipant
from telehealth.audit import AuditEvent, AuditLog
from telehealth.refusals import OTHER, RefusalTally
from telehealth.store import Store
from telehealth.tokens import new_token
from tests.conftest import eventually, session_from, start_server
from tests.test_audit import connect
from tests.test_pages import sign_in

BAD_PAGES = 2000
BAD_JOINS = 100
BAD_LOGINS = 40


def audit_entries(store: Store) -> list[dict[str, Any]]:
    return [json.loads(line) for line in store.audit.export()]


async def bad_join(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.ws_connect(f"{base_url}/ws") as ws:
        await ws.send_str(json.dumps({"type": "join", "v": 1, "token": new_token()}))
        async for _ in ws:  # refused, then closed by the server
            pass


async def test_thousands_of_refused_attempts_add_a_handful_of_audit_rows(make_config: Any) -> None:
    config = make_config()
    server = await start_server(config)
    try:
        room = server.create_room()
        before = len(audit_entries(server.store))
        # A guesser at another address: forged links on the page and over signaling, and
        # sign-ins with made-up names. Past the first few it is rate limited, and counted.
        async with session_from("127.0.0.2", cookie_jar=aiohttp.DummyCookieJar()) as guesser:
            async def pages(n: int) -> list[int]:
                statuses = []
                for _ in range(n):
                    async with guesser.get(f"{server.base_url}/j/{new_token()}") as response:
                        statuses.append(response.status)
                return statuses
            statuses = [s for batch in await asyncio.gather(*(pages(BAD_PAGES // 20) for _ in range(20)))
                        for s in batch]
            assert len(statuses) == BAD_PAGES and set(statuses) == {404, 429}
            for _ in range(BAD_JOINS):
                await bad_join(guesser, server.base_url)
            for i in range(BAD_LOGINS):
                assert (await sign_in(guesser, server.base_url, f"guess{i}", "not the password")).status in (401, 429)
        # Meanwhile the therapist opens their link: a real event.
        therapist = SyntheticParticipant(room.therapist_link)
        try:
            await therapist.join()
            await therapist.wait_message("welcome")
        finally:
            await therapist.close()
    finally:
        await server.runner.cleanup()  # the last window is written at shutdown

    store = Store.open(config.data_dir, config.key_path)
    try:
        entries = audit_entries(store)
        added = entries[before:]
        refused = [e for e in added if e["event"] in ("link_rejected", "login_failed")]
        # One entry per kind, reason and address for the window, not one per attempt.
        assert len(added) <= 12, [(e["event"], e["detail"]) for e in added]
        pages = sum(e["detail"]["attempts"] for e in refused if e["actor"] == "web")
        joins = sum(e["detail"]["attempts"] for e in refused if e["actor"] == "signaling")
        logins = sum(e["detail"]["attempts"] for e in refused if e["event"] == "login_failed")
        assert (pages, joins, logins) == (BAD_PAGES, BAD_JOINS, BAD_LOGINS)
        assert {e["detail"]["reason"] for e in refused} == {"forged", "rate_limited", "unknown_user"}
        # All from the one guesser, under one opaque hash: no address stored.
        assert len({e["detail"]["ip_hash"] for e in refused}) == 1
        assert "127.0.0" not in json.dumps(added)
        # The real event is there, with its room and person, and the chain holds.
        opened = [e for e in added if e["event"] == "link_opened"]
        assert [(e["room_id"], e["actor"]) for e in opened] == [(room.room_id, "therapist")]
        assert store.audit.verify().ok
    finally:
        store.close()


async def test_a_running_server_writes_a_summary_every_window(make_config: Any) -> None:
    server = await start_server(make_config(refusal_summary_seconds=0.2))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(15):
                async with http.get(f"{server.base_url}/j/{new_token()}") as response:
                    assert response.status == 404

            def summaries() -> list[int]:
                return [e["detail"]["attempts"] for e in audit_entries(server.store) if e["event"] == "link_rejected"]

            # Written while the server runs (the requests may straddle a window or two).
            await eventually(lambda: sum(summaries()) == 15, 10)
            first = len(summaries())
            for _ in range(3):
                async with http.get(f"{server.base_url}/j/{new_token()}") as response:
                    assert response.status == 404
            await eventually(lambda: sum(summaries()) == 18, 10)
            assert first < len(summaries()) <= first + 3
    finally:
        await server.runner.cleanup()


def test_a_flood_of_addresses_is_capped_per_window(tmp_path: Path) -> None:
    db = connect(tmp_path / "audit.sqlite3")
    try:
        tally = RefusalTally(AuditLog(db, time.time), max_keys=50)
        for i in range(5000):
            tally.count(AuditEvent.LINK_REJECTED, "forged", f"10.0.{i // 256}.{i % 256}", actor="web")
        assert tally.flush() == 51
        rows = [json.loads(d) for (d,) in db.execute("SELECT detail FROM audit")]
        assert len(rows) == 51 and sum(r["attempts"] for r in rows) == 5000
        assert [r["attempts"] for r in rows if r["ip_hash"] == OTHER] == [4950]
        assert tally.flush() == 0  # nothing new, nothing written
    finally:
        db.close()
