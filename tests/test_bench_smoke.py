"""The signaling capacity benchmark still runs end to end (breakage, not timing).

Thirty participants for three seconds against telehealth, the bare relay and the PeerJS server,
each in its own process with load generator processes beside it, exactly as the full run does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERJS = ROOT / "bench" / "peerjs"


def test_the_signaling_benchmark_runs_against_all_three_targets(tmp_path: Path) -> None:
    assert shutil.which("node") and shutil.which("npm"), "the PeerJS comparison needs node and npm"
    if not (PEERJS / "node_modules" / "peer").is_dir():
        subprocess.run(["npm", "ci", "--prefix", str(PEERJS), "--no-audit", "--no-fund", "--silent"],
                       check=True, timeout=300)
    out = tmp_path / "signaling.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.signaling", "--smoke", "--nice", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())

    assert set(result["capacity_per_core"]) == {"ours", "bare", "peerjs"}
    assert {"capacity_ours_over_bare", "capacity_ours_over_peerjs"} <= set(result["ratios"])
    (level,) = result["levels"]
    assert level["n"] == 30
    for target in ("ours", "bare", "peerjs"):
        row = level["targets"][target]
        # For breakage, not timing: most rooms came together (on a busy machine one may miss
        # the 3 s window), nothing was refused, relayed messages arrived and were timed.
        assert row["rooms_failed"] < level["n"] // 3, (target, row)
        assert row["errors"] == {}, (target, row["errors"])
        assert row["relay_ms"]["samples"] > 0 and row["probe_ms"]["samples"] > 0, (target, row)
        assert row["delivered"] > 0.5, (target, row)
        assert row["counts"]["rejoins_done"] >= 1, (target, row["counts"])
        assert row["rss_per_participant_kib"] > 0 and row["server_cpu"] >= 0
        assert row["loadgen"]["processes"] == 2
