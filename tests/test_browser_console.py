"""The therapist's console in real Chromium: sign in, create a session, copy its links, find
it again among today's sessions and open it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable

import pytest
from playwright.async_api import Browser, BrowserContext, expect

from telehealth import accounts
from telehealth.config import Config
from tests.browser import (  # noqa: F401  (browser is a fixture)
    axe_violations,
    browser,
    describe,
    new_person_context,
    screenshot,
    watch_console,
)
from tests.conftest import RunningServer, start_server
from tests.smtp_server import smtp_server

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:  # noqa: F811
    ctx = await new_person_context(browser, ("camera", "microphone", "clipboard-read", "clipboard-write"))
    yield ctx
    await ctx.close()


async def test_sign_in_create_a_session_and_copy_its_links(
    server: RunningServer, context: BrowserContext,
) -> None:
    accounts.add_user(server.store, "drtest", PASSWORD, "therapist", display_name="Dr Test", now=time.time())
    page = await context.new_page()
    page.set_default_timeout(15_000)
    console = watch_console(page)

    await page.goto(f"{server.base_url}/console")
    await expect(page).to_have_url(f"{server.base_url}/console/login")
    assert console.csp_violations == []
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    violations = await axe_violations(page)
    assert not violations, describe(violations)

    await page.get_by_label("Username").fill("drtest")
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That username and password do not match.")

    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{server.base_url}/console")
    cookie = next(c for c in await context.cookies() if c["name"] == "__Host-telehealth-console")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    await expect(page.get_by_label("Your name, as your clients will see it")).to_have_value("Dr Test")
    await page.locator("#partner1").fill("Alex Morgan")
    await page.locator("#phone1").fill("+1 202 555 0120")
    await page.locator("#partner2").fill("Sam Lee")
    await page.locator("#phone2").fill("+1 202 555 0130")
    await screenshot(page, "20-console")
    violations = await axe_violations(page)
    assert not violations, describe(violations)
    await page.get_by_role("button", name="Create session").click()

    await expect(page.get_by_role("heading", level=1)).to_have_text("Session created")
    link_pattern = re.compile(re.escape(server.base_url) + r"/j/[A-Za-z0-9_-]{43}$")
    fields = {
        "therapist": page.get_by_role("textbox", name="Your link (therapist)"),
        "Alex Morgan": page.get_by_role("textbox", name="Link for Alex Morgan"),
        "Sam Lee": page.get_by_role("textbox", name="Link for Sam Lee"),
    }
    links = {}
    for who, field in fields.items():
        await expect(field).to_have_value(link_pattern)
        links[who] = await field.input_value()
    assert len(set(links.values())) == 3
    await screenshot(page, "21-console-links")
    violations = await axe_violations(page)
    assert not violations, describe(violations)

    await page.get_by_role("button", name="Copy the link for Alex Morgan").click()
    await expect(page.locator("#copy-status")).to_have_text("Link for Alex Morgan copied.")
    assert await page.evaluate("() => navigator.clipboard.readText()") == links["Alex Morgan"]

    # Today's list shows the session; "Open session" takes the therapist into the room.
    await page.get_by_role("link", name="Back to sessions").click()
    item = page.locator(".room-item")
    await expect(item).to_have_count(1)
    await expect(item.locator(".room-who")).to_have_text("With Alex Morgan and Sam Lee")
    await expect(item.locator(".room-status")).to_have_text("Not started")
    await page.get_by_role("button", name="Open session").click()
    await expect(page).to_have_url(link_pattern)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Session with Alex Morgan and Sam Lee")
    await expect(page.locator("#session-time")).to_have_text(re.compile(r"^(today|tomorrow) at "))

    # The partner's link opens the partner's welcome, with the session time in words.
    partner = await context.new_page()
    await partner.goto(links["Alex Morgan"])
    await expect(partner.get_by_role("heading", level=1)).to_have_text("Welcome, Alex Morgan")
    await expect(partner.locator(".lead")).to_contain_text(re.compile(r"Your session with Dr Test is (today|tomorrow) at"))

    await page.goto(f"{server.base_url}/console")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{server.base_url}/console/login")
    await page.goto(f"{server.base_url}/console")
    await expect(page).to_have_url(f"{server.base_url}/console/login")
    assert console.csp_violations == []


async def test_a_refused_address_shows_failed_with_the_reason_and_can_be_sent_again(
    make_config: Callable[..., Config], context: BrowserContext,
) -> None:
    with smtp_server() as mailer:
        server = await start_server(make_config(smtp_url=f"smtp://127.0.0.1:{mailer.port}?starttls=off",
                                                timezone="America/New_York"))
        try:
            mailer.inbox.refuse.add("sam@example.com")
            accounts.add_user(server.store, "drtest", PASSWORD, "therapist", display_name="Dr Test", now=time.time())
            page = await context.new_page()
            page.set_default_timeout(20_000)
            console = watch_console(page)
            await page.goto(f"{server.base_url}/console/login")
            await page.get_by_label("Username").fill("drtest")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page).to_have_url(f"{server.base_url}/console")

            await page.locator("#partner1").fill("Sam Rivera")
            await page.locator("#phone1").fill("+44 20 7946 0018")
            await page.locator("#email1").fill("sam@example.com")
            await page.locator("#partner2").fill("Alex Kim")
            await page.locator("#email2").fill("alex@example.org")
            await page.locator("#minutes").fill("45")
            await page.get_by_role("button", name="Create session").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Session created")
            await expect(page.locator(".lead, p").filter(has_text="for 45 minutes")).to_have_count(1)
            sam_link = await page.get_by_role("textbox", name="Link for Sam Rivera").input_value()
            # The page follows each email: one refused for good, one sent.
            lines = page.locator(".mail-line .mail-state")
            await expect(lines).to_have_text([
                "failed: mailbox unavailable — copy the link instead", re.compile(r"^sent \d{2}:\d{2}$")])
            await screenshot(page, "console-links-email")

            await page.get_by_role("link", name="Back to sessions").click()
            item = page.locator(".room-item")
            await expect(item.locator(".room-length")).to_have_text("· 45 min")
            await expect(item.locator(".mail-item").first).to_contain_text(
                "Email to Sam Rivera: failed: mailbox unavailable — copy the link instead")
            await screenshot(page, "console-email-failed")
            violations = await axe_violations(page)
            assert not violations, describe(violations)

            # The clinic fixes the address on the mail server's side; the therapist sends again.
            mailer.inbox.refuse.clear()
            await page.get_by_role("button", name="Send again to Sam Rivera").click()
            await expect(item.locator(".mail-item").first.locator(".mail-state")).to_have_text(
                re.compile(r"^sent \d{2}:\d{2}$"), timeout=30_000)
            await expect(page.get_by_role("button", name="Send again to Sam Rivera")).to_have_count(0)
            await screenshot(page, "console-email-sent")
            [delivered] = mailer.inbox.to("sam@example.com")
            assert sam_link in delivered.body()
            failed = [json.loads(line) for line in server.store.audit.export() if '"email_failed"' in line]
            assert failed and failed[0]["detail"] == {"reason": "mailbox_unavailable", "attempts": 1, "smtp_code": 550}
            assert console.csp_violations == []
        finally:
            await server.runner.cleanup()
