"""HTTP pages: the join link page and the human error pages.

Handlers parse the request, ask the core, and render; they hold no state.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from telehealth.app import STORE
from telehealth.errors import MESSAGES, ErrorCode, LinkError
from telehealth.tokens import check_link, hash_token, well_formed

HERE = Path(__file__).parent

# No inline scripts or styles, nothing from elsewhere, media from this origin only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)

LINK_STATUS = {
    ErrorCode.BAD_LINK: 404,
    ErrorCode.LINK_EXPIRED: 410,
    ErrorCode.LINK_REVOKED: 410,
    ErrorCode.ROOM_ENDED: 410,
}


@web.middleware
async def security_headers(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    if not response.prepared:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Permissions-Policy", "camera=(self), microphone=(self), geolocation=()")
        # Join pages carry a credential in their URL: never cache them anywhere.
        if request.path.startswith("/j/"):
            response.headers.setdefault("Cache-Control", "no-store")
    if isinstance(response, web.HTTPException):
        raise response
    return response


def error_page(request: web.Request, code: ErrorCode, status: int) -> web.Response:
    return aiohttp_jinja2.render_template(
        "error.html", request, {"title": "This link does not work", "message": MESSAGES[code], "code": code.value},
        status=status,
    )


async def join_page(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    token = request.match_info["token"]
    try:
        link = check_link(store.find_link(hash_token(token)) if well_formed(token) else None, time.time())
    except LinkError as exc:
        return error_page(request, exc.code, LINK_STATUS.get(exc.code, 400))
    return aiohttp_jinja2.render_template("join.html", request, {"role": link.role})


async def home(request: web.Request) -> web.StreamResponse:
    return aiohttp_jinja2.render_template("home.html", request, {})


async def not_found(request: web.Request) -> web.StreamResponse:
    return aiohttp_jinja2.render_template(
        "error.html", request,
        {"title": "Page not found", "message": "There is nothing at this address.", "code": "not_found"},
        status=404,
    )


def setup(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    app[aiohttp_jinja2.static_root_key] = "/static"
    app.router.add_get("/", home)
    app.router.add_get("/j/{token}", join_page)
    app.router.add_static("/static/", HERE / "static", append_version=True)
