"""Running the app: event loop, TLS, signals. Ctrl-C shuts down cleanly via aiohttp."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from telehealth import logs
from telehealth.app import create_app
from telehealth.config import Config
from telehealth.tls import self_signed, server_context
from telehealth.turn import turn_warning

log = logging.getLogger("telehealth")


def tune_runtime() -> None:
    """The event loop and interpreter settings the server runs with (the benchmarks' relay too)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def serve(config: Config) -> None:
    logs.configure(config.log_level)
    ssl_context = None
    if config.tls_cert and config.tls_key:
        ssl_context = server_context(config.tls_cert, config.tls_key)
    elif config.tls_self_signed:
        ssl_context = server_context(*self_signed(config.data_dir / "tls", config.host))
    tune_runtime()
    app = create_app(config)
    warning = turn_warning(config)  # raises for a TURN setup that cannot work
    if warning:
        log.warning(warning)
    log.info("telehealth listening on %s (data in %s)", config.public_base_url, config.data_dir)
    web.run_app(app, host=config.host, port=config.port, ssl_context=ssl_context,
                print=None, access_log=None, shutdown_timeout=5.0)
