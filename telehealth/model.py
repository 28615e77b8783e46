"""The core's plain types: a room and the people in it, as the store hands them out.

Frozen values without behaviour beyond what they derive from their own fields, so that every
layer may hold them (fallback/ too, which never sees the store).
"""

from __future__ import annotations

from dataclasses import dataclass

from telehealth.tokens import PersonId, Role, RoomId


@dataclass(frozen=True, slots=True)
class Person:
    id: PersonId
    room_id: RoomId
    role: Role
    ordinal: int
    name: str
    # E.164 (telehealth.phones), for the phone fallback.
    phone: str | None = None
    # Where the person's link is emailed (telehealth.mail).
    email: str | None = None

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.split() else ""


@dataclass(frozen=True, slots=True)
class RoomRecord:
    id: RoomId
    created_at: float
    starts_at: float | None
    started_at: float | None
    ended_at: float | None
    people: tuple[Person, ...]
    # An appointment's length; None for a room without a set time (and older rooms).
    minutes: int | None = None

    @property
    def ends_at(self) -> float | None:
        if self.starts_at is None or self.minutes is None:
            return None
        return self.starts_at + self.minutes * 60

    @property
    def therapist(self) -> Person:
        return next(p for p in self.people if p.role == "therapist")

    @property
    def partners(self) -> tuple[Person, ...]:
        return tuple(p for p in self.people if p.role == "partner")
