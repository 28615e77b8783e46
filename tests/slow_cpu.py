"""A Chromium on a slow computer: the whole browser (its encoder, decoder, network and page
threads) in a cgroup of its own whose CPU quota the test sets, as an old laptop would be.

CDP's ``Emulation.setCPUThrottlingRate`` is not that: it slows only the page's main thread,
while WebRTC encodes and decodes on threads of their own. Measured here at 8x: the page's
timers ran 5-130 ms late, its video went out at 20 fps and ``qualityLimitationReason`` stayed
"none"; nothing a partner on an old laptop would notice, and nothing to word.

Needs root and the cgroup cpu controller: v1 (``/sys/fs/cgroup/cpu``, as on this machine) or
v2 (``cpu.max``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, BrowserType

from tests.browser import CHROMIUM, CHROMIUM_ARGS

# An old laptop, as the browser tests and the truth benchmark make one: a tenth of one core for
# the whole browser. Measured here on a quiet machine (7 Dec): its video falls from 20 to 1-7 fps,
# while qualityLimitationReason stays "none". A fifth of a core had been enough on a loaded
# machine (encoder ~90 ms a frame, 2-10 fps), but on a quiet one the browser still sent 10-17 fps
# at 12-25 ms a frame: no slow computer, and the truth benchmark's strain truth said so.
OLD_LAPTOP_CORES = 0.1

V1_CPU = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuLimit:
    """The quota of one cgroup: ``set(cores)`` limits everything in it to that many cores'
    worth of time (0.2: a fifth of one core), ``set(None)`` lifts the limit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.v2 = not (path / "cpu.cfs_quota_us").exists()

    @classmethod
    def make(cls, name: str) -> CpuLimit:
        if (V1_CPU / "cpu.cfs_quota_us").exists():
            path = V1_CPU / name
        else:
            with contextlib.suppress(OSError):
                (V2_ROOT / "cgroup.subtree_control").write_text("+cpu")
            path = V2_ROOT / name
        path.mkdir()
        limit = cls(path)
        limit.set(None)
        return limit

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def set(self, cores: float | None) -> None:
        quota = -1 if cores is None else max(1000, round(cores * PERIOD_US))
        if self.v2:
            (self.path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def remove(self) -> None:
        # The browser has exited: the group is empty and can go (a straggler is moved out).
        for pid in self.procs.read_text().split():
            with contextlib.suppress(OSError):
                (self.path.parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


@contextlib.asynccontextmanager
async def slow_chromium(browser_type: BrowserType, *, args: tuple[str, ...] = ()) -> AsyncIterator[tuple[Browser, CpuLimit]]:
    """Debian's Chromium, every process of it in a cgroup of its own; no limit until set."""
    limit = CpuLimit.make(f"telehealth-slow-{os.getpid()}-{os.urandom(3).hex()}")
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-slow-") as tmp:
            wrapper = Path(tmp) / "chromium"
            wrapper.write_text(f'#!/bin/sh\necho $$ > {limit.procs}\nexec {CHROMIUM} "$@"\n')
            wrapper.chmod(0o755)
            launched = await browser_type.launch(executable_path=str(wrapper), headless=True,
                                                 args=[*CHROMIUM_ARGS, *args])
            try:
                yield launched, limit
            finally:
                limit.set(None)
                await launched.close()
    finally:
        limit.remove()
