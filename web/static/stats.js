// Link statistics from RTCPeerConnection.getStats(), as the protocol's LinkStats.
//
// DOM-free: the call page sends these in `stats` messages about once a second, and the
// quality indicator and the fallback logic read the same numbers. `linkStatsFromReport` is
// a pure function of one report and the previous snapshot, so it can be tested with
// recorded reports; `StatsSampler` keeps the snapshots per connection.

/**
 * Counters kept between samples to turn cumulative numbers into rates.
 * @typedef {{t: number, packetsIn: number, packetsLost: number, bytesIn: number, bytesOut: number,
 *            framesDecoded: number, concealed: number, samples: number, encodeS: number,
 *            framesEncoded: number,
 *            byKind: Record<string, {got: number, lost: number, still: boolean, resumedAt: number|null}>,
 *            rttTotal: number, rttCount: number}} Snapshot
 */

const SEND_LIMITS = new Set(['none', 'cpu', 'bandwidth', 'other']);
/**
 * A stream that stood still and flows again: for this long, what it counts lost is the pause's
 * sequence gap and its sender starting over, not the link (the sound, never paused, still
 * shows the link's loss). The gap can land in the second interval after the first packets.
 */
const RESUMED_GRACE_MS = 1000;

function round(value, digits) {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** The selected candidate pair of a report, by the transport's pointer or the pair's flags. */
function selectedPair(byId, all) {
  for (const s of all) {
    if (s.type === 'transport' && s.selectedCandidatePairId && byId.has(s.selectedCandidatePairId)) {
      return byId.get(s.selectedCandidatePairId);
    }
  }
  let best = null;
  for (const s of all) {
    if (s.type !== 'candidate-pair') continue;
    if (s.selected) return s;
    if (s.nominated && s.state === 'succeeded') best = best ?? s;
  }
  return best;
}

/**
 * One LinkStats from a stats report.
 * @param {RTCStatsReport|Map<string, any>} report
 * @param {Snapshot|null} previous the snapshot returned with the last sample of this connection
 * @param {number} nowMs a monotonic clock in milliseconds
 * @param {{peer: string, pcId?: string|null, video?: boolean, sendCap?: number|null, lagMs?: number|null}} about
 *   sendCap: the bitrate cap this page's flow step put on its video to the peer;
 *   lagMs: how late this page's own timers run (PageLag)
 * @returns {{stats: import('./signaling.js').LinkStats, snapshot: Snapshot}}
 */
export function linkStatsFromReport(report, previous, nowMs, {
  peer, pcId = null, video = true, sendCap = null, lagMs = null,
}) {
  const all = [...report.values()];
  const byId = new Map(all.map((s) => [s.id, s]));
  let packetsIn = 0;
  let packetsLost = 0;
  let bytesIn = 0;
  let bytesOut = 0;
  let framesDecoded = null;
  let framesDropped = null;
  let fps = null;
  let audioJitter = null;
  let videoJitter = null;
  let concealed = 0;
  let samples = 0;
  let remoteRtt = null;
  let rttTotal = 0;
  let rttCount = 0;
  let sawInbound = false;
  let sendLimit = null;
  let sendFps = null;
  let encodeS = 0;
  let framesEncoded = 0;
  /** Packets in and lost per kind, and whether that kind's media stood still last interval. */
  const byKind = {
    audio: { got: 0, lost: 0, still: false, resumedAt: null },
    video: { got: 0, lost: 0, still: false, resumedAt: null },
  };

  for (const s of all) {
    if (s.type === 'inbound-rtp') {
      sawInbound = true;
      packetsIn += s.packetsReceived ?? 0;
      packetsLost += Math.max(0, s.packetsLost ?? 0);
      const kind = byKind[s.kind];
      if (kind) {
        kind.got += s.packetsReceived ?? 0;
        kind.lost += Math.max(0, s.packetsLost ?? 0);
      }
      bytesIn += s.bytesReceived ?? 0;
      if (s.kind === 'audio') {
        if (typeof s.jitter === 'number') audioJitter = s.jitter;
        concealed += s.concealedSamples ?? 0;
        samples += s.totalSamplesReceived ?? 0;
      } else if (s.kind === 'video') {
        if (typeof s.jitter === 'number') videoJitter = s.jitter;
        framesDecoded = (framesDecoded ?? 0) + (s.framesDecoded ?? 0);
        if (typeof s.framesDropped === 'number') framesDropped = (framesDropped ?? 0) + s.framesDropped;
        if (typeof s.framesPerSecond === 'number') fps = (fps ?? 0) + s.framesPerSecond;
      }
    } else if (s.type === 'outbound-rtp') {
      bytesOut += s.bytesSent ?? 0;
      if (s.kind === 'video') {
        // What holds our encoder back: the monitor tells a busy computer ("cpu") from a
        // narrow link ("bandwidth") by it.
        if (SEND_LIMITS.has(s.qualityLimitationReason)) sendLimit = s.qualityLimitationReason;
        if (typeof s.framesPerSecond === 'number') sendFps = (sendFps ?? 0) + s.framesPerSecond;
        encodeS += s.totalEncodeTime ?? 0;
        framesEncoded += s.framesEncoded ?? 0;
      }
    } else if (s.type === 'remote-inbound-rtp' && typeof s.roundTripTime === 'number') {
      remoteRtt = Math.max(remoteRtt ?? 0, s.roundTripTime);
      rttTotal += s.totalRoundTripTime ?? 0;
      rttCount += s.roundTripTimeMeasurements ?? 0;
    }
  }

  const pair = selectedPair(byId, all);
  const pairRtt = pair && typeof pair.currentRoundTripTime === 'number' ? pair.currentRoundTripTime : null;
  let rttSeconds = pairRtt ?? remoteRtt;
  if (pairRtt === null && previous && rttCount > 0) {
    // No candidate pair round trip (Firefox): the RTCP round trips measured this interval.
    // A stream that sends nothing (video paused) keeps its last one, which would stand for
    // seconds after the path is clear (443 ms read for 8 s after a 250 kbit/s spell).
    const measured = rttCount - (previous.rttCount ?? 0);
    rttSeconds = measured > 0 ? (rttTotal - (previous.rttTotal ?? 0)) / measured : null;
  }
  let candidate = null;
  if (pair) {
    const local = byId.get(pair.localCandidateId);
    const remote = byId.get(pair.remoteCandidateId);
    // Relayed on either end is what matters to someone reading "is TURN in use".
    if (local?.candidateType === 'relay' || remote?.candidateType === 'relay') candidate = 'relay';
    else candidate = local?.candidateType ?? null;
  }

  const snapshot = {
    t: nowMs, packetsIn, packetsLost, bytesIn, bytesOut,
    framesDecoded: framesDecoded ?? 0, concealed, samples, encodeS, framesEncoded, byKind,
    rttTotal, rttCount,
  };
  const seconds = previous ? (nowMs - previous.t) / 1000 : 0;
  let loss = null;
  let concealedShare = null;
  let inBitrate = null;
  let outBitrate = null;
  let encodeMs = null;
  if (previous && seconds > 0) {
    let lost = packetsLost - previous.packetsLost;
    const got = packetsIn - previous.packetsIn;
    for (const [name, now] of Object.entries(byKind)) {
      const before = previous.byKind?.[name];
      if (!before) continue;
      const flowed = now.got - before.got;
      now.still = flowed <= 0;
      // Media that stood still and flows again: what it counts lost is the pause's sequence
      // gap (a sender that paused its video, a cut), already seen as a pause, not loss on the
      // link now. Firefox's video resumed at 28-54 % "lost", in its first interval or the next.
      now.resumedAt = before.still && flowed > 0 ? nowMs : before.resumedAt ?? null;
      if (!now.still && now.resumedAt !== null && nowMs - now.resumedAt < RESUMED_GRACE_MS) {
        lost -= Math.max(0, now.lost - before.lost);
      }
    }
    loss = lost + got > 0 ? Math.max(0, lost) / (Math.max(0, lost) + got) : null;
    const sampled = samples - previous.samples;
    concealedShare = sampled > 0 ? (concealed - previous.concealed) / sampled : null;
    inBitrate = ((bytesIn - previous.bytesIn) * 8) / seconds;
    // What we actually sent: only when the browser gives no estimate of what the link can carry.
    outBitrate = ((bytesOut - previous.bytesOut) * 8) / seconds;
    if (fps === null && framesDecoded !== null) fps = (framesDecoded - previous.framesDecoded) / seconds;
    // The encoder's time per frame: a computer short of CPU shows it even when its browser
    // never says "cpu" (docs/fallback.md, devices).
    const encoded = framesEncoded - (previous.framesEncoded ?? 0);
    if (encoded > 0) encodeMs = ((encodeS - (previous.encodeS ?? 0)) * 1000) / encoded;
  } else if (sawInbound && packetsIn + packetsLost > 0) {
    loss = packetsLost / (packetsIn + packetsLost);
    concealedShare = samples > 0 ? concealed / samples : null;
  }
  const jitter = audioJitter ?? videoJitter;
  // out_bitrate is the browser's estimate of what the link can carry (docs/protocol.md), not
  // what we send: when the fallback flow lowers our video on purpose, what we send drops, and
  // that must not read as a worse network.
  if (pair && typeof pair.availableOutgoingBitrate === 'number') outBitrate = pair.availableOutgoingBitrate;

  /** @type {import('./signaling.js').LinkStats} */
  const stats = { peer, video: Boolean(video) };
  if (pcId) stats.pc = pcId;
  const put = (key, value) => {
    if (value !== null && value !== undefined) stats[key] = value;
  };
  put('rtt_ms', round(rttSeconds === null ? null : rttSeconds * 1000, 1));
  put('jitter_ms', round(jitter === null ? null : jitter * 1000, 1));
  put('loss', round(loss, 4));
  if (sawInbound) {
    put('packets_in', packetsIn);
    put('bytes_in', bytesIn);
  }
  put('frames_decoded', framesDecoded);
  put('frames_dropped', framesDropped);
  put('fps', round(fps, 1));
  put('concealed', round(concealedShare, 4));
  put('out_bitrate', round(outBitrate, 0));
  put('in_bitrate', round(inBitrate, 0));
  put('candidate', candidate);
  put('send_limit', sendLimit);
  put('send_fps', round(sendFps, 1));
  if (video) put('send_cap', sendCap);
  put('lag_ms', round(lagMs, 0));
  put('encode_ms', round(encodeMs, 1));
  return { stats, snapshot };
}

/**
 * How late this page runs its own timers: a busy computer (or a throttled page) runs them
 * late, a clean network does not care. A timer every `everyMs`; `take()` gives the mean
 * lateness since the last call, in milliseconds, or null while the page is hidden (a
 * background tab's timers are slowed on purpose: that is not a busy device) or nothing ran.
 */
/** A timer this late did not run late: the page was stopped (frozen, asleep) and is back. */
const STOPPED_MS = 5000;

export class PageLag {
  constructor({ everyMs = 100, now = () => globalThis.performance.now(), hidden = () => globalThis.document?.hidden ?? false } = {}) {
    this.everyMs = everyMs;
    this.now = now;
    this.hidden = hidden;
    this._sum = 0;
    this._n = 0;
    this._last = null;
    this._timer = null;
  }

  start() {
    if (this._timer !== null) return;
    this._last = this.now();
    this._timer = setInterval(() => this.tick(), this.everyMs);
  }

  stop() {
    if (this._timer !== null) clearInterval(this._timer);
    this._timer = null;
  }

  /** One timer run (exposed for tests). */
  tick() {
    const now = this.now();
    const late = this._last === null ? 0 : Math.max(0, now - this._last - this.everyMs);
    if (this.hidden() || late > STOPPED_MS) {
      // Hidden, or back from a stop (a frozen page, a locked phone): not a busy device.
      this._sum = this._n = 0;
    } else if (this._last !== null) {
      this._sum += late;
      this._n += 1;
    }
    this._last = now;
  }

  /** @returns {number|null} */
  take() {
    if (this.hidden()) {
      this._sum = this._n = 0;
      return null;
    }
    // A page whose timer did not run at all since the last report is as late as that.
    let sinceLast = this._last === null ? 0 : Math.max(0, this.now() - this._last - this.everyMs);
    if (sinceLast > STOPPED_MS) sinceLast = 0;
    const mean = this._n ? Math.max(this._sum / this._n, sinceLast) : (this._last === null ? null : sinceLast);
    this._sum = this._n = 0;
    return mean;
  }
}

/** Samples connections, remembering each one's last snapshot. */
export class StatsSampler {
  constructor({ now = () => globalThis.performance.now() } = {}) {
    this.now = now;
    /** @type {Map<string, Snapshot>} */
    this._previous = new Map();
  }

  /**
   * @param {RTCPeerConnection} pc
   * @param {{peer: string, pcId: string, video?: boolean, sendCap?: number|null, lagMs?: number|null}} about
   * @returns {Promise<import('./signaling.js').LinkStats>}
   */
  async sample(pc, about) {
    const report = await pc.getStats();
    const key = about.pcId || about.peer;
    const { stats, snapshot } = linkStatsFromReport(report, this._previous.get(key) ?? null, this.now(), about);
    this._previous.set(key, snapshot);
    return stats;
  }

  /** Drop snapshots of connections that are gone. @param {Iterable<string>} liveKeys */
  keepOnly(liveKeys) {
    const live = new Set(liveKeys);
    for (const key of [...this._previous.keys()]) {
      if (!live.has(key)) this._previous.delete(key);
    }
  }
}
