"""Connection quality: typed samples in, a level per link and per participant out.

Pure: no I/O, no clock of its own. Every sample carries the server's receive time ``t``
(monotonic seconds) and ``evaluate(now)`` takes the time to judge at. docs/fallback.md is
the contract for every formula and threshold here.

A directed link ``(reporter, peer)`` is the reporter's view of its peer connection to the
peer: inbound counters count media from the peer. Its level moves like this::

    (no data, or the connection has not carried media yet) -> None
    any --window scores lower--> lower level at once            (falls fast)
    any --window scores higher for the hold--> higher           (recovers slowly)
      the hold is upgrade_hold_s, doubled after each fall from good that soon follows a rise to it;
      out of poor, fair comes after upgrade_hold_s whatever the hold
    any --inbound packets stop growing for lost_after_s--> LOST
    LOST --packets grow in every sample for recover_from_lost_s--> the window's level

A participant's level and the attributions come from the links, per ``evaluate``.
"""

from __future__ import annotations

import enum
import itertools
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

import msgspec

from telehealth.tokens import PersonId

CandidateType = Literal["host", "srflx", "prflx", "relay"]
# What the sender's video encoder says holds it back (outbound-rtp qualityLimitationReason).
SendLimit = Literal["none", "cpu", "bandwidth", "other"]
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

    rank: int

    def __init__(self, value: str) -> None:
        # A plain attribute, not a lookup keyed by the member: hashing an Enum member runs
        # Python code, and levels are compared for every sample of every link.
        self.rank = ("lost", "poor", "fair", "good").index(value)


_rank = attrgetter("rank")


def worst(levels: Iterable[Quality]) -> Quality:
    return min(levels, key=_rank)


def best(levels: Iterable[Quality]) -> Quality:
    return max(levels, key=_rank)


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
    # flap_window_s of the last rise doubles the hold, up to upgrade_hold_max_s, unless the
    # link had settled: good and losing under bandwidth_loss_min for settled_s before it fell.
    upgrade_hold_s: float = 3.0
    upgrade_hold_max_s: float = 30.0
    flap_window_s: float = 30.0
    settled_s: float = 10.0
    # A link (or a participant) with no sample or heartbeat for this long is not heard from.
    stale_after_s: float = 3.0
    # Audio: mean opinion score at or above these is good / fair; below fair is poor.
    mos_good: float = 4.0
    mos_fair: float = 3.6
    # Video: score (0..1, see video_score) at or above these is good / fair.
    video_good: float = 0.75
    video_fair: float = 0.4
    # What full video needs, bit/s (a 640x360 call); a lowered step needs its own cap.
    target_bitrate: float = 500_000.0
    # Video bandwidth is not judged for this long after media starts, or after the flow
    # changes what the link sends (video paused, lowered or back): the sender's bandwidth
    # estimate ramps up over the first seconds, and that is not a weak network.
    video_warmup_s: float = 6.0
    # Video bandwidth counts only while the window also loses at least this share: a sender
    # held back by its estimate with nothing lost is the browser adapting (ramping up at a
    # call's start, or after a spell), and its picture is softer, not freezing.
    bandwidth_loss_min: float = 0.01
    # Device: a page whose own timers run this late (ms, mean over the window) is busy.
    busy_lag_ms: float = 300.0
    # Device: an encoder taking this long per frame (ms, window mean) is starved of CPU: it cannot
    # keep up with 30 fps. Measured in Chromium: 6 ms per 640x360 frame on a free core, 55-90 ms
    # on a fifth of one, where qualityLimitationReason still said "none" and its video fell from
    # 20 to 2-10 fps.
    busy_encode_ms: float = 30.0
    # Device: a busy sign must hold this long before it shows, and be gone this long before
    # it clears: a loaded machine comes and goes by the second, and words must not flicker.
    device_hold_s: float = 3.0
    # Device: a receiver that decodes less than this share of the frames its sender sends,
    # with network loss under busy_loss_max, is busy (decoding late), not badly connected.
    busy_decode_share: float = 0.5
    busy_loss_max: float = 0.01
    # Device: a sender whose video goes out at under this share of the highest frame rate it
    # sent on this connection, with bandwidth not the limit and the network losing next to
    # nothing, is starved of CPU: its delays are its own, not the network's. Not worded (a
    # camera in a dim room also halves its rate); only its delays are not judged.
    starved_send_share: float = 0.5
    # Device: a page heard from before and silent this long, its socket up and its media
    # still arriving, has stopped (a locked phone, a frozen tab). Longer than stale_after_s:
    # a page on a starved machine reports late, not never.
    asleep_after_s: float = 5.0


class LinkSample(msgspec.Struct, frozen=True, gc=False):
    """One report of a directed link, mirroring the wire message ``LinkStats``.

    ``t`` is the server's receive time. Rates and fractions are over the last interval;
    ``packets_in``, ``bytes_in`` and the frame counters are cumulative for connection ``pc``.
    A msgspec struct outside the garbage collector: the server keeps a few per link of every
    live call, and builds several thousand a second.
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
    # The reporter's own sending on this link: what limits its video encoder, the frame rate
    # it sends, the bitrate cap its flow step applied (None: uncapped).
    send_limit: SendLimit | None = None
    send_fps: float | None = None
    send_cap: float | None = None
    # How late the reporter's page runs its timers (ms): a busy or throttled page.
    lag_ms: float | None = None
    # How long the reporter's encoder took per frame of its video on this link (ms).
    encode_ms: float | None = None


# -- formulas -------------------------------------------------------------------------------


def r_factor(rtt_ms: float, jitter_ms: float, loss: float) -> float:
    """R = 93.2 - Id - Ie_eff, from round-trip time, jitter (ms) and loss (fraction)."""
    # Conditionals rather than min/max calls: this runs for every sample of every link.
    delay = ((rtt_ms / 2 if rtt_ms > 0 else 0.0)
             + (JITTER_BUFFER_FACTOR * jitter_ms if jitter_ms > 0 else 0.0) + PACKET_MS)
    delay_impairment = 0.024 * delay
    if delay > DELAY_KNEE_MS:
        delay_impairment += 0.11 * (delay - DELAY_KNEE_MS)
    loss_pct = 0.0 if loss <= 0 else 100.0 if loss >= 1 else 100.0 * loss
    equipment = CODEC_IE + (95.0 - CODEC_IE) * loss_pct / (loss_pct + CODEC_BPL)
    return R_DEFAULT - delay_impairment - equipment


def mos_from_r(r: float) -> float:
    """G.107's mapping from R to a mean opinion score between 1 and 4.5."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    # The polynomial dips just under 1 for small R; the scale has no such score.
    mos = 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6
    return max(1.0, mos)


def audio_mos(rtt_ms: float, jitter_ms: float, loss: float) -> float:
    return mos_from_r(r_factor(rtt_ms, jitter_ms, loss))


def video_score(bandwidth: float | None, need: float) -> float | None:
    """What the link can carry against what the current step needs, capped at 1."""
    if bandwidth is None or need <= 0:
        return None
    score = bandwidth / need
    return 1.0 if score > 1.0 else max(0.0, score)


def median(values: list[float]) -> float:
    """The middle of a few values (a window holds a handful): one late sample does not judge."""
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(slots=True)
class WindowSums:
    """Running sums and counts of a window's figures, so that a sample joining or leaving
    the window costs the same whatever its length: the server scores every sample of every
    link as it arrives. Each figure's mean is over the samples that have it. The round trip
    is not summed: it is the median of the window (``median``), so one late sample does not
    judge."""

    n: float = 0.0
    jitter: float = 0.0
    n_jitter: float = 0.0
    loss: float = 0.0
    n_loss: float = 0.0
    fps: float = 0.0
    n_fps: float = 0.0
    out_rate: float = 0.0
    n_out: float = 0.0
    lag: float = 0.0
    n_lag: float = 0.0
    encode: float = 0.0
    n_encode: float = 0.0
    # Samples whose sender says its video is held back by bandwidth / by its CPU.
    n_bandwidth: float = 0.0
    n_cpu: float = 0.0

    def shift(self, s: LinkSample, sign: float) -> None:
        """Add (sign 1.0) or take away (sign -1.0) one sample."""
        self.n += sign
        v = s.jitter_ms
        if v is not None:
            self.jitter += sign * v
            self.n_jitter += sign
        # Network loss only: concealed audio is high in a call's first seconds and on a busy
        # receiver with no packet lost, so it says nothing certain about the network.
        v = s.loss
        if v is not None:
            self.loss += sign * v
            self.n_loss += sign
        v = s.fps
        if v is not None:
            self.fps += sign * v
            self.n_fps += sign
        v = s.out_bitrate
        if v is not None:
            self.out_rate += sign * v
            self.n_out += sign
        v = s.lag_ms
        if v is not None:
            self.lag += sign * v
            self.n_lag += sign
        v = s.encode_ms
        if v is not None:
            self.encode += sign * v
            self.n_encode += sign
        limit = s.send_limit
        if limit is not None:
            if limit == "bandwidth":
                self.n_bandwidth += sign
            elif limit == "cpu":
                self.n_cpu += sign

    def swap(self, new: LinkSample, old: LinkSample) -> None:
        """``shift(new, 1.0)`` then ``shift(old, -1.0)`` in one call, with the same sums: a
        window that moves on by one sample (the usual case) costs one call, not two. (The
        count of samples stays as it was: one in, one out.)"""
        v, w = new.jitter_ms, old.jitter_ms
        if v is not None:
            self.jitter += v
            self.n_jitter += 1.0
        if w is not None:
            self.jitter -= w
            self.n_jitter -= 1.0
        v, w = new.loss, old.loss
        if v is not None:
            self.loss += v
            self.n_loss += 1.0
        if w is not None:
            self.loss -= w
            self.n_loss -= 1.0
        v, w = new.fps, old.fps
        if v is not None:
            self.fps += v
            self.n_fps += 1.0
        if w is not None:
            self.fps -= w
            self.n_fps -= 1.0
        v, w = new.out_bitrate, old.out_bitrate
        if v is not None:
            self.out_rate += v
            self.n_out += 1.0
        if w is not None:
            self.out_rate -= w
            self.n_out -= 1.0
        v, w = new.lag_ms, old.lag_ms
        if v is not None:
            self.lag += v
            self.n_lag += 1.0
        if w is not None:
            self.lag -= w
            self.n_lag -= 1.0
        v, w = new.encode_ms, old.encode_ms
        if v is not None:
            self.encode += v
            self.n_encode += 1.0
        if w is not None:
            self.encode -= w
            self.n_encode -= 1.0
        limit, gone = new.send_limit, old.send_limit
        if limit == "bandwidth":
            self.n_bandwidth += 1.0
        elif limit == "cpu":
            self.n_cpu += 1.0
        if gone == "bandwidth":
            self.n_bandwidth -= 1.0
        elif gone == "cpu":
            self.n_cpu -= 1.0

    def level(self, newest: LinkSample, rtt: float | None, limits: ScoringThresholds, *,
              video: bool = True, delays: bool = True) -> Quality | None:
        """The worse of audio and video over the window ending at ``newest``; ``rtt`` is the
        window's robust round trip. Video is judged on bandwidth alone, and only while the
        sender says bandwidth holds its video back and packets are lost, against what the step
        needs.
        ``delays=False`` leaves round trip and jitter out (a straining device reads them)."""
        level: Quality | None = None
        if rtt is not None or self.n_jitter or self.n_loss:
            if not delays:
                rtt = None
            mos = audio_mos(rtt if rtt is not None else 0.0,
                            self.jitter / self.n_jitter if self.n_jitter and delays else 0.0,
                            self.loss / self.n_loss if self.n_loss else 0.0)
            level = (Quality.GOOD if mos >= limits.mos_good
                     else Quality.FAIR if mos >= limits.mos_fair else Quality.POOR)
        if (video and newest.video and self.n_out and self.n_bandwidth * 2 > self.n
                and self.n_loss and self.loss >= limits.bandwidth_loss_min * self.n_loss):
            cap = newest.send_cap
            score = video_score(self.out_rate / self.n_out, cap if cap else limits.target_bitrate)
            if score is not None:
                seen = (Quality.GOOD if score >= limits.video_good
                        else Quality.FAIR if score >= limits.video_fair else Quality.POOR)
                if level is None or seen.rank < level.rank:
                    level = seen
        return level


def window_level(window: list[LinkSample], limits: ScoringThresholds, *,
                 video: bool = True) -> Quality | None:
    """Score a window of samples (oldest first): the worse of audio and video, or None.
    ``video=False`` scores audio only (a connection still warming up)."""
    if not window:
        return None
    sums = WindowSums()
    for s in window:
        sums.shift(s, 1.0)
    rtts = [s.rtt_ms for s in window if s.rtt_ms is not None]
    return sums.level(window[-1], median(rtts) if rtts else None, limits, video=video)


# -- one directed link ----------------------------------------------------------------------


@dataclass(slots=True)
class _LinkTrack:
    samples: deque[LinkSample] = field(default_factory=deque)
    sums: WindowSums = field(default_factory=WindowSums)
    level: Quality | None = None
    # A better window level waiting out its hold: since when, and the lowest level seen.
    rise_since: float | None = None
    hold: float = 0.0
    last_rise: float | None = None
    # Since when the link has been good with its window losing next to nothing, and whether
    # that has lasted settled_s since the last rise to good.
    quiet_since: float | None = None
    settled: bool = False
    rise_floor: Quality | None = None
    # The newest candidate type reported (samples without one leave it as it was).
    candidate: CandidateType | None = None
    packets: int | None = None
    flowed: bool = False
    last_growth: float = 0.0
    growth_run_since: float | None = None
    # When this connection's first media arrived (the video warm-up runs from here).
    media_since: float | None = None
    # When the link last changed what it sends (video on/off, the step's cap): its
    # bandwidth estimate ramps again from there.
    basis_since: float = -math.inf
    # The window's median round trip as this end measures it, and the window's round trips
    # in order of size (kept as samples come and go, so the median is an index, not a sort).
    rtt: float | None = None
    rtts: list[float] = field(default_factory=list)
    # The reverse link (the peer's reports of the same pair), once it exists.
    reverse: _LinkTrack | None = None
    # The reporter's device, as this link's reports show it: busy (its encoder held back by
    # CPU, its timers late, or decoding far fewer frames than its peer sends).
    busy: bool = False
    cpu: bool = False
    late: bool = False
    slow_decode: bool = False
    # The highest video frame rate the reporter has sent on this connection since it last
    # changed what it sends, and whether it now sends far fewer (starved_send_share).
    peak_send_fps: float = 0.0
    starved_send: bool = False
    # Since when the signs have said otherwise than ``busy`` (None: they agree).
    busy_flip_since: float | None = None

    def reset(self) -> None:
        self.samples.clear()
        self.rtts.clear()
        self.sums = WindowSums()
        self.level = self.rise_since = self.rise_floor = self.packets = self.quiet_since = None
        self.flowed = False
        self.growth_run_since = self.media_since = self.rtt = None
        self.basis_since = -math.inf
        self.busy = self.cpu = self.late = self.slow_decode = self.settled = self.starved_send = False
        self.peak_send_fps = 0.0
        self.busy_flip_since = None

    def add(self, sample: LinkSample, limits: ScoringThresholds,
            other: _LinkTrack | None = None) -> None:
        """One sample of this link; ``other`` is the reverse link (the peer's reports of
        the same pair), whose round trip and sending frame rate it compares with."""
        # One flat method (counting packets, the window, the raw level): it runs for every
        # sample of every link, and each call costs.
        samples, t = self.samples, sample.t
        if samples:
            previous_sample = samples[-1]
            if sample.pc != previous_sample.pc:
                self.reset()  # a fresh connection: its counters start again
            elif (sample.video != previous_sample.video
                  or sample.send_cap != previous_sample.send_cap):
                self.basis_since = t
                # What the link carries changed on purpose: its past falls were about
                # another load, and say nothing of how this one will hold.
                self.hold, self.last_rise, self.peak_send_fps = 0.0, None, 0.0
        if sample.candidate is not None:
            self.candidate = sample.candidate
        count = sample.packets_in
        if (sample.loss and self.flowed and count is not None and self.packets is not None
                and count > self.packets and t - self.last_growth >= limits.lost_after_s):
            # Media back after a stop: the packets counted lost are the stop's, already judged
            # as lost, and say nothing of the link now.
            sample = msgspec.structs.replace(sample, loss=None)
        sums, rtts = self.sums, self.rtts
        oldest = t - limits.window_s
        v = sample.rtt_ms
        if v is not None:
            insort(rtts, v)
        if samples and samples[0].t < oldest and (len(samples) == 1 or samples[1].t >= oldest):
            # The window moves on by one: the new sample in, the oldest out, in one pass.
            gone = samples.popleft()
            samples.append(sample)
            sums.swap(sample, gone)
            w = gone.rtt_ms
            if w is not None:
                del rtts[bisect_left(rtts, w)]
        else:
            samples.append(sample)
            sums.shift(sample, 1.0)
            while samples[0].t < oldest:
                gone = samples.popleft()
                sums.shift(gone, -1.0)
                w = gone.rtt_ms
                if w is not None:
                    del rtts[bisect_left(rtts, w)]
        # The median (as ``median``) of the window's round trips.
        n = len(rtts)
        if n:
            mid = n // 2
            self.rtt = rtts[mid] if n % 2 else (rtts[mid - 1] + rtts[mid]) / 2
        else:
            self.rtt = None
        # The network loses next to nothing: a strain then is the device's (once per sample).
        calm = not sums.n_loss or sums.loss < limits.busy_loss_max * sums.n_loss
        self._device(sample, limits, other, calm)

        if count is not None:
            previous = self.packets
            self.packets = count
            if previous is not None and count < previous:
                previous = 0  # counters went back: a new connection under the same id
            if count > (previous or 0):
                if self.growth_run_since is None:
                    self.growth_run_since = t
                self.flowed = True
                self.last_growth = t
                if self.media_since is None:
                    self.media_since = t
            else:
                self.growth_run_since = None

        # An end whose device strains (CPU-limited encoder, late timers, late decoding), with
        # the network losing next to nothing: its delays and pauses are the device's. Its
        # round trip and jitter read late processing, and its media may pause while it
        # still hears the other end; the link is then judged on loss (and bandwidth) alone.
        other_quiet = t - other.samples[-1].t if other is not None and other.samples else math.inf
        other_fresh = other_quiet < limits.stale_after_s
        # A straining end reports late (seconds apart, on a starved machine): its signs stand
        # until it has been quiet long enough to count as asleep.
        other_strains = (other is not None and other_quiet < limits.asleep_after_s
                         and (other.cpu or other.late or other.slow_decode or other.starved_send))
        strained = ((self.cpu or self.late or self.slow_decode or self.starved_send or other_strains)
                    and calm)
        raw: Quality | None
        if self.flowed and t - self.last_growth >= limits.lost_after_s:
            if (strained and other is not None and other_fresh
                    and t - other.last_growth < limits.lost_after_s):
                return  # the other way still flows and both ends speak: a device pause
            raw = Quality.LOST
        elif not self.flowed and count is not None:
            return  # still connecting: no judgement before the first media
        else:
            since = self.media_since
            warm = since is None or (t - since >= limits.video_warmup_s
                                     and t - self.basis_since >= limits.video_warmup_s)
            # The round trip is the path's: the lower of what both ends measure, so one
            # end's late timers do not judge it.
            rtt = self.rtt
            if (other is not None and other.rtt is not None and other_fresh
                    and (rtt is None or other.rtt < rtt)):
                rtt = other.rtt
            raw = sums.level(sample, rtt, limits, video=warm, delays=not strained)
            if raw is None:
                if not self.flowed:
                    return
                raw = Quality.GOOD
        if raw is self.level:
            self.rise_since = self.rise_floor = None  # as _move does: no call for the usual case
        else:
            self._move(raw, t, limits)
        if self.level is not Quality.GOOD:
            self.quiet_since, self.settled = None, False
        elif sums.n_loss and sums.loss >= limits.bandwidth_loss_min * sums.n_loss:
            self.quiet_since = None
        elif self.quiet_since is None:
            self.quiet_since = t
        elif t - self.quiet_since >= limits.settled_s:
            self.settled = True

    def _device(self, sample: LinkSample, limits: ScoringThresholds,
                other: _LinkTrack | None, calm: bool) -> None:
        """Whether the reporter's device is busy. Each sign switches on over the window and
        off only once the window is clear of it, so it does not flicker. Also whether it
        sends starved (``starved_send``: per sample, never worded, only for its delays)."""
        sums = self.sums
        n_cpu = sums.n_cpu
        # The encoder held back by CPU: as the browser says, or as slow as a starved one (a
        # browser short of CPU everywhere may never say so).
        encode = sums.encode / sums.n_encode if sums.n_encode else 0.0
        slow_encoder = encode >= limits.busy_encode_ms or (self.cpu and encode >= limits.busy_encode_ms / 2)
        if n_cpu * 2 > sums.n or slow_encoder:
            self.cpu = True
        elif not n_cpu:
            self.cpu = False
        n_lag = sums.n_lag
        if n_lag:
            lag = sums.lag / n_lag
            self.late = lag >= limits.busy_lag_ms or (self.late and lag >= limits.busy_lag_ms / 2)
        else:
            self.late = False
        slow = False
        if other is not None and sums.n_fps and sample.video and other.samples:
            theirs = other.samples[-1]
            sent = theirs.send_fps
            if sent is not None and sent >= 5 and sample.t - theirs.t < limits.stale_after_s:
                fps = sums.fps / sums.n_fps
                share = limits.busy_decode_share
                slow = ((fps < share * sent or (self.slow_decode and fps < (share + 0.25) * sent))
                        and calm)
        self.slow_decode = slow
        sent = sample.send_fps
        if sent is None or not sample.video:
            self.starved_send = False
        else:
            self.peak_send_fps = max(self.peak_send_fps, sent)
            self.starved_send = (sent < limits.starved_send_share * self.peak_send_fps
                                 and sample.send_limit != "bandwidth"
                                 and calm)
        if (self.cpu or self.late or slow) == self.busy:
            self.busy_flip_since = None
        elif self.busy_flip_since is None:
            self.busy_flip_since = sample.t
        elif sample.t - self.busy_flip_since >= limits.device_hold_s:
            self.busy, self.busy_flip_since = not self.busy, None

    def _move(self, raw: Quality, t: float, limits: ScoringThresholds) -> None:
        if self.level is None or raw.rank < self.level.rank:
            if self.level is Quality.GOOD:
                # A flap is good, weak, good again: only a fall from good soon after the rise
                # to it grows the hold. Swings between weak levels within one bad spell do
                # not, or a network that has settled would wait out holds its spell built up.
                # Nor does a new fault after a settled stretch: the link held, then something
                # else went wrong, and that fault's end should not wait out the last one's.
                flapping = (self.last_rise is not None and t - self.last_rise < limits.flap_window_s
                            and not self.settled)
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
        held = t - self.rise_since
        if held >= max(self.hold, limits.upgrade_hold_s):
            self.level, self.rise_since, self.rise_floor = self.rise_floor, None, None
            if self.level is Quality.GOOD:
                self.hold, self.last_rise = max(self.hold, limits.upgrade_hold_s), t
        elif held >= limits.upgrade_hold_s and self.level is Quality.POOR:
            # A flap's longer hold guards the way back to good. Out of poor, fair waits the
            # usual hold, and the rise to good goes on counting from where it began.
            self.level = Quality.FAIR


# -- the room -------------------------------------------------------------------------------


class Cause(str, enum.Enum):
    """What a problem is put down to."""

    OWN_NETWORK = "own_network"  # one participant's network: all their links, only theirs
    LINK = "link"  # the path between two participants, the others are fine
    EVERYONE = "everyone"  # every link: cannot tell whose (or the service's)
    UNKNOWN = "unknown"
    SERVER_RESTART = "server_restart"  # our own server went away and came back: nobody's network
    DEVICE_BUSY = "device_busy"  # their computer is busy: not a network disruption
    DEVICE_ASLEEP = "device_asleep"  # their page stopped (a locked phone): not a network one


class Device(str, enum.Enum):
    """What a person's own device is doing to the call: not their network, never a reason to
    rejoin or to go to the phone."""

    BUSY = "busy"  # their computer is busy: it encodes or decodes late, or its page runs late
    ASLEEP = "asleep"  # their page stopped (a locked phone, a frozen tab) with its socket up


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
    devices: Mapping[PersonId, Device] = field(default_factory=dict)
    # Poor people whose link already reads better, waiting out the upgrade hold: the link
    # is clean again, and the level will follow.
    rising: frozenset[PersonId] = frozenset()

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
    ``socket`` when a participant's signaling socket drops or is back, ``forget`` a
    participant who left. ``evaluate(now)`` judges. ``due(now)`` says whether a
    judgement now could differ from the last one: a link changed level, someone was heard
    from again, or the last judgement's freshness runs out; when it could not, ``evaluate``
    returns the last judgement again, at ``now``. The server acts on a room's quality only
    when it is due (and reports it on a slow periodic beat), not every room on every tick.
    """

    def __init__(self, limits: ScoringThresholds | None = None) -> None:
        self.limits = limits or ScoringThresholds()
        self._tracks: dict[tuple[PersonId, PersonId], _LinkTrack] = {}
        self._heard: dict[PersonId, float] = {}
        self._changed = True
        # When the last judgement's freshness runs out: a link or a person goes stale.
        self._expires_at = math.inf
        self._last: RoomQuality | None = None
        self._relayed: set[Pair] | None = None
        # People whose signaling socket is down (the hub says reconnecting).
        self._socket_down: set[PersonId] = set()

    def ingest(self, reporter: PersonId, peer: PersonId, sample: LinkSample) -> None:
        if reporter == peer:
            return
        key = (reporter, peer)
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = _LinkTrack()
            track.reverse = self._tracks.get((peer, reporter))
            if track.reverse is not None:
                track.reverse.reverse = track
        samples = track.samples
        if samples and sample.t < samples[-1].t:
            return  # out of order: the newer sample already spoke
        level, candidate, flowed, busy = track.level, track.candidate, track.flowed, track.busy
        rise = track.rise_since
        if not samples or sample.t - samples[-1].t >= self.limits.stale_after_s:
            self._changed = True  # a new or a stale link is heard from
        track.add(sample, self.limits, track.reverse)
        if track.candidate != candidate:
            self._changed, self._relayed = True, None
        elif track.level is not level or track.flowed != flowed or track.busy != busy:
            self._changed = True
        elif level is Quality.POOR and (rise is None) != (track.rise_since is None):
            self._changed = True  # a poor link begins to rise, or its rise broke off
        # heartbeat(reporter, t), inline: this runs for every sample of every link.
        t, heard = sample.t, self._heard
        last = heard.get(reporter)
        if last is None or t - last >= self.limits.stale_after_s:
            self._changed = True
        if last is None or t > last:
            heard[reporter] = t
        if peer not in self._heard:
            self._heard[peer] = -math.inf
            self._changed = True

    def heartbeat(self, person: PersonId, t: float) -> None:
        last = self._heard.get(person)
        if last is None or t - last >= self.limits.stale_after_s:
            self._changed = True
        if last is None or t > last:
            self._heard[person] = t

    def socket(self, person: PersonId, up: bool) -> None:
        """The person's signaling socket dropped (``up=False``) or is back. A page silent
        with its socket up has stopped (asleep); one whose socket dropped has not."""
        if up:
            self._socket_down.discard(person)
        else:
            self._socket_down.add(person)
        self._changed = True

    def forget(self, person: PersonId) -> None:
        self._heard.pop(person, None)
        self._socket_down.discard(person)
        for key in [k for k in self._tracks if person in k]:
            del self._tracks[key]
        self._changed, self._relayed = True, None

    def due(self, now: float) -> bool:
        if self._changed:
            return True
        if now < self._expires_at:
            return False
        # The expiry was reckoned from the samples of the last judgement; newer ones that
        # came since keep what was fresh fresh for longer.
        self._expires_at = self._fresh_until(self._last.at if self._last else -math.inf)
        return now >= self._expires_at

    def _fresh_until(self, since: float) -> float:
        """When the first of the people and judged links fresh at ``since`` goes stale."""
        stale_after, asleep_after = self.limits.stale_after_s, self.limits.asleep_after_s
        until = math.inf
        for t in self._heard.values():
            if since < t + stale_after < until:
                until = t + stale_after
            if since < t + asleep_after < until:
                until = t + asleep_after
        for track in self._tracks.values():
            if track.level is not None:
                t = track.samples[-1].t
                if since < t + stale_after < until:
                    until = t + stale_after
        return until

    def relayed(self) -> set[Pair]:
        """Pairs whose newest report, from either end, says the TURN relay carries them."""
        if self._relayed is None:
            self._relayed = {frozenset(key) for key, track in self._tracks.items()
                             if track.candidate == "relay"}
        return self._relayed

    def evaluate(self, now: float) -> RoomQuality:
        last = self._last
        if last is not None and not self.due(now):
            return RoomQuality(now, last.links, last.pairs, last.participants, last.attributions,
                               last.devices, last.rising)
        stale_after = self.limits.stale_after_s
        fresh = {p for p, t in self._heard.items() if now - t < stale_after}
        links = {
            key: track.level for key, track in self._tracks.items()
            if track.level is not None and now - track.samples[-1].t < stale_after
        }
        self._changed, self._expires_at = False, self._fresh_until(now)
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
        participants = _participant_levels(pairs, attributions)
        self._last = RoomQuality(now, links, pairs, participants, attributions,
                                 self._devices(now, fresh), self._rising(links, pairs, participants))
        return self._last

    def _rising(self, links: Mapping[tuple[PersonId, PersonId], Quality],
                pairs: Mapping[Pair, Quality],
                participants: Mapping[PersonId, Quality]) -> frozenset[PersonId]:
        """Poor people with a poor pair whose every poor direction already reads better."""
        poor = [x for x, q in participants.items() if q is Quality.POOR]
        if not poor:
            return frozenset()
        tracks = self._tracks

        def rising(pair: Pair) -> bool:
            a, b = sorted(pair)
            return all(tracks[k].rise_since is not None
                       for k in ((a, b), (b, a)) if links.get(k) is Quality.POOR)

        lifting = [pair for pair, q in pairs.items() if q is Quality.POOR and rising(pair)]
        return frozenset(x for x in poor if any(x in pair for pair in lifting))

    def _devices(self, now: float, fresh: set[PersonId]) -> dict[PersonId, Device]:
        """Busy: a fresh report of theirs says so. Asleep: heard from before, silent for
        asleep_after_s with the socket up, while their media still reaches a peer good or fair
        (their page stopped, their network did not)."""
        stale_after, asleep_after = self.limits.stale_after_s, self.limits.asleep_after_s
        devices: dict[PersonId, Device] = {}
        for (reporter, peer), track in self._tracks.items():
            if not track.samples or now - track.samples[-1].t >= stale_after:
                continue
            if track.busy and reporter in fresh:
                devices.setdefault(reporter, Device.BUSY)
            heard = self._heard.get(peer, -math.inf)
            # Their media arrives well: a poor link's silence is the network's (on a
            # 250 kbit/s link a page's reports queued behind its video for over 5 s).
            if (-math.inf < heard <= now - asleep_after and peer not in self._socket_down
                    and track.level in (Quality.GOOD, Quality.FAIR)):
                devices[peer] = Device.ASLEEP
        return devices


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
