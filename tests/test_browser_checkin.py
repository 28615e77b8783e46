"""The check-in the therapist sees, in real Chromium: a partner's checklist next to "Admit",
a moving car (park first, and the therapist knows), the number the therapist would call
confirmed or corrected in the waiting room (an impossible one refused in words)."""

from __future__ import annotations

import json
import time

import pytest
from playwright.async_api import Browser, expect

from telehealth import rooms
from tests.browser import (  # noqa: F401  (browser is a fixture)
    Person,
    axe_violations,
    browser,
    describe,
    open_person,
    screenshot,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.browser
# What one page does reaches the other through the server: on a loaded machine that takes
# longer than Playwright's default 5 s.
ACROSS = 20_000


async def test_the_therapist_sees_each_partners_check_in_and_a_corrected_number(
    server: RunningServer, browser: Browser,  # noqa: F811
) -> None:
    room = rooms.create_room(
        server.store, therapist="Dr Rivera",
        partners=[rooms.PartnerSpec("Sam Lee", "+1 202 555 0122"), rooms.PartnerSpec("Alex Kim", "+1 202 555 0121")],
        base_url=server.base_url, link_ttl=3600, now=time.time(), starts_at=time.time() + 600, minutes=50,
    )
    people: list[Person] = []
    try:
        therapist = await open_person(browser, "Dr Rivera", room.therapist_link)
        people.append(therapist)
        t = therapist.page
        await t.get_by_role("button", name="Start session").click()
        await expect(t.locator("#call-step")).to_be_visible()

        sam = await open_person(browser, "Sam", room.partner_links[0])
        alex = await open_person(browser, "Alex", room.partner_links[1])
        people += [sam, alex]
        # Sam: a private space, charged, not driving; no headphones.
        for label in ("I'm in a private space", "My device is charged", "I'm not driving"):
            await sam.page.get_by_label(label).check()
        await sam.page.get_by_role("button", name="Join session").click()
        await expect(sam.page.get_by_role("heading", name="Your therapist will let you in")).to_be_visible()
        sam_row = t.locator("#lobby-list li", has=t.get_by_role("button", name="Admit Sam Lee"))
        await expect(sam_row.locator(".lobby-checkin")).to_have_text(
            "Sam Lee: private space ✓, headphones —, charged ✓, not driving ✓", timeout=ACROSS)

        # Alex is in a moving car: told to park first, and the therapist sees it.
        await alex.page.get_by_label("I'm in a car that is moving").check()
        await expect(alex.page.get_by_role("alert").filter(has_text="Please park first")).to_be_visible()
        await alex.page.get_by_role("button", name="Join session").click()
        alex_row = t.locator("#lobby-list li", has=t.get_by_role("button", name="Admit Alex Kim"))
        await expect(alex_row.locator(".lobby-checkin")).to_contain_text("In a moving car: asked to park first", timeout=ACROSS)

        # Alex confirms the number on file; Sam corrects theirs, after one that is no number.
        await expect(alex.page.locator("#phone-question")).to_have_text(
            "Dr Rivera will call you at (•••) •••-0121. Is that your number?")
        await alex.page.get_by_role("button", name="Yes, that's my number").click()
        await expect(alex_row.locator(".lobby-checkin")).to_contain_text("Phone number confirmed", timeout=ACROSS)

        s = sam.page
        await s.get_by_role("button", name="Use another number").click()
        await s.get_by_label("Your phone number").fill("1------")
        await s.get_by_role("button", name="Save number").click()
        await expect(s.locator("#phone-error")).to_contain_text("is not a phone number we can call", timeout=ACROSS)
        await s.get_by_label("Your phone number").fill("+44 20 7946 0018")
        await s.get_by_role("button", name="Save number").click()
        await expect(s.locator("#phone-status")).to_have_text(
            "Saved. If the video stops working, your therapist will call you at +44 •• •••• ••18.",
            timeout=ACROSS)
        await expect(s.locator("#phone-question")).to_be_hidden()
        await expect(sam_row.locator(".lobby-checkin")).to_contain_text("Gave a new phone number", timeout=ACROSS)
        await screenshot(t, "therapist-lobby-checkin")
        await screenshot(s, "partner-waiting-phone")
        violations = await axe_violations(s)
        assert not violations, describe(violations)

        # Stored in E.164, audited with ids only.
        record = server.store.get_room(room.room_id)
        assert record is not None and record.partners[0].phone == "+442079460018"
        audit = [json.loads(line) for line in server.store.audit.export()]
        changes = [e for e in audit if e["event"] in ("phone_changed", "phone_confirmed")]
        assert [(e["event"], e["person_id"]) for e in changes] == [
            ("phone_confirmed", record.partners[1].id), ("phone_changed", record.partners[0].id)]
        # Hashes and random ids are hex and may hold any four digits: look for the number
        # whole in an entry, and for any piece of it in what an entry says.
        assert not any("79460018" in json.dumps(e) for e in audit)
        assert not any("7946" in json.dumps(e["detail"]) or "0018" in json.dumps(e["detail"]) for e in audit)
        for person in people:
            assert person.console.csp_violations == []
    finally:
        for person in people:
            await person.context.close()
