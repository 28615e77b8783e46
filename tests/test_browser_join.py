"""Where the page shows its own camera, in real Chromium: only in the step on screen.

A <video> in a hidden step still holds the camera's latest frames. With a few of them (the
check's preview and the waiting room's behind the call), the camera's frame pool ran dry as
the first connections started, and every picture of that camera froze for 2-3 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser import browser, new_person_context  # noqa: F401  (browser is a fixture)
from tests.conftest import RunningServer

pytestmark = pytest.mark.browser

# Whether the <video> with this id shows the camera (a frame has arrived).
SHOWS_CAMERA = "(id) => document.getElementById(id).videoWidth > 0"

# <video> elements with a stream that sit in a hidden part of the page.
HIDDEN_HOLDERS = """() => [...document.querySelectorAll('video')]
    .filter((v) => v.srcObject && v.closest('[hidden]'))
    .map((v) => v.id || v.getAttribute('aria-label'))"""


@pytest.fixture
async def contexts(browser: Browser) -> AsyncIterator[list[BrowserContext]]:  # noqa: F811
    opened: list[BrowserContext] = []
    yield opened
    for context in opened:
        await context.close()


async def open_page(
    browser: Browser, contexts: list[BrowserContext], url: str, init: str = "",  # noqa: F811
) -> Page:
    context = await new_person_context(browser)
    contexts.append(context)
    if init:
        await context.add_init_script(init)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    await page.goto(url)
    return page


async def test_the_waiting_room_alone_shows_the_camera_while_the_partner_waits(
    server: RunningServer, browser: Browser, contexts: list[BrowserContext],  # noqa: F811
) -> None:
    room = server.create_room(partners=1)
    partner = await open_page(browser, contexts, room.partner_links[0])
    await partner.wait_for_function(SHOWS_CAMERA, arg="preview")
    await partner.get_by_role("button", name="Join session").click()
    await expect(partner.locator("#waiting-step")).to_be_visible()
    await partner.wait_for_function(SHOWS_CAMERA, arg="waiting-preview")
    assert await partner.evaluate(HIDDEN_HOLDERS) == []
