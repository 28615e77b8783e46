"""A whole session through a real coturn, relay-only: nobody learns anyone's address."""

from __future__ import annotations

import re
from typing import Any

import pytest

from media.participant import SyntheticParticipant
from telehealth.config import Config
from telehealth.turn import turn_warning
from tests.conftest import TURN_SECRET, start_server
from tests.coturn import CoturnServer

SECRET = TURN_SECRET  # the coturn fixture's (tests/conftest.py)


def candidate_types(sdp: str) -> set[str]:
    return set(re.findall(r"typ (\w+)", sdp))


async def test_relay_only_session_carries_media_only_through_turn(make_config: Any, coturn: CoturnServer) -> None:
    server = await start_server(make_config(turn_urls=tuple(coturn.urls), turn_secret=SECRET, relay_only=True))
    room = server.create_room()
    people = [SyntheticParticipant(room.therapist_link, auto_admit=True),
              SyntheticParticipant(room.partner_links[0]), SyntheticParticipant(room.partner_links[1])]
    try:
        for person in people:
            await person.join()
        for person in people:
            await person.wait_for(lambda person=person: person.state == "in_call", 10)
        welcome = next(m for m in people[1].received if m["type"] == "welcome")
        assert welcome["ice_transport_policy"] == "relay"
        [turn] = [s for s in welcome["ice_servers"] if s.get("username")]
        assert turn["username"].endswith(":" + welcome["you"]["id"]) and SECRET not in str(welcome)
        ids = [p.me["id"] for p in people]
        for person in people:
            await person.wait_media([i for i in ids if i != person.me["id"]], frames=5, timeout=20)
            for link in person.links.values():
                assert candidate_types(link.pc.localDescription.sdp) == {"relay"}
                assert candidate_types(link.pc.remoteDescription.sdp) == {"relay"}
    finally:
        for person in people:
            await person.close()
        await server.runner.cleanup()


def test_relay_only_without_turn_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="relay-only"):
        turn_warning(Config(relay_only=True))
    assert "firewalls" in (turn_warning(Config()) or "")
