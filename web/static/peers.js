// The mesh: one RTCPeerConnection per other participant, negotiated over signaling.js.
//
// DOM-free. Per pair the server says who makes the offers (PeerInfo.offer). That side is
// the impolite one in perfect negotiation; the other side is polite and yields on a
// collision. Each connection has an id (`pc`): an offer carrying a new id means "replace
// your connection for this pair" (how aiortc peers, which cannot restart ICE, recover).
//
// Recovery, per pair:
//   connected --ICE drops--> disconnected (often heals by itself within seconds)
//   disconnected for a while, or failed:
//     offerer: pc.restartIce() once; if that does not connect in time, a fresh connection
//     answerer: waits for the offerer, then sends `restart` to ask for a fresh connection
//   the peer's signaling comes back ("presence: back") with the pair broken: same as failed
//   our own signaling resumes (welcome, resumed): keep what still works, renegotiate the rest
//
// Events (mesh.on): 'peer' {peerId, info} when a pair appears or changes,
// 'stream' {peerId, stream} when a remote track arrives (a new MediaStream per connection),
// 'state' {peerId, state} on connectionState changes, 'presence' {peerId, state},
// 'removed' {peerId}.

import { Emitter } from './events.js';

const KINDS = ['audio', 'video'];

/** Lowered video: half the resolution each way, at most this many bits per second. */
export const LOWERED_VIDEO = Object.freeze({ scale: 2, maxBitrate: 250000 });

/** @typedef {{video: 'full'|'lowered'|'off'}} SendPolicy */
// The wire's types are narrower than the DOM's: a local description set without arguments is
// an offer or an answer (never a pranswer or a rollback), and a candidate is sent only once its
// text is known.
/** @typedef {import('./signaling.js').Description} Description */
/** @typedef {import('./signaling.js').IceCandidate} IceCandidate */
/** @type {SendPolicy} */
export const FULL_SEND = Object.freeze({ video: 'full' });

/** A short random id for a peer connection. */
export function randomId() {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Our side of one pair. */
class Link {
  /** @param {import('./signaling.js').PeerInfo} info */
  constructor(info) {
    this.peerId = info.id;
    this.info = info;
    /** @type {RTCPeerConnection|null} */
    this.pc = null;
    this.pcId = '';
    /** @type {MediaStream|null} */
    this.stream = null;
    this.makingOffer = false;
    this.ignoreOffer = false;
    // Local tracks go on a polite connection once the offer has made its transceivers.
    this.needsLocalTracks = false;
    this.createdAt = 0;
    this.iceRestarts = 0;
    this.freshAttempts = 0;
    this.recoveryTimer = null;
    this.presence = info.state === 'reconnecting' ? 'reconnecting' : 'in_call';
    // Signaling for this pair is handled one message at a time.
    this.queue = Promise.resolve();
    // So are changes to our video encodings for it (see Mesh._editVideo).
    this.encodingQueue = Promise.resolve();
    /** @type {SendPolicy} */
    this.sendPolicy = FULL_SEND;
  }

  /** The side that does not make offers yields on a collision. */
  get polite() {
    return !this.info.offer;
  }

  get connected() {
    return this.pc !== null && this.pc.connectionState === 'connected';
  }
}

export class Mesh {
  /**
   * @param {{
   *   signaling: import('./signaling.js').SignalingClient,
   *   localTracks?: () => MediaStreamTrack[],
   *   RTCPeerConnectionImpl?: typeof RTCPeerConnection,
   *   MediaStreamImpl?: typeof MediaStream,
   *   timers?: {setTimeout: typeof setTimeout, clearTimeout: typeof clearTimeout},
   *   now?: () => number,
   *   newId?: () => string,
   *   disconnectedGraceMs?: number, iceRestartTimeoutMs?: number, answererPatienceMs?: number,
   * }} options
   */
  constructor({
    signaling, localTracks = () => [],
    RTCPeerConnectionImpl = globalThis.RTCPeerConnection, MediaStreamImpl = globalThis.MediaStream,
    timers = globalThis, now = () => Date.now(), newId = randomId,
    // "disconnected" often heals within a few seconds on its own; "failed" takes ~15 s.
    disconnectedGraceMs = 4000, iceRestartTimeoutMs = 6000, answererPatienceMs = 4000,
  }) {
    this.signaling = signaling;
    this.localTracks = localTracks;
    this.RTCPeerConnectionImpl = RTCPeerConnectionImpl;
    this.MediaStreamImpl = MediaStreamImpl;
    this.timers = timers;
    this.now = now;
    this.newId = newId;
    this.disconnectedGraceMs = disconnectedGraceMs;
    this.iceRestartTimeoutMs = iceRestartTimeoutMs;
    this.answererPatienceMs = answererPatienceMs;
    /** @type {RTCIceServer[]} */
    this.iceServers = [];
    /** @type {Map<string, Link>} */
    this.links = new Map();
    this._events = new Emitter('mesh');
    this._closed = false;
    this._unsubscribe = [
      signaling.on('welcome', (m) => this._onWelcome(m)),
      signaling.on('peer_joined', (m) => this._onPeerJoined(m.peer)),
      signaling.on('presence', (m) => this._onPresence(m)),
      signaling.on('sdp', (m) => this._serial(m.from, () => this._onSdp(m))),
      signaling.on('candidate', (m) => this._serial(m.from, () => this._onCandidate(m))),
      signaling.on('restart', (m) => this._onRestart(m)),
    ];
  }

  on(type, handler) {
    return this._events.on(type, handler);
  }

  _emit(type, payload) {
    this._events.emit(type, payload);
  }

  /** Every live connection, for stats and recovery: whether we offer on it, and since when (`now`). */
  connections() {
    const out = [];
    for (const link of this.links.values()) {
      if (link.pc) {
        out.push({
          peerId: link.peerId, pcId: link.pcId, pc: link.pc, info: link.info,
          offerer: !link.polite, createdAt: link.createdAt,
        });
      }
    }
    return out;
  }

  // ---- signaling events ------------------------------------------------------------------

  /** @param {import('./signaling.js').Welcome} welcome */
  _onWelcome(welcome) {
    this.iceServers = (welcome.ice_servers ?? []).map((s) => ({ ...s }));
    // "relay" when the server is relay-only: no one learns another's address.
    this.iceTransportPolicy = welcome.ice_transport_policy ?? 'all';
    const listed = new Set(welcome.peers.map((p) => p.id));
    for (const peerId of [...this.links.keys()]) {
      if (!listed.has(peerId)) this._remove(peerId);
    }
    for (const info of welcome.peers) {
      let link = this.links.get(info.id);
      if (link) {
        link.info = info;
        link.presence = info.state === 'reconnecting' ? 'reconnecting' : 'in_call';
      } else {
        link = new Link(info);
        this.links.set(info.id, link);
      }
      this._emit('peer', { peerId: info.id, info });
      if (link.pc && ['connected', 'connecting'].includes(link.pc.connectionState)
          && link.pc.signalingState === 'stable') {
        continue; // a resume: this pair never stopped
      }
      if (!link.polite) {
        this._fresh(link);
      } else {
        // We came back without a working connection: ask the offerer for a new one.
        if (welcome.resumed || link.pc) this.signaling.restart(info.id, link.pcId || null);
        // Either way, if no offer connects soon, ask (again).
        this._armAnswererRecovery(link);
      }
    }
  }

  /** @param {import('./signaling.js').PeerInfo} info */
  _onPeerJoined(info) {
    const old = this.links.get(info.id);
    if (old) this._closePc(old);
    const link = new Link(info);
    this.links.set(info.id, link);
    this._emit('peer', { peerId: info.id, info });
    if (!link.polite) this._fresh(link);
    else this._armAnswererRecovery(link);
  }

  /** @param {import('./signaling.js').PresenceChanged} message */
  _onPresence({ peer, state }) {
    const link = this.links.get(peer);
    this._emit('presence', { peerId: peer, state });
    if (!link) return;
    if (state === 'left') {
      this._remove(peer);
      return;
    }
    link.presence = state === 'back' ? 'in_call' : 'reconnecting';
    if (state === 'back' && !link.connected) {
      // Its side may have lost everything (a reload); our offers while it was away were dropped.
      if (!link.polite) this._fresh(link);
      else this._armAnswererRecovery(link);
    }
  }

  /** @param {import('./signaling.js').ServerRestart} message */
  _onRestart({ from, pc }) {
    const link = this.links.get(from);
    if (!link || link.polite) return;
    const young = link.pc && this.now() - link.createdAt < 2000 && link.pc.connectionState !== 'failed';
    if (young && pc !== link.pcId) return; // already making a fresh one
    this._fresh(link);
  }

  _serial(peerId, task) {
    const link = this.links.get(peerId);
    if (!link) {
      return task().catch((error) => console.warn('signaling for an unknown peer failed', error));
    }
    link.queue = link.queue.then(task).catch((error) => console.warn('negotiation step failed', error));
    return link.queue;
  }

  /** @param {import('./signaling.js').ServerSdp} message */
  async _onSdp({ from, pc: pcId, description }) {
    if (!description) return;
    let link = this.links.get(from);
    if (!link) {
      // An offer from someone we were not told about yet: treat them as a polite pair.
      link = new Link({ id: from, role: 'partner', name: '', state: 'in_call', offer: false });
      this.links.set(from, link);
      this._emit('peer', { peerId: from, info: link.info });
    }
    if (pcId !== link.pcId || !link.pc) {
      if (description.type !== 'offer') return; // an answer for a connection we replaced
      this._newPc(link, pcId);
      link.needsLocalTracks = true;
      if (link.polite) this._armAnswererRecovery(link);
    }
    const pc = link.pc;
    const collision = description.type === 'offer' && (link.makingOffer || pc.signalingState !== 'stable');
    link.ignoreOffer = !link.polite && collision;
    if (link.ignoreOffer) return;
    await pc.setRemoteDescription(description);
    if (link.pc !== pc) return;
    if (description.type === 'offer') {
      if (link.needsLocalTracks) {
        link.needsLocalTracks = false;
        this._addLocalTracks(pc, false);
      }
      await pc.setLocalDescription();
      if (link.pc !== pc) return;
      this.signaling.sdp(from, pcId, /** @type {Description} */ (pc.localDescription));
    }
  }

  /** @param {import('./signaling.js').ServerCandidate} message */
  async _onCandidate({ from, pc: pcId, candidate }) {
    const link = this.links.get(from);
    if (!link || !link.pc || pcId !== link.pcId || !candidate || !candidate.candidate) return;
    try {
      await link.pc.addIceCandidate(candidate);
    } catch (error) {
      if (!link.ignoreOffer) console.warn('could not add an ICE candidate', error);
    }
  }

  // ---- connections ---------------------------------------------------------------------

  _newPc(link, pcId) {
    this._closePc(link);
    const pc = new this.RTCPeerConnectionImpl({
      iceServers: this.iceServers, iceTransportPolicy: this.iceTransportPolicy ?? 'all',
    });
    link.pc = pc;
    link.pcId = pcId;
    link.createdAt = this.now();
    link.makingOffer = false;
    link.ignoreOffer = false;
    link.iceRestarts = 0;
    link.stream = new this.MediaStreamImpl();
    const peerId = link.peerId;

    pc.ontrack = ({ track }) => {
      if (link.pc !== pc) return;
      link.stream.addTrack(track);
      this._emit('stream', { peerId, stream: link.stream });
    };
    pc.onicecandidate = ({ candidate }) => {
      if (link.pc !== pc || !candidate || !candidate.candidate) return;
      this.signaling.candidate(peerId, pcId, /** @type {IceCandidate} */ (candidate.toJSON()));
    };
    pc.onnegotiationneeded = async () => {
      if (link.pc !== pc) return;
      try {
        link.makingOffer = true;
        await pc.setLocalDescription();
        if (link.pc === pc) this.signaling.sdp(peerId, pcId, /** @type {Description} */ (pc.localDescription));
      } catch (error) {
        console.warn('could not make an offer', error);
      } finally {
        link.makingOffer = false;
      }
    };
    pc.onconnectionstatechange = () => {
      if (link.pc === pc) this._onConnectionState(link);
    };
    this._emit('state', { peerId, state: pc.connectionState });
    return pc;
  }

  /** A new connection for the pair, made by its offerer (we are it). */
  _fresh(link) {
    this._clearRecovery(link);
    const pc = this._newPc(link, this.newId());
    this._addLocalTracks(pc, true);
    link.freshAttempts += 1;
    // If this one does not connect either, try again, waiting longer each time.
    const waitMs = Math.min(30000, 8000 * 2 ** Math.min(link.freshAttempts - 1, 2));
    link.recoveryTimer = this.timers.setTimeout(() => {
      link.recoveryTimer = null;
      if (link.pc === pc && !link.connected && link.presence === 'in_call') this._fresh(link);
    }, waitMs);
  }

  /**
   * Put our tracks on a connection. The offerer adds a transceiver per kind even without a
   * track (so it still receives that kind); the answerer reuses the offer's transceivers.
   */
  _addLocalTracks(pc, offering) {
    const tracks = this.localTracks();
    for (const kind of KINDS) {
      const track = tracks.find((t) => t.kind === kind && t.readyState === 'live');
      if (track) pc.addTrack(track);
      else if (offering) pc.addTransceiver(kind, { direction: 'recvonly' });
    }
  }

  _onConnectionState(link) {
    const pc = link.pc;
    const state = pc.connectionState;
    this._emit('state', { peerId: link.peerId, state });
    if (state === 'connected') {
      this._clearRecovery(link);
      link.freshAttempts = 0;
      link.iceRestarts = 0;
      // A new connection starts at full quality: give it the pair's policy.
      if (link.sendPolicy.video !== 'full') this._applySendPolicy(link);
    } else if (state === 'failed') {
      this._recover(link);
    } else if (state === 'disconnected') {
      this._clearRecovery(link);
      link.recoveryTimer = this.timers.setTimeout(() => {
        link.recoveryTimer = null;
        if (link.pc === pc && pc.connectionState === 'disconnected') this._recover(link);
      }, this.disconnectedGraceMs);
    }
  }

  _recover(link) {
    this._clearRecovery(link);
    if (link.polite) {
      this._armAnswererRecovery(link);
      return;
    }
    const pc = link.pc;
    if (link.iceRestarts === 0 && pc && pc.signalingState === 'stable') {
      // Browsers restart ICE in place within a second; aiortc cannot, so fall back below.
      link.iceRestarts += 1;
      pc.restartIce();
      link.recoveryTimer = this.timers.setTimeout(() => {
        link.recoveryTimer = null;
        if (link.pc === pc && !link.connected) this._fresh(link);
      }, this.iceRestartTimeoutMs);
    } else {
      this._fresh(link);
    }
  }

  /** The answerer's part of recovery: give the offerer time, then ask for a fresh connection. */
  _armAnswererRecovery(link, attempt = 0) {
    this._clearRecovery(link);
    const pc = link.pc;
    const waitMs = Math.min(30000, this.answererPatienceMs * 2 ** Math.min(attempt, 3));
    link.recoveryTimer = this.timers.setTimeout(() => {
      link.recoveryTimer = null;
      if (link.connected || link.presence !== 'in_call' || !this.links.has(link.peerId)) return;
      if (link.pc !== pc && link.pc && link.pc.connectionState !== 'failed') {
        this._armAnswererRecovery(link, 0); // the offerer already started over; watch the new one
        return;
      }
      this.signaling.restart(link.peerId, link.pcId || null);
      this._armAnswererRecovery(link, attempt + 1);
    }, waitMs);
  }

  _clearRecovery(link) {
    if (link.recoveryTimer !== null) this.timers.clearTimeout(link.recoveryTimer);
    link.recoveryTimer = null;
  }

  _closePc(link) {
    this._clearRecovery(link);
    const pc = link.pc;
    link.pc = null;
    if (!pc) return;
    pc.ontrack = pc.onicecandidate = pc.onnegotiationneeded = pc.onconnectionstatechange = null;
    pc.close();
  }

  _remove(peerId) {
    const link = this.links.get(peerId);
    if (!link) return;
    this._closePc(link);
    this.links.delete(peerId);
    this._emit('removed', { peerId });
  }

  // ---- local media ---------------------------------------------------------------------

  /**
   * Send another track of a kind (a different camera or microphone), or none (null).
   * A connection that only received this kind starts sending it after renegotiating.
   */
  async setTrack(kind, track) {
    const jobs = [];
    for (const link of this.links.values()) {
      const pc = link.pc;
      if (!pc || pc.signalingState === 'closed') continue;
      const transceiver = pc.getTransceivers().find(
        (t) => t.receiver.track && t.receiver.track.kind === kind && t.currentDirection !== 'stopped',
      );
      if (!transceiver) continue;
      jobs.push(transceiver.sender.replaceTrack(track).catch((e) => console.warn('replaceTrack failed', e)));
      if (track && (transceiver.direction === 'recvonly' || transceiver.direction === 'inactive')) {
        transceiver.direction = 'sendrecv';
      }
    }
    await Promise.all(jobs);
  }

  // ---- recovery and quality steps another module may ask for (the fallback flow) ------

  /** Restart ICE on a pair now: the offerer restarts in place, the answerer asks the offerer. */
  restartIce(peerId) {
    const link = this.links.get(peerId);
    if (!link) return false;
    if (link.polite) return this.signaling.restart(peerId, link.pcId || null);
    if (!link.pc || link.pc.signalingState !== 'stable') return false;
    link.pc.restartIce();
    return true;
  }

  /** Replace a pair's connection with a new one (a new pc id). */
  freshConnection(peerId) {
    const link = this.links.get(peerId);
    if (!link) return false;
    if (link.polite) return this.signaling.restart(peerId, link.pcId || null);
    this._fresh(link);
    return true;
  }

  /**
   * The video we send to one peer, as the fallback flow decides (docs/fallback.md): full,
   * lowered (less resolution and bitrate, same frame rate) or off. The call keeps its
   * connections and tracks; only the encoder changes, so nothing is renegotiated. Sound always
   * flows: it is what the quality monitor hears a link by. The policy stays with the pair and
   * is applied again to every new connection the pair gets.
   * @param {string} peerId @param {SendPolicy} policy
   */
  async setSendPolicy(peerId, policy) {
    const link = this.links.get(peerId);
    if (!link) return;
    link.sendPolicy = { ...policy };
    await this._applySendPolicy(link);
  }

  /** Our video to a link as its policy says now (a later policy wins over an earlier one). */
  _applySendPolicy(link) {
    return this._editVideo(link, (encoding) => {
      const { video } = link.sendPolicy;
      encoding.active = video !== 'off';
      encoding.scaleResolutionDownBy = video === 'lowered' ? LOWERED_VIDEO.scale : 1;
      if (video === 'lowered') encoding.maxBitrate = LOWERED_VIDEO.maxBitrate;
      else delete encoding.maxBitrate;
    });
  }

  /**
   * Change the encodings of our video senders on a link's current connection. Changes run one
   * at a time: a change read while another is in flight is refused as stale, and a pause and
   * resume split by a policy change would undo the policy. Each reads the parameters afresh;
   * a refusal is tried once more from a new read (a busy browser can be mid-negotiation).
   * @param {Link} link @param {(encoding: RTCRtpEncodingParameters) => void} edit
   */
  _editVideo(link, edit) {
    const run = async () => {
      const pc = link.pc;
      if (!pc || pc.signalingState === 'closed') return;
      const senders = pc.getTransceivers()
        .filter((t) => t.receiver.track?.kind === 'video' && t.currentDirection !== 'stopped')
        .map((t) => t.sender);
      await Promise.all(senders.map(async (sender) => {
        for (let attempt = 1; ; attempt += 1) {
          try {
            const params = sender.getParameters();
            if (!params.encodings || params.encodings.length === 0) return;
            for (const encoding of params.encodings) edit(encoding);
            await sender.setParameters(params);
            return;
          } catch (error) {
            // A connection replaced meanwhile gets its policy when it connects.
            if (link.pc !== pc || pc.signalingState === 'closed') return;
            if (attempt >= 2) {
              console.warn('could not change the video encoding', error);
              return;
            }
          }
        }
      }));
    };
    link.encodingQueue = link.encodingQueue.then(run)
      .catch((error) => console.warn('could not change the video encoding', error));
    return link.encodingQueue;
  }

  /**
   * Start the video to one peer again from a key frame. After an outage the receiver can show
   * nothing until one arrives, and its request for one may have been lost on the way back
   * (browsers repeat it only after about 3 s). Pausing and resuming the encoding makes the
   * encoder start over with a key frame at once. It resumes as the policy is by then.
   */
  async refreshVideo(peerId) {
    const link = this.links.get(peerId);
    // A new connection starts with a key frame anyway.
    if (!link?.connected || link.sendPolicy.video === 'off' || this.now() - link.createdAt < 2000) return;
    const paused = this._editVideo(link, (encoding) => { encoding.active = false; });
    const resumed = this._applySendPolicy(link);
    await Promise.all([paused, resumed]);
  }

  /** Stop everything (leaving the call). */
  close() {
    if (this._closed) return;
    this._closed = true;
    for (const unsubscribe of this._unsubscribe) unsubscribe();
    for (const peerId of [...this.links.keys()]) this._remove(peerId);
  }
}
