"""The ICE servers a participant gets in ``welcome``, with fresh TURN credentials."""

from __future__ import annotations

from signaling.protocol import IceServer
from telehealth.config import Config
from telehealth.turn import turn_credentials


def ice_servers_for(config: Config, person_id: str, now: float) -> list[IceServer]:
    """The ICE servers one participant gets in ``welcome``: STUN, then TURN with fresh credentials.

    One entry carries every TURN URL with the same credentials; browsers try them all (UDP,
    TCP, TLS), aiortc uses the first. A rejoin calls this again and so gets new credentials.
    """
    servers: list[IceServer] = []
    if config.stun_urls:
        servers.append(IceServer(urls=list(config.stun_urls)))
    if config.turn_urls:
        if not config.turn_secret:
            raise ValueError("TURN URLs are configured without a TURN secret")
        username, password = turn_credentials(
            config.turn_secret, person_id, now, config.turn_credential_ttl_seconds
        )
        servers.append(
            IceServer(urls=list(config.turn_urls), username=username, credential=password)
        )
    return servers
