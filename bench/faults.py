"""Fault handling: how fast a network cut is noticed, and how fast video comes back.

A real server process; the therapist and partner A are aiortc peers in this process; partner B
runs in its own network namespace (the tools of the fallback tests), and its link is cut
silently (nftables drop both ways) for ``--cut`` seconds, ``--runs`` times. Per cut:

- detection: from the cut to the therapist's page hearing that B's quality is "lost";
- recovery: from the network's return to the next video frame from B at the therapist.

Needs root (namespaces). Usage: python -m bench.faults [--runs 10] [--cut 3] (smoke: --runs 1 --cut 1)
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import start_server, summary, write_result
from tests.netfault import namespace
from tests.remote_participant import CounterWatch, call, media_everywhere


def _heard(person, b_id: str, level: str, after: float) -> float | None:  # type: ignore[no-untyped-def]
    return next((t for t, m in person.timed
                 if t > after and m["type"] == "quality" and m["people"].get(b_id) == level), None)


def _not_lost_since(person, b_id: str, after: float) -> bool:  # type: ignore[no-untyped-def]
    levels = [m["people"].get(b_id) for t, m in person.timed if t > after and m["type"] == "quality"]
    return bool(levels) and levels[-1] not in (None, "lost")


async def main(runs: int, cut_s: float) -> None:
    server = await start_server("--host", "0.0.0.0", env={"TELEHEALTH_REJOIN_WINDOW_SECONDS": "45"})
    detections: list[float] = []
    recoveries: list[float] = []
    try:
        async with namespace() as ns, call(server, ns) as c:  # type: ignore[arg-type]
            b_id = c.b_id
            await media_everywhere(c)
            watch = CounterWatch(lambda: c.therapist.frames_from(b_id)["video"])
            try:
                for _ in range(runs):
                    await c.therapist.wait_for(lambda: _heard(c.therapist, b_id, "good", 0) is not None, 15)
                    cut = await ns.cut()
                    await c.therapist.wait_for(lambda: _heard(c.therapist, b_id, "lost", cut.began) is not None, 10)  # noqa: B023 (awaited here)
                    detections.append(_heard(c.therapist, b_id, "lost", cut.began) - cut.began)  # type: ignore[operator]
                    print(f"cut {len(detections)}: lost after {detections[-1]:.3f} s", flush=True)
                    await asyncio.sleep(max(0.0, cut_s - (time.monotonic() - cut.began)))
                    back = await ns.restore()
                    recoveries.append(await watch.growth_after(back.at, 10) - back.began)
                    # The next cut starts from a settled, good link.
                    await c.therapist.wait_for(lambda: _not_lost_since(c.therapist, b_id, back.at), 15)  # noqa: B023 (awaited here)
                    if len(recoveries) < runs:
                        await asyncio.sleep(2.0)
            finally:
                watch.stop()
    finally:
        await server.stop()
    write_result("faults", {
        "what": "aiortc peers; partner B's link cut silently in a network namespace",
        "cut_seconds": cut_s,
        "detection_s": summary(detections),
        "recovery_s": summary(recoveries),
        "detections": [round(x, 3) for x in detections],
        "recoveries": [round(x, 3) for x in recoveries],
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cut", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.cut))
