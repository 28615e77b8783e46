"""A three-party Chromium call on a real `telehealth serve` process that is killed and restarted.

Shared by tests/test_browser_restart.py and bench/restart.py. The server is a subprocess on a
free port and a temporary data folder; ``Served.stop`` ends it with SIGKILL (a crash) or
SIGTERM (a graceful stop), ``Served.start`` runs it again on the same port and data and
returns the wall-clock time its /healthz first answered. Every page records, with its own
``Date.now()``, the signaling messages it received and each change of its connection pill
and banners (``PAGE_RECORDER``), so the test can tell when each page was back in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, expect

from tests.browser import Person, frames_advance, open_person

TELEHEALTH = [sys.executable, "-m", "telehealth.cli"]

# Records, in each page, the signaling messages that matter here and every change of what the
# page says about its connection: [Date.now(), pill hidden, banner and alert text]. Also keeps
# the page's signaling socket as window.__ws. An init script (DevTools), outside the page's CSP.
PAGE_RECORDER = """(() => {
  const rec = window.__rec = { msgs: [], marks: [] };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      if (!String(args[0]).endsWith('/ws')) return;
      window.__ws = this;
      this.addEventListener('message', (e) => {
        let m;
        try { m = JSON.parse(e.data); } catch (err) { return; }
        if (m.type === 'welcome') rec.msgs.push([Date.now(), 'welcome', { resumed: m.resumed, id: m.you.id, locked: m.room.locked, peers: m.peers }]);
        else if (['waiting', 'presence', 'peer_joined', 'bye', 'notice', 'fallback'].includes(m.type)) rec.msgs.push([Date.now(), m.type, m]);
      });
    }
  };
  const mark = () => {
    const pill = document.getElementById('connection-pill');
    const text = `${document.getElementById('banners')?.textContent ?? ''}|${document.getElementById('alerts')?.textContent ?? ''}`;
    const last = rec.marks[rec.marks.length - 1];
    const now = [Date.now(), pill ? pill.hidden : null, text];
    if (!last || last[1] !== now[1] || last[2] !== now[2]) rec.marks.push(now);
  };
  document.addEventListener('DOMContentLoaded', () => {
    new MutationObserver(mark).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['hidden'] });
    mark();
  });
})();"""

AWAY_TEXT = "Reconnecting to the service…"


@dataclass
class Served:
    """One `telehealth serve` at a time on ``port`` and ``data_dir``; its log in ``log``."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.parent / "serve.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> float:
        """Run the server; the wall-clock time (time.time()) its /healthz first answered."""
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        env = {**os.environ, "TELEHEALTH_LOG_LEVEL": "INFO"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (starting is instant; waiting is async)
                [*TELEHEALTH, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
                env=env, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(self.base_url + "/healthz") as r:
                        if r.status == 200:
                            return time.time()
                except aiohttp.ClientError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"serve exited: {self.log.read_text()[-2000:]}") from None
                await asyncio.sleep(0.01)
        raise TimeoutError("the server did not answer")

    async def stop(self, how: signal.Signals) -> float:
        """Stop it with ``how``; the wall-clock time the signal was sent."""
        assert self.proc is not None
        sent = time.time()
        self.proc.send_signal(how)
        for _ in range(300):
            if self.proc.poll() is not None:
                return sent
            await asyncio.sleep(0.05)
        self.proc.kill()
        raise TimeoutError(f"serve did not stop on {how.name}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def create_room(self) -> dict[str, Any]:
        result = subprocess.run(
            [*TELEHEALTH, "room", "create", "--data-dir", str(self.data_dir), "--base-url", self.base_url,
             "--therapist", "Dr Rivera", "--partner", "Alex", "--phone", "+1 202 555 0102",
             "--partner", "Sam", "--phone", "+1 202 555 0103", "--json"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        return json.loads(result.stdout)  # type: ignore[no-any-return]


@dataclass
class Call:
    therapist: Person
    alex: Person
    sam: Person
    ids: dict[str, str]  # name -> person id

    @property
    def people(self) -> tuple[Person, Person, Person]:
        return self.therapist, self.alex, self.sam


async def open_call(browser: Browser, room: dict[str, Any]) -> Call:
    """Everyone in the call: the therapist starts, both partners join and are admitted, and
    every page shows both others' video advancing."""
    therapist = await open_person(browser, "Therapist", room["therapist_link"], init_script=PAGE_RECORDER)
    await therapist.page.get_by_role("button", name="Start session").click()
    await expect(therapist.page.locator("#call-step")).to_be_visible()
    alex = await open_person(browser, "Alex", room["partner_links"][0], init_script=PAGE_RECORDER)
    sam = await open_person(browser, "Sam", room["partner_links"][1], init_script=PAGE_RECORDER)
    for partner in (alex, sam):
        await partner.page.get_by_role("button", name="Join session").click()
        await expect(partner.page.get_by_role("heading", name="Your therapist will let you in")).to_be_visible()
    for partner in (alex, sam):
        await therapist.page.get_by_role("button", name=f"Admit {partner.name}").click()
    for person in (therapist, alex, sam):
        await frames_advance(person.page, timeout=40.0)
    ids = {}
    for person in (therapist, alex, sam):
        ids[person.name] = await person.page.evaluate(
            "() => window.__rec.msgs.filter(([, type]) => type === 'welcome').pop()[2].id")
    return Call(therapist, alex, sam, ids)


async def recorded(person: Person) -> dict[str, list[Any]]:
    return await person.page.evaluate("() => window.__rec")  # type: ignore[no-any-return]


async def back_in_order_at(person: Person, answered: float, timeout: float = 20.0) -> float:
    """Wall-clock time at which ``person``'s page was back in order after the server answered
    at ``answered``: a resumed welcome arrived, the pill is hidden, the away banner gone."""
    after_ms = answered * 1000
    await person.page.wait_for_function(
        """([after, away]) => {
            const rec = window.__rec;
            const welcomed = rec.msgs.some(([t, type]) => type === 'welcome' && t >= after);
            const last = rec.marks[rec.marks.length - 1];
            return welcomed && last && last[1] === true && !last[2].includes(away);
        }""", arg=[after_ms - 1000, AWAY_TEXT], timeout=timeout * 1000)
    rec = await recorded(person)
    welcomed = min(t for t, kind, _ in rec["msgs"] if kind == "welcome" and t >= after_ms - 1000)
    last_bad = max((t for t, hidden, text in rec["marks"] if hidden is not True or AWAY_TEXT in text),
                   default=welcomed)
    settled = min((t for t, hidden, text in rec["marks"]
                   if t > last_bad and hidden is True and AWAY_TEXT not in text), default=welcomed)
    return max(welcomed, settled) / 1000


async def messages_since(person: Person, since: float) -> list[tuple[str, Any]]:
    rec = await recorded(person)
    return [(kind, body) for t, kind, body in rec["msgs"] if t >= since * 1000]


async def texts_since(person: Person, since: float) -> list[str]:
    rec = await recorded(person)
    return [text for t, _, text in rec["marks"] if t >= since * 1000]
