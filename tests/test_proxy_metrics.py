"""The reverse-proxy examples of docs/deployment.md keep /metrics internal, with the real
proxies: Debian's Caddy and nginx run the documented configuration (TLS and the public name
swapped for plain loopback), in front of a real server whose /metrics needs a bearer token.
Through either proxy /metrics is a 404 even with the right token, while the pages go through;
straight to the server the same token reads the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.conftest import METRICS_TOKEN, RunningServer, free_port
from tests.processes import stop_subprocess

DEPLOYMENT = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()


def caddy_example() -> str:
    found = re.search(r"```\n(\{\$TELEHEALTH_SITE:localhost\} \{\n.*?\n\})\n```", DEPLOYMENT, re.DOTALL)
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


async def get(url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers, allow_redirects=False) as response:
            return response.status, await response.text()


@contextlib.asynccontextmanager
async def proxy(argv: list[str], env: dict[str, str], url: str) -> AsyncIterator[None]:
    """Run a proxy until its ``url`` answers 200 (bounded), and stop it (by its pid) after."""
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                if (await get(url))[0] == 200:
                    break
            if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                proc.kill()
                raise RuntimeError(f"{argv[0]} did not come up: {(await proc.stderr.read()).decode()[-2000:]}")  # type: ignore[union-attr]
            await asyncio.sleep(0.1)
        yield
    finally:
        await stop_subprocess(proc, 10)


async def assert_metrics_stay_internal(server: RunningServer, proxied: str) -> None:
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    status, body = await get(f"{server.base_url}/metrics", **bearer)
    assert status == 200 and "telehealth_rooms" in body  # the token is right
    for path in ("/metrics", "/metrics/", "/metrics?x=1"):
        status, body = await get(f"{proxied}{path}", **bearer)
        assert status == 404 and "telehealth_" not in body, (path, status)
    status, body = await get(f"{proxied}/")
    assert status == 200 and "link" in body.lower()


async def test_the_documented_caddy_configuration_does_not_forward_metrics(
    metrics_server: RunningServer, tmp_path: Path,
) -> None:
    port = free_port()
    # The documented block over plain http on loopback: its site and upstream filled in, and
    # its local-CA TLS left out (tests/test_proxy.py runs it with TLS).
    site = caddy_example().replace("{$TELEHEALTH_SITE:localhost}", f"http://127.0.0.1:{port}").replace(
        "{$TELEHEALTH_UPSTREAM:127.0.0.1:8080}", f"127.0.0.1:{metrics_server.config.port}").replace(
        "\ttls internal\n", "")
    (tmp_path / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n" + site + "\n")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proxied = f"http://127.0.0.1:{port}"
    async with proxy(["caddy", "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                     env, proxied + "/"):
        await assert_metrics_stay_internal(metrics_server, proxied)


async def test_the_documented_nginx_configuration_does_not_forward_metrics(
    metrics_server: RunningServer, tmp_path: Path,
) -> None:
    port = free_port()
    site = nginx_example().replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port};").replace(
        "127.0.0.1:8080", f"127.0.0.1:{metrics_server.config.port}")
    site = "\n".join(line for line in site.splitlines() if not line.strip().startswith("ssl_"))
    temp = "\n".join(f"    {kind}_temp_path {tmp_path / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nuser root;\nworker_processes 1;\npid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'} warn;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}\n{site}\n}}\n")
    proxied = f"http://127.0.0.1:{port}"
    async with proxy(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], dict(os.environ),
                     proxied + "/"):
        await assert_metrics_stay_internal(metrics_server, proxied)
