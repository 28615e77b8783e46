"""The room hub: the one owner of live room state.

Every method is plain (not async): it checks, mutates and returns an ``Outbox`` of messages
to send, sockets to close and events for observers; the caller delivers it afterwards, so no
``await`` can slip between a check and a write (Galène's group, LiveKit's Room.Join).

A member's states::

    (join) --partner, not admitted--> waiting --admit--> in_call
    (join) --therapist, or partner admitted in grace--> in_call
    waiting|in_call --socket drops--> reconnecting --same link within grace--> previous state
    reconnecting --grace ends--> gone ("left")
    any --leave / remove / room ends / its link revoked--> gone

Offers: on each pair the member who entered the call later makes the offers (and is the
impolite side in perfect negotiation); the order is kept across resumes, so roles never flip
and no glare happens.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from signaling import protocol as p
from telehealth.errors import ErrorCode, ProtocolError, UserError
from telehealth.model import Person, RoomRecord
from telehealth.tokens import PersonId, Role, RoomId

Conn = Hashable
MAX_MEMBERS = 3

# What a welcome carries besides room state: ICE servers (with fresh TURN credentials) and
# the member's own fallback plan. Pure: (room, person, now) -> (servers, plan).
WelcomeExtras = Callable[[RoomRecord, Person, float], "tuple[list[p.IceServer], p.FallbackPlan | None]"]


def no_extras(record: RoomRecord, person: Person, now: float) -> tuple[list[p.IceServer], None]:
    return [], None

MemberEventKind = Literal[
    "waiting", "joined", "admitted", "reconnecting", "closing", "back", "replaced", "left", "expired",
    "removed", "revoked",
]
# Away without the others being told: a page closing (or reloading: is it back within
# CLOSING_GRACE_S?), or a member restored from disk after a restart (its media never stopped).
QuietAway = Literal["closing", "restored"]
# A closing page that is not back this soon has left. A reload comes back within it, on a
# busy old computer too: at 3 s a reload on a loaded two-core machine came back too late and
# put an admitted partner back in the waiting room. The cost: a closed tab is told 10 s late.
CLOSING_GRACE_S = 10.0
RoomEventKind = Literal["opened", "locked", "unlocked", "ended", "closed"]


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: MemberEventKind
    room_id: RoomId
    person_id: PersonId
    role: Role
    at: float


@dataclass(frozen=True, slots=True)
class RoomEvent:
    kind: RoomEventKind
    room_id: RoomId
    at: float


HubEvent = MemberEvent | RoomEvent


@dataclass(slots=True)
class Outbox:
    sends: list[tuple[Conn, p.ServerMessage]] = field(default_factory=list)
    closes: list[tuple[Conn, p.CloseReason]] = field(default_factory=list)
    events: list[HubEvent] = field(default_factory=list)

    def send(self, conn: Conn | None, msg: p.ServerMessage) -> None:
        if conn is not None:
            self.sends.append((conn, msg))

    def close(self, conn: Conn, reason: p.CloseReason, action: p.RecoveryAction, text: str = "") -> None:
        self.sends.append((conn, p.Bye(reason=reason, action=action, message=text)))
        self.closes.append((conn, reason))


@dataclass(slots=True)
class Member:
    person: Person
    state: p.PeerState
    conn: Conn | None
    # Order of entering the call; decides who offers on each pair.
    seq: int = 0
    admitted: bool = False
    deadline: float | None = None
    # What the member was doing before its socket dropped.
    resume_state: p.PeerState | None = None
    audio: bool = True
    video: bool = True
    # Away, but the others were not told (QuietAway): they still see it in the call, and its
    # return is no news to them.
    quiet: QuietAway | None = None
    # A partner's check-in: the checklist's answers and whether they confirmed their number.
    checkin: p.CheckInAnswers | None = None
    phone_check: p.PhoneCheck | None = None

    @property
    def id(self) -> PersonId:
        return self.person.id

    @property
    def role(self) -> Role:
        return self.person.role

    @property
    def in_call_or_coming_back(self) -> bool:
        """Seen by the others: in the call, or dropped from it and within grace."""
        return self.state == "in_call" or self.resume_state == "in_call"

    def me(self) -> p.Me:
        return p.Me(id=self.person.id, role=self.person.role, name=self.person.name)


@dataclass(slots=True)
class LiveRoom:
    id: RoomId
    record: RoomRecord
    members: dict[PersonId, Member] = field(default_factory=dict)
    locked: bool = False
    opened: bool = False

    def info(self) -> p.RoomInfo:
        return p.RoomInfo(id=self.id, locked=self.locked)

    def in_call(self) -> list[Member]:
        return [m for m in self.members.values() if m.state == "in_call"]

    def therapist(self) -> Member | None:
        return next((m for m in self.members.values() if m.role == "therapist"), None)


@dataclass(frozen=True, slots=True)
class Seat:
    """Where a socket sits: which room and which person it speaks for."""

    room_id: RoomId
    person_id: PersonId


class RoomHub:
    def __init__(self, *, grace_seconds: float, extras: WelcomeExtras = no_extras,
                 relay_only: bool = False) -> None:
        self.grace_seconds = grace_seconds
        self.extras = extras
        self.ice_policy: Literal["all", "relay"] = "relay" if relay_only else "all"
        self.rooms: dict[RoomId, LiveRoom] = {}
        self.seats: dict[Conn, Seat] = {}
        self._seq = itertools.count(1)

    # -- lookups ------------------------------------------------------------------------

    def seat_of(self, conn: Conn) -> tuple[LiveRoom, Member]:
        seat = self.seats.get(conn)
        if seat is None:
            raise ProtocolError(ErrorCode.NOT_JOINED)
        room = self.rooms[seat.room_id]
        return room, room.members[seat.person_id]

    # -- joining ------------------------------------------------------------------------

    def join(
        self,
        conn: Conn,
        record: RoomRecord,
        person: Person,
        now: float,
    ) -> Outbox:
        """Seat ``conn`` as ``person`` (whose link the caller has checked)."""
        if conn in self.seats:
            raise ProtocolError(ErrorCode.ALREADY_JOINED)
        room = self.rooms.get(record.id)
        out = Outbox()
        member = room.members.get(person.id) if room else None
        if room is not None and member is None:
            if len(room.members) >= MAX_MEMBERS:
                raise UserError(ErrorCode.ROOM_FULL)
            if room.locked and person.role != "therapist":
                raise UserError(ErrorCode.ROOM_LOCKED)
        if room is None:
            room = self.rooms[record.id] = LiveRoom(record.id, record)

        if member is None:
            member = Member(person=person, state="waiting", conn=conn)
            room.members[person.id] = member
            if person.role == "therapist":
                self._enter_call(room, member, now, out, resumed=False)
            else:
                self._wait(room, member, now, out, resumed=False)
            return self._seat(conn, room, member, out)

        # The same link again: a resume after a drop, or a second device taking over.
        if member.conn is not None:
            previous = member.state
            old = member.conn
            self.seats.pop(old, None)
            out.close(old, p.CloseReason.REPLACED, p.RecoveryAction.NONE,
                      "This link was opened on another device.")
            out.events.append(MemberEvent("replaced", room.id, member.id, member.role, now))
        else:
            previous = member.resume_state or "waiting"
        member.conn = conn
        member.deadline = None
        member.resume_state = None
        if previous == "in_call" or (member.admitted and person.role == "partner"):
            member.state = "in_call"
            self._resume_call(room, member, now, out)
        elif person.role == "therapist":
            self._enter_call(room, member, now, out, resumed=True)
        else:
            self._wait(room, member, now, out, resumed=True)
        return self._seat(conn, room, member, out)

    def _seat(self, conn: Conn, room: LiveRoom, member: Member, out: Outbox) -> Outbox:
        self.seats[conn] = Seat(room.id, member.id)
        member.quiet = None
        return out

    def _wait(self, room: LiveRoom, member: Member, now: float, out: Outbox, *, resumed: bool) -> None:
        member.state = "waiting"
        out.send(member.conn, p.Waiting(you=member.me(), resumed=resumed))
        out.events.append(MemberEvent("waiting", room.id, member.id, member.role, now))
        self._send_lobby(room, out)

    def _enter_call(self, room: LiveRoom, member: Member, now: float, out: Outbox, *, resumed: bool) -> None:
        member.state = "in_call"
        member.admitted = True
        member.seq = next(self._seq)
        if member.role == "therapist" and not room.opened:
            room.opened = True
            out.events.append(RoomEvent("opened", room.id, now))
        out.send(member.conn, self._welcome(room, member, resumed, now))
        joined = p.PeerJoined(peer=self._peer_info(member, viewer_seq=-1))
        for other in room.in_call():
            if other is not member:
                out.send(other.conn, joined)
        out.events.append(MemberEvent("joined", room.id, member.id, member.role, now))
        if member.role == "therapist":
            self._send_lobby(room, out)

    def _resume_call(self, room: LiveRoom, member: Member, now: float, out: Outbox) -> None:
        if member.seq == 0:
            member.seq = next(self._seq)
        out.send(member.conn, self._welcome(room, member, True, now))
        back = p.PresenceChanged(peer=member.id, state="back")
        for other in room.in_call():
            if other is not member and member.quiet is None:
                out.send(other.conn, back)
        out.events.append(MemberEvent("back", room.id, member.id, member.role, now))
        if member.role == "therapist":
            self._send_lobby(room, out)

    def _welcome(self, room: LiveRoom, member: Member, resumed: bool, now: float) -> p.Welcome:
        ice, plan = self.extras(room.record, member.person, now)
        peers = [
            self._peer_info(o, viewer_seq=member.seq)
            for o in room.members.values()
            if o is not member and o.in_call_or_coming_back
        ]
        return p.Welcome(
            v=p.VERSION, you=member.me(), room=room.info(), peers=peers, resumed=resumed,
            ice_servers=ice, grace_s=self.grace_seconds, fallback=plan, ice_transport_policy=self.ice_policy,
        )

    @staticmethod
    def _peer_info(other: Member, *, viewer_seq: int) -> p.PeerInfo:
        # The viewer offers when it entered the call after ``other``.
        state: p.PeerState = other.state
        if other.conn is None:
            state = (other.resume_state or "in_call") if other.quiet else "reconnecting"
        return p.PeerInfo(
            id=other.id, role=other.role, name=other.person.name, state=state,
            offer=viewer_seq > other.seq,
        )

    def _send_lobby(self, room: LiveRoom, out: Outbox) -> None:
        therapist = room.therapist()
        if therapist is None or therapist.conn is None or therapist.state != "in_call":
            return
        waiting = [
            p.WaitingPerson(id=m.id, name=m.person.name, checkin=m.checkin, phone=m.phone_check)
            for m in room.members.values()
            if m.state == "waiting" and m.conn is not None
        ]
        out.send(therapist.conn, p.Lobby(waiting=waiting))

    # -- leaving ------------------------------------------------------------------------

    def disconnect(self, conn: Conn, now: float) -> Outbox:
        """The socket closed. Its member, if still its own, waits out the grace window."""
        out = Outbox()
        seat = self.seats.pop(conn, None)
        if seat is None:
            return out
        room = self.rooms[seat.room_id]
        member = room.members[seat.person_id]
        if member.conn is not conn:
            return out
        member.conn = None
        member.resume_state = member.state
        member.state = "reconnecting"
        member.deadline = now + self.grace_seconds
        if member.resume_state == "in_call":
            msg = p.PresenceChanged(peer=member.id, state="reconnecting")
            for other in room.in_call():
                out.send(other.conn, msg)
        else:
            self._send_lobby(room, out)
        out.events.append(MemberEvent("reconnecting", room.id, member.id, member.role, now))
        return out

    def leave(self, conn: Conn, now: float, *, closing: bool = False) -> Outbox:
        """Leave for good; or, from a closing page, leave unless the same link is back
        within CLOSING_GRACE_S (a reload): the others hear nothing either way until then."""
        room, member = self.seat_of(conn)
        out = Outbox()
        out.close(conn, p.CloseReason.LEFT, p.RecoveryAction.NONE)
        if not closing:
            self._remove(room, member, now, out, "left")
            return out
        self.seats.pop(conn, None)
        member.conn = None
        member.resume_state = member.state
        member.state = "reconnecting"
        member.deadline = now + CLOSING_GRACE_S
        member.quiet = "closing"
        out.events.append(MemberEvent("closing", room.id, member.id, member.role, now))
        if member.resume_state == "waiting":
            self._send_lobby(room, out)
        return out

    def expire(self, now: float) -> Outbox:
        """End the grace window of every member whose deadline has passed."""
        out = Outbox()
        for room in list(self.rooms.values()):
            for member in list(room.members.values()):
                if member.deadline is not None and member.deadline <= now:
                    self._remove(room, member, now, out, "left" if member.quiet == "closing" else "expired")
        return out

    def _remove(self, room: LiveRoom, member: Member, now: float, out: Outbox, kind: MemberEventKind) -> None:
        del room.members[member.id]
        if member.conn is not None:
            self.seats.pop(member.conn, None)
        if member.in_call_or_coming_back:
            msg = p.PresenceChanged(peer=member.id, state="left")
            for other in room.in_call():
                out.send(other.conn, msg)
        else:
            self._send_lobby(room, out)
        out.events.append(MemberEvent(kind, room.id, member.id, member.role, now))
        if not room.members:
            del self.rooms[room.id]
            out.events.append(RoomEvent("closed", room.id, now))

    def revoke(self, room_id: RoomId, person_id: PersonId, now: float) -> Outbox:
        """The person's link was revoked (a new one issued): whoever holds the old one leaves
        the room now, socket closed, and the new link's holder comes in as anyone new does."""
        out = Outbox()
        room = self.rooms.get(room_id)
        member = room.members.get(person_id) if room is not None else None
        if room is None or member is None:
            return out
        if member.conn is not None:
            out.close(member.conn, p.CloseReason.LINK_REVOKED, p.RecoveryAction.NONE,
                      "This link no longer works: a new one was issued.")
        self._remove(room, member, now, out, "revoked")
        return out

    def end_room(self, room_id: RoomId, now: float) -> Outbox:
        """The room was ended (by its therapist or from the CLI): tell everyone, close all."""
        out = Outbox()
        room = self.rooms.pop(room_id, None)
        if room is None:
            return out
        for member in room.members.values():
            if member.conn is not None:
                self.seats.pop(member.conn, None)
                out.close(member.conn, p.CloseReason.ROOM_ENDED, p.RecoveryAction.NONE,
                          "The session has ended.")
        out.events.append(RoomEvent("ended", room_id, now))
        return out

    def close_all(self, now: float) -> Outbox:
        """Server shutdown: ask every client to resume once the server is back."""
        out = Outbox()
        for conn in list(self.seats):
            out.close(conn, p.CloseReason.SHUTDOWN, p.RecoveryAction.RESUME,
                      "The server is restarting.")
        # Everyone keeps their place as it is now, on disk too: the closing sockets are not
        # drops, and after the restart a graceful stop and a crash come back the same way.
        self.seats.clear()
        return out

    # -- surviving a restart ----------------------------------------------------------------

    @staticmethod
    def snapshot(room: LiveRoom) -> dict[str, Any]:
        """What of a room must outlive the process: lock, admissions, offer order, and the
        state each member returns to (JSON-ready; ``restore`` takes it back)."""
        return {
            "locked": room.locked,
            "opened": room.opened,
            "members": [
                {"id": m.id, "state": m.resume_state if m.state == "reconnecting" else m.state,
                 "admitted": m.admitted, "seq": m.seq, "audio": m.audio, "video": m.video}
                for m in room.members.values()
            ],
        }

    def restore(self, record: RoomRecord, saved: dict[str, Any], now: float) -> LiveRoom:
        """A room as it was before the server stopped: every member waits, for the grace
        window, for its page to come back, and resumes where it was (no waiting room again
        for an admitted partner, the same side offering on each pair)."""
        room = self.rooms[record.id] = LiveRoom(record.id, record, locked=bool(saved["locked"]),
                                                opened=bool(saved["opened"]))
        people = {x.id: x for x in record.people}
        for m in saved["members"]:
            person = people.get(m["id"])
            if person is None:
                continue
            room.members[person.id] = Member(
                person=person, state="reconnecting", conn=None, seq=int(m["seq"]),
                admitted=bool(m["admitted"]), deadline=now + self.grace_seconds,
                resume_state=m["state"] or "waiting", audio=bool(m["audio"]), video=bool(m["video"]),
                quiet="restored",
            )
        # New entrances still come after everyone restored.
        top = max((m.seq for r in self.rooms.values() for m in r.members.values()), default=0)
        self._seq = itertools.count(top + 1)
        return room

    # -- in the call ----------------------------------------------------------------------

    def relay(self, conn: Conn, msg: p.ClientSdp | p.ClientCandidate | p.ClientRestart) -> Outbox:
        """Pass a negotiation message to a peer in the same call, and nowhere else."""
        room, member = self.seat_of(conn)
        if member.state != "in_call":
            raise UserError(ErrorCode.FORBIDDEN, "You are not in the call yet.")
        target = room.members.get(PersonId(msg.to))
        if target is None or target is member or not target.in_call_or_coming_back:
            raise UserError(ErrorCode.UNKNOWN_TARGET)
        out = Outbox()
        if target.conn is None or target.state != "in_call":
            return out  # reconnecting: it renegotiates when it is back
        if isinstance(msg, p.ClientSdp):
            out.send(target.conn, p.ServerSdp(from_=member.id, pc=msg.pc, description=msg.description))
        elif isinstance(msg, p.ClientCandidate):
            out.send(target.conn, p.ServerCandidate(from_=member.id, pc=msg.pc, candidate=msg.candidate))
        else:
            out.send(target.conn, p.ServerRestart(from_=member.id, pc=msg.pc))
        return out

    def set_media(self, conn: Conn, msg: p.MediaState) -> Outbox:
        room, member = self.seat_of(conn)
        member.audio, member.video = msg.audio, msg.video
        out = Outbox()
        if member.state == "in_call":
            note = p.PeerMedia(peer=member.id, audio=msg.audio, video=msg.video)
            for other in room.in_call():
                if other is not member:
                    out.send(other.conn, note)
        return out

    # -- the therapist's controls -----------------------------------------------------------

    def _therapist_target(self, conn: Conn, participant: str) -> tuple[LiveRoom, Member, Member]:
        room, member = self.seat_of(conn)
        if member.role != "therapist":
            raise UserError(ErrorCode.FORBIDDEN)
        target = room.members.get(PersonId(participant))
        if target is None or target is member:
            raise UserError(ErrorCode.UNKNOWN_TARGET)
        return room, member, target

    def admit(self, conn: Conn, participant: str, now: float) -> Outbox:
        room, _, target = self._therapist_target(conn, participant)
        if target.state != "waiting" or target.conn is None:
            raise UserError(ErrorCode.NOT_WAITING)
        out = Outbox()
        out.events.append(MemberEvent("admitted", room.id, target.id, target.role, now))
        self._enter_call(room, target, now, out, resumed=False)
        self._send_lobby(room, out)
        return out

    def remove(self, conn: Conn, participant: str, now: float) -> Outbox:
        room, _, target = self._therapist_target(conn, participant)
        out = Outbox()
        if target.conn is not None:
            out.close(target.conn, p.CloseReason.REMOVED, p.RecoveryAction.NONE,
                      "The therapist has removed you from the session.")
        self._remove(room, target, now, out, "removed")
        return out

    def mute(self, conn: Conn, participant: str, kind: p.MediaKind) -> Outbox:
        _, _, target = self._therapist_target(conn, participant)
        out = Outbox()
        out.send(target.conn, p.MuteRequest(kind=kind))
        return out

    def lock(self, conn: Conn, locked: bool, now: float) -> Outbox:
        room, member = self.seat_of(conn)
        if member.role != "therapist":
            raise UserError(ErrorCode.FORBIDDEN)
        room.locked = locked
        out = Outbox()
        note = p.RoomChanged(room=room.info())
        for other in room.in_call():
            out.send(other.conn, note)
        out.events.append(RoomEvent("locked" if locked else "unlocked", room.id, now))
        return out

    # -- a partner's check-in ---------------------------------------------------------------

    def _partner(self, conn: Conn) -> tuple[LiveRoom, Member]:
        room, member = self.seat_of(conn)
        if member.role != "partner":
            raise UserError(ErrorCode.FORBIDDEN)
        return room, member

    def check_in(self, conn: Conn, answers: p.CheckInAnswers) -> Outbox:
        room, member = self._partner(conn)
        member.checkin = answers
        out = Outbox()
        self._send_lobby(room, out)
        return out

    def set_phone(self, conn: Conn, phone: str | None, now: float) -> tuple[Outbox, Person]:
        """The partner confirmed their number (``phone`` None) or gave this one (E.164,
        checked and stored by the caller). Their plan and the therapist's call list follow."""
        room, member = self._partner(conn)
        out = Outbox()
        if phone is None:
            if member.person.phone is None:
                raise UserError(ErrorCode.INVALID_PHONE, "There is no number to confirm: please give one.")
            member.phone_check = "confirmed"
            self._send_lobby(room, out)
            return out, member.person
        member.person = dataclasses.replace(member.person, phone=phone)
        member.phone_check = "corrected"
        room.record = dataclasses.replace(
            room.record, people=tuple(member.person if x.id == member.id else x for x in room.record.people))
        for other in room.members.values():
            if other is member or other.role == "therapist":
                _, plan = self.extras(room.record, other.person, now)
                if plan is not None:
                    out.send(other.conn, p.PlanChanged(fallback=plan))
        self._send_lobby(room, out)
        return out, member.person

    def require_therapist(self, conn: Conn) -> RoomId:
        room, member = self.seat_of(conn)
        if member.role != "therapist":
            raise UserError(ErrorCode.FORBIDDEN)
        return room.id
