"""Does the quality monitor tell the truth? Verdicts scored against ground truth, per phase.

A real `telehealth serve` on every interface and a real three-party call of the project's
pages (tests/call_probe.py): the therapist and Partner A in a headless Chromium on the host,
Partner B's browser (Chromium, or Firefox with ``--partner firefox``) inside a network
namespace. Scripted phases, each ``--phase-seconds`` long: a clean call from its start, then
network faults on Partner B's link (2 % and 5 % loss, 250 and 600 kbit/s, a 3 s cut), each
followed by a clean stretch ("after-..."), then device states of Partner A on a clean link (a
slow computer (its whole Chromium held to a tenth of a core), a background tab, a frozen
page (CDP), and a clean end.

Once a second every page is read: the truth from its own getStats (loss, round trip, fps in
and out, bitrates, qualityLimitationReason) and what it shows (each tile's level,
data-device and data-status, banners, whether the picture advances). The truth is the
namespace's applied fault plus getStats, never the monitor's word. bench/truth_score.py
prints the confusion table per phase: false-alarm seconds on clean links, wrong-person
seconds, seconds to warn, seconds to video back, device wording.

Needs root (namespaces), Debian's chromium, and for ``--partner firefox`` firefox-esr and
npm's puppeteer-core. Usage: python -m bench.truth [--partner chromium|firefox]
[--phase-seconds 20] [--out docs/results/truth.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from bench.common import start_server, write_result
from bench.truth_score import Phase, as_json, compact, score, table, timeline, verdicts
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.call_probe import ProbeCall, Recorder, probe_call
from tests.netfault import Namespace, namespace

CUT_SECONDS = 3.0
# Call start: how long every page may take to show both others' video before the clean phase
# counts its seconds anyway.
FIRST_VIDEO_TIMEOUT_S = 60.0
NAMES = ("Bench Therapist", "Bench Partner 0", "Bench Partner 1")


def phases(seconds: float) -> list[Phase]:
    faults: list[tuple[str, tuple[str, int | None], float]] = [
        ("loss2", ("loss", 2), seconds), ("loss5", ("loss", 5), seconds),
        ("rate250", ("rate", 250), seconds), ("rate600", ("rate", 600), seconds),
        ("cut3", ("cut", None), min(CUT_SECONDS, seconds)),
    ]
    out = [Phase("clean", "clean", seconds)]
    for name, network, length in faults:
        out += [Phase(name, "fault", length, subject="b", network=network),
                Phase(f"after-{name}", "recover", seconds, subject="b")]
    out += [Phase(name, "device", seconds, subject="a", device=name) for name in ("cpu", "background", "frozen")]
    out.append(Phase("clean-again", "recover", seconds, subject="a"))
    return out


async def _apply_network(ns: Namespace, network: tuple[str, int | None] | None) -> None:
    kind, value = network if network else ("clear", None)
    if kind == "loss":
        await ns.loss(int(value or 0))
    elif kind == "rate":
        await ns.rate(int(value or 0))
    elif kind == "cut":
        await ns.cut()
    else:
        await ns.clear()


async def _device(call: ProbeCall, state: str, on: bool) -> None:
    if state == "cpu":
        call.a.slow_computer(on)
    elif state == "background":
        await call.a.background(on)
    elif state == "frozen":
        await call.a.freeze(on)


async def run_phases(recorder: Recorder, call: ProbeCall, ns: Namespace, script: list[Phase]) -> None:
    """Each phase in turn: its network state in force (then recorded), its device state on
    Partner A, its seconds, the device state undone."""
    for phase in script:
        recorder.phase = phase.name
        if phase.network != recorder.network:
            asked_at = time.time() * 1000
            await _apply_network(ns, phase.network)
            recorder.network, recorder.network_at = phase.network, asked_at
        if phase.name == "clean":
            # Call start is measured too: the clean phase runs from admission, and its
            # seconds start once every page shows both others' video (or after a while).
            await recorder.wait(recorder.seen_video, FIRST_VIDEO_TIMEOUT_S)
        if phase.device is not None:
            await _device(call, phase.device, True)
            recorder.device = ("a", phase.device)
        # The schedule itself: the phase lasts this long, whatever the pages do.
        await asyncio.sleep(phase.seconds)
        if phase.device is not None:
            await _device(call, phase.device, False)
            recorder.device = None


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}


async def main(partner: str, phase_seconds: float, out: Path | None) -> None:
    script = phases(phase_seconds)
    load_before = machine()
    server = await start_server("--host", "0.0.0.0", env={"TELEHEALTH_REJOIN_WINDOW_SECONDS": "45"})
    try:
        room = server.create_room()
        async with async_playwright() as playwright, namespace() as ns:
            host = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                    args=list(CHROMIUM_ARGS))
            try:
                async with probe_call(host, playwright.chromium, ns, room.therapist_link, room.partner_links,
                                      NAMES, partner) as call:
                    recorder = Recorder(call)
                    recorder.start()
                    try:
                        await run_phases(recorder, call, ns, script)
                    finally:
                        await recorder.stop()
                    names, partner_version = call.names, call.browser_version
                chromium = host.version
            finally:
                await host.close()
    finally:
        await server.stop()
    seconds = timeline(recorder.records, names)
    rows = score(seconds, script, names)
    print(table(rows), flush=True)
    result = {
        "bench": "truth",
        "what": "three-party call of the project's pages; Partner B's browser in a network namespace, "
                "scripted faults on its link, then device states of Partner A (CDP) on a clean link",
        "partner": partner,
        "partner_browser": partner_version,
        "chromium": chromium,
        "phase_seconds": phase_seconds,
        "machine": {"before": load_before, "after": machine()},
        "names": names,
        "phases": [{"name": p.name, "kind": p.kind, "seconds": p.seconds, "subject": p.subject,
                    "network": list(p.network) if p.network else None, "device": p.device} for p in script],
        "verdicts": verdicts(rows, script),
        "table": as_json(rows),
        "table_text": table(rows),
        "timeline": compact(seconds),
    }
    write_result("truth", result, out=out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--partner", choices=("chromium", "firefox"), default="chromium")
    parser.add_argument("--phase-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON file to write (the PNG goes beside it); default: the results folder")
    args = parser.parse_args()
    asyncio.run(main(args.partner, args.phase_seconds, args.out))
