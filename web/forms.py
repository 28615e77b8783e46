"""Posted forms: reading them, and the staff sign-in shared by the console and the ops
dashboard (``StaffDoor``: the sign-in page and form, the session cookie, the checked form of a
signed-in person, the sign-out). A body that cannot be read is the sender's mistake (400),
never ours."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from telehealth import accounts
from telehealth.appkeys import LOGIN_LIMITS, REFUSALS, STORE
from telehealth.audit import AuditEvent
from telehealth.errors import ErrorCode, UserError
from telehealth.requestlog import route_of
from web.pages import same_origin

# A posted form as aiohttp reads it.
Form = MultiDictProxy[str | bytes | bytearray | web.FileField]
# The double-submit cookie of the sign-in forms.
LOGIN_COOKIE = "__Host-telehealth-login"
# The staff session (console and ops dashboard alike). "__Host-": the browser only accepts it
# Secure, from this host, for path "/".
SESSION_COOKIE = "__Host-telehealth-console"


async def read_form(request: web.Request) -> Form:
    try:
        return await request.post()
    except ValueError:  # not UTF-8 (UnicodeDecodeError), or not a form at all
        raise web.HTTPBadRequest(text="This form could not be read. Reload the page and try again.") from None


def login_page(template: str, request: web.Request, *, error: str = "", username: str = "",
               status: int = 200) -> web.Response:
    """A sign-in page with a fresh double-submit token in its form and in a cookie."""
    nonce = secrets.token_urlsafe(24)
    response = aiohttp_jinja2.render_template(
        template, request, {"user": None, "csrf": nonce, "error": error, "username": username}, status=status,
    )
    response.set_cookie(LOGIN_COOKIE, nonce, secure=True, httponly=True, samesite="Strict", path="/",
                        max_age=3600)
    return response


def field(form: Mapping[str, object], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


@dataclass(frozen=True)
class SignedIn:
    user: accounts.User
    username: str
    form: Form


async def sign_in(request: web.Request, render: Callable[..., web.StreamResponse]) -> SignedIn | web.StreamResponse:
    """Check a posted sign-in form end to end: same site, the double-submit token, the
    budgets of failed attempts (per address, per account and address), the password (off the
    event loop). A failure is counted for the audit log's summary and answered with
    ``render(request, error=..., username=..., status=...)``: the same answer whether or not
    the account exists."""
    if not same_origin(request):
        raise web.HTTPForbidden(text="This form may only be sent from this site.")
    form = await read_form(request)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    submitted = field(form, "csrf")
    if not nonce or not submitted.isascii() or not secrets.compare_digest(nonce, submitted):
        return render(request, error="The sign-in form had expired. Please try again.", status=400)
    username, password = field(form, "username"), form.get("password")
    store = request.app[STORE]
    # The same budgets for every sign-in form.
    limits, address = request.app[LOGIN_LIMITS], request.remote or "?"
    try:
        wait = limits.check(address, username, time.monotonic())
        if wait is not None:
            raise UserError(ErrorCode.RATE_LIMITED,
                            f"Too many attempts. Please wait {max(1, round(wait))} seconds and try again.")
        if not isinstance(password, str):
            raise UserError(ErrorCode.FORBIDDEN, "That username and password do not match.")
        # scrypt takes tens of milliseconds of CPU: keep it off the event loop.
        user = await asyncio.to_thread(accounts.authenticate, store, username, password, now=time.time())
    except UserError as exc:
        if exc.code != ErrorCode.RATE_LIMITED:
            limits.failed(address, username, time.monotonic())
        reason, actor = accounts.login_refusal(store, username, exc)
        request.app[REFUSALS].count(AuditEvent.LOGIN_FAILED, reason, address, actor=actor)
        status = 429 if exc.code == ErrorCode.RATE_LIMITED else 401
        return render(request, error=exc.detail, username=username, status=status)
    return SignedIn(user, username, form)


def enter(request: web.Request, signed: SignedIn, cookie: str, location: str, *,
          timezone: str = "UTC") -> web.HTTPSeeOther:
    """After a good sign-in: audit it, start the session, set its cookie, drop the form's
    token, and send the person on to ``location`` (raise the result)."""
    store = request.app[STORE]
    accounts.audit_login(store, signed.user)
    session = accounts.start_session(store, signed.user, now=time.time(), timezone=timezone)
    response = web.HTTPSeeOther(location)
    response.set_cookie(cookie, session.token, secure=True, httponly=True, samesite="Strict",
                        path="/", max_age=int(accounts.SESSION_SECONDS))
    response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


def refuse_role(request: web.Request, signed: SignedIn, render: Callable[..., web.StreamResponse],
                error: str) -> web.StreamResponse:
    """The right password for an account whose role may not come here: no session, audited,
    answered 403 with ``error`` on the sign-in page."""
    user = signed.user
    request.app[STORE].audit.append(
        AuditEvent.LOGIN_FAILED, actor=f"u_{user.id}",
        detail={"reason": "forbidden", "role": user.role, "path": audit_path(request)})
    return render(request, username=signed.username, status=403, error=error)


def audit_path(request: web.Request) -> str:
    """The route as the audit log takes it: ``/ops/sessions/:room_id`` (no braces there)."""
    return re.sub(r"\{(\w+)\}", r":\1", route_of(request))


@dataclass(frozen=True, slots=True)
class StaffDoor:
    """How staff of one ``role`` get into their area at ``home`` and out again: the sign-in page
    (``template``) at ``login_path``, the session cookie, and the form checks every signed-in
    POST passes. ``wrong_role`` is what a right password for another role is told."""

    role: str
    template: str
    home: str
    login_path: str
    wrong_role: str

    def session(self, request: web.Request) -> accounts.LoginSession | None:
        """The signed-in session of the request's cookie, of any role; None without one."""
        token = request.cookies.get(SESSION_COOKIE, "")
        return accounts.find_session(request.app[STORE], token, now=time.time()) if token else None

    def page(self, request: web.Request, **kwargs: Any) -> web.Response:
        return login_page(self.template, request, **kwargs)

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request)
        if session is not None and session.user.role == self.role:
            raise web.HTTPSeeOther(self.home)
        return self.page(request)

    async def login(self, request: web.Request, *,
                    timezone: Callable[[SignedIn], str] | None = None) -> web.StreamResponse:
        signed = await sign_in(request, self.page)
        if not isinstance(signed, SignedIn):
            return signed
        if signed.user.role != self.role:
            return refuse_role(request, signed, self.page, self.wrong_role)
        raise enter(request, signed, SESSION_COOKIE, self.home,
                    **({"timezone": timezone(signed)} if timezone is not None else {}))

    async def checked_form(self, request: web.Request, session: accounts.LoginSession) -> Form:
        """The posted form, once it is known to come from this site and this session."""
        if not same_origin(request):
            raise web.HTTPForbidden(text="This form may only be sent from this site.")
        form = await read_form(request)
        csrf = form.get("csrf")
        if not isinstance(csrf, str) or not accounts.csrf_matches(session.token, csrf):
            raise web.HTTPForbidden(text="This form has expired. Go back, reload the page and try again.")
        return form

    def leave(self, request: web.Request, session: accounts.LoginSession) -> web.HTTPSeeOther:
        """Sign out: the session ends, its cookie goes, and the person is sent back to the
        sign-in (raise the result)."""
        accounts.end_session(request.app[STORE], session.token)
        response = web.HTTPSeeOther(self.login_path)
        response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response
