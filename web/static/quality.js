// Connection quality per link: one place decides what the indicator shows.
//
// DOM-free. Two sources feed a QualityBoard:
//   - fromStats(peerId, linkStats): this page's own estimate from getStats (stats.js);
//   - fromServer(peerId, level):    the server's verdict (its `quality` messages, read with
//     peerLevels), which sees both ends of a link. The server sends a verdict when a level
//     changes, so once it has spoken about a link its word stands, until serverGone() (our
//     signaling dropped: the server cannot see us) hands the link back to local estimates.
// The board smooths local estimates: a worse level shows after two samples in a row (one
// busy second on a loaded laptop is not a bad connection), a better one once it has held
// for a few seconds, so the bars do not flicker. Server verdicts show at once. A link whose
// packets have stopped arriving shows lost at once, whoever spoke last.
// Handlers of 'change' get {peerId, level, source}.

import { Emitter } from './events.js';

/** @typedef {'good'|'fair'|'poor'|'lost'} Level */

export const LEVELS = Object.freeze(['good', 'fair', 'poor', 'lost']);

/** Words for each level, for the indicator and for screen readers. */
export const LEVEL_WORDS = Object.freeze({
  good: 'Good connection',
  fair: 'Unsteady connection',
  poor: 'Weak connection',
  lost: 'Connection lost',
  unknown: 'Connecting…',
});

const RANK = { good: 0, fair: 1, poor: 2, lost: 3 };

/**
 * This page's links in a server `quality` message ({links: [{a, b, level}], ...}): the level
 * of each pair that includes `me`, keyed by the other person.
 * @param {{links?: Array<{a: string, b: string, level: Level}>}} message
 * @param {string} me
 * @returns {Map<string, Level>}
 */
export function peerLevels(message, me) {
  const levels = new Map();
  for (const link of message.links ?? []) {
    if (link.a === me) levels.set(link.b, link.level);
    else if (link.b === me) levels.set(link.a, link.level);
  }
  return levels;
}

/**
 * The level one LinkStats sample suggests, or null when it says nothing yet.
 * @param {import('./signaling.js').LinkStats} s
 * @returns {Level|null}
 */
export function levelFromStats(s) {
  const rawLoss = s.loss ?? null;
  const rtt = s.rtt_ms ?? null;
  if (rawLoss === null && rtt === null) return null;
  // The network's own signals only: packets lost and the round trip. Concealed audio, frame
  // rate and an incoming bitrate of 0 are not (a call's first seconds, a paused video, a busy
  // computer all show them on a clean link); media that stopped is LinkHealth's verdict.
  // The first seconds lose a little while buffers settle: judge loss once a few seconds of
  // packets have arrived.
  const loss = (s.packets_in ?? 0) >= 250 ? rawLoss : null;
  if ((loss ?? 0) > 0.08 || (rtt ?? 0) > 600) return 'poor';
  if ((loss ?? 0) > 0.02 || (rtt ?? 0) > 300) return 'fair';
  return 'good';
}

export class QualityBoard {
  constructor({ now = () => Date.now(), upgradeAfterMs = 3000, downgradeAfter = 2 } = {}) {
    this.now = now;
    this.upgradeAfterMs = upgradeAfterMs;
    this.downgradeAfter = downgradeAfter;
    /** @type {Map<string, {shown: Level|null, candidate: Level|null, since: number, worse: number, server: boolean, serverLevel: Level|null, source: string}>} */
    this._links = new Map();
    this._events = new Emitter('QualityBoard', ['change']);
  }

  /** @param {(change: {peerId: string, level: Level|null, source: string}) => void} handler */
  on(type, handler) {
    return this._events.on(type, handler);
  }

  /** @returns {Level|null} */
  level(peerId) {
    return this._links.get(peerId)?.shown ?? null;
  }

  /**
   * This page's own estimate for a link. `lost`: its inbound packets have stopped (plan.js
   * LinkHealth), which one sample cannot tell.
   */
  fromStats(peerId, linkStats, { lost = false } = {}) {
    const entry = this._entry(peerId);
    if (entry.server) {
      // The server sees both ends and its verdict stands, except that nothing arriving here
      // is plain to see at once, even when the server cannot tell us (we may be cut off).
      const level = lost ? 'lost' : entry.serverLevel;
      if (level !== entry.shown) this._show(peerId, entry, level, lost ? 'local' : 'server');
      return;
    }
    // Lost is already a verdict over a second of samples: show it without waiting for more.
    if (lost) this._show(peerId, entry, 'lost', 'local');
    else this._offer(peerId, entry, levelFromStats(linkStats), 'local');
  }

  /** The server's verdict for a link (from a `quality` message). */
  fromServer(peerId, level) {
    if (!LEVELS.includes(level)) return;
    const entry = this._entry(peerId);
    entry.server = true;
    entry.serverLevel = level;
    this._offer(peerId, entry, level, 'server');
  }

  /** The server can no longer see this page (signaling dropped): judge locally again. */
  serverGone() {
    for (const entry of this._links.values()) entry.server = false;
  }

  forget(peerId) {
    this._links.delete(peerId);
  }

  _entry(peerId) {
    let entry = this._links.get(peerId);
    if (!entry) {
      entry = { shown: null, candidate: null, since: 0, worse: 0, server: false, serverLevel: null, source: 'local' };
      this._links.set(peerId, entry);
    }
    return entry;
  }

  _offer(peerId, entry, level, source) {
    if (level === null) return;
    const now = this.now();
    if (source === 'server' || entry.shown === null) {
      this._show(peerId, entry, level, source);
      return;
    }
    if (RANK[level] > RANK[entry.shown]) {
      entry.candidate = null;
      entry.worse += 1;
      if (entry.worse >= this.downgradeAfter) this._show(peerId, entry, level, source);
      return;
    }
    entry.worse = 0;
    if (level === entry.shown) {
      entry.candidate = null;
      return;
    }
    // Better than shown: show it once it has held for a while.
    if (entry.candidate !== level) {
      entry.candidate = level;
      entry.since = now;
    } else if (now - entry.since >= this.upgradeAfterMs) {
      this._show(peerId, entry, level, source);
    }
  }

  _show(peerId, entry, level, source) {
    entry.candidate = null;
    entry.worse = 0;
    entry.source = source;
    if (entry.shown === level) return;
    entry.shown = level;
    this._events.emit('change', { peerId, level, source });
  }
}
