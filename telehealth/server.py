"""Running the app: event loop, TLS, signals. Ctrl-C shuts down cleanly via aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator

from aiohttp import web

from telehealth import logs, requestlog
from telehealth.app import create_app
from telehealth.config import Config
from telehealth.tls import self_signed, server_context
from telehealth.turn import turn_warning

log = logging.getLogger("telehealth")


# How often what is alive is moved out of the collector's way; and when one full pass reclaims
# the cyclic garbage among frozen objects: every RECLAIM_EVERY_S, or sooner if the process has
# grown RECLAIM_GROWTH times since the last pass.
FREEZE_EVERY_S = 1.0
RECLAIM_EVERY_S = 3600.0
RECLAIM_GROWTH = 4.0


def tune_runtime() -> None:
    """The event loop and interpreter settings the server runs with (the benchmarks' relay too)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


async def collector(app: web.Application) -> AsyncIterator[None]:
    """Keep Python's full garbage collections off the event loop's critical path.

    A full collection walks every live object with the loop stopped: about 90 per connected
    participant, so 0.4 s at 6,000 participants and 0.6 s at 9,000, every few seconds under
    churn, which alone breaks any latency target. Sockets and rooms live for a session, so
    every FREEZE_EVERY_S what is alive is frozen (gc.freeze: never walked again) and the
    automatic collections only walk what is younger. Frozen objects freed by reference
    counting go at once (the endpoint breaks the one cycle aiohttp leaves per connection);
    the little cyclic garbage among them waits for one full pass an hour, or sooner if the
    process has grown RECLAIM_GROWTH times.
    """
    gc.collect()
    gc.freeze()
    task = asyncio.create_task(_freeze_loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gc.unfreeze()


def _resident_bytes() -> int | None:
    # Not gc.get_freeze_count(): it walks the whole frozen list, a stall of its own.
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


async def _freeze_loop() -> None:
    loop = asyncio.get_running_loop()
    baseline, last_pass = _resident_bytes(), loop.time()
    while True:
        await asyncio.sleep(FREEZE_EVERY_S)
        gc.freeze()
        size = _resident_bytes()
        grown = size is not None and baseline is not None and size > RECLAIM_GROWTH * baseline
        if grown or loop.time() - last_pass > RECLAIM_EVERY_S:
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            baseline, last_pass = _resident_bytes(), loop.time()
            log.info("full garbage collection: %.0f ms", 1000 * (time.perf_counter() - started))


def serve(config: Config) -> None:
    logs.configure(config.log_level)
    requestlog.install()
    ssl_context = None
    if config.tls_cert and config.tls_key:
        ssl_context = server_context(config.tls_cert, config.tls_key)
    elif config.tls_self_signed:
        ssl_context = server_context(*self_signed(config.data_dir / "tls", config.host))
    tune_runtime()
    app = create_app(config)
    app.cleanup_ctx.append(collector)
    warning = turn_warning(config)  # raises for a TURN setup that cannot work
    if warning:
        log.warning(warning)
    log.info("telehealth listening on %s (data in %s)", config.public_base_url, config.data_dir)
    web.run_app(app, host=config.host, port=config.port, ssl_context=ssl_context,
                print=None, access_log=None, shutdown_timeout=5.0)
