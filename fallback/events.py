"""The fallback flow's vocabulary: the events it takes and the actions it returns.

Events carry person ids and facts; the caller passes ``now`` alongside. Actions say what to
do, to whom, never how: the signaling turns them into messages, the pages carry them out.
"""

from __future__ import annotations

from dataclasses import dataclass

from fallback.ledger import Disruption, Step
from fallback.notices import Notice
from fallback.scoring import RoomQuality
from telehealth.tokens import PersonId, Role

# -- events in ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QualityReport:
    quality: RoomQuality


@dataclass(frozen=True, slots=True)
class Joined:
    person: PersonId
    role: Role


@dataclass(frozen=True, slots=True)
class SignalingLost:
    person: PersonId


@dataclass(frozen=True, slots=True)
class SignalingBack:
    person: PersonId


@dataclass(frozen=True, slots=True)
class RejoinResult:
    person: PersonId
    step: Step
    ok: bool


@dataclass(frozen=True, slots=True)
class SwitchToPhone:
    """The therapist moves a partner to the phone step before the window ends."""

    person: PersonId


@dataclass(frozen=True, slots=True)
class ReturnToVideo:
    person: PersonId


@dataclass(frozen=True, slots=True)
class PutOnHold:
    pass


@dataclass(frozen=True, slots=True)
class Resume:
    pass


@dataclass(frozen=True, slots=True)
class Left:
    person: PersonId


@dataclass(frozen=True, slots=True)
class SessionEnded:
    pass


Event = (QualityReport | Joined | SignalingLost | SignalingBack | RejoinResult | SwitchToPhone
         | ReturnToVideo | PutOnHold | Resume | Left | SessionEnded)


# -- actions out --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LowerVideo:
    """Every link of ``person``: lower resolution and bitrate both ways, keep the frame rate."""

    person: PersonId


@dataclass(frozen=True, slots=True)
class AudioOnly:
    """Every link of ``person`` carries audio only, both ways."""

    person: PersonId


@dataclass(frozen=True, slots=True)
class RestoreVideo:
    person: PersonId


@dataclass(frozen=True, slots=True)
class IceRestart:
    """``person``'s peers restart ICE on their connections with ``person``."""

    person: PersonId


@dataclass(frozen=True, slots=True)
class FreshConnection:
    """New peer connections for every link of ``person`` (signaling ``restart``)."""

    person: PersonId


@dataclass(frozen=True, slots=True)
class PageRejoin:
    """``person``'s page reloads and rejoins with the same link (it also does so on its own)."""

    person: PersonId
    attempt: int


@dataclass(frozen=True, slots=True)
class PhonePrompt:
    """Show ``therapist`` "Call <name> at <number>" for ``callee``, with a tel: link."""

    therapist: PersonId
    callee: PersonId


@dataclass(frozen=True, slots=True)
class Hold:
    """Pause ``person``'s part of the session while waiting for ``waiting_for``."""

    person: PersonId
    waiting_for: PersonId


@dataclass(frozen=True, slots=True)
class Unhold:
    person: PersonId


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A disruption has ended; ``record`` is final."""

    record: Disruption


Action = (LowerVideo | AudioOnly | RestoreVideo | IceRestart | FreshConnection | PageRejoin
          | PhonePrompt | Notice | Hold | Unhold | LedgerEntry)
