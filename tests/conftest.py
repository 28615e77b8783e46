"""Shared fixtures: a real server on loopback with a real SQLite file, and room links."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from telehealth import rooms
from telehealth.app import create_app
from telehealth.appkeys import STORE
from telehealth.config import Config
from telehealth.logs import JsonFormatter
from telehealth.store import Store
from tests.coturn import CoturnServer, start_coturn
from tests.netfault import Namespace, namespace
from tests.ports import free_port
from tests.served import Launcher, Outcome, launch

# The bearer token of metrics_server's /metrics.
METRICS_TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
# The TURN REST secret of the coturn fixture's server, for the configs that use it.
TURN_SECRET = "test-turn-secret"


@dataclass
class RunningServer:
    config: Config
    app: web.Application
    runner: web.AppRunner

    @property
    def base_url(self) -> str:
        return self.config.public_base_url

    @property
    def store(self) -> Store:
        return self.app[STORE]

    def create_room(self, partners: int = 2, **kwargs: object) -> rooms.CreatedRoom:
        specs = [rooms.PartnerSpec(f"Partner {i + 1}", f"+1 202 555 010{i + 1}") for i in range(partners)]
        return rooms.create_room(
            self.store, therapist="Dr Test", partners=specs, base_url=self.base_url,
            link_ttl=kwargs.pop("link_ttl", self.config.link_ttl_seconds), now=time.time(),  # type: ignore[arg-type]
        )


async def start_server(config: Config, **wiring: object) -> RunningServer:
    """The app ``create_app(config, **wiring)`` builds, serving on loopback."""
    app = create_app(config, **wiring)  # type: ignore[arg-type]
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    return RunningServer(config, app, runner)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    def make(**changes: object) -> Config:
        base = Config(host="127.0.0.1", port=free_port(), data_dir=tmp_path / "data")
        return base.replace(**changes)

    return make


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config())
    yield running
    await running.runner.cleanup()


@pytest.fixture
def coturn_options() -> dict[str, str | None]:
    """Lines the coturn fixture adds to (or overrides in) its configuration: a test module
    overrides this fixture to run its coturn otherwise."""
    return {}


@pytest.fixture
def coturn(tmp_path: Path, coturn_options: dict[str, str | None]) -> Iterator[CoturnServer]:
    """A real coturn on 127.0.0.1 (tests/coturn.py), TURN REST auth with TURN_SECRET."""
    server = start_coturn(tmp_path / "coturn", TURN_SECRET, options=coturn_options)
    yield server
    server.stop()


@pytest.fixture
async def ns() -> AsyncIterator[Namespace]:
    """A fresh network namespace (tests/netfault.py), removed after the test whatever happens."""
    async with namespace() as created:
        yield created


def session_from(address: str, *, ssl: ssl.SSLContext | bool = True, **kwargs: object) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from ``address`` (any of 127.0.0.0/8 on
    loopback): another client, as the server's limits see it."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), ssl=ssl)
    return aiohttp.ClientSession(connector=connector, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def metrics_server(make_config: Callable[..., Config], tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server whose /metrics on the main port needs ``Bearer METRICS_TOKEN`` (in
    tmp_path/metrics.token)."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text(METRICS_TOKEN)
    running = await start_server(make_config(metrics_token_file=token_file))
    yield running
    await running.runner.cleanup()


class LogCapture(logging.Handler):
    """Every record logged anywhere: the records, the JSON lines the server writes, and those
    that carry a traceback (or are errors)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        line = self.format(record)
        self.lines.append(line)
        if record.exc_info or record.levelno >= logging.ERROR:
            self.tracebacks.append(line)

    def entries(self, logger: str) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines if json.loads(line)["logger"] == logger]

    def requests(self) -> list[dict[str, object]]:
        """The request lines' fields as logged (whether or not the formatter prints them)."""
        keys = ("method", "route", "status", "duration_ms", "request_id", "room_id", "levelname")
        return [{k: getattr(r, k, None) for k in keys} for r in self.records
                if r.name == "telehealth.request"]


@contextlib.contextmanager
def capturing_logs(level: int = logging.DEBUG) -> Iterator[LogCapture]:
    """A LogCapture on the root logger, which logs from ``level`` on meanwhile."""
    handler = LogCapture()
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


@pytest.fixture
def captured_logs() -> Iterator[LogCapture]:
    with capturing_logs() as handler:
        yield handler


async def eventually(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> None:
    """Wait until ``check()`` holds, for state that offers no event to wait on."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


# A test (set-up and teardown included) still running after this long has its event loop's
# tasks printed (where each waits), once, to the stream pytest's own faulthandler writes to: the
# one place an xdist worker's words reach the run's log even if pytest-timeout later ends the
# worker (pytest-timeout's own dump never reached it).
HANG_REPORT_S = 300.0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    from _pytest.faulthandler import fault_handler_stderr_fd_key

    fd = item.config.stash.get(fault_handler_stderr_fd_key, 2)
    timer = threading.Timer(HANG_REPORT_S, report_hang, (item.nodeid, fd))
    timer.daemon = True
    timer.start()
    try:
        return (yield)
    finally:
        timer.cancel()


def report_hang(nodeid: str, fd: int) -> None:
    out = io.StringIO()
    out.write(f"\n+++ {nodeid} still running after {HANG_REPORT_S:.0f} s; its tasks:\n")
    # Read from another thread while the loop runs: good enough for a report, never for logic.
    for task in list(asyncio.tasks._all_tasks):  # type: ignore[attr-defined]
        if not task.done():
            task.print_stack(limit=8, file=out)
    os.write(fd, out.getvalue().encode(errors="replace"))
    faulthandler.dump_traceback(fd, all_threads=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Timing-sensitive suites each get one worker: the network-fault tests on one, the
    browser tests on the other, so two heavy suites never share a core's worth of time."""
    for item in items:
        if item.get_closest_marker("netns"):
            item.add_marker(pytest.mark.xdist_group("netns"))
        elif item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture
async def serve() -> AsyncIterator[Launcher]:
    """Real ``telehealth serve`` processes: ``await serve(data_dir, port, *flags)`` launches one
    (tests/served.py); whatever still runs is killed after the test."""
    started: list[Outcome] = []

    async def start(*args: object, **kwargs: object) -> Outcome:
        outcome = await launch(*args, **kwargs)  # type: ignore[arg-type]
        started.append(outcome)
        return outcome

    yield start
    for outcome in started:
        if outcome.proc.returncode is None:
            outcome.proc.kill()
            await outcome.proc.wait()
        outcome.err_file.close()
