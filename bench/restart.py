"""Server restart mid-session: from the server answering again to every page back in order.

One three-party call of Chromium pages on a real `telehealth serve` process (tests/restart_call.py).
Per run the server is stopped (``--how kill``: SIGKILL, a crash; ``term``: SIGTERM, a graceful
stop; ``both``: alternating), started again on the same port and data, and each page's time
is taken from the moment its /healthz first answered to the moment the page was back in order
(a resumed welcome, the connection pill hidden, "Reconnecting to the service…" gone), by the
page's own clock. A run's figure is its slowest page.

Usage: python -m bench.restart [--runs 5] [--how both]; prints JSON, writes bench/results/restart.json.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from bench.common import summary, write_result
from tests.browser import CHROMIUM, frames_advance, launch_chromium
from tests.ports import free_port
from tests.restart_call import Served, back_in_order_at, open_call

SIGNALS = {"kill": [signal.SIGKILL], "term": [signal.SIGTERM], "both": [signal.SIGKILL, signal.SIGTERM]}


async def measure(runs: int, how: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="telehealth-restart-") as tmp:
        served = Served(Path(tmp) / "data", free_port())
        await served.start()
        playwright = await async_playwright().start()
        browser = await launch_chromium(playwright)
        each: list[dict[str, Any]] = []
        try:
            call = await open_call(browser, served.create_room())
            for i in range(runs):
                sig = SIGNALS[how][i % len(SIGNALS[how])]
                stopped = await served.stop(sig)
                await asyncio.sleep(1.0)  # the pages notice the server is gone
                answered = await served.start()
                back = [await back_in_order_at(p, answered) - answered for p in call.people]
                each.append({"signal": sig.name, "down_s": round(answered - stopped, 3),
                             "pages_s": [round(b, 3) for b in back], "slowest_s": round(max(back), 3)})
                for person in call.people:
                    await frames_advance(person.page)
        finally:
            await browser.close()
            await playwright.stop()
            served.close()
    version = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, check=False).stdout.strip()  # noqa: ASYNC221 (once, after the runs)
    return {
        "what": "seconds from the restarted server's first /healthz answer to every page back in order",
        "how": how, "runs": each,
        "slowest_page_s": summary([r["slowest_s"] for r in each]),
        "target_s": 5.0, "chromium": version, "machine": platform.machine(), "at": time.time(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--how", choices=list(SIGNALS), default="both")
    args = parser.parse_args()
    write_result("restart", asyncio.run(measure(args.runs, args.how)))


if __name__ == "__main__":
    main()
