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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

import aiohttp_jinja2
from aiohttp import web

from signaling.endpoint import SIGNALING
from telehealth import accounts, mail, rooms
from telehealth.appkeys import CONFIG, MAIL, STORE
from telehealth.audit import AuditEvent
from telehealth.errors import MESSAGES, ErrorCode, TelehealthError, UserError
from telehealth.model import Person, RoomRecord
from telehealth.requestlog import REQUEST_ID
from telehealth.tokens import PersonId
from web.forms import SignedIn, StaffDoor, audit_path, field
from web.pages import iso_utc, plain_time, zone


@dataclass(frozen=True, slots=True)
class MailRow:
    """Where one person's email stands, in the console's words."""

    person_id: str
    name: str
    state: str  # queued, sent, failed
    text: str
    can_resend: bool


@dataclass(frozen=True, slots=True)
class RoomRow:
    """One line of the console's room list."""

    id: str
    time_words: str
    time_iso: str
    minutes: int | None
    partners: tuple[tuple[str, str], ...]  # (person id, name)
    status: str
    ended: bool
    mail: tuple[MailRow, ...]


def mail_rows(record: RoomRecord, deliveries: Mapping[PersonId, mail.Delivery],
              tz: datetime.tzinfo) -> tuple[MailRow, ...]:
    rows = []
    for person in record.people:
        delivery = deliveries.get(person.id)
        if delivery is not None:
            label = "You" if person.role == "therapist" else person.name
            rows.append(MailRow(person.id, label, delivery.state, mail_words(delivery, tz),
                                delivery.state == "failed" and delivery.held))
    return tuple(rows)


def mail_words(delivery: mail.Delivery, tz: datetime.tzinfo) -> str:
    """ "sent 14:02", "failed: mailbox unavailable — copy the link instead", ... """
    if delivery.state == "sent" and delivery.sent_at is not None:
        return f"sent {datetime.datetime.fromtimestamp(delivery.sent_at, tz):%H:%M}"
    if delivery.state == "failed":
        why = delivery.reason.words if delivery.reason else "not sent"
        return f"failed: {why} — copy the link instead"
    if delivery.reason is not None:
        return f"not sent yet ({delivery.reason.words}), trying again"
    return "sending…"


def _require_session(request: web.Request) -> accounts.LoginSession:
    """A signed-in therapist; any other role is refused (audited) before anything is read."""
    session = DOOR.session(request)
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


# -- login ----------------------------------------------------------------------------------


DOOR = StaffDoor(role="therapist", template="console_login.html", home="/console", login_path="/console/login",
                 wrong_role="This account cannot open the console. Operations staff sign in at /ops.")


async def login_form(request: web.Request) -> web.StreamResponse:
    return await DOOR.login_form(request)


def _timezone(signed: SignedIn) -> str:
    tz_name = field(signed.form, "timezone")
    return tz_name if _valid_zone(tz_name) else "UTC"


async def login(request: web.Request) -> web.StreamResponse:
    return await DOOR.login(request, timezone=_timezone)


def _valid_zone(name: str) -> bool:
    return bool(name) and len(name) < 64 and zone(name) is not datetime.UTC


async def logout(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    await DOOR.checked_form(request, session)
    raise DOOR.leave(request, session)


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
    listed = [r for r in rooms.list_rooms(store, since=now - link_days) if r.id in owned]
    deliveries = mail.MailOutbox(store).deliveries([r.id for r in listed])
    for record in listed:
        when = record.starts_at or record.created_at
        day = datetime.datetime.fromtimestamp(when, tz).date()
        if day < today:
            continue
        row = RoomRow(
            id=record.id,
            time_words=plain_time(when, now, tz),
            time_iso=iso_utc(when),
            minutes=record.minutes,
            partners=tuple((p.id, p.name) for p in record.partners),
            status=_status(record, record.id in live),
            ended=record.ended_at is not None,
            mail=mail_rows(record, deliveries, tz),
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
    values = dict.fromkeys(FORM_FIELDS, "")
    values["therapist"] = session.user.display_name
    values["starts_at"] = _default_time(tz, time.time())
    values["minutes"] = str(request.app[CONFIG].session_minutes)
    if form is not None:
        values.update({k: field(form, k) for k in FORM_FIELDS})
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


FORM_FIELDS = ("therapist", "therapist_email", "partner1", "phone1", "email1", "partner2", "phone2",
               "email2", "starts_at", "minutes")


def _parse_local_time(value: str, tz: datetime.tzinfo) -> float:
    try:
        local = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M")
        return local.replace(tzinfo=tz).timestamp()
    except (ValueError, OverflowError):
        raise UserError(ErrorCode.INVALID_MESSAGE, "Please give the session's date and time.") from None


def _parse_minutes(value: str, default: int) -> int:
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(ErrorCode.INVALID_MESSAGE, "Please give the session's length in minutes.") from None


async def create(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    form = await DOOR.checked_form(request, session)
    config, store = request.app[CONFIG], request.app[STORE]
    now = time.time()
    try:
        partners = [rooms.PartnerSpec(field(form, "partner1"), field(form, "phone1") or None,
                                      field(form, "email1") or None)]
        if field(form, "partner2") or field(form, "phone2") or field(form, "email2"):
            partners.append(rooms.PartnerSpec(field(form, "partner2"), field(form, "phone2") or None,
                                              field(form, "email2") or None))
        starts_at = _parse_local_time(field(form, "starts_at"), zone(session.timezone))
        created = rooms.create_room(
            store, therapist=field(form, "therapist"), partners=partners,
            base_url=config.public_base_url, link_ttl=config.link_ttl_seconds, now=now,
            starts_at=starts_at, minutes=_parse_minutes(field(form, "minutes"), config.session_minutes),
            overrun_s=config.link_overrun_seconds, therapist_email=field(form, "therapist_email") or None,
            phone_region=config.phone_region, actor=_actor(session),
        )
    except UserError as exc:
        return _dashboard(request, session, error=exc.detail, form=form, status=400)
    accounts.record_owner(store, created.room_id, session.user)
    record = store.get_room(created.room_id)
    if record is None:
        raise web.HTTPInternalServerError()
    if mail.queue_links(store, record, created.links, config, now):
        request.app[MAIL].wake()
    tz = zone(session.timezone)
    return _links_page(request, session, record, created.links, status=201, title="Session created",
                       lead=f"The session is set for {plain_time(starts_at, now, tz)}, for "
                            f"{record.minutes} minutes. Send each person their own link; each link "
                            "works only for that person.")


def _links_page(request: web.Request, session: accounts.LoginSession, record: RoomRecord,
                urls: Mapping[PersonId, str], *, title: str, lead: str, status: int = 200) -> web.Response:
    deliveries = mail.MailOutbox(request.app[STORE]).deliveries([record.id])
    tz = zone(session.timezone)
    links = [_link(person, url, deliveries.get(person.id), tz)
             for person in record.people if (url := urls.get(person.id))]
    therapist_link = urls.get(record.therapist.id)
    return aiohttp_jinja2.render_template("console_links.html", request, {
        "user": session.user, "csrf": session.csrf, "title": title, "lead": lead, "room_id": record.id,
        "links": links, "therapist_link": therapist_link,
    }, status=status)


def _link(person: Person, url: str, delivery: mail.Delivery | None, tz: datetime.tzinfo) -> dict[str, str]:
    if person.role == "therapist":
        label, copy_label, key = "Your link (therapist)", "Copy your link", "therapist"
    else:
        label, copy_label, key = (f"Link for {person.name}", f"Copy the link for {person.name}",
                                  f"partner{person.ordinal}")
    return {"label": label, "copy_label": copy_label, "url": url, "key": key, "person_id": person.id,
            "mail_state": delivery.state if delivery else "",
            "mail_text": mail_words(delivery, tz) if delivery else ""}


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
    url = rooms.reissue_link(request.app[STORE], record, person_id, base_url=config.public_base_url,
                             link_ttl=config.link_ttl_seconds, now=now, overrun_s=config.link_overrun_seconds,
                             actor=_actor(session))
    sig.deliver(sig.hub.revoke(record.id, person_id, now))
    return url


async def open_room(request: web.Request) -> web.StreamResponse:
    """Issue the therapist a fresh link (links are stored only as hashes) and go there."""
    session = _require_session(request)
    await DOOR.checked_form(request, session)
    record = _managed_room(request, session)
    if record.ended_at is not None:
        raise web.HTTPSeeOther("/console")
    url = _reissue(request, session, record, record.therapist.id)
    raise web.HTTPSeeOther(url)


async def new_partner_link(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    await DOOR.checked_form(request, session)
    record = _managed_room(request, session)
    person = next((p for p in record.partners if p.id == request.match_info["person_id"]), None)
    if person is None or record.ended_at is not None:
        raise web.HTTPNotFound()
    config, store = request.app[CONFIG], request.app[STORE]
    now = time.time()
    url = _reissue(request, session, record, PersonId(person.id))
    emailed = bool(mail.queue_links(store, record, {person.id: url}, config, now))
    if emailed:
        request.app[MAIL].wake()
    return _links_page(request, session, record, {person.id: url}, title=f"New link for {person.name}",
                       lead=f"The old link for {person.name} no longer works. "
                            + ("We are emailing them this one." if emailed else "Send them this one."))


async def mail_state(request: web.Request) -> web.StreamResponse:
    """Where each email of a room stands, for the console to update itself."""
    session = _require_session(request)
    record = _managed_room(request, session)
    tz = zone(session.timezone)
    deliveries = mail.MailOutbox(request.app[STORE]).deliveries([record.id])
    return web.json_response({row.person_id: {"state": row.state, "text": row.text, "resend": row.can_resend}
                              for row in mail_rows(record, deliveries, tz)})


async def send_again(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    await DOOR.checked_form(request, session)
    record = _managed_room(request, session)
    person_id = request.match_info["person_id"]
    if person_id not in {p.id for p in record.people}:
        raise web.HTTPNotFound()
    if mail.MailOutbox(request.app[STORE]).send_again(person_id, time.time()):
        request.app[MAIL].wake()
    raise web.HTTPSeeOther("/console")


async def end(request: web.Request) -> web.StreamResponse:
    session = _require_session(request)
    await DOOR.checked_form(request, session)
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
    app.router.add_get("/console/rooms/{room_id}/mail", mail_state)
    app.router.add_post("/console/rooms/{room_id}/people/{person_id}/mail", send_again)
