"""Table tests for the room rules, on the hub alone (sockets are plain objects here)."""

from __future__ import annotations

from typing import Any

import pytest

from signaling import protocol as p
from signaling.hub import RoomHub
from telehealth.errors import ErrorCode, TelehealthError
from telehealth.model import Person, RoomRecord
from telehealth.tokens import PersonId, RoomId


class Sock:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Sock({self.name})"


def record(room: str = "r1", partners: int = 2) -> RoomRecord:
    rid = RoomId(room)
    people = [Person(PersonId(f"{room}-t"), rid, "therapist", 0, "Dr T")]
    people += [Person(PersonId(f"{room}-p{i}"), rid, "partner", i, f"P{i}") for i in range(1, partners + 1)]
    return RoomRecord(rid, 0.0, None, None, None, tuple(people))


def sent(out: Any, sock: Sock) -> list[p.ServerMessage]:
    return [m for s, m in out.sends if s is sock]


def kinds(out: Any, sock: Sock) -> list[str]:
    return [type(m).__struct_config__.tag for m in sent(out, sock)]


def snapshot(hub: RoomHub) -> Any:
    return (
        sorted(
            (rid, room.locked, sorted((m.id, m.state, id(m.conn), m.admitted, m.seq) for m in room.members.values()))
            for rid, room in hub.rooms.items()
        ),
        sorted((id(c), s.room_id, s.person_id) for c, s in hub.seats.items()),
    )


@pytest.fixture
def hub() -> RoomHub:
    return RoomHub(grace_seconds=10.0)


def seat_call(hub: RoomHub, rec: RoomRecord) -> tuple[Sock, Sock, Sock]:
    t, a, b = Sock("t"), Sock("a"), Sock("b")
    hub.join(t, rec, rec.people[0], 0.0)
    hub.join(a, rec, rec.people[1], 0.0)
    hub.join(b, rec, rec.people[2], 0.0)
    hub.admit(t, rec.people[1].id, 1.0)
    hub.admit(t, rec.people[2].id, 1.0)
    return t, a, b


def test_partner_waits_and_therapist_sees_only_the_lobby(hub: RoomHub) -> None:
    rec = record()
    a = Sock("a")
    out = hub.join(a, rec, rec.people[1], 0.0)
    assert kinds(out, a) == ["waiting"]
    t = Sock("t")
    out = hub.join(t, rec, rec.people[0], 0.0)
    assert kinds(out, t) == ["welcome", "lobby"]
    welcome = sent(out, t)[0]
    assert welcome.peers == []  # a waiting partner is not in the call
    assert sent(out, t)[1].waiting == [p.WaitingPerson(id="r1-p1", name="P1")]
    # The other partner in the lobby is shown nothing of the first.
    b = Sock("b")
    out = hub.join(b, rec, rec.people[2], 0.0)
    assert kinds(out, b) == ["waiting"]
    assert sent(out, a) == []


def test_newcomer_offers_and_roles_never_flip(hub: RoomHub) -> None:
    rec = record()
    t, a, b = Sock("t"), Sock("a"), Sock("b")
    hub.join(t, rec, rec.people[0], 0.0)
    hub.join(a, rec, rec.people[1], 0.0)
    out = hub.admit(t, rec.people[1].id, 1.0)
    welcome_a = sent(out, a)[0]
    assert [(x.id, x.offer) for x in welcome_a.peers] == [("r1-t", True)]
    assert sent(out, t)[0] == p.PeerJoined(peer=p.PeerInfo("r1-p1", "partner", "P1", "in_call", False))
    hub.join(b, rec, rec.people[2], 2.0)
    out = hub.admit(t, rec.people[2].id, 2.0)
    assert [(x.id, x.offer) for x in sent(out, b)[0].peers] == [("r1-t", True), ("r1-p1", True)]
    # a drops and resumes: it still answers b and still offers to t.
    hub.disconnect(a, 3.0)
    a2 = Sock("a2")
    out = hub.join(a2, rec, rec.people[1], 4.0)
    welcome = sent(out, a2)[0]
    assert welcome.resumed is True
    assert {x.id: x.offer for x in welcome.peers} == {"r1-t": True, "r1-p2": False}


def test_drop_resume_and_grace_expiry(hub: RoomHub) -> None:
    rec = record()
    t, a, b = seat_call(hub, rec)
    out = hub.disconnect(a, 5.0)
    assert sent(out, t) == [p.PresenceChanged(peer="r1-p1", state="reconnecting")]
    assert sent(out, b) == [p.PresenceChanged(peer="r1-p1", state="reconnecting")]
    assert kinds(hub.expire(14.9), t) == []
    a2 = Sock("a2")
    out = hub.join(a2, rec, rec.people[1], 14.9)
    assert kinds(out, a2) == ["welcome"]  # an admitted partner skips the lobby
    assert sent(out, t) == [p.PresenceChanged(peer="r1-p1", state="back")]
    hub.disconnect(a2, 20.0)
    out = hub.expire(30.0)
    assert sent(out, t) == [p.PresenceChanged(peer="r1-p1", state="left")]
    assert "r1-p1" not in hub.rooms[RoomId("r1")].members
    # After the window the partner is a newcomer and waits again.
    a3 = Sock("a3")
    assert kinds(hub.join(a3, rec, rec.people[1], 31.0), a3) == ["waiting"]


def test_second_device_replaces_the_first(hub: RoomHub) -> None:
    rec = record()
    _t, a, _b = seat_call(hub, rec)
    a2 = Sock("a2")
    out = hub.join(a2, rec, rec.people[1], 5.0)
    assert sent(out, a) == [p.Bye(reason=p.CloseReason.REPLACED, action=p.RecoveryAction.NONE,
                                  message="This link was opened on another device.")]
    assert (a, p.CloseReason.REPLACED) in out.closes
    assert kinds(out, a2) == ["welcome"]
    assert len(hub.rooms[RoomId("r1")].members) == 3
    # The old socket closing afterwards changes nothing.
    before = snapshot(hub)
    assert hub.disconnect(a, 6.0).sends == []
    assert snapshot(hub) == before


def test_relay_stays_inside_the_room(hub: RoomHub) -> None:
    rec, other = record("r1"), record("r2")
    t, a, _b = seat_call(hub, rec)
    _x, _, _ = seat_call(hub, other)
    sdp = p.Description("offer", "v=0")
    out = hub.relay(a, p.ClientSdp(to="r1-t", pc="1", description=sdp))
    assert out.sends == [(t, p.ServerSdp(from_="r1-p1", pc="1", description=sdp))]
    before = snapshot(hub)
    with pytest.raises(TelehealthError) as caught:
        hub.relay(a, p.ClientSdp(to="r2-t", pc="1", description=sdp))
    assert caught.value.code == ErrorCode.UNKNOWN_TARGET
    assert snapshot(hub) == before


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (lambda hub, s: hub.admit(s["a"], "r1-p2", 1.0), ErrorCode.FORBIDDEN),
        (lambda hub, s: hub.remove(s["a"], "r1-t", 1.0), ErrorCode.FORBIDDEN),
        (lambda hub, s: hub.lock(s["b"], True, 1.0), ErrorCode.FORBIDDEN),
        (lambda hub, s: hub.require_therapist(s["b"]), ErrorCode.FORBIDDEN),
        (lambda hub, s: hub.admit(s["t"], "r1-p1", 1.0), ErrorCode.NOT_WAITING),
        (lambda hub, s: hub.admit(s["t"], "nobody", 1.0), ErrorCode.UNKNOWN_TARGET),
        (lambda hub, s: hub.admit(s["t"], "r2-p1", 1.0), ErrorCode.UNKNOWN_TARGET),
        (lambda hub, s: hub.mute(s["t"], "r1-t", "audio"), ErrorCode.UNKNOWN_TARGET),
        (lambda hub, s: hub.relay(s["a"], p.ClientRestart(to="r1-p1")), ErrorCode.UNKNOWN_TARGET),
        (lambda hub, s: hub.relay(s["stranger"], p.ClientRestart(to="r1-t")), ErrorCode.NOT_JOINED),
        (lambda hub, s: hub.join(s["t"], record("r1"), record("r1").people[0], 1.0), ErrorCode.ALREADY_JOINED),
        (lambda hub, s: hub.join(Sock("x"), record("r1", 3), record("r1", 3).people[3], 1.0), ErrorCode.ROOM_FULL),
    ],
)
def test_refused_requests_change_nothing(hub: RoomHub, action: Any, code: ErrorCode) -> None:
    rec = record()
    t, a, b = seat_call(hub, rec)
    seat_call(hub, record("r2"))
    before = snapshot(hub)
    with pytest.raises(TelehealthError) as caught:
        action(hub, {"t": t, "a": a, "b": b, "stranger": Sock("s")})
    assert caught.value.code == code
    assert snapshot(hub) == before


def test_waiting_partner_cannot_signal_and_locked_room_refuses_newcomers(hub: RoomHub) -> None:
    rec = record()
    t, a = Sock("t"), Sock("a")
    hub.join(t, rec, rec.people[0], 0.0)
    hub.join(a, rec, rec.people[1], 0.0)
    with pytest.raises(TelehealthError) as caught:
        hub.relay(a, p.ClientRestart(to="r1-t"))
    assert caught.value.code == ErrorCode.FORBIDDEN
    hub.admit(t, "r1-p1", 1.0)
    hub.lock(t, True, 1.0)
    with pytest.raises(TelehealthError) as caught:
        hub.join(Sock("b"), rec, rec.people[2], 2.0)
    assert caught.value.code == ErrorCode.ROOM_LOCKED
    # An admitted partner coming back is not a newcomer.
    hub.disconnect(a, 3.0)
    a2 = Sock("a2")
    assert kinds(hub.join(a2, rec, rec.people[1], 4.0), a2) == ["welcome"]


def test_remove_and_end(hub: RoomHub) -> None:
    rec = record()
    t, a, b = seat_call(hub, rec)
    out = hub.remove(t, "r1-p1", 2.0)
    assert (a, p.CloseReason.REMOVED) in out.closes
    assert p.PresenceChanged(peer="r1-p1", state="left") in sent(out, b)
    out = hub.end_room(RoomId("r1"), 3.0)
    assert {(s.name, r) for s, r in out.closes} == {("t", p.CloseReason.ROOM_ENDED), ("b", p.CloseReason.ROOM_ENDED)}
    assert hub.rooms == {} and hub.seats == {}
