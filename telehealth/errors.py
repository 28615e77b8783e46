"""The few error classes of telehealth and their stable codes.

- ``ProtocolError``: the peer broke the protocol; reply with the code and keep going,
  or close when ``close`` is set (a connection that cannot continue).
- ``UserError``: a request that is well formed but refused (a forged link, a full room);
  reply and keep going.
- ``StateError``: a refused state transition (ending an ended room).

Every code is documented in docs/protocol.md; clients switch on the code, never the text.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"
    TOO_LARGE = "too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    NOT_JOINED = "not_joined"
    ALREADY_JOINED = "already_joined"
    BAD_LINK = "bad_link"
    LINK_EXPIRED = "link_expired"
    LINK_REVOKED = "link_revoked"
    # An appointment's link opened before its window (TELEHEALTH_LINK_LEAD_SECONDS before
    # the start), or after the session and its overrun.
    TOO_EARLY = "too_early"
    SESSION_OVER = "session_over"
    INVALID_PHONE = "invalid_phone"
    ROOM_ENDED = "room_ended"
    ROOM_FULL = "room_full"
    ROOM_LOCKED = "room_locked"
    FORBIDDEN = "forbidden"
    UNKNOWN_TARGET = "unknown_target"
    NOT_WAITING = "not_waiting"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


# Human sentences for codes a person may see; pages and clients may localise them.
MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.BAD_JSON: "The message was not valid JSON.",
    ErrorCode.UNKNOWN_TYPE: "Unknown message type.",
    ErrorCode.INVALID_MESSAGE: "The message is missing a field or has a wrong value.",
    ErrorCode.TOO_LARGE: "The message is too large.",
    ErrorCode.UNSUPPORTED_VERSION: "This protocol version is not supported.",
    ErrorCode.NOT_JOINED: "Join the room first.",
    ErrorCode.ALREADY_JOINED: "This connection has already joined.",
    ErrorCode.BAD_LINK: "This link is not valid. Please check you copied the whole link, "
    "or ask your therapist for a new one.",
    ErrorCode.LINK_EXPIRED: "This link has expired. Please ask your therapist for a new one.",
    ErrorCode.LINK_REVOKED: "This link no longer works. Please ask your therapist for a new one.",
    ErrorCode.TOO_EARLY: "It is too early to join this session. Please come back shortly before it starts.",
    ErrorCode.SESSION_OVER: "This session has ended. If you missed it or need another time, "
    "please contact your therapist to arrange a new session.",
    ErrorCode.INVALID_PHONE: "That is not a phone number we can call. Please write it with its "
    "area code or country code.",
    ErrorCode.ROOM_ENDED: "This session has ended.",
    ErrorCode.ROOM_FULL: "This session already has everyone it expects.",
    ErrorCode.ROOM_LOCKED: "The therapist has locked this session.",
    ErrorCode.FORBIDDEN: "Your role cannot do that.",
    ErrorCode.UNKNOWN_TARGET: "That person is not in your session.",
    ErrorCode.NOT_WAITING: "That person is not waiting to be let in.",
    ErrorCode.RATE_LIMITED: "Too many attempts. Please wait a minute and try again.",
    ErrorCode.INTERNAL: "Something went wrong on the server.",
}


class TelehealthError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, code: ErrorCode | None = None, detail: str | None = None) -> None:
        if code is not None:
            self.code = code
        self.detail = detail or MESSAGES.get(self.code, self.code.value)
        super().__init__(f"{self.code.value}: {self.detail}")


class ProtocolError(TelehealthError):
    """Malformed input. ``close`` asks the endpoint to close the socket after replying."""

    def __init__(self, code: ErrorCode, detail: str | None = None, *, close: bool = False) -> None:
        super().__init__(code, detail)
        self.close = close


class UserError(TelehealthError):
    """A well-formed request that is refused."""


class StateError(TelehealthError):
    """A transition the current state does not allow."""


class LinkError(UserError):
    """A join link that is forged, expired or revoked, or whose room has ended."""
