"""Each staff role gets exactly its views, through the real server.

An ops account is refused by the console at sign-in and on every route, with a signed-in
session and a valid CSRF token too: each answer is the 403 page, and afterwards every link
works as before, no room was made, ended or reissued, and the audit log records the refusal
(actor and room) and no successful action. A therapist cannot act on another therapist's room.
Every staff action is audited with its actor and room, ids only. And a link the therapist
reissues ends the socket that joined with the old one: a real WebSocket client gets
``bye link_revoked`` (close code 4012), leaves the room, and nothing it sends reaches anyone.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from signaling.endpoint import SIGNALING
from telehealth import accounts
from tests.conftest import RunningServer
from tests.test_fuzz import Socket, connect, set_cookies, token_of
from web.forms import LOGIN_COOKIE, SESSION_COOKIE

PASSWORD = "correct horse battery staple"
ALEX, SAM, ADA = "Alex Morgan", "Sam Lee", "Dr Ada Quill"
PHONE = "+1 202 555 0100"
LINK = re.compile(r'value="(http://[^"]+/j/[A-Za-z0-9_-]{43})"')


@dataclass
class Staff:
    http: aiohttp.ClientSession
    base_url: str
    user: accounts.User
    cookie: str

    @property
    def csrf(self) -> str:
        return accounts.csrf_token(self.cookie)

    @property
    def actor(self) -> str:
        return f"u_{self.user.id}"

    async def post(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Status, body and Location of a same-site POST with this session's CSRF token."""
        async with self.http.post(f"{self.base_url}{path}", data={"csrf": self.csrf, **(form or {})},
                                  headers={"Cookie": f"{SESSION_COOKIE}={self.cookie}",
                                           "Sec-Fetch-Site": "same-origin"},
                                  allow_redirects=False) as response:
            return response.status, await response.text(), response.headers.get("Location", "")

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(f"{self.base_url}{path}", headers={"Cookie": f"{SESSION_COOKIE}={self.cookie}"},
                                 allow_redirects=False) as response:
            return response.status, await response.text()


async def sign_in_at(http: aiohttp.ClientSession, base_url: str, path: str, username: str) -> aiohttp.ClientResponse:
    async with http.get(f"{base_url}{path}") as page:
        nonce = set_cookies(page)[LOGIN_COOKIE].value
    return await http.post(f"{base_url}{path}", allow_redirects=False,
                           data={"csrf": nonce, "username": username, "password": PASSWORD},
                           headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"})


async def staff(http: aiohttp.ClientSession, server: RunningServer, username: str,
                role: accounts.StaffRole) -> Staff:
    user = accounts.add_user(server.store, username, PASSWORD, role, now=time.time(), display_name=ADA)
    response = await sign_in_at(http, server.base_url, "/ops/login" if role == "ops" else "/console/login", username)
    assert response.status == 303, response.status
    return Staff(http, server.base_url, user, set_cookies(response)[SESSION_COOKIE].value)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@dataclass
class Booked:
    room_id: str
    links: list[str]  # therapist, Alex, Sam
    partner_ids: list[str]


async def book(therapist: Staff, server: RunningServer) -> Booked:
    status, body, _ = await therapist.post("/console/rooms", {
        "therapist": ADA, "partner1": ALEX, "phone1": PHONE, "partner2": SAM,
        "starts_at": time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 600))})
    assert status == 201, body
    record = server.store.list_rooms()[-1]
    return Booked(record.id, LINK.findall(body), [p.id for p in record.partners])


def audit(server: RunningServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.store.audit.export()]


async def link_status(http: aiohttp.ClientSession, link: str) -> int:
    async with http.get(link) as response:
        return response.status


async def test_an_ops_account_gets_403_on_every_console_route_and_nothing_changes(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    therapist = await staff(http, server, "drada", "therapist")
    booked = await book(therapist, server)
    ops = await staff(http, server, "opsdesk", "ops")
    rooms_before = [(r.id, r.ended_at) for r in server.store.list_rooms()]
    audit_before = len(audit(server))

    # The console's own sign-in refuses the account: the right password, no session.
    refused = await sign_in_at(http, server.base_url, "/console/login", "opsdesk")
    assert refused.status == 403 and "cannot open the console" in await refused.text()
    assert SESSION_COOKIE not in set_cookies(refused)

    # With the session the ops sign-in gave, and a valid CSRF token: 403 everywhere.
    room, alex = booked.room_id, booked.partner_ids[0]
    answers = [await ops.get("/console")]
    for path, form in [
        ("/console/rooms", {"therapist": "X", "partner1": "Y", "starts_at": "2027-01-01T10:00"}),
        (f"/console/rooms/{room}/open", {}),
        (f"/console/rooms/{room}/people/{alex}/link", {}),
        (f"/console/rooms/{room}/end", {}),
        ("/console/rooms/r_0123456789abcdef/open", {}),
        ("/console/logout", {}),
    ]:
        status, body, location = await ops.post(path, form)
        assert not location, (path, location)  # no redirect to a room link, nor anywhere
        answers.append((status, body))
    for status, body in answers:
        assert status == 403 and "Not for this account" in body
        assert not [word for word in (ALEX, SAM, PHONE, "5550100", "/j/") if word in body], body

    # Nothing changed: the same rooms, none ended, every link still opens its page.
    assert [(r.id, r.ended_at) for r in server.store.list_rooms()] == rooms_before
    assert [await link_status(http, link) for link in booked.links] == [200, 200, 200]
    entries = audit(server)[audit_before:]
    assert {e["event"] for e in entries} == {"login_failed", "access_refused"}, entries
    refusals = [e for e in entries if e["event"] == "access_refused"]
    assert len(refusals) == len(answers) and {e["actor"] for e in refusals} == {ops.actor}
    # The refusals that named a real room say which; the made-up id is not recorded.
    assert [e.get("room_id") for e in refusals].count(room) == 3
    assert all(e["detail"]["role"] == "ops" and e["detail"]["reason"] == "forbidden" for e in refusals)
    assert not {ALEX, SAM, ADA} & set(json.dumps(entries).split('"'))
    # The ops session itself still works where it belongs.
    assert (await ops.get("/ops"))[0] == 200


async def test_a_therapist_cannot_open_or_change_another_therapists_room(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    owner = await staff(http, server, "drada", "therapist")
    booked = await book(owner, server)
    other = await staff(http, server, "drbo", "therapist")
    audit_before = len(audit(server))

    status, page = await other.get("/console")
    assert status == 200 and booked.room_id not in page and ALEX not in page
    room, alex = booked.room_id, booked.partner_ids[0]
    for path in (f"/console/rooms/{room}/open", f"/console/rooms/{room}/people/{alex}/link",
                 f"/console/rooms/{room}/end"):
        status, body, location = await other.post(path)
        assert status == 403 and "another therapist" in body and not location, (path, status)
        assert ALEX not in body and "/j/" not in body

    assert server.store.get_room(room).ended_at is None  # type: ignore[union-attr]
    assert [await link_status(http, link) for link in booked.links] == [200, 200, 200]
    entries = audit(server)[audit_before:]
    assert [(e["event"], e["actor"], e["room_id"], e["detail"]["reason"]) for e in entries
            if e["event"] != "login_ok"] == [("access_refused", other.actor, room, "not_owner")] * 3
    # The owner still sees and opens it.
    status, page = await owner.get("/console")
    assert status == 200 and ALEX in page


async def test_every_staff_action_is_audited_with_its_actor_and_room(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    therapist = await staff(http, server, "drada", "therapist")
    booked = await book(therapist, server)
    room, alex = booked.room_id, booked.partner_ids[0]
    record = server.store.get_room(room)
    assert record is not None
    status, _, location = await therapist.post(f"/console/rooms/{room}/open")
    assert status == 303 and "/j/" in location
    status, body, _ = await therapist.post(f"/console/rooms/{room}/people/{alex}/link")
    assert status == 200 and len(LINK.findall(body)) == 1
    status, _, location = await therapist.post(f"/console/rooms/{room}/end")
    assert status == 303 and location == "/console?done=ended"

    actions = [(e["event"], e.get("room_id"), e.get("person_id")) for e in audit(server)
               if e.get("actor") == therapist.actor and e["event"] != "login_ok"]
    assert actions == [
        ("room_created", room, None),
        ("link_issued", room, record.therapist.id),
        ("link_issued", room, alex),
        ("room_ended", room, None),
    ]
    assert not {ALEX, SAM, ADA, PHONE} & set(json.dumps(audit(server)).split('"'))


# -- a reissued link ends the socket that joined with the old one ---------------------------


async def join(http: aiohttp.ClientSession, server: RunningServer, link: str, expect: str) -> tuple[Socket, dict[str, Any]]:
    sock = await connect(http, server)
    await sock.ws.send_json({"type": "join", "v": 1, "token": token_of(link)})
    return sock, await sock.wait(expect)


def sdp_to(peer: str, text: str) -> dict[str, Any]:
    return {"type": "sdp", "to": peer, "pc": "p1", "description": {"type": "offer", "sdp": text}}


async def test_a_reissued_link_ends_the_socket_that_joined_with_the_old_one(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    therapist = await staff(http, server, "drada", "therapist")
    booked = await book(therapist, server)
    async with aiohttp.ClientSession() as ws_http:
        doctor, welcome = await join(ws_http, server, booked.links[0], "welcome")
        alex, waiting = await join(ws_http, server, booked.links[1], "waiting")
        sam, _ = await join(ws_http, server, booked.links[2], "waiting")
        alex_id, doctor_id = waiting["you"]["id"], welcome["you"]["id"]
        sam_id = booked.partner_ids[1]
        for partner in (alex_id, sam_id):
            await doctor.ws.send_json({"type": "admit", "participant": partner})
        await alex.wait("welcome")
        await sam.wait("welcome")
        await alex.ws.send_json(sdp_to(doctor_id, "before"))
        assert (await doctor.wait("sdp"))["description"]["sdp"] == "before"

        status, body, _ = await therapist.post(f"/console/rooms/{booked.room_id}/people/{alex_id}/link")
        assert status == 200
        new_link = LINK.findall(body)[0]

        bye = await alex.wait("bye")
        assert (bye["reason"], bye["action"]) == ("link_revoked", "none")
        assert alex.reader is not None
        await alex.reader
        assert alex.ws.close_code == 4012
        for other in (doctor, sam):
            await other.wait("presence", peer=alex_id, state="left")
        hub = server.app[SIGNALING].hub
        assert alex_id not in hub.rooms[booked.room_id].members
        # Whatever the old socket still sends reaches no one: it is closed, and nobody got it.
        if not alex.ws.closed:
            await alex.ws.send_json(sdp_to(doctor_id, "after"))
        for peer in (doctor, sam):
            await peer.exchange(json.dumps({"type": "ping", "t": 1}), 1.0)
        assert [m["description"]["sdp"] for m in doctor.received if m["type"] == "sdp"] == ["before"]
        assert not [m for m in sam.received if m["type"] == "sdp"]
        # The old link is refused; the new one comes in through the waiting room.
        again, refused = await join(ws_http, server, booked.links[1], "error")
        assert refused["code"] == "link_revoked"
        fresh, waiting = await join(ws_http, server, new_link, "waiting")
        assert waiting["you"]["id"] == alex_id
        await doctor.wait("lobby", waiting=[{"id": alex_id, "name": ALEX}])
        for sock in (doctor, sam, again, fresh):
            await sock.ws.close()
