"""The page's own fallback plan and its session log, run in Chromium as the pages load them,
with the time passed in: what a cut-off page does second by second, and what the therapist
downloads."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page

from fallback.notices import tel_href
from telehealth.phones import display_phone
from tests.browser import browser, new_person_context  # noqa: F401  (browser is a fixture)
from tests.conftest import RunningServer

pytestmark = pytest.mark.browser


@pytest.fixture
async def page(server: RunningServer, browser: Browser) -> AsyncIterator[Page]:  # noqa: F811
    context = await new_person_context(browser, ())
    opened = await context.new_page()
    await opened.goto(f"{server.base_url}/")
    yield opened
    await context.close()


async def test_a_link_is_lost_when_its_packets_stop_for_half_a_second(page: Page) -> None:
    result = await page.evaluate(
        """async () => {
            const { LinkHealth } = await import('/static/plan.js');
            const h = new LinkHealth();
            const seen = [];
            const at = (label, now) => seen.push([label, h.receiving('a', now), h.lost('a', now), h.allLost(now)]);
            h.observe('a', 'pc1', 0, 0);
            h.observe('b', 'pc2', 0, 0);
            at('connecting', 300);                        // a new connection: not lost, never carried media
            h.observe('a', 'pc1', 50, 1000);
            h.observe('b', 'pc2', 40, 1000);
            at('flowing', 1200);
            h.observe('a', 'pc1', 50, 1400);              // flat since 1000
            at('flat 0.4 s', 1400);
            at('flat 0.5 s', 1500);
            h.observe('b', 'pc2', 40, 1550);
            h.observe('a', 'pc9', 0, 1600);               // a fresh connection gets half a second
            at('fresh', 1700);
            h.observe('a', 'pc9', 0, 2100);
            at('fresh, no media for 0.5 s', 2100);
            h.observe('b', 'pc2', 41, 2200);
            at('b back', 2200);
            // The sum falls (Firefox drops the paused video's inbound stats), then grows again
            // from there: media still flows, never lost.
            h.observe('b', 'pc2', 900, 2500);
            h.observe('b', 'pc2', 300, 2700);
            h.observe('b', 'pc2', 320, 3100);
            h.observe('b', 'pc2', 340, 3500);
            seen.push(['b counted anew', h.receiving('b', 3600), h.lost('b', 3600)]);
            // A peer on a busy device may pause its media: its silence alone is not shown as
            // lost while another link still hears; once every link is quiet, this page is cut
            // off, and it is shown, device or not.
            h.observe('a', 'pc9', 10, 3500);
            h.observe('a', 'pc9', 10, 4000);
            h.observe('b', 'pc2', 360, 4000);
            seen.push(['a quiet on a busy device', h.shownLost('a', 4100, { onDevice: true }),
                       h.shownLost('a', 4100)]);
            h.observe('b', 'pc2', 360, 4600);
            seen.push(['every link quiet', h.shownLost('a', 4600, { onDevice: true }),
                       h.shownLost('b', 4600, { onDevice: true })]);
            return seen;
        }"""
    )
    assert result == [
        ["connecting", True, False, False],
        ["flowing", True, False, False],
        ["flat 0.4 s", True, False, False],
        ["flat 0.5 s", False, True, True],
        ["fresh", True, False, False],
        ["fresh, no media for 0.5 s", False, True, True],
        ["b back", False, True, False],
        ["b counted anew", True, False],
        ["a quiet on a busy device", False, True],
        ["every link quiet", True, True],
    ]


async def test_the_offline_plan_reconnects_with_backoff_then_shows_the_phone_step(page: Page) -> None:
    steps = await page.evaluate(
        """async () => {
            const { OfflinePlan } = await import('/static/plan.js');
            const plan = new OfflinePlan({ rejoinWindowMs: 8000 });
            const out = [];
            const feed = (now, linksLost, serverLost) => {
                for (const step of plan.update({ linksLost, serverLost }, now)) out.push([now, step.type, step.since ?? step.attempt ?? null]);
            };
            feed(0, false, false);
            feed(1000, true, false);        // links lost, the server still answers: it leads
            feed(2000, true, false);
            feed(3500, true, true);         // and now the server is silent too
            for (let t = 3750; t <= 12000; t += 250) feed(t, true, true);
            feed(12250, true, false);       // the server answers again during the phone step
            feed(12500, false, false);
            feed(13000, true, true);        // gone again: keep trying
            for (let t = 13250; t <= 14500; t += 250) feed(t, true, true);
            out.push([15000, plan.state, plan.backOnline]);
            plan.returnToVideo();
            out.push([15000, plan.state, plan.backOnline]);
            return out;
        }"""
    )
    assert steps == [
        [3500, "reconnecting", 1000],       # the window counts from the links' loss
        [4500, "retry", 1],
        [6500, "retry", 2],
        [9000, "phone", None],              # 1000 + 8000
        [10500, "retry", 3],
        [12250, "online", None],            # back online: no more attempts
        [15000, "phone", False],            # gone again, waiting out the backoff
        [15000, "online", False],
    ]


async def test_short_loss_is_just_back(page: Page) -> None:
    steps = await page.evaluate(
        """async () => {
            const { OfflinePlan } = await import('/static/plan.js');
            const plan = new OfflinePlan({ rejoinWindowMs: 45000 });
            const out = [];
            for (const [now, linksLost, serverLost] of [[0, true, true], [1000, true, true], [2500, false, true], [3000, false, false]]) {
                for (const step of plan.update({ linksLost, serverLost }, now)) out.push(step.type);
            }
            return [out, plan.state];
        }"""
    )
    assert steps == [["reconnecting", "retry", "back"], "online"]


@pytest.mark.parametrize("stored", ["+12025550102", "+12015550123;ext=12", "+442079460958", "+33142685300;ext=7"])
async def test_tel_links_match_the_server(page: Page, stored: str) -> None:
    """The therapist's page dials from its call list, which shows numbers as people read them."""
    href = await page.evaluate(
        "async (n) => (await import('/static/ui.js')).telHref(n)", display_phone(stored))
    assert href == tel_href(stored)


async def test_the_session_log_downloads_with_names_and_never_a_formula(page: Page) -> None:
    result = await page.evaluate(
        """async () => {
            const { ledgerCsv, ledgerJson, disruptions } = await import('/static/ledger.js');
            const rows = [
                { disruption: 0, person: 'p_b', cause: 'own_network', started_at: 1795254801.2, ended_at: 1795254847.9,
                  outcome: 'ended_on_phone', step: 'dropped', step_at: 1795254801.2, step_outcome: null },
                { disruption: 0, person: 'p_b', cause: 'own_network', started_at: 1795254801.2, ended_at: 1795254847.9,
                  outcome: 'ended_on_phone', step: 'phone', step_at: 1795254846.2, step_outcome: 'window' },
            ];
            const names = { p_b: '=HYPERLINK("x"), Sam' };
            const nameOf = (id) => names[id];
            return { csv: ledgerCsv(rows, nameOf), json: ledgerJson(rows, nameOf), grouped: disruptions(rows, nameOf) };
        }"""
    )
    rows = list(csv.DictReader(io.StringIO(result["csv"])))
    assert [r["step"] for r in rows] == ["dropped", "phone"]
    # A name that looks like a formula stays text in a spreadsheet; commas and quotes survive.
    assert rows[0]["name"] == "'=HYPERLINK(\"x\"), Sam"
    assert rows[1]["step_outcome"] == "window" and rows[1]["step_at"] == "2026-11-21T09:54:06.200Z"
    exported = json.loads(result["json"])["disruptions"]
    assert exported[1]["person"] == "p_b" and exported[1]["outcome"] == "ended_on_phone"
    assert [s["step"] for s in result["grouped"][0]["steps"]] == ["dropped", "phone"]
