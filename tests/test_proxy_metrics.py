"""The reverse-proxy examples of docs/deployment.md keep /metrics internal, with the real
proxies: Debian's Caddy and nginx run the documented configuration (TLS and the public name
swapped for plain loopback), in front of a real server whose /metrics needs a bearer token.
Through either proxy /metrics is a 404 even with the right token, while the pages go through;
straight to the server the same token reads the metrics.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from telehealth.config import Config
from tests.conftest import RunningServer, free_port, start_server

DEPLOYMENT = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def caddy_example() -> str:
    found = re.search(r"```\n(video\.clinic\.example \{\n.*?\n\})\n```", DEPLOYMENT, re.S)
    assert found, "the Caddy example is gone from docs/deployment.md"
    return found.group(1)


def nginx_example() -> str:
    """The documented nginx server block for the site (the port-80 redirect left out)."""
    block = DEPLOYMENT.split("```nginx\n", 1)[1].split("```", 1)[0]
    start, depth = block.index("server {"), 0
    for i in range(start, len(block)):
        depth += {"{": 1, "}": -1}.get(block[i], 0)
        if depth == 0 and block[i] == "}":
            return block[start:i + 1]
    raise AssertionError("unbalanced nginx example")


@pytest.fixture
async def server(make_config: Callable[..., Config], tmp_path: Path) -> AsyncIterator[RunningServer]:
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN)
    running = await start_server(make_config(metrics_token_file=token_file))
    yield running
    await running.runner.cleanup()


async def get(url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers, allow_redirects=False) as response:
            return response.status, await response.text()


async def run_proxy(argv: list[str], env: dict[str, str], url: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            if (await get(url))[0] == 200:
                return proc
        except aiohttp.ClientConnectionError:
            pass
        if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
            await stop(proc)
            raise RuntimeError(f"{argv[0]} did not come up: {(await proc.stderr.read()).decode()[-2000:]}")  # type: ignore[union-attr]
        await asyncio.sleep(0.1)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


async def assert_metrics_stay_internal(server: RunningServer, proxied: str) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    status, body = await get(f"{server.base_url}/metrics", **bearer)
    assert status == 200 and "telehealth_rooms" in body  # the token is right
    for path in ("/metrics", "/metrics/", "/metrics?x=1"):
        status, body = await get(f"{proxied}{path}", **bearer)
        assert status == 404 and "telehealth_" not in body, (path, status)
    status, body = await get(f"{proxied}/")
    assert status == 200 and "link" in body.lower()


async def test_the_documented_caddy_configuration_does_not_forward_metrics(
    server: RunningServer, tmp_path: Path,
) -> None:
    port = free_port()
    site = caddy_example().replace("video.clinic.example", f"http://127.0.0.1:{port}").replace(
        "127.0.0.1:8080", f"127.0.0.1:{server.config.port}")
    (tmp_path / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n" + site + "\n")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proxied = f"http://127.0.0.1:{port}"
    proc = await run_proxy(["caddy", "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                           env, proxied + "/")
    try:
        await assert_metrics_stay_internal(server, proxied)
    finally:
        await stop(proc)


async def test_the_documented_nginx_configuration_does_not_forward_metrics(
    server: RunningServer, tmp_path: Path,
) -> None:
    port = free_port()
    site = nginx_example().replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port};").replace(
        "127.0.0.1:8080", f"127.0.0.1:{server.config.port}")
    site = "\n".join(line for line in site.splitlines() if not line.strip().startswith("ssl_"))
    temp = "\n".join(f"    {kind}_temp_path {tmp_path / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nuser root;\nworker_processes 1;\npid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'} warn;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}\n{site}\n}}\n")
    proxied = f"http://127.0.0.1:{port}"
    proc = await run_proxy(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                           dict(os.environ), proxied + "/")
    try:
        await assert_metrics_stay_internal(server, proxied)
    finally:
        await stop(proc)
