"""Mounts everything under web/: the templates, the pages (web/pages.py), the network check's
endpoints (web/netcheck.py), the console (web/console.py) and the static files. The ops
dashboard mounts itself (web/ops.py), since it needs the live parts too."""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from web import console, netcheck, pages

HERE = Path(__file__).parent


def asset(name: str) -> str:
    return f"/static/{name}"


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["asset"] = asset

    app.router.add_get("/", pages.home)
    app.router.add_get("/j/{token}", pages.room_page)
    netcheck.setup(app)
    console.setup(app)
    app.router.add_static("/static/", HERE / "static")
