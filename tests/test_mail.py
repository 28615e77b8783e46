"""Each person's link by email, through a real SMTP server (aiosmtpd, tests/smtp_server.py):
what arrives (their own link, the time in the clinic's zone, the checklist, an .ics that a
calendar library reads), STARTTLS with a login read from a file, a busy server tried again
while no request waits, and the CLI's emails sent by the running server."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import subprocess
import sys
import zoneinfo
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import icalendar
import pytest

from telehealth import mail
from telehealth.config import Config
from tests.conftest import RunningServer, eventually, start_server
from tests.smtp_server import smtp_server
from tests.test_pages import staff

PARIS = zoneinfo.ZoneInfo("Europe/Paris")  # the therapist's browser zone at sign-in (test_pages)
LINK = re.compile(r'value="(http://[^"]+/j/[A-Za-z0-9_-]{43})"')


def tomorrow_at_three_in_paris() -> datetime.datetime:
    day = datetime.datetime.now(PARIS).date() + datetime.timedelta(days=1)
    return datetime.datetime(day.year, day.month, day.day, 15, 0, tzinfo=PARIS)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def serving(make_config: Callable[..., Config], **changes: object) -> RunningServer:
    return await start_server(make_config(**changes))


def raw_files(server: RunningServer) -> bytes:
    server.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return b"".join(p.read_bytes() for p in server.config.data_dir.iterdir()
                    if p.is_file() and not p.name.endswith(".key"))


async def test_each_person_gets_their_own_link_time_checklist_and_calendar_entry(
    make_config: Callable[..., Config], http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    password_file = tmp_path / "smtp-password"
    password_file.write_text("s3cret pass\n")
    with smtp_server(tls_dir=tmp_path / "tls", login=("clinic", "s3cret pass")) as mailer:
        server = await serving(
            make_config, smtp_url=f"smtp://clinic@localhost:{mailer.port}", smtp_password_file=password_file,
            smtp_ca_file=mailer.cert, smtp_from="Riverside Clinic <appointments@clinic.example>",
            timezone="America/New_York",
        )
        try:
            user = await staff(http, server, "drada", "therapist")
            starts = tomorrow_at_three_in_paris()
            people = {"ada@clinic.example": "Dr Ada Lovelace", "sam@example.com": "Sam Rivera",
                      "alex@example.org": "Alex Kim"}
            form = {"therapist": "Dr Ada Lovelace", "therapist_email": "ada@clinic.example",
                    "partner1": "Sam Rivera", "phone1": "+44 20 7946 0018", "email1": "sam@example.com",
                    "partner2": "Alex Kim", "phone2": "(202) 555-0103", "email2": "alex@example.org",
                    "starts_at": starts.strftime("%Y-%m-%dT%H:%M"), "minutes": "50",
                    "csrf": await user.csrf()}
            created = await user.post("/console/rooms", form)
            assert created.status == 201
            page = await created.text()
            links = dict(zip(people, LINK.findall(page)))  # therapist, then the partners in order
            assert len(set(links.values())) == 3
            await eventually(lambda: len(mailer.inbox.delivered) == 3, 30)
            assert mailer.inbox.logins == ["clinic"] * 3  # over TLS: aiosmtpd refuses a login without it

            for address, name in people.items():
                [sent] = mailer.inbox.to(address)
                assert sent.recipients == [address] and address in sent.message["To"]
                assert "Riverside Clinic" in sent.message["From"]
                body = sent.body()
                first = name.split()[-2] if name.startswith("Dr ") else name.split()[0]
                assert body.startswith(f"Hello {first},")
                # Their own link and nobody else's; nothing about anyone else in the session.
                assert links[address] in body
                others = [a for a in people if a != address]
                for other in others:
                    assert links[other] not in body and other not in body
                    for word in people[other].split():
                        if word != "Dr":
                            assert word not in body, (address, word)
                # The link's token is random and may hold any few digits.
                words = body.replace(links[address], "")
                for private in ("7946", "0018", "555", "0103", name.split()[-1]):
                    assert private not in words and private not in str(sent.message["Subject"])
                # 15:00 in Paris is 9:00 in New York in winter: said in the clinic's zone, by name.
                assert "at 9:00 am New York time (EST), for 50 minutes" in body
                for item in ("10–15 minutes before", "private spot", "headphones", "Charge your device",
                             "driving"):
                    assert item in body
                calendar = icalendar.Calendar.from_ical(sent.attachment("text/calendar"))
                [event] = calendar.walk("VEVENT")
                assert event.decoded("DTSTART") == starts.astimezone(datetime.UTC)
                assert event.decoded("DTEND") - event.decoded("DTSTART") == datetime.timedelta(minutes=50)
                assert str(event["URL"]) == links[address]
                assert links[address] in str(event["DESCRIPTION"])

            # The console shows each as sent, at the time it went, in the therapist's zone.
            room_id = server.store.list_rooms()[-1].id
            outbox = mail.MailOutbox(server.store)
            await eventually(lambda: {d.state for d in outbox.deliveries([room_id]).values()} == {"sent"}, 20)
            async with http.get(f"{server.base_url}/console", headers=user.headers) as response:
                dashboard = await response.text()
            assert len(re.findall(r'data-mail-state="sent">sent \d{2}:\d{2}<', dashboard)) == 3
            async with http.get(f"{server.base_url}/console/rooms/{room_id}/mail", headers=user.headers) as response:
                states = await response.json()
            assert {s["state"] for s in states.values()} == {"sent"}

            audit = list(server.store.audit.export())
            assert sum('"email_sent"' in line for line in audit) == 3
            joined = "\n".join(audit)
            assert "@" not in joined and "Sam" not in joined and "Rivera" not in joined
            # Addresses are encrypted at rest, and a sent message (with its link) is gone.
            raw = raw_files(server)
            for address in people:
                assert address.encode() not in raw
            for link in links.values():
                assert link.rsplit("/", 1)[1].encode() not in raw
        finally:
            await server.runner.cleanup()


async def test_a_busy_mail_server_is_tried_again_and_no_request_waits_for_it(
    make_config: Callable[..., Config], http: aiohttp.ClientSession,
) -> None:
    with smtp_server() as mailer:
        server = await serving(make_config, smtp_url=f"smtp://127.0.0.1:{mailer.port}?starttls=off",
                               smtp_retry_seconds=0.3)
        try:
            mailer.inbox.busy["sam@example.com"] = 1  # 451 once
            mailer.inbox.release.clear()  # and then hold the message in the middle of DATA
            user = await staff(http, server, "drada", "therapist")
            starts = datetime.datetime.now(PARIS) + datetime.timedelta(hours=2)
            created = await user.post("/console/rooms", {
                "therapist": "Dr Ada", "partner1": "Sam Rivera", "email1": "sam@example.com",
                "starts_at": starts.strftime("%Y-%m-%dT%H:%M"), "csrf": await user.csrf()})
            assert created.status == 201
            room_id = server.store.list_rooms()[-1].id
            # The second attempt is inside the mail server, which holds it; the console answers.
            await eventually(lambda: mailer.inbox.attempts >= 2, 20)
            async with http.get(f"{server.base_url}/console/rooms/{room_id}/mail", headers=user.headers) as response:
                assert response.status == 200
                [state] = (await response.json()).values()
            assert state["state"] == "queued" and mailer.inbox.delivered == []
            mailer.inbox.release.set()
            await eventually(lambda: len(mailer.inbox.delivered) == 1, 20)
            outbox = mail.MailOutbox(server.store)
            await eventually(lambda: {d.state for d in outbox.deliveries([room_id]).values()} == {"sent"}, 20)
            entry = [json.loads(line) for line in server.store.audit.export() if '"email_sent"' in line]
            assert entry and entry[0]["detail"]["attempts"] == 2
        finally:
            await server.runner.cleanup()


async def test_room_create_with_email_is_sent_by_the_running_server(
    make_config: Callable[..., Config],
) -> None:
    """The CLI composes and queues; the server, another process, sends."""
    with smtp_server() as mailer:
        server = await serving(make_config, smtp_url=f"smtp://127.0.0.1:{mailer.port}?starttls=off")
        try:
            starts = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)).strftime("%Y-%m-%dT%H:%MZ")
            result = await asyncio.to_thread(subprocess.run, [
                sys.executable, "-m", "telehealth.cli", "room", "create",
                "--data-dir", str(server.config.data_dir), "--base-url", server.base_url,
                "--therapist", "Dr Ada Lovelace", "--partner", "Sam Rivera", "--phone", "+1 202 555 0102",
                "--email", "sam@example.com", "--partner", "Alex Kim", "--starts-at", starts,
                "--minutes", "45", "--json",
            ], capture_output=True, text=True, timeout=60,
                env={**os.environ, "TELEHEALTH_TIMEZONE": "Europe/London"})
            assert result.returncode == 0, result.stderr
            created = json.loads(result.stdout)
            assert created["emails"] == {"partner1": "queued"} and created["minutes"] == 45
            await eventually(lambda: len(mailer.inbox.delivered) == 1, 30)
            [sent] = mailer.inbox.to("sam@example.com")
            body = sent.body()
            assert created["partner_links"][0] in body and created["partner_links"][1] not in body
            assert "London time (GMT)" in body and "Alex" not in body
        finally:
            await server.runner.cleanup()
