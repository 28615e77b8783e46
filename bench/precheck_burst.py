"""The 9 am rush: partners open their links and run the pre-call check while sessions are live.

One real server process (``telehealth serve``) on loopback. First ``--sessions`` live sessions
come up: rooms of three bench/loadgen.py signaling clients (a separate process) that joined,
negotiated, and keep sending stats once a second and a relayed candidate every two seconds,
the way a call's pages do. Then, after a quiet stretch that gives the sessions' own server
CPU, ``--checks`` partners in headless Chromium open their links at even intervals within
``--within`` seconds; each page runs its network check by itself, and the bench reads the
words it shows (``#net-verdict``) once it is done.

Reported:

- every check's verdict (on loopback the right one is "Good": the path is clean; anything
  that blames the network is wrong), its figures, and how long it took;
- the server's CPU seconds per check: the server process's CPU over the burst, less what the
  live sessions alone took over as long (from the quiet stretch), over the number of checks.
  Opening the link (the page and its files) is counted with the check: it is what a partner
  arriving costs;
- each live session's p99 relay latency over the burst (sender's write to receiver's read),
  and all sessions together.

The browsers share this machine with the server; in a clinic they are on the partners' own
computers. So the server and the live sessions' clients run ahead of them: with a real-time
round-robin policy (``--server-rt``, the default; root only), so that the browsers' CPU
cannot delay a relay and what the live sessions measure is the server's own work, the checks
included; or at ``--server-nice`` (default -10, as bench/signaling.py does; 0 lets them
compete) with ``--no-server-rt``. The browsers run ahead of the machine's other work
(``--browser-nice``, default -5: on a shared machine other people's tests would otherwise
starve the partners' pages, which a partner's own computer does not). A page that took
longer than ``CHECK_TIMEOUT_S`` to load and check is "unfinished".

``--server-root DIR`` runs the server (and so the page and its scripts) from another source
tree, e.g. ``git archive main | tar -x -C /tmp/before``: the same burst against an older check.

Usage: python -m bench.precheck_burst [--checks 20] [--within 60] [--sessions 50] [--smoke]
Writes bench/results/precheck_burst.json and .png (bench/plot.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, async_playwright

from bench.common import ServerProcess, start_server, write_result
from bench.signaling import make_rooms, percentile, raise_priority, read_event
from tests.browser import CHROMIUM, CHROMIUM_ARGS, new_person_context

BENCH = Path(__file__).parent
P99_LIMIT_MS = 50.0
# On a clean loopback path this is the only right verdict.
RIGHT_LEVEL = "good"
# Verdicts that blame the network: wrong on loopback whatever the machine's load.
NETWORK_BLAME = ("choppy", "weak", "failed")
CHECK_TIMEOUT_S = 90.0

# The verdict line has left "running" once the check is done (or stopped).
DONE = "() => { const v = document.getElementById('net-verdict'); return v && v.dataset.level !== 'running'"\
       " && v.dataset.level !== undefined && v.textContent.trim() !== '' }"
SHOWN = """() => ({
  level: document.getElementById('net-verdict').dataset.level,
  verdict: document.getElementById('net-verdict').textContent,
  numbers: document.getElementById('net-numbers').textContent,
  advice: document.getElementById('net-advice').textContent,
})"""


async def one_check(browser: Browser, link: str, at: float) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    opened = time.monotonic()
    context = None
    try:
        context = await new_person_context(browser)
        page = await context.new_page()
        # One budget for opening the link and checking: what a partner waits for.
        page.set_default_timeout(CHECK_TIMEOUT_S * 1000)
        await page.goto(link)
        left = CHECK_TIMEOUT_S - (time.monotonic() - opened)
        await page.wait_for_function(DONE, polling=200, timeout=max(1.0, left) * 1000)
        shown = await page.evaluate(SHOWN)
        return {**shown, "seconds": round(time.monotonic() - opened, 2), "started_s": round(opened, 3)}
    except Exception as exc:  # noqa: BLE001 - a check that never finished is a result too
        return {"level": "unfinished", "verdict": type(exc).__name__, "numbers": "", "advice": "",
                "seconds": round(time.monotonic() - opened, 2), "started_s": round(opened, 3)}
    finally:
        if context is not None:
            await context.close()


def run_ahead(pid: int, opts: argparse.Namespace) -> str:
    """Put a process (every thread of it) ahead of the browsers; says how."""
    raise_priority(pid, opts.server_nice)
    if not opts.server_rt:
        return f"nice {opts.server_nice}"
    try:
        # Threads started later inherit the policy from the thread that starts them.
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setscheduler(int(task.name), os.SCHED_RR, os.sched_param(1))
    except OSError:
        return f"nice {opts.server_nice}"
    return "real-time round robin, priority 1"


def browser_pid() -> int | None:
    """The Chromium that Playwright launched for this process (its driver's child)."""
    def children(pid: int) -> list[int]:
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    for driver in children(os.getpid()):
        for child in children(driver):
            if Path(f"/proc/{child}/exe").resolve().name == "chromium":
                return child
    return None


def check_links(server: ServerProcess, count: int) -> list[str]:
    links: list[str] = []
    while len(links) < count:
        links.extend(server.create_room().partner_links)
    return links[:count]


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    server = await start_server(cwd=opts.server_root)
    # The partners' browsers run on this machine too; in a clinic they run on their own
    # computers. The server goes ahead of them, as it would on a machine of its own.
    ahead = run_ahead(server.proc.pid, opts)
    tmp = Path(tempfile.mkdtemp(prefix="telehealth-precheck-"))
    playwright = await async_playwright().start()
    browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                               args=list(CHROMIUM_ARGS))
    # Playwright starts Chromium in a session of its own: the nice value goes on its group.
    chromium_pid = browser_pid()
    if chromium_pid is not None:
        raise_priority(chromium_pid, opts.browser_nice)
    loadgen: asyncio.subprocess.Process | None = None
    try:
        port = int(server.base_url.rsplit(":", 1)[1])
        links = check_links(server, opts.checks)
        result_live: dict[str, Any] = {"room_p99_us": [], "latencies_us": [], "counts": {}}
        if opts.sessions:
            cfg = {"target": "ours", "host": "127.0.0.1", "port": port, "churn_per_s": 0.0, "seed": 0,
                   "rooms": make_rooms("ours", server.data_dir, opts.sessions, port)}
            (tmp / "loadgen.json").write_text(json.dumps(cfg))
            loadgen = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.loadgen", str(tmp / "loadgen.json"), cwd=BENCH.parent,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
                start_new_session=True)
            # The live sessions' own clients are people elsewhere too: their timing is the measure.
            run_ahead(loadgen.pid, opts)
            ready = await read_event(loadgen, 120)
            if ready.get("rooms_failed"):
                raise RuntimeError(f"live sessions did not come together: {ready}")
        # Warm-up: the first check pays one-time costs (Chromium's first context, imports).
        warm = await one_check(browser, check_links(server, 1)[0], 0)

        cpu_quiet0 = server.cpu_seconds()
        quiet0 = time.monotonic()
        burst_start = quiet0 + opts.quiet
        # The live sessions' relays are timed from the burst's start until well after its end.
        window_end = burst_start + opts.within + CHECK_TIMEOUT_S
        if loadgen is not None:
            assert loadgen.stdin is not None
            loadgen.stdin.write(f"go {burst_start} {window_end}\n".encode())
            await loadgen.stdin.drain()
        await asyncio.sleep(max(0.0, burst_start - time.monotonic()))
        cpu_burst0 = server.cpu_seconds()
        quiet_rate = (cpu_burst0 - cpu_quiet0) / (burst_start - quiet0)
        spacing = opts.within / opts.checks
        checks = await asyncio.gather(*(one_check(browser, link, burst_start + i * spacing)
                                        for i, link in enumerate(links)))
        burst_s = time.monotonic() - burst_start
        cpu_burst = server.cpu_seconds() - cpu_burst0
        if loadgen is not None:
            # The load generator reports once its timing window has ended.
            result_live = await read_event(loadgen, window_end - time.monotonic() + 60)
    finally:
        if loadgen is not None and loadgen.returncode is None:
            loadgen.kill()
            await loadgen.wait()
        await browser.close()
        await playwright.stop()
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(server.data_dir, ignore_errors=True)

    for check in checks:
        check["started_s"] = round(check["started_s"] - burst_start, 2)
    levels = [c["level"] for c in checks]
    room_p99 = [x / 1000 if x is not None else None for x in result_live["room_p99_us"]]
    measured = [x for x in room_p99 if x is not None]
    relays = sorted(x / 1000 for x in result_live["latencies_us"])
    per_check = max(0.0, cpu_burst - quiet_rate * burst_s) / opts.checks
    version = (await asyncio.to_thread(
        subprocess.run, [str(CHROMIUM), "--version"], capture_output=True, text=True, check=False,
    )).stdout.strip()
    return {
        "what": (f"{opts.checks} partners open their links and run the network check within {opts.within:g} s "
                 f"while {opts.sessions} sessions are live (loopback, one server process)"),
        "server_root": str(opts.server_root or BENCH.parent),
        "server_priority": ahead,
        "browser_nice": opts.browser_nice if chromium_pid is not None else None,
        "checks": checks,
        "warm_up": warm,
        "verdicts": {level: levels.count(level) for level in sorted(set(levels))},
        "right": levels.count(RIGHT_LEVEL),
        "network_blamed": sum(levels.count(level) for level in NETWORK_BLAME),
        "check_seconds": {"median": round(statistics.median(c["seconds"] for c in checks), 2),
                          "worst": max(c["seconds"] for c in checks)},
        "server_cpu": {
            "per_check_s": round(per_check, 4),
            "burst_s": round(cpu_burst, 3), "burst_wall_s": round(burst_s, 2),
            "live_sessions_per_s": round(quiet_rate, 4), "quiet_wall_s": opts.quiet,
        },
        "live": {
            "sessions": opts.sessions,
            "relay_ms": {"p50": round(percentile(relays, 0.5), 2), "p99": round(percentile(relays, 0.99), 2),
                         "samples": len(relays)},
            "session_p99_ms": [round(x, 2) if x is not None else None for x in room_p99],
            "worst_session_p99_ms": round(max(measured), 2) if measured else None,
            "sessions_measured": len(measured),
            "counts": result_live["counts"],
        },
        "criteria": {"every_verdict": RIGHT_LEVEL, "session_p99_ms_below": P99_LIMIT_MS},
        "passed": (levels.count(RIGHT_LEVEL) == len(levels)
                   and (not opts.sessions or (len(measured) == opts.sessions and max(measured) < P99_LIMIT_MS))),
        "chromium": version,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.precheck_burst", description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=20, help="partners running the check")
    parser.add_argument("--within", type=float, default=60.0, help="seconds over which they open their links")
    parser.add_argument("--sessions", type=int, default=50, help="live sessions (rooms of three)")
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of live sessions alone first")
    parser.add_argument("--server-nice", type=int, default=-10,
                        help="nice value of the server and the live sessions' clients (0: same as the browsers)")
    parser.add_argument("--server-rt", action=argparse.BooleanOptionalAction, default=True,
                        help="run the server and live sessions' clients real-time (root), ahead of the browsers")
    parser.add_argument("--browser-nice", type=int, default=-5,
                        help="nice value of the partners' Chromium (behind the server, ahead of other work)")
    parser.add_argument("--server-root", type=Path, default=None, help="source tree to run the server from")
    parser.add_argument("--smoke", action="store_true", help="3 checks within 6 s, 5 sessions, 3 s quiet")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.checks, opts.within, opts.sessions, opts.quiet = 3, 6.0, 5, 3.0
    if opts.checks < 1:
        parser.error("--checks must be at least 1")
    return opts


if __name__ == "__main__":
    write_result("precheck_burst", asyncio.run(run(parse_args())))
