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

The page also proves the TURN relay works end to end: it sends an offer gathered with the
"relay" policy, so every candidate in it is a relay address. The probe answers such an offer
in kind, through the same TURN server with credentials of its own, so the connection runs
relay to relay as in a relay-only call (and as it must when the relay may not send to this
machine's private address). aiortc uses only the first TURN URL it is given; the probe picks
a UDP one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from telehealth.config import Config
from telehealth.errors import ErrorCode, UserError
from telehealth.turn import turn_credentials

log = logging.getLogger("telehealth.probe")

CHUNK_BYTES = 16 * 1024
# Enough queued to keep SCTP busy, little enough that "down" stops on time.
HIGH_WATER = 256 * 1024
MAX_DOWN_MS = 3000
# Beyond this the link is plainly good enough; stop early and spare the server.
MAX_DOWN_BYTES = 2 * 1024 * 1024
MAX_OFFER_BYTES = 64 * 1024
# The probe's own TURN username tag: coturn logs it, so it says what, never who.
RELAY_USER_TAG = "netcheck"


@dataclass(frozen=True)
class ProbeRelay:
    """How the probe reaches the TURN server: one URL and the shared secret, from which each
    relayed check gets short-lived credentials of its own."""

    url: str
    secret: str
    ttl: float = 120.0

    @classmethod
    def from_config(cls, config: Config) -> ProbeRelay | None:
        if not config.turn_urls or not config.turn_secret:
            return None
        return cls(url=preferred_turn_url(config.turn_urls), secret=config.turn_secret)

    def ice_server(self, now: float) -> RTCIceServer:
        username, password = turn_credentials(self.secret, RELAY_USER_TAG, now, self.ttl)
        return RTCIceServer(urls=self.url, username=username, credential=password)


def preferred_turn_url(urls: tuple[str, ...]) -> str:
    """The first UDP TURN URL, else the first: the probe sits next to the relay, where UDP is
    never blocked, and aiortc takes only one."""
    for url in urls:
        if url.startswith("turn:") and "transport=tcp" not in url:
            return url
    return urls[0]


def offers_only_relay(sdp: str) -> bool:
    """Whether an offer's candidates are all relay addresses (the page's relay test)."""
    types = [line.split(" typ ", 1)[1].split()[0] for line in sdp.splitlines()
             if line.startswith("a=candidate:") and " typ " in line]
    return bool(types) and all(kind == "relay" for kind in types)


class NetworkProbe:
    """Answers network-check offers. States of one check: answered -> connected -> closed
    (by the page, by failure, or when its lifetime ends). With ``relay`` set, an offer of
    relay candidates only is answered through that TURN server."""

    def __init__(
        self,
        *,
        stun_urls: tuple[str, ...] = (),
        relay: ProbeRelay | None = None,
        max_checks: int = 4,
        lifetime: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.stun_urls = stun_urls
        self.relay = relay
        self.max_checks = max_checks
        self.lifetime = lifetime
        self.clock = clock
        self.wall_clock = wall_clock
        self._checks: dict[RTCPeerConnection, asyncio.Task[None]] = {}

    @classmethod
    def from_config(cls, config: Config) -> NetworkProbe:
        return cls(stun_urls=config.stun_urls, relay=ProbeRelay.from_config(config))

    @property
    def running(self) -> int:
        return len(self._checks)

    async def answer(self, offer_type: str, offer_sdp: str) -> RTCSessionDescription:
        """Answer one browser's offer; raises UserError when busy or the offer is unusable."""
        if len(self._checks) >= self.max_checks:
            raise UserError(ErrorCode.RATE_LIMITED, "The network check is busy. Please try again in a moment.")
        if offer_type != "offer" or not offer_sdp or len(offer_sdp) > MAX_OFFER_BYTES:
            raise UserError(ErrorCode.INVALID_MESSAGE, "The network check needs an SDP offer.")
        relay = self.relay if offers_only_relay(offer_sdp) else None
        if relay is not None:
            configuration = RTCConfiguration(
                iceServers=[relay.ice_server(self.wall_clock())],
                iceTransportPolicy=RTCIceTransportPolicy.RELAY,
            )
        else:
            servers = [RTCIceServer(urls=url) for url in self.stun_urls[:1]]
            configuration = RTCConfiguration(iceServers=servers or None)
        pc = RTCPeerConnection(configuration)
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
            # Gathers every candidate first (aioice gives a TURN allocation at most 5 s).
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - aiortc rejects bad SDP with many exception types
            await self._close(pc)
            log.info("network check offer refused: %s", type(exc).__name__)
            raise UserError(ErrorCode.INVALID_MESSAGE, "The network check offer could not be used.") from None
        if relay is not None and "typ relay" not in pc.localDescription.sdp:
            await self._close(pc)
            # The page reached the relay but the server cannot: wrong secret or URL, or a
            # firewall between them. Worth an operator's attention; the page says "failed".
            log.warning("network check: the TURN server gave the probe no relay address")
            raise UserError(ErrorCode.INTERNAL, "The relay server did not answer the network check.")
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
