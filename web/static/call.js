// The call view: a tile per other participant, your own picture, the controls, banners in
// plain words, and a connection-quality indicator per link. It only draws; session.js
// decides what happens.

import { $, el, telHref } from './ui.js';
import { LEVEL_WORDS } from './quality.js';

/** One remote participant's tile. */
class Tile {
  constructor(peerId, name, { adminActions }) {
    this.peerId = peerId;
    this.name = name || 'Participant';
    this.video = el('video', { autoplay: true, playsinline: true, 'aria-label': `Video of ${this.name}` });
    this.video.autoplay = true;
    this.video.playsInline = true;
    this.placeholderText = el('p', { className: 'tile-placeholder-text', text: `Connecting to ${this.name}…` });
    /** Buttons that belong to what the picture's place says (the therapist's "Switch to phone"). */
    this.statusActions = el('div', { className: 'tile-status-actions' });
    this.placeholder = el('div', { className: 'tile-placeholder' }, this.placeholderText, this.statusActions);
    this.nameNode = el('span', { className: 'tile-name', text: this.name });
    this.mutedBadge = el('span', { className: 'badge', text: 'Muted', hidden: true });
    this.qualityText = el('span', { className: 'quality-text', text: LEVEL_WORDS.unknown });
    this.quality = el('span', { className: 'quality', 'data-level': 'unknown' },
      el('span', { className: 'bars', 'aria-hidden': 'true' }, el('span'), el('span'), el('span')),
      this.qualityText);
    /** What this person's own device is doing (busy, asleep), apart from the connection. */
    this.deviceText = el('span', { className: 'device-text', hidden: true });
    this.caption = el('figcaption', {}, this.nameNode, this.mutedBadge, this.quality, this.deviceText);
    this.root = el('figure', { className: 'tile', 'data-peer': peerId }, this.video, this.placeholder, this.caption);
    if (adminActions) this.root.append(adminActions(this, this.statusActions));
    this.hasVideo = false;
    this.videoOn = true;
    this.connection = 'new';
    this.playbackPaused = false;
    /** The fallback flow's word on this person, if any. @type {TileStatus|null} */
    this.status = null;
  }

  rename(name) {
    if (!name || name === this.name) return;
    this.name = name;
    this.nameNode.textContent = name;
    this.video.setAttribute('aria-label', `Video of ${name}`);
    this._placeholder();
  }

  _placeholder() {
    let text = '';
    if (this.status) text = STATUS_WORDS[this.status](this.name);
    else if (!this.videoOn) text = `${this.name} has turned their camera off`;
    else if (this.connection !== 'connected' && !this.hasVideo) text = `Connecting to ${this.name}…`;
    else if (!this.hasVideo) text = `Waiting for ${this.name}'s video…`;
    this.placeholderText.textContent = text;
    this.placeholder.hidden = text === '';
    if (this.status) this.root.dataset.status = this.status;
    else delete this.root.dataset.status;
  }
}

/** @typedef {'reconnecting'|'audio_only'|'phone'|'hold'} TileStatus */
/** The therapist's controls on a partner's tile. @typedef {(tile: Tile, statusActions: HTMLElement) => HTMLElement} AdminActions */

/** What a tile says over the picture while the fallback flow has taken a step for its person. */
const STATUS_WORDS = Object.freeze({
  reconnecting: (name) => `Reconnecting to ${name}…`,
  audio_only: (name) => `${name}: audio only. Video is paused to keep the sound clear.`,
  phone: (name) => `${name} is on the phone`,
  hold: (name) => `Session paused: ${name} is waiting`,
});

/** A person's device on their tile, next to the connection's words. */
const DEVICE_WORDS = Object.freeze({
  busy: 'Computer busy',
  asleep: 'Screen may be locked',
});

export class CallView {
  /**
   * @param {{adminActions?: AdminActions}} options
   */
  constructor({ adminActions = null } = {}) {
    this.tilesNode = $('tiles');
    this.empty = $('tiles-empty');
    this.banners = $('banners');
    this.alerts = $('alerts');
    this.selfVideo = /** @type {HTMLVideoElement} */ ($('self-video'));
    this.soundButton = $('sound-on');
    this.adminActions = adminActions;
    /** @type {Map<string, Tile>} */
    this.tiles = new Map();
    this.speakerId = '';
    this.soundBlocked = false;
    this.soundButton.addEventListener('click', () => this.unblockSound());
  }

  tile(peerId) {
    return this.tiles.get(peerId) ?? null;
  }

  addPeer(peerId, name) {
    let tile = this.tiles.get(peerId);
    if (tile) {
      tile.rename(name);
      return tile;
    }
    tile = new Tile(peerId, name, { adminActions: this.adminActions });
    tile.video.addEventListener('loadeddata', () => { tile.hasVideo = true; tile._placeholder(); });
    this.tiles.set(peerId, tile);
    this.tilesNode.append(tile.root);
    this._layout();
    return tile;
  }

  removePeer(peerId) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    tile.video.srcObject = null;
    tile.root.remove();
    this.tiles.delete(peerId);
    this._layout();
  }

  _layout() {
    this.tilesNode.dataset.count = String(this.tiles.size);
    this.empty.hidden = this.tiles.size > 0;
  }

  /** Show a peer's media; if the browser refuses to play sound without a click, say so. */
  setStream(peerId, stream) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    if (tile.video.srcObject !== stream) {
      tile.video.srcObject = stream;
      tile.hasVideo = false;
      this._applySpeaker(tile.video);
    }
    tile.video.muted = this.soundBlocked || Boolean(tile.playbackPaused);
    tile.video.play().catch((error) => {
      if (error.name !== 'NotAllowedError') return;
      // Autoplay rules: play silently now, and offer a button to turn the sound on.
      this.soundBlocked = true;
      this.soundButton.hidden = false;
      tile.video.muted = true;
      tile.video.play().catch(() => {});
    });
    tile._placeholder();
  }

  unblockSound() {
    this.soundBlocked = false;
    this.soundButton.hidden = true;
    for (const tile of this.tiles.values()) {
      tile.video.muted = Boolean(tile.playbackPaused);
      tile.video.play().catch(() => {});
    }
  }

  setConnection(peerId, state) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    tile.connection = state;
    tile._placeholder();
  }

  /** The fallback flow's step for a person, or null when they are simply in the call. */
  setStatus(peerId, status) {
    const tile = this.tiles.get(peerId);
    if (!tile || tile.status === status) return;
    tile.status = status;
    tile._placeholder();
  }

  /** Stop playing a person's sound here (a hold, the phone step), or play it again. */
  setPlaybackPaused(peerId, paused) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    tile.playbackPaused = paused;
    tile.video.muted = paused || this.soundBlocked;
  }

  setPeerMedia(peerId, { audio, video }) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    tile.mutedBadge.hidden = audio;
    tile.videoOn = video;
    tile._placeholder();
  }

  /** The quality indicator: the only place that draws it. @param {import('./quality.js').Level|null} level */
  setQuality(peerId, level) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    tile.quality.dataset.level = level ?? 'unknown';
    tile.qualityText.textContent = LEVEL_WORDS[level ?? 'unknown'];
  }

  /**
   * The person's own device, as the server's monitor sees it (docs/fallback.md, devices):
   * 'busy', 'asleep' or null. Never drawn as the connection: the bars stay the network's.
   * @param {'busy'|'asleep'|null} device
   */
  setDevice(peerId, device) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    if (device) tile.root.dataset.device = device;
    else delete tile.root.dataset.device;
    tile.deviceText.textContent = device ? DEVICE_WORDS[device] : '';
    tile.deviceText.hidden = !device;
  }

  setSelf(track) {
    this.selfVideo.srcObject = track ? new MediaStream([track]) : null;
    if (track) this.selfVideo.play().catch(() => {});
  }

  setSelfMuted(muted) {
    $('self-muted').hidden = !muted;
  }

  async setSpeaker(deviceId) {
    this.speakerId = deviceId;
    for (const tile of this.tiles.values()) await this._applySpeaker(tile.video);
  }

  async _applySpeaker(video) {
    if (!this.speakerId || typeof video.setSinkId !== 'function') return;
    try {
      await video.setSinkId(this.speakerId);
    } catch (error) {
      // The speaker went away: the default one keeps playing.
    }
  }

  _bannerNode(key) {
    const selector = `[data-key="${CSS.escape(key)}"]`;
    return this.alerts.querySelector(selector) ?? this.banners.querySelector(selector);
  }

  /**
   * A banner in plain words; the same key replaces the earlier text. kind: warn|info|bad.
   * Urgent banners (a drop, the phone step) go to the assertive live region, read out at once;
   * the rest to the polite one.
   */
  banner(key, text, kind = 'warn', { urgent = false } = {}) {
    const region = urgent ? this.alerts : this.banners;
    let node = this._bannerNode(key);
    if (!node || node.parentNode !== region) {
      node?.remove();
      node = el('p', { className: `banner ${kind}`, 'data-key': key });
      region.append(node);
    }
    node.className = `banner ${kind}`;
    node.textContent = text;
    return node;
  }

  /** Remove a banner, now or after a while (unless its text has changed meanwhile). */
  clearBanner(key, afterMs = 0) {
    const node = this._bannerNode(key);
    if (!node) return;
    if (afterMs <= 0) {
      node.remove();
      return;
    }
    const text = node.textContent;
    setTimeout(() => { if (node.textContent === text) node.remove(); }, afterMs);
  }

  /**
   * The card over the call, when this page itself is cut off, on the phone, back online or
   * held; null hides it. Drawn again only when it changes, so a screen reader hears it once.
   * @param {{title: string, text: string, detail: string, calls?: Array<{name: string, phone: string}>,
   *          onReturn?: () => void}|null} view
   */
  showCard(view) {
    const card = $('fallback-card');
    const key = view ? JSON.stringify(view) : '';
    if (card.dataset.view === key) return;
    card.dataset.view = key;
    card.hidden = view === null;
    if (!view) return;
    const title = $('fallback-title');
    const opening = title.textContent !== view.title;
    title.textContent = view.title;
    $('fallback-text').textContent = view.text;
    $('fallback-detail').textContent = view.detail;
    const calls = $('fallback-calls');
    calls.replaceChildren(...(view.calls ?? []).map((person) => el('li', {},
      person.phone
        ? el('a', { className: 'button primary', href: telHref(person.phone), text: `Call ${person.name} at ${person.phone}` })
        : el('span', { text: `${person.name}: no phone number is on file. Please ask for one.` }))));
    calls.hidden = !view.calls;
    $('fallback-actions').replaceChildren(...(view.onReturn
      ? [el('button', { type: 'button', className: 'button primary', text: 'Return to video', onclick: view.onReturn })]
      : []));
    if (opening) title.focus();
  }

  clear() {
    for (const peerId of [...this.tiles.keys()]) this.removePeer(peerId);
    this.banners.replaceChildren();
    this.alerts.replaceChildren();
    this.setSelf(null);
  }
}
