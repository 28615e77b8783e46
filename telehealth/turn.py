"""TURN relay for partners who cannot reach the others directly.

Credentials follow the TURN REST convention that coturn checks with ``use-auth-secret``: the
username is ``"<expiry unix time>:<opaque tag>"`` and the password is
``base64(HMAC-SHA1(secret, username))``. The server and coturn share the secret; browsers only
ever see a username and password that stop working at the expiry, so a leaked page cannot
hand out relay access for longer than that. coturn checks the expiry when a relay is allocated,
and a call that started in time keeps its relay (tests/test_turn.py shows it), so the lifetime
only has to cover the time from joining to the call starting. A browser's ICE restart allocates
anew, though: after the expiry a page needs fresh servers (a rejoin) before it restarts ICE.

Pure: no I/O; callers pass the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re

from telehealth.config import Config

# RFC 7064 / 7065 URIs as browsers and aiortc accept them: a host name, IPv4 or [IPv6],
# an optional port, and for TURN an optional transport.
_HOST = r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
_STUN_URL = re.compile(rf"^stuns?:{_HOST}(?::\d{{1,5}})?$")
_TURN_URL = re.compile(rf"^turns?:{_HOST}(?::\d{{1,5}})?(?:\?transport=(?:udp|tcp))?$")

# A tag is an opaque id, never a name: coturn writes usernames into its log.
_USER_TAG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Addresses a relay must never send to: the clinic's own networks, the TURN host itself, and
# ranges that are not on the public internet (IANA special-purpose registries, RFC 6890).
# Without these, anyone holding credentials could use the relay to reach internal services.
DENIED_PEER_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",  # "this" network
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local (includes cloud metadata services)
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation
    "192.88.99.0/24",  # old 6to4 relays
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and broadcast
    # Not "::": coturn reads a range starting at the all-zero address as "from anything",
    # so "::" alone would deny every peer. relay-ip below closes that gap instead.
    "::1/128",  # loopback
    "::ffff:0:0/96",  # IPv4-mapped: would sidestep the IPv4 list
    "64:ff9b::/96",  # NAT64: same
    "100::/64",  # discard
    "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, ...)
    "2001:db8::/32",  # documentation
    "2002::/16",  # 6to4: embeds IPv4 addresses
    "fc00::/7",  # unique local (private)
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)


def turn_credentials(secret: str, user_tag: str, now: float, ttl: float) -> tuple[str, str]:
    """Return ``(username, password)`` valid until ``now + ttl`` for coturn's use-auth-secret.

    ``user_tag`` must be opaque (a person id or a random tag): coturn logs usernames.
    """
    if not secret:
        raise ValueError("the TURN secret is empty")
    if not _USER_TAG.match(user_tag):
        raise ValueError("a TURN user tag is 1-64 letters, digits, '_' or '-'")
    if ttl <= 0:
        raise ValueError("a TURN credential lifetime must be positive")
    username = f"{int(now + ttl)}:{user_tag}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def turn_warning(config: Config) -> str | None:
    """A sentence for the start-up log and the dashboard when TURN is missing, else None.

    Raises ValueError for a setup that cannot work, so the server refuses to start instead of
    handing browsers servers they cannot use.
    """
    for url in config.stun_urls:
        if not _STUN_URL.match(url):
            raise ValueError(f"not a stun: or stuns: URL: {url!r}")
    for url in config.turn_urls:
        if not _TURN_URL.match(url):
            raise ValueError(f"not a turn: or turns: URL: {url!r}")
    if config.relay_only and not config.turn_urls:
        raise ValueError("relay-only media needs a TURN server (TELEHEALTH_TURN_URLS)")
    if config.turn_urls and not config.turn_secret:
        raise ValueError("TURN URLs are configured without a TURN secret")
    if config.turn_secret and not config.turn_urls:
        raise ValueError("a TURN secret is configured without TURN URLs")
    if config.turn_credential_ttl_seconds <= 0:
        raise ValueError("the TURN credential lifetime must be positive")
    if not config.turn_urls:
        return "No TURN relay is configured: partners behind strict firewalls may fail to connect."
    return None


def _range(network: str) -> str:
    """coturn 4.6 takes ``denied-peer-ip`` as a single address or ``first-last``, not CIDR."""
    net = ipaddress.ip_network(network)
    if net.num_addresses == 1:
        return str(net.network_address)
    return f"{net.network_address}-{net.broadcast_address}"


def _one_line(name: str, value: str) -> str:
    # A newline in a value would let it add options of its own to the file.
    if not value or any(c in value for c in "\r\n\0") or value != value.strip():
        raise ValueError(f"{name} must be a non-empty single line without surrounding spaces")
    return value


def render_coturn_config(
    realm: str,
    secret: str,
    *,
    external_ip: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    listening_port: int = 3478,
    tls_listening_port: int = 443,
    min_relay_port: int = 49152,
    max_relay_port: int = 65535,
    user_quota: int = 24,
    total_quota: int = 1200,
    max_bytes_per_second: int = 500_000,
    relay_ip: str | None = None,
) -> str:
    """A ready ``/etc/turnserver.conf`` for a clinic's relay, each line explained for its admin.

    ``external_ip`` is ``"public"`` or ``"public/private"`` when the machine sits behind NAT
    (most clouds). ``tls_cert``/``tls_key`` default to Let's Encrypt's paths for ``realm``.
    ``relay_ip`` is the machine's own IPv4 address for relays; it defaults to the private half
    of ``external_ip``.
    """
    realm = _one_line("realm", realm)
    if not re.fullmatch(r"[A-Za-z0-9.-]+", realm):
        raise ValueError("the realm is the clinic's domain name, e.g. turn.clinic.example")
    secret = _one_line("secret", secret)
    cert = _one_line("tls_cert", tls_cert or f"/etc/letsencrypt/live/{realm}/fullchain.pem")
    key = _one_line("tls_key", tls_key or f"/etc/letsencrypt/live/{realm}/privkey.pem")
    for name, port in (
        ("listening_port", listening_port),
        ("tls_listening_port", tls_listening_port),
    ):
        if not 1 <= port <= 65535:
            raise ValueError(f"{name} must be a port number")
    if not 1024 <= min_relay_port < max_relay_port <= 65535:
        raise ValueError("relay ports must be a range within 1024-65535")
    private_ip: str | None = None
    if external_ip is not None:
        public, _, private = external_ip.partition("/")
        ipaddress.ip_address(public)  # raises ValueError on anything else
        if private:
            private_ip = str(ipaddress.ip_address(private))
    relay_ip = relay_ip or private_ip
    if relay_ip is not None and ipaddress.ip_address(relay_ip).version != 4:
        raise ValueError("relay_ip must be an IPv4 address")

    lines = [
        "# coturn configuration for telehealth, generated by `telehealth turn config`.",
        "# Install with: apt-get install coturn; save as /etc/turnserver.conf; then",
        "#   systemctl edit coturn  ->  [Service] AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "# (coturn runs as the 'turnserver' user and needs it to listen on port 443), make the",
        "# certificate and key readable by that user, and: systemctl restart coturn.",
        "# Open in the firewall: 3478 UDP+TCP, 443 TCP, and the relay ports below (UDP).",
        "# Give telehealth the same secret (TELEHEALTH_TURN_SECRET) and these URLs",
        "# (TELEHEALTH_TURN_URLS, comma-separated):",
        f"#   turn:{realm}:{listening_port}?transport=udp",
        f"#   turn:{realm}:{listening_port}?transport=tcp",
        f"#   turns:{realm}:{tls_listening_port}?transport=tcp",
        "",
        "# Name of this relay; browsers see it in authentication challenges.",
        f"realm={realm}",
        f"server-name={realm}",
        "",
        "# Only telehealth hands out logins: short-lived ones derived from this shared secret.",
        "# Keep this file readable by root and coturn only; change both sides together.",
        "use-auth-secret",
        f"static-auth-secret={secret}",
        "",
        "# Plain TURN over UDP and TCP (the fast path for most networks).",
        f"listening-port={listening_port}",
        "# TURN over TLS on the HTTPS port: works from hotel and corporate networks that only",
        "# let web traffic out.",
        f"tls-listening-port={tls_listening_port}",
        f"cert={cert}",
        f"pkey={key}",
        "# Old TLS versions are broken; browsers do not need them.",
        "no-tlsv1",
        "no-tlsv1_1",
        "# Browsers never use TURN over DTLS; one listener less to expose.",
        "no-dtls",
    ]
    if external_ip is not None:
        lines += [
            "# This machine is behind NAT: tell partners the public address of their relay.",
            f"external-ip={external_ip}",
        ]
    # Linux delivers packets sent to the IPv6 "any" address (::) to the machine itself, and
    # coturn cannot deny that address (see DENIED_PEER_NETWORKS): relay over IPv4 only.
    relay_comment = (
        "# Relay over this IPv4 address only: no IPv6 relay can reach this machine via '::'."
    )
    if relay_ip is not None:
        lines += [relay_comment, f"relay-ip={relay_ip}"]
    else:
        lines += [
            relay_comment,
            "# Fill in this machine's IPv4 address and uncomment:",
            "#relay-ip=<IPv4 address>",
        ]
    lines += [
        "",
        "# UDP ports used for relayed media (open them in the firewall).",
        f"min-port={min_relay_port}",
        f"max-port={max_relay_port}",
        "# WebRTC only relays UDP; TCP relays would let logins reach arbitrary TCP services.",
        "no-tcp-relay",
        "",
        "# Never relay to private, loopback, link-local or reserved addresses: the relay must",
        "# not become a way into the clinic's own network or the cloud's metadata service.",
    ]
    if private_ip is not None:
        lines += [
            "# Except this server's own private address, so that two partners who both need",
            "# the relay can reach each other through it.",
            f"allowed-peer-ip={private_ip}",
        ]
    lines += [f"denied-peer-ip={_range(network)}" for network in DENIED_PEER_NETWORKS]
    lines += [
        "no-multicast-peers",
        "",
        "# Limits: allocations per login (two peers x three URLs x network interfaces, with room",
        "# for a rejoin), allocations in total (about 30 fully relayed sessions), and bytes per",
        "# second per allocation (4 Mbit/s: plenty for one video link, not enough to abuse).",
        f"user-quota={user_quota}",
        f"total-quota={total_quota}",
        f"max-bps={max_bytes_per_second}",
        "# Authentication challenges expire after 10 minutes.",
        "stale-nonce=600",
        "# Integrity checksums on every message, as browsers expect.",
        "fingerprint",
        "",
        "# Less to exploit: no admin console, no version in replies, no NAT-discovery replies",
        "# that amplify spoofed requests.",
        "no-cli",
        "no-software-attribute",
        "no-rfc5780",
        "no-stun-backward-compatibility",
        "response-origin-only-with-rfc5780",
        "",
        "# Log to the system log. Logins carry only an expiry time and an opaque participant",
        "# id, never a name, so the log holds no personal data.",
        "syslog",
        "",
    ]
    return "\n".join(lines)
