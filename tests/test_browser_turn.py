"""Chromium through a real coturn: a relay-only session of three pages, and the network check's
words when the relay works, when it cannot be reached, and when there is none."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from media.probe import ProbeRelay
from telehealth.config import Config
from tests.browser import browser, screenshot  # noqa: F401  (browser is a fixture)
from tests.conftest import RunningServer, start_server
from tests.coturn import CoturnServer, start_coturn
from tests.test_browser_session import Person, open_person, wait_remote_frames_advance
from web.pages import PROBE

pytestmark = pytest.mark.browser

SECRET = "browser-turn-secret"

# Every RTCPeerConnection a page makes, so the test can read the call's stats.
RECORD_CONNECTIONS = """
const RealPeerConnection = window.RTCPeerConnection;
window.__connections = [];
window.RTCPeerConnection = class extends RealPeerConnection {
  constructor(...args) { super(...args); window.__connections.push(this); }
};
"""

# The local candidate type of the selected pair of every live call connection.
SELECTED_LOCAL_TYPES = """async () => {
  const types = [];
  for (const pc of window.__connections) {
    if (pc.connectionState !== 'connected' || pc.getTransceivers().length === 0) continue;
    const report = await pc.getStats();
    let pairId = null;
    for (const s of report.values()) if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    const pair = pairId && report.get(pairId);
    types.push(pair ? report.get(pair.localCandidateId).candidateType : null);
  }
  return types;
}"""


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[CoturnServer]:
    # As in production, the relay sends to no machine's own address, only to other relay
    # addresses (here on loopback): a relayed path must be relayed at both ends.
    server = start_coturn(tmp_path / "coturn", SECRET, options={
        "denied-peer-ip": "0.0.0.0-255.255.255.255", "allowed-peer-ip": "127.0.0.1"})
    yield server
    server.stop()


async def turn_server(config: Config) -> RunningServer:
    server = await start_server(config)
    # The app builds its probe from stun_urls only for now; give it the relay as the app will.
    server.app[PROBE].relay = ProbeRelay.from_config(config)
    return server


@pytest.fixture
async def people() -> AsyncIterator[list[Person]]:
    opened: list[Person] = []
    yield opened
    for person in opened:
        await person.context.close()


async def open_with_recorder(browser: Browser, name: str, url: str) -> Person:  # noqa: F811
    person = await open_person(browser, name, "about:blank")
    await person.page.add_init_script(RECORD_CONNECTIONS)
    await person.page.goto(url)
    return person


async def check_done(page: Page) -> None:
    await expect(page.locator("#net-verdict")).not_to_have_attribute("data-level", "running", timeout=30_000)


async def test_relay_only_session_in_chromium_runs_every_link_through_coturn(
    make_config: Any, coturn: CoturnServer, browser: Browser, people: list[Person],  # noqa: F811
) -> None:
    server = await turn_server(make_config(turn_urls=tuple(coturn.urls), turn_secret=SECRET, relay_only=True))
    try:
        room = server.create_room()
        therapist = await open_with_recorder(browser, "therapist", room.therapist_link)
        people.append(therapist)
        await therapist.page.get_by_role("button", name="Start session").click()
        await expect(therapist.page.locator("#call-step")).to_be_visible()

        partners = [await open_with_recorder(browser, f"Partner {i + 1}", link)
                    for i, link in enumerate(room.partner_links)]
        people.extend(partners)
        page = partners[0].page
        await check_done(page)
        # On loopback the direct path works; the relay answers over UDP and TCP, and a
        # relay-only connection to the server's probe goes through.
        await expect(page.locator("#net-verdict")).to_have_text("Connection: Good")
        await expect(page.locator("#net-relay")).to_have_text("UDP relay: works · TCP relay: works")
        await screenshot(page, "turn-01-partner-check-relay-works", full_page=True)

        for partner in partners:
            await check_done(partner.page)
            await partner.page.get_by_role("button", name="Join session").click()
        for partner in partners:
            await therapist.page.get_by_role("button", name=f"Admit {partner.name}").click()
        for person in (therapist, *partners):
            await wait_remote_frames_advance(person.page)
        for person in (therapist, *partners):
            assert await person.page.evaluate(SELECTED_LOCAL_TYPES) == ["relay", "relay"], person.name
    finally:
        await server.runner.cleanup()


async def test_check_says_when_the_relay_cannot_be_reached(
    make_config: Any, coturn: CoturnServer, browser: Browser, people: list[Person],  # noqa: F811
) -> None:
    server = await turn_server(make_config(turn_urls=tuple(coturn.urls), turn_secret=SECRET))
    coturn.stop()
    try:
        room = server.create_room()
        partner = await open_person(browser, "Partner 1", room.partner_links[0])
        people.append(partner)
        await check_done(partner.page)
        # The direct path still works, so video will too; the relay line says what failed.
        await expect(partner.page.locator("#net-verdict")).to_have_text("Connection: Good")
        await expect(partner.page.locator("#net-relay")).to_have_text(
            "UDP relay: could not reach it · TCP relay: could not reach it")
    finally:
        await server.runner.cleanup()


async def test_without_a_relay_the_check_says_nothing_about_relays(
    server: RunningServer, browser: Browser, people: list[Person],  # noqa: F811
) -> None:
    room = server.create_room()
    partner = await open_person(browser, "Partner 1", room.partner_links[0])
    people.append(partner)
    await check_done(partner.page)
    await expect(partner.page.locator("#net-relay")).to_be_hidden()
    assert "relay" not in (await partner.page.locator("#check-step").inner_text()).lower()

    words = await partner.page.evaluate(
        """async () => {
            const { verdict } = await import('/static/netcheck.js');
            const good = { connected: true, rtt_ms: 20, loss: 0, down_kbps: 20000, up_kbps: 8000, candidate: 'host' };
            const failed = { connected: false, rtt_ms: null, loss: null, down_kbps: null, up_kbps: null, candidate: null };
            const relay = { udp: true, tcp: true, connected: true, rtt_ms: 30 };
            return {
                plain: verdict(good),
                relayed: verdict({ ...good, candidate: 'relay', relay }),
                relayedSlow: verdict({ ...good, candidate: 'relay', rtt_ms: 900, relay }),
                onlyRelay: verdict({ ...failed, relay }),
                tcpOnly: verdict({ ...failed, relay: { udp: false, tcp: true, connected: true, rtt_ms: 40 } }),
                nothing: verdict({ ...failed, relay: { udp: false, tcp: false, connected: false, rtt_ms: null } }),
                noRelay: verdict(failed),
                therapist: verdict(failed, { audience: 'therapist' }),
                brokenProbe: verdict({ ...good, relay: { udp: true, tcp: null, connected: false, rtt_ms: null } }),
            };
        }"""
    )
    relayed = "Your network only allows a relayed connection. That works, but video may be a little slower."
    unreachable = ("We could not reach the video service from this network. Try another network (for example "
                   "your phone's mobile data), or your therapist can call you instead.")
    assert (words["plain"]["level"], words["plain"]["relay"]) == ("good", "")
    assert words["plain"]["advice"].startswith("Your connection is good")
    assert (words["relayed"]["level"], words["relayed"]["advice"]) == ("relayed", relayed)
    assert words["relayed"]["relay"] == "UDP relay: works · TCP relay: works"
    assert words["relayedSlow"]["level"] == "weak"
    assert words["relayedSlow"]["advice"].startswith("Your network only allows a relayed connection.")
    assert (words["onlyRelay"]["level"], words["onlyRelay"]["advice"]) == ("relayed", relayed)
    assert words["onlyRelay"]["numbers"] == "Round trip 30 ms"
    assert words["tcpOnly"]["relay"] == "UDP relay: could not reach it · TCP relay: works"
    assert (words["nothing"]["level"], words["nothing"]["advice"]) == ("failed", unreachable)
    assert words["nothing"]["relay"] == "UDP relay: could not reach it · TCP relay: could not reach it"
    # Without a relay configured the same failure has no word about relays.
    assert (words["noRelay"]["advice"], words["noRelay"]["relay"]) == (unreachable, "")
    assert words["therapist"]["advice"].endswith("or call your clients by phone instead.")
    assert words["brokenProbe"]["relay"] == "UDP relay: works · Connection through the relay: failed"
    assert re.search("could not connect", words["nothing"]["label"])
