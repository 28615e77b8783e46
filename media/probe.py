"""The far end of the network check: a short-lived aiortc peer that a browser connects to.

Before joining, the page makes a real WebRTC connection to the server, over the same kind
of path a call uses (ICE, DTLS, SCTP over UDP), and measures it. Signaling is one HTTP
request: the page waits for ICE gathering to finish and posts its whole offer; ``answer``
returns the whole answer (aiortc does not trickle either).

The page opens two data channels:

- ``ping``: unordered, never retransmitted. Every message is echoed at once, so the page
  sees round-trip time, and the pings the network dropped as loss.
- ``bulk``: reliable, for throughput. Text commands, JSON:
  ``{"op": "down", "ms": 1500}``: the probe sends binary chunks as fast as the channel
  takes them for that long, then ``{"op": "down_done", "bytes": N, "ms": T}``.
  Binary chunks from the page are counted; ``{"op": "up_done"}`` is answered with
  ``{"op": "up_result", "bytes": N, "ms": T}`` (T from the first to the last chunk).

Each check lives at most ``lifetime`` seconds; at most ``max_checks`` run at once, so the
endpoint cannot be used to load the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from telehealth.errors import ErrorCode, UserError

log = logging.getLogger("telehealth.probe")

CHUNK_BYTES = 16 * 1024
# Enough queued to keep SCTP busy, little enough that "down" stops on time.
HIGH_WATER = 256 * 1024
MAX_DOWN_MS = 3000
# Beyond this the link is plainly good enough; stop early and spare the server.
MAX_DOWN_BYTES = 2 * 1024 * 1024
MAX_OFFER_BYTES = 64 * 1024


class NetworkProbe:
    """Answers network-check offers. States of one check: answered -> connected -> closed
    (by the page, by failure, or when its lifetime ends)."""

    def __init__(
        self,
        *,
        stun_urls: tuple[str, ...] = (),
        max_checks: int = 4,
        lifetime: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stun_urls = stun_urls
        self.max_checks = max_checks
        self.lifetime = lifetime
        self.clock = clock
        self._checks: dict[RTCPeerConnection, asyncio.Task[None]] = {}

    @property
    def running(self) -> int:
        return len(self._checks)

    async def answer(self, offer_type: str, offer_sdp: str) -> RTCSessionDescription:
        """Answer one browser's offer; raises UserError when busy or the offer is unusable."""
        if len(self._checks) >= self.max_checks:
            raise UserError(ErrorCode.RATE_LIMITED, "The network check is busy. Please try again in a moment.")
        if offer_type != "offer" or not offer_sdp or len(offer_sdp) > MAX_OFFER_BYTES:
            raise UserError(ErrorCode.INVALID_MESSAGE, "The network check needs an SDP offer.")
        servers = [RTCIceServer(urls=url) for url in self.stun_urls[:1]]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers or None))
        self._checks[pc] = asyncio.create_task(self._expire(pc))

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == "ping":
                channel.on("message", channel.send)
            elif channel.label == "bulk":
                _Bulk(channel, self.clock)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and pc in self._checks:
                await self._close(pc)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - aiortc rejects bad SDP with many exception types
            await self._close(pc)
            log.info("network check offer refused: %s", type(exc).__name__)
            raise UserError(ErrorCode.INVALID_MESSAGE, "The network check offer could not be used.") from None
        return pc.localDescription

    async def _expire(self, pc: RTCPeerConnection) -> None:
        await asyncio.sleep(self.lifetime)
        await self._close(pc, from_timer=True)

    async def _close(self, pc: RTCPeerConnection, *, from_timer: bool = False) -> None:
        task = self._checks.pop(pc, None)
        if task is not None and not from_timer:
            task.cancel()
        await pc.close()

    async def close(self) -> None:
        for pc in list(self._checks):
            await self._close(pc)


class _Bulk:
    """The throughput channel of one check."""

    def __init__(self, channel: RTCDataChannel, clock: Callable[[], float]) -> None:
        self.channel = channel
        self.clock = clock
        self.up_bytes = 0
        self.up_first = 0.0
        self.up_last = 0.0
        self.sending: asyncio.Task[None] | None = None
        self.drained = asyncio.Event()
        channel.bufferedAmountLowThreshold = HIGH_WATER // 2
        channel.on("bufferedamountlow", self.drained.set)
        channel.on("message", self.on_message)
        channel.on("close", self.stop)

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            now = self.clock()
            if self.up_bytes == 0:
                self.up_first = now
            self.up_bytes += len(message)
            self.up_last = now
            return
        try:
            command = json.loads(message)
        except ValueError:
            return
        op = command.get("op") if isinstance(command, dict) else None
        if op == "down" and self.sending is None:
            ms = command.get("ms")
            ms = min(float(ms), MAX_DOWN_MS) if isinstance(ms, (int, float)) and ms > 0 else 1500.0
            self.sending = asyncio.create_task(self.send_down(ms / 1000))
        elif op == "up_done":
            elapsed_ms = (self.up_last - self.up_first) * 1000
            self.channel.send(json.dumps({"op": "up_result", "bytes": self.up_bytes, "ms": round(elapsed_ms, 1)}))

    async def send_down(self, seconds: float) -> None:
        chunk = bytes(CHUNK_BYTES)
        sent = 0
        start = self.clock()
        deadline = start + seconds
        while self.clock() < deadline and sent < MAX_DOWN_BYTES and self.channel.readyState == "open":
            if self.channel.bufferedAmount >= HIGH_WATER:
                self.drained.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.drained.wait(), max(0.0, deadline - self.clock()))
                continue
            self.channel.send(chunk)
            sent += CHUNK_BYTES
            # Let SCTP run: aiortc sends from the same loop.
            await asyncio.sleep(0)
        if self.channel.readyState == "open":
            elapsed_ms = (self.clock() - start) * 1000
            self.channel.send(json.dumps({"op": "down_done", "bytes": sent, "ms": round(elapsed_ms, 1)}))

    def stop(self) -> None:
        if self.sending is not None:
            self.sending.cancel()
