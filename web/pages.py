"""HTTP pages: the room page behind each join link and the error pages.

Handlers parse the request, ask the core, and render; they hold no state. web/routes.py
mounts them with the rest of web/.
"""

from __future__ import annotations

import datetime
import time
import zoneinfo

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from signaling.endpoint import SIGNALING
from telehealth import rooms
from telehealth.appkeys import CONFIG, REFUSALS, STORE
from telehealth.errors import MESSAGES, ErrorCode, LinkError
from telehealth.model import Person, RoomRecord
from telehealth.origins import own_origin
from telehealth.phones import mask_phone
from telehealth.tokens import JoinLink, TooEarly

# No inline scripts or styles, nothing from elsewhere, media from this origin only (blob:
# for the generated speaker-test sound), no plugins, no framing, forms post only here. The
# pages never parse strings as HTML, so Trusted Types can forbid it outright: a DOM XSS
# sink (innerHTML and friends) throws instead of running.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; worker-src 'none'; "
    "frame-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'; manifest-src 'self'; require-trusted-types-for 'script'; "
    "trusted-types 'none'"
)

LINK_STATUS = {
    ErrorCode.BAD_LINK: 404,
    ErrorCode.TOO_EARLY: 403,
    ErrorCode.SESSION_OVER: 410,
    ErrorCode.LINK_EXPIRED: 410,
    ErrorCode.LINK_REVOKED: 410,
    ErrorCode.ROOM_ENDED: 410,
    ErrorCode.RATE_LIMITED: 429,
}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPNotFound as exc:
        response = exc if request.path.startswith("/static/") else not_found(request)
    except web.HTTPException as exc:
        response = exc
    if not response.prepared:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        headers.setdefault(
            "Permissions-Policy",
            "camera=(self), microphone=(self), speaker-selection=(self), display-capture=(), "
            "geolocation=(), payment=(), usb=()",
        )
        if request.scheme == "https":
            headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if request.path.startswith("/static/"):
            # Modules import each other by plain names, so revalidate instead of versioning.
            headers.setdefault("Cache-Control", "no-cache")
        else:
            # Join pages carry a credential in their URL and the console personal data:
            # never cache them anywhere.
            headers.setdefault("Cache-Control", "no-store")
    if isinstance(response, web.HTTPException):
        raise response
    return response


def error_page(request: web.Request, code: ErrorCode, status: int) -> web.Response:
    title = "This session has ended" if code == ErrorCode.SESSION_OVER else "This link does not work"
    return aiohttp_jinja2.render_template(
        "error.html", request, {"title": title, "message": MESSAGES[code], "code": code.value},
        status=status,
    )


def too_early_page(request: web.Request, exc: TooEarly) -> web.Response:
    """A link opened before its window: when the session is, and when to come back. The page
    says both in the reader's own zone (ui.js, from the instants); UTC without script."""
    now = time.time()
    return aiohttp_jinja2.render_template("early.html", request, {
        "starts_iso": iso_utc(exc.starts_at), "starts_words": plain_time(exc.starts_at, now),
        "opens_iso": iso_utc(exc.opens_at), "opens_words": plain_time(exc.opens_at, now),
        "opens_ms": int(exc.opens_at * 1000),
    }, status=LINK_STATUS[ErrorCode.TOO_EARLY])


def plain_time(ts: float, now: float, tz: datetime.tzinfo = datetime.UTC) -> str:
    """A session time in words: "today at 15:00 UTC", "tomorrow at 09:30 UTC",
    "Tuesday 25 November at 15:00 UTC". The page rewrites it in the reader's own time zone."""
    when = datetime.datetime.fromtimestamp(ts, tz)
    today = datetime.datetime.fromtimestamp(now, tz).date()
    clock = f"{when:%H:%M} {when.tzname()}"
    days = (when.date() - today).days
    if days == 0:
        return f"today at {clock}"
    if days == 1:
        return f"tomorrow at {clock}"
    if days == -1:
        return f"yesterday at {clock}"
    return f"{when:%A} {when.day} {when:%B} at {clock}"


def iso_utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="minutes")


def zone(name: str) -> datetime.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return datetime.UTC


def checked_link(request: web.Request) -> tuple[JoinLink, RoomRecord, Person]:
    """The request's link, its room and person; raises LinkError when it lets no one in."""
    return rooms.open_link(
        request.app[STORE], request.match_info["token"], now=time.time(),
        lead_s=request.app[CONFIG].link_lead_seconds, limits=request.app[SIGNALING].link_limits,
        address=request.remote or "?", refusals=request.app[REFUSALS], actor="web")


async def room_page(request: web.Request) -> web.StreamResponse:
    try:
        _, record, person = checked_link(request)
    except TooEarly as exc:
        return too_early_page(request, exc)
    except LinkError as exc:
        return error_page(request, exc.code, LINK_STATUS.get(exc.code, 400))
    now = time.time()
    context = {
        "role": person.role,
        "me": person.name,
        "therapist": record.therapist.name,
        "partners": [p.name for p in record.partners],
        "starts_at": record.starts_at,
        "starts_iso": iso_utc(record.starts_at) if record.starts_at else "",
        "starts_ms": int(record.starts_at * 1000) if record.starts_at else "",
        "starts_words": plain_time(record.starts_at, now) if record.starts_at else "",
        "grace_s": request.app[CONFIG].grace_seconds,
        # The masked number the therapist would call, for the partner to confirm or correct.
        "phone_hint": mask_phone(person.phone) if person.phone else "",
    }
    template = "therapist.html" if person.role == "therapist" else "partner.html"
    return aiohttp_jinja2.render_template(template, request, context)


def same_origin(request: web.Request) -> bool:
    """Whether a POST comes from a page of this site.

    Browsers say so in Sec-Fetch-Site. Origin is the fallback for browsers without it; with
    our no-referrer policy a same-site form sends ``Origin: null``, so "null" proves nothing
    either way and only a foreign origin is refused (the CSRF token still has to match).
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    return own_origin(request, request.app[CONFIG].public_base_url, null=True)


def json_error(code: ErrorCode, status: int, message: str | None = None) -> web.Response:
    return web.json_response(
        {"code": code.value, "message": message or MESSAGES.get(code, code.value)}, status=status
    )


async def home(request: web.Request) -> web.StreamResponse:
    return aiohttp_jinja2.render_template("home.html", request, {})


def not_found(request: web.Request) -> web.Response:
    return aiohttp_jinja2.render_template(
        "error.html", request,
        {"title": "Page not found", "message": "There is nothing at this address.", "code": "not_found"},
        status=404,
    )

