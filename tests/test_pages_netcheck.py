"""The network check's far end through a real coturn: a relay-only offer is answered relay to
relay, and a relay the server cannot use is reported, not waited on; and its speed test's HTTP
endpoints, which send and take bytes and refuse what they should."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from media.probe import NetworkProbe, ProbeRelay, offers_only_relay, preferred_turn_url
from signaling.ice import ice_servers_for
from telehealth.config import Config
from telehealth.errors import ErrorCode, UserError
from tests.conftest import TURN_SECRET, RunningServer
from tests.coturn import CoturnServer, candidate_types, rtc_configuration
from web.netcheck import MAX_TRANSFER_BYTES, PROBE

SECRET = TURN_SECRET  # the coturn fixture's (tests/conftest.py)


def turn_config(coturn: CoturnServer, secret: str = SECRET) -> Config:
    return Config(turn_urls=tuple(coturn.urls), turn_secret=secret)


@pytest.fixture
async def page_side() -> AsyncIterator[list[RTCPeerConnection]]:
    """The browser's side of each check, closed at the end."""
    pcs: list[RTCPeerConnection] = []
    yield pcs
    for pc in pcs:
        await pc.close()


async def relay_only_offer(config: Config, pcs: list[RTCPeerConnection]) -> tuple[RTCPeerConnection, RTCDataChannel]:
    """What the page sends for its relay test: an offer gathered with the relay policy."""
    pc = RTCPeerConnection(rtc_configuration(ice_servers_for(config, "p_0123456789ab", time.time())))
    pcs.append(pc)
    ping = pc.createDataChannel("ping", ordered=False, maxRetransmits=0)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, ping


async def echoed(ping: RTCDataChannel, text: str) -> str:
    if ping.readyState != "open":
        opened = asyncio.Event()
        ping.on("open", opened.set)
        await asyncio.wait_for(opened.wait(), 10)
    replies: asyncio.Queue[str] = asyncio.Queue()
    ping.on("message", replies.put_nowait)
    ping.send(text)
    return await asyncio.wait_for(replies.get(), 5)


async def test_a_relay_only_offer_is_answered_through_the_relay(
    coturn: CoturnServer, page_side: list[RTCPeerConnection],
) -> None:
    config = turn_config(coturn)
    probe = NetworkProbe.from_config(config)
    try:
        pc, ping = await relay_only_offer(config, page_side)
        assert candidate_types(pc.localDescription.sdp) == {"relay"}
        answer = await probe.answer("offer", pc.localDescription.sdp)
        # Relay to relay, as in a relay-only call: the probe's own address is never offered.
        assert candidate_types(answer.sdp) == {"relay"}
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))
        assert await echoed(ping, "1:through the relay") == "1:through the relay"
    finally:
        await probe.close()


async def test_an_ordinary_offer_gets_an_ordinary_answer_even_with_a_relay_configured(
    coturn: CoturnServer, page_side: list[RTCPeerConnection],
) -> None:
    probe = NetworkProbe.from_config(turn_config(coturn))
    pc = RTCPeerConnection()
    page_side.append(pc)
    ping = pc.createDataChannel("ping")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        answer = await probe.answer("offer", pc.localDescription.sdp)
        assert "relay" not in candidate_types(answer.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))
        assert await echoed(ping, "2:direct") == "2:direct"
    finally:
        await probe.close()


async def test_a_relay_the_server_cannot_use_is_refused_at_once(
    coturn: CoturnServer, page_side: list[RTCPeerConnection],
) -> None:
    # The page got good credentials; the server's own secret is wrong (a half-done rotation).
    pc, _ = await relay_only_offer(turn_config(coturn), page_side)
    probe = NetworkProbe.from_config(turn_config(coturn, secret="a stale secret"))
    began = time.monotonic()
    try:
        with pytest.raises(UserError) as refused:
            await probe.answer("offer", pc.localDescription.sdp)
        assert refused.value.code == ErrorCode.INTERNAL and "relay" in refused.value.detail
        assert time.monotonic() - began < 6
        assert probe.running == 0
    finally:
        await probe.close()


def test_the_probe_takes_a_udp_relay_and_only_relay_offers_count_as_relay_tests() -> None:
    assert preferred_turn_url(("turns:t.example:443?transport=tcp", "turn:t.example:3478?transport=tcp",
                               "turn:t.example:3478")) == "turn:t.example:3478"
    assert preferred_turn_url(("turns:t.example:443?transport=tcp",)) == "turns:t.example:443?transport=tcp"
    assert ProbeRelay.from_config(Config()) is None
    relay = "a=candidate:1 1 udp 1 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0\r\n"
    host = "a=candidate:2 1 udp 2 10.0.0.2 50001 typ host\r\n"
    assert offers_only_relay("v=0\r\n" + relay)
    assert not offers_only_relay("v=0\r\n" + relay + host)
    assert not offers_only_relay("v=0\r\n")


# -- the speed test's HTTP side ------------------------------------------------------------


async def test_the_speed_endpoints_send_and_take_bytes_and_refuse_bad_requests(server: RunningServer) -> None:
    url = f"{server.create_room().partner_links[0]}/netcheck"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/down", params={"bytes": "300000"}) as response:
            body = await response.read()
            assert response.status == 200 and len(body) == 300_000
            # Random, so that no compressing proxy can make a slow link look fast.
            assert len(zlib.compress(body)) > 0.99 * len(body)
        async with http.post(f"{url}/up", data=bytes(200_000),
                             headers={"Content-Type": "application/octet-stream"}) as response:
            reply = await response.json()
            assert response.status == 200 and reply["bytes"] == 200_000
            assert set(reply["server_lag_ms"]) == {"p90", "max"}
        for bad in ("0", "-1", "x", str(MAX_TRANSFER_BYTES + 1)):
            async with http.get(f"{url}/down", params={"bytes": bad}) as response:
                assert response.status == 400, bad
        async with http.post(f"{url}/up", data=bytes(MAX_TRANSFER_BYTES + 1)) as response:
            assert response.status == 413
        async with http.post(f"{url}/up", data=b"x", headers={"Origin": "https://elsewhere.example"}) as response:
            assert response.status == 403
        forged = f"{server.base_url}/j/{'A' * 43}/netcheck"
        async with http.get(f"{forged}/down", params={"bytes": "10"}) as response:
            assert response.status == 404
    assert server.app[PROBE].transfers == 0
