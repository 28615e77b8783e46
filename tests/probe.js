// The call probe's in-page half, injected before the page's own modules run (Playwright's
// add_init_script in Chromium, puppeteer's evaluateOnNewDocument in Firefox): the page's CSP
// does not apply to it, and it never changes what the page does unless asked to.
//
// - window.__probePcs: every RTCPeerConnection the page makes.
// - window.__probeSample(): one reading, all cumulative (tests/call_probe.py turns counters
//   into per-second rates): per remote tile, what the page shows about that person (its
//   quality level, data-device, data-status, decoded frames) and the truth from the
//   connection that feeds the tile (getStats: packets, loss, bytes, frames, round trip,
//   qualityLimitationReason, the encoder's time); and every banner in #banners and #alerts;
//   and the page's own last stats message to the server (`reported`, per peer: what the
//   monitor was told, kept beside the truth to find why a verdict was wrong, never scored).
// - window.__probeBackground(on): a background tab, as far as a headless page can be one:
//   document.visibilityState reads "hidden" (and visibilitychange fires), timers run only at
//   wake-ups every BACKGROUND_WAKE_MS, and requestAnimationFrame callbacks wait for the
//   foreground, as Chromium does to hidden tabs.
(() => {
  if (window.__probeSample) return;
  const BACKGROUND_WAKE_MS = 10000;
  const Native = window.RTCPeerConnection;
  const pcs = window.__probePcs = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); pcs.push(this); }
  };
  // Chromium-only page state the probe needs too (tests/browser_call.py reads __pcs).
  window.__pcs = pcs;

  let reported = {};
  const nativeSend = WebSocket.prototype.send;
  WebSocket.prototype.send = function send(data) {
    if (typeof data === 'string' && data.startsWith('{"type":"stats"')) {
      try {
        reported = Object.fromEntries(JSON.parse(data).links.map((link) => [link.peer, link]));
      } catch (error) {
        // Not ours to judge.
      }
    }
    return nativeSend.call(this, data);
  };

  let hidden = false;
  let heldFrames = [];
  const nativeSetTimeout = window.setTimeout.bind(window);
  const nativeSetInterval = window.setInterval.bind(window);
  const nativeClearInterval = window.clearInterval.bind(window);
  const nativeRaf = window.requestAnimationFrame?.bind(window);
  const untilWake = () => BACKGROUND_WAKE_MS - (Date.now() % BACKGROUND_WAKE_MS);
  const later = (fn, args) => () => {
    if (!hidden) { fn(...args); return; }
    nativeSetTimeout(() => fn(...args), untilWake());
  };
  window.setTimeout = (fn, ms, ...args) => (typeof fn === 'function'
    ? nativeSetTimeout(later(fn, args), ms) : nativeSetTimeout(fn, ms, ...args));
  window.setInterval = (fn, ms, ...args) => {
    if (typeof fn !== 'function') return nativeSetInterval(fn, ms, ...args);
    let lastWake = -1;
    return nativeSetInterval(() => {
      if (!hidden) { fn(...args); return; }
      const wake = Math.floor(Date.now() / BACKGROUND_WAKE_MS);
      if (wake !== lastWake) { lastWake = wake; fn(...args); }
    }, ms);
  };
  window.clearInterval = nativeClearInterval;
  if (nativeRaf) {
    window.requestAnimationFrame = (fn) => {
      if (!hidden) return nativeRaf(fn);
      heldFrames.push(fn);
      return 0;
    };
  }
  const visibility = Object.getOwnPropertyDescriptor(Document.prototype, 'visibilityState');
  const hiddenProp = Object.getOwnPropertyDescriptor(Document.prototype, 'hidden');
  Object.defineProperty(document, 'visibilityState', {
    configurable: true, get() { return hidden ? 'hidden' : visibility.get.call(document); } });
  Object.defineProperty(document, 'hidden', {
    configurable: true, get() { return hidden || hiddenProp.get.call(document); } });
  window.__probeBackground = (on) => {
    if (hidden === Boolean(on)) return;
    hidden = Boolean(on);
    document.dispatchEvent(new Event('visibilitychange'));
    if (!hidden && nativeRaf) {
      const held = heldFrames;
      heldFrames = [];
      for (const fn of held) nativeRaf(fn);
    }
  };

  // Frames painted per <video>: getVideoPlaybackQuality() where it counts a MediaStream's
  // frames (Chromium), else requestVideoFrameCallback (Firefox leaves totalVideoFrames at 0).
  const painted = new WeakMap();
  const framesOf = (video) => {
    if (!video) return 0;
    const total = video.getVideoPlaybackQuality?.().totalVideoFrames ?? 0;
    if (total > 0 || typeof video.requestVideoFrameCallback !== 'function') return total;
    if (!painted.has(video)) {
      painted.set(video, 0);
      const count = () => { painted.set(video, painted.get(video) + 1); video.requestVideoFrameCallback(count); };
      video.requestVideoFrameCallback(count);
    }
    return painted.get(video);
  };

  const feeding = (tile) => {
    const tracks = tile.querySelector('video')?.srcObject?.getTracks() ?? [];
    return pcs.find((c) => c.connectionState !== 'closed'
      && c.getReceivers().some((r) => tracks.includes(r.track))) ?? null;
  };

  const truth = async (pc) => {
    const t = { pc: pcs.indexOf(pc), state: pc.connectionState, packetsIn: 0, packetsLost: 0,
      bytesIn: 0, bytesOut: 0, framesDecoded: 0, framesEncoded: 0, encodeSeconds: 0, fpsIn: null, fpsOut: null,
      rttMs: null, limitation: null, videoOut: false, videoIn: false };
    let remoteRtt = null;
    const report = await pc.getStats();
    const all = [...report.values()];
    let pairRtt = null;
    const transport = all.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    for (const s of all) {
      if (s.type === 'inbound-rtp') {
        t.packetsIn += s.packetsReceived ?? 0;
        t.packetsLost += Math.max(0, s.packetsLost ?? 0);
        t.bytesIn += s.bytesReceived ?? 0;
        if (s.kind === 'video') {
          t.videoIn = true;
          t.framesDecoded += s.framesDecoded ?? 0;
          if (typeof s.framesPerSecond === 'number') t.fpsIn = (t.fpsIn ?? 0) + s.framesPerSecond;
        }
      } else if (s.type === 'outbound-rtp') {
        t.bytesOut += s.bytesSent ?? 0;
        if (s.kind === 'video') {
          t.videoOut = true;
          t.framesEncoded += s.framesEncoded ?? 0;
          t.encodeSeconds += s.totalEncodeTime ?? 0;
          if (typeof s.framesPerSecond === 'number') t.fpsOut = (t.fpsOut ?? 0) + s.framesPerSecond;
          if (s.qualityLimitationReason && s.qualityLimitationReason !== 'none') t.limitation = s.qualityLimitationReason;
          else t.limitation = t.limitation ?? s.qualityLimitationReason ?? null;
        }
      } else if (s.type === 'remote-inbound-rtp' && typeof s.roundTripTime === 'number') {
        remoteRtt = Math.max(remoteRtt ?? 0, s.roundTripTime);
      } else if (s.type === 'candidate-pair' && typeof s.currentRoundTripTime === 'number'
                 && (transport ? s.id === transport.selectedCandidatePairId : (s.selected || s.nominated))) {
        pairRtt = s.currentRoundTripTime;
      }
    }
    const rtt = pairRtt ?? remoteRtt;
    t.rttMs = rtt === null ? null : Math.round(rtt * 1000);
    return t;
  };

  const banners = () => ['banners', 'alerts'].flatMap((id) => [...(document.getElementById(id)?.querySelectorAll('.banner') ?? [])]
    .map((b) => ({ region: id, key: b.dataset.key ?? '', text: b.textContent.trim() })));

  window.__probeSample = async () => {
    // What shows is read at one instant; the connections' stats are gathered at once after.
    const t = Date.now();
    const shown = [...document.querySelectorAll('#tiles .tile')].map((tile) => {
      const video = tile.querySelector('video');
      return {
        peer: tile.dataset.peer ?? '',
        name: tile.querySelector('.tile-name')?.textContent.trim() ?? '',
        level: tile.querySelector('.quality')?.dataset.level ?? null,
        device: tile.dataset.device ?? null,
        status: tile.dataset.status ?? null,
        frames: framesOf(video),
        width: video?.videoWidth ?? 0,
        pc: feeding(tile),
      };
    });
    const shownBanners = banners();
    const tiles = await Promise.all(shown.map(async ({ pc, ...tile }) => ({
      ...tile, truth: pc ? await truth(pc) : null, reported: reported[tile.peer] ?? null })));
    return { t, visible: !hidden, tiles, banners: shownBanners };
  };
})();
