"""The network-fault tools, proven on a real call: a partner in a namespace, the others on the host.

The therapist and partner A are aiortc participants in this process; partner B is a
``media.run_participant`` process inside a ``Namespace``, so every fault acts on B's link only.
Nobody sends ``stats`` here (``report_stats=False``): the server's fallback flow would react to
the faults, and these tests are about the faults themselves.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiortc import RTCPeerConnection

from media.participant import SyntheticParticipant
from tests.conftest import RunningServer, eventually, start_server
from tests.coturn import start_coturn
from tests.netfault import Namespace
from tests.remote_participant import (
    CounterWatch,
    RemoteParticipant,
    call,
    media_everywhere,
    watching,
)
from tests.udp_delay import DelayRelay

pytestmark = pytest.mark.netns

CUT_SECONDS = 3.0
CUTS = 2


@pytest.fixture
async def open_server(make_config: Any) -> AsyncIterator[RunningServer]:
    # On every address, so the namespace reaches it through the host's end of the veth.
    running = await start_server(make_config(host="0.0.0.0"))
    yield running
    await running.runner.cleanup()


def nominated_remote_host(pc: RTCPeerConnection) -> str:
    # aiortc exposes no candidate-pair stats; the ICE connection underneath knows the pair.
    ice = pc.getTransceivers()[0].receiver.transport.transport
    pair = next(iter(ice._connection._nominated.values()))
    return str(pair.remote_candidate.host)


async def test_partner_in_a_namespace_exchanges_media_directly_with_the_host(
    open_server: RunningServer, ns: Namespace
) -> None:
    async with call(open_server, ns, report_stats=False) as c:
        await media_everywhere(c)
        t_id, a_id, b_id = c.ids()
        for person in (c.therapist, c.a):
            link = person.links[b_id]
            assert link.pc is not None and link.pc.connectionState == "connected"
            # The namespace has one address: media to and from B crosses the veth, directly.
            assert nominated_remote_host(link.pc) == ns.ns_ip
        for pid in (t_id, a_id):
            assert c.b.events[-1]["peers"][pid]["pc"] == "connected"


async def cut_and_restore(ns: Namespace, watches: dict[str, CounterWatch], others: CounterWatch) -> str:
    """One short cut of B's link; asserts what everyone sees, returns the figures."""
    await eventually(lambda: all(w.grew_at and w.grew_at[-1] > time.monotonic() - 0.2 for w in watches.values()), 10)
    cut = await ns.cut()
    await asyncio.sleep(CUT_SECONDS)  # the length of the outage is the test's input
    restored = await ns.restore()
    stopped: dict[str, float] = {}
    for name, watch in watches.items():
        last = watch.last_growth_before(restored.began)
        assert last is not None
        stopped[name] = last - cut.began
        assert stopped[name] < 1.0, f"{name}: frames went on {stopped[name]:.2f} s into the cut"
    # The cut is B's alone: the therapist goes on seeing A all along.
    assert others.growths_between(cut.at + 1.0, restored.began) > 20

    # Flowing again, not a stray frame: five more samples with growth from everyone.
    try:
        await eventually(lambda: all(w.growths_between(restored.began, math.inf) >= 5 for w in watches.values()), 10)
    except TimeoutError:
        counts = {name: w.growths_between(restored.began, math.inf) for name, w in watches.items()}
        raise AssertionError(f"media not back 10 s after restore (growths since: {counts})") from None
    back = {name: w.first_growth_after(restored.began) or 0.0 for name, w in watches.items()}
    return f"cut applied in {(cut.at - cut.began) * 1000:.0f} ms; " + "; ".join(
        f"{name}: last frame {stopped[name]:+.3f} s after the cut, first {back[name] - restored.began:.3f} s "
        "after restore" for name in watches
    )


async def test_cut_stops_media_within_a_second_and_restore_brings_it_back(
    open_server: RunningServer, ns: Namespace
) -> None:
    async with call(open_server, ns, report_stats=False) as c:
        await media_everywhere(c)
        t_id, a_id, b_id = c.ids()
        with watching(
            lambda: c.therapist.frames_from(b_id)["video"],
            lambda: c.a.frames_from(b_id)["video"],
            # B reports its counts every 0.25 s: its figures are that coarse.
            lambda: c.b.frames_from(t_id)["video"],
            lambda: c.therapist.frames_from(a_id)["video"],
        ) as (t_from_b, a_from_b, b_from_t, t_from_a):
            watches = {"therapist<-B": t_from_b, "A<-B": a_from_b, "B<-therapist": b_from_t}
            for attempt in range(CUTS):
                print(f"\ncut {attempt + 1}: {await cut_and_restore(ns, watches, t_from_a)}")


async def test_random_loss_keeps_media_flowing_at_a_reduced_rate(open_server: RunningServer, ns: Namespace) -> None:
    async with call(open_server, ns, report_stats=False) as c:
        await media_everywhere(c)
        b_id = c.b_id

        async def frames_per_second(seconds: float) -> dict[str, float]:
            start = c.therapist.frames_from(b_id)
            began = time.monotonic()
            await asyncio.sleep(seconds)  # a measuring window, not synchronisation
            end = c.therapist.frames_from(b_id)
            return {kind: (end[kind] - start[kind]) / (time.monotonic() - began) for kind in end}

        clean = await frames_per_second(2.0)
        await ns.loss(30)
        await asyncio.sleep(0.5)  # let what was in the jitter buffers before the loss drain
        lossy = await frames_per_second(3.0)
        print(f"\nframes/s therapist<-B clean {clean}, at 30 % loss each way {lossy}")
        # aiortc neither conceals lost audio nor skips a gap quickly (its audio jitter buffer
        # waits for the missing packet until it overflows): far fewer audio frames come out.
        assert 1.0 < lossy["audio"] < 0.8 * clean["audio"]
        # Video is repaired by retransmission (NACK/RTX) and keeps most of its frame rate.
        assert lossy["video"] > 0.3 * clean["video"]
        pc = c.therapist.links[b_id].pc
        assert pc is not None and pc.connectionState == "connected"


async def test_allow_only_the_server_blocks_direct_media(open_server: RunningServer, ns: Namespace) -> None:
    # B reaches the signaling port and nothing else on the host: no TURN, so no media path.
    await ns.allow_only(ns.host_ip, open_server.config.port)
    async with call(open_server, ns, report_stats=False) as c:
        t_id, a_id, b_id = c.ids()
        await c.therapist.wait_media([a_id], frames=5, timeout=15)
        await asyncio.sleep(4.0)  # the window in which B's media must not arrive
        b_pc = c.therapist.links[b_id].pc
        assert b_pc is not None and b_pc.connectionState != "connected"
        assert c.therapist.frames_from(b_id) == {"audio": 0, "video": 0}
        assert c.a.frames_from(b_id) == {"audio": 0, "video": 0}
        assert c.b.frames_from(t_id) == {"audio": 0, "video": 0}
        assert c.therapist.frames_from(a_id)["video"] > 20


async def test_pulled_cable_stops_media_and_plugging_it_back_restores_it(
    open_server: RunningServer, ns: Namespace
) -> None:
    async with call(open_server, ns, report_stats=False) as c:
        await media_everywhere(c)
        b_id = c.b_id
        with watching(lambda: c.therapist.frames_from(b_id)["video"]) as (t_from_b,):
            await eventually(lambda: len(t_from_b.grew_at) >= 5, 5)
            down = await ns.link_down()
            await asyncio.sleep(CUT_SECONDS)  # the length of the outage is the test's input
            up = await ns.link_up()
            last = t_from_b.last_growth_before(up.began)
            assert last is not None and last - down.began < 1.0
            back = await t_from_b.growth_after(up.began, 10)
            seen = c.therapist.frames_from(b_id)["video"]
            await c.therapist.wait_for(lambda: c.therapist.frames_from(b_id)["video"] >= seen + 10, 5)
            print(f"\nlink down: last frame {last - down.began:+.3f} s after, first {back - up.began:.3f} s after up")


BLAST = """
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        s.sendto(b"x" * 1200, (host, port))
    except OSError:
        pass
"""

COUNT = """
import socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# Room for everything the pipe lets through, so a receiver slowed by a busy machine loses nothing.
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
s.bind((host, 0))
print(s.getsockname()[1], flush=True)
total, end = 0, time.monotonic() + seconds
s.settimeout(0.05)
while time.monotonic() < end:
    try:
        total += len(s.recv(2048))
    except TimeoutError:
        pass
print(total, flush=True)
"""


async def test_rate_caps_throughput_both_ways(ns: Namespace) -> None:
    kbit, seconds = 2000, 1.5
    await ns.rate(kbit)

    async def received_kbit(receiver: asyncio.subprocess.Process, sender_argv: list[str], on_host: bool) -> float:
        assert receiver.stdout is not None
        port = int(await receiver.stdout.readline())
        target = ns.ns_ip if on_host else ns.host_ip
        argv = [*sender_argv, "-c", BLAST, target, str(port), str(seconds)]
        sender = await (asyncio.create_subprocess_exec(*argv) if on_host else ns.run(argv))
        await sender.wait()
        total = int(await receiver.stdout.readline())
        return total * 8 / 1000 / seconds

    python = [sys.executable]
    up = await received_kbit(
        await asyncio.create_subprocess_exec(*python, "-c", COUNT, ns.host_ip, str(seconds + 0.5),
                                             stdout=asyncio.subprocess.PIPE),
        python, on_host=False,
    )
    down = await received_kbit(
        await ns.run([*python, "-c", COUNT, ns.ns_ip, str(seconds + 0.5)], stdout=asyncio.subprocess.PIPE),
        python, on_host=True,
    )
    print(f"\nthrough a {kbit} kbit/s pipe: namespace->host {up:.0f} kbit/s, host->namespace {down:.0f} kbit/s")
    for measured in (up, down):
        # Above the rate only by the bucket's burst and queue; below it if the sender starved.
        assert 0.5 * kbit < measured < 1.2 * kbit
    await ns.clear()
    cleared = await received_kbit(
        await asyncio.create_subprocess_exec(*python, "-c", COUNT, ns.host_ip, str(seconds + 0.5),
                                             stdout=asyncio.subprocess.PIPE),
        python, on_host=False,
    )
    assert cleared > 5 * kbit


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class Pinger(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: list[tuple[int, float]] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.append((int(data), time.monotonic()))
        self.arrived.set()


async def round_trips(relay: DelayRelay, count: int) -> list[float]:
    """Send ``count`` numbered datagrams 10 ms apart through the relay; their round trips, in
    the order the replies came back (asserted to be the order they were sent)."""
    loop = asyncio.get_running_loop()
    transport, pinger = await loop.create_datagram_endpoint(Pinger, remote_addr=relay.address)
    try:
        sent: list[float] = []
        for n in range(count):
            sent.append(time.monotonic())
            transport.sendto(str(n).encode())
            await asyncio.sleep(0.01)  # pacing, like a media stream
        await eventually(lambda: len(pinger.replies) == count, 5)
        assert [n for n, _ in pinger.replies] == list(range(count))
        return [at - sent[n] for n, at in pinger.replies]
    finally:
        transport.close()


async def test_delay_relay_holds_each_datagram_each_way_and_keeps_order() -> None:
    loop = asyncio.get_running_loop()
    echo_transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    relay = await DelayRelay.start(echo_transport.get_extra_info("sockname"), seed=1)
    try:
        direct = await round_trips(relay, 20)
        relay.set_delay(0.05)
        delayed = await round_trips(relay, 20)
        relay.set_delay(0.05, jitter=0.03)
        jittered = await round_trips(relay, 40)
        print(f"\nrelay round trips (median/max ms): none {statistics.median(direct) * 1000:.1f}/"
              f"{max(direct) * 1000:.1f}, 2x50 ms {statistics.median(delayed) * 1000:.1f}/"
              f"{max(delayed) * 1000:.1f}, 2x(50+0..30) ms {statistics.median(jittered) * 1000:.1f}/"
              f"{max(jittered) * 1000:.1f}")
        # Never early; late only by the event loop's scheduling (a busy machine adds outliers).
        assert statistics.median(direct) < 0.005
        assert min(delayed) >= 0.1 and statistics.median(delayed) < 0.115
        assert min(jittered) >= 0.1 and 0.11 < statistics.median(jittered) < 0.16
        spread = {name: statistics.quantiles(rtts, n=10) for name, rtts in (("d", delayed), ("j", jittered))}
        assert spread["j"][-1] - spread["j"][0] > 2 * (spread["d"][-1] - spread["d"][0])
        assert relay.forwarded() == {"out": 80, "in": 80}
    finally:
        relay.close()
        echo_transport.close()


async def test_partner_reaching_only_turn_through_the_delay_relay_gets_delayed_media(
    make_config: Any, tmp_path: Path, ns: Namespace
) -> None:
    coturn = start_coturn(tmp_path / "coturn", "netfault-secret")
    relay = await DelayRelay.start(("127.0.0.1", coturn.port), listen=(ns.host_ip, 0))
    server = await start_server(make_config(
        host="0.0.0.0", turn_urls=(f"turn:{ns.host_ip}:{relay.address[1]}?transport=udp",),
        turn_secret=coturn.secret,
    ))
    try:
        # B reaches the signaling port and the relay, nothing else: its media must go via TURN.
        await ns.allow_only(ns.host_ip, server.config.port, relay.address[1])
        async with call(server, ns, report_stats=False, b_relay_only=True) as c:
            await media_everywhere(c)
            b_id = c.b_id
            assert relay.forwarded()["out"] > 50 and relay.forwarded()["in"] > 50
            with watching(lambda: c.therapist.frames_from(b_id)["video"]) as (t_from_b,):
                await eventually(lambda: len(t_from_b.grew_at) >= 5, 5)
                changed_at = time.monotonic()
                relay.set_delay(0.4)
                # What B sends from now on waits 0.4 s at the relay: its video pauses that long.
                after = await t_from_b.growth_after(changed_at + 0.2, 5)
                before = t_from_b.last_growth_before(changed_at + 0.2)
                assert before is not None
                print(f"\nrelay delay 0 -> 0.4 s: B's video paused {after - before:.3f} s at the therapist")
                assert 0.3 < after - before < 0.6
            seen = c.therapist.frames_from(b_id)["video"]
            await c.therapist.wait_for(lambda: c.therapist.frames_from(b_id)["video"] >= seen + 10, 5)
    finally:
        await server.runner.cleanup()
        relay.close()
        coturn.stop()


async def test_remote_participant_carries_out_drop_rejoin_and_leave(server: RunningServer) -> None:
    room = server.create_room()
    therapist = SyntheticParticipant(room.therapist_link, auto_admit=True, stats_interval=None)
    await therapist.join()
    b = await RemoteParticipant.start(room.partner_links[0], server_stats=None)
    try:
        welcome = await b.wait_event(lambda e: e["event"] == "welcome", 10)
        assert welcome["peers"] == [therapist.me["id"]] and welcome["resumed"] is False
        b_id = b.id
        assert b_id is not None
        await therapist.wait_media([b_id], frames=3, timeout=15)

        await b.drop_signaling()
        await therapist.wait_message("presence", peer=b_id, state="reconnecting")
        since = len(b.events)
        await b.rejoin()
        await b.wait_event(lambda e: e["event"] == "welcome" and e["resumed"], 10, since=since)
        await therapist.wait_message("presence", peer=b_id, state="back")
        assert b.id == b_id

        await b.leave()
        await therapist.wait_message("presence", peer=b_id, state="left")
        assert await b.stop() == 0
        assert b.events[-1]["event"] == "closed"
        # The report names people by id only.
        assert "Partner" not in json.dumps(b.events)
    finally:
        await b.stop()
        await therapist.close()
