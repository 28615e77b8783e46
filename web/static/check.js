// The check before joining: camera preview, microphone level, speaker test, device pickers,
// the network check, and a plain explanation of anything that fails.

import { $, el } from './ui.js';
import { chimeWav, explainMediaError, listDevices, speakerChoiceSupported } from './devices.js';
import { runNetworkCheck, verdict } from './netcheck.js';

const STAGE_WORDS = {
  starting: 'Contacting the server…',
  connecting: 'Connecting to the server…',
  latency: 'Measuring delay…',
  download: 'Measuring download speed…',
  upload: 'Measuring upload speed…',
  relay: 'Checking the relay server…',
};

/** A live microphone level on a <meter>, and words for whether we hear anything. */
class LevelMeter {
  constructor(meter, status) {
    this.meter = meter;
    this.status = status;
    this.context = null;
    this.source = null;
    this.timer = null;
    this.level = 0;
    this.heardAt = 0;
    this.startedAt = 0;
    this.said = '';
    // Browsers start audio processing only after the person interacts with the page.
    const wake = () => this.context?.resume().catch(() => {});
    document.addEventListener('pointerdown', wake);
    document.addEventListener('keydown', wake);
  }

  attach(track) {
    this.detach();
    if (!track) {
      this._say('No microphone is working yet.');
      return;
    }
    const Context = globalThis.AudioContext || globalThis.webkitAudioContext;
    if (!Context) return;
    this.context = this.context ?? new Context();
    this.context.resume().catch(() => {});
    this.source = this.context.createMediaStreamSource(new MediaStream([track]));
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 1024;
    this.source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    this.startedAt = performance.now();
    this.heardAt = 0;
    this._say('Say something: the bar moves when we hear you.');
    // A timer rather than animation frames: it keeps working in a background tab.
    this.timer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const v of samples) sum += v * v;
      const rms = Math.sqrt(sum / samples.length);
      this.level = Math.max(Math.min(1, rms * 6), this.level * 0.7);
      this.meter.value = this.level;
      const now = performance.now();
      if (!track.enabled) return;
      if (this.level > 0.04) this.heardAt = now;
      if (this.heardAt && now - this.heardAt < 4000) this._say('We can hear you.');
      else if (now - this.startedAt > 6000) {
        this._say('We can\'t hear anything yet. Say something, check your microphone isn\'t muted, or choose another one.');
      }
    }, 100);
  }

  _say(text) {
    // Only on change: the status is a live region.
    if (text === this.said) return;
    this.said = text;
    this.status.textContent = text;
  }

  detach() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.source?.disconnect();
    this.source = null;
    this.meter.value = 0;
  }
}

export class CheckView {
  /**
   * @param {import('./devices.js').LocalMedia} media
   * @param {{netcheckUrl: string}} options
   */
  constructor(media, { netcheckUrl }) {
    this.media = media;
    this.netcheckUrl = netcheckUrl;
    this.preview = /** @type {HTMLVideoElement} */ ($('preview'));
    this.placeholder = $('preview-placeholder');
    this.cameraSelect = /** @type {HTMLSelectElement} */ ($('camera-select'));
    this.micSelect = /** @type {HTMLSelectElement} */ ($('mic-select'));
    this.speakerSelect = /** @type {HTMLSelectElement} */ ($('speaker-select'));
    this.meter = new LevelMeter($('mic-level'), $('mic-status'));
    this.netResult = null;
    this.netRunning = false;
    /** @type {AbortController|null} */
    this.netAbort = null;
    /** @type {Promise<object>|null} */
    this.opening = null;

    /** Whether the preview is on screen (the page shows the camera only where it can be seen). */
    this.previewShown = true;

    media.on('change', ({ kind, track }) => {
      if (kind === 'video') this._showPreview(track);
      else this.meter.attach(track);
    });
    $('retry-media').addEventListener('click', () => this.openDevices());
    $('net-retry').addEventListener('click', () => this.runNetwork());
    $('speaker-test').addEventListener('click', () => this.playChime());
    this.cameraSelect.addEventListener('change', () => this._switch('video', this.cameraSelect.value));
    this.micSelect.addEventListener('change', () => this._switch('audio', this.micSelect.value));
    this.speakerSelect.addEventListener('change', () => media.setSpeaker(this.speakerSelect.value));
    if (!speakerChoiceSupported()) {
      this.speakerSelect.hidden = true;
      /** @type {HTMLLabelElement} */ (document.querySelector('label[for="speaker-select"]')).hidden = true;
      $('speaker-status').textContent = 'Sound plays through your device\'s current speaker or headphones.';
    }
    navigator.mediaDevices?.addEventListener?.('devicechange', () => this.fillPickers());
  }

  /** Start the camera, microphone and network check. */
  async start() {
    if (!('RTCPeerConnection' in globalThis)) {
      $('problem-title').textContent = 'This browser can\'t make video calls';
      $('problem-text').textContent = 'Please open your link in an up-to-date Chrome, Edge, Firefox or Safari.';
      $('problem-steps').replaceChildren();
      $('retry-media').hidden = true;
      $('media-problem').hidden = false;
      return null;
    }
    const network = this.runNetwork();
    await this.openDevices();
    return network;
  }

  /** Resolves once the devices opened (or failed): the latest attempt's result. */
  openDevices() {
    this.opening = this._openDevices();
    return this.opening;
  }

  async _openDevices() {
    this.placeholder.textContent = 'Starting your camera… If your browser asks, choose Allow.';
    this.placeholder.hidden = false;
    const retry = /** @type {HTMLButtonElement} */ ($('retry-media'));
    retry.disabled = true;
    const problems = await this.media.open();
    retry.disabled = false;
    this.showProblems(problems);
    await this.fillPickers();
    return problems;
  }

  /** Explain what failed, most blocking first; hide the box when all is well. */
  showProblems(problems) {
    const box = $('media-problem');
    const kinds = Object.keys(problems);
    if (kinds.length === 0) {
      box.hidden = true;
      return;
    }
    let explanation;
    if (kinds.length === 2 && problems.audio?.name === problems.video?.name) {
      explanation = explainMediaError(problems.audio, 'audio');
      explanation.title = explanation.title.replace('microphone', 'camera and microphone');
    } else {
      explanation = explainMediaError(problems.audio ?? problems.video, problems.audio ? 'audio' : 'video');
    }
    $('problem-title').textContent = explanation.title;
    $('problem-text').textContent = explanation.text;
    $('problem-steps').replaceChildren(...explanation.steps.map((step) => el('li', { text: step })));
    box.hidden = false;
    box.dataset.problem = problems.video?.name ?? problems.audio?.name ?? 'unknown';
    if (!this.media.video) this.placeholder.textContent = problems.video ? 'Camera not available' : 'Camera off';
  }

  /** The preview lets go of the camera while the check is out of sight, and takes it back. */
  setShown(shown) {
    if (shown === this.previewShown) return;
    this.previewShown = shown;
    if (shown) this._showPreview(this.media.video);
    else this.preview.srcObject = null;
  }

  _showPreview(track) {
    if (!this.previewShown) return;
    if (track) {
      this.preview.srcObject = new MediaStream([track]);
      this.preview.play().catch(() => {});
      this.placeholder.hidden = true;
    } else {
      this.preview.srcObject = null;
      this.placeholder.hidden = false;
      this.placeholder.textContent = this.media.cameraOff ? 'Camera off' : 'Camera not available';
    }
  }

  async fillPickers() {
    let devices;
    try {
      devices = await listDevices();
    } catch (error) {
      return;
    }
    const current = (track) => track?.getSettings?.().deviceId ?? '';
    const fill = (select, list, fallback, selected) => {
      const options = list.map((d, i) => el('option', { value: d.deviceId, text: d.label || `${fallback} ${i + 1}` }));
      if (options.length === 0) options.push(el('option', { value: '', text: `No ${fallback.toLowerCase()} found` }));
      select.replaceChildren(...options);
      if (selected && list.some((d) => d.deviceId === selected)) select.value = selected;
    };
    fill(this.cameraSelect, devices.cameras, 'Camera', current(this.media.video) || this.media.prefs.camera);
    fill(this.micSelect, devices.mics, 'Microphone', current(this.media.audio) || this.media.prefs.mic);
    fill(this.speakerSelect, devices.speakers, 'Speaker', this.media.speaker);
    if (devices.speakers.length === 0) {
      this.speakerSelect.replaceChildren(el('option', { value: '', text: 'Default speaker' }));
    }
  }

  async _switch(kind, deviceId) {
    try {
      await this.media.use(kind, deviceId);
      this.showProblems(this.media.problems);
    } catch (error) {
      this.showProblems({ [kind]: error });
    }
  }

  async playChime() {
    const status = $('speaker-status');
    const url = URL.createObjectURL(chimeWav());
    const audio = new Audio(url);
    try {
      if (this.media.speaker && audio.setSinkId) await audio.setSinkId(this.media.speaker);
      audio.addEventListener('ended', () => {
        URL.revokeObjectURL(url);
        status.textContent = 'Did you hear a chime? If not, turn up the volume or choose another speaker.';
      }, { once: true });
      status.textContent = 'Playing a chime…';
      await audio.play();
    } catch (error) {
      URL.revokeObjectURL(url);
      status.textContent = 'The test sound could not play. Check your volume and choose another speaker if you can.';
    }
  }

  async runNetwork() {
    if (this.netRunning) return this.netResult;
    this.netRunning = true;
    const verdictNode = $('net-verdict');
    const numbers = $('net-numbers');
    const retry = /** @type {HTMLButtonElement} */ ($('net-retry'));
    verdictNode.dataset.level = 'running';
    verdictNode.textContent = 'Checking your connection…';
    $('net-advice').textContent = '';
    const relayLine = $('net-relay');
    relayLine.textContent = '';
    relayLine.hidden = true;
    retry.disabled = true;
    this.netAbort = new AbortController();
    try {
      const result = await runNetworkCheck({
        url: this.netcheckUrl,
        signal: this.netAbort.signal,
        onStage: (stage) => { numbers.textContent = STAGE_WORDS[stage] ?? ''; },
      });
      if (result.error === 'aborted') {
        verdictNode.dataset.level = 'stopped';
        verdictNode.textContent = 'Connection check stopped: you joined the session.';
        numbers.textContent = '';
        return null;
      }
      const role = /** @type {'partner'|'therapist'} */ (document.querySelector('main')?.dataset.role ?? 'partner');
      const words = verdict(result, { audience: role });
      this.netResult = { result, words };
      verdictNode.dataset.level = words.level;
      verdictNode.textContent = `Connection: ${words.label}`;
      numbers.textContent = words.numbers;
      $('net-advice').textContent = words.advice;
      relayLine.textContent = words.relay;
      relayLine.hidden = !words.relay;
    } finally {
      retry.disabled = false;
      this.netRunning = false;
      this.netAbort = null;
    }
    return this.netResult;
  }

  /** Stop a running network check: the call needs the bandwidth now. */
  stopNetwork() {
    this.netAbort?.abort();
  }

  /** The device pickers move into the call's settings dialog and back. */
  moveDevicesTo(container) {
    container.append($('devices'));
  }

  stop() {
    this.meter.detach();
  }
}
