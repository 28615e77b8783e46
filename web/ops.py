"""The operations dashboard: every live room's health, its disruptions, and past sessions.

For ops staff only: a signed-in account with the role "ops" (therapists get 403, strangers
the sign-in page). The login is the console's (same accounts, same Secure, HttpOnly,
SameSite=Strict session cookie, CSRF on every form, the same budget of failed attempts per
address, audited alike), with its own form so that it lands here and refuses other roles.
Every page and every live stream opened is recorded in the audit log as ``ops_access`` with
the account as actor (``u_<id>``); refused attempts too.

Routes (``setup`` mounts them; call it after ``routes.setup``, which sets up the templates;
``send_webhooks`` adds the optional ops webhooks):

- ``GET /ops``: live rooms and the latest past sessions; ops.js keeps it current from
- ``GET /ops/live``: Server-Sent Events, one JSON snapshot a second: rooms (opaque ids), each
  participant's role and state, each link's level and relay, new quality samples since the
  last event, the disruption ledger, the usable share; the past sessions when they change.
- ``GET /ops/sessions/{room_id}``: one past session: each link over the whole session, its
  ledger and usable share.
- ``GET|POST /ops/login``, ``POST /ops/logout``.

What is live comes from ``app[LIVE]`` (``signaling/live.py``), the read model the signaling
side publishes: frozen snapshots of ids, roles, levels and causes. The quality history it
reads is recorded by the wiring (``create_app``), whether or not this dashboard is mounted.

Nothing here shows a name or a phone number: people are their role and opaque id.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import aiohttp_jinja2
import msgspec
from aiohttp import web

from fallback.ledger import Disruption
from signaling.endpoint import SIGNALING
from signaling.hub import HubEvent, MemberEvent
from signaling.live import LIVE, LiveRooms, PersonView, RoomView
from telehealth import accounts, webhooks
from telehealth.appkeys import CONFIG, STORE
from telehealth.audit import AuditEvent
from telehealth.model import Person
from telehealth.requestlog import REQUEST_ID
from telehealth.store import Store
from telehealth.tokens import PersonId, RoomId
from telehealth.turn import turn_warning
from telehealth.waits import wait_at_most
from web.forms import StaffDoor, audit_path

# How often the live stream sends a snapshot; the history samples once a second too.
LIVE_INTERVAL_S = 1.0
# How often a live stream checks that its viewer is still signed in.
SESSION_CHECK_S = 15.0
PAST_SHOWN = 20
_ROOM_ID = re.compile(r"^r_[0-9a-f]{16}$")


@dataclass
class OpsState:
    live: LiveRooms
    turn_warning: str | None
    # Set at shutdown, so that open live streams end at once.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


OPS = web.AppKey("ops", OpsState)


# -- access ---------------------------------------------------------------------------------


def _audit_access(request: web.Request, session: accounts.LoginSession, *, allowed: bool,
                  room_id: str | None = None) -> None:
    detail: dict[str, object] = {"method": request.method, "path": audit_path(request),
                                 "request_id": REQUEST_ID.get(), "role": session.user.role}
    if not allowed:
        detail["reason"] = "forbidden"
    request.app[STORE].audit.append(AuditEvent.OPS_ACCESS, room_id=room_id,
                                    actor=f"u_{session.user.id}", detail=detail)


def _forbidden(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template("error.html", request, {
        "title": "Not for this account",
        "message": "The operations dashboard is for operations staff. "
                   "Sign in with an operations account to see it.",
        "code": "forbidden",
    }, status=403)


def _ops_session(request: web.Request, room_id: str | None = None) -> accounts.LoginSession | web.Response:
    """The viewer's session if they may see ops pages (audited either way), else the answer."""
    session = DOOR.session(request)
    if session is None:
        raise web.HTTPSeeOther("/ops/login")
    if session.user.role != "ops":
        _audit_access(request, session, allowed=False, room_id=room_id)
        return _forbidden(request)
    _audit_access(request, session, allowed=True, room_id=room_id)
    return session


# -- login ----------------------------------------------------------------------------------


DOOR = StaffDoor(role="ops", template="ops_login.html", home="/ops", login_path="/ops/login",
                 wrong_role="This account cannot open the operations dashboard.")


async def login_form(request: web.Request) -> web.StreamResponse:
    return await DOOR.login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    return await DOOR.login(request)


async def logout(request: web.Request) -> web.StreamResponse:
    session = DOOR.session(request)
    if session is None:
        raise web.HTTPSeeOther("/ops/login")
    await DOOR.checked_form(request, session)
    raise DOOR.leave(request, session)


# -- what the dashboard shows ---------------------------------------------------------------


def person_label(person: Person | PersonView) -> str:
    """How a person appears to ops: their role, never their name."""
    return "Therapist" if person.role == "therapist" else f"Partner {person.ordinal}"


def _labels(people: Collection[Person | PersonView]) -> dict[str, str]:
    return {person.id: person_label(person) for person in people}


def _link_label(key: str, labels: dict[str, str]) -> str:
    a, b = key.split("|")
    first, second = sorted((labels.get(a, a), labels.get(b, b)), key=_label_order)
    return f"{first} – {second}"


def _label_order(label: str) -> tuple[int, str]:
    """The therapist (and their links) first, then partners in order."""
    return (0 if label.startswith("Therapist") else 1, label)


def _people(room: RoomView) -> list[dict[str, Any]]:
    return [{"id": person.id, "role": person.role, "label": person_label(person), "state": person.state,
             "level": person.level, "flow": person.flow, "video": person.video} for person in room.people]


def _links(room: RoomView, labels: dict[str, str]) -> list[dict[str, Any]]:
    links = [{"key": link.key, "label": _link_label(link.key, labels), "level": link.level, "relay": link.relay}
             for link in room.links]
    return sorted(links, key=lambda link: _label_order(link["label"]))


def live_rooms(live: LiveRooms, cursor: dict[RoomId, float]) -> list[dict[str, Any]]:
    """Every live room as the dashboard shows it, with the samples taken after ``cursor``
    (which it moves on): ids, roles, states and levels only."""
    rooms = []
    views = live.rooms(cursor)
    for room in views:
        labels = _labels(room.people)
        if room.times:
            cursor[room.id] = room.times[-1]
        rooms.append({
            "id": room.id, "opened": room.opened, "locked": room.locked,
            "started_at": room.started_at,
            "people": _people(room),
            "links": _links(room, labels),
            "link_labels": dict(sorted(((key, _link_label(key, labels)) for key in room.link_keys),
                                       key=lambda kv: _label_order(kv[1]))),
            "usable": room.usable,
            "session_s": room.session_s,
            "samples": {"times": [round(t, 1) for t in room.times],
                        "links": {key: list(codes) for key, codes in room.samples}},
            "ledger": msgspec.to_builtins(room.ledger),
            "people_labels": labels,
        })
    for gone in set(cursor) - {room.id for room in views}:
        del cursor[gone]
    return rooms


def past_rows(store: Store, live: LiveRooms, limit: int = PAST_SHOWN) -> list[dict[str, Any]]:
    rows = []
    for past in live.past(limit=limit):
        ledger = json.loads(store.load_ledger(past.room_id) or "[]")
        rows.append({
            "id": past.room_id, "started_at": past.started_at, "ended_at": past.ended_at,
            "session_s": past.session_s, "usable": past.usable_share,
            "disruptions": len({row["disruption"] for row in ledger}),
        })
    return rows


# -- pages ----------------------------------------------------------------------------------


def utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def minutes(seconds: float) -> str:
    return f"{round(seconds)} s" if seconds < 60 else f"{round(seconds / 60)} min"


def share(value: float | None) -> str:
    """A share as a whole percent, rounded down so that 100% means every moment."""
    return "—" if value is None else f"{int(value * 100)}%"



async def dashboard(request: web.Request) -> web.StreamResponse:
    session = _ops_session(request)
    if isinstance(session, web.Response):
        return session
    state = request.app[OPS]
    return aiohttp_jinja2.render_template("ops.html", request, {
        "user": session.user, "csrf": session.csrf, "turn_warning": state.turn_warning,
        "past": past_rows(request.app[STORE], state.live),
        "window_s": state.live.window_s,
    })


async def live(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: a snapshot every LIVE_INTERVAL_S until the viewer goes or signs out."""
    session = DOOR.session(request)
    if session is None:
        raise web.HTTPUnauthorized(text="Sign in to see the dashboard.")
    if session.user.role != "ops":
        _audit_access(request, session, allowed=False)
        raise web.HTTPForbidden(text="The dashboard is for operations staff.")
    _audit_access(request, session, allowed=True)
    state, sig, store = request.app[OPS], request.app[SIGNALING], request.app[STORE]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    cursor: dict[RoomId, float] = {}
    past_seen = -1
    checked_at = time.monotonic()
    try:
        await response.write(b"retry: 2000\n\n")
        while not state.stopping.is_set():
            if time.monotonic() - checked_at > SESSION_CHECK_S:
                checked_at = time.monotonic()
                if DOOR.session(request) is None:
                    await response.write(b"event: signed_out\ndata: {}\n\n")
                    break
            snapshot: dict[str, Any] = {"now": sig.clock(), "rooms": live_rooms(state.live, cursor)}
            if state.live.saved != past_seen:
                past_seen = state.live.saved
                snapshot["past"] = past_rows(store, state.live)
            await response.write(b"data: " + msgspec.json.encode(snapshot) + b"\n\n")
            await wait_at_most(state.stopping, LIVE_INTERVAL_S)
    except ConnectionError:
        pass  # the viewer went away
    return response


async def past_session(request: web.Request) -> web.StreamResponse:
    room_id = request.match_info["room_id"]
    session = _ops_session(request, room_id if _ROOM_ID.match(room_id) else None)
    if isinstance(session, web.Response):
        return session
    state, store = request.app[OPS], request.app[STORE]
    past = state.live.past_session(room_id)
    record = store.get_room(room_id) if past is not None else None
    if past is None or record is None:
        raise web.HTTPNotFound()
    labels = _labels(record.people)
    ledger = json.loads(store.load_ledger(room_id) or "[]")
    data = {
        "id": past.room_id, "started_at": past.started_at, "ended_at": past.ended_at,
        "usable": past.usable_share, "session_s": past.session_s,
        "links": [{"key": key, "label": _link_label(key, labels), "points": points}
                  for key, points in sorted(past.links.items(),
                                            key=lambda kv: _label_order(_link_label(kv[0], labels)))],
        "ledger": ledger, "people_labels": labels,
    }
    return aiohttp_jinja2.render_template("ops_session.html", request, {
        "user": session.user, "csrf": session.csrf, "past": past, "data": data,
        "people": [(person_label(p), p.id) for p in sorted(record.people, key=lambda x: x.ordinal)],
    })


# -- webhooks -------------------------------------------------------------------------------


class WebhookFeed:
    """Turns hub and watch events into ops webhooks. Remembers each person's room and role
    from the hub's events, since a disruption record carries only the person."""

    def __init__(self, hooks: webhooks.OpsWebhooks, clock: Callable[[], float]) -> None:
        self.hooks = hooks
        self.clock = clock
        self.people: dict[PersonId, tuple[RoomId, str]] = {}

    def on_hub_event(self, event: HubEvent) -> None:
        if isinstance(event, MemberEvent):
            self.people[event.person_id] = (event.room_id, event.role)
        elif event.kind == "opened":
            self.hooks.emit(webhooks.room_started(event.room_id, event.at))
        elif event.kind in ("ended", "closed"):
            self.hooks.emit(webhooks.room_ended(event.room_id, event.at, event.kind))
            for person in [p for p, (room, _) in self.people.items() if room == event.room_id]:
                del self.people[person]

    def on_disruption(self, record: Disruption) -> None:
        room_id, role = self.people.get(record.person, (None, None))
        if room_id is None:
            return
        self.hooks.emit(webhooks.disruption(
            room_id, record.person, role, record.cause.value, record.started_at, record.ended_at,
            record.outcome.value if record.outcome else None, [s.step.value for s in record.steps]))

    def on_phone(self, room_id: RoomId, therapist: Person, callee: Person) -> None:
        self.hooks.emit(webhooks.phone_fallback(room_id, callee.id, therapist.id, self.clock()))


# -- wiring ---------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """Mount the dashboard. It reads the live rooms through ``app[LIVE]`` (the wiring records
    the quality history whether or not the dashboard is mounted)."""
    state = app[OPS] = OpsState(app[LIVE], turn_warning(app[CONFIG]))
    aiohttp_jinja2.get_env(app).filters.update(utc=utc, minutes=minutes, share=share)

    app.router.add_get("/ops", dashboard, name="ops-dashboard")
    app.router.add_get("/ops/live", live, name="ops-live")
    app.router.add_get("/ops/sessions/{room_id}", past_session, name="ops-session")
    app.router.add_get("/ops/login", login_form, name="ops-login")
    app.router.add_post("/ops/login", login)
    app.router.add_post("/ops/logout", logout, name="ops-logout")

    async def stop_streams(app: web.Application) -> None:
        state.stopping.set()

    app.on_shutdown.append(stop_streams)


def send_webhooks(app: web.Application, hooks: webhooks.OpsWebhooks) -> None:
    """Send ops webhooks for the app's rooms: started, ended, disruptions, phone fallbacks."""
    sig = app[SIGNALING]
    watch = sig.watch
    feed = WebhookFeed(hooks, sig.clock)
    sig.event_sinks.append(feed.on_hub_event)
    watch.disruption_listeners.append(feed.on_disruption)
    watch.phone_listeners.append(feed.on_phone)
    app.cleanup_ctx.append(hooks.running)
