// A page's own view of its links and of the server, and the fallback plan it carries out on
// its own once it has lost both (docs/fallback.md, section 5): no message can reach a page
// whose network is gone, so it cannot wait to be told.
//
// DOM-free, with the time passed in (milliseconds), so it can be tested with a fake clock.
//
// LinkHealth reads the inbound packet counters the page samples for the server anyway. A link
// whose counter has not grown for LOST_AFTER_MS is lost, whatever ICE says: Chromium says
// "disconnected" only after ~6 s.
//
// OfflinePlan, one per page:
//   online --every link lost and the server silent--> reconnecting
//   reconnecting --a link or the server back--> online                        ('back')
//   reconnecting --the rejoin window is over (counted from the links' loss)--> phone
//   phone --a link or the server back--> phone, back online                   ('online')
//   phone --returnToVideo()--> online
// While reconnecting or on the phone it asks for a rejoin attempt ('retry') with backoff.

/**
 * Inbound packets flat this long: the link is lost, and its tile says so. Sound alone sends
 * 50 packets a second, so half a second of none is an outage, seen two stats samples after
 * it began. The server's lost (fallback/scoring.py lost_after_s), which starts the drop
 * notice and the rejoin steps, waits a whole second: a stall of a moment is not a drop.
 */
export const LOST_AFTER_MS = 500;
/** A probe ping unanswered this long: the server is out of reach. */
export const SERVER_SILENT_MS = 2500;
/** Waits between rejoin attempts while offline; the last one repeats. */
export const RETRY_BACKOFF_MS = Object.freeze([1000, 2000, 4000, 8000]);

export class LinkHealth {
  constructor({ lostAfterMs = LOST_AFTER_MS } = {}) {
    this.lostAfterMs = lostAfterMs;
    /** When media last arrived, or the connection appeared (a new one gets LOST_AFTER_MS to
     * show media before it counts as lost). @type {Map<string, {pcId: string, packets: number, heardAt: number}>} */
    this._links = new Map();
    /** Peers whose link has carried media at least once, on any connection. */
    this._carried = new Set();
  }

  /** One sample of a link: its current connection and cumulative inbound packets. */
  observe(peerId, pcId, packetsIn, now) {
    const packets = packetsIn ?? 0;
    const link = this._links.get(peerId);
    if (!link || link.pcId !== pcId) {
      this._links.set(peerId, { pcId, packets, heardAt: now });
    } else if (packets !== link.packets) {
      // Fewer than before is a new count, not silence: Firefox drops a stream's inbound stats
      // when its sender pauses the video, and the sum falls by that stream's packets.
      link.packets = packets;
      link.heardAt = now;
    }
    if (packets > 0) this._carried.add(peerId);
  }

  keepOnly(peerIds) {
    const live = new Set(peerIds);
    for (const peerId of [...this._links.keys()]) {
      if (!live.has(peerId)) this._links.delete(peerId);
    }
  }

  /** Media from this peer arrived within the last LOST_AFTER_MS (or its connection is new). */
  receiving(peerId, now) {
    const link = this._links.get(peerId);
    return link !== undefined && now - link.heardAt < this.lostAfterMs;
  }

  /** Not receiving from a peer whose link carried media before (not one still connecting). */
  lost(peerId, now) {
    return this._carried.has(peerId) && this._links.has(peerId) && !this.receiving(peerId, now);
  }

  /** Every link is lost: this page's own network is the likely cause. */
  allLost(now) {
    const peers = [...this._links.keys()];
    return peers.length > 0 && peers.every((peerId) => this.lost(peerId, now));
  }

  /**
   * Whether to show a link as lost. A peer the server says is on a busy or stopped device may
   * pause its media with nothing wrong with the network (docs/fallback.md, devices), so
   * silence from it alone is not shown as lost; but when every link went quiet, this page is
   * the one cut off, and what the server said of the others' devices says nothing about that.
   */
  shownLost(peerId, now, { onDevice = false } = {}) {
    return this.lost(peerId, now) && (!onDevice || this.allLost(now));
  }
}

/**
 * @typedef {{type: 'reconnecting', since: number} | {type: 'retry', attempt: number}
 *   | {type: 'phone'} | {type: 'online'} | {type: 'back'}} PlanStep
 */

export class OfflinePlan {
  /** @param {{rejoinWindowMs: number, backoffMs?: readonly number[]}} options */
  constructor({ rejoinWindowMs, backoffMs = RETRY_BACKOFF_MS }) {
    this.rejoinWindowMs = rejoinWindowMs;
    this.backoffMs = backoffMs;
    /** @type {'online'|'reconnecting'|'phone'} */
    this.state = 'online';
    this.backOnline = false;
    this.attempt = 0;
    /** When every link was first seen lost (the window counts from there, as the server's). */
    this.lostSince = null;
    this.nextRetryAt = 0;
  }

  /**
   * Feed what the page sees now; returns the steps to carry out, in order.
   * @param {{linksLost: boolean, serverLost: boolean}} seen
   * @returns {PlanStep[]}
   */
  update({ linksLost, serverLost }, now) {
    /** @type {PlanStep[]} */
    const steps = [];
    if (!linksLost) this.lostSince = null;
    else if (this.lostSince === null) this.lostSince = now;
    const offline = linksLost && serverLost;
    if (this.state === 'online') {
      if (!offline) return steps;
      this.state = 'reconnecting';
      this.attempt = 0;
      this.nextRetryAt = now + this.backoffMs[0];
      steps.push({ type: 'reconnecting', since: this.lostSince });
    } else if (!offline) {
      if (this.state === 'reconnecting') {
        this.state = 'online';
        steps.push({ type: 'back' });
      } else if (!this.backOnline) {
        this.backOnline = true;
        steps.push({ type: 'online' });
      }
      return steps;
    } else if (this.state === 'phone') {
      this.backOnline = false;
    }
    if (this.state === 'reconnecting' && now - this.lostSince >= this.rejoinWindowMs) {
      this.state = 'phone';
      this.backOnline = false;
      steps.push({ type: 'phone' });
    }
    if (now >= this.nextRetryAt) {
      this.attempt += 1;
      const wait = this.backoffMs[Math.min(this.attempt, this.backoffMs.length - 1)];
      this.nextRetryAt = now + wait;
      steps.push({ type: 'retry', attempt: this.attempt });
    }
    return steps;
  }

  /** The person (or the therapist, or the server) brought the page back to video. */
  returnToVideo() {
    this.state = 'online';
    this.backOnline = false;
    this.attempt = 0;
  }
}
