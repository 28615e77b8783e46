"""The alert rules ops page on (deploy/prometheus/alerts.yml): Debian's promtool checks them and
runs their unit tests (alerts.test.yml); every metric they use is one the server exports; and
a real Prometheus scrapes a running server with the bearer token, loads the rules and
evaluates them against what it scraped (this server has no TURN: that alert goes pending).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import METRICS_TOKEN, RunningServer, free_port
from tests.processes import stop_subprocess

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


RULES = (RULES_DIR / "alerts.yml").read_text()
ALERTS = set(re.findall(r"^      - alert: (\w+)$", RULES, re.MULTILINE))


def test_each_alert_is_unit_tested_firing_and_says_what_to_do() -> None:
    # promtool has checked the structure; here, that no alert goes without a firing case.
    tests = (RULES_DIR / "alerts.test.yml").read_text()
    fired = set(re.findall(r"alertname: (\w+)\n\s+eval_time: \w+\n\s+exp_alerts:\n\s+- exp_labels", tests))
    assert len(ALERTS) == 6 and fired == ALERTS
    assert RULES.count("severity:") == RULES.count("summary:") == RULES.count("action:") == len(ALERTS)


async def test_every_metric_the_rules_use_is_one_the_server_exports(metrics_server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{metrics_server.base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as r:
            text = await r.text()
    # Declared, with or without series yet (a labelled counter has none until counted).
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    used = set(re.findall(r"\b(telehealth_[a-z_]+)", RULES))
    assert used and used <= exported, used - exported


async def query(http: aiohttp.ClientSession, api: str, path: str, **params: str) -> Any:
    async with http.get(f"{api}{path}", params=params) as response:
        if response.status == 503:  # still starting
            raise aiohttp.ClientConnectionError("not ready")
        body = await response.json()
    assert body["status"] == "success", body
    return body["data"]


async def until(check: Callable[[], Any], timeout: float) -> Any:
    """Poll Prometheus' API until ``check()`` returns something truthy (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            found = await check()
        except aiohttp.ClientConnectionError:
            found = None  # not listening yet
        if found:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("Prometheus did not show it in time")
        await asyncio.sleep(0.2)


async def test_a_real_prometheus_scrapes_the_server_with_its_token_and_evaluates_the_rules(
    metrics_server: RunningServer, tmp_path: Path,
) -> None:
    port = free_port()
    target = f"127.0.0.1:{metrics_server.config.port}"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "telehealth", "authorization": {"type": "Bearer",
                                                         "credentials_file": str(tmp_path / "metrics.token")},
             "static_configs": [{"targets": [target]}]},
            # The same target without the token: refused, so Prometheus marks it down.
            {"job_name": "no_token", "static_configs": [{"targets": [target]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    proc = await asyncio.create_subprocess_exec(
        "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        async with aiohttp.ClientSession() as http:
            async def value(expr: str) -> dict[str, str] | None:
                result = await query(http, api, "/query", query=expr)
                return {s["metric"].get("job", s["metric"].get("__name__", "")): s["value"][1]
                        for s in result["result"]} or None

            async def scraped() -> dict[str, str] | None:
                ups = await value("up")
                return ups if ups and ups.get("telehealth") == "1" and "no_token" in ups else None

            assert await until(scraped, 60) == {"telehealth": "1", "no_token": "0"}
            assert await until(lambda: value("telehealth_ready"), 30) == {"telehealth": "1"}
            assert await until(lambda: value("telehealth_websocket_connections"), 30) == {"telehealth": "0"}

            targets = await query(http, api, "/targets")
            refused = [t for t in targets["activeTargets"] if t["labels"]["job"] == "no_token"]
            assert "401" in refused[0]["lastError"], refused

            # The rules are loaded, and evaluated against what was scraped.
            async def no_turn_pending() -> list[dict[str, Any]]:
                alerts = (await query(http, api, "/alerts"))["alerts"]
                return [a for a in alerts if a["labels"]["alertname"] == "TelehealthNoTurn"]
            pending = await until(no_turn_pending, 30)
            assert pending[0]["state"] == "pending" and pending[0]["labels"]["job"] == "telehealth"
            groups = (await query(http, api, "/rules"))["groups"]
            assert {r["name"] for g in groups for r in g["rules"]} == ALERTS
            assert all(r["health"] in ("ok", "unknown") for g in groups for r in g["rules"])
    finally:
        await stop_subprocess(proc, 15)
