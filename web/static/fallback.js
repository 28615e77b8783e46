// The fallback flow on the page (docs/fallback.md): what each person sees and what each page
// does at each step. The server's flow decides while it can reach this page (its `fallback`,
// `notice` and `call_prompt` messages); the page's own plan (plan.js) takes over once it
// cannot. session.js feeds it stats; therapist.js adds the therapist's controls on top of
// its `change` events.
//
// Per person it keeps a Status: video full / lowered / off, reconnecting, on the phone (and
// back online), held. From those it derives, for each link, the video this page sends
// (peers.js send policies: full, lowered or paused), whether the link's sound plays here (not
// during a hold or the phone step), what each tile says, and the card over the call when this
// page itself is cut off, on the phone or held.

import { Emitter } from './events.js';
import { LinkHealth, OfflinePlan, SERVER_SILENT_MS } from './plan.js';
import { announce } from './ui.js';

/** Notices read out at once: a drop and the phone step. */
const URGENT = new Set(['dropped', 'phone']);
const GOOD_NEWS = new Set(['back', 'video_returning', 'video_back', 'resumed', 'returned_to_video', 'video_available']);
/** Notices that say things are fine again fade after this long; the others stay until replaced. */
const FADES_AFTER_MS = { back: 6000, video_back: 6000, resumed: 6000, returned_to_video: 8000, left: 8000 };

/** A rejoin step the server asked of this page is judged this long after it was taken. */
const STEP_VERDICT_MS = 3000;
/** Two stats rounds: long enough for the links' health to be current. */
const FRESH_SAMPLES_MS = 600;
/** A connection younger than this is still being made: recovery leaves it alone. */
const YOUNG_PC_MS = 3000;
/** Page rejoins (reloads) wait longer with each attempt the server counts. */
const PAGE_REJOIN_DELAY_MS = [0, 1000, 2000, 4000, 8000];
/** The server is probed this often while every link is lost. */
const PROBE_EVERY_MS = 1000;
const PAGE_REJOIN_KEY = 'telehealth:page-rejoin';

/** One person's place in the flow, as this page knows it. */
export class Status {
  constructor() {
    /** @type {'full'|'lowered'|'off'} */
    this.video = 'full';
    this.reconnecting = false;
    this.phone = false;
    this.backOnline = false;
    /** Held: the person this one is waiting for. @type {string|null} */
    this.heldFor = null;
  }

  get gone() {
    return this.reconnecting || this.phone;
  }
}

export class FallbackController {
  /**
   * @param {{
   *   signaling: import('./signaling.js').SignalingClient,
   *   mesh: import('./peers.js').Mesh,
   *   call: import('./call.js').CallView,
   *   name: (peerId: string) => string,
   *   rejoinPage: () => void,
   *   now?: () => number,
   * }} parts
   */
  constructor({ signaling, mesh, call, name, rejoinPage, now = () => Date.now() }) {
    this.signaling = signaling;
    this.mesh = mesh;
    this.call = call;
    this.name = name;
    this.rejoinPage = rejoinPage;
    this.now = now;
    this.health = new LinkHealth();
    /** @type {import('./signaling.js').FallbackPlan|null} */
    this.plan = null;
    /** @type {OfflinePlan|null} */
    this.offline = null;
    /** @type {Map<string, Status>} */
    this.statuses = new Map();
    /** The last notice about this page's own person, by kind (the card uses the words). */
    this.ownNotice = new Map();
    this._policies = new Map();
    this._probeAt = null;
    this._retrying = false;
    this._events = new Emitter('fallback view', ['change']);
    this._wire();
  }

  /** @param {(detail: {peerId: string|null}) => void} handler called whenever a status changes */
  onChange(handler) {
    this._events.on('change', handler);
  }

  me() {
    return this.signaling.me?.id ?? '';
  }

  /** @returns {Status} */
  status(peerId) {
    let status = this.statuses.get(peerId);
    if (!status) {
      status = new Status();
      this.statuses.set(peerId, status);
    }
    return status;
  }

  /**
   * Whether video is flowing on the pair by the flow's choice: not when it paused video (audio
   * only, a hold, the phone step). Reported with the stats (`video`), so the server scores such
   * a link on its sound and does not read the pause as a worse network.
   */
  videoExpected(peerId) {
    return this._policies.get(peerId) !== 'off';
  }

  /** This page has lost the server and its peers: its own plan speaks (the card). */
  get cutOff() {
    return Boolean(this.offline && this.offline.state !== 'online');
  }

  /** Whether the flow is speaking about this person (its notices replace presence banners). */
  speaksFor(peerId) {
    const s = this.statuses.get(peerId);
    return Boolean(s && (s.gone || s.video === 'off' || s.heldFor));
  }

  // ---- inputs -------------------------------------------------------------------------

  _wire() {
    const sig = this.signaling;
    sig.on('welcome', (m) => this._welcome(m));
    sig.on('fallback', (m) => this._fallback(m));
    // A partner corrected their number: their hint, the therapist's call list.
    sig.on('plan', (m) => { this.plan = m.fallback; });
    sig.on('notice', (m) => this._notice(m));
    // The therapist's call prompt: that partner is in the phone step (it comes first).
    sig.on('call_prompt', (m) => {
      const s = this.status(m.callee);
      s.phone = true;
      s.reconnecting = false;
      this._apply(m.callee);
    });
    sig.on('presence', (m) => {
      if (m.state === 'left') this._forget(m.peer);
    });
    sig.on('error', (m) => {
      // The server had us back on video already (our own plan got there first): nothing to undo.
      if (m.ref === 'return_to_video') this._apply();
    });
    this.mesh.on('peer', ({ peerId }) => {
      this._policies.delete(peerId); // a new pair starts at full: apply ours again
      this._apply();
    });
    this.mesh.on('removed', ({ peerId }) => this.health.keepOnly(
      this.mesh.connections().map((c) => c.peerId).filter((id) => id !== peerId)));
  }

  /** @param {import('./signaling.js').Welcome} welcome */
  _welcome(welcome) {
    if (welcome.fallback) {
      this.plan = welcome.fallback;
      if (!this.offline) this.offline = new OfflinePlan({ rejoinWindowMs: welcome.fallback.rejoin_window_s * 1000 });
    }
    let pending = null;
    try {
      pending = sessionStorage.getItem(PAGE_REJOIN_KEY);
      sessionStorage.removeItem(PAGE_REJOIN_KEY);
    } catch (error) {
      // Without storage there is no reload to report.
    }
    // We reloaded because the server asked: we are back in, say so.
    if (pending) this.signaling.rejoinResult('page_rejoin', true);
  }

  /** @param {import('./signaling.js').FallbackAction} m */
  _fallback(m) {
    const s = this.status(m.person);
    switch (m.action) {
      case 'lower_video': s.video = 'lowered'; break;
      case 'audio_only': s.video = 'off'; break;
      case 'restore_video': s.video = 'full'; break;
      case 'ice_restart':
      case 'fresh_connection':
      case 'page_rejoin':
        if (!s.phone) s.reconnecting = true;
        this._rejoinStep(m);
        break;
      case 'phone': s.phone = true; s.reconnecting = false; s.backOnline = false; break;
      case 'hold': s.heldFor = m.waiting_for ?? null; break;
      case 'unhold': s.heldFor = null; break;
      default: return;
    }
    this._apply(m.person);
  }

  /** @param {import('./signaling.js').Notice} n */
  _notice(n) {
    const about = n.about ?? null;
    const mine = about !== null && about === this.me();
    if (about !== null) {
      const s = this.status(about);
      if (n.kind === 'dropped') s.reconnecting = !s.phone;
      else if (n.kind === 'back') s.reconnecting = false;
      else if (n.kind === 'phone') { s.phone = true; s.reconnecting = false; }
      else if (n.kind === 'video_available') { s.phone = true; s.backOnline = true; s.reconnecting = false; }
      else if (n.kind === 'returned_to_video') { s.phone = false; s.backOnline = false; s.reconnecting = false; }
    }
    if (mine) {
      this.ownNotice.set(n.kind, n.text);
      if (n.kind === 'returned_to_video' || n.kind === 'back') this.offline?.returnToVideo();
    }
    // About ourselves, the phone step and its way back are on the card, not in a banner; so
    // is a hold, which only the held partner is told about.
    const onCard = (mine && ['phone', 'video_available'].includes(n.kind)) || n.kind === 'on_hold';
    if (n.kind === 'on_hold') this.ownNotice.set(n.kind, n.text);
    const key = ['on_hold', 'resumed'].includes(n.kind) ? 'hold' : `person-${about ?? 'room'}`;
    if (!onCard) {
      const tone = URGENT.has(n.kind) ? 'bad' : GOOD_NEWS.has(n.kind) ? 'info' : 'warn';
      this.call.banner(key, n.text, tone, { urgent: URGENT.has(n.kind) });
      if (FADES_AFTER_MS[n.kind]) this.call.clearBanner(key, FADES_AFTER_MS[n.kind]);
    }
    // The flow's words replace what the connection alone would have said about this person.
    if (about !== null && key !== 'hold') {
      this.call.clearBanner(`presence-${about}`);
      this.call.clearBanner(`link-${about}`);
    }
    if (n.kind === 'left' && about !== null) this._forget(about);
    this._apply(about);
  }

  /**
   * After each stats round: the links' health (already observed) decides, with the server's
   * silence, whether this page is cut off and must carry out its own plan.
   */
  afterStats() {
    if (!this.offline) return;
    const now = this.now();
    const linksLost = this.health.allLost(now);
    const serverLost = this._serverLost(linksLost, now);
    for (const step of this.offline.update({ linksLost, serverLost }, now)) {
      if (step.type === 'retry') this._retry();
      else if (step.type === 'reconnecting') announce('Your connection dropped. Reconnecting…');
    }
    this._apply();
  }

  _serverLost(linksLost, now) {
    const sig = this.signaling;
    if (!sig.seated) return false;
    if (sig.state !== 'open') return true;
    if (!linksLost) {
      this._probeAt = null;
      return false;
    }
    // Every link is lost: is the server still there? Ask, and wait a moment for the answer.
    const heardSinceProbe = this._probeAt !== null && sig.silentForMs() < now - this._probeAt;
    if (this._probeAt === null || (heardSinceProbe && now - this._probeAt >= PROBE_EVERY_MS)) {
      sig.ping();
      this._probeAt = now;
      return false;
    }
    return !heardSinceProbe && now - this._probeAt > SERVER_SILENT_MS;
  }

  /** One rejoin attempt of our own plan: is the server reachable? Then connect again. */
  async _retry() {
    if (this._retrying) return;
    this._retrying = true;
    try {
      const response = await fetch('/healthz', { cache: 'no-store', signal: AbortSignal.timeout(2000) });
      const sig = this.signaling;
      if (response.ok && (sig.state !== 'open' || sig.silentForMs() > SERVER_SILENT_MS)) sig.retryNow();
    } catch (error) {
      // Still cut off; the plan tries again later.
    } finally {
      this._retrying = false;
    }
  }

  // ---- the rejoin ladder, as the server asks for it ---------------------------------

  /**
   * ICE restart, fresh connection, page rejoin. On each pair the side that makes the offers
   * acts (the other side got the same message), so two restarts never collide; a pair that
   * receives media again is left alone (the message may come late, after a short cut).
   * A page whose own link is the one reports how its step went.
   * @param {import('./signaling.js').FallbackAction} m
   */
  _rejoinStep(m) {
    // Judge the links on fresh samples, not on the last one before a cut: after a short cut
    // the server's messages arrive late, in a burst, when media is already flowing again.
    setTimeout(() => this._takeRejoinStep(m), FRESH_SAMPLES_MS);
  }

  _takeRejoinStep(m) {
    const now = this.now();
    const step = /** @type {import('./signaling.js').RejoinStep} */ (m.action);
    const act = (c) => {
      if (this.health.receiving(c.peerId, now) || !c.offerer) return;
      if (step === 'ice_restart') this.mesh.restartIce(c.peerId);
      else if (now - c.createdAt >= YOUNG_PC_MS) this.mesh.freshConnection(c.peerId);
    };
    const connections = this.mesh.connections();
    if (m.person !== this.me()) {
      if (step !== 'page_rejoin') connections.filter((c) => c.peerId === m.person).forEach(act);
      return;
    }
    if (step === 'page_rejoin') {
      if (connections.some((c) => !this.health.receiving(c.peerId, now))) this._pageRejoin(m.attempt ?? 1);
      return;
    }
    connections.forEach(act);
    setTimeout(() => {
      const later = this.now();
      const ok = this.mesh.connections().every((c) => this.health.receiving(c.peerId, later));
      this.signaling.rejoinResult(step, ok);
    }, STEP_VERDICT_MS);
  }

  /** Reload this page with the same link, once the server answers (never onto an error page). */
  _pageRejoin(attempt) {
    const delay = PAGE_REJOIN_DELAY_MS[Math.min(attempt - 1, PAGE_REJOIN_DELAY_MS.length - 1)];
    setTimeout(async () => {
      try {
        const response = await fetch('/healthz', { cache: 'no-store', signal: AbortSignal.timeout(3000) });
        if (!response.ok) return;
        sessionStorage.setItem(PAGE_REJOIN_KEY, String(attempt));
      } catch (error) {
        return; // the server is out of reach: our own plan is in charge
      }
      this.rejoinPage();
    }, delay);
  }

  // ---- this page's own choices ------------------------------------------------------

  /** Back from the phone step to video (the person's own button). */
  returnToVideo() {
    this.signaling.returnToVideo();
    const s = this.status(this.me());
    s.phone = false;
    s.backOnline = false;
    this.offline?.returnToVideo();
    this.ownNotice.clear();
    this._apply(this.me());
  }

  _forget(peerId) {
    this.statuses.delete(peerId);
    this._policies.delete(peerId);
    this._apply(peerId);
  }

  // ---- outputs ------------------------------------------------------------------------

  /** Make the links, tiles and card agree with everyone's status. */
  _apply(changed = null) {
    const mine = this.status(this.me());
    // On the phone by our own plan too: if the network comes back mid-call, the call's sound
    // must not start again on its own next to the phone.
    const ownPhone = this.offline?.state === 'phone';
    for (const link of this.mesh.links.keys()) {
      const theirs = this.status(link);
      const both = [mine, theirs];
      // On the phone or held, the pair neither sees nor hears each other here; the sound
      // still flows underneath, unplayed, so the monitor can tell when the link is back.
      const paused = ownPhone || both.some((s) => s.phone || s.heldFor);
      const video = paused || both.some((s) => s.video === 'off') ? 'off'
        : both.some((s) => s.video === 'lowered') ? 'lowered' : 'full';
      if (this._policies.get(link) !== video) {
        this._policies.set(link, video);
        this.mesh.setSendPolicy(link, { video });
      }
      this.call.setPlaybackPaused(link, paused);
      let tileStatus = null;
      if (theirs.phone) tileStatus = 'phone';
      else if (theirs.heldFor || mine.heldFor) tileStatus = 'hold';
      else if (theirs.reconnecting) tileStatus = 'reconnecting';
      else if (video === 'off') tileStatus = 'audio_only';
      this.call.setStatus(link, tileStatus);
    }
    this._card(mine);
    if (this.cutOff) {
      // The card says it all; banners about each link and the server would only repeat it.
      for (const key of ['self', 'quality', ...[...this.mesh.links.keys()].flatMap((id) => [`link-${id}`, `presence-${id}`])]) {
        this.call.clearBanner(key);
      }
    }
    this._events.emit('change', { peerId: changed });
  }

  /** The card over the call: this page cut off, on the phone, back online, or held. */
  _card(mine) {
    const plan = this.offline;
    const partner = this.signaling.me?.role !== 'therapist';
    // `calls` says whether the card lists the calls until the list itself replaces it below.
    /** @type {{title: string, text: string, detail: string, returnButton?: boolean,
     *          calls?: boolean|Array<{name: string, phone: string}>, onReturn?: () => void}|null} */
    let view = null;
    if (plan?.state === 'reconnecting') {
      view = {
        title: 'Reconnecting…',
        text: 'Reconnecting… this usually takes a few seconds. Please keep this page open.',
        detail: plan.attempt > 0 ? `Still trying (attempt ${plan.attempt + 1}). ${partner
          ? 'If it does not work soon, your therapist will call you.'
          : 'If it does not work soon, call your clients from this page.'}` : '',
      };
    } else if ((plan?.state === 'phone' && plan.backOnline) || (mine.phone && mine.backOnline)) {
      view = {
        title: "You're back online",
        text: this.ownNotice.get('video_available') ?? (partner
          ? "You're back online. You can return to video whenever you're ready, or stay on the phone."
          : "You're back online. You can return to video."),
        detail: '', returnButton: true, calls: !partner,
      };
    } else if (plan?.state === 'phone' || mine.phone) {
      view = partner ? {
        title: 'Your therapist will call you',
        text: this.ownNotice.get('phone') ?? `We couldn't reconnect your video. Your therapist will call you${
          this.plan?.phone_hint ? ` at ${this.plan.phone_hint}` : ''}. Please keep your phone nearby.`,
        detail: plan?.state === 'phone' ? 'We keep trying to reconnect in the background.' : '',
      } : {
        title: 'Call your clients',
        text: this.ownNotice.get('phone')
          ?? 'Your video couldn\'t reconnect. Please call your clients now; their numbers are on this page.',
        detail: plan?.state === 'phone' ? 'We keep trying to reconnect in the background.' : '',
        calls: true,
      };
    } else if (mine.heldFor) {
      view = {
        title: 'Session paused',
        text: this.ownNotice.get('on_hold') ?? `Waiting for ${this.name(mine.heldFor)} to reconnect.`,
        detail: '',
      };
    }
    if (view) view.calls = view.calls ? this.plan?.call_list ?? [] : undefined;
    if (view?.returnButton) view.onReturn = () => this.returnToVideo();
    this.call.showCard(/** @type {Parameters<import('./call.js').CallView['showCard']>[0]} */ (view));
  }

  /**
   * Record one stats sample of a link (session.js calls this for each). When media from a
   * peer comes back after an outage, our video to them starts over from a key frame: the
   * way back is open in both directions now, and their request for one may have been lost.
   */
  observe(peerId, pcId, packetsIn) {
    const now = this.now();
    const wasLost = this.health.lost(peerId, now);
    this.health.observe(peerId, pcId, packetsIn, now);
    if (wasLost && this.health.receiving(peerId, now)) this.mesh.refreshVideo(peerId);
  }
}
