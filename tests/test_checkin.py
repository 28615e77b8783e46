"""Check-in through the real server: a corrected number reaches the therapist's call list and
the phone step's call prompt; impossible numbers and wrong roles are refused and change
nothing; the console refuses impossible numbers and dates in words, never with a 500."""

from __future__ import annotations

import datetime
import html

import aiohttp
import pytest

from media.participant import SyntheticParticipant
from signaling.endpoint import SIGNALING
from tests.conftest import RunningServer
from tests.test_hub import snapshot
from tests.test_pages import staff


async def test_a_corrected_number_reaches_the_call_list_and_the_call_prompt(server: RunningServer) -> None:
    room = server.create_room(partners=1)
    therapist = SyntheticParticipant(room.therapist_link)
    sam = SyntheticParticipant(room.partner_links[0])
    try:
        await therapist.join()
        await therapist.wait_message("welcome", timeout=10)
        await sam.join()
        await sam.wait_message("waiting", timeout=10)
        sam_id = sam.me["id"]

        hub = server.app[SIGNALING].hub
        before = snapshot(hub)
        for bad in ("1------", "+1 555 555 0102", "call me"):
            await sam.send({"type": "confirm_phone", "phone": bad})
        await sam.wait_for(lambda: len(sam.errors) >= 3, 10)
        assert {e["code"] for e in sam.errors} == {"invalid_phone"}
        assert "not a phone number we can call" in sam.errors[0]["message"]
        # The therapist cannot speak for a partner.
        await therapist.send({"type": "confirm_phone", "phone": "+44 20 7946 0018"})
        await therapist.wait_for(lambda: bool(therapist.errors), 10)
        assert therapist.errors[0]["code"] == "forbidden"
        assert snapshot(hub) == before
        record = server.store.get_room(room.room_id)
        assert record is not None and record.partners[0].phone == "+12025550101"

        await sam.send({"type": "confirm_phone", "phone": "+44 20 7946 0018"})
        plan = await sam.wait_message("plan", timeout=10)
        assert plan["fallback"]["phone_hint"] == "+44 •• •••• ••18"
        calls = await therapist.wait_message("plan", timeout=10)
        assert calls["fallback"]["call_list"] == [{"id": sam_id, "name": "Partner 1", "phone": "+44 20 7946 0018"}]
        lobby = await therapist.wait_message("lobby", timeout=10, waiting=[
            {"id": sam_id, "name": "Partner 1", "phone": "corrected"}])
        assert lobby
        record = server.store.get_room(room.room_id)
        assert record is not None and record.partners[0].phone == "+442079460018"

        # Into the call, then the phone step: the prompt dials the corrected number.
        await therapist.send({"type": "admit", "participant": sam_id})
        await sam.wait_message("welcome", timeout=10)
        await therapist.send({"type": "switch_to_phone", "participant": sam_id})
        prompt = await therapist.wait_message("call_prompt", timeout=10)
        assert (prompt["text"], prompt["href"]) == ("Call Partner 1 at +44 20 7946 0018", "tel:+442079460018")
    finally:
        await sam.close()
        await therapist.close()


@pytest.mark.parametrize(("change", "words"), [
    ({"phone1": "1------"}, "is not a phone number we can call"),
    ({"phone2": "+1 555 555 0102", "partner2": "Sam"}, "is not a phone number we can call"),
    ({"email1": "sam at home"}, "is not an email address"),
    ({"starts_at": "99999-01-01T10:00"}, "Please give the session's date and time."),
    ({"starts_at": "9999-12-31T23:59"}, "at most a year ahead"),
    ({"starts_at": "0001-01-01T00:00"}, "already passed"),
    ({"starts_at": "2001-01-01T10:00"}, "already passed"),
    ({"minutes": "0"}, "between 1 and 480 minutes"),
    ({"minutes": "100000000000000000000"}, "between 1 and 480 minutes"),
    ({"minutes": "soon"}, "length in minutes"),
])
async def test_the_console_refuses_impossible_numbers_and_times_in_words(
    server: RunningServer, change: dict[str, str], words: str,
) -> None:
    async with aiohttp.ClientSession() as http:
        user = await staff(http, server, "drtest", "therapist")
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        form = {"therapist": "Dr Test", "partner1": "Alex", "phone1": "", "starts_at":
                soon.strftime("%Y-%m-%dT%H:%M"), "minutes": "50", "csrf": await user.csrf(), **change}
        response = await user.post("/console/rooms", form)
        assert response.status == 400
        assert words in html.unescape(await response.text())
        assert server.store.list_rooms() == []
