"""A real three-party call of the project's pages, read once a second: truth and what is shown.

Shared by bench/truth.py and the browser tests. The therapist is a page of a Chromium on the
host, Partner A has a Chromium of its own there, in a cgroup, so that its computer can be made
slow (tests/slow_cpu.py); Partner B runs inside a network namespace (tests/netfault.py), in
Chromium (launched through tests/browser_call.py's wrapper) or in Firefox
(tests/firefox.py). Every page carries tests/probe.js from before its own modules run.

``Recorder`` samples every page once a second, all three at once, and keeps each reading
with the phase it was taken in and what was applied then: the namespace's network fault
(set by whoever applies it, once it is in force) and a device state of Partner A (a slow
computer, a background tab, a frozen page: ``ChromiumParty``'s cgroup and CDP calls). A frozen page is
not sampled (its script cannot run): its seconds read ``None``. bench/truth_score.py scores
the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserType, CDPSession, expect
from playwright.async_api import Error as PlaywrightError

from tests.browser import Person, open_person
from tests.browser_call import chromium_in
from tests.firefox import FirefoxError, FirefoxPartner
from tests.netfault import Namespace
from tests.slow_cpu import OLD_LAPTOP_CORES, CpuLimit, slow_chromium

PROBE = (Path(__file__).with_name("probe.js")).read_text()
SAMPLE = "() => window.__probeSample()"
ROLES = ("therapist", "a", "b")
# A reading slower than this (a loaded machine, a throttled page) is given up; each page is
# read by its own loop, so a slow one never delays the others.
SAMPLE_TIMEOUT_S = 10.0


class Party(Protocol):
    name: str

    async def sample(self) -> dict[str, Any]: ...


@dataclass
class ChromiumParty:
    """A Chromium page, with the device states CDP can put it in."""

    name: str
    person: Person
    cdp: CDPSession | None = None
    cpu: CpuLimit | None = None  # its browser's cgroup, where it has one of its own

    async def sample(self) -> dict[str, Any]:
        value: dict[str, Any] = await self.person.page.evaluate(SAMPLE)
        return value

    async def _session(self) -> CDPSession:
        if self.cdp is None:
            self.cdp = await self.person.context.new_cdp_session(self.person.page)
        return self.cdp

    def slow_computer(self, on: bool) -> None:
        """An old laptop: the whole browser held to OLD_LAPTOP_CORES of CPU (off: no limit)."""
        assert self.cpu is not None, "a slow computer needs a Chromium of its own"
        self.cpu.set(OLD_LAPTOP_CORES if on else None)

    async def background(self, on: bool) -> None:
        """A tab the person clicked away from: headless Chromium has no real background tab,
        so the page reads hidden and its timers run only at wake-ups (tests/probe.js), and
        the browser is told the user is idle (CDP Emulation.setIdleOverride)."""
        cdp = await self._session()
        if on:
            await cdp.send("Emulation.setIdleOverride", {"isUserActive": False, "isScreenUnlocked": True})
        else:
            await cdp.send("Emulation.clearIdleOverride")
        try:
            await self.person.page.evaluate("(on) => window.__probeBackground(on)", on)
        except PlaywrightError:
            # The page navigated meanwhile (its own rejoin reloads it): a fresh page starts in
            # the foreground, so only a failure to go into the background is an error.
            if on:
                raise

    async def freeze(self, on: bool) -> None:
        """Frozen, as a phone's page when its screen locks: CDP Page.setWebLifecycleState, and
        its JavaScript paused in the debugger (this Chromium keeps running the timers of a
        "frozen" page with live WebRTC; a locked phone does not)."""
        cdp = await self._session()
        if on:
            await cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
            await cdp.send("Debugger.enable")
            await cdp.send("Debugger.pause")
        else:
            await cdp.send("Debugger.resume")
            await cdp.send("Debugger.disable")
            await cdp.send("Page.setWebLifecycleState", {"state": "active"})


@dataclass
class FirefoxParty:
    name: str
    partner: FirefoxPartner

    async def sample(self) -> dict[str, Any]:
        return await self.partner.sample(timeout=SAMPLE_TIMEOUT_S + 5)


@dataclass
class ProbeCall:
    therapist: ChromiumParty
    a: ChromiumParty
    b: ChromiumParty | FirefoxParty
    browser_version: str

    def party(self, role: str) -> Party:
        party: Party = getattr(self, role)
        return party

    @property
    def names(self) -> dict[str, str]:
        return {role: self.party(role).name for role in ROLES}


async def _chromium_party(browser: Browser, name: str, url: str) -> ChromiumParty:
    return ChromiumParty(name, await open_person(browser, name, url, init_script=PROBE))


@contextlib.asynccontextmanager
async def probe_call(
    host: Browser, browser_type: BrowserType, ns: Namespace | None, therapist_link: str,
    partner_links: tuple[str, ...], names: tuple[str, str, str], partner: str = "chromium",
) -> AsyncIterator[ProbeCall]:
    """Everyone in the call, up to the therapist admitting both partners (media is not waited
    for: call start is part of what is measured). ``names``: therapist, A, B as the room
    has them; ``partner``: Partner B's browser, chromium or firefox; ``ns``: where Partner B
    runs (None: on the host, beside the others)."""
    async with contextlib.AsyncExitStack() as stack:
        therapist = await _chromium_party(host, names[0], therapist_link)
        stack.push_async_callback(therapist.person.context.close)
        await therapist.person.page.get_by_role("button", name="Start session").click()
        await expect(therapist.person.page.locator("#call-step")).to_be_visible()
        own, cpu = await stack.enter_async_context(slow_chromium(browser_type))
        a = await _chromium_party(own, names[1], partner_links[0])
        a.cpu = cpu
        stack.push_async_callback(a.person.context.close)
        b: ChromiumParty | FirefoxParty
        if partner == "firefox":
            firefox = await FirefoxPartner.start(partner_links[1], ns)
            stack.push_async_callback(firefox.close)
            b, version = FirefoxParty(names[2], firefox), firefox.version
        else:
            browser, link = host, partner_links[1]
            if ns is not None:
                link = ns.host_url(link)
                origin = urlsplit(link)._replace(path="", query="", fragment="").geturl()
                browser = await stack.enter_async_context(chromium_in(browser_type, ns, origin))
            b = await _chromium_party(browser, names[2], link)
            stack.push_async_callback(b.person.context.close)
            version = f"chromium/{browser.version}"
        await a.person.page.get_by_role("button", name="Join session").click()
        if isinstance(b, FirefoxParty):
            await b.partner.click("Join session")
        else:
            await b.person.page.get_by_role("button", name="Join session").click()
        for name in names[1:]:
            await therapist.person.page.get_by_role("button", name=f"Admit {name}").click(timeout=40_000)
        yield ProbeCall(therapist, a, b, version)


@dataclass
class Recorder:
    """Reads every page of ``call`` once a second until stopped. Set ``phase``, ``network``
    (("loss", 5), ("rate", 250), ("cut", None) or None) and ``device`` (("a", "cpu") ...) as
    they change; each record carries the values in force at its tick.

    Each page is read by a loop of its own, so that a slow page (throttled, or on a loaded
    machine) never delays the others' readings; a tick records each page's newest reading
    taken since the last tick, or None (too slow, frozen, mid-navigation)."""

    call: ProbeCall
    interval_s: float = 1.0
    phase: str = "clean"
    network: tuple[str, int | None] | None = None
    # Wall clock (ms, as pages' Date.now()) when that network state was asked for.
    network_at: float | None = None
    device: tuple[str, str] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _latest: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    async def _read(self, role: str) -> None:
        count = 0
        due = time.monotonic()
        while True:
            due = max(due + self.interval_s, time.monotonic())
            await asyncio.sleep(due - time.monotonic())
            if self.device == (role, "frozen"):
                continue  # its script cannot run: a reading would wait for the thaw
            try:
                reading = await asyncio.wait_for(self.call.party(role).sample(), SAMPLE_TIMEOUT_S)
            except (TimeoutError, PlaywrightError, FirefoxError):
                continue  # too slow, or the page was mid-navigation: no reading this time
            count += 1
            self._latest[role] = (count, reading)

    async def _tick(self) -> None:
        recorded = dict.fromkeys(ROLES, 0)
        due = time.monotonic()
        while True:
            due = max(due + self.interval_s, time.monotonic())
            await asyncio.sleep(due - time.monotonic())
            pages: dict[str, dict[str, Any] | None] = {}
            for role in ROLES:
                count, reading = self._latest.get(role, (0, None))
                pages[role] = reading if count > recorded[role] else None
                recorded[role] = count
            self.records.append({"t": round(time.monotonic() - self.started, 2), "phase": self.phase,
                                 "network": list(self.network) if self.network else None,
                                 "network_at": self.network_at,
                                 "device": list(self.device) if self.device else None, "pages": pages})

    def start(self) -> None:
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._read(role)) for role in ROLES]
        self._tasks.append(asyncio.create_task(self._tick()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def seen_video(self) -> bool:
        """Whether the last reading of every page showed both remote pictures decoded."""
        if not self.records:
            return False
        latest = [self._latest.get(role, (0, None))[1] for role in ROLES]
        return all(p is not None and len(p["tiles"]) == 2 and all(t["frames"] > 0 for t in p["tiles"])
                   for p in latest)

    def connected(self) -> bool:
        """Whether the last reading of every page had both others' tiles fed by a connection
        that has received packets (media arriving, whether or not video shows)."""
        latest = [self._latest.get(role, (0, None))[1] for role in ROLES]
        return all(p is not None and len(p["tiles"]) == 2
                   and all(t["truth"] and t["truth"]["packetsIn"] > 0 for t in p["tiles"]) for p in latest)

    def describe(self) -> str:
        """The newest reading of each page, briefly: for a failing test's message."""
        lines = []
        for role in ROLES:
            reading = self._latest.get(role, (0, None))[1]
            if reading is None:
                lines.append(f"{role}: never read")
                continue
            tiles = ", ".join(f"{t['name']} frames={t['frames']} width={t['width']} level={t['level']} "
                              f"pc={'yes' if t['truth'] else 'no'}" for t in reading["tiles"])
            lines.append(f"{role}: [{tiles}] banners={[b['text'] for b in reading['banners']]}")
        return "\n".join(lines)

    async def wait(self, condition: Any, timeout: float) -> bool:
        """Until ``condition()`` holds after a new reading, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen = len(self.records)
        while time.monotonic() < deadline:
            if len(self.records) > seen:
                seen = len(self.records)
                if condition():
                    return True
            await asyncio.sleep(0.1)
        return False
