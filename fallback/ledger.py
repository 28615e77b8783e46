"""The disruption ledger: every disruption of a session, its steps and their outcomes.

Pure records: person ids, causes, steps and timestamps (the server's monotonic seconds; the
caller maps them to wall-clock time for display). Never names, numbers, media or content:
names are added only for display, by the caller. ``rows`` flattens it for CSV and JSON.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from fallback.scoring import Cause
from telehealth.tokens import PersonId

Cell = str | float | int | None

class Step(str, enum.Enum):
    """What happened during a disruption, in the ledger; the rejoin steps also in events."""

    LOWER_VIDEO = "lower_video"
    AUDIO_ONLY = "audio_only"
    RESTORE_VIDEO = "restore_video"
    DROPPED = "dropped"
    ICE_RESTART = "ice_restart"
    FRESH_CONNECTION = "fresh_connection"
    PAGE_REJOIN = "page_rejoin"
    BACK = "back"
    PHONE = "phone"
    RETURN_TO_VIDEO = "return_to_video"
    HOLD = "hold"
    RESUME = "resume"
    DEVICE = "device"  # a busy or sleeping device was seen; outcome "busy" / "asleep"


class Outcome(str, enum.Enum):
    RECOVERED = "recovered"  # back on full video
    LEFT = "left"
    ENDED_ON_PHONE = "ended_on_phone"
    SESSION_ENDED = "session_ended"


@dataclass(frozen=True, slots=True)
class LedgerStep:
    at: float
    step: Step
    outcome: str | None = None  # "ok" / "failed" for rejoin steps; who decided the phone


@dataclass(frozen=True, slots=True)
class Disruption:
    """One disruption of one person: ids and facts only, never names or content."""

    id: int
    person: PersonId
    cause: Cause
    started_at: float
    ended_at: float | None = None
    outcome: Outcome | None = None
    steps: tuple[LedgerStep, ...] = ()


class DisruptionLedger:
    """Every disruption of a session, in order. ``rows`` flattens it for CSV and JSON export."""

    def __init__(self) -> None:
        self._entries: list[Disruption] = []

    @property
    def entries(self) -> tuple[Disruption, ...]:
        return tuple(self._entries)

    def open(self, person: PersonId, cause: Cause, at: float) -> int:
        self._entries.append(Disruption(len(self._entries), person, cause, at))
        return len(self._entries) - 1

    def step(self, entry: int, at: float, step: Step, outcome: str | None = None) -> None:
        d = self._entries[entry]
        self._entries[entry] = replace(d, steps=d.steps + (LedgerStep(at, step, outcome),))

    def settle(self, entry: int, step: Step, outcome: str) -> None:
        """Record the outcome of the latest ``step`` that has none yet."""
        d = self._entries[entry]
        for i in range(len(d.steps) - 1, -1, -1):
            if d.steps[i].step == step and d.steps[i].outcome is None:
                steps = d.steps[:i] + (replace(d.steps[i], outcome=outcome),) + d.steps[i + 1:]
                self._entries[entry] = replace(d, steps=steps)
                return

    def close(self, entry: int, at: float, outcome: Outcome) -> Disruption:
        self._entries[entry] = replace(self._entries[entry], ended_at=at, outcome=outcome)
        return self._entries[entry]

    def snapshot(self) -> list[dict[str, object]]:
        """Every entry as plain JSON-ready data, for ``restore`` after a server restart."""
        return [{"id": d.id, "person": d.person, "cause": d.cause.value, "started_at": d.started_at,
                 "ended_at": d.ended_at, "outcome": d.outcome.value if d.outcome else None,
                 "steps": [[s.at, s.step.value, s.outcome] for s in d.steps]} for d in self._entries]

    @classmethod
    def restore(cls, entries: list[dict[str, Any]]) -> DisruptionLedger:
        ledger = cls()
        ledger._entries = [
            Disruption(int(e["id"]), PersonId(e["person"]), Cause(e["cause"]), float(e["started_at"]),
                       e["ended_at"], Outcome(e["outcome"]) if e["outcome"] else None,
                       tuple(LedgerStep(float(at), Step(step), outcome) for at, step, outcome in e["steps"]))
            for e in entries
        ]
        return ledger

    def rows(self) -> list[dict[str, Cell]]:
        """One row per step (a disruption without steps gets one row), ids only."""
        rows: list[dict[str, Cell]] = []
        for d in self._entries:
            head: dict[str, Cell] = {"disruption": d.id, "person": d.person, "cause": d.cause.value,
                    "started_at": d.started_at, "ended_at": d.ended_at,
                    "outcome": d.outcome.value if d.outcome else None}
            for s in d.steps or (None,):
                rows.append(head | {"step": s.step.value if s else None,
                                    "step_at": s.at if s else None,
                                    "step_outcome": s.outcome if s else None})
        return rows
