"""Room watch: connection quality and the fallback flow of each live room.

The owner of quality state. It feeds each room's QualityMonitor with the pages' stats and
the hub's presence events, runs the room's FallbackFlow every tick, and turns the flow's
actions into protocol messages (an Outbox, delivered by the caller like the hub's). The
decisions themselves are the pure code in ``fallback/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from fallback import events as fe
from fallback.flow import FallbackFlow, FallbackTimings, PersonState, VideoMode
from fallback.ledger import Disruption, Step
from fallback.notices import Notice, call_prompt, mask_phone, notice_text
from fallback.scoring import Cause, LinkSample, Pair, QualityMonitor, RoomQuality
from signaling import protocol as p
from signaling.hub import HubEvent, LiveRoom, Member, Outbox, RoomEvent, RoomHub
from telehealth.errors import ErrorCode, UserError
from telehealth.store import Person
from telehealth.tokens import PersonId, RoomId

log = logging.getLogger("telehealth.watch")

PhoneListener = Callable[[RoomId, Person, Person], None]
LedgerListener = Callable[[RoomId, list[p.LedgerRow]], None]
QualityListener = Callable[[RoomId, RoomQuality], None]
DisruptionListener = Callable[[Disruption], None]


def sample_from_stats(stats: p.LinkStats, t: float) -> LinkSample:
    """The scorer's LinkSample of one wire report, at the server's receive time ``t``."""
    return LinkSample(
        t, stats.rtt_ms, stats.jitter_ms, stats.loss, stats.packets_in, stats.bytes_in,
        stats.frames_decoded, stats.frames_dropped, stats.fps, stats.concealed,
        stats.out_bitrate, stats.in_bitrate, stats.candidate, stats.video, stats.pc,
        stats.send_limit, stats.send_fps, stats.send_cap, stats.lag_ms, stats.encode_ms,
    )


# A room whose quality and flow are settled is still judged this often, for the listeners'
# time series (ops history, metrics).
REPORT_EVERY_S = 1.0


@dataclass
class WatchedRoom:
    monitor: QualityMonitor
    flow: FallbackFlow
    people: dict[PersonId, Person]
    # Who has entered the call: the flow knows only them (a partner in the lobby is not yet).
    entered: set[PersonId] = field(default_factory=set)
    # Whose page is closing (maybe reloading): its links going quiet are not a drop.
    closing: set[PersonId] = field(default_factory=set)
    last_quality: p.Quality | None = None
    # Judge the room at the next chance: an event or a command moved its flow.
    stirred: bool = True
    report_due: float = 0.0

    @property
    def relayed(self) -> set[frozenset[PersonId]]:
        return self.monitor.relayed()

    def moved(self, now: float) -> bool:
        """Whether the quality or the flow may have moved since the last judgement."""
        return self.stirred or self.monitor.due(now) or not self.flow.settled()

    def due(self, now: float) -> bool:
        return now >= self.report_due or self.moved(now)


class RoomWatch:
    """Events: ``on_hub_event`` (presence), ``on_stats`` (samples), ``command`` (therapist
    and page requests), ``tick`` (timers, a few times a second).

    A room is judged (its quality evaluated, published and fed to the flow) when that could
    change something: at once when a sample changes a link's level (so a drop shows without
    waiting for a tick), on the tick after an event, on every tick while the flow has a timer
    running, and otherwise once every REPORT_EVERY_S. Judging every room on every tick would
    cost most of a core at a few thousand rooms.
    """

    def __init__(self, hub: RoomHub, *, rejoin_window_s: float) -> None:
        self.hub = hub
        self.timings = FallbackTimings(rejoin_window_s=rejoin_window_s)
        self.rooms: dict[RoomId, WatchedRoom] = {}
        self.phone_listeners: list[PhoneListener] = []
        self.ledger_listeners: list[LedgerListener] = []
        self.quality_listeners: list[QualityListener] = []
        self.disruption_listeners: list[DisruptionListener] = []
        # Rooms whose flow ran since the keeper last looked (it saves those that changed).
        self.changed: set[RoomId] = set()

    # -- inputs -------------------------------------------------------------------------

    def person_changed(self, room_id: RoomId, person: Person) -> None:
        """A person's details changed (a corrected number): the next call prompt uses them."""
        watched = self.rooms.get(room_id)
        if watched is not None and person.id in watched.people:
            watched.people[person.id] = person

    def on_hub_event(self, event: HubEvent, now: float) -> Outbox:
        out = Outbox()
        if isinstance(event, RoomEvent):
            if event.kind in ("ended", "closed") and event.room_id in self.rooms:
                ended = self.rooms.pop(event.room_id)
                self._apply(event.room_id, ended, ended.flow.handle(fe.SessionEnded(), now), out)
                self._publish_ledger(event.room_id, ended)
            return out
        room = self.hub.rooms.get(event.room_id)
        watched = self.rooms.get(event.room_id)
        if watched is None:
            if room is None or event.kind != "joined":
                return out
            watched = self.rooms[event.room_id] = WatchedRoom(
                QualityMonitor(), FallbackFlow(self.timings), {x.id: x for x in room.record.people}
            )
        flow_event: fe.Event | None = None
        if event.kind == "closing":
            watched.closing.add(event.person_id)
            watched.monitor.forget(event.person_id)
        else:
            watched.closing.discard(event.person_id)
        if event.kind in ("reconnecting", "back", "joined", "replaced"):
            # A page silent with its socket up has stopped (asleep); one whose socket dropped
            # is reconnecting.
            watched.monitor.socket(event.person_id, up=event.kind != "reconnecting")
        if event.kind == "joined":
            watched.entered.add(event.person_id)
            flow_event = fe.Joined(event.person_id, event.role)
        elif event.kind == "reconnecting" and self._known(watched, event.person_id):
            flow_event = fe.SignalingLost(event.person_id)
        elif event.kind == "back" and self._known(watched, event.person_id):
            flow_event = fe.SignalingBack(event.person_id)
        elif event.kind in ("left", "removed", "revoked") and self._known(watched, event.person_id):
            # A deliberate leave. The end of a grace window is not: the flow's own rejoin
            # window and phone step decide what happens to someone who vanished.
            flow_event = fe.Left(event.person_id)
            watched.monitor.forget(event.person_id)
            watched.entered.discard(event.person_id)
        watched.stirred = True
        if flow_event is not None:
            self._apply(event.room_id, watched, self._handle(watched, flow_event, now), out)
        if event.kind in ("joined", "back", "replaced"):
            self._resync(event.room_id, watched, event.person_id, out)
        return out

    def _resync(self, room_id: RoomId, watched: WatchedRoom, person: PersonId, out: Outbox) -> None:
        """A page that (re)connects learns what the flow decided while it was away: it missed
        those messages, and would otherwise expect video that is paused on purpose."""
        conn = self._conn(room_id, person)
        if conn is None:
            return
        if watched.last_quality is not None:
            out.send(conn, watched.last_quality)
        for other in sorted(watched.entered):
            status = watched.flow.status(other)
            if status.video != VideoMode.FULL:
                out.send(conn, p.FallbackAction(
                    action="lower_video" if status.video == VideoMode.LOWERED else "audio_only", person=other))
            if status.state == PersonState.PHONE:
                out.send(conn, p.FallbackAction(action="phone", person=other))
            if status.held_for is not None:
                out.send(conn, p.FallbackAction(action="hold", person=other, waiting_for=status.held_for))

    def on_stats(self, room: LiveRoom, member: Member, msg: p.Stats, now: float) -> Outbox | None:
        watched = self.rooms.get(room.id)
        if watched is None:
            return None
        monitor, people, closing = watched.monitor, watched.people, watched.closing
        me = member.person.id
        monitor.heartbeat(me, now)
        for stats in msg.links:
            # A PersonId once found among the room's people (no NewType call: per link, per sample).
            peer: PersonId = stats.peer  # type: ignore[assignment]
            if peer in people and peer != me and peer not in closing:
                monitor.ingest(me, peer, sample_from_stats(stats, now))
        if not monitor.due(now):
            return None
        out = Outbox()
        self._judge(room.id, watched, now, out)
        return out

    def command(self, room: LiveRoom, member: Member, msg: p.ClientMessage, now: float) -> Outbox:
        watched = self.rooms.get(room.id)
        if watched is None:
            raise UserError(ErrorCode.FORBIDDEN, "The session has not started.")
        out = Outbox()
        if isinstance(msg, p.GetLedger):
            self._require_therapist(member)
            out.send(member.conn, p.Ledger(rows=self.ledger_rows(watched)))
            return out
        event: fe.Event
        if isinstance(msg, p.SwitchToPhone):
            self._require_therapist(member)
            event = fe.SwitchToPhone(self._target(watched, msg.participant))
        elif isinstance(msg, p.ReturnToVideo):
            if msg.participant is not None and msg.participant != member.id:
                self._require_therapist(member)
                event = fe.ReturnToVideo(self._target(watched, msg.participant))
            else:
                event = fe.ReturnToVideo(member.id)
        elif isinstance(msg, p.Hold):
            self._require_therapist(member)
            event = fe.PutOnHold()
        elif isinstance(msg, p.Resume):
            self._require_therapist(member)
            event = fe.Resume()
        elif isinstance(msg, p.RejoinResult):
            event = fe.RejoinResult(member.id, Step(msg.step), msg.ok)
        else:
            raise UserError(ErrorCode.UNKNOWN_TYPE)
        watched.stirred = True
        self._apply(room.id, watched, self._handle(watched, event, now), out)
        return out

    def tick(self, now: float) -> Outbox:
        out = Outbox()
        for room_id, watched in list(self.rooms.items()):
            if watched.due(now):
                self._judge(room_id, watched, now, out)
        return out

    def _judge(self, room_id: RoomId, watched: WatchedRoom, now: float, out: Outbox) -> None:
        # Unless something happened, the quality is the last one again and the flow settled:
        # only the listeners' time series move on.
        moved = watched.moved(now)
        watched.stirred, watched.report_due = False, now + REPORT_EVERY_S
        quality = watched.monitor.evaluate(now)
        for listener in self.quality_listeners:
            listener(room_id, quality)
        if moved:
            self._publish_quality(room_id, watched, quality, out)
            self._apply(room_id, watched, watched.flow.handle(fe.QualityReport(quality), now), out)

    # -- surviving a restart ------------------------------------------------------------

    def snapshot(self, room_id: RoomId) -> dict[str, object] | None:
        watched = self.rooms.get(room_id)
        if watched is None:
            return None
        return {"flow": watched.flow.snapshot(), "entered": sorted(watched.entered)}

    def restore(self, room: LiveRoom, saved: dict[str, Any], down_at: float) -> None:
        """A room's flow as it was when the server stopped at ``down_at``: its states, timers,
        holds and ledger go on, and the outage is a disruption of everyone put down to the
        server. Its quality starts afresh from the pages' next samples."""
        flow = FallbackFlow.restore(saved["flow"], self.timings)
        flow.server_restarted(down_at)
        self.rooms[room.id] = WatchedRoom(QualityMonitor(), flow, {x.id: x for x in room.record.people},
                                          entered={PersonId(x) for x in saved["entered"]})
        self.changed.add(room.id)

    def relayed(self, room_id: RoomId) -> Collection[Pair]:
        """The pairs of a room whose media runs through the TURN relay now."""
        watched = self.rooms.get(room_id)
        return watched.relayed if watched is not None else ()

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _known(watched: WatchedRoom, person: PersonId) -> bool:
        return person in watched.entered

    @staticmethod
    def _require_therapist(member: Member) -> None:
        if member.role != "therapist":
            raise UserError(ErrorCode.FORBIDDEN)

    @staticmethod
    def _target(watched: WatchedRoom, participant: str) -> PersonId:
        person = PersonId(participant)
        if person not in watched.people or watched.people[person].role == "therapist":
            raise UserError(ErrorCode.UNKNOWN_TARGET)
        return person

    @staticmethod
    def _handle(watched: WatchedRoom, event: fe.Event, now: float) -> list[fe.Action]:
        # The flow refuses a transition with StateError; the endpoint answers it like any
        # refused request, and the flow is unchanged.
        return watched.flow.handle(event, now)

    def ledger_rows(self, watched: WatchedRoom) -> list[p.LedgerRow]:
        return [p.LedgerRow(**row) for row in watched.flow.ledger.rows()]  # type: ignore[arg-type]

    def _publish_ledger(self, room_id: RoomId, watched: WatchedRoom) -> None:
        rows = self.ledger_rows(watched)
        for listener in self.ledger_listeners:
            listener(room_id, rows)

    def _publish_quality(self, room_id: RoomId, watched: WatchedRoom, quality: RoomQuality, out: Outbox) -> None:
        weak = next((a.person for a in quality.attributions if a.cause == Cause.OWN_NETWORK and a.person), None)
        relayed = watched.relayed
        msg = p.Quality(
            links=[
                p.LinkQuality(a=min(pair), b=max(pair), level=level.value,
                              relay=pair in relayed)
                for pair, level in sorted(quality.pairs.items(), key=lambda kv: sorted(kv[0]))
            ],
            people={person: level.value for person, level in sorted(quality.participants.items())},
            weak=weak,
            devices={person: device.value for person, device in sorted(quality.devices.items())},
        )
        if msg == watched.last_quality:
            return
        watched.last_quality = msg
        room = self.hub.rooms.get(room_id)
        if room is None:
            return
        for member in room.in_call():
            out.send(member.conn, msg)

    def _conn(self, room_id: RoomId, person: PersonId) -> object | None:
        room = self.hub.rooms.get(room_id)
        member = room.members.get(person) if room else None
        return member.conn if member and member.state == "in_call" else None

    def _everyone(self, room_id: RoomId) -> list[object]:
        room = self.hub.rooms.get(room_id)
        return [m.conn for m in room.in_call()] if room else []

    def _apply(self, room_id: RoomId, watched: WatchedRoom, actions: list[fe.Action], out: Outbox) -> None:
        self.changed.add(room_id)
        for action in actions:
            if isinstance(action, Notice):
                reader = watched.people.get(action.to)
                about = watched.people.get(action.about) if action.about else None
                hint = mask_phone(reader.phone) if reader and reader.phone else None
                text = notice_text(action, name=about.name if about else None, phone_hint=hint,
                                   window_s=self.timings.rejoin_window_s)
                out.send(self._conn(room_id, action.to),
                         p.Notice(kind=action.kind.value, text=text, about=action.about))
            elif isinstance(action, fe.PhonePrompt):
                callee = watched.people[action.callee]
                therapist = watched.people[action.therapist]
                prompt = call_prompt(callee.name, callee.phone) if callee.phone else None
                out.send(self._conn(room_id, action.therapist), p.CallPrompt(
                    callee=callee.id, name=callee.name, phone=callee.phone,
                    href=prompt.href if prompt else None,
                    text=prompt.text if prompt else f"Call {callee.name}: no phone number is on file.",
                ))
                for everyone in self._everyone(room_id):
                    out.send(everyone, p.FallbackAction(action="phone", person=callee.id))
                for on_phone in self.phone_listeners:
                    on_phone(room_id, therapist, callee)
            elif isinstance(action, fe.LedgerEntry):
                for on_disruption in self.disruption_listeners:
                    on_disruption(action.record)
                self._publish_ledger(room_id, watched)
            elif isinstance(action, (fe.Hold, fe.Unhold)):
                msg = p.FallbackAction(action="hold" if isinstance(action, fe.Hold) else "unhold",
                                       person=action.person,
                                       waiting_for=action.waiting_for if isinstance(action, fe.Hold) else None)
                for everyone in self._everyone(room_id):
                    out.send(everyone, msg)
            else:
                step = _STEPS[type(action)]
                attempt = action.attempt if isinstance(action, fe.PageRejoin) else None
                msg = p.FallbackAction(action=step, person=action.person, attempt=attempt)
                for everyone in self._everyone(room_id):
                    out.send(everyone, msg)


_STEPS: dict[type, p.FallbackStep] = {
    fe.LowerVideo: "lower_video",
    fe.AudioOnly: "audio_only",
    fe.RestoreVideo: "restore_video",
    fe.IceRestart: "ice_restart",
    fe.FreshConnection: "fresh_connection",
    fe.PageRejoin: "page_rejoin",
}
