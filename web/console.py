"""The staff console: log in, create a session room, copy its links, find today's rooms.

For therapists only, and each sees and acts on only the rooms they created (``room_owners``).
An ops account is refused at sign-in and on every route (a 403 page, nothing changed): ops
never see a name, a number or a session, only the ops dashboard. A therapist acting on a room
they do not own gets the same 403. Every action (create, open, new link, end) and every
refusal is audited with the account (``u_<id>``) and the room, ids only.

Plain HTML forms (they work without JavaScript; console.js only adds copy buttons and the
time zone). Every form carries a CSRF token, every POST must come from this origin, and the
login cookie is Secure, HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from signaling.endpoint import SIGNALING
from telehealth import accounts, rooms
from telehealth.app import CONFIG, STORE
from telehealth.audit import AuditEvent
from telehealth.errors import MESSAGES, ErrorCode, TelehealthError, UserError
from telehealth.requestlog import REQUEST_ID
from telehealth.store import RoomRecord
from telehealth.tokens import PersonId
from web.forms import SignedIn, audit_path, enter, field, login_page, read_form, refuse_role, sign_in
from web.pages import iso_utc, plain_time, same_origin, zone

# "__Host-": the browser only accepts it Secure, from this host, for path "/".
SESSION_COOKIE = "__Host-telehealth-console"


@dataclass(frozen=True, slots=True)
class RoomRow:
    """One line of the console's room list."""

    id: str
    time_words: str
    time_iso: str
    partners: tuple[tuple[str, str], ...]  # (person id, name)
    status: str
    ended: bool


def _session(request: web.Request) -> accounts.LoginSession | None:
    token = request.cookies.get(SESSION_COOKIE, "")
    return accounts.find_session(request.app[STORE], token, now=time.time()) if token else None


def _require_session(request: web.Request) -> accounts.LoginSession:
    """A signed-in therapist; any other role is refused (audited) before anything is read."""
    session = _session(request)
    if session is None:
        raise web.HTTPSeeOther("/console/login")
    if session.user.role != "therapist":
        room_id = request.match_info.get("room_id", "")
        _refuse(request, session, "forbidden", room_id if request.app[STORE].get_room(room_id) else None)
    return session


def _refuse(request: web.Request, session: accounts.LoginSession, reason: str, room_id: str | None) -> NoReturn:
    request.app[STORE].audit.append(AuditEvent.ACCESS_REFUSED, room_id=room_id, actor=_actor(session), detail={
        "reason": reason, "role": session.user.role, "method": request.method, "path": audit_path(request),
        "request_id": REQUEST_ID.get()})
    message = ("This session belongs to another therapist's console." if reason == "not_owner" else
               "The console is for therapists. Operations staff use the operations dashboard.")
    page = aiohttp_jinja2.render_string("error.html", request, {
        "title": "Not for this account", "message": message, "code": "forbidden"})
    raise web.HTTPForbidden(text=page, content_type="text/html")


def _actor(session: accounts.LoginSession) -> str:
    return f"u_{session.user.id}"


async def _checked_form(request: web.Request, session: accounts.LoginSession) -> MultiDictProxy[str]:
    """The posted form, once it is known to come from this site and this session."""
    if not same_origin(request):
        raise web.HTTPForbidden(text="This form may only be sent from this site.")
    form = await read_form(request)
    csrf = form.get("csrf")
    if not isinstance(csrf, str) or not accounts.csrf_matches(session.token, csrf):
        raise web.HTTPForbidden(text="This form has expired. Go back, reload the page and try again.")
    return form  # type: ignore[return-value]


# -- login ----------------------------------------------------------------------------------


_login_page = functools.partial(login_page, "console_login.html")


async def login_form(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    if session is not None and session.user.role == "therapist":
        raise web.HTTPSeeOther("/console")
    return _login_page(request)


async def login(request: web.Request) -> web.StreamResponse:
    signed = await sign_in(request, _login_page)
    if not isinstance(signed, SignedIn):
        return signed
    if signed.user.role != "therapist":
        return refuse_role(request, signed, _login_page,
                           "This account cannot open the console. Operations staff sign in at /ops.")
    tz_name = field(signed.form, "timezone")
    raise enter(request, signed, SESSION_COOKIE, "/console",
                timezone=tz_name if _valid_zone(tz_name) else "UTC")


def _valid_zone(name: str) -> bool:
    return bool(name) and len(name) < 64 and zone(name) is not datetime.UTC


async def logout(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    await _checked_form(request, session)
    accounts.end_session(request.app[STORE], session.token)
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    raise response


# -- rooms ----------------------------------------------------------------------------------


def _room_rows(request: web.Request, session: accounts.LoginSession) -> tuple[list[RoomRow], list[RoomRow]]:
    """This user's rooms of today, and those still to come (in the user's time zone)."""
    store = request.app[STORE]
    tz = zone(session.timezone)
    now = time.time()
    today = datetime.datetime.fromtimestamp(now, tz).date()
    owned = accounts.owned_room_ids(store, session.user)
    live = request.app[SIGNALING].hub.rooms
    link_days = request.app[CONFIG].link_ttl_seconds + 86400
    todays: list[RoomRow] = []
    upcoming: list[RoomRow] = []
    for record in rooms.list_rooms(store, since=now - link_days):
        if record.id not in owned:
            continue
        when = record.starts_at or record.created_at
        day = datetime.datetime.fromtimestamp(when, tz).date()
        if day < today:
            continue
        row = RoomRow(
            id=record.id,
            time_words=plain_time(when, now, tz),
            time_iso=iso_utc(when),
            partners=tuple((p.id, p.name) for p in record.partners),
            status=_status(record, record.id in live),
            ended=record.ended_at is not None,
        )
        (todays if day == today else upcoming).append(row)
    todays.sort(key=lambda r: r.time_iso)
    upcoming.sort(key=lambda r: r.time_iso)
    return todays, upcoming


def _status(record: RoomRecord, live: bool) -> str:
    if record.ended_at is not None:
        return "Ended"
    if live:
        return "In progress"
    return "Not started"


def _default_time(tz: datetime.tzinfo, now: float) -> str:
    """The next half hour, as a datetime-local value."""
    at = datetime.datetime.fromtimestamp(now, tz).replace(second=0, microsecond=0)
    at += datetime.timedelta(minutes=30 - at.minute % 30)
    return at.strftime("%Y-%m-%dT%H:%M")


def _dashboard(
    request: web.Request, session: accounts.LoginSession, *, error: str = "",
    form: Mapping[str, object] | None = None, notice: str = "", status: int = 200,
) -> web.Response:
    tz = zone(session.timezone)
    values = dict.fromkeys(("partner1", "phone1", "partner2", "phone2"), "")
    values["therapist"] = session.user.display_name
    values["starts_at"] = _default_time(tz, time.time())
    if form is not None:
        values.update({k: field(form, k) for k in (
            "therapist", "partner1", "phone1", "partner2", "phone2", "starts_at")})
    todays, upcoming = _room_rows(request, session)
    return aiohttp_jinja2.render_template("console.html", request, {
        "user": session.user, "csrf": session.csrf, "rooms": todays, "upcoming": upcoming,
        "error": error, "values": values, "notice": notice, "timezone": session.timezone,
    }, status=status)


async def dashboard(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    notice = {"ended": "The session has ended and its links no longer work."}.get(
        request.query.get("done", ""), "")
    return _dashboard(request, session, notice=notice)


def _parse_local_time(value: str, tz: datetime.tzinfo) -> float:
    try:
        local = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M")
    except ValueError:
        raise UserError(ErrorCode.INVALID_MESSAGE, "Please give the session's date and time.") from None
    return local.replace(tzinfo=tz).timestamp()


async def create(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    form = await _checked_form(request, session)
    config, store = request.app[CONFIG], request.app[STORE]
    now = time.time()
    try:
        partners = [rooms.PartnerSpec(field(form, "partner1"), field(form, "phone1") or None)]
        if field(form, "partner2") or field(form, "phone2"):
            partners.append(rooms.PartnerSpec(field(form, "partner2"), field(form, "phone2") or None))
        starts_at = _parse_local_time(field(form, "starts_at"), zone(session.timezone))
        created = rooms.create_room(
            store, therapist=field(form, "therapist"), partners=partners,
            base_url=config.public_base_url, link_ttl=config.link_ttl_seconds, now=now,
            starts_at=starts_at, actor=_actor(session),
        )
    except UserError as exc:
        return _dashboard(request, session, error=exc.detail, form=form, status=400)
    accounts.record_owner(store, created.room_id, session.user)
    record = store.get_room(created.room_id)
    if record is None:
        raise web.HTTPInternalServerError()
    links = [_link("Your link (therapist)", "Copy your link", created.therapist_link, "therapist")]
    links += [
        _link(f"Link for {p.name}", f"Copy the link for {p.name}", url, f"partner{i + 1}")
        for i, (p, url) in enumerate(zip(record.partners, created.partner_links))
    ]
    return aiohttp_jinja2.render_template("console_links.html", request, {
        "user": session.user, "csrf": session.csrf, "title": "Session created",
        "lead": f"The session is set for {plain_time(starts_at, now, zone(session.timezone))}. "
                "Send each person their own link; each link works only for that person.",
        "links": links, "therapist_link": created.therapist_link,
    }, status=201)


def _link(label: str, copy_label: str, url: str, key: str) -> dict[str, str]:
    return {"label": label, "copy_label": copy_label, "url": url, "key": key}


def _managed_room(request: web.Request, session: accounts.LoginSession) -> RoomRecord:
    """The room of the URL, if this therapist owns it: 404 if there is none, 403 if not theirs."""
    room_id = request.match_info["room_id"]
    record = request.app[STORE].get_room(room_id)
    if record is None:
        raise web.HTTPNotFound()
    if not accounts.owns(request.app[STORE], session.user, room_id):
        _refuse(request, session, "not_owner", record.id)
    return record


def _reissue(request: web.Request, session: accounts.LoginSession, record: RoomRecord, person_id: PersonId) -> str:
    """A new link for a person; whoever is in the room with the old one leaves it now."""
    config, sig, now = request.app[CONFIG], request.app[SIGNALING], time.time()
    url = rooms.reissue_link(request.app[STORE], record.id, person_id, base_url=config.public_base_url,
                             link_ttl=config.link_ttl_seconds, now=now, actor=_actor(session))
    sig.deliver(sig.hub.revoke(record.id, person_id, now))
    return url


async def open_room(request: web.Request) -> web.StreamResponse:
    """Issue the therapist a fresh link (links are stored only as hashes) and go there."""
    session = _require_session(request)
    await _checked_form(request, session)
    record = _managed_room(request, session)
    if record.ended_at is not None:
        raise web.HTTPSeeOther("/console")
    url = _reissue(request, session, record, record.therapist.id)
    raise web.HTTPSeeOther(url)


async def new_partner_link(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    await _checked_form(request, session)
    record = _managed_room(request, session)
    person = next((p for p in record.partners if p.id == request.match_info["person_id"]), None)
    if person is None or record.ended_at is not None:
        raise web.HTTPNotFound()
    url = _reissue(request, session, record, PersonId(person.id))
    return aiohttp_jinja2.render_template("console_links.html", request, {
        "user": session.user, "csrf": session.csrf, "title": f"New link for {person.name}",
        "lead": f"The old link for {person.name} no longer works. Send them this one.",
        "links": [_link(f"Link for {person.name}", f"Copy the link for {person.name}", url, "partner")],
        "therapist_link": None,
    })


async def end(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    await _checked_form(request, session)
    record = _managed_room(request, session)
    now = time.time()
    try:
        rooms.end_room(request.app[STORE], record.id, now=now, actor=_actor(session))
    except TelehealthError as exc:
        return _dashboard(request, session, error=MESSAGES.get(exc.code, exc.detail), status=409)
    # The server's store watcher only sees other processes' writes: tell the hub now.
    sig = request.app[SIGNALING]
    sig.deliver(sig.hub.end_room(record.id, now))
    raise web.HTTPSeeOther("/console?done=ended")


def setup(app: web.Application) -> None:
    app.router.add_get("/console", dashboard)
    app.router.add_get("/console/login", login_form)
    app.router.add_post("/console/login", login)
    app.router.add_post("/console/logout", logout)
    app.router.add_post("/console/rooms", create)
    app.router.add_post("/console/rooms/{room_id}/open", open_room)
    app.router.add_post("/console/rooms/{room_id}/people/{person_id}/link", new_partner_link)
    app.router.add_post("/console/rooms/{room_id}/end", end)
