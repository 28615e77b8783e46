"""Each sender has a budget: a flood is refused at the socket that sends it, and costs nobody
else their seat."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from media.participant import SyntheticParticipant
from signaling import protocol as p
from tests.conftest import RunningServer

# An offer padded like one with a great many candidates: large, but under the 64 KiB cap.
LARGE_SDP = "v=0\r\n" + "a=candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host\r\n" * 700
FLOOD_PER_SECOND = 200


async def read_until_closed(ws: aiohttp.ClientWebSocketResponse, into: list[dict[str, Any]]) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            into.append(json.loads(msg.data))


async def test_a_flooding_partner_is_told_then_closed_and_the_therapist_keeps_their_seat(
    server: RunningServer,
) -> None:
    room = server.create_room()
    therapist = SyntheticParticipant(room.therapist_link, auto_admit=True)
    partner = SyntheticParticipant(room.partner_links[0])
    flooder_got: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        try:
            for person in (therapist, partner):
                await person.join()
            await partner.wait_for(lambda: partner.state == "in_call", 10)
            # The second partner is a plain socket that floods: admitted like anyone.
            ws = await http.ws_connect(f"{server.base_url}/ws", heartbeat=None)
            reader = asyncio.create_task(read_until_closed(ws, flooder_got))
            await ws.send_str(json.dumps({"type": "join", "v": 1, "token": room.partner_links[1].rsplit("/", 1)[1]}))
            await therapist.wait_for(lambda: any(m["type"] == "welcome" for m in flooder_got), 10)
            await therapist.wait_media([partner.me["id"]], frames=3, timeout=20)
            flood = json.dumps({"type": "sdp", "to": therapist.me["id"], "pc": "flood",
                                "description": {"type": "offer", "sdp": LARGE_SDP}})
            assert 32_000 < len(flood) < server.config.max_message_bytes
            sent, started = 0, time.monotonic()
            while not ws.closed and time.monotonic() - started < 10:
                try:
                    await ws.send_str(flood)
                except ConnectionError:
                    break
                sent += 1
                await asyncio.sleep(1 / FLOOD_PER_SECOND)
            await asyncio.wait_for(reader, 10)
            flooded_for = time.monotonic() - started

            # The flooder was told in plain words, then closed with the documented code.
            errors = [m for m in flooder_got if m["type"] == "error"]
            assert errors and errors[0]["code"] == "rate_limited"
            assert "too fast" in errors[0]["message"]
            bye = [m for m in flooder_got if m["type"] == "bye"]
            assert bye == [{"type": "bye", "reason": "too_fast", "action": "resume",
                            "message": "This connection sent too much, too fast, and was closed."}]
            assert ws.close_code == p.CLOSE_CODES[p.CloseReason.TOO_FAST] == 4009
            # Refused where it entered: the therapist saw at most the budget (the burst and
            # what refilled while the flood lasted, longer on a busy machine), not the flood.
            relayed = [m for m in therapist.received if m["type"] == "sdp" and m.get("pc") == "flood"]
            budget = (server.config.sender_burst_bytes + server.config.sender_bytes_per_second * flooded_for)
            assert len(relayed) <= budget // len(flood) + 1 < sent

            # The therapist keeps their seat: socket open, nobody told they are reconnecting,
            # no fallback step for them, media with the other partner still flowing.
            me = therapist.me["id"]
            await partner.wait_message("presence", peer=flooder_id(flooder_got), state="reconnecting")
            assert therapist.bye is None and therapist.state == "in_call" and therapist._ws is not None
            assert not [m for m in partner.received if m["type"] == "presence" and m["peer"] == me]
            assert not [m for m in therapist.received + partner.received
                        if m["type"] == "fallback" and m["person"] == me]
            before = therapist.frames_from(partner.me["id"])["video"]
            await therapist.wait_for(lambda: therapist.frames_from(partner.me["id"])["video"] > before + 5, 10)
            await therapist.send({"type": "ping", "t": 1})
            await therapist.wait_message("pong")
            # Their normal traffic (the join burst, offers and candidates, stats every 250 ms)
            # was never limited.
            assert not [e for e in therapist.errors + partner.errors if e["code"] == "rate_limited"]
        finally:
            for person in (therapist, partner):
                await person.close()


def flooder_id(messages: list[dict[str, Any]]) -> str:
    return next(m["you"]["id"] for m in messages if m["type"] == "welcome")
