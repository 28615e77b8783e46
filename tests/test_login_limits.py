"""Sign-in limits: a guesser is slowed where they are, never the account they guess at, and
the answers do not tell which usernames exist."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from telehealth import accounts
from telehealth.config import Config
from tests.conftest import RunningServer, session_from, start_server
from tests.test_pages import PASSWORD, sign_in


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    # The default budgets, refilled over an hour instead of a minute: on a busy machine these
    # sign-ins may take seconds, and a token coming back meanwhile is not what is tested.
    running = await start_server(make_config(login_window_seconds=3600.0))
    yield running
    await running.runner.cleanup()


def client(address: str) -> aiohttp.ClientSession:
    return session_from(address, cookie_jar=aiohttp.DummyCookieJar())


async def test_a_stranger_guessing_a_therapists_password_does_not_lock_them_out(server: RunningServer) -> None:
    accounts.add_user(server.store, "drtest", PASSWORD, "therapist", now=time.time())
    async with client("127.0.0.2") as stranger:
        statuses = [(await sign_in(stranger, server.base_url, "drtest", f"guess {i}")).status for i in range(30)]
        # Five tries, then that address waits: even the right password from there.
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        assert (await sign_in(stranger, server.base_url, "drtest", PASSWORD)).status == 429
    # The therapist, at their own address, gets in at the first try.
    async with client("127.0.0.3") as therapist:
        response = await sign_in(therapist, server.base_url, "drtest", PASSWORD)
        assert response.status == 303 and response.headers["Location"] == "/console"


async def test_one_client_guessing_many_accounts_is_limited_by_its_address(server: RunningServer) -> None:
    accounts.add_user(server.store, "drtest", PASSWORD, "therapist", now=time.time())
    async with client("127.0.0.4") as guesser:
        statuses = [(await sign_in(guesser, server.base_url, f"user{i}", "not it")).status for i in range(11)]
        assert statuses == [401] * 10 + [429]
        blocked = await sign_in(guesser, server.base_url, "drtest", PASSWORD)
        assert blocked.status == 429 and "Please wait" in await blocked.text()
    async with client("127.0.0.5") as colleague:
        assert (await sign_in(colleague, server.base_url, "drtest", PASSWORD)).status == 303


def _answer(text: str, username: str) -> str:
    """A sign-in page with what differs per request taken out: the form's fresh token, the
    username echoed back into its field, and the seconds left to wait (a clock, not a name)."""
    text = re.sub(r'name="csrf" value="[^"]+"', 'name="csrf" value=""', text)
    text = re.sub(r"wait \d+ seconds", "wait N seconds", text)
    return text.replace(f'value="{username}"', 'value=""')


async def test_known_and_unknown_usernames_get_the_same_answers_in_comparable_time(server: RunningServer) -> None:
    accounts.add_user(server.store, "drtest", PASSWORD, "therapist", now=time.time())
    answers: dict[str, list[tuple[int, str]]] = {"drtest": [], "nobody": []}
    seconds: dict[str, list[float]] = {"drtest": [], "nobody": []}
    async with client("127.0.0.6") as known, client("127.0.0.7") as unknown:
        for _ in range(8):  # interleaved, so machine load falls on both alike
            for name, http in (("drtest", known), ("nobody", unknown)):
                started = time.perf_counter()
                response = await sign_in(http, server.base_url, name, "wrong password!")
                text = await response.text()
                seconds[name].append(time.perf_counter() - started)
                answers[name].append((response.status, _answer(text, name)))
    # The same status and page, try after try, through the limit and past it.
    assert [status for status, _ in answers["drtest"]] == [401] * 5 + [429] * 3
    assert answers["drtest"] == answers["nobody"]
    # An unknown name is checked against a dummy hash: a wrong password takes as long
    # (scrypt, ~50 ms) whether or not the account exists; without it, ten times less.
    known_s, unknown_s = statistics.median(seconds["drtest"][:5]), statistics.median(seconds["nobody"][:5])
    assert 1 / 3 < known_s / unknown_s < 3, (known_s, unknown_s)
