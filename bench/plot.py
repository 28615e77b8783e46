"""PNG plots of benchmark results (matplotlib; pip install -r bench/requirements.txt).

Usage: python -m bench.plot bench/results/signaling.json [OUT.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"ours": "telehealth", "bare": "bare aiohttp relay", "peerjs": "PeerJS server"}
COLOURS = {"ours": "tab:blue", "bare": "tab:grey", "peerjs": "tab:orange"}


def _series(result: dict[str, Any], target: str, pick: Any) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for level in result["levels"]:
        row = level["targets"].get(target)
        if row is not None:
            xs.append(level["n"])
            ys.append(pick(row))
    return xs, ys


def plot_signaling(result: dict[str, Any], out: Path) -> Path:
    """Relay p99 and p50, server CPU and memory per participant against N, one line per target."""
    targets = [t for t in LABELS if any(t in level["targets"] for level in result["levels"])]
    fig, (lat_ax, cpu_ax, mem_ax) = plt.subplots(1, 3, figsize=(15, 4.6))
    for t in targets:
        colour, label = COLOURS[t], LABELS[t]
        xs, p99 = _series(result, t, lambda r: r["relay_ms"]["p99"])
        _, p50 = _series(result, t, lambda r: r["relay_ms"]["p50"])
        lat_ax.plot(xs, p99, "o-", color=colour, label=f"{label} p99")
        lat_ax.plot(xs, p50, "x--", color=colour, alpha=0.6, label=f"{label} p50")
        xs, cpu = _series(result, t, lambda r: 100 * r["server_cpu"])
        cpu_ax.plot(xs, cpu, "o-", color=colour, label=label)
        xs, mem = _series(result, t, lambda r: r["rss_per_participant_kib"])
        mem_ax.plot(xs, mem, "o-", color=colour, label=label)
    limit = result["criteria"]["p99_ms_below"]
    lat_ax.axhline(limit, color="red", linewidth=1, linestyle=":", label=f"{limit:g} ms limit")
    lat_ax.set_yscale("log")
    lat_ax.set(title="Relay latency", xlabel="participants (rooms of three)", ylabel="ms (log)")
    cpu_ax.set(title="Server CPU (one core)", xlabel="participants", ylabel="% of a core", ylim=(0, 105))
    mem_ax.set(title="Memory per participant", xlabel="participants", ylabel="KiB (RSS delta / N)")
    mem_ax.set_ylim(bottom=0)
    for ax in (lat_ax, cpu_ax, mem_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    caps = ", ".join(f"{LABELS[t]} {n:,}" for t, n in result["capacity_per_core"].items())
    fig.suptitle(f"Signaling capacity per core at p99 < {limit:g} ms: {caps}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    source = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    print(plot_signaling(json.loads(source.read_text()), out))


if __name__ == "__main__":
    main()
