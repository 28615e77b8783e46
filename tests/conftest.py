"""Shared fixtures: a real server on loopback with a real SQLite file, and room links."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from telehealth import rooms
from telehealth.app import STORE, create_app
from telehealth.config import Config
from telehealth.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


async def start_server(config: Config) -> RunningServer:
    app = create_app(config)
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


def session_from(address: str, *, ssl: ssl.SSLContext | bool = True, **kwargs: object) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from ``address`` (any of 127.0.0.0/8 on
    loopback): another client, as the server's limits see it."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), ssl=ssl)
    return aiohttp.ClientSession(connector=connector, **kwargs)  # type: ignore[arg-type]


async def eventually(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> None:
    """Wait until ``check()`` holds, for state that offers no event to wait on."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Timing-sensitive suites each get one worker: the network-fault tests on one, the
    browser tests on the other, so two heavy suites never share a core's worth of time."""
    for item in items:
        if item.get_closest_marker("netns"):
            item.add_marker(pytest.mark.xdist_group("netns"))
        elif item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))
