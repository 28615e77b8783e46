"""The test side of ``media.run_participant``: a synthetic participant in a child process.

``await RemoteParticipant.start(link, netns=ns)`` runs the participant inside a network
namespace (or on the host with ``netns=None``); its JSON events arrive in ``events`` as they
come, and ``wait_event`` waits on them the way ``SyntheticParticipant.wait_for`` does.

``call(server, ns)`` puts one in a three-party call with two in-process participants, and
``CounterWatch`` times when a frame counter stops and starts growing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from media.participant import SyntheticParticipant
from tests.conftest import RunningServer
from tests.netfault import Namespace

REPO = Path(__file__).resolve().parents[1]
Event = dict[str, Any]
# How often participants send ``stats`` to the server, as pages do (SyntheticParticipant's default).
STATS_INTERVAL = 0.25


class ParticipantExited(RuntimeError):
    """The participant process ended while a test was still waiting on it."""


class RemoteParticipant:
    """A running ``python -m media.run_participant``.

    States: started -> connected (socket open, ``join`` sent) -> welcome or waiting -> ...
    -> exited. ``events`` holds every event so far, each stamped with ``received_at``
    (``time.monotonic()`` in this process, when the line arrived), comparable with
    ``Namespace`` fault times.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[Event] = []
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._changed = asyncio.Condition()
        self._readers = [
            asyncio.create_task(self._read_events()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    async def start(
        cls,
        link: str,
        *,
        netns: Namespace | None = None,
        auto_admit: bool = False,
        relay_only: bool = False,
        stats_interval: float = 0.25,
        server_stats: float | None = STATS_INTERVAL,
        ready_timeout: float = 15.0,
    ) -> RemoteParticipant:
        """Start the participant and return once it is connected and has sent ``join``.

        ``stats_interval``: how often it reports its frame counts to us; ``server_stats``: how
        often it sends ``stats`` to the server (None: never). Inside ``netns`` a loopback
        ``link`` is rewritten to the host's veth address (``Namespace.host_url``): the server
        must listen there too (``host="0.0.0.0"``)."""
        argv = [
            sys.executable, "-m", "media.run_participant",
            netns.host_url(link) if netns is not None else link,
            "--stats-interval", str(stats_interval), "--server-stats", str(server_stats or 0),
        ]
        if auto_admit:
            argv.append("--auto-admit")
        if relay_only:
            argv.append("--relay-only")
        pipes: dict[str, Any] = {
            "stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE,
            "stderr": asyncio.subprocess.PIPE, "cwd": REPO,
        }
        if netns is None:
            process = await asyncio.create_subprocess_exec(*argv, **pipes)
        else:
            process = await netns.run(argv, **pipes)
        participant = cls(process)
        try:
            await participant.wait_event(lambda e: e["event"] == "connected", ready_timeout)
        except BaseException:
            await participant.stop()
            raise
        return participant

    # -- reading ---------------------------------------------------------------------------

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            event = json.loads(line)
            event["received_at"] = time.monotonic()
            self.events.append(event)
            async with self._changed:
                self._changed.notify_all()
        await self.process.wait()
        async with self._changed:
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    # -- waiting ---------------------------------------------------------------------------

    async def wait_event(self, predicate: Callable[[Event], bool], timeout: float, *, since: int = 0) -> Event:
        """The first event from index ``since`` on that matches; waits up to ``timeout``."""

        def found() -> Event | None:
            return next((e for e in self.events[since:] if predicate(e)), None)

        def settled() -> bool:
            return found() is not None or self.process.returncode is not None

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(settled), timeout)
        except TimeoutError:
            recent = [e["event"] for e in self.events[-12:]]
            raise TimeoutError(
                f"no matching event in {timeout} s; recent events {recent}; stderr:\n{self.stderr_tail()}"
            ) from None
        event = found()
        if event is None:
            raise ParticipantExited(
                f"participant exited ({self.process.returncode}) before the event came:\n{self.stderr_tail()}"
            )
        return event

    @property
    def id(self) -> str | None:
        """Our participant id, once the server told us (welcome or waiting)."""
        return next((e["id"] for e in reversed(self.events) if e["event"] in ("welcome", "waiting")), None)

    def frames_from(self, peer_id: str) -> dict[str, int]:
        """Frames decoded from ``peer_id`` as of the latest report."""
        for event in reversed(self.events):
            if event["event"] == "frames" and peer_id in event["peers"]:
                counts = event["peers"][peer_id]
                return {"audio": counts["audio"], "video": counts["video"]}
        return {"audio": 0, "video": 0}

    # -- commands ------------------------------------------------------------------------

    async def command(self, cmd: str, timeout: float = 10.0) -> None:
        """Send one command and wait until the participant has carried it out."""
        assert self.process.stdin is not None
        since = len(self.events)
        self.process.stdin.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        await self.process.stdin.drain()
        outcome = await self.wait_event(
            lambda e: e["event"] in ("done", "failed") and cmd in e["cmd"], timeout, since=since
        )
        if outcome["event"] == "failed":
            raise RuntimeError(f"{cmd} failed in the participant: {outcome['error']}")

    async def leave(self) -> None:
        await self.command("leave")

    async def drop_signaling(self) -> None:
        await self.command("drop_signaling")

    async def rejoin(self) -> None:
        await self.command("rejoin")

    async def stop(self, timeout: float = 5.0) -> int:
        """Close the participant (end of stdin), then terminate and kill if it lingers."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        for escalate in (self.process.terminate, self.process.kill):
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
                break
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    escalate()
        await self.process.wait()
        for reader in self._readers:
            await reader
        return self.process.returncode if self.process.returncode is not None else -1


# -- a three-party call with the namespaced partner ---------------------------------------


@dataclass
class Call:
    """Therapist and partner A in this process, partner B in its own process (and namespace)."""

    therapist: SyntheticParticipant
    a: SyntheticParticipant
    b: RemoteParticipant

    @property
    def b_id(self) -> str:
        assert self.b.id is not None
        return self.b.id

    def ids(self) -> tuple[str, str, str]:
        """(therapist, A, B) participant ids."""
        return self.therapist.me["id"], self.a.me["id"], self.b_id


@contextlib.asynccontextmanager
async def call(
    server: RunningServer, ns: Namespace | None, *, report_stats: bool = True, b_relay_only: bool = False
) -> AsyncIterator[Call]:
    """A new room with everyone in the call (the therapist admits the partners).

    ``report_stats=False``: nobody sends ``stats``, so the server's quality monitor and
    fallback flow stay out of the way of a test about the network itself."""
    room = server.create_room()
    stats_interval = STATS_INTERVAL if report_stats else None
    therapist = SyntheticParticipant(room.therapist_link, auto_admit=True, stats_interval=stats_interval)
    a = SyntheticParticipant(room.partner_links[0], stats_interval=stats_interval)
    b: RemoteParticipant | None = None
    try:
        await therapist.join()
        await a.join()
        b = await RemoteParticipant.start(
            room.partner_links[1], netns=ns, relay_only=b_relay_only, server_stats=stats_interval
        )
        await therapist.wait_for(lambda: therapist.state == "in_call", 10)
        await a.wait_for(lambda: a.state == "in_call", 10)
        await b.wait_event(lambda e: e["event"] == "welcome", 10)
        yield Call(therapist, a, b)
    finally:
        if b is not None:
            await b.stop()
        await therapist.close()
        await a.close()


def receives_from(peer_ids: tuple[str, ...], frames: int) -> Callable[[Event], bool]:
    """An event predicate: a frames report with ``frames`` audio and video from each peer."""

    def enough(event: Event) -> bool:
        return event["event"] == "frames" and all(
            min(event["peers"].get(pid, {"audio": 0, "video": 0})[k] for k in ("audio", "video")) >= frames
            for pid in peer_ids
        )

    return enough


async def media_everywhere(c: Call, frames: int = 5, timeout: float = 15) -> None:
    """Until everyone decoded ``frames`` audio and video frames from both others."""
    t_id, a_id, b_id = c.ids()
    await c.therapist.wait_media([a_id, b_id], frames=frames, timeout=timeout)
    await c.a.wait_media([t_id, b_id], frames=frames, timeout=timeout)
    await c.b.wait_event(receives_from((t_id, a_id), frames), timeout)


class CounterWatch:
    """Samples a counter every ``interval`` seconds and keeps the times (monotonic) it grew,
    to measure when media stopped and came back. Call ``stop()``, or use ``watching()``."""

    def __init__(self, read: Callable[[], int], interval: float = 0.01) -> None:
        self.read = read
        self.interval = interval
        self.grew_at: list[float] = []
        # Set (and replaced) at each growth, for waiters.
        self._grew = asyncio.Event()
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        last = self.read()
        while True:
            await asyncio.sleep(self.interval)
            now = self.read()
            if now > last:
                self.grew_at.append(time.monotonic())
                self._grew.set()
                self._grew = asyncio.Event()
            last = now

    async def growth_after(self, t: float, timeout: float) -> float:
        """The first growth after ``t``, waiting up to ``timeout`` seconds for it. (A
        participant's ``wait_for`` would look only when a message arrives, and after a cut
        media can come back seconds before the next one.)"""
        async with asyncio.timeout(timeout):
            while (grew := self.first_growth_after(t)) is None:
                await self._grew.wait()
        return grew

    def last_growth_before(self, t: float) -> float | None:
        return next((g for g in reversed(self.grew_at) if g <= t), None)

    def first_growth_after(self, t: float) -> float | None:
        return next((g for g in self.grew_at if g > t), None)

    def growths_between(self, start: float, end: float) -> int:
        return sum(1 for g in self.grew_at if start < g <= end)

    def stop(self) -> None:
        self._task.cancel()


@contextlib.contextmanager
def watching(*reads: Callable[[], int]) -> Iterator[list[CounterWatch]]:
    watches = [CounterWatch(read) for read in reads]
    try:
        yield watches
    finally:
        for watch in watches:
            watch.stop()
