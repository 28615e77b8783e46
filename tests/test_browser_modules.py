"""The page's DOM-free modules, run in Chromium as the pages load them, with fakes only at
their seams (a socket, a clock, a stats report)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page

from tests.browser import browser, new_person_context  # noqa: F401  (browser is a fixture)
from tests.conftest import RunningServer

pytestmark = pytest.mark.browser

# A WebSocket and timers the test drives by hand.
SEAMS = """
window.seams = () => {
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this); }
    send(data) { this.sent.push(JSON.parse(data)); }
    close() { this.readyState = 3; }
    open() { this.readyState = 1; this.onopen?.(); }
    receive(message) { this.onmessage?.({ data: JSON.stringify(message) }); }
    drop(code = 1006) { this.readyState = 3; this.onclose?.({ code }); }
  }
  let now = 0;
  let next = 1;
  const pending = new Map();
  const timers = {
    setTimeout: (fn, ms) => { const id = next++; pending.set(id, { at: now + ms, fn }); return id; },
    clearTimeout: (id) => pending.delete(id),
    setInterval: (fn, ms) => { const id = next++; pending.set(id, { at: now + ms, fn, every: ms }); return id; },
    clearInterval: (id) => pending.delete(id),
  };
  const advance = (ms) => {
    const until = now + ms;
    for (;;) {
      const due = [...pending.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      const [id, t] = due;
      now = t.at;
      if (t.every) t.at += t.every; else pending.delete(id);
      t.fn();
    }
    now = until;
  };
  const delays = () => [...pending.values()].filter((t) => !t.every).map((t) => t.at - now);
  return { FakeSocket, sockets, timers, advance, delays, clock: () => now };
};
"""


@pytest.fixture
async def page(server: RunningServer, browser: Browser) -> AsyncIterator[Page]:  # noqa: F811
    context = await new_person_context(browser, ())
    await context.add_init_script(SEAMS)
    opened = await context.new_page()
    await opened.goto(f"{server.base_url}/")
    yield opened
    await context.close()


async def test_signaling_joins_with_the_token_in_the_message_and_resumes_after_a_drop(page: Page) -> None:
    result = await page.evaluate(
        """async () => {
            const { SignalingClient, socketUrl, tokenFromPath } = await import('/static/signaling.js');
            const s = seams();
            const token = tokenFromPath('/j/' + 'T'.repeat(43));
            const client = new SignalingClient({ url: socketUrl(location), token, WebSocketImpl: s.FakeSocket,
                                                  timers: s.timers, now: s.clock, random: () => 0.5 });
            const states = [];
            client.on('connection', (c) => states.push(c.state));
            const welcomes = [];
            client.on('welcome', (m) => welcomes.push(m.resumed));
            client.connect();
            const first = s.sockets[0];
            first.open();
            const you = { id: 'p_1', role: 'partner', name: 'Alex' };
            first.receive({ type: 'welcome', v: 1, you, room: { id: 'r', locked: false }, peers: [], resumed: false, ice_servers: [], grace_s: 45 });

            first.drop();                        // the network goes away without a goodbye
            const retryIn = s.delays();
            s.advance(retryIn[0]);
            const second = s.sockets[1];
            second.open();
            second.receive({ type: 'welcome', v: 1, you, room: { id: 'r', locked: false }, peers: [], resumed: true, ice_servers: [], grace_s: 45 });

            // A socket that stays silent through pings is dropped and replaced.
            s.advance(21000);
            const thirdMade = s.sockets.length === 3;

            return { url: first.url, join: first.sent[0], rejoin: second.sent[0], states, welcomes, retryIn,
                     thirdMade, pinged: second.sent.some((m) => m.type === 'ping') };
        }"""
    )
    assert result["url"].endswith("/ws") and "T" * 43 not in result["url"]
    assert result["join"] == {"type": "join", "v": 1, "token": "T" * 43}
    assert result["rejoin"] == result["join"]
    assert result["welcomes"] == [False, True]
    assert result["states"][:4] == ["connecting", "open", "reconnecting", "connecting"]
    assert result["retryIn"] == [500]
    assert result["pinged"] and result["thirdMade"]


async def test_signaling_backs_off_and_stops_when_the_session_is_over(page: Page) -> None:
    result = await page.evaluate(
        """async () => {
            const { SignalingClient } = await import('/static/signaling.js');
            const s = seams();
            const client = new SignalingClient({ url: 'ws://x/ws', token: 't', WebSocketImpl: s.FakeSocket,
                                                  timers: s.timers, now: s.clock, random: () => 0.5 });
            const closed = [];
            client.on('closed', (d) => closed.push(d.reason));
            client.connect();
            // Never opens: the attempt times out after 10 s, then waits longer each time.
            const waits = [];
            for (let i = 0; i < 5; i++) {
                s.advance(10000);
                waits.push(s.delays()[0]);
                s.advance(s.delays()[0]);
            }
            const attempts = s.sockets.length;
            const last = s.sockets[attempts - 1];
            last.open();
            last.receive({ type: 'bye', reason: 'room_ended', action: 'none', message: 'The session has ended.' });
            last.drop(4001);
            s.advance(60000);
            const afterBye = s.sockets.length;

            // A refused join is final too.
            const refused = new SignalingClient({ url: 'ws://x/ws', token: 't', WebSocketImpl: s.FakeSocket,
                                                  timers: s.timers, now: s.clock });
            refused.on('closed', (d) => closed.push(d.reason));
            refused.connect();
            const sock = s.sockets[s.sockets.length - 1];
            sock.open();
            sock.receive({ type: 'error', code: 'bad_link', message: 'no', ref: 'join' });
            s.advance(60000);
            return { waits, attempts, afterBye, closed, total: s.sockets.length, state: client.state };
        }"""
    )
    assert result["waits"] == [500, 1000, 2000, 4000, 8000]
    assert result["afterBye"] == result["attempts"] == 6
    assert result["closed"] == ["room_ended", "bad_link"]
    assert result["total"] == 7 and result["state"] == "closed"


async def test_link_stats_from_a_report(page: Page) -> None:
    stats = await page.evaluate(
        """async () => {
            const { linkStatsFromReport } = await import('/static/stats.js');
            const report = (packets, lost, bytes, frames, concealed, samples, sent) => new Map([
                ['T', { id: 'T', type: 'transport', selectedCandidatePairId: 'CP' }],
                ['CP', { id: 'CP', type: 'candidate-pair', currentRoundTripTime: 0.042, localCandidateId: 'L', remoteCandidateId: 'R' }],
                ['L', { id: 'L', type: 'local-candidate', candidateType: 'srflx' }],
                ['R', { id: 'R', type: 'remote-candidate', candidateType: 'relay' }],
                ['A', { id: 'A', type: 'inbound-rtp', kind: 'audio', packetsReceived: packets, packetsLost: lost,
                        bytesReceived: bytes, jitter: 0.012, concealedSamples: concealed, totalSamplesReceived: samples }],
                ['V', { id: 'V', type: 'inbound-rtp', kind: 'video', packetsReceived: packets * 2, packetsLost: 0,
                        bytesReceived: bytes * 10, jitter: 0.02, framesDecoded: frames, framesDropped: 1, framesPerSecond: 24 }],
                ['O', { id: 'O', type: 'outbound-rtp', kind: 'video', bytesSent: sent }],
            ]);
            const about = { peer: 'p_2', pcId: 'abc', video: true };
            const first = linkStatsFromReport(report(100, 0, 10000, 50, 0, 48000, 50000), null, 1000, about);
            const second = linkStatsFromReport(report(150, 10, 15000, 74, 960, 96000, 175000), first.snapshot, 2000, about);
            return [first.stats, second.stats];
        }"""
    )
    first, second = stats
    assert first == {"peer": "p_2", "pc": "abc", "video": True, "rtt_ms": 42, "jitter_ms": 12, "loss": 0,
                     "packets_in": 300, "bytes_in": 110000, "frames_decoded": 50, "frames_dropped": 1,
                     "fps": 24, "concealed": 0, "candidate": "relay"}
    # Over the second: 10 lost of 160 audio+video packets, 1/50 of the audio concealed.
    assert second["loss"] == round(10 / (10 + 150), 4)
    assert second["concealed"] == 0.02
    assert second["in_bitrate"] == (165000 - 110000) * 8 and second["out_bitrate"] == 125000 * 8
    assert second["packets_in"] == 450


async def test_the_quality_indicator_smooths_local_estimates_and_defers_to_the_server(page: Page) -> None:
    result = await page.evaluate(
        """async () => {
            const { QualityBoard, levelFromStats, peerLevels } = await import('/static/quality.js');
            let now = 0;
            const board = new QualityBoard({ now: () => now });
            const shown = [];
            board.on('change', (c) => shown.push([now, c.level, c.source]));
            const good = { peer: 'b', rtt_ms: 30, loss: 0, packets_in: 1000, concealed: 0, fps: 24, frames_decoded: 500 };
            const fair = { ...good, loss: 0.04 };
            const poor = { ...good, loss: 0.2 };
            const tick = (s) => { now += 1000; board.fromStats('b', s); };
            tick(good); tick(fair); tick(good);  // one unsteady second is not shown
            tick(poor); tick(poor);              // two in a row are
            tick(good); tick(good); tick(good); tick(good);  // better shows once it has held 3 s
            board.fromServer('b', 'lost');       // the server's verdict shows at once ...
            tick(good); tick(good); tick(good); tick(good);  // ... and stands over local estimates
            board.serverGone();                  // until our signaling drops
            now += 10000; tick(good); tick(good); tick(good); tick(good);
            return {
                shown,
                levels: [good, fair, poor, { ...good, packets_in: 10, loss: 0.5 }, { rtt_ms: null, loss: null }].map(levelFromStats),
                pairs: [...peerLevels({ links: [{ a: 'me', b: 'x', level: 'poor' }, { a: 'y', b: 'me', level: 'good' },
                                               { a: 'x', b: 'y', level: 'lost' }] }, 'me')],
            };
        }"""
    )
    assert result["shown"] == [
        [1000, "good", "local"], [5000, "poor", "local"], [9000, "good", "local"],
        [9000, "lost", "server"], [27000, "good", "local"],
    ]
    # Loss in the first seconds (few packets) is buffers settling, not a bad link.
    assert result["levels"] == ["good", "fair", "poor", "good", None]
    assert result["pairs"] == [["x", "poor"], ["y", "good"]]


async def test_link_stats_carry_what_limits_our_sending_the_steps_cap_and_the_pages_lag(page: Page) -> None:
    stats = await page.evaluate(
        """async () => {
            const { linkStatsFromReport } = await import('/static/stats.js');
            const report = (reason) => new Map([
                ['A', { id: 'A', type: 'inbound-rtp', kind: 'audio', packetsReceived: 100, packetsLost: 0, bytesReceived: 1000 }],
                ['O', { id: 'O', type: 'outbound-rtp', kind: 'video', bytesSent: 5000, framesPerSecond: 11,
                        qualityLimitationReason: reason }],
                ['OA', { id: 'OA', type: 'outbound-rtp', kind: 'audio', bytesSent: 900 }],
            ]);
            const about = { peer: 'p_2', pcId: 'abc', video: true, sendCap: 250000, lagMs: 212.4 };
            return [
                linkStatsFromReport(report('cpu'), null, 1000, about).stats,
                linkStatsFromReport(report('bandwidth'), null, 1000, { ...about, sendCap: null, lagMs: null }).stats,
                linkStatsFromReport(report('nonsense'), null, 1000, { ...about, video: false }).stats,
            ];
        }"""
    )
    busy, narrow, paused = stats
    assert (busy["send_limit"], busy["send_fps"], busy["send_cap"], busy["lag_ms"]) == ("cpu", 11, 250000, 212)
    assert narrow["send_limit"] == "bandwidth" and "send_cap" not in narrow and "lag_ms" not in narrow
    # Not a reason the protocol knows: left out. No video expected: no cap to judge against.
    assert "send_limit" not in paused and "send_cap" not in paused


async def losses_of(page: Page, steps: list[tuple[int, int, int, int]]) -> list[float | None]:
    """The loss a page reports for a link whose inbound counters read ``steps`` (audio in,
    audio lost, video in, video lost), one sample every 250 ms."""
    result: list[float | None] = await page.evaluate(
        """async (steps) => {
            const { linkStatsFromReport } = await import('/static/stats.js');
            const report = (audioIn, audioLost, videoIn, videoLost) => new Map([
                ['A', { id: 'A', type: 'inbound-rtp', kind: 'audio', packetsReceived: audioIn, packetsLost: audioLost }],
                ['V', { id: 'V', type: 'inbound-rtp', kind: 'video', packetsReceived: videoIn, packetsLost: videoLost }],
            ]);
            const about = { peer: 'p_2', pcId: 'abc', video: true };
            let snapshot = null;
            return steps.map(([a, al, v, vl], i) => {
                const r = linkStatsFromReport(report(a, al, v, vl), snapshot, 1000 + 250 * i, about);
                snapshot = r.snapshot;
                return r.stats.loss ?? null;
            });
        }""",
        steps,
    )
    return result


async def test_a_paused_streams_sequence_gap_is_not_counted_as_loss_when_it_flows_again(page: Page) -> None:
    """Firefox's video resumed after audio only reads 28-54 % lost in its first interval: the
    packets it never sent while paused. Loss while the stream flows still counts."""
    losses = await losses_of(page, [(100, 0, 500, 0), (150, 0, 600, 0), (200, 0, 600, 0), (250, 0, 600, 0),
                                    (300, 0, 640, 60), (350, 0, 700, 60), (400, 0, 760, 60), (450, 0, 820, 60),
                                    (500, 0, 880, 66)])
    # flowing, paused twice, back with a gap of 60 (not loss), flowing, 6 lost while flowing
    # a second after it resumed
    assert losses[1:] == [0, 0, 0, 0, 0, 0, 0, round(6 / (6 + 110), 4)]


async def test_a_resumed_streams_gap_that_lands_in_the_next_interval_is_not_loss_either(page: Page) -> None:
    """Seen with a Firefox partner after audio only: the first interval of resumed video had
    a few packets, the gap came in the next, and the probe read poor on a clean link."""
    losses = await losses_of(page, [(100, 0, 500, 0), (150, 0, 600, 0), (200, 0, 600, 0), (250, 0, 600, 0),
                                    (300, 0, 610, 20), (350, 0, 680, 60), (400, 5, 740, 60), (450, 5, 800, 60),
                                    (500, 5, 860, 66)])
    # Resumed at 2.0 s: its gap (20, then 40 more) is not loss for a second, but the sound's
    # 5 lost in the meantime are; from 3.0 s the video's 6 lost count again.
    assert losses[4:] == [0, 0, round(5 / (5 + 110), 4), 0, round(6 / (6 + 110), 4)]


async def test_without_a_pair_round_trip_the_intervals_rtcp_round_trips_count_not_a_stale_one(page: Page) -> None:
    """Firefox gives no candidate-pair round trip; its paused video's RTCP round trip kept the
    443 ms of a narrow spell for 8 s after the path was clear, and read as a weak link."""
    rtts = await page.evaluate(
        """async () => {
            const { linkStatsFromReport } = await import('/static/stats.js');
            const report = (audio, video) => new Map([
                ['RA', { id: 'RA', type: 'remote-inbound-rtp', kind: 'audio', roundTripTime: audio[0],
                         totalRoundTripTime: audio[1], roundTripTimeMeasurements: audio[2] }],
                ['RV', { id: 'RV', type: 'remote-inbound-rtp', kind: 'video', roundTripTime: video[0],
                         totalRoundTripTime: video[1], roundTripTimeMeasurements: video[2] }],
            ]);
            const about = { peer: 'p_2', pcId: 'abc', video: true };
            const steps = [[[0.44, 4.4, 10], [0.443, 4.43, 10]],   // the spell: 440 ms
                           [[0.02, 4.42, 11], [0.443, 4.43, 10]],  // clear: audio measures 20 ms, video stale
                           [[0.01, 4.43, 12], [0.443, 4.43, 10]],
                           [[0.01, 4.43, 12], [0.443, 4.43, 10]]]; // nothing measured this interval
            let snapshot = null;
            return steps.map(([a, v], i) => {
                const r = linkStatsFromReport(report(a, v), snapshot, 1000 + 1000 * i, about);
                snapshot = r.snapshot;
                return r.stats.rtt_ms ?? null;
            });
        }"""
    )
    assert rtts == [443.0, 20.0, 10.0, None]


async def test_link_stats_carry_the_encoders_time_per_frame_over_the_interval(page: Page) -> None:
    """Numbers as a starved Chromium reported them: 20 frames in 1.8 s of encoding."""
    stats = await page.evaluate(
        """async () => {
            const { linkStatsFromReport } = await import('/static/stats.js');
            const report = (frames, seconds) => new Map([
                ['O', { id: 'O', type: 'outbound-rtp', kind: 'video', bytesSent: 5000, framesPerSecond: 5,
                        qualityLimitationReason: 'none', framesEncoded: frames, totalEncodeTime: seconds }],
            ]);
            const about = { peer: 'p_2', pcId: 'abc', video: true };
            const first = linkStatsFromReport(report(132, 5.103), null, 1000, about);
            const second = linkStatsFromReport(report(152, 6.906), first.snapshot, 4000, about);
            const idle = linkStatsFromReport(report(152, 6.906), second.snapshot, 5000, about);
            return [first.stats, second.stats, idle.stats];
        }"""
    )
    first, starved, idle = stats
    assert "encode_ms" not in first  # nothing to compare with yet
    assert starved["encode_ms"] == 90.2
    assert "encode_ms" not in idle  # no frame encoded in the interval


async def test_local_estimates_use_the_networks_signals_only(page: Page) -> None:
    levels = await page.evaluate(
        """async () => {
            const { levelFromStats } = await import('/static/quality.js');
            const clean = { peer: 'b', rtt_ms: 30, loss: 0, packets_in: 1000, concealed: 0, fps: 24, frames_decoded: 500,
                            in_bitrate: 600000 };
            return [
                { ...clean, packets_in: 40, concealed: 0.2, in_bitrate: 0, fps: 0, frames_decoded: 0 },  // a call's first second
                { ...clean, concealed: 0.18 },   // a busy receiver conceals with nothing lost
                { ...clean, fps: 3 },            // a busy computer shows few frames
                { ...clean, in_bitrate: 0 },     // video paused: nothing arrives but sound
                { ...clean, loss: 0.04 },
                { ...clean, loss: 0.12 },
                { ...clean, rtt_ms: 700 },
            ].map(levelFromStats);
        }"""
    )
    assert levels == ["good", "good", "good", "good", "fair", "poor", "poor"]


async def test_page_lag_is_the_mean_lateness_of_its_timer_and_nothing_while_hidden(page: Page) -> None:
    result = await page.evaluate(
        """async () => {
            const { PageLag } = await import('/static/stats.js');
            let now = 0;
            let hidden = false;
            const lag = new PageLag({ everyMs: 100, now: () => now, hidden: () => hidden });
            lag._last = 0;
            const run = (...gaps) => { for (const gap of gaps) { now += gap; lag.tick(); } };
            run(100, 101, 99, 100);
            const idle = lag.take();
            run(300, 100, 500, 100);        // a busy page: its timer runs late
            const busy = lag.take();
            now += 900;                     // a page whose timer did not run at all since
            const stuck = lag.take();
            run(100, 15000, 100);           // back from a frozen page: a stop, not a busy device
            const thawed = lag.take();
            hidden = true;
            run(1000, 1000);                // a background tab: slowed on purpose
            const background = lag.take();
            return { idle, busy, stuck, thawed, background };
        }"""
    )
    assert result["idle"] < 1
    assert result["busy"] == (200 + 0 + 400 + 0) / 4
    assert result["stuck"] == 800
    assert result["thawed"] == 0
    assert result["background"] is None


# Two meshes in one page, joined by an in-page relay in place of the server: real
# RTCPeerConnections on loopback, our video drawn on a canvas.
TWO_MESHES = """async () => {
    const { Mesh } = await import('/static/peers.js');
    const handlers = { a: new Map(), b: new Map() };
    const deliver = (to, type, message) => setTimeout(() => handlers[to].get(type)?.(message), 0);
    const relay = (self) => ({
        on: (type, fn) => { handlers[self].set(type, fn); return () => handlers[self].delete(type); },
        sdp: (to, pc, description) => deliver(to, 'sdp', { from: self, pc, description }),
        candidate: (to, pc, candidate) => deliver(to, 'candidate', { from: self, pc, candidate }),
        restart: (to, pc) => deliver(to, 'restart', { from: self, pc }),
    });
    const canvas = document.createElement('canvas');
    canvas.width = 320; canvas.height = 240;
    const paint = canvas.getContext('2d');
    setInterval(() => { paint.fillStyle = `hsl(${Date.now() % 360} 80% 50%)`; paint.fillRect(0, 0, 320, 240); }, 33);
    const camera = canvas.captureStream(15).getVideoTracks()[0];
    window.clockAhead = 0;
    const now = () => Date.now() + window.clockAhead;
    const a = new Mesh({ signaling: relay('a'), localTracks: () => [camera], now });
    const b = new Mesh({ signaling: relay('b'), localTracks: () => [], now });
    const connected = (mesh) => new Promise((resolve) => mesh.on('state', (e) => e.state === 'connected' && resolve()));
    const both = Promise.all([connected(a), connected(b)]);
    const info = (id, offer) => ({ id, role: 'partner', name: '', state: 'in_call', offer });
    handlers.a.get('welcome')({ peers: [info('b', true)], resumed: false, ice_servers: [] });
    handlers.b.get('welcome')({ peers: [info('a', false)], resumed: false, ice_servers: [] });
    await both;
    window.warnings = [];
    const warn = console.warn;
    console.warn = (...args) => { window.warnings.push(args.map(String).join(' ')); warn(...args); };
    window.meshes = { a, b };
    window.sent = () => {
        const sender = a.links.get('b').pc.getSenders().find((s) => s.track?.kind === 'video');
        const [e] = sender.getParameters().encodings;
        return { active: e.active, scale: e.scaleResolutionDownBy ?? 1, maxBitrate: e.maxBitrate ?? null };
    };
    window.framesAtB = async () => {
        const report = await b.links.get('a').pc.getStats();
        let frames = 0;
        report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded ?? 0; });
        return frames;
    };
}"""


async def test_a_key_frame_restart_racing_a_policy_change_ends_as_the_policy_says(page: Page) -> None:
    """The flow turns video off (or lowers it) while a restart from a key frame is under way:
    the picture must end as the flow decided, not resumed by the restart, and no change may be
    refused for reading the sender's parameters while another change is in flight."""
    await page.evaluate(TWO_MESHES)
    result = await page.evaluate(
        """async () => {
            const { a } = window.meshes;
            window.clockAhead = 5000;                      // past the young-connection guard
            const steps = {};
            await Promise.all([a.refreshVideo('b'), a.setSendPolicy('b', { video: 'off' })]);
            steps.off = window.sent();
            await a.setSendPolicy('b', { video: 'lowered' });
            await Promise.all([a.refreshVideo('b'), a.refreshVideo('b')]);
            steps.lowered = window.sent();
            const burst = [];
            for (let i = 0; i < 12; i += 1) {
                burst.push(a.refreshVideo('b'));
                burst.push(a.setSendPolicy('b', { video: ['off', 'lowered', 'full'][i % 3] }));
            }
            await Promise.all(burst);
            steps.full = window.sent();
            return { steps, warnings: window.warnings };
        }"""
    )
    assert result["steps"]["off"] == {"active": False, "scale": 1, "maxBitrate": None}
    assert result["steps"]["lowered"] == {"active": True, "scale": 2, "maxBitrate": 250000}
    assert result["steps"]["full"] == {"active": True, "scale": 1, "maxBitrate": None}
    assert result["warnings"] == []
    # And the picture flows to the other side.
    first = await page.evaluate("window.framesAtB()")
    await page.wait_for_function(f"window.framesAtB().then((n) => n > {first} + 5)", polling=200, timeout=15000)
