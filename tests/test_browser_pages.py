"""The partner's first minutes in real Chromium: a blocked camera, a forged link, the
network check, getting around with the keyboard alone, and a page whose scripts did not load."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from tests.browser import (  # noqa: F401  (browser is a fixture)
    axe_violations,
    browser,
    describe,
    new_person_context,
    screenshot,
    tab_through,
    visibly_focused,
    watch_console,
)
from tests.conftest import RunningServer, eventually
from web.netcheck import PROBE

pytestmark = pytest.mark.browser

# What the browser does when the person clicks "Block" on the camera prompt. Chromium's
# fake-UI flag grants every prompt, so the refusal is played here, at the prompt itself.
BLOCK_CAMERA = """
window.__blockCamera = true;
const realGetUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = (constraints) => {
  if (window.__blockCamera && constraints && constraints.video) {
    return Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
  }
  return realGetUserMedia(constraints);
};
"""


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:  # noqa: F811
    ctx = await new_person_context(browser)
    yield ctx
    await ctx.close()


async def open_page(context: BrowserContext, url: str) -> Page:
    page = await context.new_page()
    page.set_default_timeout(20_000)
    await page.goto(url)
    return page


async def test_a_partner_who_blocks_the_camera_is_told_what_to_do(
    server: RunningServer, context: BrowserContext,
) -> None:
    room = server.create_room()
    await context.add_init_script(BLOCK_CAMERA)
    page = await open_page(context, room.partner_links[0])

    problem = page.get_by_role("alert")
    await expect(problem).to_be_visible()
    await expect(problem.get_by_role("heading")).to_have_text("Your browser is blocking the camera")
    await expect(problem).to_contain_text("set the camera to Allow")
    await expect(problem.locator("li").last).to_have_text("Then press Try again.")
    await expect(page.locator("#preview-placeholder")).to_have_text("Camera not available")
    # The microphone still works and joining is still possible (with sound only).
    await page.wait_for_function("() => document.getElementById('mic-level').value > 0")
    await expect(page.get_by_role("button", name="Join session")).to_be_enabled()
    await screenshot(page, "10-partner-camera-blocked", full_page=True)
    violations = await axe_violations(page)
    assert not violations, describe(violations)

    # The person allows the camera and presses Try again: the preview comes back.
    await page.evaluate("window.__blockCamera = false")
    await problem.get_by_role("button", name="Try again").click()
    await page.wait_for_function("() => document.getElementById('preview').videoWidth > 0")
    await expect(page.locator("#media-problem")).to_be_hidden()


async def test_every_device_failure_has_an_explanation_and_a_next_step(
    server: RunningServer, context: BrowserContext,
) -> None:
    room = server.create_room()
    page = await open_page(context, room.partner_links[0])
    explained = await page.evaluate(
        """async () => {
            const { explainMediaError } = await import('/static/devices.js');
            const names = ['NotAllowedError', 'SecurityError', 'NotFoundError', 'OverconstrainedError',
                           'NotReadableError', 'AbortError', 'TypeError', 'InsecureContextError', 'Weird'];
            const out = {};
            for (const name of names) for (const kind of ['audio', 'video']) {
                out[`${name}/${kind}`] = explainMediaError({ name }, kind);
            }
            return out;
        }"""
    )
    for key, e in explained.items():
        assert e["title"] and e["text"] and e["steps"], key
    assert explained["NotAllowedError/video"]["title"] == "Your browser is blocking the camera"
    assert explained["NotFoundError/video"]["title"] == "We can't find a camera"
    assert explained["NotFoundError/audio"]["title"] == "We can't find a microphone"
    assert "another app" in explained["NotReadableError/video"]["text"].lower()
    assert any("Zoom" in step for step in explained["NotReadableError/audio"]["steps"])
    assert any("https://" in step for step in explained["InsecureContextError/video"]["steps"])
    # A camera problem never stops anyone joining with sound only.
    assert all(e["canJoin"] for k, e in explained.items() if k.endswith("/video") and "Insecure" not in k
               and "TypeError" not in k)


async def test_a_forged_link_sees_the_error_page(server: RunningServer, context: BrowserContext) -> None:
    page = await context.new_page()
    forged = f"{server.base_url}/j/{'A' * 43}"
    response = await page.goto(forged)
    assert response is not None and response.status == 404
    await expect(page.get_by_role("heading", level=1)).to_have_text("This link does not work")
    await expect(page.get_by_role("alert")).to_contain_text("ask your therapist for a new one")
    await expect(page.locator("video")).to_have_count(0)
    await screenshot(page, "11-forged-link")
    violations = await axe_violations(page)
    assert not violations, describe(violations)


async def test_the_network_check_reports_a_verdict_with_numbers(
    server: RunningServer, context: BrowserContext,
) -> None:
    room = server.create_room()
    page = await open_page(context, room.partner_links[0])
    verdict = page.locator("#net-verdict")
    # Loopback is a clean path: good, or, on a machine too starved to measure, words that say
    # so (this machine is shared; test_browser_netcheck loads it on purpose).
    await expect(verdict).to_have_attribute("data-level", re.compile("^(good|busy)$"), timeout=60_000)
    numbers = re.compile(
        r"Round trip \d+ ms · Lost packets [\d.]+% · Download [\d.]+ Mbit/s · Upload [\d.]+ Mbit/s")
    await expect(page.locator("#net-numbers")).to_have_text(numbers)
    if await verdict.get_attribute("data-level") == "good":
        await expect(verdict).to_have_text("Connection: Good")
        await expect(page.locator("#net-advice")).to_have_text("Your connection is good for video.")
    else:
        await expect(page.locator("#net-advice")).to_have_text(re.compile("^Your computer was too busy"))

    await page.get_by_role("button", name="Check again").click()
    await expect(verdict).to_have_attribute("data-level", re.compile("^(good|busy)$"), timeout=60_000)
    await expect(page.locator("#net-numbers")).to_have_text(numbers)
    # Each check's server peer goes away once the page is done with it.
    probe = server.app[PROBE]
    await eventually(lambda: probe.running == 0, timeout=10)

    # The words for worse networks, from the same function the page uses.
    words = await page.evaluate(
        """async () => {
            const { verdict } = await import('/static/netcheck.js');
            const base = { connected: true, rtt_ms: 40, loss: 0, loss_settled: true, down_kbps: 20000, up_kbps: 8000,
                           candidate: 'host' };
            return {
                good: verdict(base),
                choppy: verdict({ ...base, loss: 0.05 }),
                slow: verdict({ ...base, up_kbps: 700 }),
                weak: verdict({ ...base, rtt_ms: 900 }),
                failed: verdict({ ...base, connected: false, rtt_ms: null, loss: null, down_kbps: null, up_kbps: null }),
                // A starved measurement: this computer, the page in the background, the server.
                busyChoppy: verdict({ ...base, up_kbps: 700, page_lag: { p90_ms: 120, max_ms: 400 } }),
                busyFailed: verdict({ ...base, connected: false, rtt_ms: null, page_lag: { p90_ms: 10, max_ms: 900 } }),
                busyGood: verdict({ ...base, page_lag: { p90_ms: 120, max_ms: 400 } }),
                busyLossy: verdict({ ...base, loss: 0.2, rtt_ms: 900, page_lag: { p90_ms: 120, max_ms: 400 } }),
                mildLag: verdict({ ...base, up_kbps: 700, page_lag: { p90_ms: 20, max_ms: 150 } }),
                hidden: verdict({ ...base, rtt_ms: 900, hidden: true }),
                serverLate: verdict({ ...base, rtt_ms: 900, server_lag: { p90_ms: 80, max_ms: 300 } }),
                brokeOff: verdict({ ...base, up_kbps: null, error: 'channel closed' }),
                serverFull: verdict({ ...base, connected: false, rtt_ms: null, error: 'rate_limited' }),
            };
        }"""
    )
    assert [words[k]["label"] for k in ("good", "choppy", "slow", "weak")] == [
        "Good", "May be choppy", "May be choppy", "Too weak for video"]
    assert words["failed"]["level"] == "failed" and "could not connect" in words["failed"]["label"]
    assert words["weak"]["numbers"].startswith("Round trip 900 ms")
    # Never a network guess from a starved measurement; the path's own words when it was fine.
    for key in ("busyChoppy", "busyFailed"):
        assert (words[key]["level"], words[key]["label"]) == ("busy", "Could not measure (your computer is busy)")
        assert "Close other apps" in words[key]["advice"] and "Wi-Fi" not in words[key]["advice"]
    assert words["busyChoppy"]["numbers"] == words["slow"]["numbers"]
    assert words["busyGood"]["label"] == "Good"
    # Pings unanswered once the marker sent after them was back were lost by the network, busy
    # machine or not.
    assert words["busyLossy"]["label"] == "Too weak for video"
    assert words["mildLag"]["label"] == "May be choppy"
    for key in ("hidden", "serverLate", "serverFull", "brokeOff"):
        assert (words[key]["level"], words[key]["label"]) == ("unmeasured", "Could not measure the speed"), key
    assert "background" in words["hidden"]["advice"]
    assert words["serverLate"]["advice"] == words["serverFull"]["advice"]
    assert "check again in a minute" in words["serverFull"]["advice"]


async def test_every_control_of_the_check_is_reachable_by_keyboard_with_a_visible_focus(
    server: RunningServer, context: BrowserContext,
) -> None:
    room = server.create_room()
    page = await open_page(context, room.partner_links[0])
    await expect(page.locator("#net-verdict")).not_to_have_attribute("data-level", "running", timeout=20_000)
    reached = await tab_through(page, 40)
    controls = await page.evaluate(
        """() => [...document.querySelectorAll('#check-step button, #check-step select, #check-step input')]
              .filter(el => el.offsetParent !== null).map(el => el.id)"""
    )
    assert controls and set(controls) <= set(reached), set(controls) - set(reached)
    for control in controls:
        assert visibly_focused(reached[control]), reached[control]


async def test_the_page_runs_under_its_content_security_policy(
    server: RunningServer, context: BrowserContext,
) -> None:
    room = server.create_room()
    page = await context.new_page()
    console = watch_console(page)
    response = await page.goto(room.therapist_link)
    assert response is not None
    csp = (await response.all_headers())["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp and "script-src 'self'" in csp
    await page.get_by_role("button", name="Start session").click()
    await expect(page.locator("#call-step")).to_be_visible()
    await expect(page.locator("#net-verdict")).not_to_have_attribute("data-level", "running", timeout=20_000)
    assert console.csp_violations == []


async def _failing_loads(context: BrowserContext, times: int) -> list[int]:
    """In the next ``times`` loads of the page, its check script fails as a network change fails
    it in Chromium (Wi-Fi to mobile data mid-load); the loads refused, by number."""
    loads: list[int] = []
    refused: list[int] = []

    async def count_load(route: Route) -> None:
        loads.append(len(loads) + 1)
        await route.continue_()

    async def refuse(route: Route) -> None:
        if len(loads) <= times:
            refused.append(len(loads))
            await route.abort("internetdisconnected")
        else:
            await route.continue_()

    await context.route("**/j/*", count_load)
    await context.route("**/static/check.js", refuse)
    return refused


async def test_a_page_whose_scripts_failed_to_load_reloads_itself_once_and_works(
    server: RunningServer, context: BrowserContext,
) -> None:
    room = server.create_room()
    refused = await _failing_loads(context, times=1)
    page = await open_page(context, room.partner_links[0])
    await expect(page.locator("#net-verdict")).not_to_have_attribute("data-level", "running", timeout=30_000)
    assert set(refused) == {1}, refused
    await expect(page.locator("#load-failed")).to_be_hidden()


async def test_a_page_whose_scripts_keep_failing_says_so_and_offers_a_reload(
    server: RunningServer, context: BrowserContext,
) -> None:
    room = server.create_room()
    refused = await _failing_loads(context, times=2)
    page = await open_page(context, room.partner_links[0])
    notice = page.get_by_role("alert").filter(has_text="This page did not load completely")
    await expect(notice).to_be_visible()
    assert set(refused) == {1, 2}, refused
    await screenshot(page, "load-failed")
    # The network is back: the button is all it takes.
    await notice.get_by_role("button", name="Reload the page").click()
    await expect(page.locator("#net-verdict")).not_to_have_attribute("data-level", "running", timeout=30_000)
    await expect(page.locator("#load-failed")).to_be_hidden()
