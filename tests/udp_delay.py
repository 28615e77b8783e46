"""A UDP relay that holds every datagram for a while: delay for tests, since this kernel has no netem.

``DelayRelay.start(upstream, delay=0.1)`` listens on a UDP port and forwards what it receives to
``upstream``, from one socket of its own per client (as a NAT would), so replies find their way
back; each datagram waits ``delay`` seconds (plus up to ``jitter``, never reordered) in each
direction, so a round trip through the relay gains ``2 * delay``.

To put it in a participant's media path, put it in front of the TURN server and make that
participant relay-only: give the server ``turn_urls=("turn:<relay host>:<relay port>?transport=udp",)``
with coturn's secret and start the participant with ``relay_only=True`` (``--relay-only``).
Everything that participant sends and receives then crosses the relay; the others keep their
direct paths among themselves. ``set_delay`` changes the delay during a call.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from typing import cast

Address = tuple[str, int]


class _Lane:
    """One direction of one flow: datagrams leave in the order they came, each at its time.

    A single timer per lane (not one per datagram): the event loop does not keep timers due at
    the same moment in order, and a relay that reorders would be a different fault."""

    def __init__(self, relay: DelayRelay, send: Callable[[bytes], bool]) -> None:
        self.relay = relay
        # send() returns False while the way out is not open yet; the lane then waits for kick().
        self.send = send
        self.queue: deque[tuple[float, bytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.sent = 0

    def push(self, data: bytes) -> None:
        held = self.relay.delay + (self.relay._rng.uniform(0.0, self.relay.jitter) if self.relay.jitter else 0.0)
        departure = self.relay._loop.time() + held
        if self.queue:
            # Jitter spreads datagrams out but never lets one overtake the one before it.
            departure = max(departure, self.queue[-1][0])
        self.queue.append((departure, data))
        if self.timer is None:
            self.kick()

    def kick(self) -> None:
        self.timer = None
        now = self.relay._loop.time()
        while self.queue and self.queue[0][0] <= now:
            if not self.send(self.queue[0][1]):
                return
            self.queue.popleft()
            self.sent += 1
        if self.queue:
            self.timer = self.relay._loop.call_at(self.queue[0][0], self.kick)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.queue.clear()


class _Flow(asyncio.DatagramProtocol):
    """One client's own socket toward upstream; what comes back goes to that client."""

    def __init__(self, relay: DelayRelay, client: Address) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.outbound = _Lane(relay, self._to_upstream)
        self.inbound = _Lane(relay, self._to_client)

    def _to_upstream(self, data: bytes) -> bool:
        if self.transport is None:
            return False
        self.transport.sendto(data)
        return True

    def _to_client(self, data: bytes) -> bool:
        listener = self.relay._listener
        if listener is not None:
            listener.sendto(data, self.client)
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.outbound.kick()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.inbound.push(data)

    def close(self) -> None:
        self.outbound.close()
        self.inbound.close()
        if self.transport is not None:
            self.transport.close()


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, relay: DelayRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay._from_client(data, addr)


class DelayRelay:
    """A running relay. ``address`` is where clients send; ``forwarded()`` counts datagrams
    passed on in each direction (``"out"`` to upstream, ``"in"`` back to clients)."""

    def __init__(self, upstream: Address, delay: float, jitter: float, rng: random.Random) -> None:
        self.upstream = upstream
        self.delay = delay
        self.jitter = jitter
        self._rng = rng
        self._flows: dict[Address, _Flow] = {}
        self._listener: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def start(
        cls,
        upstream: Address,
        *,
        listen: Address = ("127.0.0.1", 0),
        delay: float = 0.0,
        jitter: float = 0.0,
        seed: int | None = None,
    ) -> DelayRelay:
        relay = cls(upstream, delay, jitter, random.Random(seed))
        transport, _ = await relay._loop.create_datagram_endpoint(lambda: _Listener(relay), local_addr=listen)
        relay._listener = transport
        return relay

    @property
    def address(self) -> Address:
        assert self._listener is not None
        host, port = self._listener.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def forwarded(self) -> dict[str, int]:
        return {
            "out": sum(flow.outbound.sent for flow in self._flows.values()),
            "in": sum(flow.inbound.sent for flow in self._flows.values()),
        }

    def set_delay(self, delay: float, jitter: float = 0.0) -> None:
        """Applies to datagrams arriving from now on; those already held keep their time."""
        self.delay, self.jitter = delay, jitter

    def close(self) -> None:
        for flow in self._flows.values():
            flow.close()
        self._flows.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _from_client(self, data: bytes, client: Address) -> None:
        flow = self._flows.get(client)
        if flow is None:
            flow = self._flows[client] = _Flow(self, client)
            self._loop.create_task(self._open(flow))
        flow.outbound.push(data)

    async def _open(self, flow: _Flow) -> None:
        # Bound on the listener's host, so upstream sees the relay where the client saw it.
        await self._loop.create_datagram_endpoint(
            lambda: flow, local_addr=(self.address[0], 0), remote_addr=self.upstream
        )
