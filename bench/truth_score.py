"""Scoring what a call's pages showed against what was true, second by second (pure, no I/O).

Input: the seconds tests/call_probe.py records, each with the phase it belongs to, what was
applied (the namespace's network fault, a device state) and every page's reading of itself
(tests/probe.js: per remote tile, the quality level, ``data-device``, ``data-status`` and
decoded frames shown, and the truth from getStats of the connection feeding it; every banner).

``timeline`` turns cumulative counters into one ``Link`` per viewer, peer and second, with the
truth of that link: **faulty** while a network fault is applied to it (only the namespace
partner's links can be), **impaired** when getStats shows trouble nobody applied (loss above
``LOSS_CLEAN``, round trip above ``RTT_CLEAN_MS``, or no packets arriving), else **clean**.
The monitor's own verdicts never enter the truth.

``score`` gives one row per phase (the confusion table):

- false-alarm seconds: seconds in which every link was clean, each page counted from its first
  remote frame on, and some page showed a tile Unsteady/Weak/Lost or a network banner (weak,
  dropped, reconnecting ...). Device words (busy, locked) are not a false alarm. The first
  ``RECOVERY_GRACE_S`` of a recovery phase are left out: the target there is video back
  within that time, and a verdict may take that long to lift.
- wrong-person seconds: seconds with a network fault applied in which some page showed a
  clean link, or a person whose own network was clean, as the problem.
- seconds to warn (fault phases): from the fault to the fault's person (their tile or a banner
  naming them) shown at the phase's level, on each other page.
- seconds to video back (recovery phases): from the network's return to the subject's picture
  advancing again on each other page, for ``BACK_SUSTAIN`` readings in a row, and the seconds
  it stood still again afterwards (a second a page was not read counts neither way).
  Both timings run from when the network change was asked for (``network_at``, the recorder's
  wall clock) to the instant the page's reading was taken (its ``t``, the same clock): a
  reading waits for the next once-a-second tick, and the first tick of a phase can come
  before its fault is in force. Records without those times fall back to the ticks.
- device phases: seconds the device person's state was worded as their device (a tile's
  ``data-device``, or words such as "busy"/"locked") and seconds it was blamed on a network.
  For a slow computer, also the seconds it was truly strained, by its own getStats: its
  browser said its encoder was CPU-limited, or it sent video at under ``STRAINED_FPS_SHARE``
  of its rate in the clean phase. A slow computer is judged worded only if it was strained:
  a limit the browser shrugs off (a fast host) is no slow computer, and the run says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

ROLES = ("therapist", "a", "b")
# Truth thresholds: a link is clean while getStats shows no more than this loss and round trip.
LOSS_CLEAN = 0.02
RTT_CLEAN_MS = 300.0
RECOVERY_GRACE_S = 10.0
# A slow computer is strained while it sends video at under this share of its clean-phase rate.
STRAINED_FPS_SHARE = 0.5
# Video is back once the picture advances in this many readings in a row.
BACK_SUSTAIN = 3
ALARM_LEVELS = frozenset({"fair", "poor", "lost"})
# What a phase's fault must be shown as, at least, to count as warned.
WARN_LEVELS = {"loss": frozenset({"fair", "poor", "lost"}), "rate": frozenset({"fair", "poor", "lost"}),
               "cut": frozenset({"lost"})}
NETWORK_WORDS = re.compile(r"weak|dropped|reconnect|interrupted|each other|unsteady|lost", re.IGNORECASE)
DEVICE_WORDS = re.compile(r"busy|locked|asleep|slow", re.IGNORECASE)
# Targets from issue 11.
TARGETS = {"false_alarm_share_max": 0.01, "wrong_person_seconds_max": 0, "warn_s_max": 5.0,
           "cut_warn_s_max": 2.0, "video_back_s_max": 10.0}
# Phases whose warning has a target (the issue names 4-5 % loss, 250 kbit/s and a cut).
WARN_TARGET_PHASES = {("loss", 5), ("rate", 250), ("cut", None)}


@dataclass(frozen=True)
class Phase:
    """One scripted stretch of the call. kind: clean | fault | recover | device. ``subject``:
    the role it is about (the faulty link's partner, the device's owner, the one recovering)."""

    name: str
    kind: str
    seconds: float
    subject: str | None = None
    network: tuple[str, int | None] | None = None  # ("loss", 5), ("rate", 250), ("cut", None)
    device: str | None = None  # "cpu" | "background" | "frozen"


@dataclass
class Link:
    """One viewer's tile of one peer for one second: the truth and what the tile showed."""

    viewer: str
    peer: str
    truth: str  # clean | faulty | impaired | unknown
    loss: float | None = None
    rtt_ms: float | None = None
    fps_in: float | None = None
    fps_out: float | None = None
    kbps_in: float | None = None
    kbps_out: float | None = None
    limitation: str | None = None
    encode_ms: float | None = None  # the viewer's encoder, per frame over the second
    level: str | None = None
    device: str | None = None
    status: str | None = None
    advancing: bool = False
    # What the viewer's page last told the server about this peer (its LinkStats): kept to
    # find why a verdict was wrong, never part of the truth.
    reported: dict[str, Any] | None = None


@dataclass
class Second:
    t: float
    phase: str
    network: tuple[str, int | None] | None
    device: tuple[str, str] | None  # (role, state)
    sampled: dict[str, bool]
    seen_video: dict[str, bool]  # the page had shown a remote frame by now
    links: list[Link] = field(default_factory=list)
    banners: dict[str, list[str]] = field(default_factory=dict)
    # Wall clock, ms: when the network state in force was asked for; when each page was read.
    network_at: float | None = None
    read_at: dict[str, float] = field(default_factory=dict)

    def link(self, viewer: str, peer: str) -> Link | None:
        return next((x for x in self.links if x.viewer == viewer and x.peer == peer), None)


def _rate(now: float, before: float, seconds: float) -> float:
    return max(0.0, now - before) / seconds


def _peer_roles(names: Mapping[str, str]) -> dict[str, str]:
    return {name: role for role, name in names.items()}


def _faulty_people(network: Sequence[Any] | None) -> set[str]:
    return {"b"} if network else set()


# The reported fields a verdict rests on (docs/protocol.md, LinkStats).
REPORTED_FIELDS = ("loss", "rtt_ms", "fps", "in_bitrate", "out_bitrate", "send_fps", "send_limit", "encode_ms",
                   "lag_ms", "video", "packets_in")


def _reported(stats: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return {k: stats[k] for k in REPORTED_FIELDS if stats.get(k) is not None} if stats else None


def timeline(records: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> list[Second]:
    """The recorded seconds as ``Second``s, counters turned into rates, truth decided.
    ``names``: role -> the person's name as tiles show it."""
    roles = _peer_roles(names)
    previous: dict[tuple[str, str], tuple[float, Mapping[str, Any], int]] = {}
    seen: dict[str, bool] = dict.fromkeys(ROLES, False)
    out: list[Second] = []
    for record in records:
        network = tuple(record["network"]) if record.get("network") else None
        device = tuple(record["device"]) if record.get("device") else None
        pages = record["pages"]
        second = Second(record["t"], record["phase"], network, device,  # type: ignore[arg-type]
                        {r: pages.get(r) is not None for r in ROLES}, {}, network_at=record.get("network_at"))
        measured: dict[tuple[str, str], Link] = {}
        for viewer in ROLES:
            sample = pages.get(viewer)
            if sample is None:
                continue
            second.read_at[viewer] = sample["t"]
            second.banners[viewer] = [b["text"] for b in sample["banners"]]
            for tile in sample["tiles"]:
                peer = roles.get(tile["name"])
                if peer is None:
                    continue
                link = Link(viewer, peer, "unknown", level=tile.get("level"), device=tile.get("device"),
                            status=tile.get("status"), reported=_reported(tile.get("reported")))
                key = (viewer, peer)
                frames = int(tile.get("frames") or 0)
                truth = tile.get("truth")
                before = previous.get(key)
                if before is not None:
                    link.advancing = frames > before[2]
                if frames > 0:
                    seen[viewer] = True
                if truth is not None:
                    link.limitation = truth.get("limitation")
                    link.rtt_ms = truth.get("rttMs")
                    if before is not None and before[1].get("pc") == truth.get("pc"):
                        dt = (sample["t"] - before[0]) / 1000
                        old = before[1]
                        if dt > 0 and truth["packetsIn"] >= old["packetsIn"]:
                            got = truth["packetsIn"] - old["packetsIn"]
                            lost = max(0, truth["packetsLost"] - old["packetsLost"])
                            link.loss = lost / (lost + got) if lost + got > 0 else 0.0
                            link.kbps_in = round(_rate(truth["bytesIn"], old["bytesIn"], dt) * 8 / 1000, 1)
                            link.kbps_out = round(_rate(truth["bytesOut"], old["bytesOut"], dt) * 8 / 1000, 1)
                            link.fps_in = round(_rate(truth["framesDecoded"], old["framesDecoded"], dt), 1)
                            link.fps_out = round(_rate(truth["framesEncoded"], old["framesEncoded"], dt), 1)
                            encoded = truth["framesEncoded"] - old["framesEncoded"]
                            if encoded > 0 and "encodeSeconds" in truth and "encodeSeconds" in old:
                                link.encode_ms = round(
                                    (truth["encodeSeconds"] - old["encodeSeconds"]) * 1000 / encoded, 1)
                    previous[key] = (sample["t"], truth, frames)
                else:
                    previous[key] = (sample["t"], {}, frames)
                measured[key] = link
        second.seen_video = dict(seen)
        faulty = _faulty_people(network)
        for (viewer, peer), link in measured.items():
            back = measured.get((peer, viewer))
            if viewer in faulty or peer in faulty:
                link.truth = "faulty"
                continue
            readings = [x for x in (link, back) if x is not None and x.loss is not None]
            if not readings:
                link.truth = "unknown"
            elif any((x.loss or 0) > LOSS_CLEAN or (x.rtt_ms or 0) > RTT_CLEAN_MS
                     or (x.kbps_in == 0 and x.peer != (device[0] if device and device[1] == "frozen" else None))
                     for x in readings):
                link.truth = "impaired"
            else:
                link.truth = "clean"
        second.links = list(measured.values())
        out.append(second)
    return out


# -- what a page claims ------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """Something a page shows as a network problem: a link (two roles) or a person's own
    network (one role)."""

    viewer: str
    target: frozenset[str]
    words: str


def _named(text: str, names: Mapping[str, str]) -> list[str]:
    found = [role for role, name in names.items() if name and name in text]
    if re.search(r"\byour therapist\b", text, re.IGNORECASE) and "therapist" not in found:
        found.append("therapist")
    return found


def banner_claims(viewer: str, text: str, names: Mapping[str, str]) -> list[Claim]:
    """The network problems a banner's words name, for the page of ``viewer``."""
    if not NETWORK_WORDS.search(text) or DEVICE_WORDS.search(text):
        return []
    named = [r for r in _named(text, names) if r != viewer]
    if re.search(r"each other", text, re.IGNORECASE) and len(named) >= 2:
        return [Claim(viewer, frozenset(named[:2]), text)]
    if re.search(r"connection to", text, re.IGNORECASE) and named:
        return [Claim(viewer, frozenset({viewer, r}), text) for r in named]
    if named:
        return [Claim(viewer, frozenset({r}), text) for r in named]
    if re.match(r"\s*your\b", text, re.IGNORECASE):
        return [Claim(viewer, frozenset({viewer}), text)]
    # "The connection is weak right now": an alarm about nobody in particular.
    return [Claim(viewer, frozenset(), text)] if "connection" in text.lower() else []


def claims(second: Second, names: Mapping[str, str]) -> list[Claim]:
    """Every network problem shown on a page that had shown a remote frame by then. A tile's
    bars are the network's, whatever its device words say beside them."""
    out: list[Claim] = []
    for link in second.links:
        if second.seen_video.get(link.viewer) and link.level in ALARM_LEVELS:
            out.append(Claim(link.viewer, frozenset({link.viewer, link.peer}), f"tile {link.level}"))
    for viewer, texts in second.banners.items():
        if second.seen_video.get(viewer):
            for text in texts:
                out.extend(banner_claims(viewer, text, names))
    return out


def device_worded(second: Second, who: str, names: Mapping[str, str]) -> bool:
    """Some other page words ``who``'s state as their device (a tile's data-device, or a
    banner naming them in device words)."""
    if any(x.peer == who and x.device for x in second.links):
        return True
    return any(viewer != who and DEVICE_WORDS.search(text) and names[who] in text
               for viewer, texts in second.banners.items() for text in texts)


def _clean_target(second: Second, target: frozenset[str]) -> bool:
    faulty = _faulty_people(second.network)
    if not target:
        return False
    if len(target) == 1:
        return not target & faulty
    a, b = sorted(target)
    links = [x for x in (second.link(a, b), second.link(b, a)) if x is not None]
    return bool(links) and all(x.truth == "clean" for x in links)


def all_clean(second: Second) -> bool:
    return second.network is None and bool(second.links) and all(x.truth == "clean" for x in second.links)


# -- the table ------------------------------------------------------------------------------

@dataclass
class PhaseScore:
    phase: str
    kind: str
    seconds: int
    clean_seconds: int = 0
    false_alarm_seconds: int = 0
    wrong_person_seconds: int = 0
    impaired_seconds: int = 0  # trouble in getStats that nobody applied
    # Seconds with no fault applied at all (network or device), whatever getStats says, and
    # those with an alarm: what a loaded machine costs, where truth-clean seconds get few.
    fault_free_seconds: int = 0
    fault_free_alarm_seconds: int = 0
    warn_s: dict[str, float | None] | None = None
    video_back_s: dict[str, float | None] | None = None
    video_stopped_again_s: dict[str, int] | None = None
    device_worded_seconds: int | None = None
    network_blamed_seconds: int | None = None
    cpu_limited_seconds: int | None = None
    strained_seconds: int | None = None
    examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Origin:
    """Where a phase's timings start: its first tick, and (when recorded) the wall-clock
    instant its network change was asked for."""

    tick: float
    network_at: float | None

    @classmethod
    def of(cls, phase: Sequence[Second], network_changed: bool) -> Origin:
        # The phase's first ticks may still carry the previous change's time: its own is the
        # latest.
        times = [s.network_at for s in phase if s.network_at is not None]
        return cls(phase[0].t, max(times) if network_changed and times else None)

    def since(self, s: Second, viewer: str) -> float:
        """Seconds from the origin to ``viewer``'s reading in ``s``."""
        read = s.read_at.get(viewer)
        if self.network_at is not None and read is not None:
            return round((read - self.network_at) / 1000, 1)
        return round(s.t - self.tick, 1)


def _first(seconds: Iterable[Second], origin: Origin, viewer: str, test: Any) -> float | None:
    for s in seconds:
        if test(s):
            return origin.since(s, viewer)
    return None


def video_back(seconds: Sequence[Second], viewer: str, peer: str) -> tuple[Second | None, int]:
    """The second in which ``viewer`` saw ``peer``'s picture back (the first of
    ``BACK_SUSTAIN`` readings in a row that advance, on a tile not covered by the flow's words:
    one second of frames flushed from a narrow link's queue is not video back), and how many
    readings after that stood still. A second the viewer's page was not read says nothing
    either way."""
    # A tile the flow covers with its words (audio only, reconnecting ...) shows no picture,
    # whatever frames its hidden video element decodes (a narrow link's queue flushing).
    advancing = [(s, x.advancing and x.status is None) for s in seconds if (x := s.link(viewer, peer)) is not None]
    for i, (s, _) in enumerate(advancing):
        run = advancing[i:i + BACK_SUSTAIN]
        if all(moving for _, moving in run):
            return s, sum(1 for _, moving in advancing[i:] if not moving)
    return None, 0


def cpu_limited(s: Second, who: str) -> bool:
    """Whether ``who``'s browser said its video encoder was CPU-limited in ``s``."""
    return any(x.viewer == who and x.limitation == "cpu" for x in s.links)


def sent_fps(s: Second, who: str) -> float | None:
    """The video frame rate ``who`` sent in ``s`` (mean over its connections), by its own getStats."""
    rates = [x.fps_out for x in s.links if x.viewer == who and x.fps_out is not None]
    return sum(rates) / len(rates) if rates else None


def clean_rate(seconds: Sequence[Second], phases: Sequence[Phase], who: str) -> float | None:
    """The median video frame rate ``who`` sent in the clean phases."""
    clean = {p.name for p in phases if p.kind == "clean"}
    rates = sorted(r for s in seconds if s.phase in clean and (r := sent_fps(s, who)) is not None)
    return rates[len(rates) // 2] if rates else None


def score(seconds: Sequence[Second], phases: Sequence[Phase], names: Mapping[str, str]) -> list[PhaseScore]:
    rows: list[PhaseScore] = []
    network_before: tuple[str, int | None] | None = None
    for phase in phases:
        network_changed, network_before = phase.network != network_before, phase.network
        mine = [s for s in seconds if s.phase == phase.name]
        row = PhaseScore(phase.name, phase.kind, len(mine))
        rows.append(row)
        if not mine:
            continue
        start = mine[0].t
        origin = Origin.of(mine, network_changed)
        for s in mine:
            shown = claims(s, names)
            if any(x.truth == "impaired" for x in s.links):
                row.impaired_seconds += 1
            graced = phase.kind == "recover" and s.t - start < RECOVERY_GRACE_S
            if s.network is None and s.device is None and not graced and any(s.seen_video.values()):
                row.fault_free_seconds += 1
                row.fault_free_alarm_seconds += bool(shown)
            if all_clean(s) and not graced and any(s.seen_video.values()):
                row.clean_seconds += 1
                if shown:
                    row.false_alarm_seconds += 1
                    if len(row.examples) < 3:
                        row.examples.append(f"{s.t - start:.0f}s {shown[0].viewer}: {shown[0].words}")
            if s.network is not None:
                wrong = [c for c in shown if _clean_target(s, c.target)]
                if wrong:
                    row.wrong_person_seconds += 1
                    if len(row.examples) < 3:
                        row.examples.append(f"{s.t - start:.0f}s {wrong[0].viewer}: {wrong[0].words} "
                                            f"(about {'+'.join(sorted(wrong[0].target))})")
        subject = phase.subject
        others = [r for r in ROLES if r != subject]
        if phase.kind == "fault" and subject and phase.network:
            levels = WARN_LEVELS[phase.network[0]]

            # Loop values bound as defaults: each closure is used within its own iteration.
            def warned(s: Second, viewer: str, subject: str = subject, levels: frozenset[str] = levels,
                       phase: Phase = phase) -> bool:
                link = s.link(viewer, subject)
                if link is not None and link.level in levels:
                    return True
                return phase.network is not None and phase.network[0] != "cut" and any(
                    c.viewer == viewer and subject in c.target for c in claims(s, names))

            row.warn_s = {v: _first(mine, origin, v, lambda s, v=v: warned(s, v)) for v in others}
        if phase.kind == "recover" and subject:
            row.video_back_s, row.video_stopped_again_s = {}, {}
            for v in others:
                back, stopped = video_back(mine, v, subject)
                row.video_back_s[v] = None if back is None else origin.since(back, v)
                row.video_stopped_again_s[v] = stopped
        if phase.kind == "device" and subject:
            row.device_worded_seconds = sum(1 for s in mine if device_worded(s, subject, names))
            row.network_blamed_seconds = sum(
                1 for s in mine if any(subject in c.target and c.viewer != subject for c in claims(s, names)))
            row.cpu_limited_seconds = sum(1 for s in mine if cpu_limited(s, subject))
            usual = clean_rate(seconds, phases, subject)
            row.strained_seconds = sum(
                1 for s in mine
                if cpu_limited(s, subject) or (usual and (r := sent_fps(s, subject)) is not None and r < STRAINED_FPS_SHARE * usual))
    return rows


def verdicts(rows: Sequence[PhaseScore], phases: Sequence[Phase]) -> dict[str, Any]:
    """The issue's targets, each with the figure it was judged on and whether it was met."""
    by_name = {p.name: p for p in phases}
    clean = sum(r.clean_seconds for r in rows)
    alarms = sum(r.false_alarm_seconds for r in rows)
    share = alarms / clean if clean else None
    wrong = sum(r.wrong_person_seconds for r in rows)
    warns: dict[str, float | None] = {}
    for r in rows:
        phase = by_name[r.phase]
        if r.warn_s is not None and phase.network is not None and (
                (phase.network[0], phase.network[1] if phase.network[0] != "cut" else None) in WARN_TARGET_PHASES):
            values = list(r.warn_s.values())
            warns[r.phase] = None if any(v is None for v in values) else max(v for v in values if v is not None)
    warn_ok = all(v is not None and v <= (TARGETS["cut_warn_s_max"] if by_name[p].network[0] == "cut"  # type: ignore[index]
                                          else TARGETS["warn_s_max"]) for p, v in warns.items())
    backs: dict[str, float | None] = {}
    stopped: dict[str, int] = {}
    for r in rows:
        if r.video_back_s is not None:
            values = list(r.video_back_s.values())
            backs[r.phase] = None if any(v is None for v in values) else max(v for v in values if v is not None)
            stopped[r.phase] = sum((r.video_stopped_again_s or {}).values())
    back_ok = all(v is not None and v <= TARGETS["video_back_s_max"] for v in backs.values()) and not any(stopped.values())
    cpu = [r for r in rows if by_name[r.phase].device == "cpu"]
    strained = sum(r.strained_seconds or 0 for r in cpu)
    cpu_worded = bool(cpu) and strained > 0 and all(
        (r.device_worded_seconds or 0) > 0 and not r.network_blamed_seconds for r in cpu)
    free = sum(r.fault_free_seconds for r in rows)
    free_alarms = sum(r.fault_free_alarm_seconds for r in rows)
    return {
        "false_alarms": {"seconds": alarms, "of_clean_seconds": clean,
                         "share": None if share is None else round(share, 4),
                         "met": share is not None and share <= TARGETS["false_alarm_share_max"]},
        "alarms_without_any_fault": {"seconds": free_alarms, "of_seconds": free,
                                     "share": round(free_alarms / free, 4) if free else None},
        "wrong_person": {"seconds": wrong, "met": wrong <= TARGETS["wrong_person_seconds_max"]},
        "warned_s": {"worst_per_phase": warns, "met": warn_ok},
        "video_back_s": {"worst_per_phase": backs, "stopped_again_seconds": stopped, "met": back_ok},
        "cpu_worded_as_device": {"met": cpu_worded, "strained_seconds": strained,
                                 "worded_seconds": sum(r.device_worded_seconds or 0 for r in cpu)},
    }


def table(rows: Sequence[PhaseScore]) -> str:
    """The confusion table as text, one line per phase."""
    def fmt(values: Mapping[str, Any] | None) -> str:
        if values is None:
            return "-"
        return " ".join(f"{k[0]}:{'never' if v is None else v}" for k, v in values.items())

    head = f"{'phase':<14}{'kind':<8}{'secs':>5}{'clean':>6}{'false':>6}{'wrong':>6}{'impr':>5}  " \
           f"{'nofault':>8}  {'warn s':<18}{'video back s':<18}{'stop':<12}{'device/net/cpu/strained'}"
    lines = [head]
    for r in rows:
        device = "-" if r.device_worded_seconds is None else \
            f"{r.device_worded_seconds}/{r.network_blamed_seconds}/{r.cpu_limited_seconds}/{r.strained_seconds}"
        lines.append(f"{r.phase:<14}{r.kind:<8}{r.seconds:>5}{r.clean_seconds:>6}{r.false_alarm_seconds:>6}"
                     f"{r.wrong_person_seconds:>6}{r.impaired_seconds:>5}"
                     f"{f'{r.fault_free_alarm_seconds}/{r.fault_free_seconds}':>8}  {fmt(r.warn_s):<18}"
                     f"{fmt(r.video_back_s):<18}{fmt(r.video_stopped_again_s):<12}{device}")
    return "\n".join(lines)


def as_json(rows: Sequence[PhaseScore]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def compact(seconds: Sequence[Second]) -> list[dict[str, Any]]:
    """The timeline as JSON (for the result file and the plot)."""
    return [{"t": s.t, "phase": s.phase, "network": list(s.network) if s.network else None,
             "network_at": s.network_at, "read_at": s.read_at,
             "device": list(s.device) if s.device else None, "banners": s.banners,
             "links": [{k: v for k, v in asdict(x).items() if v is not None} for x in s.links]}
            for s in seconds]

