"""telehealth behind a real reverse proxy: Debian's Caddy running deploy/Caddyfile on
loopback, with its own local CA. Clients come from different loopback addresses
(127.0.0.2, 127.0.0.3, ...), so the server can only tell them apart through the proxy's
X-Forwarded-For, which it believes from the proxy alone (TELEHEALTH_TRUSTED_PROXIES)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from signaling.endpoint import SIGNALING
from telehealth import accounts
from telehealth.app import create_app
from telehealth.config import Config
from telehealth.proxies import client_address, parse_networks
from telehealth.tokens import new_token
from tests.browser import browser, frames_advance, open_person  # noqa: F401  (browser is a fixture)
from tests.caddy import Caddy, start_caddy
from tests.conftest import RunningServer, session_from, start_server
from tests.test_pages import PASSWORD, sign_in


@pytest.fixture
async def proxied(make_config: Callable[..., Config], tmp_path: Path) -> AsyncIterator[tuple[Caddy, RunningServer]]:
    config = make_config()
    caddy = await asyncio.to_thread(start_caddy, tmp_path, f"127.0.0.1:{config.port}")
    try:
        # Sign-in budgets refill over an hour, not a minute: on a busy machine the attempts may
        # take seconds, and a token coming back meanwhile is not what is tested.
        server = await start_server(config.replace(base_url=caddy.base_url, trusted_proxies=("127.0.0.1",),
                                                   login_window_seconds=3600.0))
        try:
            yield caddy, server
        finally:
            await server.runner.cleanup()
    finally:
        caddy.stop()


def client(caddy: Caddy, address: str) -> aiohttp.ClientSession:
    return session_from(address, ssl=caddy.ssl_context(), cookie_jar=aiohttp.DummyCookieJar())


async def test_behind_caddy_a_link_guesser_does_not_lock_the_real_partner_out(
    proxied: tuple[Caddy, RunningServer],
) -> None:
    caddy, server = proxied
    room = server.create_room()
    partner_link = room.partner_links[0]
    assert partner_link.startswith(caddy.base_url)
    guesses, partner = [], []
    started = time.monotonic()
    async with client(caddy, "127.0.0.2") as guesser, client(caddy, "127.0.0.3") as real:
        for i in range(60):
            # The guesser even claims to be the partner's address: Caddy drops that header.
            async with guesser.get(f"{caddy.base_url}/j/{new_token()}",
                                   headers={"X-Forwarded-For": "127.0.0.3"}) as response:
                guesses.append(response.status)
            if i % 6 == 5:  # the partner opens (and reopens) their link now and then
                async with real.get(partner_link) as response:
                    partner.append(response.status)
                    assert "Welcome, Partner 1" in await response.text()
    # The guesser is refused after 20 failures, and keeps being refused but for the one
    # attempt every 3 s that the budget gives back (a busy machine makes that a few).
    refills = (time.monotonic() - started) / 3 + 1
    assert guesses[:20] == [404] * 20 and 429 in guesses and guesses.count(404) <= 20 + refills
    assert partner == [200] * 10

    # Straight to the server, past the proxy, a forged header is not believed either.
    async with (session_from("127.0.0.3") as direct,
                direct.get(f"http://127.0.0.1:{server.config.port}/j/{new_token()}",
                           headers={"X-Forwarded-For": "127.0.0.2"}) as response):
        assert response.status == 404  # 127.0.0.3 has no failures of its own: not the guesser's 429


async def test_behind_caddy_bad_sign_ins_from_one_client_do_not_lock_staff_on_another(
    proxied: tuple[Caddy, RunningServer],
) -> None:
    caddy, server = proxied
    accounts.add_user(server.store, "drtest", PASSWORD, "therapist", now=time.time())
    async with client(caddy, "127.0.0.2") as guesser:
        statuses = [(await sign_in(guesser, caddy.base_url, f"guess{i}", "not the password")).status
                    for i in range(11)]
        assert statuses == [401] * 10 + [429]
    async with client(caddy, "127.0.0.3") as staff:
        response = await sign_in(staff, caddy.base_url, "drtest", PASSWORD)
        assert response.status == 303 and response.headers["Location"] == "/console"
        # Behind the TLS proxy the server knows the page is https: HSTS, and the same-site
        # check of the forms accepts the browser's https origin.
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


async def test_caddy_keeps_the_metrics_inside(proxied: tuple[Caddy, RunningServer]) -> None:
    caddy, _server = proxied
    async with client(caddy, "127.0.0.2") as outside:
        async with outside.get(f"{caddy.base_url}/metrics") as response:
            assert response.status == 404 and "telehealth_" not in await response.text()
        async with outside.get(f"{caddy.base_url}/healthz") as response:
            assert response.status == 200
    # Inside, metrics need the bearer token (tests/test_proxy_metrics.py reads them through it).


@pytest.mark.browser
async def test_a_call_through_caddy(proxied: tuple[Caddy, RunningServer], browser: Browser) -> None:  # noqa: F811
    caddy, server = proxied
    room = server.create_room(partners=1)
    people = []
    try:
        # Chromium cannot be handed a CA file; the aiohttp clients above check the chain.
        therapist = await open_person(browser, "Dr Test", room.therapist_link, ignore_https_errors=True)
        people.append(therapist)
        assert therapist.page.url.startswith(caddy.base_url)
        await therapist.page.get_by_role("button", name="Start session").click()
        await expect(therapist.page.locator("#call-step")).to_be_visible()

        partner = await open_person(browser, "Partner 1", room.partner_links[0], ignore_https_errors=True)
        people.append(partner)
        await expect(partner.page.get_by_role("heading", level=1)).to_have_text("Welcome, Partner 1")
        # The network check ran through the proxy too (its verdict on a busy machine is
        # test_browser_pages' business).
        await expect(partner.page.locator("#net-verdict")).to_have_text(re.compile(r"^Connection: "), timeout=30_000)
        await partner.page.get_by_role("button", name="Join session").click()
        await therapist.page.get_by_role("button", name="Admit Partner 1").click()
        for person in (therapist, partner):
            await expect(person.page.locator("#call-step")).to_be_visible()
            # Media is peer to peer (only signaling goes through Caddy); a starved machine is slow to decode.
            await frames_advance(person.page, count=1, timeout=60)
        assert len(server.app[SIGNALING].sockets) == 2
    finally:
        for person in people:
            await person.context.close()


# -- whose address it is ------------------------------------------------------------------------

PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    ("203.0.113.7", [], "203.0.113.7"),                                  # no proxy
    ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),                    # an untrusted peer's header is ignored
    ("127.0.0.1", [], "127.0.0.1"),                                      # the proxy itself (a health check)
    ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
    ("127.0.0.1", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),            # what the client wrote, left, is not believed
    ("127.0.0.1", ["6.6.6.6", "198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # two proxies, two header lines
    ("127.0.0.1", ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),                   # only proxies: the farthest one
    ("127.0.0.1", ["198.51.100.1, not-an-address"], "127.0.0.1"),        # garbage: stop at the proxy
    ("::1", ["2001:db8::5"], "2001:db8::5"),
    ("::ffff:127.0.0.1", ["[2001:db8::5]:4711"], "2001:db8::5"),
])
def test_the_client_is_the_right_most_address_that_is_not_a_trusted_proxy(
    peer: str, forwarded: list[str], expected: str,
) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_a_wrong_trusted_proxies_setting_is_refused_in_one_line(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ValueError, match=r"^TELEHEALTH_TRUSTED_PROXIES: 'proxy\.local' is not an address"):
        create_app(make_config(trusted_proxies=("127.0.0.1", "proxy.local")))
