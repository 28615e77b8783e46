"""A synthetic participant: a real aiortc peer that joins from a link like a browser would.

It speaks the signaling protocol over a real WebSocket, keeps one RTCPeerConnection per
peer (a full mesh), sends a generated picture and tone, and counts the frames it decodes
from each peer. Tests and the benchmarks use it (``python -m media.run_participant`` runs one
from the command line); the network check has its own server-side peer, media/probe.py.

aiortc has no ICE restart: a pair is recovered by a fresh peer connection with a new ``pc``
id, made by the pair's offerer (the answerer asks for one with ``restart``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaStreamError
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

from media import jitter
from media.tracks import TestPatternTrack, ToneTrack

log = logging.getLogger("telehealth.synthetic")


@dataclass
class PeerLink:
    """Our side of one pair: the connection and what we decoded from it."""

    peer_id: str
    offerer: bool
    pc_id: str = ""
    pc: RTCPeerConnection | None = None
    frames: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    first_frame_at: dict[str, float] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    presence: str = "in_call"
    # Inbound (packets, lost) at the last stats report, for per-interval loss.
    last_counts: tuple[int, int] = (0, 0)


class SyntheticParticipant:
    def __init__(
        self,
        link: str,
        *,
        auto_admit: bool = False,
        relay_only: bool = False,
        video_size: tuple[int, int] = (320, 240),
        ssl_context: ssl.SSLContext | bool = True,
        origin: str | None = None,
        stats_interval: float | None = 0.25,
    ) -> None:
        parts = urlsplit(link)
        self.link = link
        self.token = parts.path.rsplit("/", 1)[-1]
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.ws_url = f"{scheme}://{parts.netloc}/ws"
        self.origin = origin
        self.auto_admit = auto_admit
        self.relay_only = relay_only
        self.video_size = video_size
        self.ssl_context = ssl_context
        self.me: dict[str, Any] = {}
        self.ice_servers: list[dict[str, Any]] = []
        self.links: dict[str, PeerLink] = {}
        self.received: list[dict[str, Any]] = []
        # (time.monotonic() on arrival, message), for tests that measure when things happen.
        self.timed: list[tuple[float, dict[str, Any]]] = []
        self.errors: list[dict[str, Any]] = []
        self.bye: dict[str, Any] | None = None
        self.state = "new"  # new, waiting, in_call, disconnected, closed
        self.join_sent_at = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.stats_interval = stats_interval
        self._stats_task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def join(self) -> None:
        """Open the socket and send ``join``; returns once the request is on its way."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Origin": self.origin} if self.origin else None
        self._ws = await self._session.ws_connect(self.ws_url, ssl=self.ssl_context, headers=headers,
                                                  heartbeat=None, max_msg_size=4 * 1024 * 1024)
        self.join_sent_at = time.monotonic()
        await self.send({"type": "join", "v": 1, "token": self.token})
        self._reader = asyncio.create_task(self._read(self._ws))
        if self.stats_interval and self._stats_task is None:
            self._stats_task = asyncio.create_task(self._report_stats(self.stats_interval))

    async def drop_signaling(self) -> None:
        """Lose the socket without saying goodbye (media connections stay up)."""
        ws = self._ws
        self._ws = None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._notify(state="disconnected")

    async def leave(self) -> None:
        await self.send({"type": "leave"})
        await self.wait_for(lambda: self.bye is not None, 5.0)
        await self.close()

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
            self._stats_task = None
        for link in list(self.links.values()):
            await self._close_link(link)
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.state = "closed"

    async def send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            raise ConnectionError("not connected")
        await self._ws.send_str(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        if self._ws is None:
            raise ConnectionError("not connected")
        if isinstance(data, bytes):
            await self._ws.send_bytes(data)
        else:
            await self._ws.send_str(data)

    # -- waiting ------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def wait_message(self, msg_type: str, /, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The first message of ``msg_type`` whose fields equal ``match`` (waits for it)."""

        def found() -> bool:
            return any(self._matches(m, msg_type, match) for m in self.received)

        await self.wait_for(found, timeout)
        return next(m for m in self.received if self._matches(m, msg_type, match))

    @staticmethod
    def _matches(m: dict[str, Any], kind: str, match: dict[str, Any]) -> bool:
        return m.get("type") == kind and all(m.get(k) == v for k, v in match.items())

    async def wait_media(self, peer_ids: list[str], *, frames: int = 5, timeout: float = 10.0) -> None:
        """Until at least ``frames`` audio and video frames were decoded from each peer."""

        def done() -> bool:
            return all(
                pid in self.links and min(self.links[pid].frames.values()) >= frames for pid in peer_ids
            )

        await self.wait_for(done, timeout)

    def frames_from(self, peer_id: str) -> dict[str, int]:
        link = self.links.get(peer_id)
        return dict(link.frames) if link else {"audio": 0, "video": 0}

    async def _notify(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self, key, value)
        async with self._changed:
            self._changed.notify_all()

    # -- signaling ------------------------------------------------------------------------

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                self.received.append(data)
                self.timed.append((time.monotonic(), data))
                try:
                    await self._on_message(data)
                except Exception:
                    log.exception("synthetic participant failed on %s", data.get("type"))
                await self._notify()
        finally:
            if self._ws is ws:
                self._ws = None
                await self._notify(state="disconnected" if self.bye is None else "closed")

    async def _on_message(self, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "welcome":
            self.me = m["you"]
            self.ice_servers = m.get("ice_servers", [])
            self.relay_only = self.relay_only or m.get("ice_transport_policy") == "relay"
            self.state = "in_call"
            for peer in m["peers"]:
                await self._meet(peer["id"], offerer=peer["offer"], resumed=m["resumed"])
        elif kind == "waiting":
            self.me = m["you"]
            self.state = "waiting"
        elif kind == "peer_joined":
            peer = m["peer"]
            old = self.links.pop(peer["id"], None)
            if old is not None:
                await self._close_link(old)
            await self._meet(peer["id"], offerer=peer["offer"], resumed=False)
        elif kind == "lobby" and self.auto_admit:
            for person in m["waiting"]:
                await self.send({"type": "admit", "participant": person["id"]})
        elif kind == "sdp":
            await self._on_sdp(m["from"], m["pc"], m["description"])
        elif kind == "candidate":
            await self._on_candidate(m["from"], m["pc"], m.get("candidate"))
        elif kind == "restart":
            link = self.links.get(m["from"])
            if link is not None and link.offerer:
                await self._offer(link)
        elif kind == "presence":
            link = self.links.get(m["peer"])
            if link is not None:
                link.presence = m["state"]
                if m["state"] == "left":
                    await self._close_link(self.links.pop(m["peer"]))
        elif kind == "fallback":
            await self._on_fallback(m)
        elif kind == "error":
            self.errors.append(m)
        elif kind == "bye":
            self.bye = m

    async def _on_fallback(self, m: dict[str, Any]) -> None:
        """Carry out the flow's rejoin steps as far as aiortc can."""
        action, person = m["action"], m["person"]
        if action == "ice_restart" and person == self.me.get("id"):
            # aiortc has no ICE restart: say so at once, so the flow moves on.
            await self.send({"type": "rejoin_result", "step": "ice_restart", "ok": False})
        elif action == "fresh_connection":
            targets = list(self.links) if person == self.me.get("id") else [person]
            for peer_id in targets:
                link = self.links.get(peer_id)
                if link is not None and link.offerer:
                    await self._offer(link)

    async def _report_stats(self, interval: float) -> None:
        """Send ``stats`` like a page does: inbound counters per peer, from getStats()."""
        while True:
            await asyncio.sleep(interval)
            if self._ws is None or self.state != "in_call":
                continue
            links = []
            for link in list(self.links.values()):
                pc = link.pc
                if pc is None or pc.connectionState != "connected":
                    continue
                packets = lost = bytes_in = 0
                jitter_ms: float | None = None
                rtt_ms: float | None = None
                for stat in (await pc.getStats()).values():
                    if stat.type == "inbound-rtp":
                        packets += stat.packetsReceived
                        lost += max(stat.packetsLost, 0)
                        if stat.kind == "audio":
                            jitter_ms = stat.jitter / 48.0
                    elif stat.type == "remote-inbound-rtp" and stat.kind == "audio" and stat.roundTripTime:
                        rtt_ms = stat.roundTripTime * 1000.0
                    elif stat.type == "transport":
                        bytes_in = stat.bytesReceived
                # Loss over the last interval, as the protocol asks, from the counters' deltas.
                seen, missed = packets - link.last_counts[0], lost - link.last_counts[1]
                link.last_counts = (packets, lost)
                links.append({
                    "peer": link.peer_id, "pc": link.pc_id, "packets_in": packets, "bytes_in": bytes_in,
                    "loss": missed / (seen + missed) if seen + missed > 0 else 0.0,
                    "jitter_ms": jitter_ms, "rtt_ms": rtt_ms, "video": True,
                    # aiortc has no candidate-pair stats; relay-only is the one case we know.
                    "candidate": "relay" if self.relay_only else None,
                })
            if links:
                with contextlib.suppress(ConnectionError):
                    await self.send({"type": "stats", "links": [
                        {k: v for k, v in entry.items() if v is not None} for entry in links]})

    async def _meet(self, peer_id: str, *, offerer: bool, resumed: bool) -> None:
        link = self.links.get(peer_id)
        if link is not None and link.pc is not None and link.pc.connectionState in ("connecting", "connected"):
            return  # a resume: this pair never stopped
        if link is None:
            link = self.links[peer_id] = PeerLink(peer_id, offerer)
        link.offerer = offerer
        if offerer:
            await self._offer(link)
        elif resumed:
            await self.send({"type": "restart", "to": peer_id})

    def _new_pc(self, link: PeerLink, pc_id: str) -> RTCPeerConnection:
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in self.ice_servers
        ]
        config = RTCConfiguration(
            # An empty list, not None: None makes aiortc look up a public STUN server, which
            # hangs on a machine (or namespace) without DNS.
            iceServers=servers,
            iceTransportPolicy=RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL,
        )
        pc = RTCPeerConnection(config)
        link.pc, link.pc_id, link.last_counts = pc, pc_id, (0, 0)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                jitter.install(next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track))
            link.tasks.append(asyncio.create_task(self._count(link, pc, track)))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            await self._notify()

        return pc

    def _add_media(self, pc: RTCPeerConnection) -> None:
        pc.addTrack(ToneTrack())
        pc.addTrack(TestPatternTrack(*self.video_size))

    async def _offer(self, link: PeerLink) -> None:
        await self._close_pc(link)
        pc = self._new_pc(link, secrets.token_hex(4))
        self._add_media(pc)
        await pc.setLocalDescription(await pc.createOffer())
        await self._send_description(link, pc)

    async def _send_description(self, link: PeerLink, pc: RTCPeerConnection) -> None:
        desc = pc.localDescription
        await self.send({"type": "sdp", "to": link.peer_id, "pc": link.pc_id,
                         "description": {"type": desc.type, "sdp": desc.sdp}})

    async def _on_sdp(self, peer_id: str, pc_id: str, description: dict[str, str]) -> None:
        link = self.links.get(peer_id)
        if link is None:
            link = self.links[peer_id] = PeerLink(peer_id, offerer=False)
        remote = RTCSessionDescription(sdp=description["sdp"], type=description["type"])
        if remote.type == "answer":
            if link.pc is not None and link.pc_id == pc_id and link.pc.signalingState == "have-local-offer":
                await link.pc.setRemoteDescription(remote)
            return
        if link.pc is None or link.pc_id != pc_id:
            # A new pc id: the offerer started a fresh connection for this pair.
            await self._close_pc(link)
            pc = self._new_pc(link, pc_id)
            await pc.setRemoteDescription(remote)
            self._add_media(pc)
        else:
            pc = link.pc
            await pc.setRemoteDescription(remote)
        await pc.setLocalDescription(await pc.createAnswer())
        await self._send_description(link, pc)

    async def _on_candidate(self, peer_id: str, pc_id: str, candidate: dict[str, Any] | None) -> None:
        link = self.links.get(peer_id)
        if link is None or link.pc is None or link.pc_id != pc_id or not candidate:
            return
        line = candidate["candidate"]
        if not line:
            return
        cand = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
        cand.sdpMid = candidate.get("sdpMid")
        cand.sdpMLineIndex = candidate.get("sdpMLineIndex")
        with contextlib.suppress(Exception):
            await link.pc.addIceCandidate(cand)

    async def _count(self, link: PeerLink, pc: RTCPeerConnection, track: Any) -> None:
        kind = track.kind
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            if link.pc is not pc:
                return
            link.frames[kind] += 1
            if kind not in link.first_frame_at:
                link.first_frame_at[kind] = time.monotonic()
            if link.frames[kind] % 5 == 1:
                await self._notify()

    async def _close_pc(self, link: PeerLink) -> None:
        pc, link.pc = link.pc, None
        for task in link.tasks:
            task.cancel()
        link.tasks.clear()
        if pc is not None:
            await pc.close()

    async def _close_link(self, link: PeerLink) -> None:
        await self._close_pc(link)
