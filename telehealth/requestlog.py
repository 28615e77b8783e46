"""Request ids, and one log line per request that never shows the path.

``middleware`` gives every request an id: the caller's ``X-Request-Id`` when it is well formed
(a proxy's, so one request can be followed across both logs), else a random one; the response
carries it back in ``X-Request-Id``. While the request is handled the id sits in a context
variable, and ``RequestIdFilter`` (installed on the log handlers) puts it on every record
logged meanwhile. A WebSocket's handler runs for the socket's whole life, so the signaling's
log lines carry the id of their socket's upgrade request.

The request's own line names the route's pattern (``/j/{token}``), never the raw path: join
URLs are credentials. It carries the method, the status and the duration, and the room id
when the route has one.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable
from contextvars import ContextVar

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("telehealth.request")

HEADER = "X-Request-Id"
# A context key, not shared state: each request's task sees its own value.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# Ids from a proxy: UUIDs, hex, base64url and the like; nothing that could forge a log line.
_WELL_FORMED = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def request_id_for(header: str | None) -> str:
    if header is not None and _WELL_FORMED.match(header):
        return header
    return secrets.token_hex(8)


def route_of(request: web.Request) -> str:
    """The matched route's pattern; "unmatched" for a request no route took."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_for(request.headers.get(HEADER))
    reset = REQUEST_ID.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[HEADER] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[HEADER] = request_id
        raise
    finally:
        _log_request(request, status, time.perf_counter() - started)
        REQUEST_ID.reset(reset)


def _log_request(request: web.Request, status: int, seconds: float) -> None:
    route = route_of(request)
    duration_ms = round(seconds * 1000, 1)
    level = logging.ERROR if status >= 500 else logging.INFO
    log.log(level, "%s %s %d %.1f ms", request.method, route, status, duration_ms, extra={
        "method": request.method, "route": route, "status": status, "duration_ms": duration_ms,
        "room_id": request.match_info.get("room_id"),
    })


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record that has none of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = REQUEST_ID.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def install(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Add the filter to ``handlers``, by default the root logger's (after logs.configure).

    A handler's filters see every record it handles, whichever logger it came from; a
    logger's own filters would miss those of its children.
    """
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
