// The signaling client: protocol v1 over one WebSocket, mirroring signaling/protocol.py.
//
// DOM-free: it never touches the page. It opens the socket, sends `join` with the link's
// token, hands every server message to the handlers registered for its `type`, keeps the
// socket alive with pings, and reconnects with backoff (keeping the same token) until the
// server says the session is over for us. After a reconnect the server answers `join` with
// `welcome`/`waiting` and `resumed: true`; peers.js renegotiates what needs it.

import { Emitter } from './events.js';

/** Protocol version; must match signaling/protocol.py VERSION. */
export const VERSION = 1;

// ---- shared parts --------------------------------------------------------------------

/** @typedef {'therapist'|'partner'} Role */
/** @typedef {'waiting'|'in_call'|'reconnecting'} PeerState */
/** @typedef {'reconnecting'|'back'|'left'} Presence */
/** @typedef {'audio'|'video'} MediaKind */
/** @typedef {{type: 'offer'|'answer', sdp: string}} Description */
/** @typedef {{candidate: string, sdpMid?: string|null, sdpMLineIndex?: number|null, usernameFragment?: string|null}} IceCandidate */
/**
 * One participant's view of its link to one peer, sampled every 250-500 ms.
 * Counters are cumulative since the peer connection started; rates are over the last
 * interval. Units: milliseconds, fractions 0..1, bits per second.
 * The send_* fields are the reporter's own video to this peer: what holds its encoder back
 * (outbound qualityLimitationReason), the frame rate it sends, the bitrate cap its flow step
 * set (absent when uncapped). lag_ms: how late the reporter's page runs its timers (absent
 * while the page is hidden). encode_ms: the reporter's encoder time per video frame.
 * @typedef {{
 *   peer: string, pc?: string|null, rtt_ms?: number|null, jitter_ms?: number|null,
 *   loss?: number|null, packets_in?: number|null, bytes_in?: number|null,
 *   frames_decoded?: number|null, frames_dropped?: number|null, fps?: number|null,
 *   concealed?: number|null, out_bitrate?: number|null, in_bitrate?: number|null,
 *   candidate?: 'host'|'srflx'|'prflx'|'relay'|null, video?: boolean,
 *   send_limit?: 'none'|'cpu'|'bandwidth'|'other'|null, send_fps?: number|null,
 *   send_cap?: number|null, lag_ms?: number|null, encode_ms?: number|null
 * }} LinkStats
 */
/** @typedef {{urls: string[], username?: string, credential?: string}} IceServer */
/** @typedef {{id: string, role: Role, name: string}} Me */
/** The `offer` flag: true when *you* make the offers on this pair (the impolite side).
 * @typedef {{id: string, role: Role, name: string, state: PeerState, offer: boolean}} PeerInfo */
/** A partner's checklist (unticked: false). @typedef {{private_space?: boolean, headphones?: boolean, charged?: boolean, not_driving?: boolean, moving_car?: boolean}} CheckInAnswers */
/** `phone`: whether they confirmed their number or gave another. @typedef {{id: string, name: string, checkin?: CheckInAnswers, phone?: 'confirmed'|'corrected'}} WaitingPerson */
/** @typedef {{id: string, locked: boolean}} RoomInfo */
/** @typedef {{rejoin_window_s: number, phone_hint?: string, call_list?: Array<{id: string, name: string, phone: string}>}} FallbackPlan */

// ---- server to client ------------------------------------------------------------------

/** @typedef {{type: 'welcome', v: number, you: Me, room: RoomInfo, peers: PeerInfo[], resumed: boolean, ice_servers: IceServer[], grace_s: number, fallback?: FallbackPlan, ice_transport_policy?: 'all'|'relay'}} Welcome */
/** @typedef {{type: 'waiting', you: Me, resumed?: boolean}} Waiting */
/** @typedef {{type: 'lobby', waiting: WaitingPerson[]}} Lobby */
/** @typedef {{type: 'peer_joined', peer: PeerInfo}} PeerJoined */
/** @typedef {{type: 'presence', peer: string, state: Presence}} PresenceChanged */
/** @typedef {{type: 'sdp', from: string, pc: string, description?: Description}} ServerSdp */
/** @typedef {{type: 'candidate', from: string, pc: string, candidate?: IceCandidate}} ServerCandidate */
/** @typedef {{type: 'restart', from: string, pc?: string}} ServerRestart */
/** @typedef {{type: 'pong', t?: number, server_time?: number}} Pong */
/** @typedef {{type: 'peer_media', peer: string, audio: boolean, video: boolean}} PeerMedia */
/** @typedef {{type: 'mute_request', kind: MediaKind}} MuteRequest */
/** @typedef {{type: 'room', room: RoomInfo}} RoomChanged */
/** @typedef {{type: 'error', code: string, message: string, ref?: string}} ErrorMessage */
/** @typedef {{type: 'bye', reason: string, action: string, message?: string}} Bye */
/** @typedef {'good'|'fair'|'poor'|'lost'} QualityLevel */
/** The monitor's verdict on one pair. @typedef {{a: string, b: string, level: QualityLevel, mos?: number, relay?: boolean}} LinkQuality */
/** Whose own device, not their network, slows the call. @typedef {'busy'|'asleep'} DeviceState */
/** Everyone's connection quality, sent when a level changes; `weak` names the person whose own network is the cause;
 * `devices` the people whose own device slows the call (absent when nobody's).
 * @typedef {{type: 'quality', links: LinkQuality[], people: Object<string, QualityLevel>, weak?: string,
 *            devices?: Object<string, DeviceState>}} Quality */
/** @typedef {'lower_video'|'audio_only'|'restore_video'|'ice_restart'|'fresh_connection'|'page_rejoin'|'hold'|'unhold'|'phone'} FallbackStep */
/** A step of the fallback flow for `person`. @typedef {{type: 'fallback', action: FallbackStep, person: string, attempt?: number, waiting_for?: string}} FallbackAction */
/** Plain words for this reader. @typedef {{type: 'notice', kind: string, text: string, about?: string}} Notice */
/** Therapist only: call this partner now. @typedef {{type: 'call_prompt', callee: string, name: string, phone: string|null, href: string|null, text: string}} CallPrompt */
/** @typedef {{disruption: number, person: string, cause: string, started_at: number, ended_at?: number, outcome?: string, step?: string, step_at?: number, step_outcome?: string}} LedgerRow */
/** Therapist only: the session's disruptions. @typedef {{type: 'ledger', rows: LedgerRow[]}} Ledger */
/** Your fallback plan changed (a corrected number). @typedef {{type: 'plan', fallback: FallbackPlan}} PlanChanged */
/** @typedef {Welcome|Waiting|Lobby|PeerJoined|PresenceChanged|ServerSdp|ServerCandidate|ServerRestart|Pong|PeerMedia|MuteRequest|RoomChanged|ErrorMessage|Bye|Quality|FallbackAction|Notice|CallPrompt|Ledger|PlanChanged} ServerMessage */
/** @typedef {'ice_restart'|'fresh_connection'|'page_rejoin'} RejoinStep */

/** Why the server closes a socket (CloseReason in protocol.py). */
export const CloseReason = Object.freeze({
  ROOM_ENDED: 'room_ended',
  REMOVED: 'removed',
  REPLACED: 'replaced',
  LEFT: 'left',
  LINK_REFUSED: 'link_refused',
  TOO_SLOW: 'too_slow',
  TOO_FAST: 'too_fast',
  PROTOCOL: 'protocol',
  SHUTDOWN: 'shutdown',
  INTERNAL: 'internal',
  LINK_REVOKED: 'link_revoked',
});

/** What to do after `bye` (RecoveryAction in protocol.py). */
export const RecoveryAction = Object.freeze({ NONE: 'none', RESUME: 'resume', REJOIN: 'rejoin' });

/** WebSocket close codes per reason (CLOSE_CODES in protocol.py). */
export const CloseCodes = Object.freeze({
  4001: CloseReason.ROOM_ENDED,
  4002: CloseReason.REMOVED,
  4003: CloseReason.REPLACED,
  4004: CloseReason.LEFT,
  4005: CloseReason.LINK_REFUSED,
  4006: CloseReason.TOO_SLOW,
  4009: CloseReason.TOO_FAST,
  4007: CloseReason.PROTOCOL,
  4008: CloseReason.SHUTDOWN,
  4011: CloseReason.INTERNAL,
  4012: CloseReason.LINK_REVOKED,
});

// Closes after which trying again cannot help: the session is over for this page.
const FINAL_REASONS = new Set([
  CloseReason.ROOM_ENDED, CloseReason.REMOVED, CloseReason.REPLACED, CloseReason.LEFT,
  CloseReason.LINK_REFUSED, CloseReason.PROTOCOL, CloseReason.LINK_REVOKED,
]);

/** Error codes that refuse the join itself; reconnecting would be refused again. */
export const JOIN_REFUSALS = Object.freeze(new Set([
  'bad_link', 'link_expired', 'link_revoked', 'room_ended', 'room_full', 'room_locked',
  'unsupported_version', 'too_early', 'session_over',
]));

/** The join token from a page path like `/j/<token>`. */
export function tokenFromPath(pathname) {
  const match = /^\/j\/([A-Za-z0-9_-]+)\/?$/.exec(pathname);
  return match ? match[1] : '';
}

/** The signaling URL for a page at `location` (same origin; the token never goes here). */
export function socketUrl(location) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

/**
 * Connection states, as reported to 'connection' handlers:
 *   idle -> connecting -> open -> (drop) reconnecting -> connecting -> open ...
 *   any -> closed (bye with nothing to resume, a refused join, or close())
 * @typedef {'idle'|'connecting'|'open'|'reconnecting'|'closed'} ConnectionState
 */

export class SignalingClient {
  /**
   * @param {{
   *   url: string, token: string,
   *   WebSocketImpl?: typeof WebSocket,
   *   connectTimeoutMs?: number, backoffMs?: number[], pingEveryMs?: number, silentLimitMs?: number,
   *   probeUrl?: string|null, probeEveryMs?: number, fetchImpl?: typeof fetch,
   *   timers?: {setTimeout: typeof setTimeout, clearTimeout: typeof clearTimeout, setInterval: typeof setInterval, clearInterval: typeof clearInterval},
   *   now?: () => number, random?: () => number,
   * }} options
   */
  constructor({
    url, token, WebSocketImpl = globalThis.WebSocket,
    // Chromium throttles repeated WebSocket attempts by seconds; a shorter timeout makes the
    // page cancel its own attempts (docs/FACTS). Back off, never hammer.
    connectTimeoutMs = 10000, backoffMs = [500, 1000, 2000, 4000, 8000, 15000],
    pingEveryMs = 5000, silentLimitMs = 15000,
    // While a seated page waits to reconnect, it asks this URL (the server's /healthz) and
    // connects the moment it answers: a restarted server is back in order within a second of
    // answering, not at the end of a backoff step (up to 10 s), and a failed fetch is not a
    // failed WebSocket attempt, which Chromium would make us wait for.
    probeUrl = null, probeEveryMs = 1000, fetchImpl = globalThis.fetch?.bind(globalThis),
    timers = globalThis, now = () => Date.now(), random = Math.random,
  }) {
    this.url = url;
    this.token = token;
    this.WebSocketImpl = WebSocketImpl;
    this.connectTimeoutMs = connectTimeoutMs;
    this.backoffMs = backoffMs;
    this.pingEveryMs = pingEveryMs;
    this.silentLimitMs = silentLimitMs;
    this.probeUrl = probeUrl;
    this.probeEveryMs = probeEveryMs;
    this.fetchImpl = fetchImpl;
    this._probeTimer = null;
    this.timers = timers;
    this.now = now;
    this.random = random;
    /** @type {ConnectionState} */
    this.state = 'idle';
    /** @type {Me|null} */
    this.me = null;
    /** Whether the server has seated us at least once (a later join is a resume). */
    this.seated = false;
    /** @type {Bye|null} */
    this.bye = null;
    this.attempt = 0;
    this._ws = null;
    this._events = new Emitter('signaling');
    this._retryTimer = null;
    this._connectTimer = null;
    this._pingTimer = null;
    this._lastHeard = 0;
    this._stopped = false;
  }

  /**
   * Register a handler for a server message type (e.g. 'welcome', 'sdp'), or for
   * 'connection' ({state, attempt, delayMs, reason}) and 'closed' ({reason, action, message}).
   * Unknown future types (like the server's `quality`) reach their handlers too.
   * @returns {() => void} unsubscribe
   */
  on(type, handler) {
    return this._events.on(type, handler);
  }

  _emit(type, payload) {
    this._events.emit(type, payload);
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit('connection', { state, attempt: this.attempt, ...extra });
  }

  /** Open the socket and join; reconnects on its own until closed. */
  connect() {
    if (this._stopped || this.state === 'connecting' || this.state === 'open') return;
    this._clearRetry();
    this.attempt += 1;
    this._setState('connecting');
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url);
    } catch (error) {
      this._scheduleReconnect('error');
      return;
    }
    this._ws = ws;
    this._connectTimer = this.timers.setTimeout(() => {
      if (this._ws === ws && ws.readyState !== 1) {
        ws.close();
        this._lost(ws, 'timeout');
      }
    }, this.connectTimeoutMs);
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._stopProbe();
      this.timers.clearTimeout(this._connectTimer);
      this._lastHeard = this.now();
      ws.send(JSON.stringify({ type: 'join', v: VERSION, token: this.token }));
      this._setState('open');
      this._startPings(ws);
    };
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      this._lastHeard = this.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (message && typeof message.type === 'string') this._receive(message);
    };
    ws.onclose = (event) => this._lost(ws, CloseCodes[event.code] ?? 'network');
    ws.onerror = () => {}; // onclose follows and decides
  }

  /** @param {ServerMessage} message */
  _receive(message) {
    if (message.type === 'welcome' || message.type === 'waiting') {
      this.me = message.you;
      this.seated = true;
      this.attempt = 0;
    } else if (message.type === 'bye') {
      this.bye = message;
    } else if (message.type === 'error' && message.ref === 'join' && JOIN_REFUSALS.has(message.code)) {
      this._emit('error', message);
      this._finish({ reason: message.code, action: RecoveryAction.NONE, message: message.message });
      return;
    }
    this._emit(message.type, message);
  }

  _lost(ws, reason) {
    if (this._ws !== ws) return;
    this._ws = null;
    this._stopTimers();
    ws.onopen = ws.onmessage = ws.onclose = null;
    const bye = this.bye;
    if (this._stopped) return;
    if (bye) {
      this.bye = null;
      if (bye.action === RecoveryAction.RESUME) {
        this._scheduleReconnect(bye.reason);
      } else {
        this._finish(bye);
      }
      return;
    }
    if (FINAL_REASONS.has(reason)) {
      this._finish({ reason, action: RecoveryAction.NONE, message: '' });
      return;
    }
    this._scheduleReconnect(reason);
  }

  _finish(detail) {
    this._stopped = true;
    this._stopProbe();
    this._stopTimers();
    this._clearRetry();
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.close();
    }
    this._setState('closed', { reason: detail.reason });
    this._emit('closed', detail);
  }

  _scheduleReconnect(reason) {
    const step = Math.min(this.attempt, this.backoffMs.length) - 1;
    const base = this.backoffMs[Math.max(0, step)];
    // Jitter, so that everyone does not come back in the same millisecond after a restart.
    const delayMs = Math.round(base * (0.75 + this.random() * 0.5));
    this._setState('reconnecting', { delayMs, reason });
    this._retryTimer = this.timers.setTimeout(() => {
      this._retryTimer = null;
      this.connect();
    }, delayMs);
    this._startProbe();
  }

  _startProbe() {
    if (!this.probeUrl || !this.fetchImpl || !this.seated || this._probeTimer !== null) return;
    let asking = false;
    this._probeTimer = this.timers.setInterval(async () => {
      if (asking || this.state !== 'reconnecting') return;
      asking = true;
      try {
        const response = await this.fetchImpl(this.probeUrl, { cache: 'no-store', signal: AbortSignal.timeout(2000) });
        if (response.ok) this.reconnectNow();
      } catch (error) {
        // Not back yet.
      } finally {
        asking = false;
      }
    }, this.probeEveryMs);
  }

  _stopProbe() {
    if (this._probeTimer !== null) this.timers.clearInterval(this._probeTimer);
    this._probeTimer = null;
  }

  /** Try now instead of waiting out the backoff (e.g. the device came back online). */
  reconnectNow() {
    if (this.state === 'reconnecting' && !this._stopped) {
      this._clearRetry();
      this.connect();
    }
  }

  /**
   * Give up on the current socket or attempt and connect again now. For a page that found
   * the server reachable again while its socket is silent (dead after a network change) or
   * its attempt hangs on a lost packet.
   */
  retryNow() {
    if (this._stopped) return;
    const ws = this._ws;
    if (ws) {
      ws.close();
      this._lost(ws, 'silent');
    }
    this.reconnectNow();
  }

  /** Milliseconds since the server last said anything on an open socket (else Infinity). */
  silentForMs() {
    return this.state === 'open' ? this.now() - this._lastHeard : Infinity;
  }

  _clearRetry() {
    if (this._retryTimer !== null) this.timers.clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  _startPings(ws) {
    this._pingTimer = this.timers.setInterval(() => {
      if (this._ws !== ws) return;
      // A socket can die without a close (a laptop lid, a Wi-Fi switch): if the server has
      // been silent through several pings, drop it and reconnect.
      if (this.now() - this._lastHeard > this.silentLimitMs) {
        ws.close();
        this._lost(ws, 'silent');
        return;
      }
      this.ping();
    }, this.pingEveryMs);
  }

  _stopTimers() {
    if (this._pingTimer !== null) this.timers.clearInterval(this._pingTimer);
    if (this._connectTimer !== null) this.timers.clearTimeout(this._connectTimer);
    this._pingTimer = this._connectTimer = null;
  }

  /** Stop for good (the page is leaving); sends nothing. */
  close() {
    if (this._stopped) return;
    this._finish({ reason: 'closed', action: RecoveryAction.NONE, message: '' });
  }

  /**
   * Send one client message. Messages are not queued while disconnected: after a resume the
   * server's welcome tells the page what to renegotiate.
   * @returns {boolean} whether it went out
   */
  send(message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1 || this.state !== 'open') return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  // ---- client to server (one method per ClientMessage) ----------------------------------

  /** @param {string} to @param {string} pc @param {Description} description */
  sdp(to, pc, description) {
    return this.send({ type: 'sdp', to, pc, description: { type: description.type, sdp: description.sdp } });
  }

  /** @param {string} to @param {string} pc @param {IceCandidate|null} candidate */
  candidate(to, pc, candidate) {
    const message = { type: 'candidate', to, pc };
    if (candidate) {
      message.candidate = { candidate: candidate.candidate };
      if (candidate.sdpMid != null) message.candidate.sdpMid = candidate.sdpMid;
      if (candidate.sdpMLineIndex != null) message.candidate.sdpMLineIndex = candidate.sdpMLineIndex;
      if (candidate.usernameFragment != null) message.candidate.usernameFragment = candidate.usernameFragment;
    }
    return this.send(message);
  }

  /** Ask the offerer of a pair for a fresh connection. */
  restart(to, pc = null) {
    return this.send(pc ? { type: 'restart', to, pc } : { type: 'restart', to });
  }

  ping() {
    return this.send({ type: 'ping', t: this.now() });
  }

  leave() {
    return this.send({ type: 'leave' });
  }

  /**
   * The page is going away (`pagehide`): closed, navigated away, or reloading. Say so, and
   * hear nothing more: the server's goodbye must not make this page forget its seat, which a
   * reload resumes.
   */
  depart() {
    const sent = this.send({ type: 'leave', closing: true });
    this._stopped = true;
    this._stopProbe();
    this._stopTimers();
    this._clearRetry();
    if (this._ws) this._ws.onopen = this._ws.onmessage = this._ws.onclose = null;
    return sent;
  }

  media(audio, video) {
    return this.send({ type: 'media', audio: Boolean(audio), video: Boolean(video) });
  }

  /** @param {LinkStats[]} links at most 8 */
  stats(links) {
    return this.send({ type: 'stats', links: links.slice(0, 8) });
  }

  admit(participant) {
    return this.send({ type: 'admit', participant });
  }

  remove(participant) {
    return this.send({ type: 'remove', participant });
  }

  /** @param {string} participant @param {MediaKind} kind */
  mute(participant, kind = 'audio') {
    return this.send({ type: 'mute', participant, kind });
  }

  lock(locked) {
    return this.send({ type: 'lock', locked: Boolean(locked) });
  }

  end() {
    return this.send({ type: 'end' });
  }

  // The fallback flow (docs/fallback.md).

  /** Therapist: move a partner to the phone step now. */
  switchToPhone(participant) {
    return this.send({ type: 'switch_to_phone', participant });
  }

  /** Back from the phone step to video; the therapist names the partner, a partner omits it. */
  returnToVideo(participant = null) {
    return this.send(participant ? { type: 'return_to_video', participant } : { type: 'return_to_video' });
  }

  /** Therapist: put the session on hold, and resume it. */
  hold() {
    return this.send({ type: 'hold' });
  }

  resume() {
    return this.send({ type: 'resume' });
  }

  /** How a rejoin step the server asked for went. @param {RejoinStep} step */
  rejoinResult(step, ok) {
    return this.send({ type: 'rejoin_result', step, ok: Boolean(ok) });
  }

  // A partner's check-in.

  /** Partner: the checklist's answers (sent on joining and on every change). @param {CheckInAnswers} answers */
  checkIn(answers) {
    return this.send({ type: 'check_in', answers });
  }

  /** Partner: confirm the number the therapist would call (no argument) or give another. */
  confirmPhone(phone = null) {
    return this.send(phone ? { type: 'confirm_phone', phone } : { type: 'confirm_phone' });
  }

  /** Therapist: ask for the session's disruption ledger. */
  getLedger() {
    return this.send({ type: 'get_ledger' });
  }
}
