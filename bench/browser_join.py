"""Link to first remote frame for a partner in Chromium, through a real server process.

Per run, a fresh room: the therapist (a Chromium page) has started the session and the other
partner (another Chromium page) is already in the call. Then the measured partner opens the
link and presses "Join session", and the therapist presses "Admit" as soon as it appears.
Both presses are made inside the pages, by a script that watches for the moment they can be
made: a person takes seconds, and that time is theirs, not the system's. Playwright's own
clicks would add its reaction (100-200 ms a press) and its polling of the pages would take
CPU from the very pages being measured. Two moments for "Join session":

- ``after_check``: once the camera preview shows (the person has seen themselves; the
  check's other parts are advice and hold no one back). This is the figure to quote.
- ``at_once``: the moment the page has loaded, before the camera has started (the page
  connects at once and adds its camera and microphone when they are ready).

The clock starts when the browser starts loading the page (``performance.timeOrigin``), so
the harness's own costs (making a browser context) are not counted. Per run, in ms:

- ``camera_ms``: the camera preview showing (``after_check`` only);
- ``join_ms``: "Join session" pressed;
- ``waiting_ms``: the waiting room shown (the server has seated the partner);
- ``call_ms``: the call shown (admitted, welcome received);
  (all by the page's own clock, not when the script noticed);
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
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from bench.common import ServerProcess, start_server, summary, write_result
from tests.browser import CHROMIUM, CHROMIUM_ARGS, open_person

# Installed before the page's own scripts. Times are wall-clock milliseconds, like the
# script's, from the moment the browser started loading the page (performance.timeOrigin).
FRAME_CLOCK = """
window.__frames = {};
window.__opened = performance.timeOrigin;
window.__steps = {};
addEventListener('click', (e) => { if (e.target.id === 'join') window.__joinAt = Date.now(); }, true);
// The person: presses "Join session" at the moment chosen (window.__joinWhen).
document.addEventListener('DOMContentLoaded', () => {
  const press = () => {
    const preview = document.getElementById('preview');
    if (window.__joinWhen === 'after_check' && !(preview.videoWidth > 0)) {
      preview.addEventListener('resize', press, { once: true });
      return;
    }
    if (window.__joinWhen === 'after_check') window.__cameraAt = Date.now();
    document.getElementById('join').click();
  };
  press();
});
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


# The therapist: presses every "Admit" the moment it appears.
ADMIT_AT_ONCE = """
new MutationObserver(() => {
  for (const button of document.querySelectorAll('#lobby-list button:not([disabled])')) button.click();
}).observe(document, { childList: true, subtree: true });
"""


async def person(browser: Browser, url: str, *, init: str | None = None) -> Page:
    return (await open_person(browser, "", url, init_script=init)).page


async def frames_after(page: Page, count: int) -> list[float]:
    # Polled every 100 ms, not every animation frame: the times are the page's own, and
    # polling on every frame took CPU from the page being measured.
    await page.wait_for_function("n => Object.keys(window.__frames).length >= n", arg=count,
                                 polling=100, timeout=30_000)
    return sorted(await page.evaluate("() => Object.values(window.__frames)"))


async def one_run(browser: Browser, server: ServerProcess, join_at: str) -> dict[str, float]:
    room = server.create_room()
    therapist = await person(browser, room.therapist_link, init=ADMIT_AT_ONCE)
    other = await person(browser, room.partner_links[1])
    pages = [therapist, other]
    try:
        await therapist.get_by_role("button", name="Start session").click()
        await therapist.locator("#call-step").wait_for()
        await other.get_by_role("button", name="Join session").click()
        await other.locator("#call-step").wait_for()

        partner = await person(browser, room.partner_links[0],
                               init=f"window.__joinWhen = {join_at!r};" + FRAME_CLOCK)
        pages.append(partner)
        first, both = (await frames_after(partner, 2))[:2]
        started = await partner.evaluate("() => window.__opened") / 1000
        times = await partner.evaluate("() => ({ camera: window.__cameraAt, join: window.__joinAt })")
        steps = await partner.evaluate("() => window.__steps")
        waiting, in_call = steps["waiting-step"] / 1000, steps["call-step"] / 1000
        camera = {"camera_ms": times["camera"] - started * 1000} if times["camera"] else {}

        await partner.reload()
        (again,) = (await frames_after(partner, 1))[:1]
        reloaded = await partner.evaluate("() => window.__opened") / 1000
        return {
            **camera,
            "join_ms": times["join"] - started * 1000,
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
