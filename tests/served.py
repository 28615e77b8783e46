"""A real `telehealth serve` process for tests of what it accepts and refuses at start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp

TELEHEALTH = [sys.executable, "-m", "telehealth.cli"]
# Generous: a loaded machine starts Python and imports aiortc slowly; a refusal comes sooner.
START_TIMEOUT = 60.0


def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """One CLI command to its end."""
    return subprocess.run([*TELEHEALTH, *args], capture_output=True, text=True, timeout=60, **kwargs)  # type: ignore[call-overload]


@dataclass
class Outcome:
    """How a start ended: ``proc`` still running and ready, or exited with ``code``/``stderr``."""

    proc: asyncio.subprocess.Process
    base_url: str
    # Its stderr goes to a file, not a pipe: a pipe nobody reads while it serves fills up, then
    # its logging blocks the server's event loop, and in Python 3.11 `proc.wait()` never returns
    # after a kill either (asyncio waits for a paused pipe's end). Both seen: the backup test's
    # server wrote 0.9 MB of request logs, hung, and so did the test's teardown.
    err_file: IO[bytes]
    code: int | None = None
    stderr: str = ""

    def read_stderr(self) -> str:
        return read_from_start(self.err_file)

    @property
    def serving(self) -> bool:
        return self.code is None

    async def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        await asyncio.wait_for(self.proc.wait(), 30)
        self.stderr = self.read_stderr()
        self.code = self.proc.returncode
        return self.code or 0, self.stderr


async def launch(data_dir: Path, port: int, *extra: str,
                 preexec_fn: Callable[[], object] | None = None) -> Outcome:
    """Start `telehealth serve`; return once it exits or /readyz says ready, whichever first."""
    err_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the serve fixture, after the process
    proc = await asyncio.create_subprocess_exec(
        *TELEHEALTH, "serve", "--data-dir", str(data_dir), "--port", str(port), *extra,
        env={**os.environ}, stdout=asyncio.subprocess.DEVNULL, stderr=err_file,
        preexec_fn=preexec_fn,
    )
    outcome = Outcome(proc, f"http://127.0.0.1:{port}", err_file)
    exited = asyncio.ensure_future(proc.wait())
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while not exited.done():
            try:
                async with session.get(outcome.base_url + "/readyz") as r:
                    if r.status == 200:
                        exited.cancel()
                        return outcome
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                proc.kill()
                raise TimeoutError("telehealth serve neither refused nor became ready")
            await asyncio.wait([exited], timeout=0.05)
    outcome.code = proc.returncode
    outcome.stderr = outcome.read_stderr()
    return outcome


def read_from_start(file: IO[bytes]) -> str:
    """All a process has written to ``file`` (its stderr) so far."""
    file.seek(0)
    return file.read().decode(errors="replace")


def assert_refused(outcome: Outcome, *words: str) -> str:
    """Refused with exit code 2 and one line on stderr holding ``words``; return the line."""
    assert not outcome.serving, "the server started"
    lines = outcome.stderr.strip().splitlines()
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert len(lines) == 1, outcome.stderr
    assert outcome.code == 2, outcome.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


Launcher = Callable[..., Awaitable[Outcome]]
