"""A free port on loopback, for the servers tests and benchmarks start (one helper for all)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now for TCP and for UDP (coturn listens on both, Caddy
    adds HTTP/3 on UDP), chosen outside the kernel's ephemeral range: the browsers' and aiortc's
    ICE sockets take their ports from that range, and one once took the UDP port a test had just
    been given for Caddy ("bind: address already in use")."""
    ports = _outside_ephemeral()
    for _ in range(200):
        port = random.choice(ports)
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def _outside_ephemeral() -> range:
    try:
        low, high = (int(x) for x in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    below, above = range(10_000, low), range(high + 1, 65_536)
    return below if len(below) >= len(above) else above
