"""Room operations as plain functions: the CLI, the pages and the server all call these.

They persist through the Store; the live side of a room (who is connected) belongs to the
signaling hub, which learns of an ended room through the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telehealth.audit import AuditEvent
from telehealth.errors import ErrorCode, StateError, UserError
from telehealth.store import NewLink, Person, RoomRecord, Store
from telehealth.tokens import PersonId, RoomId, hash_token, new_person_id, new_room_id, new_token

MAX_NAME = 80
_PHONE_RE = re.compile(r"^\+?[0-9][0-9 ().-]{5,24}$")


@dataclass(frozen=True)
class PartnerSpec:
    name: str
    phone: str | None = None


@dataclass(frozen=True)
class CreatedRoom:
    room_id: RoomId
    therapist_link: str
    partner_links: tuple[str, ...]
    expires_at: float

    def as_json(self) -> dict[str, object]:
        return {
            "room_id": self.room_id,
            "therapist_link": self.therapist_link,
            "partner_links": list(self.partner_links),
            "expires_at": self.expires_at,
        }


def link_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/j/{token}"


def clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise UserError(ErrorCode.INVALID_MESSAGE, "A name is required.")
    if len(name) > MAX_NAME:
        raise UserError(ErrorCode.INVALID_MESSAGE, f"A name may have at most {MAX_NAME} characters.")
    return name


def clean_phone(phone: str | None) -> str | None:
    if phone is None or not phone.strip():
        return None
    phone = phone.strip()
    if not _PHONE_RE.match(phone):
        raise UserError(
            ErrorCode.INVALID_MESSAGE,
            "A phone number may hold digits, spaces, brackets, dots and dashes, and start with +.",
        )
    return phone


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
    actor: str = "cli",
) -> CreatedRoom:
    """``actor``: who asks (``cli``, or a staff account as ``u_<id>``), for the audit log."""
    if not 1 <= len(partners) <= 2:
        raise UserError(ErrorCode.INVALID_MESSAGE, "A session has one or two partners.")
    if starts_at is not None:
        check_starts_at(starts_at, now)
    room_id = new_room_id()
    people = [Person(new_person_id(), room_id, "therapist", 0, clean_name(therapist))]
    people += [
        Person(new_person_id(), room_id, "partner", i + 1, clean_name(p.name), clean_phone(p.phone))
        for i, p in enumerate(partners)
    ]
    expires_at = now + link_ttl
    tokens = [new_token() for _ in people]
    store.insert_room(
        RoomRecord(room_id, now, starts_at, None, None, tuple(people)),
        [NewLink(hash_token(t), p.id, expires_at) for t, p in zip(tokens, people)],
    )
    store.audit.append(AuditEvent.ROOM_CREATED, room_id=room_id, actor=actor, detail={"people": len(people)})
    for person in people:
        store.audit.append(AuditEvent.LINK_ISSUED, room_id=room_id, person_id=person.id, actor=person.role)
    urls = [link_url(base_url, t) for t in tokens]
    return CreatedRoom(room_id, urls[0], tuple(urls[1:]), expires_at)


def list_rooms(store: Store, *, since: float | None = None) -> list[RoomRecord]:
    return store.list_rooms(since=since)


def end_room(store: Store, room_id: str, *, now: float, actor: str = "cli") -> None:
    """End a room for everyone and revoke its links; a running server notices at once."""
    room = store.get_room(room_id)
    if room is None:
        raise UserError(ErrorCode.UNKNOWN_TARGET, f"No room {room_id}.")
    if not store.end_room(room_id, now):
        raise StateError(ErrorCode.ROOM_ENDED, f"Room {room_id} has already ended.")
    store.audit.append(AuditEvent.ROOM_ENDED, room_id=room_id, actor=actor)


def reissue_link(
    store: Store, room_id: RoomId, person_id: PersonId, *, base_url: str, link_ttl: float, now: float,
    actor: str = "cli",
) -> str:
    """A new link for a person; their old links stop working (and a server holding a socket
    joined with one closes it: see Signaling.end_revoked)."""
    token = new_token()
    store.replace_link(person_id, NewLink(hash_token(token), person_id, now + link_ttl), now)
    store.audit.append(AuditEvent.LINK_ISSUED, room_id=room_id, person_id=person_id, actor=actor,
                       detail={"reason": "reissued"})
    return link_url(base_url, token)
