"""A real coturn on loopback for tests and benchmarks, and aiortc peers that call through it.

``start_coturn(tmp_dir, secret)`` runs Debian's ``/usr/bin/turnserver`` with a generated
config (TURN REST secret, loopback peers allowed, no TLS) on a free port and returns once it
answers a STUN binding request. ``CoturnServer.stop()`` ends that process by its own pid.
``peer_pair`` gives two aiortc peers in one process that exchange offer and answer directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from media import tracks
from signaling.protocol import IceServer
from tests.ports import free_port
from tests.processes import stop_process

TURNSERVER = Path("/usr/bin/turnserver")
REALM = "telehealth.test"
READY_TIMEOUT_S = 5.0
_MAGIC_COOKIE = 0x2112A442
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101


@dataclass
class CoturnServer:
    """A running coturn: ``urls`` are the TURN URLs (UDP, TCP) for its ``port`` on 127.0.0.1."""

    port: int
    secret: str
    urls: list[str]
    process: subprocess.Popen[bytes]
    log_file: Path

    def stop(self) -> None:
        stop_process(self.process, 5)

    def log_tail(self) -> str:
        return _tail(self.log_file)


def stun_binding_answered(host: str, port: int, timeout: float) -> bool:
    """Send one STUN binding request over UDP; True if a matching success response comes back."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", _BINDING_REQUEST, 0, _MAGIC_COOKIE) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, (host, port))
            while True:
                reply, _ = sock.recvfrom(2048)
                if len(reply) >= 20 and reply[8:20] == transaction:
                    return struct.unpack("!H", reply[:2])[0] == _BINDING_SUCCESS
        except (TimeoutError, ConnectionRefusedError):
            # ConnectionRefused: the ICMP "port unreachable" of a server not listening yet.
            return False


def wait_until_answering(
    process: subprocess.Popen[bytes], host: str, port: int, log_file: Path, timeout: float
) -> None:
    """Return once coturn answers STUN on host:port; raise if it exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"coturn exited with {process.returncode}:\n{_tail(log_file)}")
        if stun_binding_answered(host, port, timeout=0.1):
            return
    raise TimeoutError(
        f"coturn did not answer STUN on {host}:{port} within {timeout} s:\n{_tail(log_file)}"
    )


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])
    except FileNotFoundError:
        return "(no log)"


def relay_port_window(size: int = 500) -> tuple[int, int]:
    """A random window of relay ports below Linux's ephemeral range (32768+), where aiortc's
    own sockets live, so that coturns started by tests running in parallel rarely collide."""
    low = random.randrange(20000, 32768 - size, size)
    return low, low + size - 1


def launch_coturn(tmp_dir: Path, text: str, *, port: int, secret: str) -> CoturnServer:
    """Run ``/usr/bin/turnserver`` on the config ``text`` (which must listen on 127.0.0.1:port,
    among others, and log to ``log_file_for(tmp_dir, port)``); return once it answers STUN.

    Fails, never skips, when coturn is not installed: the project's test command installs it.
    """
    if not TURNSERVER.exists():
        raise RuntimeError(
            f"{TURNSERVER} not found: install Debian's coturn (apt-get install -y coturn); "
            "the project's test command does this"
        )
    config_file = tmp_dir / f"turnserver-{port}.conf"
    config_file.write_text(text)
    process = subprocess.Popen(
        [str(TURNSERVER), "-c", str(config_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_dir,
    )
    server = CoturnServer(
        port=port,
        secret=secret,
        urls=[f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"],
        process=process,
        log_file=log_file_for(tmp_dir, port),
    )
    try:
        wait_until_answering(process, "127.0.0.1", port, server.log_file, READY_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


def log_file_for(tmp_dir: Path, port: int) -> Path:
    return tmp_dir / f"turnserver-{port}.log"


def sandbox_lines(tmp_dir: Path, port: int) -> dict[str, str | None]:
    """Logging to a file in tmp_dir, and no system-wide pid file or user database."""
    return {
        "log-file": str(log_file_for(tmp_dir, port)),
        "simple-log": None,
        "no-stdout-log": None,
        "pidfile": str(tmp_dir / f"turnserver-{port}.pid"),
        "userdb": str(tmp_dir / f"turndb-{port}.sqlite"),
    }


def config_text(lines: Mapping[str, str | None]) -> str:
    """coturn's config syntax: ``name=value``, or ``name`` alone for a flag (value None)."""
    return "".join(f"{k}={v}\n" if v is not None else f"{k}\n" for k, v in lines.items())


def base_lines(tmp_dir: Path, port: int, secret: str) -> dict[str, str | None]:
    """What every test coturn runs with: ``port`` on 127.0.0.1, TURN REST auth by ``secret``,
    loopback peers allowed, no DTLS, relay ports of its own, and the sandbox below."""
    min_relay, max_relay = relay_port_window()
    return {
        "listening-ip": "127.0.0.1",
        "listening-port": str(port),
        "realm": REALM,
        "use-auth-secret": None,
        "static-auth-secret": secret,
        "allow-loopback-peers": None,
        "no-dtls": None,
        "no-cli": None,
        "no-rfc5780": None,
        "fingerprint": None,
        "min-port": str(min_relay),
        "max-port": str(max_relay),
        **sandbox_lines(tmp_dir, port),
    }


def start_coturn(
    tmp_dir: Path, secret: str, *, options: Mapping[str, str | None] | None = None
) -> CoturnServer:
    """Start coturn on 127.0.0.1 with TURN REST auth (loopback peers allowed, no TLS);
    ``options`` add or override config lines (``None`` for a flag)."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = {**base_lines(tmp_dir, port, secret), "no-tls": None, **(options or {})}
    return launch_coturn(tmp_dir, config_text(lines), port=port, secret=secret)


# -- aiortc peers -------------------------------------------------------------------------


def rtc_configuration(servers: Sequence[IceServer], *, relay_only: bool = True) -> RTCConfiguration:
    """aiortc's configuration for the ICE servers the app hands out."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers
        ],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL,
    )


def candidate_types(sdp: str) -> set[str]:
    """The candidate types ("host", "srflx", "relay") a description offers."""
    return {
        line.split(" typ ")[1].split()[0]
        for line in sdp.splitlines()
        if line.startswith("a=candidate:")
    }


def _no_frames() -> dict[str, int]:
    return {"audio": 0, "video": 0}


@dataclass
class PeerPair:
    """Two aiortc peers in one process; offer and answer pass straight between them.

    The caller sends a test picture and a tone, and so does the callee with ``both_ways``.
    Each side counts the frames it decodes. With ``echo``, ``channel`` is a data channel
    from the caller that the callee echoes back.
    """

    caller: RTCPeerConnection
    callee: RTCPeerConnection
    received_by_callee: dict[str, int] = field(default_factory=_no_frames)
    received_by_caller: dict[str, int] = field(default_factory=_no_frames)
    channel: RTCDataChannel | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def connect(self, *, both_ways: bool = False, echo: bool = False) -> None:
        """Exchange offer and answer; aiortc has gathered every candidate when it returns."""
        self._count_into(self.callee, self.received_by_callee)
        self._count_into(self.caller, self.received_by_caller)
        self.caller.addTrack(tracks.TestPatternTrack())
        self.caller.addTrack(tracks.ToneTrack())
        if both_ways:
            self.callee.addTrack(tracks.TestPatternTrack())
            self.callee.addTrack(tracks.ToneTrack())
        if echo:
            self.channel = self.caller.createDataChannel("echo")

            @self.callee.on("datachannel")
            def _echo(channel: RTCDataChannel) -> None:
                channel.on("message", channel.send)

        await self.caller.setLocalDescription(await self.caller.createOffer())
        await self.callee.setRemoteDescription(self.caller.localDescription)
        await self.callee.setLocalDescription(await self.callee.createAnswer())
        await self.caller.setRemoteDescription(self.callee.localDescription)

    def _count_into(self, pc: RTCPeerConnection, frames: dict[str, int]) -> None:
        async def count(track: MediaStreamTrack) -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()
                    frames[track.kind] += 1

        pc.on("track", lambda track: self.tasks.append(asyncio.create_task(count(track))))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.caller.close()
        await self.callee.close()


@contextlib.asynccontextmanager
async def peer_pair(caller: RTCConfiguration, callee: RTCConfiguration) -> AsyncIterator[PeerPair]:
    pair = PeerPair(RTCPeerConnection(caller), RTCPeerConnection(callee))
    try:
        yield pair
    finally:
        await pair.close()
