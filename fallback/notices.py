"""What each person is told during the fallback flow, and the fallback plan each one carries.

The flow emits ``Notice``s with ids only; ``notice_text`` turns one into plain words for its
reader, given the name it is about. Words are for anxious, non-technical people: say what is
happening and what to do, never blame, never jargon. docs/fallback.md shows every sentence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from telehealth import phones
from telehealth.model import Person, RoomRecord
from telehealth.tokens import PersonId


class Audience(str, enum.Enum):
    """Who reads a notice, relative to the person it is about."""

    YOU = "you"  # a partner, about themself
    YOU_THERAPIST = "you_therapist"  # the therapist, about themself
    THERAPIST = "therapist"  # the therapist, about a partner
    PARTNER = "partner"  # a partner, about the other partner
    PARTNER_THERAPIST = "partner_therapist"  # a partner, about the therapist
    EVERYONE = "everyone"  # anyone, about nobody in particular


class NoticeKind(str, enum.Enum):
    VIDEO_PAUSED = "video_paused"
    VIDEO_RETURNING = "video_returning"
    VIDEO_BACK = "video_back"
    DROPPED = "dropped"
    BACK = "back"
    PHONE = "phone"
    VIDEO_AVAILABLE = "video_available"
    RETURNED_TO_VIDEO = "returned_to_video"
    ON_HOLD = "on_hold"
    RESUMED = "resumed"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Notice:
    to: PersonId
    kind: NoticeKind
    audience: Audience
    about: PersonId | None


_K, _A = NoticeKind, Audience
_PAUSED = "{name}'s connection is weak, so their video is paused to keep the sound clear."
_YOU_PAUSED = ("Your internet connection is weak right now, so we've paused video to keep "
               "your voice clear. Video will come back on its own when the connection improves.")
_RETURNING = "{name}'s connection is better. Their video will come back in a few seconds."
_YOU_RETURNING = "Your connection is better. Video will come back in a few seconds."
_HANG_UP = " You can hang up the phone."

# {name}: who it is about; {at_phone}: " at (•••) •••-0102" or ""; {window}: seconds.
NOTICE_TEXT: dict[tuple[NoticeKind, Audience], str] = {
    (_K.VIDEO_PAUSED, _A.YOU): _YOU_PAUSED,
    (_K.VIDEO_PAUSED, _A.YOU_THERAPIST): _YOU_PAUSED,
    (_K.VIDEO_PAUSED, _A.THERAPIST): _PAUSED,
    (_K.VIDEO_PAUSED, _A.PARTNER): _PAUSED + " You can keep talking.",
    (_K.VIDEO_PAUSED, _A.PARTNER_THERAPIST): "Your therapist's connection is weak, so their "
    "video is paused to keep the sound clear. You can keep talking.",
    (_K.VIDEO_PAUSED, _A.EVERYONE): "The connection is weak right now, so video is paused to "
    "keep the sound clear. It will come back on its own.",
    (_K.VIDEO_RETURNING, _A.YOU): _YOU_RETURNING,
    (_K.VIDEO_RETURNING, _A.YOU_THERAPIST): _YOU_RETURNING,
    (_K.VIDEO_RETURNING, _A.THERAPIST): _RETURNING,
    (_K.VIDEO_RETURNING, _A.PARTNER): _RETURNING,
    (_K.VIDEO_RETURNING, _A.PARTNER_THERAPIST): "Your therapist's connection is better. Their video "
    "will come back in a few seconds.",
    (_K.VIDEO_RETURNING, _A.EVERYONE): "The connection is better. Video will come back in a few seconds.",
    (_K.VIDEO_BACK, _A.YOU): "Your connection is better. Video is back on.",
    (_K.VIDEO_BACK, _A.YOU_THERAPIST): "Your connection is better. Video is back on.",
    (_K.VIDEO_BACK, _A.THERAPIST): "{name}'s video is back on.",
    (_K.VIDEO_BACK, _A.PARTNER): "{name}'s video is back on.",
    (_K.VIDEO_BACK, _A.PARTNER_THERAPIST): "Your therapist's video is back on.",
    (_K.VIDEO_BACK, _A.EVERYONE): "The connection is better. Video is back on.",
    (_K.DROPPED, _A.YOU): "Your connection dropped. We're reconnecting you now; this usually "
    "takes a few seconds. Please keep this page open.",
    (_K.DROPPED, _A.YOU_THERAPIST): "Your connection dropped. Reconnecting now. If it does not "
    "come back, call your clients from the list on this page.",
    (_K.DROPPED, _A.THERAPIST): "{name}'s connection dropped. Reconnecting automatically; if "
    "they are not back within {window} seconds you will be asked to call them.",
    (_K.DROPPED, _A.PARTNER): "{name}'s connection dropped. We're reconnecting them. "
    "Please wait a moment.",
    (_K.DROPPED, _A.PARTNER_THERAPIST): "Your therapist's connection dropped. Please stay on "
    "the line: they will be back shortly, or they will call you.",
    (_K.BACK, _A.YOU): "You're reconnected.",
    (_K.BACK, _A.YOU_THERAPIST): "You're reconnected.",
    (_K.BACK, _A.THERAPIST): "{name} is back.",
    (_K.BACK, _A.PARTNER): "{name} is back.",
    (_K.BACK, _A.PARTNER_THERAPIST): "Your therapist is back.",
    (_K.PHONE, _A.YOU): "We couldn't reconnect your video. Your therapist will call "
    "you{at_phone}. Please keep your phone nearby.",
    (_K.PHONE, _A.YOU_THERAPIST): "Your video couldn't reconnect. Please call your clients "
    "now; their numbers are on this page.",
    (_K.PHONE, _A.THERAPIST): "{name} couldn't reconnect. Please call them now.",
    (_K.PHONE, _A.PARTNER): "{name} will join by phone. Your therapist is calling them.",
    (_K.PHONE, _A.PARTNER_THERAPIST): "Your therapist's video couldn't reconnect. They will "
    "call you{at_phone}. Please keep your phone nearby.",
    (_K.VIDEO_AVAILABLE, _A.YOU): "You're back online. You can return to video whenever "
    "you're ready, or stay on the phone.",
    (_K.VIDEO_AVAILABLE, _A.YOU_THERAPIST): "You're back online. You can return to video.",
    (_K.VIDEO_AVAILABLE, _A.THERAPIST): "{name} is back online. You can bring them back to "
    "video.",
    (_K.RETURNED_TO_VIDEO, _A.YOU): "You're back on video." + _HANG_UP,
    (_K.RETURNED_TO_VIDEO, _A.YOU_THERAPIST): "You're back on video." + _HANG_UP,
    (_K.RETURNED_TO_VIDEO, _A.THERAPIST): "{name} is back on video." + _HANG_UP,
    (_K.RETURNED_TO_VIDEO, _A.PARTNER): "{name} is back on video.",
    (_K.RETURNED_TO_VIDEO, _A.PARTNER_THERAPIST): "Your therapist is back on video." + _HANG_UP,
    (_K.ON_HOLD, _A.PARTNER): "Waiting for {name} to reconnect. Your therapist has paused the "
    "session for a moment.",
    (_K.RESUMED, _A.PARTNER): "Your therapist has resumed the session.",
    (_K.LEFT, _A.THERAPIST): "{name} has left the session.",
    (_K.LEFT, _A.PARTNER): "{name} has left the session.",
    (_K.LEFT, _A.PARTNER_THERAPIST): "Your therapist has left the session.",
}


def notice_text(
    notice: Notice, name: str | None = None, phone_hint: str | None = None,
    window_s: float = 45.0,
) -> str:
    """The sentence for ``notice``'s reader. ``name``: the person it is about (for display
    only); ``phone_hint``: the reader's own masked number, from their fallback plan."""
    fallback_name = "Your partner" if notice.audience == Audience.PARTNER else "Your client"
    return NOTICE_TEXT[(notice.kind, notice.audience)].format(
        name=name or fallback_name,
        at_phone=f" at {phone_hint}" if phone_hint else "",
        window=f"{window_s:g}",
    )


# -- phone numbers --------------------------------------------------------------------------

# Numbers are stored in E.164 (telehealth.phones); these are the forms people see.
mask_phone = phones.mask_phone
tel_href = phones.tel_href


@dataclass(frozen=True, slots=True)
class CallPrompt:
    text: str
    href: str


def call_prompt(name: str, number: str) -> CallPrompt:
    """What the therapist sees for a ``PhonePrompt``: "Call <name> at <number>", the number
    in its international format ("+1 201-555-0102")."""
    return CallPrompt(f"Call {name} at {phones.display_phone(number)}", tel_href(number))


# -- plans ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What one person's page does on its own once it loses the server and its peers. The
    signaling side puts it on the wire (signaling.welcome, as the welcome's FallbackPlan)."""

    rejoin_window_s: float
    # Partners: the masked number the therapist will call, e.g. "(•••) •••-0102".
    phone_hint: str | None = None
    # Therapist: who to call, per partner: {"id": ..., "name": ..., "phone": ...}.
    call_list: list[dict[str, str]] | None = None


def fallback_plan(record: RoomRecord, person: Person, rejoin_window_s: float) -> Plan:
    """``person``'s plan.

    A partner gets the rejoin window and the masked number the therapist will call; the
    therapist gets the call list: every partner's id, name and number ("" when none is on
    file, so the therapist knows to ask for one).
    """
    if person.role == "therapist":
        calls = [{"id": str(p.id), "name": p.name, "phone": phones.display_phone(p.phone) if p.phone else ""}
                 for p in record.partners]
        return Plan(rejoin_window_s=rejoin_window_s, call_list=calls)
    hint = mask_phone(person.phone) if person.phone else None
    return Plan(rejoin_window_s=rejoin_window_s, phone_hint=hint)
