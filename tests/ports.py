"""A free port on loopback, for the servers tests and benchmarks start (one helper for all)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A TCP port free on ``host`` right now; with ``udp``, free for UDP too (coturn listens on
    both)."""
    if not udp:
        with socket.socket() as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_socket:
            udp_socket.bind((host, 0))
            port = udp_socket.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no port free for both UDP and TCP")
