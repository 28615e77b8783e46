"""The far end of the network check: a short-lived aiortc peer that a browser connects to.

Before joining, the page makes a real WebRTC connection to the server, over the same kind
of path a call uses (ICE, DTLS, SCTP over UDP), and measures round trip and loss on it.
Signaling is one HTTP request: the page waits for ICE gathering to finish and posts its whole
offer; ``answer`` returns the whole answer (aiortc does not trickle either).

The page opens two data channels and every message on them is echoed at once. ``ping``:
unordered, never retransmitted, so the page sees round-trip time, and the pings the network
dropped as loss. ``marker``: reliable, one message after the last ping; its echo leaves after
every ping's echo, so once it is back the page knows the pings still unanswered were lost, not
queued behind a busy probe.
Throughput is not measured here but over plain HTTP (web/netcheck.py): pushing bulk data
through aiortc's SCTP and DTLS in Python cost the server about a second of CPU per check, and
on a busy server it measured the server's CPU instead of the network.

While checks run, ``lag`` times how late the server's event loop wakes up: if the probe
itself was starved, the page must not read slow echoes as a slow network.

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
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
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


ECHOED_CHANNELS = frozenset({"ping", "marker"})


class LoopLag:
    """How late the event loop wakes from a short timer, over the last ``window`` seconds.

    States: idle -> sampling (``touch()`` while checks run) -> idle again once nothing has
    touched it for ``window`` seconds, so an idle server does not wake up for it.
    """

    def __init__(self, *, every: float = 0.05, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.window = window
        self.clock = clock
        self._samples: deque[tuple[float, float]] = deque()
        self._touched = 0.0
        self._task: asyncio.Task[None] | None = None

    def touch(self) -> None:
        self._touched = self.clock()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while self.clock() - self._touched < self.window:
            asked = self.clock()
            await asyncio.sleep(self.every)
            now = self.clock()
            self._samples.append((now, now - asked - self.every))
            while self._samples and self._samples[0][0] < now - self.window:
                self._samples.popleft()

    def recent_ms(self) -> dict[str, float]:
        """The 90th percentile and the worst lateness lately, in milliseconds."""
        late = sorted(max(0.0, x) for _, x in self._samples)
        if not late:
            return {"p90": 0.0, "max": 0.0}
        return {"p90": round(late[int(0.9 * (len(late) - 1))] * 1000, 1), "max": round(late[-1] * 1000, 1)}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class NetworkProbe:
    """Answers network-check offers. States of one check: answered -> connected -> closed
    (by the page, by failure, or when its lifetime ends). With ``relay`` set, an offer of
    relay candidates only is answered through that TURN server."""

    def __init__(
        self,
        *,
        stun_urls: tuple[str, ...] = (),
        relay: ProbeRelay | None = None,
        max_checks: int = 8,
        max_transfers: int = 8,
        lifetime: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.stun_urls = stun_urls
        self.relay = relay
        self.max_checks = max_checks
        self.max_transfers = max_transfers
        self.transfers = 0
        self.lifetime = lifetime
        self.clock = clock
        self.wall_clock = wall_clock
        self._checks: dict[RTCPeerConnection, asyncio.Task[None]] = {}
        self.lag = LoopLag(clock=clock)

    @classmethod
    def from_config(cls, config: Config) -> NetworkProbe:
        return cls(stun_urls=config.stun_urls, relay=ProbeRelay.from_config(config))

    @property
    def running(self) -> int:
        return len(self._checks)

    @contextlib.contextmanager
    def transfer(self) -> Iterator[None]:
        """A slot for one throughput transfer of a check (web/netcheck.py); raises UserError
        when ``max_transfers`` run already, so the check cannot be used to flood the server."""
        if self.transfers >= self.max_transfers:
            raise UserError(ErrorCode.RATE_LIMITED, "The network check is busy. Please try again in a moment.")
        self.lag.touch()
        self.transfers += 1
        try:
            yield
        finally:
            self.transfers -= 1

    async def answer(self, offer_type: str, offer_sdp: str) -> RTCSessionDescription:
        """Answer one browser's offer; raises UserError when busy or the offer is unusable."""
        if len(self._checks) >= self.max_checks:
            raise UserError(ErrorCode.RATE_LIMITED, "The network check is busy. Please try again in a moment.")
        if offer_type != "offer" or not offer_sdp or len(offer_sdp) > MAX_OFFER_BYTES:
            raise UserError(ErrorCode.INVALID_MESSAGE, "The network check needs an SDP offer.")
        self.lag.touch()
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
            if channel.label in ECHOED_CHANNELS:
                channel.on("message", channel.send)

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
        await self.lag.close()
