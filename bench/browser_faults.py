"""Fault handling in real browsers: how fast a cut is seen, and how fast media comes back.

A real `telehealth serve` process listening on every interface; the therapist and Partner 1 are
pages of a headless Chromium on the host; Partner 2's Chromium runs inside a network namespace
whose link is cut silently (nftables drop, both ways) for ``--cut`` seconds, ``--runs`` times.
Per cut, on the therapist's page (tests/browser_call.py measures it):

- detection: from the cut to Partner 2's tile showing the link lost;
- notice: from the cut to the drop notice ("Partner 2's connection dropped ...");
- media back: from the network's return to the first RTP packet from Partner 2;
- video back: from the network's return to Partner 2's next decoded frame. Not measured for a
  cut that began while the flow had paused Partner 2's video: a partner who drops again soon
  after the last drop comes back audio only, by design (docs/fallback.md, flapping).

Times start when the fault was asked for (``FaultEvent.began``): an upper bound.
Needs root (namespaces) and Debian's chromium. Usage: python -m bench.browser_faults [--runs 10] [--cut 3]
"""

from __future__ import annotations

import argparse
import asyncio

from playwright.async_api import async_playwright

from bench.common import start_server, summary, write_result
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.browser_call import CutTiming, browser_call, chromium_in, measure_cut
from tests.netfault import namespace


async def main(runs: int, cut_s: float) -> None:
    server = await start_server("--host", "0.0.0.0", env={"TELEHEALTH_REJOIN_WINDOW_SECONDS": "45"})
    timings: list[CutTiming] = []
    try:
        room = server.create_room()
        async with async_playwright() as playwright, namespace() as ns:
            host = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                    args=list(CHROMIUM_ARGS))
            version = host.version
            try:
                async with chromium_in(playwright.chromium, ns, ns.host_url(server.base_url)) as in_ns, \
                        browser_call(host, in_ns, ns, room.therapist_link, room.partner_links,
                                     ("Bench Partner 0", "Bench Partner 1")) as call:
                    for n in range(runs):
                        timing = await measure_cut(call, ns, cut_s)
                        timings.append(timing)
                        print(f"cut {n + 1}: lost after {timing.detection:.3f} s, notice after "
                              f"{timing.notice:.3f} s, media back {timing.media_back:.3f} s, video back "
                              f"{'(paused by the flow)' if timing.video_back is None else f'{timing.video_back:.3f} s'}",
                              flush=True)
            finally:
                await host.close()
    finally:
        await server.stop()
    video = [t.video_back for t in timings if t.video_back is not None]
    write_result("browser_faults", {
        "what": "headless Chromium pages; Partner 2's browser in a network namespace, its link cut silently",
        "chromium": version,
        "cut_seconds": cut_s,
        "detection_s": summary([t.detection for t in timings]),
        "notice_s": summary([t.notice for t in timings]),
        "media_back_s": summary([t.media_back for t in timings]),
        "video_back_s": summary(video) if video else None,
        "cuts": [{"detection": round(t.detection, 3), "notice": round(t.notice, 3),
                  "media_back": round(t.media_back, 3),
                  "video_back": None if t.video_back is None else round(t.video_back, 3)} for t in timings],
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cut", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.cut))
