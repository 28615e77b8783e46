"""Reading posted forms: a body that cannot be read is the sender's mistake (400), never ours."""

from __future__ import annotations

from aiohttp import web
from multidict import MultiDictProxy


async def read_form(request: web.Request) -> MultiDictProxy[str | web.FileField]:
    try:
        return await request.post()
    except ValueError:  # not UTF-8 (UnicodeDecodeError), or not a form at all
        raise web.HTTPBadRequest(text="This form could not be read. Reload the page and try again.") from None
