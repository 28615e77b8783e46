"""Joining in real Chromium: the page connects at once, camera or not, and shows its camera
only where it can be seen.

A camera can take a second or more to start (or a permission prompt stays open). The
partner is let in and sees and hears the others meanwhile; their own picture and sound
follow the moment the devices are ready. A <video> in a hidden step would still hold the
camera's frames (with a few of them, every picture of that camera froze for 2-3 s as the
first connections started), so only the step on screen shows it. The camera is asked for
while the page still loads (early.js), once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from tests.browser import browser, new_person_context, open_person  # noqa: F401  (browser is a fixture)
from tests.conftest import RunningServer

pytestmark = pytest.mark.browser

# The seam: the camera and microphone start only when the test says so, like a slow camera
# or a permission prompt the person has not answered yet.
HOLD_DEVICES = """
let release;
const released = new Promise((resolve) => { release = resolve; });
window.__releaseDevices = () => release();
const realGetUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) => {
  await released;
  return realGetUserMedia(constraints);
};
"""

# Counts the page's requests for the camera and microphone.
COUNT_ASKS = """
window.__asks = 0;
const countedGetUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = (constraints) => {
  window.__asks += 1;
  return countedGetUserMedia(constraints);
};
"""

# Whether the page shows someone's video: the tile for that person has decoded a frame.
SEES = """(name) => [...document.querySelectorAll('#tiles video')]
    .some((v) => v.getAttribute('aria-label') === `Video of ${name}` && v.videoWidth > 0)"""

# Whether the <video> with this id shows the camera (a frame has arrived).
SHOWS_CAMERA = "(id) => document.getElementById(id).videoWidth > 0"

# Scripts the page asked for only after one had arrived: found by an import, not preloaded.
LATE_MODULES = """() => {
    const scripts = performance.getEntriesByType('resource').filter((e) => e.name.endsWith('.js'));
    const firstArrived = Math.min(...scripts.map((e) => e.responseEnd));
    return scripts.filter((e) => e.startTime >= firstArrived).map((e) => e.name);
}"""

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
    browser: Browser, contexts: list[BrowserContext], url: str, init: str | None = None,  # noqa: F811
) -> Page:
    person = await open_person(browser, "", url, init_script=init)
    contexts.append(person.context)
    return person.page


async def test_a_partner_whose_camera_is_slow_is_let_in_and_sees_the_others_meanwhile(
    server: RunningServer, browser: Browser, contexts: list[BrowserContext],  # noqa: F811
) -> None:
    room = server.create_room(partners=1)
    therapist = await open_page(browser, contexts, room.therapist_link)
    await therapist.wait_for_function(SHOWS_CAMERA, arg="preview")
    await therapist.get_by_role("button", name="Start session").click()
    await expect(therapist.locator("#call-step")).to_be_visible()
    # Only the call's own picture holds the camera now.
    assert await therapist.evaluate(HIDDEN_HOLDERS) == []

    partner = await open_page(browser, contexts, room.partner_links[0], HOLD_DEVICES)
    await expect(partner.locator("#preview-placeholder")).to_be_visible()
    await partner.get_by_role("button", name="Join session").click()
    # Straight in, not after waiting out the camera (a page that waited gave up after 5 s).
    waiting = partner.get_by_role("heading", name="Your therapist will let you in")
    await expect(waiting).to_be_visible(timeout=4000)
    await therapist.get_by_role("button", name="Admit Partner 1").click()
    await expect(partner.locator("#call-step")).to_be_visible()

    # The therapist's video plays while the partner's camera has not started yet; the
    # partner's controls count the camera as on, since it is on its way.
    await partner.wait_for_function(SEES, arg="Dr Test")
    assert await partner.evaluate("() => document.getElementById('self-video').srcObject") is None
    await expect(partner.get_by_role("button", name="Stop video")).to_be_visible()
    placeholder = therapist.locator(".tile-placeholder-text")
    await expect(placeholder).to_have_text("Waiting for Partner 1's video…")

    # The camera starts: the therapist sees the partner, the partner sees themselves.
    await partner.evaluate("() => window.__releaseDevices()")
    await therapist.wait_for_function(SEES, arg="Partner 1")
    await partner.wait_for_function(SHOWS_CAMERA, arg="self-video")
    await partner.wait_for_function(SEES, arg="Dr Test")
    assert await partner.evaluate(HIDDEN_HOLDERS) == []
    assert await therapist.evaluate(HIDDEN_HOLDERS) == []


async def test_an_early_camera_request_that_comes_after_the_page_opened_asks_nothing(
    server: RunningServer, browser: Browser, contexts: list[BrowserContext],  # noqa: F811
) -> None:
    # early.js is an async module: on a busy machine it may run after the page's own modules
    # have opened the camera. CI saw the camera asked for twice; the second stream was never
    # taken or stopped. Here early.js is held back until the page shows its own camera.
    room = server.create_room(partners=1)
    context = await new_person_context(browser)
    contexts.append(context)
    await context.add_init_script(COUNT_ASKS)
    page_opened = asyncio.Event()

    async def late_early_js(route: Route) -> None:
        response = await route.fetch()
        await page_opened.wait()
        await route.fulfill(response=response, body=await response.text() + "\nwindow.__earlyRan = true;\n")

    await context.route("**/early*.js", late_early_js)
    page = await context.new_page()
    await page.goto(room.partner_links[0], wait_until="domcontentloaded")  # "load" waits for early.js
    await page.wait_for_function(SHOWS_CAMERA, arg="preview")
    page_opened.set()
    await page.wait_for_function("() => window.__earlyRan === true")
    assert await page.evaluate("() => window.__asks") == 1


async def test_the_waiting_room_alone_shows_the_camera_while_the_partner_waits(
    server: RunningServer, browser: Browser, contexts: list[BrowserContext],  # noqa: F811
) -> None:
    room = server.create_room(partners=1)
    partner = await open_page(browser, contexts, room.partner_links[0], COUNT_ASKS)
    await partner.wait_for_function(SHOWS_CAMERA, arg="preview")
    # Every module was asked for at once, from the page's preload list.
    assert await partner.evaluate(LATE_MODULES) == []
    # The camera was asked for while the page loaded (early.js), and the page took that
    # instead of asking again: one prompt, one camera.
    assert await partner.evaluate("() => window.__asks") == 1
    await partner.get_by_role("button", name="Join session").click()
    await expect(partner.locator("#waiting-step")).to_be_visible()
    await partner.wait_for_function(SHOWS_CAMERA, arg="waiting-preview")
    assert await partner.evaluate(HIDDEN_HOLDERS) == []
