"""Shared pieces for the benchmarks: a real `telehealth serve` process and its readings."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from telehealth import rooms
from telehealth.store import Store
from tests.ports import free_port

RESULTS = Path(__file__).parent / "results"
# Where write_result puts results instead, when set: the smoke tests point it at a tmp dir so
# that they never overwrite the figures of a real run.
RESULTS_DIR_VAR = "BENCH_RESULTS_DIR"


@dataclass
class ServerProcess:
    proc: asyncio.subprocess.Process
    base_url: str
    data_dir: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def create_room(self, partners: int = 2) -> rooms.CreatedRoom:
        store = Store.open(self.data_dir)
        try:
            return rooms.create_room(
                store, therapist="Bench Therapist",
                partners=[rooms.PartnerSpec(f"Bench Partner {i}", None) for i in range(partners)],
                base_url=self.base_url, link_ttl=3600, now=time.time(),
            )
        finally:
            store.close()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(self.proc.wait(), 10)


async def start_server(*extra: str, env: dict[str, str] | None = None, cpu: int | None = None,
                       cwd: Path | None = None) -> ServerProcess:
    """``telehealth serve`` on a free port with a fresh data folder; ``cwd``: run the server
    from another source tree (a checkout of another version, for before/after figures)."""
    data_dir = Path(tempfile.mkdtemp(prefix="telehealth-bench-"))
    port = free_port()
    argv = [sys.executable, "-m", "telehealth.cli", "serve", "--data-dir", str(data_dir), "--port", str(port),
            "--log-level", "WARNING", *extra]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    proc = await asyncio.create_subprocess_exec(*argv, env={**os.environ, **(env or {})},
                                                stderr=asyncio.subprocess.DEVNULL, cwd=cwd)
    base_url = f"http://127.0.0.1:{port}"
    # Generous: on a shared, loaded machine the import alone can take seconds.
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while proc.returncode is None and time.monotonic() < deadline:
            try:
                async with session.get(base_url + "/readyz") as r:
                    if r.status == 200:
                        return ServerProcess(proc, base_url, data_dir)
            except aiohttp.ClientError:
                await asyncio.sleep(0.025)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    raise TimeoutError(f"server did not start (exit code {proc.returncode})")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "worst": round(max(values), 4),
            "best": round(min(values), 4), "n": len(values)}


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_DIR_VAR) or RESULTS)


def write_result(name: str, result: dict[str, Any], out: Path | None = None) -> Path:
    """Write <name>.json and, with matplotlib installed, <name>.png (bench/plot.py) to
    results_dir(), or to the JSON file ``out`` and the PNG beside it; print the JSON."""
    path = out if out is not None else results_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if importlib.util.find_spec("matplotlib") is None:
        print("no plot: pip install -r bench/requirements.txt for matplotlib", file=sys.stderr)
    else:
        from bench.plot import plot

        print(f"plot: {plot(name, result, path.with_suffix('.png'))}", file=sys.stderr)
    return path
