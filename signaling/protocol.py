"""The signaling protocol, version 1: every message type defined once.

JSON text frames over one WebSocket per participant. Each message is an object with a
``type`` tag. ``ClientMessage`` is what a participant may send, ``ServerMessage`` what the
server sends. ``parse_client`` is the single place where input is decoded and validated;
it raises ProtocolError with a stable code. docs/protocol.md documents each message.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

from telehealth.errors import ErrorCode, ProtocolError, TelehealthError

VERSION = 1

PeerState = Literal["waiting", "in_call", "reconnecting"]
Presence = Literal["reconnecting", "back", "left"]
MediaKind = Literal["audio", "video"]

# Ids are opaque and short; anything longer is not an id of ours.
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class CloseReason(str, enum.Enum):
    """Why the server closes a socket; sent in ``bye`` and as the close code."""

    ROOM_ENDED = "room_ended"
    REMOVED = "removed"
    REPLACED = "replaced"
    LEFT = "left"
    LINK_REFUSED = "link_refused"
    TOO_SLOW = "too_slow"
    TOO_FAST = "too_fast"
    PROTOCOL = "protocol"
    SHUTDOWN = "shutdown"
    INTERNAL = "internal"
    LINK_REVOKED = "link_revoked"


class RecoveryAction(str, enum.Enum):
    """What the client should do after ``bye``."""

    NONE = "none"  # the session is over for you; show the goodbye
    RESUME = "resume"  # reconnect the socket with the same link (server restart)
    REJOIN = "rejoin"  # reopen the link from the start


CLOSE_CODES: dict[CloseReason, int] = {
    CloseReason.ROOM_ENDED: 4001,
    CloseReason.REMOVED: 4002,
    CloseReason.REPLACED: 4003,
    CloseReason.LEFT: 4004,
    CloseReason.LINK_REFUSED: 4005,
    CloseReason.TOO_SLOW: 4006,
    CloseReason.TOO_FAST: 4009,
    CloseReason.PROTOCOL: 4007,
    CloseReason.SHUTDOWN: 4008,
    CloseReason.INTERNAL: 4011,
    CloseReason.LINK_REVOKED: 4012,
}


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=False, omit_defaults=True):
    pass


# -- shared parts -------------------------------------------------------------------------


class Description(msgspec.Struct):
    type: Literal["offer", "answer"]
    sdp: str


class IceCandidate(msgspec.Struct, omit_defaults=True):
    candidate: str
    sdpMid: str | None = None
    sdpMLineIndex: int | None = None
    usernameFragment: str | None = None


# Bounds for measured values: anything outside is not a measurement but bad input, and
# must not reach the scorer's arithmetic.
Millis = Annotated[float, msgspec.Meta(ge=0, le=600_000)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1e11)]


class LinkStats(msgspec.Struct, omit_defaults=True):
    """One participant's view of its link to one peer, sampled every 250–500 ms.

    Counters are cumulative since the peer connection started; rates are over the last
    interval. Units: milliseconds, fractions 0..1, bits per second.
    """

    peer: Ref
    pc: Ref | None = None
    rtt_ms: Millis | None = None
    jitter_ms: Millis | None = None
    loss: Fraction | None = None
    packets_in: Count | None = None
    bytes_in: Count | None = None
    frames_decoded: Count | None = None
    frames_dropped: Count | None = None
    fps: Annotated[float, msgspec.Meta(ge=0, le=1000)] | None = None
    concealed: Fraction | None = None
    out_bitrate: Rate | None = None
    in_bitrate: Rate | None = None
    candidate: Literal["host", "srflx", "prflx", "relay"] | None = None
    video: bool = True
    # The reporter's own video to this peer: what holds its encoder back (outbound-rtp
    # qualityLimitationReason), the frame rate it sends, the bitrate cap its flow step set.
    send_limit: Literal["none", "cpu", "bandwidth", "other"] | None = None
    send_fps: Annotated[float, msgspec.Meta(ge=0, le=1000)] | None = None
    send_cap: Rate | None = None
    # How late the reporter's page runs its timers (a busy or throttled page).
    lag_ms: Millis | None = None
    # How long the reporter's encoder took per video frame to this peer (a starved computer).
    encode_ms: Millis | None = None


class IceServer(msgspec.Struct, omit_defaults=True):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Me(msgspec.Struct):
    id: str
    role: Literal["therapist", "partner"]
    name: str


class PeerInfo(msgspec.Struct):
    id: str
    role: Literal["therapist", "partner"]
    name: str
    state: PeerState
    # True: you make the offers on this pair (and are the impolite side).
    offer: bool


class CheckInAnswers(msgspec.Struct, omit_defaults=True):
    """A partner's answers to the checklist before the session (unticked: False)."""

    private_space: bool = False
    headphones: bool = False
    charged: bool = False
    not_driving: bool = False
    # "I'm in a car that is moving": the partner is told to park first; the therapist sees it.
    moving_car: bool = False


# Whether a partner confirmed the number the therapist would call, or gave another one.
PhoneCheck = Literal["confirmed", "corrected"]


class WaitingPerson(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    checkin: CheckInAnswers | None = None
    phone: PhoneCheck | None = None


class RoomInfo(msgspec.Struct):
    id: str
    locked: bool


class FallbackPlan(msgspec.Struct, omit_defaults=True):
    """What a participant's page does on its own if it loses the server and its peers."""

    rejoin_window_s: float
    # Partners: the masked number the therapist will call, e.g. "(•••) •••-0102".
    phone_hint: str | None = None
    # Therapist: who to call, per partner id: {"name": ..., "phone": ...}.
    call_list: list[dict[str, str]] | None = None


# -- client to server ---------------------------------------------------------------------


class Join(_Msg, tag="join"):
    token: Token
    v: int = VERSION


class ClientSdp(_Msg, tag="sdp"):
    to: Ref
    pc: Ref
    description: Description


class ClientCandidate(_Msg, tag="candidate"):
    to: Ref
    pc: Ref
    candidate: IceCandidate | None = None


class ClientRestart(_Msg, tag="restart"):
    """Ask the offerer of a pair for a fresh peer connection (yours is gone or failed)."""

    to: Ref
    pc: Ref | None = None


class Ping(_Msg, tag="ping"):
    t: float | None = None


class Leave(_Msg, tag="leave"):
    # Sent from the page's `pagehide`: the page is closing or navigating away, and may be
    # reloading. The others are told "left" unless the same link is back within moments.
    closing: bool = False


class MediaState(_Msg, tag="media"):
    audio: bool
    video: bool


class Stats(_Msg, tag="stats"):
    links: Annotated[list[LinkStats], msgspec.Meta(max_length=8)]


class Admit(_Msg, tag="admit"):
    participant: Ref


class Remove(_Msg, tag="remove"):
    participant: Ref


class Mute(_Msg, tag="mute"):
    participant: Ref
    kind: MediaKind = "audio"


class Lock(_Msg, tag="lock"):
    locked: bool


class End(_Msg, tag="end"):
    pass


class SwitchToPhone(_Msg, tag="switch_to_phone"):
    """The therapist moves a partner to the phone step now, before the rejoin window ends."""

    participant: Ref


class ReturnToVideo(_Msg, tag="return_to_video"):
    """Back from the phone step to video; the therapist names the partner, a partner omits it."""

    participant: Ref | None = None


class Hold(_Msg, tag="hold"):
    pass


class Resume(_Msg, tag="resume"):
    pass


RejoinStep = Literal["ice_restart", "fresh_connection", "page_rejoin"]


class RejoinResult(_Msg, tag="rejoin_result"):
    """How a rejoin step the server asked for went, from the page that tried it."""

    step: RejoinStep
    ok: bool


class GetLedger(_Msg, tag="get_ledger"):
    pass


class CheckIn(_Msg, tag="check_in"):
    """Partner only: the checklist's answers, sent on joining and on every change; the
    therapist sees them in the lobby next to Admit."""

    answers: CheckInAnswers


PhoneText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class ConfirmPhone(_Msg, tag="confirm_phone"):
    """Partner only: without ``phone``, "that is my number"; with it, the number to call
    instead (refused with ``invalid_phone`` unless it is a real number)."""

    phone: PhoneText | None = None


ClientMessage = (
    Join | ClientSdp | ClientCandidate | ClientRestart | Ping | Leave | MediaState | Stats |
    Admit | Remove | Mute | Lock | End | SwitchToPhone | ReturnToVideo | Hold | Resume |
    RejoinResult | GetLedger | CheckIn | ConfirmPhone
)
CLIENT_TYPES = frozenset(
    t.__struct_config__.tag for t in ClientMessage.__args__  # type: ignore[attr-defined]
)


# -- server to client ---------------------------------------------------------------------


class Welcome(_Msg, tag="welcome"):
    v: int
    you: Me
    room: RoomInfo
    peers: list[PeerInfo]
    resumed: bool
    ice_servers: list[IceServer]
    grace_s: float
    fallback: FallbackPlan | None = None
    # "relay": connect only through TURN, so no participant learns another's IP address.
    ice_transport_policy: Literal["all", "relay"] = "all"


class Waiting(_Msg, tag="waiting"):
    you: Me
    resumed: bool = False


class Lobby(_Msg, tag="lobby"):
    waiting: list[WaitingPerson]


class PeerJoined(_Msg, tag="peer_joined"):
    peer: PeerInfo


class PresenceChanged(_Msg, tag="presence"):
    peer: str
    state: Presence


class ServerSdp(_Msg, tag="sdp"):
    from_: str = msgspec.field(name="from")
    pc: str = ""
    description: Description | None = None


class ServerCandidate(_Msg, tag="candidate"):
    from_: str = msgspec.field(name="from")
    pc: str = ""
    candidate: IceCandidate | None = None


class ServerRestart(_Msg, tag="restart"):
    from_: str = msgspec.field(name="from")
    pc: str | None = None


class Pong(_Msg, tag="pong"):
    t: float | None = None
    server_time: float = 0.0


class PeerMedia(_Msg, tag="peer_media"):
    peer: str
    audio: bool
    video: bool


class MuteRequest(_Msg, tag="mute_request"):
    kind: MediaKind


class RoomChanged(_Msg, tag="room"):
    room: RoomInfo


class Error(_Msg, tag="error"):
    code: ErrorCode
    message: str
    ref: str | None = None


class Bye(_Msg, tag="bye"):
    reason: CloseReason
    action: RecoveryAction
    message: str = ""


QualityLevel = Literal["good", "fair", "poor", "lost"]


class LinkQuality(msgspec.Struct, omit_defaults=True):
    """The monitor's verdict on one pair, from ``a``'s and ``b``'s reports."""

    a: str
    b: str
    level: QualityLevel
    mos: float | None = None
    relay: bool = False


DeviceState = Literal["busy", "asleep"]


class Quality(_Msg, tag="quality"):
    """Everyone's connection quality, sent when a level changes. ``weak`` names the person
    whose own network is the cause, when the monitor can tell."""

    links: list[LinkQuality]
    people: dict[str, QualityLevel]
    weak: str | None = None
    # People whose own device, not their network, slows the call: "busy" or "asleep".
    devices: dict[str, DeviceState] = {}


FallbackStep = Literal[
    "lower_video", "audio_only", "restore_video", "ice_restart", "fresh_connection",
    "page_rejoin", "hold", "unhold", "phone",
]


class FallbackAction(_Msg, tag="fallback"):
    """A step of the fallback flow for ``person``; each page applies it to its links."""

    action: FallbackStep
    person: str
    attempt: int | None = None
    waiting_for: str | None = None


class Notice(_Msg, tag="notice"):
    """A plain-words message for this reader about ``about`` (or about nobody)."""

    kind: str
    text: str
    about: str | None = None


class CallPrompt(_Msg, tag="call_prompt"):
    """Therapist only: call this partner now."""

    callee: str
    name: str
    phone: str | None
    href: str | None
    text: str


class LedgerRow(msgspec.Struct, omit_defaults=True):
    disruption: int
    person: str
    cause: str
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None
    step: str | None = None
    step_at: float | None = None
    step_outcome: str | None = None


class Ledger(_Msg, tag="ledger"):
    """Therapist only: the session's disruptions, one row per step (ids, no names)."""

    rows: list[LedgerRow]


class PlanChanged(_Msg, tag="plan"):
    """Your fallback plan changed (a partner corrected their number): the partner's new masked
    number, the therapist's new call list."""

    fallback: FallbackPlan


ServerMessage = (
    Welcome | Waiting | Lobby | PeerJoined | PresenceChanged | ServerSdp | ServerCandidate |
    ServerRestart | Pong | PeerMedia | MuteRequest | RoomChanged | Error | Bye | Quality |
    FallbackAction | Notice | CallPrompt | Ledger | PlanChanged
)


# -- codec --------------------------------------------------------------------------------

_decoder = msgspec.json.Decoder(ClientMessage)
_encoder = msgspec.json.Encoder()
_peek = msgspec.json.Decoder(dict)


def parse_client(data: bytes | str, max_bytes: int) -> ClientMessage:
    """Decode and validate one client message, or raise ProtocolError with a stable code."""
    if len(data) > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"Messages are limited to {max_bytes} bytes.")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(data, exc) from None
    except msgspec.DecodeError:
        raise ProtocolError(ErrorCode.BAD_JSON) from None


def _classify(data: bytes | str, exc: msgspec.ValidationError) -> ProtocolError:
    # Slow path, only for bad input: tell an unknown type from a bad field.
    try:
        obj = _peek.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return ProtocolError(ErrorCode.INVALID_MESSAGE, "A message must be a JSON object.")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        return ProtocolError(ErrorCode.UNKNOWN_TYPE, f"Unknown message type {str(kind)[:32]!r}.")
    return ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc))


def encode(msg: object) -> bytes:
    """JSON for a message, or any protocol part (rows of a ledger) to store or export."""
    return _encoder.encode(msg)


def error_message(exc: Exception, ref: str | None = None) -> Error:
    if isinstance(exc, TelehealthError):
        return Error(code=exc.code, message=exc.detail, ref=ref)
    return Error(code=ErrorCode.INTERNAL, message="Something went wrong on the server.", ref=ref)
