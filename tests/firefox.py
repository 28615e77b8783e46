"""A partner in Firefox (Debian's firefox-esr), for tests and benchmarks.

Playwright's Python API cannot drive stock Firefox, so tests/firefox_partner.mjs does, with
npm's puppeteer-core over WebDriver BiDi; ``FirefoxPartner`` starts that script (inside a
network namespace when given one: then Firefox's network is the namespace's, while the
script's stdin/stdout, its control, are plain pipes that a cut never touches) and sends it
commands, one JSON line each. The page carries tests/probe.js, as the Chromium pages do.

Without /usr/bin/firefox-esr or node_modules/puppeteer-core, ``start`` raises ``FirefoxError``
saying how to install them: tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.netfault import Namespace

ROOT = Path(__file__).resolve().parent.parent
FIREFOX = Path("/usr/bin/firefox-esr")
SCRIPT = ROOT / "tests" / "firefox_partner.mjs"
PUPPETEER = ROOT / "node_modules" / "puppeteer-core"
# Starting Firefox and loading the page takes seconds here, tens of seconds on a loaded machine.
START_TIMEOUT_S = 90.0


class FirefoxError(RuntimeError):
    """Firefox could not be started, or a command failed in the page."""


def check_available() -> None:
    if not FIREFOX.exists():
        raise FirefoxError(f"{FIREFOX} is missing: apt-get install -y firefox-esr")
    if shutil.which("node") is None or not PUPPETEER.is_dir():
        raise FirefoxError("puppeteer-core is missing: run `npm ci` in the repository root (needs node)")


class FirefoxPartner:
    """One Firefox page at a partner's link. States: started (page loaded) -> closed."""

    def __init__(self, proc: asyncio.subprocess.Process, version: str, firefox_pid: int | None) -> None:
        self.proc = proc
        self.version = version
        self.firefox_pid = firefox_pid
        self._next = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, url: str, ns: Namespace | None = None) -> FirefoxPartner:
        check_available()
        if ns is not None:
            url = ns.host_url(url)
        argv = ["node", str(SCRIPT), url, urlsplit(url).hostname or ""]
        if ns is not None:
            argv = ns.command(argv)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            limit=16 * 1024 * 1024, start_new_session=True)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
            ready = json.loads(line) if line else {}
            if not ready.get("ready"):
                raise FirefoxError(f"firefox_partner.mjs did not start (exit code {proc.returncode})")
        except BaseException:
            await _kill(proc)
            raise
        return cls(proc, str(ready["version"]), ready.get("pid"))

    async def command(self, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self._next += 1
            self.proc.stdin.write((json.dumps({"id": self._next, "cmd": cmd, **args}) + "\n").encode())
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise FirefoxError(f"firefox_partner.mjs exited (code {self.proc.returncode})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise FirefoxError(f"{cmd}: {reply.get('error')}")
        return reply.get("value")

    async def sample(self, timeout: float = 30.0) -> dict[str, Any]:
        """tests/probe.js's reading of the page."""
        value: dict[str, Any] = await self.command("sample", timeout)
        return value

    async def click(self, name: str) -> None:
        await self.command("click", name=name)

    async def evaluate(self, js: str) -> Any:
        """``js``: a function expression, called in the page."""
        return await self.command("eval", js=js)

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(FirefoxError, asyncio.TimeoutError, ConnectionError):
                await self.command("quit", timeout=15)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                await _kill(self.proc, self.firefox_pid)


async def _kill(proc: asyncio.subprocess.Process, firefox_pid: int | None = None) -> None:
    """The script's process group and Firefox's (puppeteer starts it detached, in a group of
    its own, so killing the script alone would leave a browser running its call)."""
    for group in (proc.pid, firefox_pid):
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
    await proc.wait()


@contextlib.asynccontextmanager
async def firefox_partner(url: str, ns: Namespace | None = None) -> AsyncIterator[FirefoxPartner]:
    partner = await FirefoxPartner.start(url, ns)
    try:
        yield partner
    finally:
        await partner.close()
