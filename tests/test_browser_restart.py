"""A session survives its server: three Chromium pages on a real `telehealth serve` process,
killed (SIGKILL) or stopped (SIGTERM) mid-session and started again on the same port and data.

What the people see: the call goes on peer to peer (remote videos keep playing) with a calm
"Reconnecting to the service…" while the server is away; within 5 s of it answering again,
every page is back in order with the same identity, no waiting room, no "left" or "joined",
the therapist's lock, the phone step and the hold as they were, and the session log still
holding what happened before, the restart itself put down to "server restart".

Closing a tab is leaving: the others see "left" within moments, while a reload resumes
without a word to anyone.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from signaling.hub import CLOSING_GRACE_S
from tests.browser import ROOT, Person, browser, frames_advance  # noqa: F401  (browser is a fixture)
from tests.conftest import free_port
from tests.restart_call import (
    AWAY_TEXT,
    Call,
    Served,
    back_in_order_at,
    messages_since,
    open_call,
    texts_since,
)

# Alone: it times pages coming back after a restart, which a busy second worker would blur.
pytestmark = [pytest.mark.browser, pytest.mark.alone]

# What "back in order" must take at most, from the server answering again.
BACK_WITHIN_S = 5.0
FIGURES = ROOT / "test-artifacts" / "restart-times.json"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(tmp_path / "data", free_port())
    await s.start()
    yield s
    s.close()


@pytest.fixture
async def call(browser: Browser, served: Served) -> AsyncIterator[Call]:  # noqa: F811
    opened = await open_call(browser, served.create_room())
    yield opened
    for person in opened.people:
        await person.context.close()


def record_figures(how: str, seconds: list[float]) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures.setdefault(how, []).append(seconds)
    FIGURES.write_text(json.dumps(figures, indent=1))


async def restart(served: Served, call: Call, how: signal.Signals, *, playing: bool) -> list[float]:
    """Stop the server with ``how``, check the pages while it is away, start it again, and
    check every page is back in order in time. Returns each page's seconds to get there."""
    stopped = await served.stop(how)
    for person in call.people:
        page = person.page
        await expect(page.locator("#banners")).to_contain_text(AWAY_TEXT, timeout=10_000)
        await expect(page.locator("#call-step")).to_be_visible()
        if playing:
            # Peer to peer, the call itself goes on without the server.
            await frames_advance(page)
    answered = await served.start()
    back = [await back_in_order_at(person, answered) - answered for person in call.people]
    record_figures(how.name, back)
    print(f"{how.name}: back in order {', '.join(f'{s:.2f}' for s in back)} s after the server answered"
          f" (down {answered - stopped:.1f} s)")
    assert max(back) < BACK_WITHIN_S, back
    for person in call.people:
        seen = await messages_since(person, stopped)
        welcomes = [body for kind, body in seen if kind == "welcome"]
        assert welcomes and all(w["resumed"] for w in welcomes), welcomes
        assert {w["id"] for w in welcomes} == {call.ids[person.name]}
        # Nobody waits, nobody is admitted again, nobody leaves or joins, nobody is "back".
        assert [kind for kind, _ in seen if kind in ("waiting", "peer_joined", "presence")] == [], seen
        await expect(person.page.locator("#call-step")).to_be_visible()
        await expect(person.page.locator("#waiting-step")).to_be_hidden()
        await expect(person.page.locator("#connection-pill")).to_be_hidden()
        for text in await texts_since(person, answered):
            assert "has left" not in text and "is reconnecting" not in text and "joined" not in text, text
    return back


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "graceful"])
async def test_a_restart_mid_session_keeps_everyone_in_the_call_as_they_were(
    served: Served, call: Call, how: signal.Signals,
) -> None:
    t = call.therapist.page
    alex = call.ids["Alex"]

    # -- a call with a locked room: the videos play on through the outage --------------
    await t.get_by_role("button", name="Lock room").click()
    await expect(t.get_by_role("button", name="Unlock room")).to_be_visible()
    await restart(served, call, how, playing=True)
    for person in call.people:
        await frames_advance(person.page)
    await expect(t.get_by_role("button", name="Unlock room")).to_be_visible()
    await expect(t.locator("#lobby-empty")).to_be_visible()

    # -- the flow's state: Alex on the phone step, Sam held ----------------------------
    # The therapist moves Alex to the phone (the protocol's switch_to_phone; the page offers
    # the button only while a partner is reconnecting), then holds the session for Sam.
    await t.evaluate("(id) => window.__ws.send(JSON.stringify({type: 'switch_to_phone', participant: id}))", alex)
    await expect(t.locator(f'.tile[data-peer="{alex}"]')).to_have_attribute("data-status", "phone")
    await expect(t.locator("#calls-list")).to_contain_text("Call Alex")
    await t.get_by_role("button", name="Hold session").click()
    await expect(t.get_by_role("button", name="Resume session")).to_be_visible()
    await expect(call.sam.page.locator("main")).to_contain_text("Your therapist has paused the session")

    therapist_tile = call.alex.page.locator(f'.tile[data-peer="{call.ids["Therapist"]}"]')
    alex_saw = await therapist_tile.get_attribute("data-status")
    await restart(served, call, how, playing=False)
    await expect(t.locator(f'.tile[data-peer="{alex}"]')).to_have_attribute("data-status", "phone")
    await expect(t.locator("#calls-list")).to_contain_text("Call Alex")
    await expect(t.get_by_role("button", name="Resume session")).to_be_visible()
    await expect(t.get_by_role("button", name="Unlock room")).to_be_visible()
    await expect(call.sam.page.locator("main")).to_contain_text("Your therapist has paused the session")
    # Alex's own page shows the therapist's tile as it did before the restart.
    await expect(therapist_tile).to_have_attribute("data-status", alex_saw or "")

    # -- the session log: everything from before, and the restarts put down to the server
    await t.get_by_role("button", name="Session log").click()
    log = t.locator("#ledger-body")
    await expect(log).to_contain_text("Moved to the phone")
    await expect(log).to_contain_text("Session put on hold")
    rows = await t.evaluate("""() => [...document.querySelectorAll('#ledger-body .ledger-entry')].map(
        (s) => ({person: s.dataset.person, caption: s.querySelector('caption').textContent}))""")
    restarts = [r for r in rows if "server restart" in r["caption"]]
    # Two restarts, three people each: six entries, none blaming anyone's connection.
    assert sorted(r["person"] for r in restarts) == sorted(list(call.ids.values()) * 2), rows
    assert [r for r in rows if r["person"] == alex and "Moved" not in r["caption"]] != []
    for person in call.people:
        assert person.console.csp_violations == [], person.console.csp_violations


async def test_closing_a_tab_is_leaving_and_a_reload_resumes_without_a_word(served: Served, call: Call) -> None:
    t = call.therapist.page
    alex, sam = call.ids["Alex"], call.ids["Sam"]

    # A reload: straight back into the call; the others hear nothing about it.
    reloaded = time.time()
    await call.alex.page.reload()
    await expect(call.alex.page.locator("#call-step")).to_be_visible(timeout=15_000)
    for person in call.people:
        await frames_advance(person.page)
    for person in (call.therapist, call.sam):
        seen = await messages_since(person, reloaded)
        assert [m for kind, m in seen if kind in ("presence", "peer_joined")] == [], seen
        assert not [m for kind, m in seen if kind == "notice" and m.get("about") == alex], seen
    resumed = [m for kind, m in await messages_since(call.alex, reloaded) if kind == "welcome"]
    assert resumed and resumed[-1]["resumed"] and resumed[-1]["id"] == alex

    # Closing the tab: the others see Sam leave, not "reconnecting" for the grace window.
    closed = time.time()
    await call.sam.page.close()
    for person in (call.therapist, call.alex):
        await expect(person.page.locator("main")).to_contain_text(
            "Sam has left the session.", timeout=(CLOSING_GRACE_S + 10) * 1000)
        await expect(person.page.locator(f'.tile[data-peer="{sam}"]')).to_have_count(0)
    left = [t_ for t_, kind, m in (await t.evaluate("() => window.__rec.msgs"))
            if kind == "presence" and m["peer"] == sam and m["state"] == "left"]
    assert left and left[0] / 1000 - closed < CLOSING_GRACE_S + 3
    seen = await messages_since(call.therapist, closed)
    assert not any(kind == "presence" and m["state"] == "reconnecting" for kind, m in seen), seen
    print(f"left seen {left[0] / 1000 - closed:.2f} s after the tab closed")
