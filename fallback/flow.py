"""The fallback flow: what a session does when someone's connection weakens or drops.

Pure: no I/O; every call takes ``now`` (monotonic seconds) and returns typed actions for the
caller to carry out (fallback/events.py defines both). Person ids only, never names:
``notice_text`` and ``call_prompt`` add names and numbers for display. docs/fallback.md is
the contract for every step and timing.

One participant's states (``PersonState``)::

    connected --level fair/poor--> degraded --good for the restore wait--> connected
      degraded: lower video after lower_video_after_s, audio only after audio_only_after_s poor;
      back up a step at a time: audio only --fair or good for the probe wait--> lowered
      --good for the restore wait--> full; a probe poor for lower_video_after_s: audio only
      again, and the next probe waits twice as long
    connected|degraded --level lost--> reconnecting
      reconnecting: ICE restart at once, fresh connection, then page rejoins with backoff
    reconnecting --media back--> connected|degraded
    reconnecting --rejoin window ends, or the therapist switches a partner--> phone
    phone --return to video (therapist or the person, once back online)--> connected|degraded
    any --left--> left --joined--> connected

Room-wide: while one partner is reconnecting or on the phone, the therapist can hold the
session for the other partner; the hold ends on resume or when the missing partner is back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from fallback.events import (
    Action,
    AudioOnly,
    Event,
    FreshConnection,
    Hold,
    IceRestart,
    Joined,
    LedgerEntry,
    Left,
    LowerVideo,
    PageRejoin,
    PhonePrompt,
    PutOnHold,
    QualityReport,
    RejoinResult,
    RestoreVideo,
    Resume,
    ReturnToVideo,
    SessionEnded,
    SignalingBack,
    SignalingLost,
    SwitchToPhone,
    Unhold,
)
from fallback.ledger import DisruptionLedger, Outcome, Step
from fallback.notices import Audience, Notice, NoticeKind
from fallback.scoring import Cause, Device, Quality, RoomQuality
from telehealth.errors import ErrorCode, StateError
from telehealth.tokens import PersonId, Role


@dataclass(frozen=True, slots=True)
class FallbackTimings:
    """Every timing of the flow, in seconds; docs/fallback.md explains each default."""

    # Lost for this long without coming back: the phone step.
    rejoin_window_s: float = 45.0
    # Fair or poor for this long: lower the video (resolution and bitrate, not frame rate).
    lower_video_after_s: float = 4.0
    # Poor for this long: audio only, with a notice to everyone.
    audio_only_after_s: float = 8.0
    # Good for this long: video back. Doubles for each flap, up to restore_wait_max_s.
    restore_video_after_s: float = 10.0
    restore_wait_max_s: float = 120.0
    # Audio only and fair or good for this long: probe with lowered video. Doubles after each
    # probe that fails, up to probe_wait_max_s, flapping or not. Short: the scorer has already
    # held the better level upgrade_hold_s before the link leaves poor.
    probe_video_after_s: float = 2.0
    probe_wait_max_s: float = 4.0
    # A new disruption this soon after the last one ended is a flap.
    flap_window_s: float = 60.0
    # Rejoin ladder, from the moment the loss is seen: ICE restart at once, then these.
    fresh_connection_after_s: float = 4.0
    page_rejoin_after_s: float = 10.0
    # Page rejoins repeat after this, doubling up to page_rejoin_retry_max_s.
    page_rejoin_retry_s: float = 5.0
    page_rejoin_retry_max_s: float = 20.0


class PersonState(str, enum.Enum):
    CONNECTED = "connected"
    DEGRADED = "degraded"
    RECONNECTING = "reconnecting"
    PHONE = "phone"
    LEFT = "left"


class VideoMode(str, enum.Enum):
    FULL = "full"
    LOWERED = "lowered"
    AUDIO_ONLY = "audio_only"


# -- the machine --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersonStatus:
    state: PersonState
    video: VideoMode
    # Phone step: back online, so return to video is possible.
    back_online: bool
    # Held: the partner this person is waiting for.
    held_for: PersonId | None


@dataclass(slots=True)
class _Person:
    id: PersonId
    role: Role
    state: PersonState = PersonState.CONNECTED
    video: VideoMode = VideoMode.FULL
    cause: Cause = Cause.UNKNOWN
    degraded_since: float | None = None
    # The poor spell: since when, and whether the level is poor now. A spell ends once the
    # level has been above poor for lower_video_after_s (or good): a blip of fair between
    # poor seconds does not start the count again.
    poor_since: float | None = None
    poor: bool = False
    good_since: float | None = None
    # Since when the level has been above poor: the probe out of audio only counts from it.
    better_since: float | None = None
    # Poor, but the link already reads better: no pause is judged on the hold's lag.
    rising: bool = False
    lost_since: float = 0.0
    step: Step | None = None
    attempt: int = 0
    next_step_at: float = 0.0
    retry_s: float = 0.0
    back_online: bool = False
    disruption: int | None = None
    last_ended_at: float | None = None
    flaps: int = 0
    # Lowered video as a probe out of audio only, and how many probes failed so far.
    probing: bool = False
    probes: int = 0
    # Audio only, good again, and told so ("video will come back in a few seconds").
    told_returning: bool = False
    # What the monitor says of this person's device, and its open ledger entry.
    device: str | None = None
    device_entry: int | None = None


_NEXT_STEP = {Step.ICE_RESTART: Step.FRESH_CONNECTION, Step.FRESH_CONNECTION: Step.PAGE_REJOIN,
              Step.PAGE_REJOIN: Step.PAGE_REJOIN}
_ON_VIDEO = (PersonState.CONNECTED, PersonState.DEGRADED)
_GONE = (PersonState.RECONNECTING, PersonState.PHONE)
_SETTLED = (PersonState.CONNECTED, PersonState.LEFT)


class _Out:
    """Collects actions in order, once each: a room-wide notice is sent once, not per cause."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    def add(self, action: Action) -> None:
        if action not in self.actions:
            self.actions.append(action)


class FallbackFlow:
    """The fallback flow of one session: every participant's state, holds and the ledger.

    ``handle(event, now)`` and ``tick(now)`` return the actions to carry out, in order.
    Therapist-only events (``SwitchToPhone``, ``PutOnHold``, ``Resume``) are checked by the
    caller; a refused transition raises ``StateError``.
    """

    def __init__(self, timings: FallbackTimings | None = None) -> None:
        self.timings = timings or FallbackTimings()
        self.ledger = DisruptionLedger()
        self._people: dict[PersonId, _Person] = {}
        self._held: dict[PersonId, PersonId] = {}  # held partner -> the partner awaited
        # Ledger entries of a server restart still open, per person: closed as each is back.
        self._restart: dict[PersonId, int] = {}
        self._settled = True

    def status(self, person: PersonId) -> PersonStatus:
        p = self._person(person)
        return PersonStatus(p.state, p.video, p.back_online, self._held.get(person))

    def settled(self) -> bool:
        """Nobody is degraded, reconnecting or on the phone, and nobody is held: no timer
        runs, and the same quality report again would change nothing. The server then
        only needs to run the flow when the quality changes or an event comes."""
        return self._settled

    def tick(self, now: float) -> list[Action]:
        out = _Out()
        self._timers(now, out)
        self._settle()
        return out.actions

    def _settle(self) -> None:
        # Worked out once per event rather than per question: the server asks every tick.
        self._settled = not self._held and all(p.state in _SETTLED for p in self._people.values())

    def handle(self, event: Event, now: float) -> list[Action]:
        out = _Out()
        match event:
            case QualityReport(quality):
                self._observe(quality, now, out)
            case Joined(person, role):
                known = self._people.get(person)
                if known is None or known.state == PersonState.LEFT:
                    self._people[person] = _Person(person, role)
            case SignalingLost(person):
                self._person(person).back_online = False
            case SignalingBack(person):
                p = self._person(person)
                self._restart_over(p, now, Outcome.RECOVERED, out)
                if p.state == PersonState.PHONE:
                    self._online_again(p, out)
            case RejoinResult(person, step, ok):
                self._rejoin_result(self._person(person), step, ok, now, out)
            case SwitchToPhone(person):
                self._switch_to_phone(self._person(person), now, out)
            case ReturnToVideo(person):
                self._return_to_video(self._person(person), now, out)
            case PutOnHold():
                self._hold(now, out)
            case Resume():
                for held, awaited in list(self._held.items()):
                    self._release(held, awaited, now, out)
            case Left(person):
                self._left(self._person(person), now, out)
            case SessionEnded():
                for p in self._people.values():
                    on_phone = p.state == PersonState.PHONE
                    outcome = Outcome.ENDED_ON_PHONE if on_phone else Outcome.SESSION_ENDED
                    self._end_disruption(p, now, outcome, out)
                    self._restart_over(p, now, Outcome.SESSION_ENDED, out)
                    self._device_over(p, now, Outcome.SESSION_ENDED, out)
        self._timers(now, out)
        self._settle()
        return out.actions

    # -- quality --------------------------------------------------------------------------

    def _observe(self, quality: RoomQuality, now: float, out: _Out) -> None:
        for p in self._people.values():
            device = quality.devices.get(p.id) if p.state != PersonState.LEFT else None
            if (device.value if device else None) != p.device:
                self._device(p, device, now, out)
            level = quality.participants.get(p.id)
            if level is None:
                continue  # nothing known yet (a connection still being made)
            p.rising = p.id in quality.rising
            if p.state in _ON_VIDEO:
                if level == Quality.LOST:
                    self._drop(p, quality.cause_for(p.id), now, out)
                else:
                    self._grade(p, level, quality.cause_for(p.id), now, out)
            elif p.state == PersonState.RECONNECTING and level != Quality.LOST:
                self._back(p, level, now, out)
            elif p.state == PersonState.PHONE and level != Quality.LOST:
                self._online_again(p, out)

    def _device(self, p: _Person, device: Device | None, now: float, out: _Out) -> None:
        """A busy or sleeping device is its own ledger entry, apart from the person's network
        disruptions: it never starts the rejoin ladder, lowers video or counts as a flap."""
        self._device_over(p, now, Outcome.RECOVERED, out)
        p.device = device.value if device else None
        if device is not None:
            cause = Cause.DEVICE_BUSY if device == Device.BUSY else Cause.DEVICE_ASLEEP
            p.device_entry = self.ledger.open(p.id, cause, now)
            self.ledger.step(p.device_entry, now, Step.DEVICE, device.value)

    def _device_over(self, p: _Person, now: float, outcome: Outcome, out: _Out) -> None:
        if p.device_entry is not None:
            out.add(LedgerEntry(self.ledger.close(p.device_entry, now, outcome)))
        p.device_entry = p.device = None

    def _grade(self, p: _Person, level: Quality, cause: Cause, now: float, out: _Out) -> None:
        named = p.cause == Cause.OWN_NETWORK
        p.poor = level == Quality.POOR
        if not p.poor:
            if p.better_since is None:
                p.better_since = now
        else:
            p.better_since = None
        if level == Quality.GOOD:
            p.degraded_since = p.poor_since = None
            if p.good_since is None:
                p.good_since = now
            if p.video == VideoMode.FULL:
                self._recovered(p, now, out)
            elif p.video == VideoMode.AUDIO_ONLY and not p.told_returning:
                # The connection is good while the video waits to come back: "weak" would
                # no longer be true.
                p.told_returning = True
                self._tell(NoticeKind.VIDEO_RETURNING, p, out, named=named)
            return
        if p.told_returning:
            # Weak again before the video came back: say so again.
            p.told_returning = False
            self._tell(NoticeKind.VIDEO_PAUSED, p, out, named=named)
        p.state, p.cause, p.good_since = PersonState.DEGRADED, cause, None
        if p.degraded_since is None:
            p.degraded_since = now
        if p.poor:
            if p.poor_since is None:
                p.poor_since = now
        elif (p.better_since is not None
              and now - p.better_since >= self.timings.lower_video_after_s):
            p.poor_since = None

    def _timers(self, now: float, out: _Out) -> None:
        t = self.timings
        for p in list(self._people.values()):
            if p.state == PersonState.DEGRADED:
                if (p.degraded_since is not None and p.video == VideoMode.FULL
                        and now - p.degraded_since >= t.lower_video_after_s):
                    self._begin(p, p.degraded_since)
                    p.video = VideoMode.LOWERED
                    self._step(p, now, Step.LOWER_VIDEO)
                    out.add(LowerVideo(p.id))
                # A probe that does not hold goes back at once; otherwise poor waits longer.
                # Neither while the link already reads better: the level lags a link that has
                # just cleared by the scorer's hold, and a pause then came on a clean link.
                poor_for = t.lower_video_after_s if p.probing else t.audio_only_after_s
                if (p.poor and p.poor_since is not None and p.video != VideoMode.AUDIO_ONLY
                        and not p.rising and now - p.poor_since >= poor_for):
                    if p.probing:
                        p.probes += 1
                    self._audio_only(p, now, out)
                if p.video == VideoMode.AUDIO_ONLY:
                    # Fair is enough to try: the probe is lowered video, judged against its
                    # own cap, and back to audio at once if the link cannot carry it. Waiting
                    # for good as well added two holds: 12-13 s to video after a narrow spell.
                    if (p.better_since is not None and not p.poor
                            and now - p.better_since >= self._probe_wait(p)):
                        self._probe(p, now, out)
                    continue
                if p.good_since is None:
                    continue
                if now - p.good_since >= self._restore_wait(p):
                    self._restore(p, now, out)
            elif p.state == PersonState.RECONNECTING:
                if now - p.lost_since >= t.rejoin_window_s:
                    self._to_phone(p, now, "window", out)
                elif now >= p.next_step_at and p.step is not None:
                    self._rejoin_step(p, _NEXT_STEP[p.step], now, out)

    def _restore_wait(self, p: _Person) -> float:
        wait = self.timings.restore_video_after_s * 2 ** p.flaps
        return min(wait, self.timings.restore_wait_max_s)

    def _probe_wait(self, p: _Person) -> float:
        # Not the flap's longer wait: a probe is lowered video that goes back within
        # lower_video_after_s if the link cannot carry it, so it never blinks full video on
        # and off, and a clean link shows a picture again within seconds (the flap's wait
        # holds full video back instead).
        wait = self.timings.probe_video_after_s * 2 ** p.probes
        return min(wait, self.timings.probe_wait_max_s)

    def _probe(self, p: _Person, now: float, out: _Out) -> None:
        """Out of audio only, one step up: lowered video, judged against what it carries."""
        p.video, p.probing, p.good_since, p.told_returning = VideoMode.LOWERED, True, now, False
        p.poor_since = None  # judged on what the probe carries, not on the spell before it
        self._step(p, now, Step.LOWER_VIDEO)
        out.add(LowerVideo(p.id))
        self._tell(NoticeKind.VIDEO_BACK, p, out, named=p.cause == Cause.OWN_NETWORK)

    def _audio_only(self, p: _Person, now: float, out: _Out) -> None:
        self._begin(p, now)
        p.video, p.probing = VideoMode.AUDIO_ONLY, False
        self._step(p, now, Step.AUDIO_ONLY)
        out.add(AudioOnly(p.id))
        self._tell(NoticeKind.VIDEO_PAUSED, p, out, named=p.cause == Cause.OWN_NETWORK)

    def _restore(self, p: _Person, now: float, out: _Out) -> None:
        was_paused = p.video == VideoMode.AUDIO_ONLY
        p.video, p.probing, p.probes, p.told_returning = VideoMode.FULL, False, 0, False
        self._step(p, now, Step.RESTORE_VIDEO)
        out.add(RestoreVideo(p.id))
        if was_paused:
            self._tell(NoticeKind.VIDEO_BACK, p, out, named=p.cause == Cause.OWN_NETWORK)
        self._recovered(p, now, out)

    def _recovered(self, p: _Person, now: float, out: _Out) -> None:
        p.state = PersonState.CONNECTED
        p.degraded_since = p.poor_since = None
        self._end_disruption(p, now, Outcome.RECOVERED, out)

    # -- loss and the rejoin ladder -------------------------------------------------------

    def _drop(self, p: _Person, cause: Cause, now: float, out: _Out) -> None:
        if p.probing:
            p.probes, p.probing = p.probes + 1, False
        p.state, p.cause, p.lost_since = PersonState.RECONNECTING, cause, now
        p.degraded_since = p.poor_since = p.good_since = p.better_since = None
        p.attempt = 0
        self._begin(p, now)
        self._step(p, now, Step.DROPPED)
        self._tell(NoticeKind.DROPPED, p, out)
        self._rejoin_step(p, Step.ICE_RESTART, now, out)

    def _rejoin_step(self, p: _Person, step: Step, now: float, out: _Out) -> None:
        t = self.timings
        p.step = step
        self._step(p, now, step)
        if step == Step.ICE_RESTART:
            out.add(IceRestart(p.id))
            p.next_step_at = p.lost_since + t.fresh_connection_after_s
        elif step == Step.FRESH_CONNECTION:
            out.add(FreshConnection(p.id))
            p.next_step_at = p.lost_since + t.page_rejoin_after_s
        else:
            p.attempt += 1
            out.add(PageRejoin(p.id, p.attempt))
            p.retry_s = (t.page_rejoin_retry_s if p.attempt == 1
                         else min(p.retry_s * 2, t.page_rejoin_retry_max_s))
            p.next_step_at = now + p.retry_s

    def _rejoin_result(self, p: _Person, step: Step, ok: bool, now: float, out: _Out) -> None:
        if p.state != PersonState.RECONNECTING or p.disruption is None:
            return  # late news: the person is already back, on the phone or gone
        self.ledger.settle(p.disruption, step, "ok" if ok else "failed")
        # A step that failed outright makes way for the next at once; success is not
        # "back" yet: that is media flowing again, which the quality report tells.
        if not ok and step == p.step and step != Step.PAGE_REJOIN:
            self._rejoin_step(p, _NEXT_STEP[step], now, out)

    def _back(self, p: _Person, level: Quality, now: float, out: _Out) -> None:
        p.step = None
        self._step(p, now, Step.BACK)
        self._tell(NoticeKind.BACK, p, out)
        self._release_waiting_for(p, now, out)
        p.state = PersonState.DEGRADED
        # Dropping again soon after the last disruption: back with lowered video, which the
        # link is judged against (to audio only if it cannot carry it), not full video.
        if p.flaps and p.video == VideoMode.FULL:
            p.video = VideoMode.LOWERED
            self._step(p, now, Step.LOWER_VIDEO)
            out.add(LowerVideo(p.id))
        self._grade(p, level, p.cause, now, out)

    # -- the phone step -------------------------------------------------------------------

    def _switch_to_phone(self, p: _Person, now: float, out: _Out) -> None:
        if p.role == "therapist":
            raise StateError(ErrorCode.FORBIDDEN, "Only a partner can be moved to the phone.")
        if p.state == PersonState.LEFT:
            raise StateError(ErrorCode.UNKNOWN_TARGET, "That person has left the session.")
        if p.state != PersonState.PHONE:
            self._begin(p, now)
            self._to_phone(p, now, "therapist", out)

    def _to_phone(self, p: _Person, now: float, decided_by: str, out: _Out) -> None:
        p.back_online = p.state in _ON_VIDEO
        p.state, p.step = PersonState.PHONE, None
        self._step(p, now, Step.PHONE, decided_by)
        therapist = p if p.role == "therapist" else self._therapist()
        if therapist is not None:
            callees = [x for x in self._present() if x.role == "partner"] if p is therapist else [p]
            for callee in callees:
                out.add(PhonePrompt(therapist.id, callee.id))
        self._tell(NoticeKind.PHONE, p, out)

    def _online_again(self, p: _Person, out: _Out) -> None:
        if p.back_online:
            return
        p.back_online = True
        therapist = self._therapist()
        readers = [p] if therapist is None or therapist is p else [p, therapist]
        for reader in readers:
            out.add(Notice(reader.id, NoticeKind.VIDEO_AVAILABLE, _audience(reader, p), p.id))

    def _return_to_video(self, p: _Person, now: float, out: _Out) -> None:
        if p.state in _ON_VIDEO:
            return
        if p.state != PersonState.PHONE:
            raise StateError(ErrorCode.FORBIDDEN, "Only someone on the phone can return to video.")
        self._step(p, now, Step.RETURN_TO_VIDEO)
        self._tell(NoticeKind.RETURNED_TO_VIDEO, p, out)
        self._release_waiting_for(p, now, out)
        p.state, p.back_online = PersonState.DEGRADED, False
        p.good_since = now if p.video != VideoMode.FULL else None
        if p.video == VideoMode.FULL:
            self._recovered(p, now, out)

    # -- hold -----------------------------------------------------------------------------

    def _hold(self, now: float, out: _Out) -> None:
        partners = [p for p in self._people.values() if p.role == "partner"]
        gone = [p for p in partners if p.state in _GONE]
        here = [p for p in partners if p.state in _ON_VIDEO]
        if len(gone) != 1 or len(here) != 1:
            raise StateError(ErrorCode.FORBIDDEN,
                             "Hold is for when one partner is disconnected and the other is here.")
        held, awaited = here[0], gone[0]
        if held.id in self._held:
            return
        self._held[held.id] = awaited.id
        if awaited.disruption is not None:
            self._step(awaited, now, Step.HOLD)
        out.add(Hold(held.id, awaited.id))
        out.add(Notice(held.id, NoticeKind.ON_HOLD, Audience.PARTNER, awaited.id))

    def _release(self, held: PersonId, awaited: PersonId, now: float, out: _Out) -> None:
        del self._held[held]
        waiting_on = self._people[awaited]
        if waiting_on.disruption is not None:
            self._step(waiting_on, now, Step.RESUME)
        out.add(Unhold(held))
        out.add(Notice(held, NoticeKind.RESUMED, Audience.PARTNER, awaited))

    def _release_waiting_for(self, p: _Person, now: float, out: _Out) -> None:
        for held, awaited in list(self._held.items()):
            if awaited == p.id:
                self._release(held, awaited, now, out)

    # -- leaving --------------------------------------------------------------------------

    def _left(self, p: _Person, now: float, out: _Out) -> None:
        if p.state == PersonState.LEFT:
            return
        self._end_disruption(p, now, Outcome.LEFT, out)
        self._device_over(p, now, Outcome.LEFT, out)
        self._restart_over(p, now, Outcome.LEFT, out)
        p.state, p.step = PersonState.LEFT, None
        self._held.pop(p.id, None)
        for reader in self._present():
            out.add(Notice(reader.id, NoticeKind.LEFT, _audience(reader, p), p.id))

    # -- surviving a server restart -------------------------------------------------------

    def server_restarted(self, down_at: float) -> None:
        """The server went away at ``down_at`` and runs again. For everyone present that is a
        disruption of its own, put down to the server (``Cause.SERVER_RESTART``), never to
        their network; it ends for each person when their page is back (``SignalingBack``).
        What was under way before (a drop, the phone step, a hold) goes on as it was."""
        for p in self._present():
            if p.id not in self._restart:
                entry = self._restart[p.id] = self.ledger.open(p.id, Cause.SERVER_RESTART, down_at)
                self.ledger.step(entry, down_at, Step.DROPPED)

    def _restart_over(self, p: _Person, now: float, outcome: Outcome, out: _Out) -> None:
        entry = self._restart.pop(p.id, None)
        if entry is not None:
            if outcome == Outcome.RECOVERED:
                self.ledger.step(entry, now, Step.BACK)
            out.add(LedgerEntry(self.ledger.close(entry, now, outcome)))

    def snapshot(self) -> dict[str, Any]:
        """Everything the flow holds (people with their states and timers, holds, the ledger)
        as JSON-ready data; ``restore`` makes the same flow from it after a restart."""
        return {
            "people": [{f.name: getattr(p, f.name) for f in fields(_Person)} for p in self._people.values()],
            "held": dict(self._held),
            "restart": dict(self._restart),
            "ledger": self.ledger.snapshot(),
        }

    @classmethod
    def restore(cls, data: dict[str, Any], timings: FallbackTimings | None = None) -> FallbackFlow:
        flow = cls(timings)
        for raw in data["people"]:
            person = _Person(**raw)
            person.state, person.video = PersonState(person.state), VideoMode(person.video)
            person.cause = Cause(person.cause)
            person.step = Step(person.step) if person.step is not None else None
            person.device = Device(person.device).value if person.device is not None else None
            flow._people[person.id] = person
        flow._held = {PersonId(k): PersonId(v) for k, v in data["held"].items()}
        flow._restart = {PersonId(k): int(v) for k, v in data["restart"].items()}
        flow.ledger = DisruptionLedger.restore(data["ledger"])
        flow._settle()
        return flow

    # -- helpers --------------------------------------------------------------------------

    def _person(self, person: PersonId) -> _Person:
        try:
            return self._people[person]
        except KeyError:
            raise StateError(ErrorCode.UNKNOWN_TARGET) from None

    def _present(self) -> list[_Person]:
        return [p for p in self._people.values() if p.state != PersonState.LEFT]

    def _therapist(self) -> _Person | None:
        return next((p for p in self._present() if p.role == "therapist"), None)

    def _tell(self, kind: NoticeKind, about: _Person, out: _Out, *, named: bool = True) -> None:
        """Tell everyone present about ``about``; unnamed, the words blame nobody."""
        for reader in self._present():
            if named:
                out.add(Notice(reader.id, kind, _audience(reader, about), about.id))
            else:
                out.add(Notice(reader.id, kind, Audience.EVERYONE, None))

    def _begin(self, p: _Person, at: float) -> None:
        """Open a ledger entry for ``p`` unless one is open; count it as a flap if soon."""
        if p.disruption is not None:
            return
        soon = p.last_ended_at is not None and at - p.last_ended_at < self.timings.flap_window_s
        p.flaps = p.flaps + 1 if soon else 0
        p.disruption = self.ledger.open(p.id, p.cause, at)

    def _step(self, p: _Person, at: float, step: Step, outcome: str | None = None) -> None:
        if p.disruption is not None:
            self.ledger.step(p.disruption, at, step, outcome)

    def _end_disruption(self, p: _Person, now: float, outcome: Outcome, out: _Out) -> None:
        if p.disruption is None:
            return
        out.add(LedgerEntry(self.ledger.close(p.disruption, now, outcome)))
        p.disruption, p.last_ended_at = None, now


def _audience(reader: _Person, about: _Person) -> Audience:
    if reader is about:
        return Audience.YOU_THERAPIST if reader.role == "therapist" else Audience.YOU
    if reader.role == "therapist":
        return Audience.THERAPIST
    return Audience.PARTNER_THERAPIST if about.role == "therapist" else Audience.PARTNER
