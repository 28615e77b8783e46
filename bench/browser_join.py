"""Link to first remote frame for a partner in Chromium, through a real server process.

Per run, a fresh room: the therapist (a Chromium page) has started the session and the other
partner (another Chromium page) is already in the call. Then the measured partner opens the
link and presses "Join session", and the therapist presses "Admit" as soon as it appears on
the therapist's page (the script reacts within milliseconds, a person within seconds, so
admission delay is not part of the figure). Two ways of pressing "Join session":

- ``after_check``: once the camera preview shows (the person has seen themselves; the
  check's other parts are advice and hold no one back). This is the figure to quote.
- ``at_once``: the moment the button can be pressed, before the camera has started (the
  page connects at once and adds its camera and microphone when they are ready).

The clock starts when the browser starts loading the page (``performance.timeOrigin``), so
the harness's own costs (making a browser context) are not counted. Per run, in ms:

- ``camera_ms``: the camera preview showing (``after_check`` only);
- ``join_ms``: "Join session" pressed;
- ``waiting_ms``: the waiting room shown (the server has seated the partner);
- ``call_ms``: the call shown (admitted, welcome received);
  (these three and the frames by the page's own clock, not when the script noticed);
- ``first_frame_ms``: the first remote video frame presented (requestVideoFrameCallback);
- ``both_frames_ms``: a frame from both others;
- ``rejoin_first_frame_ms``: then the partner reloads the page (back within the grace
  window): from the reload to the first remote frame.

Usage: python -m bench.browser_join [--runs 5]; prints JSON, writes bench/results/browser_join.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import time
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from bench.common import ServerProcess, start_server, summary, write_result
from tests.browser import CHROMIUM, CHROMIUM_ARGS

# Installed before the page's own scripts. Times are wall-clock milliseconds, like the
# script's, from the moment the browser started loading the page (performance.timeOrigin).
FRAME_CLOCK = """
window.__frames = {};
window.__opened = performance.timeOrigin;
window.__steps = {};
addEventListener('click', (e) => { if (e.target.id === 'join') window.__joinAt = Date.now(); }, true);
new MutationObserver(() => {
  for (const step of document.querySelectorAll('section.step:not([hidden])')) {
    window.__steps[step.id] ??= Date.now();
  }
}).observe(document, { attributes: true, attributeFilter: ['hidden'], childList: true, subtree: true });
new MutationObserver(() => {
  for (const video of document.querySelectorAll('#tiles video')) {
    if (video.__watched) continue;
    video.__watched = true;
    const peer = video.closest('.tile').dataset.peer;
    video.requestVideoFrameCallback(() => { window.__frames[peer] = Date.now(); });
  }
}).observe(document, { childList: true, subtree: true });
"""


async def person(browser: Browser, url: str, *, frame_clock: bool = False) -> Page:
    context = await browser.new_context(permissions=["camera", "microphone"])
    if frame_clock:
        await context.add_init_script(FRAME_CLOCK)
    page = await context.new_page()
    page.set_default_timeout(30_000)
    await page.goto(url)
    return page


async def frames_after(page: Page, count: int) -> list[float]:
    await page.wait_for_function("n => Object.keys(window.__frames).length >= n", arg=count, timeout=30_000)
    return sorted(await page.evaluate("() => Object.values(window.__frames)"))


async def one_run(browser: Browser, server: ServerProcess, join_at: str) -> dict[str, float]:
    room = server.create_room()
    therapist = await person(browser, room.therapist_link)
    other = await person(browser, room.partner_links[1])
    pages = [therapist, other]
    try:
        await therapist.get_by_role("button", name="Start session").click()
        await therapist.locator("#call-step").wait_for()
        await other.get_by_role("button", name="Join session").click()
        await therapist.get_by_role("button", name="Admit Bench Partner 1").click()
        await other.locator("#call-step").wait_for()

        partner = await person(browser, room.partner_links[0], frame_clock=True)
        pages.append(partner)
        times: dict[str, float] = {}
        if join_at == "after_check":
            await partner.wait_for_function("() => document.getElementById('preview').videoWidth > 0")
            times["camera_ms"] = time.time()
        await partner.get_by_role("button", name="Join session").click()
        await therapist.get_by_role("button", name="Admit Bench Partner 0").click()
        await partner.locator("#call-step").wait_for()
        started = await partner.evaluate("() => window.__opened") / 1000
        joined = await partner.evaluate("() => window.__joinAt") / 1000
        steps = await partner.evaluate("() => window.__steps")
        waiting, in_call = steps["waiting-step"] / 1000, steps["call-step"] / 1000
        first, both = (await frames_after(partner, 2))[:2]

        await partner.reload()
        (again,) = (await frames_after(partner, 1))[:1]
        reloaded = await partner.evaluate("() => window.__opened") / 1000
        return {
            **{key: (at - started) * 1000 for key, at in times.items()},
            "join_ms": (joined - started) * 1000,
            "waiting_ms": (waiting - started) * 1000,
            "call_ms": (in_call - started) * 1000,
            "first_frame_ms": first - started * 1000,
            "both_frames_ms": both - started * 1000,
            "rejoin_first_frame_ms": again - reloaded * 1000,
        }
    finally:
        for page in pages:
            await page.context.close()


async def main(runs: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    server = await start_server()
    playwright = await async_playwright().start()
    browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
    results: dict[str, list[dict[str, float]]] = {"after_check": [], "at_once": []}
    try:
        await one_run(browser, server, "after_check")  # warm-up: caches, first-use costs
        for _ in range(runs):
            for join_at, done in results.items():
                done.append(await one_run(browser, server, join_at))
    finally:
        await browser.close()
        await playwright.stop()
        await server.stop()
    version = (await asyncio.to_thread(
        subprocess.run, [str(CHROMIUM), "--version"], capture_output=True, text=True, check=False,
    )).stdout.strip()
    return {
        "what": "link opened to first remote video frame, for a partner in Chromium (server process, loopback)",
        "runs": {join_at: [{k: round(v, 1) for k, v in r.items()} for r in done] for join_at, done in results.items()},
        "ms": {join_at: {key: summary([r[key] for r in done]) for key in done[0]} for join_at, done in results.items()},
        "chromium": version,
        # Other work on the machine slows Chromium's encoders and decoders: read figures with it.
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2)},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    write_result("browser_join", asyncio.run(main(args.runs)))
