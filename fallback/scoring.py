"""Connection quality: typed samples in, a level per link and per participant out.

Pure: no I/O, no clock of its own. Every sample carries the server's receive time ``t``
(monotonic seconds) and ``evaluate(now)`` takes the time to judge at. docs/fallback.md is
the contract for every formula and threshold here.

A directed link ``(reporter, peer)`` is the reporter's view of its peer connection to the
peer: inbound counters count media from the peer. Its level moves like this::

    (no data, or the connection has not carried media yet) -> None
    any --window scores lower--> lower level at once            (falls fast)
    any --window scores higher for the hold--> higher           (recovers slowly)
      the hold is upgrade_hold_s, doubled after each fall that soon follows a rise
    any --inbound packets stop growing for lost_after_s--> LOST
    LOST --packets grow in every sample for recover_from_lost_s--> the window's level

A participant's level and the attributions come from the links, per ``evaluate``.
"""

from __future__ import annotations

import enum
import itertools
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from signaling.protocol import LinkStats
from telehealth.tokens import PersonId

CandidateType = Literal["host", "srflx", "prflx", "relay"]
Pair = frozenset[PersonId]

# E-model (ITU-T G.107), simplified as in Cole & Rosenbluth (2001). The constants are the
# standard's defaults; the codec terms are G.113's for G.711 with packet loss concealment,
# a conservative stand-in for Opus, whose concealment is at least as good.
R_DEFAULT = 93.2
CODEC_IE = 0.0
CODEC_BPL = 25.1
DELAY_KNEE_MS = 177.3
# A browser's jitter buffer holds about two jitters of audio, plus a packet's worth.
JITTER_BUFFER_FACTOR = 2.0
PACKET_MS = 20.0


class Quality(str, enum.Enum):
    GOOD = "good"
    FAIR = "fair"
    POOR = "poor"
    LOST = "lost"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Quality.LOST: 0, Quality.POOR: 1, Quality.FAIR: 2, Quality.GOOD: 3}


def worst(levels: Iterable[Quality]) -> Quality:
    return min(levels, key=_RANK.__getitem__)


def best(levels: Iterable[Quality]) -> Quality:
    return max(levels, key=_RANK.__getitem__)


@dataclass(frozen=True, slots=True)
class ScoringThresholds:
    """Every threshold of the scorer; docs/fallback.md explains each default."""

    # Samples younger than this (before the newest) make up the window that is scored.
    window_s: float = 2.0
    # Inbound packets not growing for this long: the media path is lost.
    lost_after_s: float = 1.0
    # Packets growing in every sample for this long: a lost path is back.
    recover_from_lost_s: float = 1.0
    # A better level must hold this long before the link moves up to it. A fall within
    # flap_window_s of the last rise doubles the hold, up to upgrade_hold_max_s.
    upgrade_hold_s: float = 3.0
    upgrade_hold_max_s: float = 30.0
    flap_window_s: float = 30.0
    # A link (or a participant) with no sample or heartbeat for this long is not heard from.
    stale_after_s: float = 3.0
    # Audio: mean opinion score at or above these is good / fair; below fair is poor.
    mos_good: float = 4.0
    mos_fair: float = 3.6
    # Video: score (0..1, see video_score) at or above these is good / fair.
    video_good: float = 0.75
    video_fair: float = 0.4
    # Video targets: a 640x360 call at a steady frame rate.
    target_fps: float = 24.0
    target_bitrate: float = 500_000.0
    # A new connection's video is not judged for this long: the sender's bandwidth estimate
    # and frame rate ramp up over the first seconds, and that is not a weak network.
    video_warmup_s: float = 6.0


@dataclass(frozen=True, slots=True)
class LinkSample:
    """One report of a directed link, mirroring the wire message ``LinkStats``.

    ``t`` is the server's receive time. Rates and fractions are over the last interval;
    ``packets_in``, ``bytes_in`` and the frame counters are cumulative for connection ``pc``.
    """

    t: float
    rtt_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None
    packets_in: int | None = None
    bytes_in: int | None = None
    frames_decoded: int | None = None
    frames_dropped: int | None = None
    fps: float | None = None
    concealed: float | None = None
    out_bitrate: float | None = None
    in_bitrate: float | None = None
    candidate: CandidateType | None = None
    video: bool = True
    pc: str | None = None

    @classmethod
    def from_stats(cls, stats: LinkStats, t: float) -> LinkSample:
        return cls(
            t=t, rtt_ms=stats.rtt_ms, jitter_ms=stats.jitter_ms, loss=stats.loss,
            packets_in=stats.packets_in, bytes_in=stats.bytes_in,
            frames_decoded=stats.frames_decoded, frames_dropped=stats.frames_dropped,
            fps=stats.fps, concealed=stats.concealed, out_bitrate=stats.out_bitrate,
            in_bitrate=stats.in_bitrate, candidate=stats.candidate, video=stats.video,
            pc=stats.pc,
        )


# -- formulas -------------------------------------------------------------------------------


def r_factor(rtt_ms: float, jitter_ms: float, loss: float) -> float:
    """R = 93.2 - Id - Ie_eff, from round-trip time, jitter (ms) and loss (fraction)."""
    delay = max(rtt_ms, 0.0) / 2 + JITTER_BUFFER_FACTOR * max(jitter_ms, 0.0) + PACKET_MS
    delay_impairment = 0.024 * delay + 0.11 * max(delay - DELAY_KNEE_MS, 0.0)
    loss_pct = 100.0 * min(max(loss, 0.0), 1.0)
    equipment = CODEC_IE + (95.0 - CODEC_IE) * loss_pct / (loss_pct + CODEC_BPL)
    return R_DEFAULT - delay_impairment - equipment


def mos_from_r(r: float) -> float:
    """G.107's mapping from R to a mean opinion score between 1 and 4.5."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    # The polynomial dips just under 1 for small R; the scale has no such score.
    return max(1.0, 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6)


def audio_mos(rtt_ms: float, jitter_ms: float, loss: float) -> float:
    return mos_from_r(r_factor(rtt_ms, jitter_ms, loss))


def video_score(
    fps: float | None, bitrate: float | None, limits: ScoringThresholds
) -> float | None:
    """The weaker of frame rate and bandwidth, each against its target, capped at 1."""
    ratios = [min(value / target, 1.0) for value, target in
              ((fps, limits.target_fps), (bitrate, limits.target_bitrate)) if value is not None]
    return max(min(ratios), 0.0) if ratios else None


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def window_level(window: list[LinkSample], limits: ScoringThresholds, *, video: bool = True) -> Quality | None:
    """Score a window of samples (oldest first): the worse of audio and video, or None.
    ``video=False`` scores audio only (a connection still warming up)."""
    levels: list[Quality] = []
    rtt = _mean(s.rtt_ms for s in window)
    jitter = _mean(s.jitter_ms for s in window)
    # What the listener misses is the larger of network loss and concealed audio.
    loss = _mean(max((v for v in (s.loss, s.concealed) if v is not None), default=None)
                 for s in window)
    if rtt is not None or jitter is not None or loss is not None:
        mos = audio_mos(rtt or 0.0, jitter or 0.0, loss or 0.0)
        levels.append(Quality.GOOD if mos >= limits.mos_good
                      else Quality.FAIR if mos >= limits.mos_fair else Quality.POOR)
    newest = window[-1]
    if video and newest.video:
        fps = _mean(s.fps for s in window)
        first = window[0]
        if (fps is None and newest.t > first.t and first.frames_decoded is not None
                and newest.frames_decoded is not None):
            fps = (newest.frames_decoded - first.frames_decoded) / (newest.t - first.t)
        # The browser's estimate of what the link can carry; what arrives drops on purpose
        # when video is lowered, and must not read as a worse network.
        bitrate = _mean(s.out_bitrate for s in window)
        if bitrate is None:
            bitrate = _mean(s.in_bitrate for s in window)
        score = video_score(fps, bitrate, limits)
        if score is not None:
            levels.append(Quality.GOOD if score >= limits.video_good
                          else Quality.FAIR if score >= limits.video_fair else Quality.POOR)
    return worst(levels) if levels else None


# -- one directed link ----------------------------------------------------------------------


@dataclass(slots=True)
class _LinkTrack:
    samples: deque[LinkSample] = field(default_factory=deque)
    level: Quality | None = None
    # A better window level waiting out its hold: since when, and the lowest level seen.
    rise_since: float | None = None
    hold: float = 0.0
    last_rise: float | None = None
    rise_floor: Quality | None = None
    packets: int | None = None
    flowed: bool = False
    last_growth: float = 0.0
    growth_run_since: float | None = None
    # When this connection's first media arrived (the video warm-up runs from here).
    media_since: float | None = None

    def reset(self) -> None:
        self.samples.clear()
        self.level = self.rise_since = self.rise_floor = self.packets = None
        self.flowed = False
        self.growth_run_since = self.media_since = None

    def add(self, sample: LinkSample, limits: ScoringThresholds) -> None:
        newest = self.samples[-1] if self.samples else None
        if newest is not None and sample.pc != newest.pc:
            self.reset()  # a fresh connection: its counters start again
        self.samples.append(sample)
        while self.samples[0].t < sample.t - limits.window_s:
            self.samples.popleft()
        self._count_packets(sample)
        self._move(self._raw_level(sample, limits), sample.t, limits)

    def _count_packets(self, sample: LinkSample) -> None:
        count = sample.packets_in
        if count is None:
            return
        previous = self.packets
        self.packets = count
        if previous is not None and count < previous:
            previous = 0  # counters went back: a new connection under the same id
        if count > (previous or 0):
            if self.growth_run_since is None:
                self.growth_run_since = sample.t
            self.flowed = True
            self.last_growth = sample.t
            if self.media_since is None:
                self.media_since = sample.t
        else:
            self.growth_run_since = None

    def _raw_level(self, sample: LinkSample, limits: ScoringThresholds) -> Quality | None:
        if self.flowed and sample.t - self.last_growth >= limits.lost_after_s:
            return Quality.LOST
        if not self.flowed and sample.packets_in is not None:
            return None  # still connecting: no judgement before the first media
        warm = self.media_since is None or sample.t - self.media_since >= limits.video_warmup_s
        scored = window_level(list(self.samples), limits, video=warm)
        return scored if scored is not None or not self.flowed else Quality.GOOD

    def _move(self, raw: Quality | None, t: float, limits: ScoringThresholds) -> None:
        if raw is None:
            return
        if self.level is None or raw.rank < self.level.rank:
            if self.level is not None:
                flapping = self.last_rise is not None and t - self.last_rise < limits.flap_window_s
                self.hold = min(self.hold * 2, limits.upgrade_hold_max_s) if flapping else 0.0
            self.level, self.rise_since, self.rise_floor = raw, None, None
            return
        if raw == self.level:
            self.rise_since = self.rise_floor = None
            return
        if self.level == Quality.LOST:
            # Coming back from lost needs packets in every sample, not one lucky burst.
            run = self.growth_run_since
            if run is not None and t - run >= limits.recover_from_lost_s:
                self.level = raw
            return
        if self.rise_since is None or self.rise_floor is None:
            self.rise_since, self.rise_floor = t, raw
        self.rise_floor = worst((self.rise_floor, raw))
        if t - self.rise_since >= max(self.hold, limits.upgrade_hold_s):
            self.level, self.rise_since, self.rise_floor = self.rise_floor, None, None
            self.hold, self.last_rise = max(self.hold, limits.upgrade_hold_s), t


# -- the room -------------------------------------------------------------------------------


class Cause(str, enum.Enum):
    """What a problem is put down to."""

    OWN_NETWORK = "own_network"  # one participant's network: all their links, only theirs
    LINK = "link"  # the path between two participants, the others are fine
    EVERYONE = "everyone"  # every link: cannot tell whose (or the service's)
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Attribution:
    cause: Cause
    level: Quality
    person: PersonId | None = None  # OWN_NETWORK
    pair: Pair | None = None  # LINK


@dataclass(frozen=True, slots=True)
class RoomQuality:
    """One evaluation: directed link levels, pair levels, participant levels, attributions.

    Only what is known appears: a participant with no judged link has no level.
    """

    at: float
    links: Mapping[tuple[PersonId, PersonId], Quality]
    pairs: Mapping[Pair, Quality]
    participants: Mapping[PersonId, Quality]
    attributions: tuple[Attribution, ...]

    def cause_for(self, person: PersonId) -> Cause:
        for a in self.attributions:
            if a.person == person:
                return Cause.OWN_NETWORK
        for a in self.attributions:
            if a.cause == Cause.EVERYONE or (a.pair is not None and person in a.pair):
                return a.cause
        return Cause.UNKNOWN


class QualityMonitor:
    """Keeps a short window of samples per directed link (reporter -> peer) in one room.

    Events: ``ingest`` a sample, ``heartbeat`` when a participant's signaling is heard from,
    ``forget`` a participant who left. ``evaluate(now)`` judges and mutates nothing.
    """

    def __init__(self, limits: ScoringThresholds | None = None) -> None:
        self.limits = limits or ScoringThresholds()
        self._tracks: dict[tuple[PersonId, PersonId], _LinkTrack] = {}
        self._heard: dict[PersonId, float] = {}

    def ingest(self, reporter: PersonId, peer: PersonId, sample: LinkSample) -> None:
        if reporter == peer:
            return
        track = self._tracks.setdefault((reporter, peer), _LinkTrack())
        if track.samples and sample.t < track.samples[-1].t:
            return  # out of order: the newer sample already spoke
        track.add(sample, self.limits)
        self.heartbeat(reporter, sample.t)
        self._heard.setdefault(peer, float("-inf"))

    def heartbeat(self, person: PersonId, t: float) -> None:
        self._heard[person] = max(t, self._heard.get(person, float("-inf")))

    def forget(self, person: PersonId) -> None:
        self._heard.pop(person, None)
        for key in [k for k in self._tracks if person in k]:
            del self._tracks[key]

    def evaluate(self, now: float) -> RoomQuality:
        stale_after = self.limits.stale_after_s
        fresh = {p for p, t in self._heard.items() if now - t < stale_after}
        links = {
            key: track.level for key, track in self._tracks.items()
            if track.level is not None and now - track.samples[-1].t < stale_after
        }
        pairs: dict[Pair, Quality] = {}
        for a, b in itertools.combinations(sorted(self._heard), 2):
            heard = [links[k] for k in ((a, b), (b, a)) if k in links]
            if heard:
                pairs[frozenset((a, b))] = worst(heard)
            elif not {a, b} <= fresh and any(
                    self._tracks[k].flowed for k in ((a, b), (b, a)) if k in self._tracks):
                # It carried media, nobody reports it now, and one end is silent.
                pairs[frozenset((a, b))] = Quality.LOST
        attributions = _attribute(sorted(self._heard), fresh, pairs)
        return RoomQuality(now, links, pairs, _participant_levels(pairs, attributions),
                           attributions)


def _attribute(
    people: list[PersonId], fresh: set[PersonId], pairs: Mapping[Pair, Quality]
) -> tuple[Attribution, ...]:
    def links_of(x: PersonId) -> list[Quality]:
        return [q for pair, q in pairs.items() if x in pair]

    blamed: dict[PersonId, Quality] = {}
    for x in people:
        mine = links_of(x)
        if not mine or any(q == Quality.GOOD for q in mine):
            continue
        # Heartbeat: x is silent while someone else is heard, and nothing reaches x.
        silent = x not in fresh and bool(fresh - {x})
        # Mesh: both of x's links are bad while a link elsewhere is fine.
        elsewhere_fine = any(q == Quality.GOOD for pair, q in pairs.items() if x not in pair)
        if silent or (len(mine) >= 2 and elsewhere_fine):
            blamed[x] = best(mine)
    found = [Attribution(Cause.OWN_NETWORK, q, person=x) for x, q in blamed.items()]
    unexplained = {pair: q for pair, q in pairs.items()
                   if q != Quality.GOOD and not pair & blamed.keys()}
    if len(unexplained) >= 2 and len(unexplained) == len(pairs):
        found.append(Attribution(Cause.EVERYONE, worst(unexplained.values())))
    else:
        found.extend(Attribution(Cause.LINK, q, pair=pair) for pair, q in unexplained.items())
    return tuple(found)


def _participant_levels(
    pairs: Mapping[Pair, Quality], attributions: tuple[Attribution, ...]
) -> dict[PersonId, Quality]:
    blamed = {a.person: a.level for a in attributions if a.person is not None}
    levels: dict[PersonId, Quality] = dict(blamed)
    for pair in pairs:
        for x in pair:
            if x in blamed:
                continue
            # Links that another participant's own network explains say nothing about x.
            own = [q for other, q in pairs.items()
                   if x in other and not (other - {x}) & blamed.keys()]
            levels[x] = best(own) if own else Quality.GOOD
    return levels
