"""What the TURN relay costs on loopback: the round trip it adds, and coturn's CPU per call.

A real coturn (tests/coturn.py) and pairs of aiortc peers in this process:
- round trip: a data channel echo, pinged one message at a time, with host candidates only
  (direct) and with both sides relay-only; medians and the difference.
- CPU: coturn's utime+stime from /proc/<pid>/stat over a call with audio and video both ways
  at 320x240, as % of one core; once with both sides relayed (media crosses coturn twice,
  the worst case) and once with one side relayed (the usual case: one partner behind a
  strict firewall).

Prints JSON and writes bench/results/turn_overhead.json (and .png). From the repository root:
/tmp/venv/bin/python -m bench.turn_overhead (smoke: --pings 5 --seconds 1)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiortc import RTCConfiguration

from bench.common import write_result
from signaling.ice import ice_servers_for
from telehealth.config import Config
from tests.coturn import (
    CoturnServer,
    PeerPair,
    candidate_types,
    peer_pair,
    rtc_configuration,
    start_coturn,
)

SECRET = "bench secret"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields after the command name start at field 3 (state): utime is 14, stime is 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relayed(server: CoturnServer, tag: str) -> RTCConfiguration:
    config = Config(turn_urls=(server.urls[0],), turn_secret=server.secret)
    return rtc_configuration(ice_servers_for(config, tag, time.time()), relay_only=True)


def direct() -> RTCConfiguration:
    return rtc_configuration([], relay_only=False)


async def wait_for(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def echo_round_trips(
    caller: RTCConfiguration, callee: RTCConfiguration, pings: int
) -> dict[str, Any]:
    async with peer_pair(caller, callee) as pair:
        await pair.connect(echo=True)
        channel = pair.channel
        assert channel is not None
        await wait_for(lambda: channel.readyState == "open", 10.0)
        replies: asyncio.Queue[str] = asyncio.Queue()
        channel.on("message", replies.put_nowait)
        rtts: list[float] = []
        for i in range(pings + 5):  # the first few warm up SCTP and the event loop
            started = time.perf_counter()
            channel.send(f"ping {i}")
            reply = await asyncio.wait_for(replies.get(), 5.0)
            assert reply == f"ping {i}"
            if i >= 5:
                rtts.append((time.perf_counter() - started) * 1000)
        return {
            "candidates": sorted(candidate_types(pair.caller.localDescription.sdp)),
            "median_ms": round(statistics.median(rtts), 3),
            "p90_ms": round(statistics.quantiles(rtts, n=10)[-1], 3),
            "each_ms": [round(rtt, 3) for rtt in rtts],
        }


async def rtp_sent(pair: PeerPair) -> tuple[int, int]:
    """Packets and bytes both peers have sent so far."""
    packets = octets = 0
    for pc in (pair.caller, pair.callee):
        for stats in (await pc.getStats()).values():
            if stats.type == "outbound-rtp":
                packets += stats.packetsSent
                octets += stats.bytesSent
    return packets, octets


async def relay_cpu(
    server: CoturnServer, caller: RTCConfiguration, callee: RTCConfiguration, seconds: float
) -> dict[str, Any]:
    async with peer_pair(caller, callee) as pair:
        await pair.connect(both_ways=True)
        await wait_for(
            lambda: pair.received_by_callee["video"] > 0 and pair.received_by_caller["video"] > 0,
            10.0,
        )
        coturn_before, peers_before = cpu_seconds(server.process.pid), cpu_seconds(os.getpid())
        (packets_before, bytes_before), started = await rtp_sent(pair), time.monotonic()
        frames_before = pair.received_by_callee["video"] + pair.received_by_caller["video"]
        await asyncio.sleep(seconds)  # the measured call itself
        elapsed = time.monotonic() - started
        coturn_used = cpu_seconds(server.process.pid) - coturn_before
        peers_used = cpu_seconds(os.getpid()) - peers_before
        packets_after, bytes_after = await rtp_sent(pair)
        frames = pair.received_by_callee["video"] + pair.received_by_caller["video"] - frames_before
        return {
            "caller_candidates": sorted(candidate_types(pair.caller.localDescription.sdp)),
            "callee_candidates": sorted(candidate_types(pair.callee.localDescription.sdp)),
            "seconds": round(elapsed, 2),
            "coturn_cpu_percent_of_one_core": round(100 * coturn_used / elapsed, 2),
            "aiortc_peers_cpu_percent": round(100 * peers_used / elapsed, 1),
            "rtp_kbit_s_both_directions": round(
                (bytes_after - bytes_before) * 8 / elapsed / 1000, 1
            ),
            "rtp_packets_s_both_directions": round((packets_after - packets_before) / elapsed),
            "video_fps_received_per_side": round(frames / elapsed / 2, 1),
        }


async def main(pings: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="turn-bench-") as tmp:
        server = start_coturn(Path(tmp), SECRET)
        try:
            direct_rtt = await echo_round_trips(direct(), direct(), pings)
            relayed_rtt = await echo_round_trips(
                relayed(server, "p_caller"), relayed(server, "p_callee"), pings
            )
            both = await relay_cpu(
                server, relayed(server, "p_caller"), relayed(server, "p_callee"), seconds
            )
            one = await relay_cpu(server, relayed(server, "p_caller"), direct(), seconds)
        finally:
            server.stop()
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
            "python": sys.version.split()[0],
        },
        "round_trip": {
            "pings": pings,
            "direct": direct_rtt,
            "relayed_both_sides": relayed_rtt,
            "extra_ms_median": round(relayed_rtt["median_ms"] - direct_rtt["median_ms"], 3),
        },
        "coturn_cpu_per_call": {"both_sides_relayed": both, "one_side_relayed": one},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    write_result("turn_overhead", asyncio.run(main(args.pings, args.seconds)))
