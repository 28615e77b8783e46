// The network check: a short real WebRTC connection to the server's probe (media/probe.py).
//
// DOM-free. Signaling is one HTTP POST: we wait for ICE gathering to finish and send the
// whole offer (no trickle). Over the connection we measure round-trip time and loss with
// unreliable pings, then download and upload throughput on a reliable channel, and turn the
// numbers into words with `verdict`.
//
// When the server hands out a TURN relay, the check also proves the relay works from this
// network: it asks the relay for an address over UDP, and over TCP/TLS (the way out of
// networks that block UDP), and makes a real relay-only connection to the probe. Without a
// relay configured it says nothing about relays: there is nothing the person could do.

const CHUNK = 16 * 1024;

/**
 * @typedef {{udp: boolean|null, tcp: boolean|null, connected: boolean|null, rtt_ms: number|null}} RelayResult
 * udp/tcp: whether the relay gave us an address over that transport (null: no URL for it);
 * connected: whether a relay-only connection reached the probe.
 */

/**
 * @typedef {{connected: boolean, rtt_ms: number|null, jitter_ms: number|null, loss: number|null,
 *            down_kbps: number|null, up_kbps: number|null, candidate: string|null,
 *            relay_only?: boolean, relay: RelayResult|null, error?: string}} CheckResult
 * relay_only: the server runs every call through the relay, so the check did too.
 */

function sleep(ms, timers) {
  return new Promise((resolve) => timers.setTimeout(resolve, ms));
}

function within(promise, ms, timers, what) {
  return new Promise((resolve, reject) => {
    const timer = timers.setTimeout(() => reject(new Error(`${what} timed out`)), ms);
    promise.then(
      (value) => { timers.clearTimeout(timer); resolve(value); },
      (error) => { timers.clearTimeout(timer); reject(error); },
    );
  });
}

function opened(channel) {
  if (channel.readyState === 'open') return Promise.resolve();
  return new Promise((resolve, reject) => {
    channel.addEventListener('open', () => resolve(), { once: true });
    channel.addEventListener('close', () => reject(new Error('channel closed')), { once: true });
  });
}

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === 'complete') {
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      }
    };
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/**
 * The TURN servers of an ICE server list, split by how the browser reaches the relay:
 * `turn:` URLs over UDP (the default) and over TCP, `turns:` over TLS (counted with TCP).
 * @param {RTCIceServer[]} iceServers
 * @returns {{udp: RTCIceServer[], tcp: RTCIceServer[]}}
 */
export function relayServers(iceServers) {
  const out = { udp: [], tcp: [] };
  for (const server of iceServers) {
    if (!server.username || !server.credential) continue;
    const urls = Array.isArray(server.urls) ? server.urls : [server.urls];
    const byTransport = { udp: [], tcp: [] };
    for (const url of urls) {
      if (url.startsWith('turns:') || (url.startsWith('turn:') && /[?&]transport=tcp\b/.test(url))) {
        byTransport.tcp.push(url);
      } else if (url.startsWith('turn:')) {
        byTransport.udp.push(url);
      }
    }
    for (const transport of ['udp', 'tcp']) {
      if (byTransport[transport].length) {
        out[transport].push({ urls: byTransport[transport], username: server.username, credential: server.credential });
      }
    }
  }
  return out;
}

/**
 * Whether the relay gives us an address through these servers within `timeoutMs`: a relay
 * candidate means we reached it and it accepted our credentials.
 * @returns {Promise<boolean>}
 */
export function relayReachable(iceServers, {
  RTCPeerConnectionImpl = globalThis.RTCPeerConnection, timers = globalThis, timeoutMs = 5000, signal = null,
} = {}) {
  if (signal?.aborted) return Promise.resolve(false);
  const pc = new RTCPeerConnectionImpl({ iceServers, iceTransportPolicy: 'relay' });
  return new Promise((resolve) => {
    let timer = null;
    const finish = (works) => {
      if (timer === null) return;
      timers.clearTimeout(timer);
      timer = null;
      signal?.removeEventListener('abort', abort);
      pc.close();
      resolve(works);
    };
    const abort = () => finish(false);
    timer = timers.setTimeout(() => finish(false), timeoutMs);
    signal?.addEventListener('abort', abort);
    pc.onicecandidate = ({ candidate }) => {
      if (candidate && (candidate.type === 'relay' || / typ relay /.test(candidate.candidate))) finish(true);
    };
    pc.onicegatheringstatechange = () => {
      if (pc.iceGatheringState === 'complete') finish(false);
    };
    // Something to negotiate, so that gathering starts.
    pc.createDataChannel('relay-test');
    pc.setLocalDescription().catch(() => finish(false));
  });
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Run the check against `/j/<token>/netcheck`.
 * @param {{
 *   url: string, fetchImpl?: typeof fetch, RTCPeerConnectionImpl?: typeof RTCPeerConnection,
 *   now?: () => number, timers?: any, onStage?: (stage: string) => void,
 *   pings?: number, pingEveryMs?: number, bulkMs?: number, connectTimeoutMs?: number,
 *   relayTimeoutMs?: number, signal?: AbortSignal,
 * }} options
 * Aborting (the person joined the call meanwhile) closes every connection at once, so the
 * check never competes with the call for bandwidth; the result then has error 'aborted'.
 * @returns {Promise<CheckResult>}
 */
export async function runNetworkCheck({
  url, fetchImpl = globalThis.fetch.bind(globalThis),
  RTCPeerConnectionImpl = globalThis.RTCPeerConnection,
  now = () => globalThis.performance.now(), timers = globalThis, onStage = () => {},
  pings = 40, pingEveryMs = 25, bulkMs = 1200, connectTimeoutMs = 10000, relayTimeoutMs = 5000, signal = null,
}) {
  /** @type {CheckResult} */
  const result = {
    connected: false, rtt_ms: null, jitter_ms: null, loss: null, down_kbps: null, up_kbps: null, candidate: null,
    relay_only: false, relay: null,
  };
  let iceServers = [];
  try {
    const response = await fetchImpl(url, { credentials: 'omit', cache: 'no-store' });
    if (response.ok) {
      const body = await response.json();
      iceServers = body.ice_servers ?? [];
      // A relay-only server's calls never go direct: check the path they will take.
      result.relay_only = body.ice_transport_policy === 'relay';
    }
  } catch (error) {
    // Without the server's ICE list we still try directly.
  }
  const io = { url, fetchImpl, RTCPeerConnectionImpl, now, timers, connectTimeoutMs, signal };
  const relays = relayServers(iceServers);
  const relayConfigured = relays.udp.length > 0 || relays.tcp.length > 0;
  // Asking the relay for an address costs next to nothing: do it while the main check runs.
  const reachable = (servers) => (servers.length
    ? relayReachable(servers, { RTCPeerConnectionImpl, timers, timeoutMs: relayTimeoutMs, signal })
    : Promise.resolve(null));
  const reachability = relayConfigured ? Promise.all([reachable(relays.udp), reachable(relays.tcp)]) : null;

  await checkConnection(result, iceServers, { ...io, onStage, pings, pingEveryMs, bulkMs });
  if (reachability && !signal?.aborted) {
    onStage('relay');
    const [udp, tcp] = await reachability;
    result.relay = { udp, tcp, connected: false, rtt_ms: null };
    if (result.relay_only || (result.connected && result.candidate === 'relay')) {
      // The main check already went through the relay: that is the proof.
      Object.assign(result.relay, { connected: result.connected, rtt_ms: result.rtt_ms });
    } else if (udp || tcp) {
      // Only the ways that reached the relay: a blocked one would hold up gathering.
      const working = [...(udp ? relays.udp : []), ...(tcp ? relays.tcp : [])];
      Object.assign(result.relay, await checkRelayed(working, io));
    }
  }
  if (signal?.aborted) result.error = 'aborted';
  return result;
}

class ProbeRefused extends Error {}

/** Offer to the probe and take its answer (the whole of either: no trickle either side). */
async function offerToProbe(pc, { url, fetchImpl, timers }) {
  await pc.setLocalDescription();
  await within(gathered(pc), 5000, timers, 'ICE gathering').catch(() => {});
  const response = await fetchImpl(url, {
    method: 'POST', credentials: 'omit', cache: 'no-store',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ type: pc.localDescription.type, sdp: pc.localDescription.sdp }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new ProbeRefused(body.code || `http_${response.status}`);
  }
  await pc.setRemoteDescription(await response.json());
}

/** The main check, over the path a call would take: connect, then delay, loss and throughput. */
async function checkConnection(result, iceServers, {
  RTCPeerConnectionImpl, now, timers, onStage, pings, pingEveryMs, bulkMs, connectTimeoutMs, signal, ...io
}) {
  const pc = new RTCPeerConnectionImpl({ iceServers, iceTransportPolicy: result.relay_only ? 'relay' : 'all' });
  const abort = () => pc.close();
  signal?.addEventListener('abort', abort);
  try {
    onStage('connecting');
    const ping = pc.createDataChannel('ping', { ordered: false, maxRetransmits: 0 });
    const bulk = pc.createDataChannel('bulk');
    bulk.binaryType = 'arraybuffer';
    await offerToProbe(pc, { ...io, timers });
    await within(Promise.all([opened(ping), opened(bulk)]), connectTimeoutMs, timers, 'connection');
    result.connected = true;

    onStage('latency');
    Object.assign(result, await measurePings(ping, { pings, pingEveryMs, now, timers }));
    onStage('download');
    result.down_kbps = await measureDown(bulk, { bulkMs, now, timers });
    onStage('upload');
    result.up_kbps = await measureUp(bulk, { bulkMs, now, timers });
    result.candidate = await selectedCandidateType(pc);
  } catch (error) {
    result.error = (error && error.message) || 'failed';
  } finally {
    signal?.removeEventListener('abort', abort);
    pc.close();
  }
}

/** A relay-only connection to the probe (which answers through the relay too), and its delay. */
async function checkRelayed(iceServers, { RTCPeerConnectionImpl, now, timers, connectTimeoutMs, signal, ...io }) {
  const pc = new RTCPeerConnectionImpl({ iceServers, iceTransportPolicy: 'relay' });
  const abort = () => pc.close();
  signal?.addEventListener('abort', abort);
  try {
    const ping = pc.createDataChannel('ping', { ordered: false, maxRetransmits: 0 });
    await offerToProbe(pc, { ...io, timers });
    await within(opened(ping), connectTimeoutMs, timers, 'relayed connection');
    const { rtt_ms: rttMs } = await measurePings(ping, { pings: 10, pingEveryMs: 25, now, timers });
    return { connected: rttMs !== null, rtt_ms: rttMs };
  } catch (error) {
    return { connected: false, rtt_ms: null };
  } finally {
    signal?.removeEventListener('abort', abort);
    pc.close();
  }
}

async function measurePings(channel, { pings, pingEveryMs, now, timers }) {
  const sentAt = new Map();
  const rtts = [];
  channel.onmessage = (event) => {
    const seq = Number(String(event.data).split(':')[0]);
    const at = sentAt.get(seq);
    if (at !== undefined) {
      rtts.push(now() - at);
      sentAt.delete(seq);
    }
  };
  for (let seq = 0; seq < pings; seq += 1) {
    sentAt.set(seq, now());
    channel.send(`${seq}:${'x'.repeat(100)}`);
    await sleep(pingEveryMs, timers);
  }
  // Give late echoes a moment; later than this counts as lost for a conversation anyway.
  const deadline = now() + 1000;
  while (rtts.length < pings && now() < deadline) await sleep(50, timers);
  channel.onmessage = null;
  if (rtts.length === 0) return { rtt_ms: null, jitter_ms: null, loss: 1 };
  let jitter = 0;
  for (let i = 1; i < rtts.length; i += 1) jitter += Math.abs(rtts[i] - rtts[i - 1]);
  return {
    rtt_ms: Math.round(median(rtts) * 10) / 10,
    jitter_ms: rtts.length > 1 ? Math.round((jitter / (rtts.length - 1)) * 10) / 10 : 0,
    loss: Math.round((1 - rtts.length / pings) * 1000) / 1000,
  };
}

function measureDown(channel, { bulkMs, now, timers }) {
  return new Promise((resolve) => {
    let bytes = 0;
    let first = 0;
    let last = 0;
    const finish = (serverMs) => {
      channel.onmessage = null;
      timers.clearTimeout(timer);
      const ms = last > first ? last - first : serverMs;
      resolve(bytes > 0 && ms > 0 ? Math.round((bytes * 8) / ms) : null);
    };
    const timer = timers.setTimeout(() => finish(0), bulkMs + 5000);
    channel.onmessage = (event) => {
      if (typeof event.data === 'string') {
        let message = {};
        try { message = JSON.parse(event.data); } catch (error) { return; }
        if (message.op === 'down_done') finish(message.ms || 0);
        return;
      }
      const at = now();
      if (bytes === 0) first = at;
      bytes += event.data.byteLength;
      last = at;
    };
    channel.send(JSON.stringify({ op: 'down', ms: bulkMs }));
  });
}

async function measureUp(channel, { bulkMs, now, timers }) {
  const chunk = new Uint8Array(CHUNK);
  const maxBytes = 2 * 1024 * 1024;
  const highWater = 512 * 1024;
  channel.bufferedAmountLowThreshold = highWater / 2;
  const start = now();
  let sent = 0;
  while (now() - start < bulkMs && sent < maxBytes) {
    if (channel.bufferedAmount > highWater) {
      await new Promise((resolve) => {
        const timer = timers.setTimeout(resolve, 200);
        channel.addEventListener('bufferedamountlow', () => { timers.clearTimeout(timer); resolve(); }, { once: true });
      });
      continue;
    }
    channel.send(chunk);
    sent += CHUNK;
  }
  const reply = new Promise((resolve) => {
    const timer = timers.setTimeout(() => resolve(null), 5000);
    channel.onmessage = (event) => {
      if (typeof event.data !== 'string') return;
      try {
        const message = JSON.parse(event.data);
        if (message.op === 'up_result') {
          timers.clearTimeout(timer);
          resolve(message);
        }
      } catch (error) { /* not ours */ }
    };
  });
  channel.send(JSON.stringify({ op: 'up_done' }));
  const message = await reply;
  channel.onmessage = null;
  if (!message || !message.bytes) return null;
  // From our first send to the server's count: includes one round trip, so it errs low.
  const ms = now() - start;
  return ms > 0 ? Math.round((message.bytes * 8) / ms) : null;
}

async function selectedCandidateType(pc) {
  try {
    const report = await pc.getStats();
    // The transport points at the pair in use (Chromium, Safari); Firefox flags it instead.
    let pair = null;
    for (const s of report.values()) {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) ?? null;
    }
    for (const s of report.values()) {
      if (!pair && s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
    }
    if (!pair) return null;
    const local = report.get(pair.localCandidateId);
    const remote = report.get(pair.remoteCandidateId);
    if (local?.candidateType === 'relay' || remote?.candidateType === 'relay') return 'relay';
    return local?.candidateType ?? null;
  } catch (error) {
    // Not worth failing the check over.
  }
  return null;
}

const RELAYED = 'Your network only allows a relayed connection. That works, but video may be a little slower.';
const UNREACHABLE = {
  partner: 'We could not reach the video service from this network. Try another network (for example your '
    + 'phone\'s mobile data), or your therapist can call you instead.',
  therapist: 'We could not reach the video service from this network. Try another network (for example your '
    + 'phone\'s mobile data), or call your clients by phone instead.',
};

/**
 * Words for a check result. Thresholds are for a three-way call: each page sends two video
 * streams and receives two. `relay` is a line about the TURN relay, empty when none is set up.
 * @param {CheckResult} r
 * @param {{audience?: 'partner'|'therapist'}} [options]
 * @returns {{level: 'good'|'relayed'|'choppy'|'weak'|'failed', label: string, advice: string,
 *            numbers: string, relay: string}}
 */
export function verdict(r, { audience = 'partner' } = {}) {
  const relayLine = describeRelay(r.relay ?? null);
  // Relayed because this network allows nothing else (on a relay-only server, every call is).
  const relayed = !r.relay_only && (r.connected ? r.candidate === 'relay' : r.relay?.connected === true);
  if (!r.connected && !relayed) {
    return {
      level: 'failed', label: 'We could not connect', advice: UNREACHABLE[audience] ?? UNREACHABLE.partner,
      numbers: describeNumbers(r), relay: relayLine,
    };
  }
  if (!r.connected) {
    // Only the relay-only connection got through: no throughput figures, but it works.
    return {
      level: 'relayed', label: 'Works, through a relay', advice: RELAYED,
      numbers: describeNumbers({ ...r, rtt_ms: r.relay.rtt_ms }), relay: relayLine,
    };
  }
  const words = { ...qualityWords(r), numbers: describeNumbers(r), relay: relayLine };
  if (!relayed) return words;
  if (words.level === 'good') return { ...words, level: 'relayed', label: 'Works, through a relay', advice: RELAYED };
  return { ...words, advice: `Your network only allows a relayed connection. ${words.advice}` };
}

function qualityWords(r) {
  const rtt = r.rtt_ms ?? Infinity;
  const loss = r.loss ?? 1;
  const down = r.down_kbps ?? 0;
  const up = r.up_kbps ?? 0;
  if (rtt <= 250 && loss <= 0.02 && down >= 1500 && up >= 1200) {
    return { level: 'good', label: 'Good', advice: 'Your connection is good for video.' };
  }
  if (rtt <= 500 && loss <= 0.08 && down >= 500 && up >= 400) {
    return {
      level: 'choppy',
      label: 'May be choppy',
      advice: 'Video may freeze now and then. If you can, move closer to your Wi-Fi router or close '
        + 'other apps and downloads that use the internet.',
    };
  }
  return {
    level: 'weak',
    label: 'Too weak for video',
    advice: 'Sound may still work. Move closer to your Wi-Fi router, or switch between Wi-Fi and '
      + 'mobile data, then check again. During the session you can stop your video to keep the sound clear.',
  };
}

/** One line about the relay: whether each way of reaching it works. Empty without a relay. */
function describeRelay(relay) {
  if (!relay) return '';
  const reach = (works) => (works ? 'works' : 'could not reach it');
  const parts = [];
  if (relay.udp !== null) parts.push(`UDP relay: ${reach(relay.udp)}`);
  if (relay.tcp !== null) parts.push(`TCP relay: ${reach(relay.tcp)}`);
  if ((relay.udp || relay.tcp) && !relay.connected) parts.push('Connection through the relay: failed');
  return parts.join(' · ');
}

function describeNumbers(r) {
  const parts = [];
  if (r.rtt_ms !== null) parts.push(`Round trip ${Math.round(r.rtt_ms)} ms`);
  if (r.loss !== null) parts.push(`Lost packets ${Math.round(r.loss * 1000) / 10}%`);
  if (r.down_kbps !== null) parts.push(`Download ${(r.down_kbps / 1000).toFixed(1)} Mbit/s`);
  if (r.up_kbps !== null) parts.push(`Upload ${(r.up_kbps / 1000).toFixed(1)} Mbit/s`);
  return parts.join(' · ');
}
