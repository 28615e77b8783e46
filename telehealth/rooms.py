"""Room operations as plain functions: the CLI, the pages and the server all call these.

They persist through the Store; the live side of a room (who is connected) belongs to the
signaling hub, which learns of an ended room through the store.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from telehealth import phones
from telehealth.audit import LINK_REJECT_REASONS, AuditEvent
from telehealth.config import MAX_SESSION_MINUTES
from telehealth.errors import ErrorCode, LinkError, StateError, UserError
from telehealth.model import Person, RoomRecord
from telehealth.ratelimit import LinkOpenLimits
from telehealth.refusals import RefusalTally
from telehealth.store import NewLink, Store
from telehealth.tokens import (
    JoinLink,
    PersonId,
    RoomId,
    check_link,
    hash_token,
    new_person_id,
    new_room_id,
    new_token,
    well_formed,
)

MAX_NAME = 80
MAX_EMAIL = 254
# A session may be booked up to a year ahead: anything further is a typo in the year.
MAX_AHEAD_SECONDS = 366 * 86400
# What the CLI and console accept as an address: one @, a dot in the domain, no spaces or
# brackets (so nothing that could add a header or a second recipient).
_EMAIL_RE = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


@dataclass(frozen=True)
class PartnerSpec:
    name: str
    phone: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class CreatedRoom:
    room_id: RoomId
    therapist_link: str
    partner_links: tuple[str, ...]
    expires_at: float
    starts_at: float | None = None
    minutes: int | None = None
    # Each person's link by their id, for the email of each.
    links: Mapping[PersonId, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "room_id": self.room_id,
            "therapist_link": self.therapist_link,
            "partner_links": list(self.partner_links),
            "expires_at": self.expires_at,
        }
        if self.starts_at is not None:
            out["starts_at"] = self.starts_at
            out["minutes"] = self.minutes
        return out


def link_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/j/{token}"


def clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise UserError(ErrorCode.INVALID_MESSAGE, "A name is required.")
    if len(name) > MAX_NAME:
        raise UserError(ErrorCode.INVALID_MESSAGE, f"A name may have at most {MAX_NAME} characters.")
    return name


def clean_phone(phone: str | None, region: str = phones.DEFAULT_REGION) -> str | None:
    """The number in E.164, None when none was given; InvalidPhone when it is no number."""
    if phone is None or not phone.strip():
        return None
    return phones.parse_phone(phone, region)


def clean_email(email: str | None) -> str | None:
    if email is None or not email.strip():
        return None
    email = email.strip()
    if len(email) > MAX_EMAIL or not _EMAIL_RE.match(email):
        raise UserError(ErrorCode.INVALID_MESSAGE,
                        f"“{email[:60]}” is not an email address (it should look like name@example.com).")
    return email


def check_appointment(starts_at: float, minutes: int, now: float) -> None:
    """Refuse a session time that cannot be meant: gone already, or years away."""
    if not 1 <= minutes <= MAX_SESSION_MINUTES:
        raise UserError(ErrorCode.INVALID_MESSAGE,
                        f"A session lasts between 1 and {MAX_SESSION_MINUTES} minutes.")
    if not math.isfinite(starts_at) or starts_at + minutes * 60 <= now:
        raise UserError(ErrorCode.INVALID_MESSAGE, "That session time has already passed.")
    if starts_at > now + MAX_AHEAD_SECONDS:
        raise UserError(ErrorCode.INVALID_MESSAGE, "A session can be booked at most a year ahead.")


def link_expiry(starts_at: float | None, minutes: int | None, *, now: float, link_ttl: float,
                overrun_s: float) -> float:
    """When a link stops working: an appointment's end and overrun, else ``link_ttl`` from now."""
    if starts_at is not None and minutes is not None:
        return starts_at + minutes * 60 + overrun_s
    return now + link_ttl


# How far from now a session may be booked: the past day (a session entered late) to five
# years ahead. Beyond, a typo; and a date near year 1 or 9999 cannot be shown in every time
# zone (the console answered 500 for everyone once such a room was stored).
STARTS_AT_PAST_SECONDS = 86400.0
STARTS_AT_AHEAD_SECONDS = 5 * 366 * 86400.0


def check_starts_at(starts_at: float, now: float) -> None:
    if not now - STARTS_AT_PAST_SECONDS <= starts_at <= now + STARTS_AT_AHEAD_SECONDS:
        raise UserError(ErrorCode.INVALID_MESSAGE,
                        "The session's date must be between yesterday and five years from now.")


def create_room(
    store: Store,
    *,
    therapist: str,
    partners: list[PartnerSpec],
    base_url: str,
    link_ttl: float,
    now: float,
    starts_at: float | None = None,
    minutes: int | None = None,
    overrun_s: float = 30 * 60,
    therapist_email: str | None = None,
    phone_region: str = phones.DEFAULT_REGION,
    actor: str = "cli",
) -> CreatedRoom:
    """Create a room and its links; ``actor`` (``cli``, or a staff account as ``u_<id>``) is
    who asks, for the audit log. With ``starts_at`` it is an appointment of ``minutes``,
    With ``starts_at`` it is an appointment of ``minutes``, whose links open shortly before it
    and stop after its end and ``overrun_s``."""
    if not 1 <= len(partners) <= 2:
        raise UserError(ErrorCode.INVALID_MESSAGE, "A session has one or two partners.")
    if starts_at is not None:
        if minutes is None:
            raise UserError(ErrorCode.INVALID_MESSAGE, "Give the session's length in minutes.")
        check_appointment(starts_at, minutes, now)
    else:
        minutes = None
    room_id = new_room_id()
    people = [Person(new_person_id(), room_id, "therapist", 0, clean_name(therapist),
                     email=clean_email(therapist_email))]
    people += [
        Person(new_person_id(), room_id, "partner", i + 1, clean_name(p.name),
               clean_phone(p.phone, phone_region), clean_email(p.email))
        for i, p in enumerate(partners)
    ]
    expires_at = link_expiry(starts_at, minutes, now=now, link_ttl=link_ttl, overrun_s=overrun_s)
    tokens = [new_token() for _ in people]
    store.insert_room(
        RoomRecord(room_id, now, starts_at, None, None, tuple(people), minutes),
        [NewLink(hash_token(t), p.id, expires_at) for t, p in zip(tokens, people)],
    )
    store.audit.append(AuditEvent.ROOM_CREATED, room_id=room_id, actor=actor, detail={"people": len(people)})
    for person in people:
        store.audit.append(AuditEvent.LINK_ISSUED, room_id=room_id, person_id=person.id, actor=person.role)
    urls = [link_url(base_url, t) for t in tokens]
    return CreatedRoom(room_id, urls[0], tuple(urls[1:]), expires_at, starts_at, minutes,
                       {p.id: url for p, url in zip(people, urls)})


def list_rooms(store: Store, *, since: float | None = None) -> list[RoomRecord]:
    return store.list_rooms(since=since)


def open_link(store: Store, token: str, *, now: float, lead_s: float, limits: LinkOpenLimits, address: str,
              refusals: RefusalTally | None, actor: str,
              record_of: Callable[[RoomId], RoomRecord | None] | None = None) -> tuple[JoinLink, RoomRecord, Person]:
    """The link ``token`` with its room and person, if it lets its person in at ``now``; else
    LinkError with why, counted among the refused attempts (``actor``: who was asked).

    The room page, the network check and the signaling join all open links here. A link that
    does not work (a guess) counts against ``address``'s budget; a good link at the wrong time
    does not. ``record_of`` may answer a room's record without the store (a live room's).
    """
    token_hash, tick = hash_token(token), time.monotonic()
    try:
        wait = limits.check(address, token_hash, tick)
        if wait is not None:
            raise LinkError(ErrorCode.RATE_LIMITED,
                            f"Too many attempts. Please wait {max(1, round(wait))} seconds and try again.")
        try:
            link = check_link(store.find_link(token_hash) if well_formed(token) else None, now, lead_s)
        except LinkError as exc:
            # A good link at the wrong time is no guess at a token.
            if exc.code not in (ErrorCode.TOO_EARLY, ErrorCode.SESSION_OVER):
                limits.failed(address, tick)
            raise
        record = record_of(link.room_id) if record_of is not None else None
        if record is None:
            record = store.get_room(link.room_id)
        person = next((x for x in record.people if x.id == link.person_id), None) if record else None
        if record is None or person is None:
            raise LinkError(ErrorCode.BAD_LINK)
    except LinkError as exc:
        if refusals is not None:
            refusals.count(AuditEvent.LINK_REJECTED, LINK_REJECT_REASONS[exc.code].value, address, actor=actor)
        raise
    return link, record, person


def end_room(store: Store, room_id: str, *, now: float, actor: str = "cli") -> None:
    """End a room for everyone and revoke its links; a running server notices at once."""
    room = store.get_room(room_id)
    if room is None:
        raise UserError(ErrorCode.UNKNOWN_TARGET, f"No room {room_id}.")
    if not store.end_room(room_id, now):
        raise StateError(ErrorCode.ROOM_ENDED, f"Room {room_id} has already ended.")
    store.audit.append(AuditEvent.ROOM_ENDED, room_id=room_id, actor=actor)


def reissue_link(
    store: Store, record: RoomRecord, person_id: PersonId, *, base_url: str, link_ttl: float,
    now: float, overrun_s: float = 30 * 60, actor: str = "cli",
) -> str:
    """A new link for a person; their old links stop working (and a server holding a socket
    joined with one closes it: see Signaling.end_revoked)."""
    token = new_token()
    expires_at = link_expiry(record.starts_at, record.minutes, now=now, link_ttl=link_ttl, overrun_s=overrun_s)
    store.replace_link(person_id, NewLink(hash_token(token), person_id, expires_at), now)
    store.audit.append(AuditEvent.LINK_ISSUED, room_id=record.id, person_id=person_id, actor=actor,
                       detail={"reason": "reissued"})
    return link_url(base_url, token)
