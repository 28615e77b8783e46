"""Email: each person's own link, with the session time, what to prepare and a calendar entry.

A message is composed where the link is made (``room create``, the console), because only
then is the link known (the store keeps hashes). It waits in the ``mail`` table, encrypted
like names, one per person; the server's ``MailSender`` sends it with aiosmtplib in the
background, so no request waits on a mail server. A refusal that may pass (a 4xx reply, an
unreachable server) is tried again with a doubling delay; one that will not (5xx: the mailbox
does not exist) fails at once. The console shows each state in words and can send again.
Once sent, the message (and its link) is erased; the audit log records ids and codes only.

What a message holds: the reader's first name, their own link, the session time in the
clinic's time zone (TELEHEALTH_TIMEZONE, said in words: an email cannot know the reader's),
the clinic guide's checklist and an ``.ics`` entry. Nothing about anyone else in the session.
"""

from __future__ import annotations

import asyncio
import datetime
import email.policy
import enum
import logging
import ssl
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, formataddr, make_msgid
from typing import Literal

import aiosmtplib

from telehealth.audit import AuditEvent
from telehealth.config import Config
from telehealth.model import Person, RoomRecord
from telehealth.store import Store
from telehealth.tokens import PersonId
from telehealth.waits import wait_at_most

log = logging.getLogger("telehealth.mail")

MailState = Literal["queued", "sent", "failed"]
# Titles are not first names: "Dr Ada Lovelace" is greeted "Hello Ada".
_TITLES = {"dr", "dr.", "prof", "prof.", "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "mx", "mx."}


class MailFailure(str, enum.Enum):
    """Why a message did not go, as stored and audited; ``words`` is what the console says."""

    MAILBOX_UNAVAILABLE = "mailbox_unavailable"
    MAILBOX_FULL = "mailbox_full"
    MESSAGE_REFUSED = "message_refused"
    SENDER_REFUSED = "sender_refused"
    LOGIN_REFUSED = "login_refused"
    UNREACHABLE = "unreachable"
    NOT_CONFIGURED = "not_configured"

    @property
    def words(self) -> str:
        return _FAILURE_WORDS[self]


_FAILURE_WORDS = {
    MailFailure.MAILBOX_UNAVAILABLE: "mailbox unavailable",
    MailFailure.MAILBOX_FULL: "mailbox full",
    MailFailure.MESSAGE_REFUSED: "the mail server refused the message",
    MailFailure.SENDER_REFUSED: "the mail server refused our sender address",
    MailFailure.LOGIN_REFUSED: "the mail server refused our login",
    MailFailure.UNREACHABLE: "could not reach the mail server",
    MailFailure.NOT_CONFIGURED: "email is not set up on this server",
}


# -- settings -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    # "tls": TLS from the first byte (smtps://); "starttls": required upgrade; "none": a
    # relay on this machine only.
    security: Literal["tls", "starttls", "none"]
    username: str | None
    password: str | None
    timeout: float
    ca_file: str | None = None


def smtp_settings(config: Config) -> SmtpSettings | None:
    """The mail server from TELEHEALTH_SMTP_*, or None when email is not set up."""
    if not config.smtp_url:
        return None
    url = urllib.parse.urlsplit(config.smtp_url)
    query = urllib.parse.parse_qs(url.query)
    if url.scheme == "smtps":
        security: Literal["tls", "starttls", "none"] = "tls"
    elif query.get("starttls", ["on"])[0].lower() in ("off", "no", "0", "false"):
        security = "none"
    else:
        security = "starttls"
    if not url.hostname:
        raise ValueError("TELEHEALTH_SMTP_URL has no host (e.g. smtp://mail.clinic.example:587)")
    password = None
    if config.smtp_password_file is not None:
        lines = config.smtp_password_file.read_text().splitlines()
        password = lines[0] if lines else ""
    username = urllib.parse.unquote(url.username) if url.username else None
    if password is not None and username is None:
        raise ValueError("TELEHEALTH_SMTP_PASSWORD_FILE is set but TELEHEALTH_SMTP_URL names no user "
                         "(e.g. smtp://clinic@mail.clinic.example:587)")
    default_port = 465 if security == "tls" else 587
    return SmtpSettings(
        host=url.hostname, port=url.port or default_port, security=security, username=username,
        password=password,
        timeout=config.smtp_timeout_seconds,
        ca_file=str(config.smtp_ca_file) if config.smtp_ca_file else None,
    )


def sender_address(config: Config) -> str:
    host = urllib.parse.urlsplit(config.public_base_url).hostname or "localhost"
    return config.smtp_from or f"telehealth@{host}"


# -- composing ----------------------------------------------------------------------------


def greeting_name(person: Person) -> str:
    words = [w for w in person.name.split() if w.lower() not in _TITLES]
    return words[0] if words else ""


def clinic_time(ts: float, zone_name: str) -> str:
    """A session time for an email, with its zone said: "Tuesday 25 November 2026 at
    3:00 pm London time (GMT)"; in UTC, "... at 3:00 pm UTC"."""
    zone = zoneinfo.ZoneInfo(zone_name)
    when = datetime.datetime.fromtimestamp(ts, zone)
    hour = when.hour % 12 or 12
    clock = f"{hour}:{when:%M} {'am' if when.hour < 12 else 'pm'}"
    day = f"{when:%A} {when.day} {when:%B %Y}"
    if zone_name in ("UTC", "Etc/UTC"):
        return f"{day} at {clock} UTC"
    place = zone_name.rsplit("/", 1)[-1].replace("_", " ")
    return f"{day} at {clock} {place} time ({when.tzname()})"


CHECKLIST = (
    ("Set aside 10–15 minutes before the start to get ready: the link checks your camera, "
     "microphone and connection."),
    "Find a private spot where no one can overhear you, and close the door.",
    "Use headphones if you can.",
    "Charge your device or plug it in.",
    "Please don't join while driving. If you're in a car, park somewhere safe first.",
)


def compose(
    person: Person, link: str, record: RoomRecord, *, sender: str, zone_name: str, lead_s: float,
    now: float,
) -> EmailMessage:
    """The message for ``person`` alone: their first name, their link, the time."""
    if person.email is None:
        raise ValueError("no address")
    name = greeting_name(person)
    lines = [f"Hello {name}," if name else "Hello,", ""]
    starts_at, ends_at = record.starts_at, record.ends_at
    if starts_at is not None and ends_at is not None:
        when = clinic_time(starts_at, zone_name)
        subject = f"Your video session on {when.split(' at ')[0]}"
        lines += [f"Your video session is on {when}, for {record.minutes} minutes.", ""]
    else:
        subject = "Your video session link"
        lines += ["Here is the link to your video session.", ""]
    lines += ["Join from this link:", link, ""]
    if person.role == "therapist":
        lines += [("This link opens the session room. Your clients wait in the waiting room until "
                   "you let them in."), ""]
    else:
        lines += [("The link is for you alone: please don't forward it. Your therapist lets you in "
                   "from the waiting room."), ""]
    if starts_at is not None:
        lines += [f"The link opens {round(lead_s / 60)} minutes before the session starts.", ""]
    lines += ["Before your session:"] + [f"- {item}" for item in CHECKLIST] + [""]
    if person.role == "partner":
        lines += ["If the video stops working, your therapist will phone you.", ""]
    if starts_at is not None:
        lines += ["A calendar entry is attached.", ""]
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = formataddr((name, person.email)) if name else person.email
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip("> ") or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content("\n".join(lines))
    if starts_at is not None and ends_at is not None:
        message.add_attachment(
            calendar_entry(record, person, link, now).encode(), maintype="text", subtype="calendar",
            filename="session.ics", params={"method": "PUBLISH"},
        )
    return message


def _ics_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def _ics_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def _fold(line: str) -> str:
    """RFC 5545 3.1: lines longer than 75 octets continue on the next with a space."""
    data = line.encode()
    parts: list[bytes] = []
    while len(data) > 75:
        cut = 75 if not parts else 74
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # never inside a UTF-8 character
            cut -= 1
        parts.append(data[:cut])
        data = data[cut:]
    parts.append(data)
    return "\r\n ".join(p.decode() for p in parts)


def calendar_entry(record: RoomRecord, person: Person, link: str, now: float) -> str:
    """An iCalendar event for the session, in UTC (the reader's calendar shows its own zone)."""
    assert record.starts_at is not None and record.ends_at is not None
    description = f"Join from your link: {link}\n" + "\n".join(f"- {item}" for item in CHECKLIST)
    lines = [
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//telehealth//session//EN", "METHOD:PUBLISH",
        "BEGIN:VEVENT",
        f"UID:{record.id}.{person.id}@telehealth",
        f"DTSTAMP:{_ics_time(now)}",
        f"DTSTART:{_ics_time(record.starts_at)}",
        f"DTEND:{_ics_time(record.ends_at)}",
        "SUMMARY:Video session",
        f"DESCRIPTION:{_ics_text(description)}",
        f"URL:{link}",
        "BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:Video session in 15 minutes",
        "TRIGGER:-PT15M", "END:VALARM",
        "END:VEVENT", "END:VCALENDAR",
    ]
    return "\r\n".join(_fold(line) for line in lines) + "\r\n"


# -- the outbox ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where one person's email stands."""

    person_id: PersonId
    state: MailState
    attempts: int
    sent_at: float | None
    reason: MailFailure | None
    updated_at: float
    # The message is still held (not sent yet), so it can be sent again.
    held: bool


@dataclass(frozen=True, slots=True)
class Pending:
    person_id: PersonId
    room_id: str
    message: EmailMessage
    attempts: int


def _aad(person_id: str) -> str:
    return f"mail.message:{person_id}"


class MailOutbox:
    """The ``mail`` table: one message per person, its state and its attempts."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def queue(self, person: Person, message: EmailMessage, now: float) -> None:
        sealed = self.store.cipher.encrypt(message.as_string(policy=email.policy.SMTP), _aad(person.id))
        self.store.db.execute(
            "INSERT INTO mail (person_id, room_id, message, state, attempts, next_at, sent_at, reason,"
            " updated_at) VALUES (?,?,?,'queued',0,?,NULL,NULL,?) ON CONFLICT(person_id) DO UPDATE SET"
            " message = excluded.message, state = 'queued', attempts = 0, next_at = excluded.next_at,"
            " sent_at = NULL, reason = NULL, updated_at = excluded.updated_at",
            (person.id, person.room_id, sealed, now, now),
        )
        self.store.audit.append(AuditEvent.EMAIL_QUEUED, room_id=person.room_id, person_id=person.id,
                                actor="server")

    def due(self, now: float, limit: int = 20) -> list[Pending]:
        rows = self.store.db.execute(
            "SELECT person_id, room_id, message, attempts FROM mail"
            " WHERE state = 'queued' AND message IS NOT NULL AND next_at <= ? ORDER BY next_at LIMIT ?",
            (now, limit),
        ).fetchall()
        parser = BytesParser(policy=email.policy.SMTP)
        return [
            Pending(PersonId(pid), room_id,
                    parser.parsebytes(self.store.cipher.decrypt(blob, _aad(pid)).encode()),  # type: ignore[arg-type]
                    attempts)
            for pid, room_id, blob, attempts in rows
        ]

    def next_due(self) -> float | None:
        row = self.store.db.execute(
            "SELECT MIN(next_at) FROM mail WHERE state = 'queued' AND message IS NOT NULL").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def sent(self, pending: Pending, now: float) -> None:
        self.store.db.execute(
            "UPDATE mail SET state = 'sent', message = NULL, attempts = attempts + 1, sent_at = ?,"
            " next_at = NULL, reason = NULL, updated_at = ? WHERE person_id = ?",
            (now, now, pending.person_id))
        self.store.audit.append(AuditEvent.EMAIL_SENT, room_id=pending.room_id, person_id=pending.person_id,
                                actor="server", detail={"attempts": pending.attempts + 1})

    def retry_later(self, pending: Pending, reason: MailFailure, at: float, now: float) -> None:
        self.store.db.execute(
            "UPDATE mail SET attempts = attempts + 1, next_at = ?, reason = ?, updated_at = ?"
            " WHERE person_id = ?", (at, reason.value, now, pending.person_id))

    def failed(self, pending: Pending, reason: MailFailure, code: int | None, now: float) -> None:
        # The message stays (encrypted) so the console can send it again.
        self.store.db.execute(
            "UPDATE mail SET state = 'failed', attempts = attempts + 1, next_at = NULL, reason = ?,"
            " updated_at = ? WHERE person_id = ?", (reason.value, now, pending.person_id))
        detail: dict[str, object] = {"reason": reason.value, "attempts": pending.attempts + 1}
        if code is not None:
            detail["smtp_code"] = code
        self.store.audit.append(AuditEvent.EMAIL_FAILED, room_id=pending.room_id,
                                person_id=pending.person_id, actor="server", detail=detail)

    def send_again(self, person_id: str, now: float) -> bool:
        """Queue a failed message once more; False when there is none to send."""
        cur = self.store.db.execute(
            "UPDATE mail SET state = 'queued', attempts = 0, next_at = ?, updated_at = ?"
            " WHERE person_id = ? AND state = 'failed' AND message IS NOT NULL", (now, now, person_id))
        return cur.rowcount == 1

    def deliveries(self, room_ids: list[str]) -> dict[PersonId, Delivery]:
        if not room_ids:
            return {}
        marks = ",".join("?" * len(room_ids))
        rows = self.store.db.execute(
            "SELECT person_id, state, attempts, sent_at, reason, updated_at, message IS NOT NULL"
            f" FROM mail WHERE room_id IN ({marks})", room_ids).fetchall()
        return {
            PersonId(pid): Delivery(PersonId(pid), state, attempts, sent_at,
                                    MailFailure(reason) if reason else None, updated_at, bool(held))
            for pid, state, attempts, sent_at, reason, updated_at, held in rows
        }


def queue_links(store: Store, record: RoomRecord, links: Mapping[PersonId, str], config: Config,
                now: float) -> list[PersonId]:
    """Compose and queue the email of everyone in ``links`` who has an address."""
    outbox = MailOutbox(store)
    sender = sender_address(config)
    queued = []
    for person in record.people:
        link = links.get(person.id)
        if link is None or person.email is None:
            continue
        message = compose(person, link, record, sender=sender, zone_name=config.timezone,
                          lead_s=config.link_lead_seconds, now=now)
        outbox.queue(person, message, now)
        queued.append(person.id)
    return queued


# -- sending ------------------------------------------------------------------------------


def classify(exc: Exception) -> tuple[MailFailure, int | None, bool]:
    """(why, the SMTP code if any, whether trying again later may help)."""
    code = getattr(exc, "code", None)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        code = first.code
        exc = first
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return MailFailure.LOGIN_REFUSED, code, False
    transient = isinstance(code, int) and 400 <= code < 500
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        reason = MailFailure.MAILBOX_FULL if code == 552 else MailFailure.MAILBOX_UNAVAILABLE
        return reason, code, transient
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return MailFailure.SENDER_REFUSED, code, transient
    if isinstance(exc, (aiosmtplib.SMTPDataError, aiosmtplib.SMTPResponseException)) and isinstance(code, int):
        return MailFailure.MESSAGE_REFUSED, code, transient
    # Could not connect, TLS failed, the connection dropped, a timeout: may pass.
    return MailFailure.UNREACHABLE, code if isinstance(code, int) else None, True


class MailSender:
    """Sends what the outbox holds, one message at a time, in the server's background.

    ``wake()`` after queueing makes it look at once; otherwise it looks every ``poll_s`` (the
    CLI queues from another process).
    """

    def __init__(self, store: Store, config: Config, clock: Callable[[], float],
                 poll_s: float = 1.0) -> None:
        self.outbox = MailOutbox(store)
        self.config = config
        self.settings = smtp_settings(config)
        self.clock = clock
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        this_task = asyncio.current_task()
        while True:
            try:
                await self.send_due()
            except Exception:
                log.exception("sending email failed")
            # aiosmtplib waits for replies with asyncio.wait_for, which on Python 3.11 eats a
            # cancel that lands as a reply arrives: the server's shutdown then waited for ever.
            if this_task is not None and this_task.cancelling():
                raise asyncio.CancelledError
            await wait_at_most(self._wake, self.poll_s)
            self._wake.clear()

    async def send_due(self) -> None:
        for pending in self.outbox.due(self.clock()):
            await self._send(pending)

    async def _send(self, pending: Pending) -> None:
        settings = self.settings
        if settings is None:
            self.outbox.failed(pending, MailFailure.NOT_CONFIGURED, None, self.clock())
            return
        try:
            await aiosmtplib.send(
                pending.message, hostname=settings.host, port=settings.port,
                username=settings.username, password=settings.password,
                use_tls=settings.security == "tls", start_tls=settings.security == "starttls",
                timeout=settings.timeout, cert_bundle=settings.ca_file,
            )
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            reason, code, transient = classify(exc)
            now = self.clock()
            attempt = pending.attempts + 1
            log.info("email not sent (%s, attempt %d)", reason.value, attempt,
                     extra={"room_id": pending.room_id})
            if transient and attempt < self.config.smtp_attempts:
                delay = self.config.smtp_retry_seconds * 2 ** (attempt - 1)
                self.outbox.retry_later(pending, reason, now + delay, now)
            else:
                self.outbox.failed(pending, reason, code, now)
            return
        self.outbox.sent(pending, self.clock())
