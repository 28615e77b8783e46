// Every message the browser's signaling client sends, as it sends them: the real
// web/static/signaling.js (and stats.js for the stats it reports) driven in node over a fake
// socket that keeps each frame. Prints them as one JSON array; tests/test_protocol_schema.py
// validates each against docs/protocol.schema.json.
//
// Usage: node tests/client_messages.mjs

import { SignalingClient } from '../web/static/signaling.js';
import { linkStatsFromReport } from '../web/static/stats.js';

const sent = [];

class FakeSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 1;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }

  send(data) {
    sent.push(JSON.parse(data));
  }

  close() {
    this.readyState = 3;
  }
}

// No timer ever fires: the client's pings and reconnects are not what this collects.
const timers = {
  setTimeout: () => 0, clearTimeout: () => {}, setInterval: () => 0, clearInterval: () => {},
};
const client = new SignalingClient({
  url: 'ws://127.0.0.1/ws', token: 'a'.repeat(43), WebSocketImpl: /** @type {any} */ (FakeSocket), timers,
  now: () => 1_700_000_000_000,
});
client.connect();
client._ws.onopen(); // sends join

// A stats report as Chromium gives it: two samples a second apart, so rates are present.
function report(t) {
  return new Map(Object.entries({
    T: { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' },
    CP: { id: 'CP', type: 'candidate-pair', localCandidateId: 'L', remoteCandidateId: 'R',
          currentRoundTripTime: 0.042, availableOutgoingBitrate: 1_500_000, state: 'succeeded', nominated: true },
    L: { id: 'L', type: 'local-candidate', candidateType: 'relay' },
    R: { id: 'R', type: 'remote-candidate', candidateType: 'srflx' },
    IA: { id: 'IA', type: 'inbound-rtp', kind: 'audio', packetsReceived: 50 * t, packetsLost: t, bytesReceived: 4000 * t,
          jitter: 0.004, concealedSamples: 10 * t, totalSamplesReceived: 48000 * t },
    IV: { id: 'IV', type: 'inbound-rtp', kind: 'video', packetsReceived: 300 * t, packetsLost: 0, bytesReceived: 90000 * t,
          jitter: 0.01, framesDecoded: 30 * t, framesDropped: t, framesPerSecond: 29.7 },
    OV: { id: 'OV', type: 'outbound-rtp', kind: 'video', bytesSent: 80000 * t, qualityLimitationReason: 'bandwidth',
          framesPerSecond: 24.5 },
    RI: { id: 'RI', type: 'remote-inbound-rtp', roundTripTime: 0.05 },
  }));
}
const first = linkStatsFromReport(report(1), null, 1000, { peer: 'p_b', pcId: 'pc-1', lagMs: 3 });
const second = linkStatsFromReport(report(2), first.snapshot, 2000, { peer: 'p_b', pcId: 'pc-1', sendCap: 300_000, lagMs: 4 });
const audioOnly = linkStatsFromReport(new Map(), null, 0, { peer: 'p_c', video: false });

client.sdp('p_b', 'pc-1', { type: 'offer', sdp: 'v=0\r\n' });
client.sdp('p_b', 'pc-1', { type: 'answer', sdp: 'v=0\r\n' });
client.candidate('p_b', 'pc-1', { candidate: 'candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host', sdpMid: '0',
                                  sdpMLineIndex: 0, usernameFragment: 'abcd' });
client.candidate('p_b', 'pc-1', { candidate: 'candidate:2 1 udp 1 192.0.2.2 3478 typ relay' });
client.candidate('p_b', 'pc-1', null);
client.restart('p_b');
client.restart('p_b', 'pc-1');
client.ping();
client.media(true, false);
client.stats([first.stats, second.stats, audioOnly.stats]);
client.admit('p_b');
client.remove('p_b');
client.mute('p_b');
client.mute('p_b', 'video');
client.lock(true);
client.lock(false);
client.switchToPhone('p_b');
client.returnToVideo('p_b');
client.returnToVideo();
client.hold();
client.resume();
for (const step of ['ice_restart', 'fresh_connection', 'page_rejoin']) client.rejoinResult(step, step !== 'page_rejoin');
client.checkIn({ private_space: true, headphones: false, charged: true, not_driving: true, moving_car: false });
client.confirmPhone();
client.confirmPhone('+1 202 555 0188');
client.getLedger();
client.leave();
client.end();
client.depart(); // last: the client sends nothing after it

process.stdout.write(JSON.stringify(sent));
