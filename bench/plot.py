"""PNG plots of benchmark results (matplotlib; pip install -r bench/requirements.txt).

One plot per kind of result, chosen by the result's name (the JSON file's stem): see PLOTS.
bench/common.py:write_result draws it beside the JSON.

Usage: python -m bench.plot bench/results/<name>.json [OUT.png]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

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
    return _save(fig, out)


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


# Targets from docs/performance.md, as (median below, worst below) in seconds.
JOIN_TARGET_S = (1.0, None)
DETECTION_TARGET_S = (1.5, 2.0)
RECOVERY_TARGET_S = (1.0, 2.0)


def _runs(ax: Any, values: Sequence[float | None], label: str, colour: str, marker: str = "o") -> None:
    """One point per run (x = run number; None leaves a gap), the median as a dashed line of
    the same colour, the worst run ringed; n, median and worst in the legend."""
    xs = [i + 1 for i, v in enumerate(values) if v is not None]
    ys = [v for v in values if v is not None]
    if not ys:
        ax.plot([], [], marker, color=colour, label=f"{label}: no runs (n=0)")
        return
    median, worst = statistics.median(ys), max(ys)
    ax.plot(xs, ys, marker, color=colour, linestyle="none",
            label=f"{label} (n={len(ys)}): median {median:.2f} s, worst {worst:.2f} s")
    ax.axhline(median, color=colour, linewidth=1, linestyle="--", alpha=0.7)
    ax.plot(xs[ys.index(worst)], worst, "o", markersize=13, markerfacecolor="none", color=colour)


def _targets(ax: Any, target: tuple[float | None, float | None]) -> None:
    median, worst = target
    if median is not None:
        ax.axhline(median, color="red", linewidth=1.2, linestyle=":", label=f"target: median < {median:g} s")
    if worst is not None:
        ax.axhline(worst, color="darkred", linewidth=1.2, linestyle="-.", label=f"target: worst < {worst:g} s")


def _runs_axes(ax: Any, title: str, ylabel: str, runs: int) -> None:
    ax.set(title=title, xlabel="run", ylabel=ylabel)
    ax.set_xlim(0.5, max(runs, 1) + 0.5)
    ax.set_xticks(range(1, max(runs, 1) + 1))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    # Below the axes, so that it never hides a run.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))


def plot_join(result: dict[str, Any], out: Path) -> Path:
    """The third participant's join to media from both peers, per run, against the 1 s target."""
    if "join_to_media_each_s" not in result:
        raise ValueError("this join result has no per-run times (older bench.join): run it again")
    times = result["join_to_media_each_s"]
    rss_idle, rss_room = result["server_rss_idle_kib"], result["server_rss_one_room_of_three_kib"]
    fig, ax = plt.subplots(figsize=(7, 5))
    _runs(ax, times, "join to media", "tab:blue")
    _targets(ax, JOIN_TARGET_S)
    _runs_axes(ax, "aiortc join: third participant's join to first audio+video frame\nfrom both peers "
               f"(server RSS {rss_idle / 1024:.0f} MiB idle, {(rss_room - rss_idle) / 1024:+.1f} MiB "
               "with one room of three)", "seconds", len(times))
    return _save(fig, out)


def plot_browser_join(result: dict[str, Any], out: Path) -> Path:
    """Per join mode, the first remote frame and frames from both others, per run, against 1 s."""
    modes = list(result["runs"])
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.6), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        runs = result["runs"][mode]
        _runs(ax, [r["first_frame_ms"] / 1000 for r in runs], "first remote frame", "tab:blue")
        _runs(ax, [r["both_frames_ms"] / 1000 for r in runs], "frames from both others", "tab:orange", "s")
        _targets(ax, JOIN_TARGET_S)
        _runs_axes(ax, f"join {mode.replace('_', ' ')}", "seconds since the link was opened", len(runs))
    fig.suptitle(f"Chromium join: link opened to remote video ({result.get('chromium', 'Chromium')})",
                 fontsize=11)
    return _save(fig, out)


def _fault_plot(out: Path, title: str, detection: dict[str, Sequence[float | None]],
                recovery: dict[str, Sequence[float | None]]) -> Path:
    fig, (det_ax, rec_ax) = plt.subplots(1, 2, figsize=(13, 4.6))
    for ax, series, target in ((det_ax, detection, DETECTION_TARGET_S), (rec_ax, recovery, RECOVERY_TARGET_S)):
        for (label, values), colour, marker in zip(series.items(), ("tab:blue", "tab:orange"), "os"):
            _runs(ax, values, label, colour, marker)
        _targets(ax, target)
    runs = len(next(iter(detection.values())))
    _runs_axes(det_ax, "Detection: cut to the therapist seeing it", "seconds after the cut", runs)
    _runs_axes(rec_ax, "Recovery: network back to media flowing", "seconds after the network returned", runs)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out)


def plot_faults(result: dict[str, Any], out: Path) -> Path:
    """aiortc peers: per cut, detection ("lost" heard) and recovery (next video frame)."""
    return _fault_plot(
        out, f"aiortc peers, one link cut silently for {result['cut_seconds']:g} s",
        {"quality \"lost\" heard": result["detections"]}, {"next video frame": result["recoveries"]})


def plot_browser_faults(result: dict[str, Any], out: Path) -> Path:
    """Chromium: per cut, the tile and the drop notice, then media and video back."""
    cuts = result["cuts"]
    return _fault_plot(
        out, f"Chromium pages ({result['chromium']}), one link cut silently for {result['cut_seconds']:g} s",
        {"tile shows lost": [c["detection"] for c in cuts], "drop notice": [c["notice"] for c in cuts]},
        {"media back": [c["media_back"] for c in cuts],
         "video back (gap: paused by the flow)": [c["video_back"] for c in cuts]})


def plot_turn_overhead(result: dict[str, Any], out: Path) -> Path:
    """Round-trip distribution direct and through coturn; coturn's CPU per call."""
    trip, cpu = result["round_trip"], result["coturn_cpu_per_call"]
    fig, (rtt_ax, cpu_ax) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    paths = {"direct (host candidates)": trip["direct"], "relayed (both sides via coturn)": trip["relayed_both_sides"]}
    rtt_ax.boxplot([p["each_ms"] for p in paths.values()], showfliers=True)
    rtt_ax.set_xticks([1, 2], [f"{name}\nn={len(p['each_ms'])}, median {p['median_ms']:.2f} ms"
                               for name, p in paths.items()], fontsize=8)
    rtt_ax.set(title=f"Data-channel echo round trip (+{trip['extra_ms_median']:.2f} ms median via TURN)",
               ylabel="ms")
    rtt_ax.set_ylim(bottom=0)
    rtt_ax.grid(True, axis="y", alpha=0.3)
    calls = {"both sides relayed": cpu["both_sides_relayed"], "one side relayed": cpu["one_side_relayed"]}
    bars = cpu_ax.bar(list(calls), [c["coturn_cpu_percent_of_one_core"] for c in calls.values()],
                      color=["tab:orange", "tab:blue"])
    cpu_ax.bar_label(bars, [f"{c['coturn_cpu_percent_of_one_core']:.2f} %\n{c['rtp_kbit_s_both_directions']:.0f} kbit/s"
                            for c in calls.values()], fontsize=8)
    cpu_ax.set(title="coturn CPU per audio+video call", ylabel="% of one core")
    cpu_ax.margins(y=0.25)
    cpu_ax.grid(True, axis="y", alpha=0.3)
    machine = result["machine"]
    fig.suptitle(f"TURN overhead on loopback ({machine['cpus']} CPUs, load {machine['loadavg_1m']:.1f})",
                 fontsize=11)
    return _save(fig, out)


LEVEL_COLOURS = {"good": "tab:green", "relayed": "tab:blue", "busy": "tab:purple", "unmeasured": "tab:grey",
                 "choppy": "tab:orange", "weak": "tab:red", "failed": "black", "unfinished": "black"}


def plot_precheck_burst(result: dict[str, Any], out: Path) -> Path:
    """Each check's start and duration coloured by its verdict; each live session's p99 relay."""
    fig, (check_ax, live_ax) = plt.subplots(1, 2, figsize=(13, 4.6))
    for level in sorted({c["level"] for c in result["checks"]}):
        mine = [c for c in result["checks"] if c["level"] == level]
        check_ax.plot([c["started_s"] for c in mine], [c["seconds"] for c in mine], "o",
                      color=LEVEL_COLOURS.get(level, "tab:brown"), label=f"{level} ({len(mine)})")
    check_ax.set(title=f"Checks: {result['right']} of {len(result['checks'])} right on loopback",
                 xlabel="opened at (s into the burst)", ylabel="check took (s)")
    check_ax.set_ylim(bottom=0)
    live = result["live"]
    p99s = live["session_p99_ms"]
    live_ax.bar(range(len(p99s)), [x or 0 for x in p99s], color="tab:blue")
    limit = result["criteria"]["session_p99_ms_below"]
    live_ax.axhline(limit, color="red", linewidth=1, linestyle=":", label=f"{limit:g} ms limit")
    live_ax.set(title=f"Live sessions: p99 relay per session (all: p99 {live['relay_ms']['p99']:g} ms)",
                xlabel="session", ylabel="ms")
    for ax in (check_ax, live_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    cpu = result["server_cpu"]["per_check_s"]
    fig.suptitle(f"{result['what']}; server CPU {cpu * 1000:.0f} ms per check", fontsize=10)
    return _save(fig, out)


def plot_restart(result: dict[str, Any], out: Path) -> Path:
    """Per restart, the slowest page's time back in order after the server answered, against 5 s."""
    fig, ax = plt.subplots(figsize=(7, 5))
    _runs(ax, [r["slowest_s"] for r in result["runs"]], "slowest of three pages", "tab:blue")
    _targets(ax, (None, result["target_s"]))
    _runs_axes(ax, f"Server restart mid-session ({result['how']}): server answering to every page back "
               "in order", "seconds", len(result["runs"]))
    return _save(fig, out)


# Truth strips (bench.truth): what getStats and the applied faults say a link is, and what its
# tile showed. Shown levels reuse the tiles' own colours (web/static/app.css).
TRUTH_LEVEL_COLOURS = {"clean": "#4ade80", "faulty": "#b91c1c", "impaired": "#f97316", "unknown": "#e5e7eb",
                       "good": "#4ade80", "fair": "#fbbf24", "poor": "#f87171", "lost": "#4b5563",
                       "device": "tab:purple", "unsampled": "white"}
TRUTH_ROWS = (("therapist", "b"), ("a", "b"), ("therapist", "a"), ("b", "a"), ("a", "therapist"), ("b", "therapist"))


def _strip(ax: Any, y: float, spans: list[tuple[float, str]], height: float) -> None:
    """One row of one-second cells coloured by state."""
    for colour in {c for _, c in spans}:
        ax.broken_barh([(t - 0.5, 1.0) for t, c in spans if c == colour], (y, height),
                       facecolors=TRUTH_LEVEL_COLOURS.get(colour, colour), edgecolor="none")


def plot_truth(result: dict[str, Any], out: Path) -> Path:
    """One run's timeline: per viewer and peer, the truth strip over the shown strip, phases
    marked; below, the measured loss and frame rate of Partner B's video at the therapist."""
    names, seconds = result["names"], result["timeline"]
    fig, (ax, stats_ax) = plt.subplots(2, 1, figsize=(16, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    labels = []
    for row, (viewer, peer) in enumerate(TRUTH_ROWS):
        truth: list[tuple[float, str]] = []
        shown: list[tuple[float, str]] = []
        for s in seconds:
            link = next((x for x in s["links"] if x["viewer"] == viewer and x["peer"] == peer), None)
            if link is None:
                truth.append((s["t"], "unsampled"))
                shown.append((s["t"], "unsampled"))
                continue
            truth.append((s["t"], link["truth"]))
            shown.append((s["t"], "device" if link.get("device") else link.get("level") or "unknown"))
        y = len(TRUTH_ROWS) - 1 - row
        _strip(ax, y + 0.45, truth, 0.35)
        _strip(ax, y + 0.05, shown, 0.35)
        labels.append((y + 0.4, f"{names[viewer]} sees {names[peer]}\n(truth above, shown below)"))
    ax.set_yticks([y for y, _ in labels], [label for _, label in labels], fontsize=7)
    ax.set_ylim(0, len(TRUTH_ROWS))
    starts: dict[str, float] = {}
    for s in seconds:
        starts.setdefault(s["phase"], s["t"])
    for axis in (ax, stats_ax):
        for t in starts.values():
            axis.axvline(t - 0.5, color="black", linewidth=0.6, alpha=0.6)
    for name, t in starts.items():
        ax.text(t - 0.3, len(TRUTH_ROWS) + 0.05, name, fontsize=7, rotation=35, ha="left", va="bottom")
    for colour_name in ("clean", "faulty", "impaired", "fair", "poor", "lost", "device"):
        ax.plot([], [], "s", color=TRUTH_LEVEL_COLOURS[colour_name], label=colour_name)
    ax.legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, -0.02))
    for viewer, peer, colour in (("therapist", "b", "tab:red"), ("therapist", "a", "tab:blue")):
        ts, loss, fps = [], [], []
        for s in seconds:
            link = next((x for x in s["links"] if x["viewer"] == viewer and x["peer"] == peer), None)
            if link is not None and "loss" in link:
                ts.append(s["t"])
                loss.append(100 * link["loss"])
                fps.append(link.get("fps_in", 0))
        stats_ax.plot(ts, loss, "-", color=colour, linewidth=0.9, label=f"loss % ({names[peer]} at {names[viewer]})")
        stats_ax.plot(ts, fps, ":", color=colour, linewidth=0.9, label=f"fps in ({names[peer]} at {names[viewer]})")
    stats_ax.set(xlabel="seconds since the therapist admitted both partners", ylabel="getStats")
    stats_ax.set_ylim(bottom=0)
    stats_ax.grid(True, alpha=0.3)
    stats_ax.legend(fontsize=7, ncol=4)
    v = result["verdicts"]
    share = v["false_alarms"]["share"]
    load = result["machine"]["before"]["loadavg_1m"], result["machine"]["after"]["loadavg_1m"]
    fig.suptitle(f"Truth vs shown, partner B in {result['partner_browser']}: false alarms "
                 f"{'n/a' if share is None else f'{100 * share:.1f} %'} of clean seconds, wrong person "
                 f"{v['wrong_person']['seconds']} s (load {load[0]:.1f} before, {load[1]:.1f} after, "
                 f"{result['machine']['before']['cpus']} CPUs)", fontsize=10)
    return _save(fig, out)


PLOTS: dict[str, Callable[[dict[str, Any], Path], Path]] = {
    "signaling": plot_signaling,
    "join": plot_join,
    "browser_join": plot_browser_join,
    "faults": plot_faults,
    "browser_faults": plot_browser_faults,
    "turn_overhead": plot_turn_overhead,
    "precheck_burst": plot_precheck_burst,
    "restart": plot_restart,
    "truth": plot_truth,
}


def plot(name: str, result: dict[str, Any], out: Path) -> Path:
    """Draw the plot for result ``name`` (a benchmark's result name) into ``out``."""
    # A result saved under another name says which benchmark wrote it.
    name = name if name in PLOTS else str(result.get("bench", name))
    if name not in PLOTS:
        raise ValueError(f"no plot for {name!r}; known: {', '.join(PLOTS)}")
    return PLOTS[name](result, out)


def main() -> None:
    source = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    print(plot(source.stem, json.loads(source.read_text()), out))


if __name__ == "__main__":
    main()
