// The room page, for partners and the therapist alike: the check, the waiting room, the
// call and the goodbye. It wires the DOM-free parts (signaling, mesh, stats, quality) to
// the views (check.js, call.js). therapist.js and partner.js add what differs.
//
// Steps: check --Join--> (partner: waiting --admitted-->) call --leave/end/removed--> ended
// A reload within the grace window skips the check and rejoins at once; the server resumes
// the same seat, so an admitted partner does not wait again.

import { SignalingClient, socketUrl, tokenFromPath } from './signaling.js';
import { Mesh, LOWERED_VIDEO } from './peers.js';
import { PageLag, StatsSampler } from './stats.js';
import { QualityBoard, peerLevels } from './quality.js';
import { LocalMedia, explainMediaError } from './devices.js';
import { CheckView } from './check.js';
import { CallView } from './call.js';
import { FallbackController } from './fallback.js';
import { $, maybe, announce, confirmDialog, countdownText, localizeTimes } from './ui.js';

const REJOIN_KEY = 'telehealth:rejoin';
// docs/protocol.md: every 250-500 ms. A cut is declared 1 s after packets stop, so the
// report interval is part of the 2-second detection promise.
const STATS_EVERY_MS = 250;

const STEP_TITLES = {
  check: 'Get ready',
  waiting: 'Waiting room',
  call: 'In session',
  ended: 'Session',
};

/** What the goodbye page says, per reason the session ended for this page. */
const ENDINGS = {
  left: ['You left the session', 'You can join again with the same link while the session is running.', 'Join again'],
  room_ended: ['The session has ended', 'Thank you. You can close this page now.', null],
  removed: ['You have been removed from the session', 'If you think this is a mistake, please contact your therapist.', null],
  replaced: ['This session is open somewhere else', 'You opened your link on another device or tab, and the session continues there.', 'Use this device instead'],
  bad_link: ['This link does not work', 'Please check you copied the whole link, or ask your therapist for a new one.', null],
  link_expired: ['This link has expired', 'Please ask your therapist for a new link.', null],
  link_revoked: ['This link no longer works', 'Please ask your therapist for a new link.', null],
  too_early: ['It\'s not time for your session yet', 'Please come back shortly before it starts: reload this page then.', null],
  session_over: ['This session has ended', 'If you missed it or need another time, please contact your therapist to arrange a new session.', null],
  room_full: ['This session is full', 'Everyone the session expects is already here. If that seems wrong, contact your therapist.', 'Try again'],
  room_locked: ['The session is locked', 'Your therapist has locked the session. Please contact them if you need to join.', 'Try again'],
  shutdown: ['The server is restarting', 'Please wait a moment and join again.', 'Join again'],
};

export class RoomPage {
  /**
   * @param {{adminActions?: import('./call.js').AdminActions, onWelcome?: Function, onEnded?: Function}} hooks
   *   role-specific additions
   */
  constructor({ adminActions = null, onWelcome = null, onEnded = null } = {}) {
    const main = $('main');
    this.role = main.dataset.role;
    this.graceMs = Number(main.dataset.grace || '45') * 1000;
    this.token = tokenFromPath(location.pathname);
    this.onWelcome = onWelcome;
    this.onEnded = onEnded;
    this.media = new LocalMedia();
    this.check = new CheckView(this.media, { netcheckUrl: `${location.pathname.replace(/\/$/, '')}/netcheck` });
    this.call = new CallView({ adminActions });
    this.signaling = new SignalingClient({ url: socketUrl(location), token: this.token, probeUrl: '/healthz' });
    this.mesh = new Mesh({ signaling: this.signaling, localTracks: () => this.media.tracks() });
    this.sampler = new StatsSampler();
    this.lag = new PageLag();
    this.board = new QualityBoard();
    this.fallback = new FallbackController({
      signaling: this.signaling, mesh: this.mesh, call: this.call, name: (id) => this._name(id),
      rejoinPage: () => {
        this._markSeated();
        location.reload();
      },
    });
    /** @type {Map<string, {audio: boolean, video: boolean}>} */
    this.peerMedia = new Map();
    /** @type {Map<string, string>} */
    this.names = new Map();
    this.step = 'check';
    this.statsTimer = null;
    this.sampling = false;
    this.joining = false;
    /** Whose own network the server's monitor blames for weak links, if it can tell. */
    this.serverWeak = null;
    /** Whose device the banners speak of now, and as what. */
    this._devicesShown = new Set();
    this._devicesShownAs = new Map();
    this._wire();
  }

  start() {
    localizeTimes();
    this._countdown();
    $('join').addEventListener('click', () => this.join());
    if (this._returning()) {
      this._rejoin();
    } else {
      this.check.start();
    }
  }

  /** "Your session starts at 3:00 PM, in 22 minutes", kept current while the check is open. */
  _countdown() {
    const node = maybe('session-countdown');
    const startsMs = Number($('main').dataset.startsMs);
    if (!node || !startsMs) return;
    const show = () => {
      node.textContent = countdownText(startsMs);
      node.hidden = false;
    };
    show();
    setInterval(show, 15000);
  }

  // ---- steps ---------------------------------------------------------------------------

  showStep(step) {
    if (this.step === step) return;
    this.step = step;
    for (const name of ['check', 'waiting', 'call', 'ended']) {
      const node = maybe(`${name}-step`);
      if (node) node.hidden = name !== step;
    }
    document.body.classList.toggle('in-call', step === 'call');
    this._showSelfIn(step);
    document.title = `${STEP_TITLES[step]} · Telehealth`;
    const heading = document.querySelector(`#${step}-step h1[tabindex]`);
    if (heading instanceof HTMLElement) heading.focus();
  }

  /**
   * Our own camera shows only in the step on screen. A hidden <video> still holds the camera's
   * latest frames, and with a step's worth of hidden ones the camera's frame pool ran dry as
   * the first connections started: every picture of that camera froze for 2-3 s (Chromium
   * logs "Frame dropped with reason code 15").
   */
  _showSelfIn(step) {
    const track = step === 'ended' ? null : this.media.video;
    this.check.setShown(step === 'check');
    const waiting = /** @type {HTMLVideoElement|null} */ (maybe('waiting-preview'));
    // These videos only ever show a MediaStream (this page sets nothing else).
    const shown = (video) => /** @type {MediaStream|null} */ (video.srcObject)?.getVideoTracks()[0];
    if (waiting && step !== 'waiting') waiting.srcObject = null;
    else if (waiting && shown(waiting) !== track) {
      waiting.srcObject = track ? new MediaStream([track]) : null;
      waiting.play().catch(() => {});
    }
    if (step !== 'call') this.call.setSelf(null);
    else if (shown(this.call.selfVideo) !== track) this.call.setSelf(track);
  }

  join() {
    if (this.joining) return;
    this.joining = true;
    /** @type {HTMLButtonElement} */ ($('join')).disabled = true;
    this.check.stopNetwork();
    // Connect now, even if the camera and microphone are still starting: the others' video
    // and sound arrive at once, and ours join every connection the moment they are ready
    // (the media 'change' handler in _wire; one more negotiation, while the call runs).
    $('join-status').textContent = 'Connecting…';
    this.signaling.connect();
    this._devicesReady(this.check.opening);
  }

  _rejoin() {
    $('join-status').textContent = 'Reconnecting you to your session…';
    this.joining = true;
    /** @type {HTMLButtonElement} */ ($('join')).disabled = true;
    // Coming back into a running session: no network check, straight in, devices alongside.
    /** @type {HTMLElement} */ (document.querySelector('#check-step .network')).hidden = true;
    this._devicesReady(this.check.openDevices());
    this.signaling.connect();
  }

  /**
   * Once devices that were still starting at the join are open: the controls and the others
   * learn what we send, and a failure is explained in the call (the check is out of sight).
   * @param {Promise<object>|null} opening
   */
  async _devicesReady(opening) {
    const problems = await opening;
    if (!problems || this.step === 'ended') return;
    if (this.step === 'call') {
      this._syncControls();
      this.signaling.media(!this.media.micMuted, this._videoOn());
    }
    if (Object.keys(problems).length === 0) return;
    const kind = problems.audio ? 'audio' : 'video';
    const why = explainMediaError(problems[kind], kind);
    this.call.banner('devices', `${why.title}. ${why.steps[0]}`, 'bad');
    this.call.clearBanner('devices', 10000);
  }

  _returning() {
    try {
      const mark = JSON.parse(sessionStorage.getItem(REJOIN_KEY) || 'null');
      return Boolean(mark && mark.path === location.pathname && Date.now() - mark.at < this.graceMs);
    } catch (error) {
      return false;
    }
  }

  _markSeated() {
    try {
      sessionStorage.setItem(REJOIN_KEY, JSON.stringify({ path: location.pathname, at: Date.now() }));
    } catch (error) {
      // Without storage a reload just shows the check again.
    }
  }

  _forgetSeat() {
    try {
      sessionStorage.removeItem(REJOIN_KEY);
    } catch (error) {
      // Nothing to forget.
    }
  }

  // ---- wiring --------------------------------------------------------------------------

  _wire() {
    const sig = this.signaling;
    sig.on('waiting', () => this._enterWaiting());
    sig.on('welcome', (m) => this._enterCall(m));
    sig.on('peer_media', (m) => {
      this.peerMedia.set(m.peer, { audio: m.audio, video: m.video });
      this.call.setPeerMedia(m.peer, m);
    });
    sig.on('mute_request', (m) => this._mutedByTherapist(m.kind));
    sig.on('connection', (c) => this._connectionChanged(c));
    sig.on('closed', (detail) => this._ended(detail.reason));

    this.mesh.on('peer', ({ peerId, info }) => {
      if (info.name) this.names.set(peerId, info.name);
      this.call.addPeer(peerId, this.names.get(peerId));
      if (info.state === 'reconnecting') this.call.banner(`presence-${peerId}`, `${this._name(peerId)} is reconnecting…`);
    });
    this.mesh.on('stream', ({ peerId, stream }) => this.call.setStream(peerId, stream));
    this.fallback.onChange(() => this._qualityBanner());
    this.mesh.on('state', ({ peerId, state }) => this._linkState(peerId, state));
    this.mesh.on('presence', ({ peerId, state }) => this._presence(peerId, state));
    this.mesh.on('removed', ({ peerId }) => {
      this.call.removePeer(peerId);
      this.board.forget(peerId);
      this.call.clearBanner(`link-${peerId}`);
      this.call.clearBanner(`device-${peerId}`);
      this._devicesShown.delete(peerId);
      this._devicesShownAs.delete(peerId);
      this._qualityBanner();
    });
    // The indicator follows the board, whatever feeds it: this page's stats (in _sendStats)
    // and the server monitor's `quality` messages, which win while they are fresh.
    sig.on('quality', (m) => {
      if (!sig.me) return;
      this.serverWeak = m.weak ?? null;
      for (const [peerId, level] of peerLevels(m, sig.me.id)) this.board.fromServer(peerId, level);
      this._devices(m.devices ?? {});
      this._othersLink(m);
      this._qualityBanner();
    });
    this.board.on('change', ({ peerId, level }) => {
      this.call.setQuality(peerId, level);
      this._qualityBanner();
    });

    this.media.on('change', ({ kind, track }) => {
      this.mesh.setTrack(kind, track);
      if (kind === 'video') this._showSelfIn(this.step);
    });

    $('toggle-mic').addEventListener('click', () => this.setMicMuted(!this.media.micMuted));
    $('toggle-camera').addEventListener('click', () => this.setCameraOff(!this.media.cameraOff));
    $('open-settings').addEventListener('click', () => this._openSettings());
    $('settings-close').addEventListener('click', () => /** @type {HTMLDialogElement} */ ($('settings-dialog')).close());
    $('leave').addEventListener('click', () => this.leave());
    maybe('waiting-leave')?.addEventListener('click', () => this.leave(false));
    $('rejoin').addEventListener('click', () => location.reload());
    $('speaker-select').addEventListener('change', (e) => this.call.setSpeaker(/** @type {HTMLSelectElement} */ (e.target).value));

    window.addEventListener('online', () => sig.reconnectNow());
    window.addEventListener('pagehide', () => {
      if (this.step !== 'call' && this.step !== 'waiting') return;
      this._markSeated();
      // Closed or navigated away: the others see "left" at once. A reload is back within
      // moments with the same link, and the server resumes it without telling anyone.
      sig.depart();
    });
    // Back from the browser's page cache, the socket is gone: come back in as a reload does.
    window.addEventListener('pageshow', (event) => {
      if (event.persisted && (this.step === 'call' || this.step === 'waiting')) location.reload();
    });
  }

  _name(peerId) {
    return this.names.get(peerId) || 'Someone';
  }

  _enterWaiting() {
    this._markSeated();
    this.call.clearBanner('self');
    $('connection-pill').hidden = true;
    if (this.step !== 'waiting') {
      this.showStep('waiting');
      announce('You are in the waiting room. Your therapist will let you in.');
    }
  }

  /** @param {import('./signaling.js').Welcome} welcome */
  _enterCall(welcome) {
    this._markSeated();
    this.call.clearBanner('self');
    $('connection-pill').hidden = true;
    const entering = this.step !== 'call';
    if (entering) {
      this.check.moveDevicesTo($('settings-body'));
      this.call.setSpeaker(this.media.speaker);
      this._syncControls();
      this.showStep('call');
      announce(welcome.peers.length
        ? `You are in the session with ${welcome.peers.map((p) => p.name).join(' and ')}.`
        : 'You are in the session. The others will appear when they join.');
    }
    this.signaling.media(!this.media.micMuted, this._videoOn());
    this.onWelcome?.(welcome);
    if (this.statsTimer === null) {
      this.lag.start();
      this.statsTimer = setInterval(() => this._sendStats(), STATS_EVERY_MS);
    }
  }

  /**
   * One banner for weak links: when every link is weak, the problem is most likely ours.
   * People the fallback flow is already speaking about (dropped, on the phone, audio only)
   * are left to its words.
   */
  _qualityBanner() {
    const peers = [...this.mesh.links.keys()].filter((id) => !this.fallback.speaksFor(id));
    const weak = peers.filter((id) => ['poor', 'lost'].includes(this.board.level(id)));
    const mine = this.serverWeak === this.signaling.me?.id;
    if (weak.length === 0 || this.fallback.cutOff) {
      this.call.clearBanner('quality');
    } else if (mine || (!this.serverWeak && weak.length === peers.length && peers.length > 1)) {
      this.call.banner('quality', 'Your connection is weak, so video may freeze. Stopping your video can keep the sound clear.');
    } else if (this.serverWeak && this.fallback.speaksFor(this.serverWeak)) {
      this.call.clearBanner('quality');
    } else if (this.serverWeak && peers.includes(this.serverWeak)) {
      this.call.banner('quality', `${this._name(this.serverWeak)}'s connection is weak. Their video may freeze.`);
    } else {
      const names = weak.map((id) => this._name(id)).join(' and ');
      this.call.banner('quality', `The connection to ${names} is weak. Their video may freeze.`);
    }
  }

  /**
   * Whose own device slows the call (docs/fallback.md, devices): on their tile and in a
   * banner, in words that never call it a weak connection.
   * @param {Record<string, 'busy'|'asleep'>} devices
   */
  _devices(devices) {
    const me = this.signaling.me?.id;
    const people = new Set([...this.mesh.links.keys(), ...Object.keys(devices), ...this._devicesShown]);
    for (const id of people) {
      const device = devices[id] ?? null;
      if (id !== me) this.call.setDevice(id, device);
      const key = `device-${id}`;
      if (device === (this._devicesShownAs.get(id) ?? null)) continue;
      this._devicesShownAs.set(id, device);
      if (!device) {
        this.call.clearBanner(key);
        this._devicesShown.delete(id);
        continue;
      }
      this._devicesShown.add(id);
      if (id === me) {
        // A page that is asleep cannot read this; a busy one can.
        if (device === 'busy') {
          this.call.banner(key, 'Your computer is busy, so video may be slow. Closing other programs or tabs can help.', 'info');
        }
      } else if (device === 'busy') {
        this.call.banner(key, `${this._name(id)}'s computer is busy, so their video may be slow.`, 'info');
      } else {
        this.call.banner(key, `${this._name(id)}'s phone or computer may have locked its screen or paused this page.`, 'info');
      }
    }
  }

  /**
   * The link between two others (the partners, seen by the therapist): when only it is bad,
   * nobody's own network is, and they may not notice. docs/fallback.md, the partners' own link.
   * @param {{links?: Array<{a: string, b: string, level: string}>, people?: Record<string, string>}} m
   */
  _othersLink(m) {
    const me = this.signaling.me?.id;
    if (this.role !== 'therapist' || !me) return;
    const bad = (m.links ?? []).find((l) => l.a !== me && l.b !== me && ['fair', 'poor', 'lost'].includes(l.level)
      && m.people?.[l.a] === 'good' && m.people?.[l.b] === 'good');
    if (!bad) {
      this.call.clearBanner('others-link');
      return;
    }
    this.call.banner('others-link', `${this._name(bad.a)} and ${this._name(bad.b)} cannot see each other well. Their connection to each other is weak.`);
  }

  _presence(peerId, state) {
    const name = this._name(peerId);
    const key = `presence-${peerId}`;
    if (this.fallback.speaksFor(peerId) && state !== 'left') return;
    if (state === 'reconnecting') {
      this.call.banner(key, `${name} is reconnecting…`);
    } else if (state === 'back') {
      this.call.banner(key, `${name} is back.`, 'info');
      this.call.clearBanner(key, 4000);
    } else if (state === 'left') {
      this.call.banner(key, `${name} has left the session.`, 'info');
      this.call.clearBanner(key, 8000);
    }
  }

  _linkState(peerId, state) {
    this.call.setConnection(peerId, state);
    const key = `link-${peerId}`;
    if (this.fallback.speaksFor(peerId) || this.fallback.cutOff) {
      this.call.clearBanner(key);
    } else if (state === 'disconnected' || state === 'failed') {
      this.call.banner(key, `The connection to ${this._name(peerId)} was interrupted. Reconnecting…`);
    } else if (state === 'connected') {
      this.call.clearBanner(key);
    }
  }

  _connectionChanged({ state }) {
    if (state === 'reconnecting') this.board.serverGone();
    const pill = $('connection-pill');
    if (state === 'reconnecting' && this.signaling.seated) {
      pill.textContent = 'Reconnecting…';
      pill.hidden = false;
      // Calm words: the call itself goes on peer to peer while the service is away.
      if (this.step === 'call' && !this.fallback.cutOff) {
        this.call.banner('self', 'Reconnecting to the service…', 'info');
      }
    }
  }

  _mutedByTherapist(kind) {
    if (kind === 'audio') {
      this.setMicMuted(true);
      this.call.banner('muted', 'Your therapist muted your microphone. Press Unmute when you want to speak.', 'info');
      this.call.clearBanner('muted', 8000);
    } else {
      this.setCameraOff(true);
      this.call.banner('muted', 'Your therapist turned off your video. Press Start video to turn it back on.', 'info');
      this.call.clearBanner('muted', 8000);
    }
  }

  // ---- controls ------------------------------------------------------------------------

  setMicMuted(muted) {
    this.media.setMicMuted(muted);
    this._syncControls();
    this.signaling.media(!muted, this._videoOn());
    announce(muted ? 'Your microphone is off.' : 'Your microphone is on.');
  }

  async setCameraOff(off) {
    try {
      await this.media.setCameraOff(off);
      announce(off ? 'Your camera is off.' : 'Your camera is on.');
    } catch (error) {
      const why = explainMediaError(error, 'video');
      this.call.banner('camera', `${why.title}. ${why.steps[0]}`, 'bad');
      this.call.clearBanner('camera', 10000);
    }
    this._syncControls();
    this.signaling.media(!this.media.micMuted, this._videoOn());
  }

  /** Whether we send video, or will in a moment (the camera is still starting). */
  _videoOn() {
    return Boolean(this.media.video) || (this.media.starting && !this.media.cameraOff);
  }

  _syncControls() {
    const mic = $('toggle-mic');
    mic.textContent = this.media.micMuted ? 'Unmute' : 'Mute';
    mic.classList.toggle('off', this.media.micMuted);
    const camera = $('toggle-camera');
    const off = !this._videoOn();
    camera.textContent = off ? 'Start video' : 'Stop video';
    camera.classList.toggle('off', off);
    this.call.setSelfMuted(this.media.micMuted);
  }

  _openSettings() {
    const dialog = /** @type {HTMLDialogElement} */ ($('settings-dialog'));
    this.check.fillPickers();
    dialog.showModal();
  }

  async leave(ask = true) {
    if (ask) {
      const sure = await confirmDialog({
        title: 'Leave the session?',
        text: 'You can join again with the same link while the session is running.',
        confirm: 'Leave',
        cancel: 'Stay',
      });
      if (!sure) return;
    }
    if (!this.signaling.leave()) this._ended('left');
  }

  // ---- stats ---------------------------------------------------------------------------

  async _sendStats() {
    // A slow getStats must not let rounds pile up; the next tick samples again.
    if (this.sampling) return;
    this.sampling = true;
    try {
      await this._sampleLinks();
    } finally {
      this.sampling = false;
    }
  }

  async _sampleLinks() {
    const connections = this.mesh.connections().filter((c) => c.pc.connectionState !== 'closed');
    const lagMs = this.lag.take();
    const samples = await Promise.all(connections.map(async (c) => {
      const video = (this.peerMedia.get(c.peerId)?.video ?? true) && this.fallback.videoExpected(c.peerId);
      // The cap our flow step put on our video to them: a lowered link is judged against it.
      const sendCap = this.mesh.links.get(c.peerId)?.sendPolicy?.video === 'lowered' ? LOWERED_VIDEO.maxBitrate : null;
      try {
        return await this.sampler.sample(c.pc, { peer: c.peerId, pcId: c.pcId, video, sendCap, lagMs });
      } catch (error) {
        return null; // a connection closed while sampling: the next round will not include it
      }
    }));
    const links = [];
    connections.forEach((c, i) => {
      const stats = samples[i];
      if (!stats) return;
      links.push(stats);
      this.fallback.observe(c.peerId, c.pcId, stats.packets_in);
    });
    // Every link observed first: whether all went quiet decides what one silence means.
    const now = Date.now();
    connections.forEach((c, i) => {
      const stats = samples[i];
      if (!stats) return;
      const onDevice = Boolean(this._devicesShownAs.get(c.peerId));
      this.board.fromStats(c.peerId, stats, { lost: this.fallback.health.shownLost(c.peerId, now, { onDevice }) });
    });
    this.sampler.keepOnly(connections.map((c) => c.pcId));
    this.fallback.health.keepOnly(connections.map((c) => c.peerId));
    if (links.length) this.signaling.stats(links);
    this.fallback.afterStats();
    if (this.step === 'call') this._markSeated();
  }

  // ---- the end -------------------------------------------------------------------------

  _ended(reason) {
    if (this.step === 'ended') return;
    if (this.statsTimer !== null) clearInterval(this.statsTimer);
    this.statsTimer = null;
    this.lag.stop();
    this._forgetSeat();
    this.mesh.close();
    this.check.stop();
    this.media.stop();
    this.call.clear();
    $('connection-pill').hidden = true;
    const [title, text, again] = ENDINGS[reason] ?? [
      'You are no longer connected', 'Something went wrong. Please open your link again.', 'Join again',
    ];
    $('ended-title').textContent = title;
    $('ended-text').textContent = text;
    const rejoin = $('rejoin');
    rejoin.hidden = !again;
    if (again) rejoin.textContent = again;
    $('ended-step').dataset.reason = reason;
    this.showStep('ended');
    this.onEnded?.(reason);
  }
}
