"""Real network faults for tests: a participant in its own network namespace, and a switch.

``Namespace.create()`` makes a network namespace joined to the host by a veth pair on a /30
of 10.200.0.0/16 (host side ``.1``, namespace side ``.2``), with a default route to the
host, so a process started with ``ns.run(...)`` reaches every address of the host (the
server, coturn, the other participants' candidates) through that one link, and the faults
below act on everything it sends or receives.

Faults, each returning a ``FaultEvent`` (also kept in ``ns.events``) with the
``time.monotonic()`` just before the change was asked for (``began``) and once it is in force
(``at``), so tests can measure detection and recovery from it:

- ``cut()`` / ``restore()``: drop every packet, both directions, until restored. ``restore``
  puts back whatever was in force before (loss, ``allow_only``).
- ``loss(percent)``: drop that share of IP packets at random, each direction on its own.
- ``rate(kbit)``: a narrow pipe (``tc tbf``) each direction.
- ``allow_only(host, *ports)``: the namespace reaches only ``host`` on those TCP/UDP ports
  ("a partner who can reach only the TURN server", plus the signaling port it needs).
- ``link_down()`` / ``link_up()``: the cable is pulled (the namespace sees no carrier).
- ``clear()``: all of the above undone.

Packets are dropped in nftables netdev *ingress* hooks on both ends of the veth (the host end
for what the namespace sends, the namespace end for what it receives). Ingress drops are
silent: senders see their ``sendto()`` succeed, as on a real broken network. A DROP in the IP
OUTPUT hook would not be: ``sendto()`` fails with EPERM there and the sender reacts to that.

Needs root, iproute2 and nftables (``apt-get install -y iproute2 nftables``). Without them
``create()`` raises ``NetfaultError``: tests that need namespaces fail, never skip.

Names carry the creating process id (``thnf-<pid>-<index>``) and addresses are allocated
under a file lock, so parallel pytest workers do not collide; namespaces and host-side rules
left by a crashed run (its pid gone) are removed by the next ``create()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PREFIX = "thnf"
POOL = ipaddress.ip_network("10.200.0.0/16")
LOCK_FILE = Path("/tmp/telehealth-netfault.lock")
# `ip netns exec NAME` mounts files found here over /etc for the processes it starts.
NETNS_ETC = Path("/etc/netns")
# The host's resolver is not reachable from the namespace (no forwarding), so without this
# every lookup (aiortc's default STUN server, for one) would hang for its full timeout; with it,
# lookups fail at once, as on a network without DNS.
_RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
# First among the device's ingress hooks, so nothing else ever sees a packet we drop.
_HOOK_PRIORITY = -500
_NS_NAME = re.compile(rf"^{PREFIX}-(\d+)-(\d+)$")
_HOST_TABLE = re.compile(rf"^{PREFIX}_(\d+)$")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0", "::1", "::"})


class NetfaultError(RuntimeError):
    """A namespace or fault could not be set up (not root, iproute2/nftables missing, or a
    command refused); the message says which."""


@dataclass(frozen=True)
class FaultEvent:
    """One change of the link. It took effect somewhere between ``began`` and ``at`` (both
    ``time.monotonic()``; a few milliseconds apart, more on a loaded machine): measuring
    detection or recovery from ``began`` gives an upper bound."""

    action: str
    began: float
    at: float
    detail: str = ""


@dataclass
class _Impairment:
    """What the nftables chains and tc qdiscs currently enforce."""

    cut: bool = False
    loss_percent: int = 0
    allowed: tuple[str, tuple[int, ...]] | None = None
    rate_kbit: int | None = None
    link_down: bool = False


def check_available() -> None:
    if os.geteuid() != 0:
        raise NetfaultError("network namespaces need root")
    missing = [tool for tool in ("ip", "nft", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetfaultError(f"missing {', '.join(missing)}: apt-get install -y iproute2 nftables")


async def _sh(argv: Sequence[str], stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise NetfaultError(
            f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace').strip()}"
        )
    return out.decode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _remove_stale() -> None:
    """Namespaces of processes that are gone, and host tables whose namespace is gone."""
    live_indexes: set[int] = set()
    for line in (await _sh(["ip", "netns", "list"])).splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NS_NAME.match(name)
        if match is None:
            continue
        if _pid_alive(int(match.group(1))):
            live_indexes.add(int(match.group(2)))
        else:
            await _sh(["ip", "netns", "delete", name])
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    for line in (await _sh(["nft", "list", "tables", "netdev"])).splitlines():
        table = line.split()[-1] if line.strip() else ""
        match = _HOST_TABLE.match(table)
        if match is not None and int(match.group(1)) not in live_indexes:
            await _sh(["nft", "delete", "table", "netdev", table])


async def _used_subnets() -> set[int]:
    used: set[int] = set()
    for match in re.finditer(r"inet (10\.200\.\d+\.\d+)/", await _sh(["ip", "-o", "-4", "addr", "show"])):
        used.add((int(ipaddress.ip_address(match.group(1))) - int(POOL.network_address)) // 4)
    return used


class Namespace:
    """A network namespace on its own veth link to the host, with switchable faults.

    States: created (link clean) -> any mix of loss / rate / allow_only, with cut and
    link_down on top -> closed. ``close()`` removes the namespace, its veth pair and the
    host-side rules; ``namespace()`` does that for you.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"{PREFIX}-{os.getpid()}-{index}"
        subnet = ipaddress.ip_network((int(POOL.network_address) + 4 * index, 30))
        self.host_ip = str(subnet.network_address + 1)
        self.ns_ip = str(subnet.network_address + 2)
        self.host_dev = f"{PREFIX}{index}h"
        self.ns_dev = f"{PREFIX}{index}n"
        self.host_table = f"{PREFIX}_{index}"
        self.events: list[FaultEvent] = []
        self._state = _Impairment()
        self._closed = False

    @classmethod
    async def create(cls) -> Namespace:
        check_available()
        lock = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            await _remove_stale()
            used = await _used_subnets()
            index = next(i for i in range(POOL.num_addresses // 4) if i not in used)
            ns = cls(index)
            try:
                await ns._build()
            except BaseException:
                await ns.close()
                raise
        finally:
            os.close(lock)  # releases the lock
        return ns

    async def _build(self) -> None:
        await _sh(["ip", "netns", "add", self.name])
        etc = NETNS_ETC / self.name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(_RESOLV_CONF)
        await _sh(["ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev,
                   "netns", self.name])
        # IPv4 only: an IPv6 link-local address would finish its duplicate check a second after
        # the link comes up, and Chromium takes that for a network change (ERR_NETWORK_CHANGED
        # on whatever is loading), a fault no test asked for.
        await _sh(["sysctl", "-qw", f"net.ipv6.conf.{self.host_dev}.disable_ipv6=1"])
        await _sh(["ip", "netns", "exec", self.name, "sysctl", "-qw", f"net.ipv6.conf.{self.ns_dev}.disable_ipv6=1"])
        await _sh(["ip", "-batch", "-"], stdin="\n".join([
            f"addr add {self.host_ip}/30 dev {self.host_dev}",
            f"link set {self.host_dev} up",
        ]) + "\n")
        await _sh(["ip", "-n", self.name, "-batch", "-"], stdin="\n".join([
            "link set lo up",
            f"addr add {self.ns_ip}/30 dev {self.ns_dev}",
            f"link set {self.ns_dev} up",
            f"route add default via {self.host_ip}",
        ]) + "\n")
        chain = "chain ingress {{ type filter hook ingress device \"{dev}\" priority {prio}; policy accept; }}"
        await _sh(["nft", "-f", "-"], stdin=(
            f"table netdev {self.host_table} {{\n"
            f"  {chain.format(dev=self.host_dev, prio=_HOOK_PRIORITY)}\n}}\n"
        ))
        await self._nft_in_ns(
            f"table netdev fault {{\n  {chain.format(dev=self.ns_dev, prio=_HOOK_PRIORITY)}\n}}\n"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Deleting the namespace destroys both ends of the veth and the rules inside it.
        with contextlib.suppress(NetfaultError):
            await _sh(["ip", "netns", "delete", self.name])
        with contextlib.suppress(NetfaultError):
            await _sh(["nft", "delete", "table", "netdev", self.host_table])
        shutil.rmtree(NETNS_ETC / self.name, ignore_errors=True)

    # -- inside the namespace -----------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` made to run inside the namespace (``ip netns exec`` execs it: same pid).
        For a program started by someone else, e.g. a wrapper script Playwright launches as
        Chromium, so the browser's network is the namespace's while its control pipe is not."""
        return ["ip", "netns", "exec", self.name, *argv]

    async def run(self, argv: Sequence[str], **kwargs: Any) -> asyncio.subprocess.Process:
        """Start ``argv`` inside the namespace; ``kwargs`` go to ``create_subprocess_exec``."""
        return await asyncio.create_subprocess_exec(*self.command(argv), **kwargs)

    def host_url(self, url: str) -> str:
        """``url`` as seen from inside the namespace: loopback hosts become the host's veth
        address. The server must listen there too (``host="0.0.0.0"``)."""
        parts = urlsplit(url)
        if parts.hostname not in _LOOPBACK_HOSTS:
            return url
        netloc = self.host_ip if parts.port is None else f"{self.host_ip}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- faults ---------------------------------------------------------------------------

    async def cut(self) -> FaultEvent:
        began = time.monotonic()
        self._state.cut = True
        return await self._apply_rules("cut", began)

    async def restore(self) -> FaultEvent:
        began = time.monotonic()
        self._state.cut = False
        return await self._apply_rules("restore", began)

    async def loss(self, percent: int) -> FaultEvent:
        if not 0 <= percent <= 100:
            raise ValueError("loss is a percentage, 0 to 100")
        began = time.monotonic()
        self._state.loss_percent = percent
        return await self._apply_rules("loss", began, f"{percent}%")

    async def allow_only(self, host: str, *ports: int) -> FaultEvent:
        if not ports:
            raise ValueError("allow_only needs at least one port")
        began = time.monotonic()
        self._state.allowed = (str(ipaddress.ip_address(host)), tuple(ports))
        return await self._apply_rules("allow_only", began, f"{host} {','.join(map(str, ports))}")

    async def rate(self, kbit: int) -> FaultEvent:
        if kbit <= 0:
            raise ValueError("rate is a positive number of kbit/s")
        began = time.monotonic()
        # A burst of ~20 ms at the rate (at least a few full packets) and up to 100 ms of
        # queue, like a slow access link; more queue would add delay, less would add loss.
        burst = max(4096, kbit * 1000 // 8 // 50)
        tbf = f"root tbf rate {kbit}kbit burst {burst} latency 100ms".split()
        await asyncio.gather(
            _sh(["tc", "qdisc", "replace", "dev", self.host_dev, *tbf]),
            _sh(["tc", "-n", self.name, "qdisc", "replace", "dev", self.ns_dev, *tbf]),
        )
        self._state.rate_kbit = kbit
        return self._record("rate", began, f"{kbit}kbit")

    async def link_down(self) -> FaultEvent:
        began = time.monotonic()
        # The namespace's own interface goes down, as when a laptop's Wi-Fi drops: its routes
        # vanish and sending fails at once there, while the host only sees no carrier.
        await _sh(["ip", "-n", self.name, "link", "set", self.ns_dev, "down"])
        self._state.link_down = True
        return self._record("link_down", began)

    async def link_up(self) -> FaultEvent:
        began = time.monotonic()
        await self._link_up()
        self._state.link_down = False
        return self._record("link_up", began)

    async def _link_up(self) -> None:
        await _sh(["ip", "-n", self.name, "-batch", "-"], stdin=(
            f"link set {self.ns_dev} up\nroute replace default via {self.host_ip}\n"
        ))

    async def clear(self) -> FaultEvent:
        began = time.monotonic()
        if self._state.rate_kbit is not None:
            await asyncio.gather(
                _sh(["tc", "qdisc", "del", "dev", self.host_dev, "root"]),
                _sh(["tc", "-n", self.name, "qdisc", "del", "dev", self.ns_dev, "root"]),
            )
        if self._state.link_down:
            await self._link_up()
        self._state = _Impairment()
        return await self._apply_rules("clear", began)

    # -- rules ----------------------------------------------------------------------------

    def _rules(self, *, outbound: bool) -> list[str]:
        """Rules for packets the namespace sends (``outbound``, host-side ingress) or
        receives (namespace-side ingress)."""
        state = self._state
        if state.cut:
            return ["drop"]
        rules: list[str] = []
        if state.loss_percent:
            rules.append(f"meta protocol ip numgen random mod 100 < {state.loss_percent} drop")
        if state.allowed is not None:
            host, ports = state.allowed
            port_set = "{ " + ", ".join(map(str, ports)) + " }"
            if outbound:
                match = f"ip daddr {host} meta l4proto {{ tcp, udp }} th dport {port_set}"
            else:
                match = f"ip saddr {host} meta l4proto {{ tcp, udp }} th sport {port_set}"
            # ARP still passes: without it nothing, not even the allowed traffic, gets through.
            rules += ["meta protocol arp accept", f"{match} accept", "drop"]
        return rules

    async def _apply_rules(self, action: str, began: float, detail: str = "") -> FaultEvent:
        def script(table: str, rules: list[str]) -> str:
            # One nft transaction per side: flushed and refilled atomically.
            lines = [f"flush chain netdev {table} ingress"]
            lines += [f"add rule netdev {table} ingress {rule}" for rule in rules]
            return "\n".join(lines) + "\n"

        await asyncio.gather(
            _sh(["nft", "-f", "-"], stdin=script(self.host_table, self._rules(outbound=True))),
            self._nft_in_ns(script("fault", self._rules(outbound=False))),
        )
        return self._record(action, began, detail)

    async def _nft_in_ns(self, script: str) -> None:
        await _sh(["ip", "netns", "exec", self.name, "nft", "-f", "-"], stdin=script)

    def _record(self, action: str, began: float, detail: str = "") -> FaultEvent:
        event = FaultEvent(action, began, time.monotonic(), detail)
        self.events.append(event)
        return event

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, host={self.host_ip}, ns={self.ns_ip})"


@contextlib.asynccontextmanager
async def namespace() -> AsyncIterator[Namespace]:
    """A fresh ``Namespace`` for the block, removed afterwards whatever happens."""
    ns = await Namespace.create()
    try:
        yield ns
    finally:
        await ns.close()
