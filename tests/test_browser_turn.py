"""Chromium through a real coturn: a relay-only session of three pages, the network check's
words when the relay works, when it cannot be reached, and when there is none, and a partner
whose Chromium sits in a network namespace that reaches only the server and TURN over TLS."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from telehealth.config import Config
from telehealth.tls import self_signed
from tests.browser import CHROMIUM, CHROMIUM_ARGS, Person, browser, open_person, screenshot  # noqa: F401  (browser is a fixture)
from tests.conftest import TURN_SECRET, RunningServer, start_server
from tests.coturn import CoturnServer, base_lines, config_text, launch_coturn
from tests.netfault import Namespace
from tests.ports import free_port

pytestmark = pytest.mark.browser

SECRET = TURN_SECRET  # the coturn fixture's (tests/conftest.py)
# A verdict on a direct connection: neither "relayed" nor "failed" (or, on a machine too busy
# to measure, words that say so).
DIRECT_LEVELS = re.compile("^(good|choppy|weak|busy|unmeasured)$")

# Every RTCPeerConnection a page makes, so the test can read the call's stats.
RECORD_CONNECTIONS = """
const RealPeerConnection = window.RTCPeerConnection;
window.__connections = [];
window.RTCPeerConnection = class extends RealPeerConnection {
  constructor(...args) { super(...args); window.__connections.push(this); }
};
"""

# The selected candidate pair of every live call connection: candidate types at each end,
# and how this end reaches its relay (udp, tcp or tls).
SELECTED_PAIRS = """async () => {
  const pairs = [];
  for (const pc of window.__connections) {
    if (pc.connectionState !== 'connected' || pc.getTransceivers().length === 0) continue;
    const report = await pc.getStats();
    let pairId = null;
    for (const s of report.values()) if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    const pair = pairId && report.get(pairId);
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    pairs.push({local: local?.candidateType ?? null, remote: remote?.candidateType ?? null,
                relayProtocol: local?.relayProtocol ?? null});
  }
  return pairs;
}"""

# Per live call connection: audio packets received and video frames decoded so far.
INBOUND = """async () => {
  const links = [];
  for (const [index, pc] of window.__connections.entries()) {
    if (pc.connectionState !== 'connected' || pc.getTransceivers().length === 0) continue;
    const link = { pc: index, audio: 0, frames: 0 };
    for (const s of (await pc.getStats()).values()) {
      if (s.type !== 'inbound-rtp') continue;
      if (s.kind === 'audio') link.audio += s.packetsReceived ?? 0;
      else link.frames += s.framesDecoded ?? 0;
    }
    links.push(link);
  }
  return links;
}"""

CONNECTION_STATES = """() => window.__connections.filter(pc => pc.getTransceivers().length > 0)
    .map(pc => [pc.connectionState, pc.iceConnectionState, pc.signalingState])"""

# The check as a relay-only server's GET /netcheck describes it (ice_transport_policy "relay").
RELAY_ONLY_CHECK = """async (url) => {
  const { runNetworkCheck, verdict } = await import('/static/netcheck.js');
  const result = await runNetworkCheck({ url });
  return { result, words: verdict(result) };
}"""


@pytest.fixture
def coturn_options() -> dict[str, str | None]:
    # As in production, the relay sends to no machine's own address, only to other relay
    # addresses (here on loopback): a relayed path must be relayed at both ends.
    return {"denied-peer-ip": "0.0.0.0-255.255.255.255", "allowed-peer-ip": "127.0.0.1"}


async def turn_server(config: Config) -> RunningServer:
    return await start_server(config)


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


async def media_flows(people: list[Person], timeout: float = 40.0) -> None:
    """Every page receives sound and pictures from both others: on each call connection the
    audio packets keep coming and video frames have been decoded. (Counted, not watched on
    the tiles: on a busy machine the quality monitor may rightly lower video for a while.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    first = {person.name: await person.page.evaluate(INBOUND) for person in people}
    while True:
        now = {person.name: await person.page.evaluate(INBOUND) for person in people}

        def flowing(name: str, now: dict[str, Any] = now) -> bool:
            before = {link["pc"]: link for link in first[name]}
            return len(now[name]) == 2 and all(
                link["audio"] > before.get(link["pc"], {"audio": 0})["audio"] + 10 and link["frames"] > 0
                for link in now[name])

        if all(flowing(person.name) for person in people):
            return
        if loop.time() > deadline:
            states = {person.name: {"inbound": now[person.name],
                                    "connections": await person.page.evaluate(CONNECTION_STATES),
                                    "console": person.console.messages[-5:]} for person in people}
            raise AssertionError(f"media did not reach everyone: {states}")
        await asyncio.sleep(0.5)  # polling interval; stats offer no event to wait on


async def check_done(page: Page) -> None:
    try:
        await expect(page.locator("#net-verdict")).not_to_have_attribute("data-level", "running", timeout=40_000)
    except AssertionError as exc:
        stage = await page.locator("#net-numbers").inner_text()
        raise AssertionError(f"the network check is still at {stage!r}") from exc


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
        # On loopback the direct path works (its figures depend on how busy the machine is);
        # the relay answers over UDP and TCP, and a relay-only connection to the server's
        # probe goes through.
        await expect(page.locator("#net-verdict")).to_have_attribute("data-level", DIRECT_LEVELS)
        await expect(page.locator("#net-relay")).to_have_text("UDP relay: works · TCP relay: works")
        await screenshot(page, "turn-01-partner-check-relay-works", full_page=True)
        # On a relay-only server the whole check takes the relay, as the call will, and a
        # relayed result is no news to the partner.
        relay_only = await page.evaluate(RELAY_ONLY_CHECK, f"{room.partner_links[0]}/netcheck")
        assert relay_only["result"]["connected"] and relay_only["result"]["candidate"] == "relay"
        assert relay_only["result"]["relay_only"] and relay_only["words"]["level"] != "relayed", relay_only
        assert "only allows" not in relay_only["words"]["advice"]
        assert relay_only["words"]["relay"] == "UDP relay: works · TCP relay: works"

        for partner in partners:
            await check_done(partner.page)
            await partner.page.get_by_role("button", name="Join session").click()
        for partner in partners:
            await therapist.page.get_by_role("button", name=f"Admit {partner.name}").click()
        await media_flows([therapist, *partners])
        for person in (therapist, *partners):
            pairs = await person.page.evaluate(SELECTED_PAIRS)
            assert [pair["local"] for pair in pairs] == ["relay", "relay"], (person.name, pairs)
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
        await expect(partner.page.locator("#net-verdict")).to_have_attribute("data-level", DIRECT_LEVELS)
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


# -- a partner whose network reaches only the server and TURN over TLS ----------------------


def start_coturn_for_namespace(tmp_dir: Path, ns: Namespace) -> tuple[CoturnServer, int]:
    """coturn on loopback and on the host's end of the namespace's link, with TLS (a
    self-signed certificate) on a port of its own; yields the server and its TLS port."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(tmp_dir / "tls", ns.host_ip)
    port, tls_port = free_port(), free_port()
    lines = {
        **base_lines(tmp_dir, port, SECRET),
        "tls-listening-port": str(tls_port),
        "cert": str(cert),
        "pkey": str(key),
        # Relay addresses on loopback, where the pages on the host reach them.
        "relay-ip": "127.0.0.1",
    }
    text = config_text(lines) + f"listening-ip={ns.host_ip}\n"
    return launch_coturn(tmp_dir, text, port=port, secret=SECRET), tls_port


@pytest.fixture
async def browser_in(tmp_path: Path) -> AsyncIterator[Any]:
    """``await browser_in(ns, origin)``: a Chromium whose network is the namespace's (Playwright
    still drives it over its pipe), treating the server's plain-HTTP origin as secure and
    taking coturn's self-signed certificate."""
    playwright = await async_playwright().start()
    launched: list[Browser] = []

    async def launch(ns: Namespace, origin: str) -> Browser:
        wrapper = tmp_path / "chromium-in-namespace"
        wrapper.write_text(f'#!/bin/sh\nexec {" ".join(ns.command([str(CHROMIUM)]))} "$@"\n')
        wrapper.chmod(0o755)
        args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={origin}", "--ignore-certificate-errors"]
        launched.append(await playwright.chromium.launch(executable_path=str(wrapper), headless=True, args=args))
        return launched[-1]

    yield launch
    for each in launched:
        await each.close()
    await playwright.stop()


@pytest.mark.netns
async def test_partner_who_reaches_only_turn_over_tls_gets_media_both_ways(
    make_config: Any, tmp_path: Path, ns: Namespace, browser: Browser, browser_in: Any,  # noqa: F811
    people: list[Person],
) -> None:
    coturn, tls_port = start_coturn_for_namespace(tmp_path / "coturn", ns)
    turn_urls = (f"turn:{ns.host_ip}:{coturn.port}?transport=udp", f"turn:{ns.host_ip}:{coturn.port}?transport=tcp",
                 f"turns:{ns.host_ip}:{tls_port}?transport=tcp")
    # Listening everywhere, so the namespace reaches it through the host's end of the link.
    server = await turn_server(make_config(host="0.0.0.0", turn_urls=turn_urls, turn_secret=SECRET))
    try:
        # Like a network that lets out only web traffic: the server's port and TURN over TLS.
        await ns.allow_only(ns.host_ip, server.config.port, tls_port)
        room = server.create_room()
        therapist = await open_with_recorder(browser, "therapist", room.therapist_link)
        people.append(therapist)
        await therapist.page.get_by_role("button", name="Start session").click()
        alex = await open_with_recorder(browser, "Partner 1", room.partner_links[0])
        people.append(alex)
        walled = await browser_in(ns, f"http://{ns.host_ip}:{server.config.port}")
        sam = await open_with_recorder(walled, "Partner 2", ns.host_url(room.partner_links[1]))
        people.append(sam)

        await check_done(sam.page)
        # Through the relay, which on a busy machine may also measure as choppy: the partner is
        # told either way that only the relay gets through.
        await expect(sam.page.locator("#net-verdict")).to_have_text(re.compile(
            r"^Connection: (Works, through a relay|May be choppy|Too weak for video|Could not measure \(your computer is busy\))$"))
        if await sam.page.locator("#net-verdict").get_attribute("data-level") != "busy":
            await expect(sam.page.locator("#net-advice")).to_have_text(
                re.compile(r"^Your network only allows a relayed connection\. "))
        await expect(sam.page.locator("#net-relay")).to_have_text("UDP relay: could not reach it · TCP relay: works")
        await screenshot(sam.page, "turn-02-partner-check-only-relay", full_page=True)

        for partner in (alex, sam):
            await check_done(partner.page)
            await partner.page.get_by_role("button", name="Join session").click()
            await therapist.page.get_by_role("button", name=f"Admit {partner.name}").click()
        await media_flows([therapist, alex, sam])

        # Sam's links both run through TURN over TLS; the others still talk directly.
        sam_pairs = await sam.page.evaluate(SELECTED_PAIRS)
        assert [(p["local"], p["relayProtocol"]) for p in sam_pairs] == [("relay", "tls")] * 2, sam_pairs
        therapist_pairs = await therapist.page.evaluate(SELECTED_PAIRS)
        assert sorted(p["remote"] for p in therapist_pairs) == ["host", "relay"], therapist_pairs
        assert all(p["local"] != "relay" for p in therapist_pairs), therapist_pairs
    finally:
        await server.runner.cleanup()
        coturn.stop()
