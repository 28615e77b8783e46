// The network check: is the path from here to the server good enough for a call?
//
// DOM-free. Three measurements, each over the cheapest channel that tells the truth:
// - round trip and loss: a short real WebRTC connection to the server's probe
//   (media/probe.py), the path a call's media takes (ICE, DTLS, SCTP over UDP), with
//   unordered, never retransmitted pings. Signaling is one HTTP POST: we wait for ICE
//   gathering to finish and send the whole offer (no trickle);
// - download and upload speed: plain HTTP to the server (web/netcheck.py), bytes the server
//   does not pace. Through the probe's Python SCTP it cost the server a second of CPU per
//   check and, on a busy server, measured the server's CPU instead of the network;
// - whether the measurement itself was starved: how late this page's own timers fire while
//   it runs (a busy computer), and how late the server's loop has been waking (reported by
//   the server). A verdict never blames the network for what a starved measurement saw.
//
// A busy computer runs this page's scripts late, not its network: so every figure the verdict
// rests on is timed where the bytes move, not by this page's scripts. Transfers are timed by
// the browser's network stack (their Resource Timing entries), the round trip also by the ICE
// agent's own checks (the selected pair's round trip, timed on WebRTC's network thread).
// Only what the page timed itself (ping echoes, and transfers when a browser gives no timing
// entry) is set aside when the page was starved.
// `verdict` turns the numbers into words.
//
// When the server hands out a TURN relay, the check also proves the relay works from this
// network: it asks the relay for an address over UDP, and over TCP/TLS (the way out of
// networks that block UDP), and makes a real relay-only connection to the probe. Without a
// relay configured it says nothing about relays: there is nothing the person could do.

const TRANSFER_FIRST = 64 * 1024;
const TRANSFER_MAX = 4 * 1024 * 1024;
// What the browser's network stack buffers for a download the page has not read yet (Chromium
// gives a fetch body a data pipe of 512 KiB; half, to be safe): a page stalled for less than
// it takes the link to fill this never slowed the download's network-timed figure.
const UNREAD_BYTES = 256 * 1024;
// A download this small the server hands to its kernel in one go (web/netcheck.py sizes the
// socket's buffer to the body; Linux grants at least this much by default): the server's loop
// does not pace it. An upload this small fits the server's receive buffer whole, so a busy
// server can only be late with its reply, by at most its longest stall.
const SERVER_BUFFERS_BYTES = 200 * 1024;
// How long the check waits for the server's small answers (its ICE list, the probe's SDP, with
// the retries a busy server asks for): a request stuck on a stalled connection never ends by
// itself, and the person would watch "Checking…" for ever.
const ANSWER_WAIT_MS = 10000;
const OFFER_WAIT_MS = 20000;
// An upload still unanswered this long after its time was up: the link is at most that fast.
const UPLOAD_GRACE_MS = 8000;
// How long the pings' marker may take to come back (class Echoes): a server that fell behind
// the pings of several checks answers seconds late, and its late echoes are not lost.
const MARKER_WAIT_MS = 8000;

/**
 * @typedef {{udp: boolean|null, tcp: boolean|null, connected: boolean|null, rtt_ms: number|null}} RelayResult
 * udp/tcp: whether the relay gave us an address over that transport (null: no URL for it);
 * connected: whether a relay-only connection reached the probe.
 */

/**
 * @typedef {{p90_ms: number, max_ms: number}} Lateness
 * How late timers fired while the check ran (0 when on time).
 */

/**
 * @typedef {{connected: boolean, rtt_ms: number|null, jitter_ms: number|null, loss: number|null,
 *            loss_settled?: boolean, discarded_on_send?: number,
 *            down_kbps: number|null, up_kbps: number|null, candidate: string|null,
 *            ice_rtt_ms?: number|null, speed_timed_by?: 'network'|'page'|null,
 *            relay_only?: boolean, relay: RelayResult|null, error?: string,
 *            page_lag?: Lateness|null, server_lag?: Lateness|null, hidden?: boolean}} CheckResult
 * loss_settled: every echo that was coming had come (the marker was back, class Echoes) and
 * this browser dropped none of its packets itself (discarded_on_send: the selected pair's
 * packetsDiscardedOnSend over the pings), so the pings unanswered were lost on the way.
 * rtt_ms: the fastest ping's round trip (timed by this page); ice_rtt_ms: the ICE agent's own
 * round trip on the selected pair (timed on WebRTC's network thread).
 * speed_timed_by: 'network' when both transfers were timed by the browser's network stack,
 * 'page' when either was timed by this page's scripts (no timing entry).
 * relay_only: the server runs every call through the relay, so the check did too.
 * page_lag: this page's timers; server_lag: the server's loop (as it reported);
 * hidden: the page was in the background for part of the check (browsers slow its timers).
 * error 'rate_limited': the server was too busy to take the check.
 */

/**
 * @typedef {{level: 'good'|'relayed'|'choppy'|'weak'|'failed'|'busy'|'unmeasured', label: string,
 *            advice: string, numbers: string, relay: string}} Verdict
 * The words for a check result (`verdict`); `relay` is empty when no relay is set up.
 */

/** @typedef {Pick<Verdict, 'level'|'label'|'advice'>} Words */

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

/**
 * How late this page's timers fire, sampled every `everyMs` until `stop()`: on a computer
 * too busy to run the page on time, everything the check timed is late too.
 */
export class TimerLag {
  constructor({ now, timers, everyMs = 50, isHidden = () => globalThis.document?.visibilityState === 'hidden' }) {
    this.now = now;
    this.timers = timers;
    this.everyMs = everyMs;
    this.isHidden = isHidden;
    this.late = [];
    this.hidden = false;
    this.timer = null;
  }

  start() {
    const tick = (asked) => {
      this.late.push(Math.max(0, this.now() - asked - this.everyMs));
      this.hidden ||= this.isHidden();
      const at = this.now();
      this.timer = this.timers.setTimeout(() => tick(at), this.everyMs);
    };
    this.hidden = this.isHidden();
    const at = this.now();
    this.timer = this.timers.setTimeout(() => tick(at), this.everyMs);
    return this;
  }

  /** @returns {{lag: Lateness, hidden: boolean}} */
  stop() {
    this.timers.clearTimeout(this.timer);
    this.timer = null;
    const late = [...this.late].sort((a, b) => a - b);
    const lag = late.length
      ? { p90_ms: Math.round(late[Math.floor(0.9 * (late.length - 1))]), max_ms: Math.round(late[late.length - 1]) }
      : { p90_ms: 0, max_ms: 0 };
    return { lag, hidden: this.hidden };
  }
}

/**
 * `run(signal)`, whose requests are aborted with Error(`${what} timed out`) once `ms` have
 * passed, or at once when `outer` aborts (the person joined the call).
 */
async function withDeadline(ms, timers, what, run, outer = null) {
  const stop = new AbortController();
  const timer = timers.setTimeout(() => stop.abort(new Error(`${what} timed out`)), ms);
  const abort = () => stop.abort(outer.reason);
  outer?.addEventListener('abort', abort);
  try {
    return await run(stop.signal);
  } finally {
    timers.clearTimeout(timer);
    outer?.removeEventListener('abort', abort);
  }
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

/**
 * Run the check against `/j/<token>/netcheck`.
 * @param {{
 *   url: string, fetchImpl?: typeof fetch, RTCPeerConnectionImpl?: typeof RTCPeerConnection,
 *   now?: () => number, timers?: any, onStage?: (stage: string) => void,
 *   pings?: number, pingEveryMs?: number, downMs?: number, upMs?: number, connectTimeoutMs?: number,
 *   relayTimeoutMs?: number, signal?: AbortSignal, isHidden?: () => boolean, perf?: Performance,
 * }} options
 * Aborting (the person joined the call meanwhile) closes every connection at once, so the
 * check never competes with the call for bandwidth; the result then has error 'aborted'.
 * @returns {Promise<CheckResult>}
 */
export async function runNetworkCheck({
  url, fetchImpl = globalThis.fetch.bind(globalThis),
  RTCPeerConnectionImpl = globalThis.RTCPeerConnection,
  now = () => globalThis.performance.now(), timers = globalThis, onStage = () => {},
  pings = 200, pingEveryMs = 10, downMs = 1500, upMs = 1500, connectTimeoutMs = 10000, relayTimeoutMs = 5000,
  signal = null, isHidden = undefined, perf = globalThis.performance,
}) {
  /** @type {CheckResult} */
  const result = {
    connected: false, rtt_ms: null, jitter_ms: null, loss: null, loss_settled: false,
    down_kbps: null, up_kbps: null, candidate: null,
    ice_rtt_ms: null, speed_timed_by: null,
    relay_only: false, relay: null, page_lag: null, server_lag: null, hidden: false,
  };
  // Room for this check's timing entries, however many checks the page ran before.
  perf?.setResourceTimingBufferSize?.(Math.max(250, (perf.getEntriesByType?.('resource').length ?? 0) + 50));
  let iceServers = [];
  onStage('starting');
  try {
    const body = await withDeadline(ANSWER_WAIT_MS, timers, 'server', async (stop) => {
      const response = await fetchImpl(url, { credentials: 'omit', cache: 'no-store', signal: stop });
      return response.ok ? response.json() : null;
    }, signal);
    if (body) {
      iceServers = body.ice_servers ?? [];
      // A relay-only server's calls never go direct: check the path they will take.
      result.relay_only = body.ice_transport_policy === 'relay';
    }
  } catch (error) {
    // Without the server's ICE list we still try directly.
  }
  const io = { url, fetchImpl, RTCPeerConnectionImpl, now, timers, connectTimeoutMs, signal, perf };
  const relays = relayServers(iceServers);
  const relayConfigured = relays.udp.length > 0 || relays.tcp.length > 0;
  // Asking the relay for an address costs next to nothing: do it while the main check runs.
  const reachable = (servers) => (servers.length
    ? relayReachable(servers, { RTCPeerConnectionImpl, timers, timeoutMs: relayTimeoutMs, signal })
    : Promise.resolve(null));
  const reachability = relayConfigured ? Promise.all([reachable(relays.udp), reachable(relays.tcp)]) : null;

  const lag = new TimerLag({ now, timers, ...(isHidden ? { isHidden } : {}) }).start();
  try {
    await checkConnection(result, iceServers, { ...io, onStage, pings, pingEveryMs, downMs, upMs });
  } finally {
    const { lag: pageLag, hidden } = lag.stop();
    Object.assign(result, { page_lag: pageLag, hidden });
  }
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

/**
 * `fetch`, asked again a few times while the server says it is busy (429: other checks take
 * its slots); then ProbeRefused('rate_limited'). Other refusals: ProbeRefused(their code).
 */
async function fetchOrWait(fetchImpl, url, init, timers, waitsMs = [1000, 2000, 4000]) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetchImpl(url, init);
    if (response.ok) return response;
    const body = await response.json().catch(() => ({}));
    if (response.status !== 429 || attempt >= waitsMs.length) {
      throw new ProbeRefused(body.code || `http_${response.status}`);
    }
    // Spread the retries of pages refused together.
    await sleep(waitsMs[attempt] * (0.75 + Math.random() / 2), timers);
  }
}

/** Offer to the probe and take its answer (the whole of either: no trickle either side). */
async function offerToProbe(pc, { url, fetchImpl, timers }) {
  await pc.setLocalDescription();
  await within(gathered(pc), 5000, timers, 'ICE gathering').catch(() => {});
  const answer = await withDeadline(OFFER_WAIT_MS, timers, 'server answer', async (stop) => {
    const response = await fetchOrWait(fetchImpl, url, {
      method: 'POST', credentials: 'omit', cache: 'no-store', signal: stop,
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ type: pc.localDescription.type, sdp: pc.localDescription.sdp }),
    }, timers);
    return response.json();
  });
  await pc.setRemoteDescription(answer);
}

/**
 * What runNetworkCheck hands each of its steps.
 * @typedef {{url: string, fetchImpl: typeof fetch, RTCPeerConnectionImpl: typeof RTCPeerConnection,
 *            now: () => number, timers: any, connectTimeoutMs: number, signal: AbortSignal|null,
 *            perf: Performance}} Io
 */

/**
 * Over the path a call would take: connect, then round trip and loss; the speed over HTTP
 * while the connection stays open, so that echoes a busy machine delayed still come back.
 * @param {CheckResult} result
 * @param {RTCIceServer[]} iceServers
 * @param {Io & {onStage: (stage: string) => void, pings: number, pingEveryMs: number,
 *               downMs: number, upMs: number}} options
 */
async function checkConnection(result, iceServers, {
  RTCPeerConnectionImpl, now, timers, onStage, pings, pingEveryMs, downMs, upMs, connectTimeoutMs, signal, ...io
}) {
  const pc = new RTCPeerConnectionImpl({ iceServers, iceTransportPolicy: result.relay_only ? 'relay' : 'all' });
  const abort = () => pc.close();
  signal?.addEventListener('abort', abort);
  let echoes = null;
  try {
    onStage('connecting');
    const ping = pc.createDataChannel('ping', { ordered: false, maxRetransmits: 0 });
    const marker = pc.createDataChannel('marker');
    await offerToProbe(pc, { ...io, timers });
    await within(Promise.all([opened(ping), opened(marker)]), connectTimeoutMs, timers, 'connection');
    result.connected = true;

    onStage('latency');
    echoes = new Echoes(ping, now, marker);
    const discardedBefore = await discardedOnSend(pc);
    await echoes.send(pings, pingEveryMs, timers);
    result.discarded_on_send = (await discardedOnSend(pc)) - discardedBefore;
    Object.assign(result, echoes.summary());
    result.candidate = await selectedCandidateType(pc);
    if (!signal?.aborted) await checkSpeed(result, { ...io, now, timers, onStage, downMs, upMs, signal });
    Object.assign(result, echoes.summary());
    // Packets this browser dropped itself (a starved network thread) are not the network's.
    result.loss_settled &&= result.discarded_on_send === 0;
    // Read last: by now the ICE agent has checked the pair a few times more.
    result.ice_rtt_ms = await iceRoundTrip(pc);
  } catch (error) {
    result.error = (error && error.message) || 'failed';
  } finally {
    echoes?.stop();
    signal?.removeEventListener('abort', abort);
    // Done with the probe: its slot is free for the next person's check.
    pc.close();
  }
}

/** Download then upload speed over plain HTTP to the server. */
async function checkSpeed(result, { url, fetchImpl, now, timers, onStage, downMs, upMs, signal, perf }) {
  try {
    onStage('download');
    const down = await measureDown(url, { fetchImpl, now, timers, downMs, signal, perf });
    result.down_kbps = down.kbps;
    onStage('upload');
    const up = await measureUp(url, { fetchImpl, now, timers, upMs, signal, perf });
    result.up_kbps = up.kbps;
    result.speed_timed_by = down.timedBy === 'network' && up.timedBy === 'network' ? 'network' : 'page';
    Object.assign(result, { down_bytes: down.bytes, up_bytes: up.bytes, up_ms: up.ms });
    result.server_lag = up.serverLag;
  } catch (error) {
    if (!signal?.aborted) result.error = (error && error.message) || 'failed';
  }
}

/**
 * A relay-only connection to the probe (which answers through the relay too), and its delay.
 * @param {RTCIceServer[]} iceServers
 * @param {Io} options
 */
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

/**
 * Pings on an unordered, never retransmitted channel, and their echoes. An echo that comes
 * back late still came back: a busy computer or server delays echoes (a server that falls
 * behind, by seconds), only the network drops them. So after the last ping a `marker` goes on
 * a reliable channel of the same connection, and the probe echoes it behind every echo it
 * sent before: once the marker is back, a ping still unanswered was lost on the way
 * (`loss_settled`). Without a marker channel, or when the marker is not back within
 * MARKER_WAIT_MS, `loss` counts the pings unanswered while we listened, and is not settled.
 * The round trip is the fastest echo's. No echo comes back sooner than the path allows, and a
 * busy computer or server only ever adds to it. A median would read a queue as the path: a
 * server that falls behind several checks' pings answers each later than the one before (on
 * loopback with the machine busy, CI saw a median of 339 ms and "May be choppy").
 */
class Echoes {
  constructor(channel, now, marker = null) {
    this.channel = channel;
    this.now = now;
    this.marker = marker;
    this.settled = false;
    this.sentAt = new Map();
    this.sent = 0;
    this.rtts = [];
    channel.onmessage = (event) => {
      const seq = Number(String(event.data).split(':')[0]);
      const at = this.sentAt.get(seq);
      if (at !== undefined) {
        this.rtts.push(this.now() - at);
        this.sentAt.delete(seq);
      }
    };
  }

  async send(count, everyMs, timers) {
    // Small, like the packets of a voice call, so that a narrow link carries them unharmed.
    for (let i = 0; i < count && this.channel.readyState === 'open'; i += 1) {
      const seq = this.sent;
      this.sent += 1;
      this.sentAt.set(seq, this.now());
      this.channel.send(`${seq}:ping`);
      await sleep(everyMs, timers);
    }
    if (this.marker?.readyState === 'open') {
      const back = new Promise((resolve) => { this.marker.onmessage = resolve; });
      this.marker.send('marker');
      this.settled = await within(back, MARKER_WAIT_MS, timers, 'marker').then(() => true, () => false);
      this.marker.onmessage = null;
    } else {
      // Give late echoes a moment.
      const deadline = this.now() + 1000;
      while (this.sentAt.size > 0 && this.now() < deadline) await sleep(50, timers);
    }
  }

  stop() {
    this.channel.onmessage = null;
  }

  summary() {
    if (this.rtts.length === 0) return { rtt_ms: null, jitter_ms: null, loss: 1, loss_settled: this.settled };
    let jitter = 0;
    for (let i = 1; i < this.rtts.length; i += 1) jitter += Math.abs(this.rtts[i] - this.rtts[i - 1]);
    return {
      rtt_ms: Math.round(Math.min(...this.rtts) * 10) / 10,
      jitter_ms: this.rtts.length > 1 ? Math.round((jitter / (this.rtts.length - 1)) * 10) / 10 : 0,
      loss: Math.round((this.sentAt.size / Math.max(1, this.sent)) * 1000) / 1000,
      loss_settled: this.settled,
    };
  }
}

export async function measurePings(channel, { pings, pingEveryMs, now, timers, marker = null }) {
  const echoes = new Echoes(channel, now, marker);
  await echoes.send(pings, pingEveryMs, timers);
  echoes.stop();
  return echoes.summary();
}

let requestSerial = 0;

/** A URL of its own for each transfer, so that its Resource Timing entry is found by name. */
function transferUrl(path) {
  requestSerial += 1;
  const href = `${path}${path.includes('?') ? '&' : '?'}n=${requestSerial}`;
  return { href, absolute: new URL(href, globalThis.location?.href ?? 'http://localhost/').href };
}

/**
 * The Resource Timing entry of a finished request: its times are taken by the browser's network
 * stack as bytes arrive and leave, so a page too busy to run its scripts on time does not
 * stretch them. null when the browser gives none (then the page's own clock must do).
 */
async function timingEntry(perf, absolute, { now, timers, waitMs = 2000 }) {
  if (!perf?.getEntriesByName) return null;
  // The entry is queued once the response is complete, a task after the body was read.
  const until = now() + waitMs;
  for (;;) {
    const entries = perf.getEntriesByName(absolute, 'resource');
    const entry = entries[entries.length - 1];
    if (entry && entry.responseEnd > 0 && entry.responseStart > 0) return entry;
    if (now() >= until) return null;
    await sleep(20, timers);
  }
}

/** The size of the next transfer: aimed at about half the time left, at most 16 times more. */
function nextSize(size, ms, budgetMs) {
  return Math.min(TRANSFER_MAX, Math.round(size * Math.min(16, Math.max(2, budgetMs / 2 / Math.max(ms, 1)))));
}

/**
 * Download speed in kbit/s: GETs of a known size that grow until one takes long enough to time
 * well (or `downMs` is spent), each timed from the first byte of its response to the last
 * (connection setup and the request's trip are not counted). Timed by the network stack when
 * the browser gives a timing entry; by this page's clock otherwise, or when our own timer cut
 * a transfer short (a link this slow is weak however it is timed).
 * @returns {Promise<{kbps: number|null, timedBy: 'network'|'page'|null, bytes: number|null}>}
 */
async function measureDown(url, { fetchImpl, now, timers, downMs, signal, perf }) {
  let size = TRANSFER_FIRST;
  let out = { kbps: null, timedBy: null, bytes: null };
  const began = now();
  for (;;) {
    const { href, absolute } = transferUrl(`${url}/down?bytes=${size}`);
    const got = await downloadOnce(href, { fetchImpl, now, timers, signal, giveUpMs: downMs + 8000 });
    const entry = got.complete ? await timingEntry(perf, absolute, { now, timers }) : null;
    const ms = entry ? entry.responseEnd - entry.responseStart : got.pageMs;
    if (got.bytes > 0 && ms > 0) {
      out = { kbps: Math.round((got.bytes * 8) / ms), timedBy: entry ? 'network' : 'page', bytes: got.bytes };
    }
    if (!got.complete || ms >= downMs / 3 || now() - began >= downMs || size >= TRANSFER_MAX) break;
    size = nextSize(size, ms, downMs);
  }
  return out;
}

/** One download, read to its end (or until `giveUpMs`); the page's own timing of it as well. */
async function downloadOnce(href, { fetchImpl, now, timers, signal, giveUpMs }) {
  const stop = new AbortController();
  const abort = () => stop.abort();
  signal?.addEventListener('abort', abort);
  const give = timers.setTimeout(abort, giveUpMs);
  let first = null;
  let last = 0;
  let bytes = 0;
  let complete = false;
  try {
    const response = await fetchOrWait(fetchImpl, href,
      { credentials: 'omit', cache: 'no-store', signal: stop.signal }, timers);
    first = now();
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      bytes += value.byteLength;
      last = now();
    }
    complete = true;
  } catch (error) {
    if (error instanceof ProbeRefused || signal?.aborted) throw error;
    // Cut short by our own timer: what arrived until then still counts.
  } finally {
    timers.clearTimeout(give);
    signal?.removeEventListener('abort', abort);
    stop.abort();
  }
  return { bytes, complete, pageMs: first !== null && last > first ? last - first : 0 };
}

/**
 * Upload speed in kbit/s: POSTs that grow until one takes long enough to time well (or the
 * time is spent), each timed from sending the request to the first byte of the server's reply
 * (so it errs low by a round trip), by the network stack when the browser gives a timing
 * entry. The last reply also says how late the server's loop has been waking.
 * @returns {Promise<{kbps: number|null, timedBy: 'network'|'page'|null, bytes: number|null, ms: number|null,
 *                    serverLag: Lateness|null}>}
 */
async function measureUp(url, { fetchImpl, now, timers, upMs, signal, perf }) {
  let size = TRANSFER_FIRST;
  let out = { kbps: null, timedBy: null, bytes: null, ms: null, serverLag: null };
  const began = now();
  for (;;) {
    const { href, absolute } = transferUrl(`${url}/up`);
    const sent = now();
    let reply;
    try {
      reply = await withDeadline(upMs + UPLOAD_GRACE_MS, timers, 'upload', async (stop) => {
        const response = await fetchOrWait(fetchImpl, href, {
          method: 'POST', credentials: 'omit', cache: 'no-store', signal: stop,
          headers: { 'Content-Type': 'application/octet-stream' }, body: new Uint8Array(size),
        }, timers);
        return response.json();
      }, signal);
    } catch (error) {
      if (error instanceof ProbeRefused || signal?.aborted) throw error;
      // Not through in all that time: the link carries less than this, by the page's clock.
      if (out.kbps === null) out = { ...out, kbps: Math.round((size * 8) / (now() - sent)), timedBy: 'page', bytes: size };
      break;
    }
    const answered = now();
    const entry = await timingEntry(perf, absolute, { now, timers });
    const ms = entry ? entry.responseStart - entry.requestStart : answered - sent;
    if (reply.bytes === size && ms > 0) {
      out = { ...out, kbps: Math.round((size * 8) / ms), timedBy: entry ? 'network' : 'page', bytes: size, ms: Math.round(ms) };
    }
    out.serverLag = serverLateness(reply.server_lag_ms);
    if (ms >= upMs / 3 || now() - began >= upMs || size >= TRANSFER_MAX) break;
    size = nextSize(size, ms, upMs);
  }
  return out;
}

/** The server's report of its loop's lateness ({p90, max} in ms), as a Lateness. */
function serverLateness(reported) {
  if (!reported || typeof reported.p90 !== 'number' || typeof reported.max !== 'number') return null;
  return { p90_ms: reported.p90, max_ms: reported.max };
}

/**
 * The ICE agent's own round trip on the selected pair, in ms: its connectivity checks are
 * timed on WebRTC's network thread, not by this page's scripts. null when not reported.
 */
async function iceRoundTrip(pc) {
  try {
    const report = await pc.getStats();
    const pair = selectedPair(report);
    if (!pair) return null;
    if (pair.responsesReceived > 0 && typeof pair.totalRoundTripTime === 'number') {
      return Math.round((pair.totalRoundTripTime / pair.responsesReceived) * 10000) / 10;
    }
    if (typeof pair.currentRoundTripTime === 'number') return Math.round(pair.currentRoundTripTime * 10000) / 10;
  } catch (error) {
    // Not worth failing the check over.
  }
  return null;
}

/** Packets the browser dropped on the selected pair before they left (its queue was full). */
async function discardedOnSend(pc) {
  try {
    return selectedPair(await pc.getStats())?.packetsDiscardedOnSend ?? 0;
  } catch (error) {
    return 0;
  }
}

function selectedPair(report) {
  // The transport points at the pair in use (Chromium, Safari); Firefox flags it instead.
  let pair = null;
  for (const s of report.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) ?? null;
  }
  for (const s of report.values()) {
    if (!pair && s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
  }
  return pair;
}

async function selectedCandidateType(pc) {
  try {
    const report = await pc.getStats();
    const pair = selectedPair(report);
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
 * A verdict is about the path. A busy computer or server delays echoes and transfers as a weak
 * network would, and "switch to mobile data" would be the wrong advice. So when the
 * measurement was starved (this computer, the page in the background, or the server too busy),
 * the path is judged on what the starvation cannot have spoiled (`trusted`): loss, the ICE
 * agent's round trip, transfers timed by the network stack. Short of good on those, that is
 * the network's doing and the verdict says so; good on those but not on the rest, the words
 * say the measurement was starved instead of guessing.
 * @returns {Verdict}
 */
export function verdict(r, { audience = 'partner' } = {}) {
  const words = pathVerdict(r, audience);
  if (r.error === 'rate_limited') return { ...words, ...SERVER_BUSY };
  // Starvation only ever makes a path look worse: good is good.
  if (isFine(words)) return words;
  // Connected, then something broke before every figure was in: no figure, no guess.
  const incomplete = r.connected && r.error && [r.rtt_ms, r.loss, r.down_kbps, r.up_kbps].includes(null);
  const pageStarved = Boolean(r.hidden) || starved(r.page_lag);
  const serverStarved = starved(r.server_lag);
  if (!pageStarved && !serverStarved) return incomplete ? { ...words, ...INCOMPLETE } : words;
  if (r.connected) {
    const kept = trusted(r, { pageStarved, serverStarved });
    const keptWords = pathVerdict(kept.figures, audience);
    // Short of good on what the starvation cannot have spoiled, that is the network's doing;
    // good on every figure of the path, timed where starvation does not reach, the path is good.
    if (!isFine(keptWords) || kept.complete) {
      return { ...keptWords, numbers: describeNumbers(kept.rttByIce ? { ...r, rtt_ms: kept.figures.rtt_ms } : r) };
    }
  }
  // In the background the browser slows the page's timers on purpose: say that, not "busy".
  const starvedWords = (r.hidden && IN_BACKGROUND) || (pageStarved && COMPUTER_BUSY) || SERVER_BUSY;
  return { ...words, ...starvedWords };
}

function isFine(words) {
  return words.level === 'good' || words.level === 'relayed';
}

/**
 * The figures of a starved check, each kept if the starvation cannot have spoiled it and set to
 * its best otherwise (no delay, unlimited speed), so that only the kept ones can fail the path;
 * `complete` when every figure was kept.
 * Kept: loss once settled (the pings unanswered when the marker sent after them was back: a
 * stall delays echoes, it does not drop them); the ICE agent's round trip (timed on WebRTC's
 * network thread, not the page's), or the fastest echo when that was faster still (starvation
 * cannot make an echo early); transfers
 * timed by the network stack as bytes move (a download the page is slow to read waits only once
 * the browser's buffer for it is full: not while the page's longest stall is shorter than the
 * link takes to fill it). A busy server delays the round trips (it answers them); not a download
 * small enough to go to its kernel whole, and an upload that fits its receive buffer only by
 * the server's longest stall.
 */
function trusted(r, { pageStarved, serverStarved }) {
  const figures = { ...r };
  let complete = r.loss !== null;
  // A figure good as measured needs no trust (starvation only makes figures worse).
  const setAside = (key, best, goodEnough) => {
    figures[key] = best;
    if (!goodEnough) complete = false;
  };
  if (!r.loss_settled) setAside('loss', 0, r.loss !== null && r.loss <= GOOD.loss);
  const rttByIce = !serverStarved && typeof r.ice_rtt_ms === 'number';
  // Each only ever adds to the path's round trip: the smaller is the nearer.
  if (rttByIce) figures.rtt_ms = Math.min(r.ice_rtt_ms, r.rtt_ms ?? Infinity);
  else setAside('rtt_ms', 0, r.rtt_ms !== null && r.rtt_ms <= GOOD.rtt_ms);
  const byNetwork = r.speed_timed_by === 'network';
  const longestStall = r.hidden ? Infinity : (r.page_lag?.max_ms ?? 0);
  const fillsUnread = r.down_kbps > 0 && longestStall >= (UNREAD_BYTES * 8) / r.down_kbps;
  const serverPaced = serverStarved && !(r.down_bytes > 0 && r.down_bytes <= SERVER_BUFFERS_BYTES);
  if (r.down_kbps === null || serverPaced || (pageStarved && (!byNetwork || fillsUnread))) {
    setAside('down_kbps', Infinity, r.down_kbps !== null && r.down_kbps >= GOOD.down_kbps);
  }
  if (r.up_kbps === null || (pageStarved && !byNetwork)) {
    setAside('up_kbps', Infinity, r.up_kbps !== null && r.up_kbps >= GOOD.up_kbps);
  } else if (serverStarved) {
    // At best the server's reply was late by its longest stall.
    const fits = r.up_bytes > 0 && r.up_bytes <= SERVER_BUFFERS_BYTES && r.up_ms > r.server_lag.max_ms;
    const best = fits ? Math.round((r.up_bytes * 8) / (r.up_ms - r.server_lag.max_ms)) : Infinity;
    setAside('up_kbps', best, r.up_kbps >= GOOD.up_kbps || (fits && best < GOOD.up_kbps));
  }
  return { figures, complete, rttByIce };
}

/** @type {Words} */
const INCOMPLETE = {
  level: 'unmeasured',
  label: 'Could not measure the speed',
  advice: 'The check stopped before it was done. Please check again.',
};

// Timers this late mean the measurement, not the network, was slow. An idle or moderately
// loaded machine fires them within a few milliseconds.
export const STARVED = { p90_ms: 50, max_ms: 500 };

function starved(lag) {
  return Boolean(lag) && (lag.p90_ms > STARVED.p90_ms || lag.max_ms > STARVED.max_ms);
}

/** @type {Words} */
const COMPUTER_BUSY = {
  level: 'busy',
  label: 'Could not measure (your computer is busy)',
  advice: 'Your computer was too busy to measure the connection properly. Close other apps and browser '
    + 'tabs you do not need, then check again.',
};
/** @type {Words} */
const IN_BACKGROUND = {
  level: 'unmeasured',
  label: 'Could not measure the speed',
  advice: 'This page was in the background, so the browser slowed the check down. Keep this page open '
    + 'while it checks, then check again.',
};
/** @type {Words} */
const SERVER_BUSY = {
  level: 'unmeasured',
  label: 'Could not measure the speed',
  advice: 'The video service was busy and could not finish the check. Please check again in a minute.',
};

/** @returns {Verdict} */
function pathVerdict(r, audience) {
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

// What a path must reach to be good, or at least choppy. Loss is of round trips (a ping or its
// echo lost): 4 % each way is about 8 %.
const GOOD = { rtt_ms: 250, loss: 0.03, down_kbps: 1500, up_kbps: 1200 };
const CHOPPY = { rtt_ms: 500, loss: 0.15, down_kbps: 350, up_kbps: 300 };

/** @returns {Words} */
function qualityWords(r) {
  const rtt = r.rtt_ms ?? Infinity;
  const loss = r.loss ?? 1;
  const down = r.down_kbps ?? 0;
  const up = r.up_kbps ?? 0;
  if (rtt <= GOOD.rtt_ms && loss <= GOOD.loss && down >= GOOD.down_kbps && up >= GOOD.up_kbps) {
    return { level: 'good', label: 'Good', advice: 'Your connection is good for video.' };
  }
  if (rtt <= CHOPPY.rtt_ms && loss <= CHOPPY.loss && down >= CHOPPY.down_kbps && up >= CHOPPY.up_kbps) {
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
