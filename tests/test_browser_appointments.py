"""An appointment's links in real Chromium, in the reader's own time zone: a day early (when to
come back), inside the window (the check works, with how long until the start), after the
session (it has ended, and what to do); and the same three through signaling."""

from __future__ import annotations

import datetime
import re
import time
import zoneinfo

import pytest
from playwright.async_api import Browser, expect

from media.participant import SyntheticParticipant
from telehealth import rooms
from tests.browser import (  # noqa: F401  (browser is a fixture)
    axe_violations,
    browser,
    describe,
    open_person,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.browser

TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")


def appointment(server: RunningServer, starts_in: float, minutes: int = 50) -> rooms.CreatedRoom:
    """A room whose session starts ``starts_in`` seconds from now (negative: in the past; it
    was booked before then)."""
    now = time.time()
    return rooms.create_room(
        server.store, therapist="Dr Test", partners=[rooms.PartnerSpec("Sam Rivera", "+1 202 555 0102")],
        base_url=server.base_url, link_ttl=3600, now=min(now, now + starts_in - 60),
        starts_at=now + starts_in, minutes=minutes, overrun_s=server.config.link_overrun_seconds,
    )


def clock(ts: float) -> str:
    """How en-US Intl writes a time in Tokyo: "3:05 PM" (Chromium puts a narrow space before PM)."""
    when = datetime.datetime.fromtimestamp(ts, TOKYO)
    return f"{when.hour % 12 or 12}:{when:%M}"


async def test_a_link_before_its_window_in_it_and_after_it(server: RunningServer, browser: Browser) -> None:  # noqa: F811
    tomorrow = appointment(server, 26 * 3600)
    soon = appointment(server, 22 * 60 + 30)
    over = appointment(server, -3 * 3600)  # a 50-minute session that ended over two hours ago

    # A day early: when it is and when to come back, in the reader's zone (Tokyo here).
    early = await open_person(browser, "Sam", tomorrow.partner_links[0], locale="en-US", timezone_id="Asia/Tokyo")
    try:
        page = early.page
        await expect(page.get_by_role("heading", level=1)).to_have_text("It's not time for your session yet")
        assert tomorrow.starts_at is not None
        starts, opens = tomorrow.starts_at, tomorrow.starts_at - server.config.link_lead_seconds
        await expect(page.locator("#early-starts")).to_have_text(re.compile(
            rf"^(tomorrow|\w+day, \w+ \d+) at {re.escape(clock(starts))}\s[AP]M$"))
        await expect(page.locator("#early-opens")).to_have_text(re.compile(rf" at {re.escape(clock(opens))}\s[AP]M$"))
        assert not await page.locator("#join").count()
        violations = await axe_violations(page)
        assert not violations, describe(violations)
        assert early.console.csp_violations == []
    finally:
        await early.context.close()

    # Inside the window: the check works, and says how long until the start.
    inside = await open_person(browser, "Sam", soon.partner_links[0], locale="en-US", timezone_id="Asia/Tokyo")
    try:
        page = inside.page
        await expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Sam Rivera")
        assert soon.starts_at is not None
        await expect(page.locator("#session-countdown")).to_have_text(re.compile(
            rf"^Your session starts at {re.escape(clock(soon.starts_at))}\s[AP]M, in 2[0-3] minutes$"))
        await expect(page.locator("#net-verdict")).not_to_have_attribute("data-level", "running", timeout=30_000)
        await page.get_by_role("button", name="Join session").click()
        await expect(page.get_by_role("heading", name="Your therapist will let you in")).to_be_visible()
    finally:
        await inside.context.close()

    # After the session and its overrun: it has ended, and what to do now.
    after = await open_person(browser, "Sam", over.partner_links[0])
    try:
        page = after.page
        await expect(page.get_by_role("heading", level=1)).to_have_text("This session has ended")
        await expect(page.get_by_role("alert")).to_contain_text("contact your therapist to arrange a new session")
    finally:
        await after.context.close()

    # Signaling refuses the same links with the same reasons.
    for created, code in ((tomorrow, "too_early"), (over, "session_over")):
        person = SyntheticParticipant(created.partner_links[0])
        try:
            await person.join()
            await person.wait_for(lambda person=person: bool(person.errors), 10)
            assert person.errors[0]["code"] == code
        finally:
            await person.close()
    # An appointment's links expire with it, not a week after they were made.
    assert soon.expires_at == soon.starts_at + 50 * 60 + server.config.link_overrun_seconds  # type: ignore[operator]
