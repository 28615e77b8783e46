"""The ops dashboard in real Chromium, watching a real three-party call of aiortc peers.

An operator signs in and sees the live room by its opaque id, each person's role and state,
a chart per link that grows every second without a reload, the disruption ledger as it
happens (the therapist moves a partner to the phone and back; then that partner's machine
goes away for real), the usable share, and, once the therapist ends the session, the past
session with the same charts. A therapist is refused. Nothing on any page names anyone, and
every access is in the audit log.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from media.participant import SyntheticParticipant
from telehealth import accounts, rooms
from telehealth.audit import AuditEvent
from telehealth.config import Config
from telehealth.turn import turn_warning
from tests.browser import (  # noqa: F401  (browser is a fixture)
    axe_violations,
    browser,
    describe,
    new_person_context,
    screenshot,
    tab_through,
    visibly_focused,
    watch_console,
)
from tests.conftest import RunningServer, start_server

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery staple"
THERAPIST, ALEX, SAM = "Dr Ada Quill", "Alex Morgan", "Sam Lee"
PHONES = ("+1 202 555 0120", "+1 202 555 0130")
# What must never reach an ops page: names, and the numbers in any format (all ten digits:
# a chart's coordinates could hold a shorter run of them by chance).
PRIVATE = (THERAPIST, ALEX, SAM, "Morgan", "Quill", "+1 202", "555 0120", "2025550120", "555 0130",
           "2025550130")


async def start_ops_server(config: Config) -> RunningServer:
    return await start_server(config)


@pytest.fixture
async def ops_server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_ops_server(make_config())
    yield running
    await running.runner.cleanup()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:  # noqa: F811
    ctx = await new_person_context(browser, ())
    yield ctx
    await ctx.close()


@contextlib.asynccontextmanager
async def three_party_call(server: RunningServer) -> AsyncIterator[tuple[str, SyntheticParticipant, ...]]:
    created = rooms.create_room(
        server.store, therapist=THERAPIST,
        partners=[rooms.PartnerSpec(ALEX, PHONES[0]), rooms.PartnerSpec(SAM, PHONES[1])],
        base_url=server.base_url, link_ttl=3600, now=time.time(),
    )
    people = (SyntheticParticipant(created.therapist_link, auto_admit=True),
              SyntheticParticipant(created.partner_links[0]), SyntheticParticipant(created.partner_links[1]))
    try:
        for person in people:
            await person.join()
        for person in people:
            await person.wait_for(lambda person=person: person.state == "in_call", 10.0)
        therapist, a, b = people
        await therapist.wait_media([a.me["id"], b.me["id"]], frames=5, timeout=20)
        await a.wait_media([b.me["id"]], frames=5, timeout=20)
        yield (created.room_id, *people)
    finally:
        for person in people:
            await person.close()


async def sign_in(page: Page, base_url: str, username: str) -> None:
    await page.goto(f"{base_url}/ops")
    await expect(page).to_have_url(f"{base_url}/ops/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()


async def chart_points(page: Page, room_id: str) -> list[int]:
    return await page.evaluate(
        """(room) => [...document.querySelectorAll(`[data-room="${room}"] figure svg`)]
                     .map(svg => Number(svg.dataset.points))""", room_id)


async def assert_private(page: Page) -> None:
    text = await page.content()
    for secret in PRIVATE:
        assert secret not in text, f"{secret!r} is on {page.url}"


async def assert_accessible(page: Page) -> None:
    violations = await axe_violations(page)
    assert not violations, describe(violations)


async def test_an_operator_watches_a_live_call_its_disruptions_and_its_past(
    ops_server: RunningServer, context: BrowserContext,
) -> None:
    store = ops_server.store
    operator = accounts.add_user(store, "opsdesk", PASSWORD, "ops", display_name="Ops desk", now=time.time())
    page = await context.new_page()
    page.set_default_timeout(20_000)
    console = watch_console(page)

    async with three_party_call(ops_server) as (room_id, therapist, a, b):
        ids = {"therapist": therapist.me["id"], "a": a.me["id"], "b": b.me["id"]}

        await page.goto(f"{ops_server.base_url}/ops")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to operations")
        await assert_accessible(page)
        await sign_in(page, ops_server.base_url, "opsdesk")
        await expect(page).to_have_url(f"{ops_server.base_url}/ops")
        cookie = next(c for c in await context.cookies() if c["name"] == "__Host-telehealth-console")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        await page.evaluate("() => { window.sameDocument = true; }")

        await expect(page.locator("#live-status")).to_have_text("Live")
        warning = turn_warning(ops_server.config)
        assert warning is not None  # no TURN in this test: the dashboard says so
        await expect(page.locator("#turn-warning")).to_have_text(warning)

        # The live room, by its opaque id; each person by role, id and state.
        card = page.locator(f'.ops-room[data-room="{room_id}"]')
        await expect(card.get_by_role("heading", level=3)).to_have_text(f"Room {room_id}")
        people = card.locator(".ops-people li")
        await expect(people).to_have_count(3)
        await expect(people.nth(0)).to_contain_text(f"Therapist {ids['therapist']}: in the call")
        await expect(people.nth(1)).to_contain_text(f"Partner 1 {ids['a']}: in the call")
        await expect(people.nth(2)).to_contain_text(f"Partner 2 {ids['b']}: in the call")

        # A chart per link, and their data points grow while we watch, without a reload.
        figures = card.locator("figure.ops-link")
        await expect(figures).to_have_count(3)
        await expect(figures.locator("figcaption")).to_have_text(
            [re.compile("^Therapist – Partner 1"), re.compile("^Therapist – Partner 2"),
             re.compile("^Partner 1 – Partner 2")])
        before = await chart_points(page, room_id)
        await page.wait_for_function(
            """([room, before]) => {
                const now = [...document.querySelectorAll(`[data-room="${room}"] figure svg`)]
                    .map(svg => Number(svg.dataset.points));
                return now.length === 3 && now.every((n, i) => n >= before[i] + 3);
            }""", arg=[room_id, before])
        for svg in await figures.locator("svg").all():
            assert re.match(r"^.+: (good|fair|poor|lost|no data) now", await svg.get_attribute("aria-label") or "")
        await expect(card.locator(".usable-value")).to_have_text(re.compile(r"^\d+%$"))
        await assert_private(page)
        await assert_accessible(page)

        # The therapist moves partner 2 to the phone: the ledger shows it as it happens. (A
        # loaded machine may add disruptions of its own: rows are found by what they say.)
        rows = card.locator(".ops-ledger tbody tr")
        phone_row = rows.filter(has_text="moved to the phone (therapist)")
        await therapist.send({"type": "switch_to_phone", "participant": ids["b"]})
        await expect(phone_row).to_have_count(1)
        await expect(phone_row).to_have_attribute("data-open", "true")
        await expect(phone_row).to_contain_text(f"Partner 2 {ids['b']}")
        await expect(phone_row.locator(".ledger-outcome")).to_have_text("ongoing")
        await expect(people.nth(2)).to_contain_text("on the phone")
        await therapist.send({"type": "return_to_video", "participant": ids["b"]})
        # Back on video; the disruption closes once their video is full again (at once on a
        # quiet machine, later if the link was weak enough to lower it).
        await expect(phone_row).to_contain_text("back to video at")

        # Then partner 2's machine goes away for real: their links are lost within seconds,
        # and a disruption opens for them.
        await b.close()
        dropped = card.locator('.ops-ledger tbody tr[data-open="true"]').filter(
            has_text=f"Partner 2 {ids['b']}").filter(has_text="dropped at")
        await expect(dropped.first).to_be_visible(timeout=15_000)
        lost_link = figures.filter(has_text="Partner 2").first
        await expect(lost_link.locator("figcaption .level")).to_have_text("lost")
        await expect(people.nth(2)).to_contain_text("reconnecting")
        # The charts go on with the loss in them.
        lost_at = await chart_points(page, room_id)
        await page.wait_for_function(
            """([room, before]) => [...document.querySelectorAll(`[data-room="${room}"] figure svg`)]
                .every((svg, i) => Number(svg.dataset.points) >= before[i] + 3)""", arg=[room_id, lost_at])
        assert await page.evaluate("() => window.sameDocument === true")
        await screenshot(page, "ops-dashboard", full_page=True)
        await assert_private(page)
        await assert_accessible(page)

        # A page that reports its link runs through the TURN relay (as a browser's stats say
        # when its selected candidate is a relay one): the link is marked, on the chart too.
        relayed = figures.filter(has_text="Therapist – Partner 1")
        await expect(relayed.locator(".relay-badge")).to_have_count(0)
        await therapist.send({"type": "stats", "links": [
            {"peer": ids["a"], "pc": therapist.links[ids["a"]].pc_id, "candidate": "relay"}]})
        await expect(relayed.locator(".relay-badge")).to_have_text("via TURN relay")
        await expect(relayed.locator("svg rect.relay").first).to_be_attached()
        await expect(relayed.locator(".chart-summary")).to_contain_text("through the TURN relay")

        # The therapist ends the session: it leaves the live list and joins the past ones.
        await therapist.send({"type": "end"})
        await expect(card).to_have_count(0)
        await expect(page.locator("#no-rooms")).to_be_visible()
        past_row = page.locator(f'#past tr[data-room="{room_id}"]')
        await expect(past_row).to_contain_text(re.compile(rf"{room_id}.*\d+ (s|min)\s*\d+%\s*\d+$"))

    reached = await tab_through(page, 4)
    for target in ("Skip to content", "Live rooms and past sessions", "Sign out", room_id):
        assert target in reached and visibly_focused(reached[target]), (target, reached)

    # The past session, with the same charts over the whole session and its ledger.
    await page.get_by_role("link", name=room_id).click()
    await expect(page).to_have_url(f"{ops_server.base_url}/ops/sessions/{room_id}")
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Session {room_id}")
    await expect(page.locator("#links figure")).to_have_count(3)
    for svg in await page.locator("#links svg").all():
        assert int(await svg.get_attribute("data-points") or 0) >= 1
    lost_past = page.locator("#links figure").filter(has_text="Partner 2").first
    await expect(lost_past.locator(".chart-summary")).to_contain_text("lost at the end")
    ledger = page.locator("#ledger tbody tr")
    await expect(ledger.filter(has_text="moved to the phone (therapist)")).to_have_count(1)
    await expect(ledger.filter(has_text=f"Partner 2 {ids['b']}").filter(has_text="dropped at").first).to_be_visible()
    await expect(page.locator("#usable")).to_have_text(re.compile(r"^\d+%$"))
    await screenshot(page, "ops-session", full_page=True)
    await assert_private(page)
    await assert_accessible(page)
    assert not console.csp_violations and not [m for m in console.messages if "pageerror" in m], console.messages

    # Every page and stream the operator opened is in the audit log, under their account.
    entries = [json.loads(line) for line in store.audit.export()]
    access = [e for e in entries if e["event"] == AuditEvent.OPS_ACCESS.value]
    paths = {(e["detail"]["path"], e["room_id"]) for e in access}
    assert {("/ops", None), ("/ops/live", None), ("/ops/sessions/:room_id", room_id)} <= paths
    assert {e["actor"] for e in access} == {f"u_{operator.id}"}
    assert any(e["event"] == "login_ok" and e["actor"] == f"u_{operator.id}" for e in entries)
    assert store.audit.verify().ok


async def test_a_therapist_is_refused_and_strangers_are_sent_to_sign_in(
    ops_server: RunningServer, context: BrowserContext,
) -> None:
    therapist = accounts.add_user(ops_server.store, "drquill", PASSWORD, "therapist", now=time.time())
    page = await context.new_page()
    page.set_default_timeout(15_000)
    response = await page.goto(f"{ops_server.base_url}/ops/sessions/r_0123456789abcdef")
    assert response is not None
    await expect(page).to_have_url(f"{ops_server.base_url}/ops/login")
    assert (await page.request.get(f"{ops_server.base_url}/ops/live")).status == 401

    await sign_in(page, ops_server.base_url, "drquill")
    await expect(page.get_by_role("alert")).to_have_text("This account cannot open the operations dashboard.")

    # Signed in at the console, a therapist still cannot see the dashboard or its stream.
    await page.goto(f"{ops_server.base_url}/console/login")
    await page.get_by_label("Username").fill("drquill")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{ops_server.base_url}/console")
    response = await page.goto(f"{ops_server.base_url}/ops")
    assert response is not None and response.status == 403
    await expect(page.get_by_role("heading", level=1)).to_have_text("Not for this account")
    await assert_accessible(page)
    live = await page.request.get(f"{ops_server.base_url}/ops/live")
    assert live.status == 403

    denied = [json.loads(line) for line in ops_server.store.audit.export()]
    refused = [e for e in denied if e["event"] == "ops_access" and e["actor"] == f"u_{therapist.id}"]
    assert [e["detail"]["path"] for e in refused] == ["/ops", "/ops/live"]
    assert all(e["detail"]["reason"] == "forbidden" for e in refused)
    failed = [e for e in denied if e["event"] == "login_failed"]
    assert [(e["actor"], e["detail"]["reason"]) for e in failed] == [(f"u_{therapist.id}", "forbidden")]
