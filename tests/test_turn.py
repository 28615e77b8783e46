"""TURN: credentials coturn accepts, calls that connect only through the relay, and a coturn
configuration that coturn runs and that keeps the relay out of private networks."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aioice.ice
import pytest

from signaling.ice import ice_servers_for
from signaling.protocol import IceServer
from telehealth.config import Config
from telehealth.tls import self_signed
from telehealth.turn import (
    DENIED_PEER_NETWORKS,
    render_coturn_config,
    turn_credentials,
    turn_warning,
)
from tests.conftest import eventually
from tests.coturn import (
    CoturnServer,
    candidate_types,
    config_text,
    launch_coturn,
    peer_pair,
    relay_port_window,
    rtc_configuration,
    sandbox_lines,
    start_coturn,
)
from tests.ports import free_port

SECRET = "correct horse battery staple"
NOW = 1_800_000_000.0

# -- credentials --------------------------------------------------------------------------


def test_credentials_follow_the_turn_rest_convention() -> None:
    username, password = turn_credentials(SECRET, "p_0123456789ab", NOW, 3600)

    assert username == "1800003600:p_0123456789ab"
    expected = base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest())
    assert password == expected.decode()
    # A fixed vector, computed once with `printf %s 1800003600:p_0123456789ab |
    # openssl dgst -sha1 -hmac "correct horse battery staple" -binary | base64`.
    assert password == "nZv2BIKGdzZVEIAnnxsTmrQ1FZ0="
    assert SECRET not in username + password


@pytest.mark.parametrize("tag", ["", "Jane Doe", "a:b", "x" * 65, "naïve"])
def test_a_user_tag_must_be_opaque(tag: str) -> None:
    with pytest.raises(ValueError):
        turn_credentials(SECRET, tag, NOW, 3600)


def test_ice_servers_carry_stun_and_fresh_turn_credentials_never_the_secret() -> None:
    config = Config(
        stun_urls=("stun:turn.clinic.example:3478",),
        turn_urls=(
            "turn:turn.clinic.example:3478?transport=udp",
            "turns:turn.clinic.example:443?transport=tcp",
        ),
        turn_secret=SECRET,
        turn_credential_ttl_seconds=600,
    )

    servers = ice_servers_for(config, "p_0123456789ab", NOW)

    assert servers[0] == IceServer(urls=["stun:turn.clinic.example:3478"])
    assert servers[1].urls == list(config.turn_urls)
    assert servers[1].username == "1800000600:p_0123456789ab"
    assert servers[1].credential == turn_credentials(SECRET, "p_0123456789ab", NOW, 600)[1]
    assert SECRET not in repr(servers)
    # A rejoin later gets credentials that last longer.
    assert (
        ice_servers_for(config, "p_0123456789ab", NOW + 60)[1].username
        == "1800000660:p_0123456789ab"
    )


def test_without_turn_the_server_warns_and_half_setups_are_refused() -> None:
    assert ice_servers_for(Config(), "p_1", NOW) == []
    assert "strict firewalls" in (turn_warning(Config()) or "")
    assert turn_warning(Config(turn_urls=("turn:t.example:3478",), turn_secret=SECRET)) is None
    for broken in (
        Config(turn_urls=("turn:t.example:3478",)),
        Config(turn_secret=SECRET),
        Config(turn_urls=("https://t.example",), turn_secret=SECRET),
        Config(stun_urls=("turn:t.example",)),
    ):
        with pytest.raises(ValueError):
            turn_warning(broken)


# -- the coturn configuration we print ----------------------------------------------------


def test_coturn_config_listens_on_443_for_tls_and_denies_private_peers() -> None:
    text = render_coturn_config(
        "turn.clinic.example", SECRET, external_ip=None, tls_cert=None, tls_key=None
    )
    lines = {line for line in text.splitlines() if line and not line.startswith("#")}

    for required in (
        "use-auth-secret",
        f"static-auth-secret={SECRET}",
        "realm=turn.clinic.example",
        "listening-port=3478",
        "tls-listening-port=443",
        "cert=/etc/letsencrypt/live/turn.clinic.example/fullchain.pem",
        "pkey=/etc/letsencrypt/live/turn.clinic.example/privkey.pem",
        "no-tlsv1",
        "no-tlsv1_1",
        "no-multicast-peers",
        "no-cli",
        "fingerprint",
        "stale-nonce=600",
        "syslog",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "denied-peer-ip=172.16.0.0-172.31.255.255",
        "denied-peer-ip=192.168.0.0-192.168.255.255",
        "denied-peer-ip=127.0.0.0-127.255.255.255",
        "denied-peer-ip=169.254.0.0-169.254.255.255",
        "denied-peer-ip=100.64.0.0-100.127.255.255",
        "denied-peer-ip=0.0.0.0-0.255.255.255",
        "denied-peer-ip=::1",
        "denied-peer-ip=fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "denied-peer-ip=fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ):
        assert required in lines, required
    for prefix in ("user-quota=", "total-quota=", "max-bps=", "min-port=", "max-port="):
        assert any(line.startswith(prefix) for line in lines), prefix
    assert not any(
        line.startswith(("allowed-peer-ip", "external-ip", "allow-loopback")) for line in lines
    )


def coturn_range_holds(coturn_range: str, address: str) -> bool:
    """coturn 4.6's ioa_addr_in_range (src/client/ns_turn_ioaddr.c), quirks included: an
    all-zero bound means "unbounded", other families order IPv4 before IPv6, and IPv6
    bounds compare byte by byte."""
    first_text, _, last_text = coturn_range.partition("-")
    first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text or first_text)
    addr = ipaddress.ip_address(address)

    def less_eq(
        a: ipaddress.IPv4Address | ipaddress.IPv6Address,
        b: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> bool:
        if a.version != b.version:
            return a.version < b.version
        if a.version == 4:
            return int(a) <= int(b)
        return all(x <= y for x, y in zip(a.packed, b.packed))

    if int(first) == 0 or less_eq(first, addr):
        return int(last) == 0 or less_eq(addr, last)
    return False


@pytest.mark.parametrize(
    "address, denied",
    [
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("2001:4860:4860::8888", False),
        ("2606:4700::1111", False),
        ("10.1.2.3", True),
        ("172.20.0.1", True),
        ("192.168.1.1", True),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("100.100.1.1", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("fd00::2", True),
        ("fe80::1", True),
        ("::ffff:10.0.0.1", True),
        ("64:ff9b::a00:1", True),
    ],
)
def test_coturn_reads_the_denied_ranges_as_meant(address: str, denied: bool) -> None:
    text = render_coturn_config(
        "turn.clinic.example", SECRET, external_ip=None, tls_cert=None, tls_key=None
    )
    ranges = [
        line.split("=", 1)[1] for line in text.splitlines() if line.startswith("denied-peer-ip=")
    ]

    assert any(coturn_range_holds(r, address) for r in ranges) is denied


def test_coturn_config_behind_nat_lets_relayed_partners_reach_each_other() -> None:
    text = render_coturn_config(
        "turn.clinic.example",
        SECRET,
        external_ip="203.0.113.7/10.0.0.5",
        tls_cert="/etc/ssl/turn.pem",
        tls_key="/etc/ssl/turn.key",
    )
    lines = text.splitlines()
    assert "external-ip=203.0.113.7/10.0.0.5" in lines
    assert "allowed-peer-ip=10.0.0.5" in lines
    # Relays on IPv4 only: coturn cannot deny "::", which Linux delivers to the machine itself.
    assert "relay-ip=10.0.0.5" in lines
    assert "cert=/etc/ssl/turn.pem" in lines


@pytest.mark.parametrize(
    "realm, secret, external_ip",
    [
        ("turn.clinic.example", "s3cret\nallow-loopback-peers", None),
        ("turn.clinic.example\nno-auth", SECRET, None),
        ("turn.clinic.example", "", None),
        ("turn.clinic.example", SECRET, "not-an-address"),
        ("turn.clinic.example", SECRET, "203.0.113.7/fd00::5"),
    ],
)
def test_coturn_config_refuses_values_that_would_add_options(
    realm: str, secret: str, external_ip: str | None
) -> None:
    with pytest.raises(ValueError):
        render_coturn_config(realm, secret, external_ip=external_ip, tls_cert=None, tls_key=None)


# -- real calls through a real coturn -----------------------------------------------------


def relay_servers(
    server: CoturnServer,
    *,
    secret: str | None = None,
    now: float | None = None,
    ttl: float = 600,
    tag: str = "p_0123456789ab",
) -> list[IceServer]:
    """ICE servers for this coturn as the app hands them out (UDP TURN first)."""
    config = Config(
        turn_urls=tuple(server.urls),
        turn_secret=secret or server.secret,
        turn_credential_ttl_seconds=ttl,
    )
    return ice_servers_for(config, tag, time.time() if now is None else now)


async def test_a_relay_only_call_carries_media_through_coturn(coturn: CoturnServer) -> None:
    async with peer_pair(
        rtc_configuration(relay_servers(coturn, tag="p_caller")),
        rtc_configuration(relay_servers(coturn, tag="p_callee")),
    ) as call:
        await call.connect()

        for description in (call.caller.localDescription, call.callee.localDescription):
            assert candidate_types(description.sdp) == {"relay"}
        await eventually(lambda: call.caller.connectionState == "connected", 5.0)
        await eventually(
            lambda: (
                call.received_by_callee["video"] >= 10 and call.received_by_callee["audio"] >= 10
            ),
            5.0,
        )


@pytest.mark.parametrize(
    "secret, now",
    # None: the coturn's own secret (tests/conftest.py), with credentials long expired.
    [("a wrong secret", None), (None, time.time() - 7200)],
    ids=["wrong-secret", "expired"],
)
async def test_bad_credentials_get_no_relay_and_no_call(
    coturn: CoturnServer, secret: str | None, now: float | None
) -> None:
    async with peer_pair(
        rtc_configuration(relay_servers(coturn, secret=secret, now=now, ttl=600)),
        rtc_configuration(relay_servers(coturn)),
    ) as call:
        await call.connect()

        assert "typ relay" not in call.caller.localDescription.sdp
        with pytest.raises(TimeoutError):
            await eventually(lambda: call.caller.connectionState == "connected", 3.0)
        assert call.received_by_callee["video"] == 0


async def test_a_call_outlives_its_credentials(tmp_path: Path) -> None:
    # Allocations granted for 4 s, so aiortc refreshes them every ~3.3 s, after the
    # credentials (2-3 s) have expired: the call must go on.
    server = start_coturn(
        tmp_path, SECRET, options={"max-allocate-lifetime": "4", "stale-nonce": "2"}
    )
    try:
        servers = relay_servers(server, ttl=2)
        expiry = int((servers[0].username or "").split(":")[0])
        async with peer_pair(rtc_configuration(servers), rtc_configuration(servers)) as call:
            await call.connect()
            await eventually(lambda: call.received_by_callee["video"] >= 1, 5.0)
            await eventually(lambda: time.time() > expiry + 5, 10.0, interval=0.2)
            seen = call.received_by_callee["video"]
            await eventually(lambda: call.received_by_callee["video"] > seen + 5, 2.0)
    finally:
        server.stop()


@contextlib.contextmanager
def coturn_with_printed_config(
    tmp_path: Path, *, external_ip: str | None
) -> Iterator[tuple[CoturnServer, int]]:
    """Run coturn on exactly what ``telehealth turn config`` prints, on free ports; yields the
    server and its TLS port. For the test, logs go to a file instead of syslog."""
    cert, key = self_signed(tmp_path / "tls", "127.0.0.1")
    port, tls_port = free_port(), free_port()
    min_relay, max_relay = relay_port_window()
    text = render_coturn_config(
        "turn.clinic.example",
        SECRET,
        external_ip=external_ip,
        tls_cert=str(cert),
        tls_key=str(key),
        listening_port=port,
        tls_listening_port=tls_port,
        min_relay_port=min_relay,
        max_relay_port=max_relay,
    )
    assert "\nsyslog\n" in text
    text = text.replace("\nsyslog\n", "\n") + config_text(sandbox_lines(tmp_path, port))
    server = launch_coturn(tmp_path, text, port=port, secret=SECRET)
    try:
        yield server, tls_port
    finally:
        server.stop()


def tls_version(port: int) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
        context.wrap_socket(raw) as tls,
    ):
        return tls.version()


def private_machine_address() -> str:
    """This machine's first IPv4 address in a denied range: the relay address coturn will use
    when a client reaches it there, so a peer the printed config must refuse."""
    for address in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False):
        if any(
            ipaddress.ip_address(address) in ipaddress.ip_network(n) for n in DENIED_PEER_NETWORKS
        ):
            return address
    pytest.skip("this machine has no private IPv4 address to relay to")


@pytest.mark.parametrize(
    "behind_nat", [False, True], ids=["private-peers-refused", "own-address-allowed"]
)
async def test_coturn_runs_the_printed_config(tmp_path: Path, behind_nat: bool) -> None:
    address = private_machine_address()
    # Behind NAT the config allows the relay's own private address, so that two partners who
    # both need the relay reach each other; otherwise that address is a private peer.
    external_ip = f"203.0.113.7/{address}" if behind_nat else None
    with coturn_with_printed_config(tmp_path, external_ip=external_ip) as (server, tls_port):
        assert tls_version(tls_port) in ("TLSv1.2", "TLSv1.3")
        servers = ice_servers_for(
            Config(turn_urls=(f"turn:{address}:{server.port}?transport=udp",), turn_secret=SECRET),
            "p_0123456789ab",
            time.time(),
        )
        async with peer_pair(rtc_configuration(servers), rtc_configuration(servers)) as call:
            await call.connect()
            assert candidate_types(call.caller.localDescription.sdp) == {"relay"}
            if behind_nat:
                await eventually(lambda: call.received_by_callee["video"] >= 5, 5.0)
            else:
                with pytest.raises(TimeoutError):
                    await eventually(lambda: call.caller.connectionState == "connected", 3.0)
                # Refused by the range that holds the address, not by a catch-all line.
                denied = [
                    line
                    for line in server.log_file.read_text(errors="replace").splitlines()
                    if f"peer IP {address} denied in the range" in line
                ]
                assert denied
                ranges = {line.rsplit(" ", 1)[1] for line in denied}
                assert all(ipaddress.ip_address(address) in _as_network(r) for r in ranges), ranges


def _as_network(coturn_range: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    first, _, last = coturn_range.partition("-")
    low, high = ipaddress.ip_address(first), ipaddress.ip_address(last or first)
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = list(
        ipaddress.summarize_address_range(low, high)  # type: ignore[arg-type]
    )
    assert len(networks) == 1, coturn_range
    return networks[0]
