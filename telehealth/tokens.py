"""Join link rules: unguessable tokens, stored only as a hash, bound to one person.

Pure: no I/O; callers pass the stored record and the time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Literal, NewType

from telehealth.errors import ErrorCode, LinkError

RoomId = NewType("RoomId", str)
PersonId = NewType("PersonId", str)
Role = Literal["therapist", "partner"]

# 32 random bytes: 256 bits, well above the 128 the threat model needs.
TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_room_id() -> RoomId:
    return RoomId("r_" + secrets.token_hex(8))


def new_person_id() -> PersonId:
    return PersonId("p_" + secrets.token_hex(6))


def well_formed(token: str) -> bool:
    return bool(_TOKEN_RE.match(token))


@dataclass(frozen=True, slots=True)
class JoinLink:
    """A stored link as the store returns it, with what decides whether it still works."""

    token_hash: str
    room_id: RoomId
    person_id: PersonId
    role: Role
    expires_at: float
    revoked_at: float | None
    room_ended_at: float | None
    # An appointment's start; None for a room without a set time (its links work at once).
    starts_at: float | None = None


class TooEarly(LinkError):
    """An appointment's link opened before its window: come back at ``opens_at``."""

    def __init__(self, starts_at: float, opens_at: float) -> None:
        super().__init__(ErrorCode.TOO_EARLY)
        self.starts_at = starts_at
        self.opens_at = opens_at


def check_link(link: JoinLink | None, now: float, lead_s: float = 0.0) -> JoinLink:
    """Return the link if it lets its person in now, else raise LinkError with why.

    An appointment's link (``starts_at`` set) works from ``lead_s`` before the start until
    its ``expires_at`` (the end of the session and its overrun); before, TooEarly; after,
    SESSION_OVER. A link without an appointment works until it expires.
    """
    if link is None:
        raise LinkError(ErrorCode.BAD_LINK)
    if link.room_ended_at is not None:
        raise LinkError(ErrorCode.ROOM_ENDED)
    if link.revoked_at is not None:
        raise LinkError(ErrorCode.LINK_REVOKED)
    if now >= link.expires_at:
        raise LinkError(ErrorCode.LINK_EXPIRED if link.starts_at is None else ErrorCode.SESSION_OVER)
    if link.starts_at is not None and now < link.starts_at - lead_s:
        raise TooEarly(link.starts_at, link.starts_at - lead_s)
    return link
