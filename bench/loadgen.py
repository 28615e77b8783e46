"""Load generator for the signaling benchmark, run as its own process (pinned apart from the server).

Each process plays whole rooms of three synthetic participants against one target:
``ours`` (telehealth), ``bare`` (bench/bare_relay.py) or ``peerjs`` (the PeerJS server). No media:
only the signaling a real join makes (join, the therapist's admit, then on every pair an offer,
an answer and three trickled candidates each way), stats of two links every 250 ms per
participant (the pages' STATS_EVERY_MS in web/static/session.js, with every LinkStats field
stats.js sends), a relayed candidate every two seconds per participant as an open-loop latency
probe, and rejoins churning (close the socket, open a new one with the same link).

The client is a minimal WebSocket speaker on asyncio.Protocol rather than aiohttp's client, so
that one core of load generator can drive well over ten thousand participants; its frames carry
an all-zero mask key (legal, and it makes masking free). Relay latency is the time from a
sender's write to the target's read: the sender writes ``x-sent=<CLOCK_MONOTONIC ns>`` into the
SDP or candidate text, which every target relays untouched, and all processes share that clock.

Usage (the driver does this): python -m bench.loadgen CONFIG.json
Control: the process prints ``{"event": "ready", ...}`` once its rooms are in the call, waits for
``go T_START T_END`` (monotonic seconds) on stdin, churns and measures, and prints
``{"event": "result", ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

Target = Literal["ours", "bare", "peerjs"]

ZERO_MASK = b"\x00\x00\x00\x00"
CLOSE_FRAME = b"\x88\x82" + ZERO_MASK + (1000).to_bytes(2, "big")
MARK = b"x-sent="
TICK = 0.025
# How often each participant sends its stats: what the pages do (web/static/session.js,
# STATS_EVERY_MS); the driver may model another interval (--stats-every-ms).
STATS_EVERY_S = 0.25
CANDIDATES_PER_SIDE = 3
# Every participant in a call also sends one relayed probe every this many seconds.
PROBE_EVERY = 2
PROBE_PORT = 50009
PROBE_MARK = b" %d typ " % PROBE_PORT
# A rejoin whose close is not confirmed by then is treated as a network drop.
CLOSE_WAIT = 2.0

SDP = (
    "v=0\r\no=- {sess} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "a=extmap-allow-mixed\r\na=msid-semantic: WMS bench\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Xk3b\r\na=ice-pwd:9kqPjYc1mT0wVd0d3vB1m3Pq\r\n"
    "a=ice-options:trickle\r\na=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:"
    "1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\na=setup:{setup}\r\na=mid:0\r\n"
    "a=sendrecv\r\na=msid:bench a0\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125\r\n"
    "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Xk3b\r\n"
    "a=ice-pwd:9kqPjYc1mT0wVd0d3vB1m3Pq\r\na=ice-options:trickle\r\na=setup:{setup}\r\n"
    "a=mid:1\r\na=sendrecv\r\na=msid:bench v0\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\n"
    "a=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n"
    "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:102 H264/90000\r\n"
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n"
    "a=ssrc-group:FID 1680427470 2881766180\r\na=ssrc:1680427470 cname:bench\r\n"
    "a=x-sent={sent}\r\n"
)
CANDIDATE = "candidate:{n} 1 udp 2122260223 127.0.0.1 {port} typ host generation 0 x-sent={sent}"
# One link as web/static/stats.js reports it, in its key order: a healthy call (nothing lost
# to speak of, the encoder free, the page on time). A lowered link also carries send_cap.
# Per link, peer and pc (and send_cap) are filled in once (``link_template``); per report, the
# counters and two pieces of what wobbles (WOBBLE).
LINK = (
    '{"peer":"%s","video":true,"pc":"%s",%%s,'
    '"packets_in":%%d,"bytes_in":%%d,"frames_decoded":%%d,"frames_dropped":21,%%s%s,%%s}'
)
# What varies from one report to the next, as a real link's figures do (so that no cost the
# server saves on a repeated figure shows here and not in a call): rtt, jitter, loss, fps,
# the bandwidth estimate, the sending frame rate, the page's lag and the encode time.
WOBBLE = [
    ((f'"rtt_ms":{42.5 + (k * 7 % 11 - 5) * 0.8:.1f},"jitter_ms":{6.1 + (k * 5 % 7 - 3) * 0.3:.1f},'
      f'"loss":{("0", "0.0012", "0", "0.0025", "0.0008")[k % 5]}'),
     (f'"fps":{29.5 + (k * 3 % 5 - 2) * 0.4:.1f},"concealed":0.0,"out_bitrate":{1_200_000 + (k * 13 % 9 - 4) * 15_000},'
      f'"in_bitrate":950000,"candidate":"host","send_limit":"none","send_fps":{29.8 - (k % 3) * 0.3:.1f}'),
     f'"lag_ms":{1 + k * 3 % 6},"encode_ms":{6.2 + (k * 11 % 7 - 3) * 0.2:.1f}')
    for k in range(23)
]
SEND_CAP = ',"send_cap":250000'
# Per second of a link: packets, bytes and frames in (video at 30 fps and ~1 Mbit/s, audio).
PACKETS_PER_S, BYTES_PER_S, FRAMES_PER_S = 150, 120_000, 30


def frame(payload: bytes) -> bytes:
    """A masked text frame (the mask key is zero, so the payload goes as it is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0xFF)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload


def sent_at(payload: bytes) -> int | None:
    i = payload.find(MARK)
    if i < 0:
        return None
    i += len(MARK)
    j = i
    while j < len(payload) and 48 <= payload[j] <= 57:
        j += 1
    return int(payload[i:j])


@dataclass(eq=False)
class Member:
    room: Room
    seat: int  # 0 therapist, 1 and 2 partners
    cred: str  # ours: the link's token; bare and peerjs: the participant's id
    id: str | None = None
    conn: WsClient | None = None
    state: str = "off"  # off, connecting, joining, waiting, in_call, closing
    admitted: set[str] = field(default_factory=set)
    pc_seq: int = 0
    ticks: int = 0
    probes: int = 0
    phase: int = 0  # which of the PROBE_EVERY seconds this participant probes in
    # Every fourth participant's video is lowered by the flow (its links carry send_cap).
    lowered: bool = False
    _templates: list[tuple[Member, str]] | None = None
    join_started: int = 0

    def peers(self) -> list[Member]:
        return [m for m in self.room.members if m is not self]

    def templates(self, target: str) -> list[tuple[Member, str]]:
        """Per peer, its stats link with peer, pc and send_cap filled in (once the ids are known)."""
        if self._templates is None or any(p.id is None for p, _ in self._templates):
            cap = SEND_CAP if self.lowered else ""
            self._templates = [
                (p, LINK % (p.id, f"pc{min(self.seat, p.seat)}{max(self.seat, p.seat)}", cap))
                for p in self.peers()
            ]
        return self._templates


@dataclass(eq=False)
class Room:
    members: list[Member] = field(default_factory=list)
    # Measured relay latencies to this room's members, for per-session figures.
    latencies_us: list[int] = field(default_factory=list)


class WsClient(asyncio.Protocol):
    """One participant's socket: HTTP upgrade, then frames in and out."""

    def __init__(self, gen: LoadGen, member: Member, request: bytes) -> None:
        self.gen = gen
        self.member = member
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The member's connection from now on, not from when create_connection returns: a
        # server that speaks first (PeerJS sends OPEN with its upgrade) may be read before.
        self.member.conn = self
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.gen.lost(self)

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(payload))
            self.gen.counts["sent"] += 1

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(CLOSE_FRAME)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.gen.error("upgrade refused")
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            buf = buf[end + 4:]
            self.gen.upgraded(self)
        off, n = 0, len(buf)
        while n - off >= 2:
            b0, b1 = buf[off], buf[off + 1]
            size, head = b1 & 0x7F, 2
            if size == 126:
                if n - off < 4:
                    break
                size, head = int.from_bytes(buf[off + 2:off + 4], "big"), 4
            elif size == 127:
                if n - off < 10:
                    break
                size, head = int.from_bytes(buf[off + 2:off + 10], "big"), 10
            end = off + head + size
            if end > n:
                break
            payload = buf[off + head:end]
            off = end
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x2:
                self.gen.received(self, payload, now)
            elif opcode == 0x9:
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + ZERO_MASK + payload)  # type: ignore[union-attr]
            elif opcode == 0x8:
                self.transport.close()  # type: ignore[union-attr]
                return
        self.buf = buf[off:]


class LoadGen:
    """Drives this process's rooms through setup, churn and measurement."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.target: Target = cfg["target"]
        self.host: str = cfg["host"]
        self.port: int = cfg["port"]
        self.churn: float = cfg["churn_per_s"]
        self.stats_every: float = cfg.get("stats_every_s", STATS_EVERY_S)
        self.concurrency: int = cfg.get("connect_concurrency", 32)
        self.rng = random.Random(cfg.get("seed", 0))
        self.rooms = [Room() for _ in cfg["rooms"]]
        for room, creds in zip(self.rooms, cfg["rooms"]):
            room.members = [Member(room, seat, cred) for seat, cred in enumerate(creds)]
        self.members = [m for r in self.rooms for m in r.members]
        for i, m in enumerate(self.members):
            m.phase = i % PROBE_EVERY
            m.lowered = i % 4 == 3
        self.by_id: dict[str, Member] = {}
        if self.target != "ours":
            for m in self.members:
                m.id = m.cred
                self.by_id[m.id] = m
        self.window = (0, 0)  # ns; relays sent inside it are measured
        self.latencies_us: list[int] = []
        self.probe_us: list[int] = []
        self.join_ms: list[float] = []
        self.counts: dict[str, int] = {
            "sent": 0, "received": 0, "relays_sent": 0, "relays_received": 0, "rejoins": 0,
            "rejoins_done": 0, "errors": 0, "closed_by_server": 0, "peerjs_takeovers": 0,
        }
        self.error_codes: dict[str, int] = {}
        self.lag_ms: list[float] = []
        self.decoder = msgspec.json.Decoder()
        self.churning = False

    # -- wire formats per target ------------------------------------------------------------

    def request(self, member: Member) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/ws"
        if self.target == "peerjs":
            path = f"/peerjs?key=peerjs&id={member.cred}&token=t{member.cred}"
        return (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def relay_message(self, sender: Member, to: str, kind: str, pc: str, body: dict[str, Any]) -> bytes:
        if self.target == "peerjs":
            if kind == "candidate":
                payload = {"candidate": body, "type": "media", "connectionId": pc}
            else:
                payload = {"sdp": body, "type": "media", "connectionId": pc}
            return msgspec.json.encode({"type": "CANDIDATE" if kind == "candidate" else kind.upper(),
                                        "dst": to, "payload": payload})
        msg: dict[str, Any] = {"type": "candidate" if kind == "candidate" else "sdp", "to": to, "pc": pc}
        if kind == "candidate":
            msg["candidate"] = body
        else:
            msg["description"] = body
        if self.target == "bare":
            msg["from"] = sender.id
        return msgspec.json.encode(msg)

    def stats_message(self, m: Member) -> bytes:
        m.ticks += 1
        s = m.ticks * self.stats_every
        packets, size, frames = int(PACKETS_PER_S * s), int(BYTES_PER_S * s), int(FRAMES_PER_S * s)
        links = []
        for k, (p, template) in enumerate(m.templates(self.target)):
            first, middle, last = WOBBLE[(m.ticks + 7 * k) % len(WOBBLE)]
            links.append(template % (first, packets, size, frames, middle, last))
        if self.target == "peerjs":
            return b'{"type":"HEARTBEAT","payload":{"links":[%s]}}' % ",".join(links).encode()
        return b'{"type":"stats","links":[%s]}' % ",".join(links).encode()

    # -- connection life ----------------------------------------------------------------------

    async def connect(self, member: Member) -> None:
        member.state = "connecting"
        member.join_started = time.monotonic_ns()
        loop = asyncio.get_running_loop()
        try:
            _, proto = await loop.create_connection(
                lambda: WsClient(self, member, self.request(member)), self.host, self.port)
        except OSError as exc:
            member.state = "off"
            self.error(f"connect: {exc.__class__.__name__}")
            return
        member.conn = proto

    def upgraded(self, conn: WsClient) -> None:
        m = conn.member
        m.state = "joining"
        if self.target == "ours":
            conn.send(b'{"type":"join","v":1,"token":"%s"}' % m.cred.encode())
        elif self.target == "bare":
            conn.send(b'{"type":"join","v":1,"token":"t%s","id":"%s"}' % (m.cred.encode(), m.cred.encode()))
        # PeerJS says OPEN by itself; a takeover of a not-yet-dropped id says nothing.
        elif self.churning:
            asyncio.get_running_loop().call_later(0.5, self._assume_open, conn)

    def _assume_open(self, conn: WsClient) -> None:
        if conn.member.conn is conn and conn.member.state == "joining":
            self.counts["peerjs_takeovers"] += 1
            self.enter_call(conn.member, None)

    def lost(self, conn: WsClient) -> None:
        m = conn.member
        if m.conn is conn:
            m.conn = None
            if m.state != "closing":
                self.counts["closed_by_server"] += 1
            m.state = "off"

    def error(self, what: str) -> None:
        self.counts["errors"] += 1
        self.error_codes[what] = self.error_codes.get(what, 0) + 1

    # -- messages in --------------------------------------------------------------------------

    def received(self, conn: WsClient, payload: bytes, now: int) -> None:
        self.counts["received"] += 1
        m = conn.member
        if m.conn is not conn:
            return
        msg = self.decoder.decode(payload)
        kind = msg.get("type")
        if self.target == "peerjs":
            if kind in ("OFFER", "ANSWER", "CANDIDATE"):
                self.relayed(m, msg["src"], "offer" if kind == "OFFER" else "other", payload, now)
            elif kind == "OPEN":
                self.enter_call(m, None)
            elif kind in ("ERROR", "ID-TAKEN"):
                self.error(f"peerjs {kind}")
            return
        if kind == "sdp":
            src = msg["from"]
            self.relayed(m, src, msg["description"]["type"], payload, now)
        elif kind == "candidate":
            self.relayed(m, msg["from"], "other", payload, now)
        elif kind == "welcome":
            if self.target == "ours":
                m.id = msg["you"]["id"]
                self.by_id[m.id] = m
                self.enter_call(m, [p["id"] for p in msg["peers"] if p["state"] == "in_call"])
            else:
                self.enter_call(m, None)
        elif kind == "waiting":
            m.state = "waiting"
            m.id = msg["you"]["id"]
            self.by_id[m.id] = m
        elif kind == "lobby":
            for person in msg["waiting"]:
                if person["id"] not in m.admitted:
                    m.admitted.add(person["id"])
                    conn.send(b'{"type":"admit","participant":"%s"}' % person["id"].encode())
        elif kind == "error":
            self.error(f"error {msg.get('code')}")
        elif kind == "bye":
            self.error(f"bye {msg.get('reason')}")

    def relayed(self, m: Member, src: str, kind: str, payload: bytes, now: int) -> None:
        self.counts["relays_received"] += 1
        sent = sent_at(payload)
        lo, hi = self.window
        if sent is not None and lo <= sent < hi:
            self.latencies_us.append((now - sent) // 1000)
            m.room.latencies_us.append((now - sent) // 1000)
            if PROBE_MARK in payload:
                self.probe_us.append((now - sent) // 1000)
        if kind == "offer":
            peer = self.by_id.get(src)
            if peer is not None:
                self.negotiate(m, peer, "answer")

    # -- the join pattern ---------------------------------------------------------------------

    def enter_call(self, m: Member, peer_ids: list[str] | None) -> None:
        """In the call: offer to every peer already in it (ours names them in its welcome)."""
        if m.state == "in_call":
            return
        m.state = "in_call"
        if m.join_started:
            self.join_ms.append((time.monotonic_ns() - m.join_started) / 1e6)
            if self.churning:
                self.counts["rejoins_done"] += 1
        if peer_ids is None:
            peers = [p for p in m.peers() if p.state == "in_call"]
        else:
            peers = [self.by_id[i] for i in peer_ids if i in self.by_id]
        for peer in peers:
            self.negotiate(m, peer, "offer")

    def negotiate(self, m: Member, peer: Member, kind: str) -> None:
        if m.conn is None or peer.id is None:
            return
        m.pc_seq += 1
        pc = f"{m.id}.{m.pc_seq}"
        now = self.stamp()
        sdp = SDP.format(sess=now, setup="actpass" if kind == "offer" else "active", sent=now)
        m.conn.send(self.relay_message(m, peer.id, kind, pc, {"type": kind, "sdp": sdp}))
        for n in range(CANDIDATES_PER_SIDE):
            cand = {"candidate": CANDIDATE.format(n=n + 1, port=50000 + n, sent=self.stamp()),
                    "sdpMid": "0", "sdpMLineIndex": 0}
            m.conn.send(self.relay_message(m, peer.id, "candidate", pc, cand))

    def probe(self, m: Member) -> None:
        """A trickled candidate to one peer on a fixed schedule, whatever the server's state:
        the open-loop part of the measurement (negotiation waits for the server's replies, so
        alone it would never be sent into a stall)."""
        peers = [p for p in m.peers() if p.state == "in_call" and p.id is not None]
        if not peers:
            return
        m.probes += 1
        peer = peers[m.probes % len(peers)]
        cand = {"candidate": CANDIDATE.format(n=9, port=PROBE_PORT, sent=self.stamp()),
                "sdpMid": "0", "sdpMLineIndex": 0}
        m.conn.send(self.relay_message(m, peer.id, "candidate", f"{m.id}.{m.pc_seq}", cand))  # type: ignore[union-attr]

    def stamp(self) -> int:
        """The send time to write into a relayed message; counts it if it is measured."""
        now = time.monotonic_ns()
        lo, hi = self.window
        if lo <= now < hi:
            self.counts["relays_sent"] += 1
        return now

    async def setup_room(self, room: Room) -> None:
        first, *partners = room.members
        await self.connect(first)
        await self.wait(lambda: first.state == "in_call", 20)
        for m in partners:
            await self.connect(m)
        await self.wait(lambda: all(m.state == "in_call" for m in room.members), 20)

    async def rejoin(self, m: Member) -> None:
        self.counts["rejoins"] += 1
        conn = m.conn
        m.state = "closing"
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), CLOSE_WAIT)
            except TimeoutError:
                self.error("close not confirmed")
                if conn.transport is not None:
                    conn.transport.abort()
        m.conn = None
        await self.connect(m)

    @staticmethod
    async def wait(cond: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError("room did not come together")
            await asyncio.sleep(0.01)

    # -- steady load ----------------------------------------------------------------------------

    async def drive(self) -> None:
        """Every TICK: stats from the participants whose turn it is (each once per stats
        interval, spread evenly), probes likewise once a second; rejoins at the churn rate."""
        slots = max(1, round(1.0 / TICK))
        stats_slots = max(1, round(self.stats_every / TICK))
        stats_buckets = [self.members[i::stats_slots] for i in range(stats_slots)]
        probe_buckets = [self.members[i::slots] for i in range(slots)]
        owed = 0.0
        tick = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            for m in stats_buckets[tick % stats_slots]:
                if m.state in ("in_call", "waiting") and m.conn is not None:
                    m.conn.send(self.stats_message(m))
            # Probes go between stats, every other second, half of the participants in even
            # seconds and half in odd ones.
            second = tick // slots
            for m in probe_buckets[(tick + slots // 2) % slots]:
                if m.state == "in_call" and m.conn is not None and (second + m.phase) % PROBE_EVERY == 0:
                    self.probe(m)
            if self.churning:
                owed += self.churn * len(self.members) * TICK
                while owed >= 1.0:
                    owed -= 1.0
                    m = self.rng.choice(self.members)
                    if m.state == "in_call":
                        asyncio.ensure_future(self.rejoin(m))
            tick += 1
            next_at += TICK
            delay = next_at - loop.time()
            if delay < 0:
                self.lag_ms.append(-delay * 1000)
                next_at = loop.time()
                delay = 0
            else:
                self.lag_ms.append(0.0)
            await asyncio.sleep(delay)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run(cfg: dict[str, Any]) -> None:
    gen = LoadGen(cfg)
    started = time.monotonic()
    gate = asyncio.Semaphore(gen.concurrency)

    async def one(room: Room) -> bool:
        async with gate:
            try:
                await gen.setup_room(room)
                return True
            except TimeoutError:
                return False

    ok = await asyncio.gather(*(one(r) for r in gen.rooms))
    driver = asyncio.ensure_future(gen.drive())
    emit({"event": "ready", "setup_s": round(time.monotonic() - started, 3),
          "rooms": len(gen.rooms), "rooms_failed": ok.count(False), "errors": gen.error_codes})

    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    _, t_start, t_end = line.split()
    start, end = float(t_start), float(t_end)
    gen.join_ms.clear()
    gen.churning = True
    gen.window = (int(start * 1e9), int(end * 1e9))
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu0, lag0 = cpu_seconds(), len(gen.lag_ms)
    counts0 = dict(gen.counts)
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    cpu1, lags = cpu_seconds(), sorted(gen.lag_ms[lag0:])
    counts1 = dict(gen.counts)
    gen.churning = False
    # Let the last measured relays arrive before counting them.
    await asyncio.sleep(1.0)
    driver.cancel()
    counts = {k: counts1[k] - counts0[k] for k in counts1}
    counts["relays_sent"] = gen.counts["relays_sent"]
    counts["relays_measured"] = len(gen.latencies_us)
    emit({
        "event": "result",
        "latencies_us": gen.latencies_us,
        "probe_us": gen.probe_us,
        "room_p99_us": [sorted(r.latencies_us)[int(0.99 * (len(r.latencies_us) - 1))] if r.latencies_us else None
                        for r in gen.rooms],
        "join_ms": [round(x, 2) for x in gen.join_ms],
        "counts": counts,
        "errors": gen.error_codes,
        "cpu_s": round(cpu1 - cpu0, 3),
        "window_s": round(end - start, 3),
        "lag_ms_p99": round(lags[int(0.99 * (len(lags) - 1))], 2) if lags else 0.0,
        "lag_ms_max": round(lags[-1], 2) if lags else 0.0,
        "in_call_at_end": sum(1 for m in gen.members if m.state == "in_call"),
        "participants": len(gen.members),
    })
    for m in gen.members:
        if m.conn is not None and m.conn.transport is not None:
            m.conn.transport.abort()


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(cfg))


if __name__ == "__main__":
    main()
