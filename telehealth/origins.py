"""Whether a request comes from a page of this site: one rule for the pages' forms and the
signaling WebSocket (web/pages.py ``same_origin``, signaling/endpoint.py ``origin_allowed``)."""

from __future__ import annotations

from aiohttp import web


def own_origin(request: web.BaseRequest, public_base_url: str, *, null: bool) -> bool:
    """Whether the request's ``Origin`` header names this site: the configured public address
    or the address the request came to. No ``Origin`` at all passes (programs, and browsers
    that send none); ``Origin: null`` passes only when ``null`` is true (a form under our
    no-referrer policy sends it; a WebSocket from our own page never does)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin == "null":
        return null
    return origin.rstrip("/") in {public_base_url, f"{request.scheme}://{request.host}"}
