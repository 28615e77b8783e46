"""Shared Playwright helpers: one headless Chromium per test session, a context per person.

Use from any test module::

    from tests.browser import browser, new_person_context, screenshot  # noqa: F401

``browser`` is session-scoped and shared through the pytest config's stash, so however many
modules import it, Chromium starts once. Every person gets their own context (their own
cookies, storage and permissions), like separate devices. Debian's Chromium is driven
directly; Playwright never downloads a browser. Without /usr/bin/chromium the tests fail
with a message saying how to install it; they never skip.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    async_playwright,
)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # Headless Chromium gives every new context a window, and every window loaded its
    # omnibox popup (a WebUI page in a renderer of its own): 1.2 s of CPU per context on this
    # 2-core machine, 0.3 s without it. A person's browser has its window already open, so
    # the cost belongs to the harness, and it stole a core from every join we measured.
    "--disable-features=WebUIOmniboxPopup,WebUIOmniboxFullPopup,WebUIOmniboxAimPopup",
)

# A laptop and a phone held upright, for layouts that must work on both.
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@dataclass
class _SharedBrowser:
    playwright: Playwright
    browser: Browser
    users: int = 0


_SHARED = pytest.StashKey[_SharedBrowser]()


async def launch_chromium(playwright: Playwright) -> Browser:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium. "
            "Install it with `apt-get install -y chromium` (do not run `playwright install`).",
            pytrace=False,
        )
    return await playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    """The test session's one Chromium."""
    shared = request.config.stash.get(_SHARED, None)
    if shared is None:
        playwright = await async_playwright().start()
        try:
            launched = await launch_chromium(playwright)
        except BaseException:
            await playwright.stop()
            raise
        shared = _SharedBrowser(playwright, launched)
        request.config.stash[_SHARED] = shared
    shared.users += 1
    try:
        yield shared.browser
    finally:
        shared.users -= 1
        if shared.users == 0:
            del request.config.stash[_SHARED]
            await shared.browser.close()
            await shared.playwright.stop()


async def new_person_context(
    browser: Browser,
    permissions: Iterable[str] = ("camera", "microphone"),
    *,
    viewport: dict[str, int] | None = None,
    **options: Any,
) -> BrowserContext:
    """A fresh context for one person: their own storage and the permissions they granted."""
    return await browser.new_context(
        permissions=list(permissions), viewport=viewport or LAPTOP, **options
    )


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"


async def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot under test-artifacts/screenshots/ and return its path."""
    path = screenshot_path(name)
    await page.screenshot(path=str(path), full_page=full_page)
    return path


@dataclass
class ConsoleWatch:
    """What a page printed: errors, and the Content-Security-Policy (and Trusted Types)
    violations among them."""

    messages: list[str] = field(default_factory=list)

    @property
    def csp_violations(self) -> list[str]:
        markers = ("Content Security Policy", "Refused to", "Trusted Type", "TrustedHTML", "TrustedScript")
        return [m for m in self.messages if any(marker in m for marker in markers)]


def watch_console(page: Page) -> ConsoleWatch:
    watch = ConsoleWatch()

    def on_message(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            watch.messages.append(message.text)

    page.on("console", on_message)
    page.on("pageerror", lambda error: watch.messages.append(f"pageerror: {error}"))
    return watch


async def axe_violations(page: Page, *, impacts: tuple[str, ...] = ("serious", "critical")) -> list[dict[str, Any]]:
    """Run axe-core (npm) in the page and return violations of the given impacts.

    The script is evaluated through the DevTools protocol, which the page's CSP does not
    govern, so the pages keep their strict policy during the check.
    """
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `npm ci` in the repository root.", pytrace=False)
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(AXE.read_text())
    result = await page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
        }"""
    )
    return [v for v in result if v["impact"] in impacts]


async def tab_through(page: Page, presses: int) -> dict[str, dict[str, str]]:
    """Press Tab ``presses`` times; what got focus (by id, else text) and its outline."""
    reached: dict[str, dict[str, str]] = {}
    for _ in range(presses):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            """() => {
                const el = document.activeElement;
                const style = getComputedStyle(el);
                return {id: el.id || el.textContent.trim(), tag: el.tagName,
                        outline: style.outlineStyle, width: style.outlineWidth};
            }"""
        )
        reached[focused["id"]] = focused
    return reached


def visibly_focused(info: dict[str, str]) -> bool:
    return info["outline"] != "none" and info["width"] not in ("0px", "")


def describe(violations: list[dict[str, Any]]) -> str:
    return json.dumps(violations, indent=2)


# Each remote tile's video: its peer, playing position and decoded frames.
REMOTE_VIDEOS = """() => [...document.querySelectorAll('#tiles .tile')].map(tile => {
    const v = tile.querySelector('video');
    return {peer: tile.dataset.peer, width: v.videoWidth, time: v.currentTime,
            frames: v.getVideoPlaybackQuality().totalVideoFrames};
})"""

# ``count`` remote tiles, each playing and past where ``before`` saw it.
ADVANCED = """([before, count]) => {
    const tiles = [...document.querySelectorAll('#tiles .tile')];
    if (tiles.length !== count) return false;
    return tiles.every(tile => {
        const v = tile.querySelector('video');
        const was = before.find(b => b.peer === tile.dataset.peer);
        const frames = v.getVideoPlaybackQuality().totalVideoFrames;
        return v.videoWidth > 0 && (was ? v.currentTime > was.time + 0.5 && frames > was.frames + 5
                                        : v.currentTime > 0.5);
    });
}"""


@dataclass
class Person:
    name: str
    context: BrowserContext
    page: Page
    console: ConsoleWatch


async def open_person(browser: Browser, name: str, url: str, *, init_script: str | None = None,
                      **context_options: Any) -> Person:
    """A person's own context and page, opened at ``url``, its console watched."""
    context = await new_person_context(browser, **context_options)
    if init_script is not None:
        await context.add_init_script(init_script)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    console = watch_console(page)
    await page.goto(url)
    return Person(name, context, page, console)


async def frames_advance(page: Page, count: int = 2, timeout: float = 25.0) -> None:
    """Until the page shows ``count`` remote videos, each decoding new frames."""
    await page.wait_for_function(ADVANCED, arg=[[], count], timeout=timeout * 1000)
    before = await page.evaluate(REMOTE_VIDEOS)
    await page.wait_for_function(ADVANCED, arg=[before, count], timeout=timeout * 1000)
