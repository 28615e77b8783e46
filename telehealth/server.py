"""Running the app: event loop, TLS, signals. Ctrl-C shuts down cleanly via aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from signaling.endpoint import SIGNALING
from telehealth import logs, requestlog
from telehealth.app import create_app
from telehealth.config import Config
from telehealth.tls import self_signed, server_context
from telehealth.turn import turn_warning

log = logging.getLogger("telehealth")


# How often what is alive is moved out of the collector's way; and when one full pass reclaims
# the cyclic garbage among frozen objects: every RECLAIM_EVERY_S, or sooner if the process has
# grown to RECLAIM_GROWTH times what its open connections explain (CONNECTION_ALLOWANCE bytes
# each, several times what one takes) on top of its size when idle.
FREEZE_EVERY_S = 1.0
RECLAIM_EVERY_S = 3600.0
RECLAIM_GROWTH = 2.0
CONNECTION_ALLOWANCE = 256 * 1024

# The number of open connections, for the collector: set by the app that has them.
OPEN_CONNECTIONS: web.AppKey[Callable[[], int]] = web.AppKey("open_connections")


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
    process has grown well beyond what its open connections explain. (Growth alone is no
    sign: a server filling up in the morning grows fourfold, and a pass then stalls every
    call for most of a second at 9,000 participants.)
    """
    gc.collect()
    gc.freeze()
    task = asyncio.create_task(_freeze_loop(app.get(OPEN_CONNECTIONS, lambda: 0)))
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


def reclaim_due(size: int | None, idle: int | None, connections: int, after_last: int | None) -> bool:
    """Whether the process is well beyond what its open connections explain, and beyond its
    size after the last full pass (memory freed then may never go back to the system)."""
    if size is None or idle is None:
        return False
    explained = max(idle + connections * CONNECTION_ALLOWANCE, after_last or 0)
    return size > RECLAIM_GROWTH * explained


async def _freeze_loop(connections: Callable[[], int]) -> None:
    loop = asyncio.get_running_loop()
    idle, last_pass = _resident_bytes(), loop.time()
    after_last: int | None = None
    while True:
        await asyncio.sleep(FREEZE_EVERY_S)
        gc.freeze()
        size = _resident_bytes()
        if reclaim_due(size, idle, connections(), after_last) or loop.time() - last_pass > RECLAIM_EVERY_S:
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            last_pass, after_last = loop.time(), _resident_bytes()
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
    app[OPEN_CONNECTIONS] = lambda: len(app[SIGNALING].sockets)
    app.cleanup_ctx.append(collector)
    warning = turn_warning(config)  # raises for a TURN setup that cannot work
    if warning:
        log.warning(warning)
    log.info("telehealth listening on %s (data in %s)", config.public_base_url, config.data_dir)
    web.run_app(app, host=config.host, port=config.port, ssl_context=ssl_context,
                print=None, access_log=None, shutdown_timeout=5.0)
