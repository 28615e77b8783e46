"""The client's own address behind a reverse proxy (``TELEHEALTH_TRUSTED_PROXIES``).

Behind nginx or Caddy every request comes from the proxy's address, so limits keyed on the
peer would put every visitor in one bucket: one guesser would lock every partner out. The
proxy appends the address it saw to ``X-Forwarded-For``; a client can put anything it likes
before that. So the header is read only when the peer itself is a trusted proxy, and from the
right: each trusted proxy's entry is skipped, and the first address that is not a trusted
proxy is the client (the right-most untrusted address). Nothing a client writes further left
is believed, and a client that connects directly is never believed at all.
``X-Forwarded-Proto`` (the scheme the browser used, for the same-site checks and HSTS) is
taken from trusted proxies only too.

``middleware(networks)`` rewrites ``request.remote`` (and ``request.scheme``) before any
handler runs, so pages, the WebSocket join, sign-ins and their limits all see the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses and CIDR blocks, as in ``127.0.0.1,10.0.0.0/8,::1``; ValueError naming the
    setting and the entry for anything else."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"TELEHEALTH_TRUSTED_PROXIES: {entry.strip()!r} is not an address or a network "
                             "(write addresses or CIDR blocks separated by commas, e.g. 127.0.0.1,10.0.0.0/8)") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443", as some proxies write it
        text = text[1:text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client seen on an IPv6 socket: the same address, the same bucket.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


def client_address(peer: str | None, forwarded_for: Iterable[str], networks: tuple[Network, ...]) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    right-most address in ``forwarded_for`` (the header's values, in order) that is not a
    trusted proxy. An entry that is not an address ends the walk at the last proxy seen."""
    address = _address(peer) if peer else None
    if address is None or not _trusted(address, networks):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        parsed = _address(hop)
        if parsed is None:
            break
        address = parsed
        if not _trusted(address, networks):
            break
    return str(address)


def middleware(networks: tuple[Network, ...]) -> Middleware:
    @web.middleware
    async def trusted_proxies(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        address = _address(peer) if peer else None
        if peer is None or address is None or not _trusted(address, networks):
            return await handler(request)
        client = client_address(peer, request.headers.getall("X-Forwarded-For", ()), networks) or peer
        proto = request.headers.get("X-Forwarded-Proto", "").rsplit(",", 1)[-1].strip().lower()
        scheme = proto if proto in ("http", "https") else request.scheme
        if client == peer and scheme == request.scheme:
            return await handler(request)
        return await handler(request.clone(remote=client, scheme=scheme))

    return trusted_proxies
