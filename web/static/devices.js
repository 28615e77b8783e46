// Cameras, microphones and speakers: opening them, listing them, and saying in plain words
// what went wrong and what to do next. No page elements here; check.js shows the results.

/** @typedef {'audio'|'video'} Kind */
/** @typedef {{title: string, text: string, steps: string[], canJoin: boolean}} Explanation */

const PREFS_KEY = 'telehealth:devices';

const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 } };
const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

export function mediaAvailable() {
  return Boolean(globalThis.navigator?.mediaDevices?.getUserMedia);
}

/** Device choices remembered on this device (ids only; nothing personal). */
export function loadPreferences() {
  try {
    return JSON.parse(globalThis.localStorage.getItem(PREFS_KEY) || '{}') || {};
  } catch (error) {
    return {};
  }
}

export function savePreferences(prefs) {
  try {
    globalThis.localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
  } catch (error) {
    // Private browsing may refuse storage; choices then last for this page only.
  }
}

function constraintsFor(kind, deviceId) {
  const base = kind === 'video' ? VIDEO_CONSTRAINTS : AUDIO_CONSTRAINTS;
  return deviceId ? { ...base, deviceId: { exact: deviceId } } : base;
}

/**
 * Open one kind of device. A remembered device that has gone away falls back to the default.
 * @returns {Promise<MediaStreamTrack>}
 */
export async function openTrack(kind, deviceId = '') {
  const media = globalThis.navigator.mediaDevices;
  try {
    const stream = await media.getUserMedia({ [kind]: constraintsFor(kind, deviceId) });
    return stream.getTracks()[0];
  } catch (error) {
    if (deviceId && (error.name === 'OverconstrainedError' || error.name === 'NotFoundError')) {
      const stream = await media.getUserMedia({ [kind]: constraintsFor(kind, '') });
      return stream.getTracks()[0];
    }
    throw error;
  }
}

/** Devices asked for while the page was still loading (early.js), for the first open() to take. */
let early = null;
/** Whether the page has opened its devices itself: then early.js came too late to help. */
let pageOpened = false;

/** The remembered choices, as openMedia takes them. */
function remembered(prefs, cameraOff) {
  return { cameraId: prefs.camera || '', micId: prefs.mic || '', video: !cameraOff };
}

/**
 * Ask for the remembered camera and microphone now, before the page's own modules are ready
 * to: getUserMedia takes a few hundred ms, and so does getting the page ready to ask.
 */
export function openEarly() {
  // An async module may run after the page's own (a busy machine, a slow fetch): asking then
  // would open the camera a second time, and nothing would take or stop it (CI saw 2 asks).
  if (!early && !pageOpened) early = openMedia(remembered(loadPreferences(), false));
}

/**
 * Open camera and microphone together (one permission prompt); if that fails, each alone,
 * so one broken device does not hide the other.
 * @returns {Promise<{tracks: MediaStreamTrack[], problems: Partial<Record<Kind, Error>>}>}
 */
export async function openMedia({ cameraId = '', micId = '', video = true, audio = true } = {}) {
  if (!mediaAvailable()) {
    const error = new Error('getUserMedia is not available');
    error.name = 'InsecureContextError';
    return { tracks: [], problems: { audio: error, video: error } };
  }
  const media = globalThis.navigator.mediaDevices;
  try {
    const stream = await media.getUserMedia({
      audio: audio ? constraintsFor('audio', micId) : false,
      video: video ? constraintsFor('video', cameraId) : false,
    });
    return { tracks: stream.getTracks(), problems: {} };
  } catch (error) {
    // Fall through: find out which one fails.
  }
  const tracks = [];
  const problems = {};
  /** @type {Array<[Kind, boolean, string]>} */
  const wanted = [['audio', audio, micId], ['video', video, cameraId]];
  for (const [kind, asked, id] of wanted) {
    if (!asked) continue;
    try {
      tracks.push(await openTrack(kind, id));
    } catch (error) {
      problems[kind] = error;
    }
  }
  return { tracks, problems };
}

/** @returns {Promise<{cameras: MediaDeviceInfo[], mics: MediaDeviceInfo[], speakers: MediaDeviceInfo[]}>} */
export async function listDevices() {
  const devices = mediaAvailable() ? await globalThis.navigator.mediaDevices.enumerateDevices() : [];
  return {
    cameras: devices.filter((d) => d.kind === 'videoinput' && d.deviceId),
    mics: devices.filter((d) => d.kind === 'audioinput' && d.deviceId),
    speakers: devices.filter((d) => d.kind === 'audiooutput' && d.deviceId),
  };
}

/** Whether this browser lets a page choose the speaker (Chrome and Edge do). */
export function speakerChoiceSupported() {
  return typeof globalThis.HTMLMediaElement !== 'undefined' && 'setSinkId' in globalThis.HTMLMediaElement.prototype;
}

function platformHint(kind) {
  const ua = globalThis.navigator?.userAgent ?? '';
  const what = kind === 'video' ? 'Camera' : 'Microphone';
  if (/Macintosh/.test(ua)) return `On a Mac, also open System Settings › Privacy & Security › ${what} and allow your browser.`;
  if (/Windows/.test(ua)) return `On Windows, also open Settings › Privacy & security › ${what} and allow apps to use it.`;
  if (/iPhone|iPad/.test(ua)) return `On an iPhone or iPad, open Settings › Safari (or your browser) › ${what} and choose Allow.`;
  if (/Android/.test(ua)) return `On Android, open Settings › Apps › your browser › Permissions and allow the ${what.toLowerCase()}.`;
  return null;
}

/**
 * What went wrong with a device, and what to do next, in plain words.
 * @param {Error} error as thrown by getUserMedia
 * @param {Kind} kind
 * @returns {Explanation}
 */
export function explainMediaError(error, kind) {
  const thing = kind === 'video' ? 'camera' : 'microphone';
  const name = error?.name ?? '';
  if (name === 'NotAllowedError' || name === 'PermissionDeniedError' || name === 'SecurityError') {
    const steps = [
      `Select the camera or lock icon at the left of the address bar and set the ${thing} to Allow.`,
      'If you don\'t see it, open your browser\'s settings, find Site settings (or Privacy), and allow this site to use the camera and microphone.',
    ];
    const hint = platformHint(kind);
    if (hint) steps.push(hint);
    steps.push('Then press Try again.');
    return {
      title: `Your browser is blocking the ${thing}`,
      text: `This page needs your permission to use your ${thing}. No one can see or hear you until you join.`,
      steps,
      canJoin: kind === 'video',
    };
  }
  if (name === 'NotFoundError' || name === 'DevicesNotFoundError' || name === 'OverconstrainedError') {
    return kind === 'video'
      ? {
        title: 'We can\'t find a camera',
        text: 'You can still join with sound only; the others will see your name instead.',
        steps: [
          'If your camera is built in, check it is not switched off or covered by a privacy shutter.',
          'If it plugs in, check the cable or try another USB port.',
          'Then press Try again.',
        ],
        canJoin: true,
      }
      : {
        title: 'We can\'t find a microphone',
        text: 'Without a microphone the others can\'t hear you.',
        steps: [
          'Plug in a headset or earphones with a microphone, or use a device with a built-in microphone.',
          'Then press Try again.',
        ],
        canJoin: true,
      };
  }
  if (name === 'NotReadableError' || name === 'TrackStartError' || name === 'AbortError') {
    return {
      title: `Your ${thing} is busy or not responding`,
      text: `Another app may be using your ${thing}.`,
      steps: [
        'Close other apps that use it, such as Zoom, Teams, Skype or FaceTime, and other browser tabs with video calls.',
        'If that doesn\'t help, unplug and plug in the device again, or restart your browser.',
        'Then press Try again.',
      ],
      canJoin: true,
    };
  }
  if (name === 'InsecureContextError' || name === 'TypeError') {
    return {
      title: 'This page can\'t use your camera or microphone',
      text: 'Your browser only allows them on secure pages.',
      steps: [
        'Open the link exactly as it was sent to you: it must start with https://.',
        'Use an up-to-date Chrome, Edge, Firefox or Safari.',
      ],
      canJoin: false,
    };
  }
  return {
    title: `Your ${thing} didn't start`,
    text: 'Something stopped it from starting.',
    steps: ['Press Try again.', 'If it keeps happening, restart your browser or your device.'],
    canJoin: true,
  };
}

/**
 * A short two-note chime as a WAV file, generated here so no audio file is needed.
 * @returns {Blob}
 */
export function chimeWav() {
  const rate = 24000;
  const notes = [[660, 0.0, 0.45], [880, 0.3, 0.7]];
  const length = Math.round(rate * 1.0);
  const pcm = new Int16Array(length);
  for (const [freq, start, end] of notes) {
    for (let i = Math.round(start * rate); i < Math.min(length, Math.round(end * rate)); i += 1) {
      const t = i / rate - start;
      const envelope = Math.min(1, t * 80) * Math.exp(-4 * t);
      pcm[i] += Math.round(9000 * envelope * Math.sin(2 * Math.PI * freq * t));
    }
  }
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, s) => { for (let i = 0; i < s.length; i += 1) header.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, 'RIFF');
  header.setUint32(4, 36 + pcm.byteLength, true);
  text(8, 'WAVE');
  text(12, 'fmt ');
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, rate, true);
  header.setUint32(28, rate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, 'data');
  header.setUint32(40, pcm.byteLength, true);
  return new Blob([header.buffer, pcm.buffer], { type: 'audio/wav' });
}

/**
 * This page's own camera and microphone, shared by the check, the waiting room and the call.
 * Emits 'change' {kind, track} whenever the track of a kind is replaced or removed, so the
 * call can send the new one. States per kind: none -> live -> (switched) live | (stopped) none.
 */
export class LocalMedia {
  constructor() {
    /** @type {MediaStreamTrack|null} */
    this.audio = null;
    /** @type {MediaStreamTrack|null} */
    this.video = null;
    /** @type {Partial<Record<Kind, Error>>} */
    this.problems = {};
    this.prefs = loadPreferences();
    this.micMuted = false;
    this.cameraOff = false;
    /** Whether open() is under way (the camera may be about to arrive). */
    this.starting = false;
    // Not events.js's Emitter: this module is early.js's one import, and an import of its
    // own would hold back the camera that early.js starts while the page loads (the page
    // then asks for it a second time). One event, three lines.
    this._handlers = new Set();
  }

  on(type, handler) {
    if (type !== 'change') throw new Error(`LocalMedia has no '${type}' event`);
    this._handlers.add(handler);
    return () => this._handlers.delete(handler);
  }

  _set(kind, track) {
    const old = this[kind];
    if (old && old !== track) old.stop();
    this[kind] = track;
    if (kind === 'audio' && track) track.enabled = !this.micMuted;
    for (const handler of this._handlers) handler({ kind, track });
  }

  /** Live tracks to send. */
  tracks() {
    return [this.audio, this.video].filter((t) => t && t.readyState === 'live');
  }

  /** Open both devices (again), with the remembered choices. */
  async open() {
    this.stop();
    this.starting = true;
    pageOpened = true;
    const started = early;
    early = null;
    let opened;
    try {
      opened = await (started ?? openMedia(remembered(this.prefs, this.cameraOff)));
    } finally {
      this.starting = false;
    }
    const { tracks, problems } = opened;
    let video = tracks.find((t) => t.kind === 'video') ?? null;
    if (video && this.cameraOff) {
      // Stop video was pressed while the camera was starting (the call can begin meanwhile).
      video.stop();
      video = null;
    }
    this.problems = problems;
    this._set('audio', tracks.find((t) => t.kind === 'audio') ?? null);
    this._set('video', video);
    return problems;
  }

  /** Switch to another device of a kind; on failure the previous one is reopened. */
  async use(kind, deviceId) {
    const prefKey = kind === 'video' ? 'camera' : 'mic';
    const previous = this.prefs[prefKey] || '';
    // Some systems cannot open a second camera while the first is running: stop it first.
    if (this[kind]) this[kind].stop();
    try {
      if (kind === 'video' && this.cameraOff) {
        this.prefs[prefKey] = deviceId;
      } else {
        this._set(kind, await openTrack(kind, deviceId));
        this.prefs[prefKey] = deviceId;
      }
      delete this.problems[kind];
      savePreferences(this.prefs);
    } catch (error) {
      this.problems[kind] = error;
      this._set(kind, await openTrack(kind, previous).catch(() => null));
      throw error;
    }
  }

  setMicMuted(muted) {
    this.micMuted = muted;
    if (this.audio) this.audio.enabled = !muted;
  }

  /** Stopping the camera releases it (its light goes off); starting opens it again. */
  async setCameraOff(off) {
    this.cameraOff = off;
    if (off) {
      this._set('video', null);
      return;
    }
    try {
      this._set('video', await openTrack('video', this.prefs.camera || ''));
      delete this.problems.video;
    } catch (error) {
      this.cameraOff = true;
      this.problems.video = error;
      throw error;
    }
  }

  setSpeaker(deviceId) {
    this.prefs.speaker = deviceId;
    savePreferences(this.prefs);
  }

  get speaker() {
    return this.prefs.speaker || '';
  }

  stop() {
    for (const track of [this.audio, this.video]) track?.stop();
  }
}
