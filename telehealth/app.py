"""Wiring: ``create_app(config)`` builds the aiohttp application from its parts.

This is the only place where the core imports the outer packages (web, signaling, fallback,
media); everything else points inward.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from telehealth.config import Config
from telehealth.store import Store

log = logging.getLogger("telehealth")

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
# /readyz fails when the background loop (grace windows, ended rooms) has not run for this long.
READY_STALE_SECONDS = 5.0


def create_app(config: Config, *, clock: Callable[[], float] = time.time) -> web.Application:
    from signaling.endpoint import SIGNALING, Signaling, expire_loop, websocket_handler
    from signaling.hub import RoomHub
    from web import pages

    store = Store.open(config.data_dir, config.key_path)
    app = web.Application(middlewares=[pages.security_headers])
    app[CONFIG] = config
    app[STORE] = store
    sig = Signaling(config=config, store=store, hub=RoomHub(grace_seconds=config.grace_seconds), clock=clock)
    app[SIGNALING] = sig

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        problems = []
        try:
            store.check_writable()
        except Exception:
            problems.append("store not writable")
        if time.monotonic() - sig.last_tick > READY_STALE_SECONDS:
            problems.append("background loop stale")
        return web.json_response({"status": "not ready" if problems else "ready", "problems": problems},
                                 status=503 if problems else 200)

    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    pages.setup(app)

    async def background(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(expire_loop(sig))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def on_shutdown(app: web.Application) -> None:
        # Tell every participant to resume once we are back; give the writers a moment.
        sig.deliver(sig.hub.close_all(clock()))
        deadline = time.monotonic() + 2.0
        while sig.sockets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def on_cleanup(app: web.Application) -> None:
        store.close()

    app.cleanup_ctx.append(background)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
