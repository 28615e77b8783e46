"""Signaling capacity: how many participants one server core carries at p99 relay under 50 ms.

For each N (rooms of three) and each target, a fresh server pinned to core 0 and load generator
processes (bench/loadgen.py) pinned to core 1 run the pattern of real sessions without media:
joins (partners admitted by the therapist), the offer/answer/candidate exchange on every pair,
stats of two links every 250 ms per participant (as the pages send them), and a share of
participants rejoining every second (close, reopen with the same link, negotiate again). Targets, level by level in the same
run: ``ours`` (telehealth serve), ``bare`` (bench/bare_relay.py, the Python floor) and ``peerjs``
(the PeerJS server on Node).

Per level: relay latency p50/p99 (sender's write to target's read), server CPU (from /proc),
resident memory per participant (RSS after everyone is in the call, less RSS before, over N),
rejoin time, errors, and the load generators' own CPU and loop lag, so that a level where they
were the bottleneck is marked and not counted; and the machine's load average and CPU steal
(from /proc/stat) over each level's window, so that a busy host shows. A level passes when p99 < 50 ms, every room came
together, no errors, and at least 99 % of measured relays arrived.

Usage: python -m bench.signaling [--smoke] [--levels 1500,3000,...] [--targets ours,bare,peerjs]
Writes bench/results/signaling.json and, with matplotlib installed, bench/results/signaling.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import RESULTS
from telehealth import rooms
from telehealth.store import Store
from tests.ports import free_port

BENCH = Path(__file__).parent
PEERJS_DIR = BENCH / "peerjs"
TARGETS = ("ours", "bare", "peerjs")
P99_LIMIT_MS = 50.0
MIN_DELIVERED = 0.99
# Above this share of its core, or with this much loop lag, the load generator may be what limits.
LOADGEN_CPU_LIMIT = 0.85
LOADGEN_LAG_LIMIT_MS = 20.0
SERVER_CPU, LOADGEN_CPU = 0, 1
DEFAULT_LEVELS = "1500,3000,4500,6000,7500,9000,10500,12000,13500,15000"


@dataclass
class Served:
    """A server process under test, read from /proc."""

    pid: int
    port: int
    stop_fn: Any

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CoreTimes = dict[int, tuple[int, int, int]]


def core_busy() -> CoreTimes:
    """(busy, total, steal) jiffies per core, from /proc/stat. Steal (time the hypervisor
    gave this guest's CPU to someone else) counts as busy: the core was not ours."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            nums = [int(v) for v in vals]
            idle = nums[3] + nums[4]
            out[int(name[3:])] = (sum(nums[:8]) - idle, sum(nums[:8]), nums[7])
    return out


def busy_share(before: CoreTimes, after: CoreTimes, core: int) -> float:
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return round(busy / total, 3) if total else 0.0


def steal_share(before: CoreTimes, after: CoreTimes, core: int | None = None) -> float:
    """The share of the window's CPU time stolen by the hypervisor, on ``core`` or on all."""
    cores = [core] if core is not None else sorted(after)
    steal = sum(after[c][2] - before[c][2] for c in cores)
    total = sum(after[c][1] - before[c][1] for c in cores)
    return round(steal / total, 4) if total else 0.0


async def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer")
            await asyncio.sleep(0.05)


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


def raise_priority(pid: int, nice: int) -> None:
    """Put the process ahead of other work on its core: the machine may be shared.

    With autogroup scheduling a nice value only counts inside its session, so each process
    runs in a session of its own and the nice value goes on that session's group.
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


async def start_process(argv: list[str], port: int, probe: str, nice: int) -> Served:
    proc = await asyncio.create_subprocess_exec(
        *pinned(SERVER_CPU, argv), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, cwd=BENCH.parent, start_new_session=True)
    raise_priority(proc.pid, nice)

    async def stop() -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    try:
        await wait_http(f"http://127.0.0.1:{port}{probe}")
    except TimeoutError:
        await stop()
        raise
    return Served(proc.pid, port, stop)


def ensure_peerjs() -> None:
    if not (PEERJS_DIR / "node_modules" / "peer").is_dir():
        subprocess.run(["npm", "ci", "--prefix", str(PEERJS_DIR), "--no-audit", "--no-fund", "--silent"],
                       check=True)


async def start_target(target: str, nice: int) -> tuple[Served, Path | None]:
    """The server for one level, and (ours) its data folder for creating rooms."""
    port = free_port()
    if target == "ours":
        data_dir = Path(tempfile.mkdtemp(prefix="telehealth-bench-"))
        served = await start_process(
            [sys.executable, "-m", "telehealth.cli", "serve", "--data-dir", str(data_dir), "--port", str(port),
             "--log-level", "WARNING"], port, "/readyz", nice)
        return served, data_dir
    if target == "bare":
        return await start_process([sys.executable, "-m", "bench.bare_relay", "--port", str(port)],
                                   port, "/healthz", nice), None
    ensure_peerjs()
    return await start_process(["node", str(PEERJS_DIR / "server.mjs"), str(port)], port, "/", nice), None


def make_rooms(target: str, data_dir: Path | None, count: int, port: int) -> list[list[str]]:
    """Per room, what each member connects with: ours, its link's token; the others, an id."""
    if target != "ours":
        return [[f"r{i}m{k}" for k in range(3)] for i in range(count)]
    assert data_dir is not None
    store = Store.open(data_dir)
    try:
        made = []
        for i in range(count):
            room = rooms.create_room(
                store, therapist="Bench Therapist",
                partners=[rooms.PartnerSpec("Bench Partner A"), rooms.PartnerSpec("Bench Partner B")],
                base_url=f"http://127.0.0.1:{port}", link_ttl=24 * 3600, now=time.time())
            links = [room.therapist_link, *room.partner_links]
            made.append([link.rsplit("/", 1)[1] for link in links])
        return made
    finally:
        store.close()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def read_event(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError("load generator exited early")
    return json.loads(line)


async def run_level(target: str, n: int, opts: argparse.Namespace) -> dict[str, Any]:
    server, data_dir = await start_target(target, opts.nice)
    procs: list[asyncio.subprocess.Process] = []
    tmp = Path(tempfile.mkdtemp(prefix="telehealth-loadgen-"))
    try:
        all_rooms = make_rooms(target, data_dir, n // 3, server.port)
        await asyncio.sleep(0.5)
        rss_idle = server.rss_kib()
        count = max(1, min(opts.procs, len(all_rooms)))
        for k in range(count):
            cfg = {"target": target, "host": "127.0.0.1", "port": server.port,
                   "rooms": all_rooms[k::count], "churn_per_s": opts.churn, "seed": k,
                   "stats_every_s": opts.stats_every_ms / 1000,
                   "connect_concurrency": opts.concurrency}
            path = tmp / f"loadgen{k}.json"
            path.write_text(json.dumps(cfg))
            procs.append(await asyncio.create_subprocess_exec(
                *pinned(LOADGEN_CPU, [sys.executable, "-m", "bench.loadgen", str(path)]),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=BENCH.parent,
                limit=1 << 26, start_new_session=True))
            raise_priority(procs[-1].pid, opts.nice)
        setup_started = time.monotonic()
        readies = [await read_event(p, 60 + n / 50) for p in procs]
        setup_s = time.monotonic() - setup_started
        await asyncio.sleep(opts.settle)
        rss_joined = server.rss_kib()

        t_start = time.monotonic() + opts.warmup
        t_end = t_start + opts.duration
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"go {t_start} {t_end}\n".encode())
            await p.stdin.drain()
        await asyncio.sleep(max(0.0, t_start - time.monotonic()))
        cpu0, cores0, load0 = server.cpu_seconds(), core_busy(), os.getloadavg()[0]
        gen_cpu0 = sum(proc_cpu_seconds(p.pid) for p in procs)
        clock0 = time.monotonic()
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        cpu1, cores1, load1 = server.cpu_seconds(), core_busy(), os.getloadavg()[0]
        gen_cpu1 = sum(proc_cpu_seconds(p.pid) for p in procs)
        elapsed = time.monotonic() - clock0
        rss_end = server.rss_kib()
        results = [await read_event(p, 60) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.wait()
        await server.stop_fn()
        shutil.rmtree(tmp, ignore_errors=True)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)

    lat = sorted(x / 1000 for r in results for x in r["latencies_us"])
    probes = sorted(x / 1000 for r in results for x in r["probe_us"])
    joins = sorted(x for r in results for x in r["join_ms"])
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in results:
        for key, value in r["counts"].items():
            counts[key] = counts.get(key, 0) + value
        for key, value in r["errors"].items():
            errors[key] = errors.get(key, 0) + value
    for r in readies:
        for key, value in r["errors"].items():
            errors["setup " + key] = errors.get("setup " + key, 0) + value
    rooms_failed = sum(r["rooms_failed"] for r in readies)
    delivered = counts["relays_measured"] / counts["relays_sent"] if counts.get("relays_sent") else 0.0
    gen_cpu = (gen_cpu1 - gen_cpu0) / elapsed
    lag_p99 = max(r["lag_ms_p99"] for r in results)
    p99 = percentile(lat, 0.99)
    loadgen_bound = gen_cpu > LOADGEN_CPU_LIMIT or lag_p99 > LOADGEN_LAG_LIMIT_MS
    passed = (p99 < P99_LIMIT_MS and rooms_failed == 0 and not errors and delivered >= MIN_DELIVERED)
    return {
        "target": target,
        "n": n,
        "passed": passed,
        "loadgen_bound": loadgen_bound,
        "relay_ms": {"p50": round(percentile(lat, 0.5), 2), "p99": round(p99, 2),
                     "p999": round(percentile(lat, 0.999), 2), "max": round(lat[-1], 2) if lat else None,
                     "samples": len(lat)},
        "probe_ms": {"p50": round(percentile(probes, 0.5), 2), "p99": round(percentile(probes, 0.99), 2),
                     "samples": len(probes)},
        "delivered": round(delivered, 4),
        "rejoin_ms": {"p50": round(percentile(joins, 0.5), 2), "p99": round(percentile(joins, 0.99), 2),
                      "count": len(joins)},
        "server_cpu": round((cpu1 - cpu0) / elapsed, 3),
        "core0_busy": busy_share(cores0, cores1, SERVER_CPU),
        "core1_busy": busy_share(cores0, cores1, LOADGEN_CPU),
        "steal": steal_share(cores0, cores1),
        "core0_steal": steal_share(cores0, cores1, SERVER_CPU),
        "load_avg_1m": [round(load0, 2), round(load1, 2)],
        "rss_idle_kib": rss_idle,
        "rss_joined_kib": rss_joined,
        "rss_end_kib": rss_end,
        "rss_per_participant_kib": round((rss_joined - rss_idle) / n, 2),
        "setup_s": round(setup_s, 2),
        "rooms_failed": rooms_failed,
        "errors": errors,
        "counts": counts,
        "loadgen": {"processes": len(procs), "cpu": round(gen_cpu, 3), "lag_ms_p99": lag_p99,
                    "lag_ms_max": max(r["lag_ms_max"] for r in results)},
    }


def broken_level(target: str, n: int, why: str) -> dict[str, Any]:
    """A level that did not get as far as measuring (rooms never came together in time)."""
    nan = float("nan")
    return {
        "target": target, "n": n, "passed": False, "loadgen_bound": False, "failure": why,
        "relay_ms": {"p50": nan, "p99": nan, "p999": nan, "max": None, "samples": 0},
        "probe_ms": {"p50": nan, "p99": nan, "samples": 0}, "delivered": 0.0,
        "rejoin_ms": {"p50": nan, "p99": nan, "count": 0}, "server_cpu": nan,
        "core0_busy": nan, "core1_busy": nan, "steal": nan, "core0_steal": nan, "load_avg_1m": None,
        "rss_per_participant_kib": nan,
        "errors": {"setup": 1}, "counts": {}, "rooms_failed": None,
        "loadgen": {"processes": 0, "cpu": nan, "lag_ms_p99": nan, "lag_ms_max": nan},
    }


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    versions = {"python": platform.python_version()}
    for name in ("aiohttp", "msgspec", "uvloop"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    try:
        versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        lock = json.loads((PEERJS_DIR / "package-lock.json").read_text())
        versions["peer"] = lock["packages"]["node_modules/peer"]["version"]
    except (OSError, KeyError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "versions": versions}


def capacity(levels: list[dict[str, Any]], target: str) -> int:
    """The highest N this target passed, with every lower level passed too."""
    best = 0
    for level in levels:
        row = level["targets"].get(target)
        if row is None or not row["passed"] or row["loadgen_bound"]:
            break
        best = level["n"]
    return best


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


async def main(opts: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 65536), max(hard, 65536)))
    except (ValueError, OSError):
        pass
    targets = opts.targets.split(",")
    alive = set(targets)
    run_cores0, run_load0, run_started = core_busy(), os.getloadavg(), time.time()
    levels: list[dict[str, Any]] = []
    for n in (int(x) for x in opts.levels.split(",")):
        level: dict[str, Any] = {"n": n, "targets": {}}
        for target in targets:
            if target not in alive:
                continue
            try:
                row = await run_level(target, n, opts)
            except (TimeoutError, RuntimeError) as exc:
                row = broken_level(target, n, f"{type(exc).__name__}: {exc}")
            level["targets"][target] = row
            print(f"{target:6} N={n:6}  p50 {row['relay_ms']['p50']:7.2f} ms  p99 {row['relay_ms']['p99']:7.2f} ms"
                  f"  cpu {row['server_cpu']:.2f}  rss/p {row['rss_per_participant_kib']:6.1f} KiB"
                  f"  gen cpu {row['loadgen']['cpu']:.2f}  {'pass' if row['passed'] else 'FAIL'}"
                  f"{'  (loadgen bound)' if row['loadgen_bound'] else ''}  steal {row['steal']:.1%}"
                  f"  load {row['load_avg_1m']}  {row['errors'] or ''}",
                  file=sys.stderr, flush=True)
            if not row["passed"] and not opts.keep_going:
                alive.discard(target)
        levels.append(level)
        if not alive:
            break
    run_cores1, run_load1 = core_busy(), os.getloadavg()
    caps = {t: capacity(levels, t) for t in targets}
    ratios: dict[str, Any] = {}
    if "ours" in caps:
        for other in ("bare", "peerjs"):
            if other in caps:
                ratios[f"capacity_ours_over_{other}"] = ratio(caps["ours"], caps[other])
        ratios["per_level"] = [
            {"n": level["n"], **{
                f"{key}_ours_over_{other}": ratio(level["targets"]["ours"][field], level["targets"][other][field])
                for other in ("bare", "peerjs") if other in level["targets"]
                for key, field in (("cpu", "server_cpu"), ("rss", "rss_per_participant_kib"))}}
            for level in levels if "ours" in level["targets"]
        ]
    return {
        "what": "signaling participants per server core at p99 relay < 50 ms, rooms of three",
        "command": "python -m bench.signaling " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "run": {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run_started)),
                "seconds": round(time.time() - run_started, 1), "steal": steal_share(run_cores0, run_cores1),
                "load_avg_start": [round(x, 2) for x in run_load0], "load_avg_end": [round(x, 2) for x in run_load1]},
        "pattern": {"stats_per_participant_per_s": round(1000 / opts.stats_every_ms, 2),
                    "churn_rejoins_per_participant_per_s": opts.churn,
                    "candidates_per_side": 3, "window_s": opts.duration, "warmup_s": opts.warmup,
                    "server_core": SERVER_CPU, "loadgen_core": LOADGEN_CPU, "loadgen_processes": opts.procs,
                    "nice": opts.nice},
        "criteria": {"p99_ms_below": P99_LIMIT_MS, "delivered_at_least": MIN_DELIVERED,
                     "loadgen_cpu_below": LOADGEN_CPU_LIMIT},
        "capacity_per_core": caps,
        "ratios": ratios,
        "levels": levels,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.signaling", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="30 participants for 3 s: breakage, not timing")
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="participant counts, rising")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"some of {','.join(TARGETS)}")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="churn before measuring")
    parser.add_argument("--settle", type=float, default=2.0, help="pause before reading memory")
    parser.add_argument("--churn", type=float, default=0.02, help="rejoins per participant per second")
    parser.add_argument("--procs", type=int, default=4, help="load generator processes")
    parser.add_argument("--stats-every-ms", type=float, default=250.0,
                        help="each participant's stats interval (the pages': 250 ms)")
    parser.add_argument("--concurrency", type=int, default=16, help="rooms set up at once per process")
    parser.add_argument("--nice", type=int, default=-15,
                        help="priority of server and load generators (negative needs root; 0 to share fairly)")
    parser.add_argument("--keep-going", action="store_true", help="run every level even after a failure")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/signaling.json)")
    opts = parser.parse_args(argv)
    unknown = set(opts.targets.split(",")) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {','.join(sorted(unknown))}: choose from {','.join(TARGETS)}")
    if opts.smoke:
        opts.levels, opts.duration, opts.warmup, opts.settle, opts.procs = "30", 3.0, 1.0, 0.5, 2
        opts.keep_going = True
    return opts


def cli(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    result = asyncio.run(main(opts))
    out = opts.out or RESULTS / "signaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    summary = {k: result[k] for k in ("capacity_per_core", "ratios")}
    print(json.dumps(summary, indent=2))
    try:
        from bench.plot import plot_signaling
    except ImportError:
        print("no plot: pip install -r bench/requirements.txt for matplotlib", file=sys.stderr)
        return
    print(f"plot: {plot_signaling(result, out.with_suffix('.png'))}", file=sys.stderr)


if __name__ == "__main__":
    cli()
