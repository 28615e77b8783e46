"""Who may read /metrics, through the real server.

On the main port (the one a reverse proxy forwards) /metrics is there only with
``Authorization: Bearer <token from TELEHEALTH_METRICS_TOKEN_FILE>``: 401 without it or with a
wrong one, 404 when no token file is set. ``TELEHEALTH_METRICS_ADDRESS`` opens a separate
listener that serves /metrics (and nothing else) without a token, for a Prometheus on the same
host. A token file or an address that cannot work stops ``serve`` with one clear line.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from signaling.metrics import parse_address, read_token
from telehealth.config import Config
from tests.conftest import free_port, start_server
from tests.test_cli import TELEHEALTH

TOKEN = "3f9c0d1e2b7a48c6a5e4f3d2c1b0a9f8"


async def fetch(url: str, **headers: str) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers, allow_redirects=False) as response:
            return response.status, await response.text(), response.headers


async def test_metrics_on_the_main_port_need_the_bearer_token(
    make_config: Callable[..., Config], tmp_path: Path,
) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN + "\n")
    server = await start_server(make_config(metrics_token_file=token_file))
    try:
        url = f"{server.base_url}/metrics"
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"},
                        {"Authorization": "Bearer \u00e9\u00e9"}):
            status, body, answer = await fetch(url, **headers)
            assert status == 401, (headers, status)
            assert answer["WWW-Authenticate"].startswith("Bearer")
            assert "telehealth_" not in body
        status, body, _ = await fetch(url, Authorization=f"Bearer {TOKEN}")
        assert status == 200 and "telehealth_websocket_connections 0.0" in body
        assert "telehealth_ready 1.0" in body
    finally:
        await server.runner.cleanup()


async def test_without_a_token_the_main_port_has_no_metrics_and_the_side_listener_serves_them(
    make_config: Callable[..., Config],
) -> None:
    side = f"127.0.0.1:{free_port()}"
    server = await start_server(make_config(metrics_address=side))
    try:
        status, body, _ = await fetch(f"{server.base_url}/metrics")
        assert status == 404 and "telehealth_" not in body
        status, body, _ = await fetch(f"{server.base_url}/metrics", Authorization=f"Bearer {TOKEN}")
        assert status == 404
        status, body, _ = await fetch(f"http://{side}/metrics")
        assert status == 200 and "telehealth_rooms" in body
        # Only /metrics there: no pages, no console, no signaling.
        for path in ("/", "/console", "/ws", "/readyz"):
            assert (await fetch(f"http://{side}{path}"))[0] == 404, path
    finally:
        await server.runner.cleanup()
    # The listener closes with the server.
    try:
        await fetch(f"http://{side}/metrics")
    except aiohttp.ClientConnectionError:
        pass
    else:
        raise AssertionError("the metrics listener outlived the server")


def test_serve_refuses_a_metrics_token_file_it_cannot_read_in_one_line(tmp_path: Path) -> None:
    # One start (seconds on a busy machine); what else is refused is tested below, and the
    # refusal takes the same way out.
    env = {**os.environ, "TELEHEALTH_PORT": str(free_port()),
           "TELEHEALTH_METRICS_TOKEN_FILE": str(tmp_path / "missing.token")}
    result = subprocess.run([*TELEHEALTH, "serve", "--data-dir", str(tmp_path / "data")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        (f"telehealth: TELEHEALTH_METRICS_TOKEN_FILE: cannot read {tmp_path / 'missing.token'} "
        "(No such file or directory)")]
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_token_files_and_addresses_are_read_strictly(tmp_path: Path) -> None:
    good = tmp_path / "good.token"
    good.write_text(f"  {TOKEN}\n")
    assert read_token(good) == TOKEN
    for content in ("", "abc", "two words here and more", "\u00e9" * 20):
        bad = tmp_path / "bad.token"
        bad.write_text(content)
        with pytest.raises(ValueError, match="TELEHEALTH_METRICS_TOKEN_FILE"):
            read_token(bad)
    with pytest.raises(ValueError, match="cannot read"):
        read_token(tmp_path)
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for text in ("9464", "localhost:", ":9464", "127.0.0.1:0", "127.0.0.1:99999", "host:94a4", "[]:80"):
        with pytest.raises(ValueError, match="TELEHEALTH_METRICS_ADDRESS"):
            parse_address(text)
