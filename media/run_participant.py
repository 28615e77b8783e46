"""Run one synthetic participant in a process of its own, driven over stdin and stdout.

    python -m media.run_participant LINK [--auto-admit] [--relay-only] [--stats-interval 0.25]
                                         [--server-stats 0.25]

A process of its own can run where the test process cannot: inside a network namespace
(``ip netns exec``), so that cutting the namespace's network cuts this participant and nothing
else, or pinned to another core for a benchmark.

Stdout: one JSON object per line, each with ``event`` and ``t`` (``time.time()``, so lines
from several processes can be put on one time line):

- ``{"event": "connected"}``: the signaling socket is open and ``join`` is sent.
- ``{"event": "welcome", "id", "role", "resumed", "peers": [ids]}``, ``{"event": "waiting",
  "id"}``, ``{"event": "lobby", "waiting": [ids]}``, ``{"event": "peer_joined", "peer",
  "role"}``, ``{"event": "presence", "peer", "state"}``, ``{"event": "error", "code"}``,
  ``{"event": "bye", "reason", "action"}``: what the server said, without names.
- ``{"event": "state", "state"}``: the signaling state (``in_call``, ``disconnected``, ...).
- ``{"event": "frames", "peers": {id: {"audio", "video", "pc"}}}`` every interval: frames
  decoded so far from each peer, and that pair's ``connectionState``.
- ``{"event": "done", "cmd"}`` / ``{"event": "failed", "cmd", "error"}`` after each command.
- ``{"event": "closed"}`` last, before the process exits.

Stdin: one JSON command per line: ``{"cmd": "leave"}`` (say goodbye, then exit),
``{"cmd": "drop_signaling"}`` (lose the socket, keep media), ``{"cmd": "rejoin"}`` (connect
and join again with the same link), ``{"cmd": "close"}`` (exit). End of stdin closes too, so
the participant never outlives the process that drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from media.participant import SyntheticParticipant

COMMANDS = ("leave", "drop_signaling", "rejoin", "close")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def public_view(message: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of a server message worth reporting, never names or phone numbers;
    None for messages that are only machinery (sdp, candidates, pongs)."""
    kind = message.get("type")
    if kind == "welcome":
        you = message["you"]
        return {"id": you["id"], "role": you["role"], "resumed": message["resumed"],
                "peers": [peer["id"] for peer in message["peers"]]}
    if kind == "waiting":
        return {"id": message["you"]["id"]}
    if kind == "lobby":
        return {"waiting": [person["id"] for person in message["waiting"]]}
    if kind == "peer_joined":
        return {"peer": message["peer"]["id"], "role": message["peer"]["role"]}
    if kind == "presence":
        return {"peer": message["peer"], "state": message["state"]}
    if kind == "error":
        return {"code": message["code"]}
    if kind == "bye":
        return {"reason": message["reason"], "action": message["action"]}
    return None


def frame_counts(participant: SyntheticParticipant) -> dict[str, dict[str, Any]]:
    return {
        peer_id: {**link.frames, "pc": link.pc.connectionState if link.pc is not None else "closed"}
        for peer_id, link in participant.links.items()
    }


async def report_messages(participant: SyntheticParticipant) -> None:
    reported = 0
    state = participant.state

    def news() -> bool:
        return len(participant.received) > reported or participant.state != state

    while True:
        await participant.wait_for(news, timeout=None)  # type: ignore[arg-type]
        for message in participant.received[reported:]:
            view = public_view(message)
            if view is not None:
                emit(message["type"], **view)
        reported = len(participant.received)
        if participant.state != state:
            state = participant.state
            emit("state", state=state)


async def report_frames(participant: SyntheticParticipant, interval: float) -> None:
    while True:
        emit("frames", peers=frame_counts(participant))
        await asyncio.sleep(interval)


async def read_commands(participant: SyntheticParticipant, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    actions: dict[str, Callable[[], Any]] = {
        "leave": participant.leave,
        "drop_signaling": participant.drop_signaling,
        "rejoin": participant.join,
        "close": participant.close,
    }
    while line := await reader.readline():
        try:
            cmd = json.loads(line)["cmd"]
            if cmd not in actions:
                raise ValueError(f"unknown command, expected one of {', '.join(COMMANDS)}")
            await actions[cmd]()
        except (ValueError, KeyError, TypeError, OSError, TimeoutError, aiohttp.ClientError) as exc:
            # A bad or failed command is reported; the participant goes on.
            emit("failed", cmd=str(line.strip(), "utf-8", "replace"), error=repr(exc))
            continue
        emit("done", cmd=cmd)
        if cmd in ("leave", "close"):
            break
    stop.set()


async def run(args: argparse.Namespace) -> None:
    participant = SyntheticParticipant(
        args.link, auto_admit=args.auto_admit, relay_only=args.relay_only,
        stats_interval=args.server_stats or None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [
        asyncio.create_task(report_messages(participant)),
        asyncio.create_task(read_commands(participant, stop)),
    ]
    try:
        await participant.join()
        emit("connected")
        tasks.append(asyncio.create_task(report_frames(participant, args.stats_interval)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await participant.close()
        emit("closed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m media.run_participant", description=__doc__.split("\n")[0])
    parser.add_argument("link", help="the participant's join link")
    parser.add_argument("--auto-admit", action="store_true", help="admit everyone in the lobby (therapist)")
    parser.add_argument("--relay-only", action="store_true", help="use TURN relay candidates only")
    parser.add_argument("--stats-interval", type=float, default=0.25, help="seconds between frame reports")
    parser.add_argument("--server-stats", type=float, default=0.25,
                        help="seconds between stats messages to the server, as a page sends them (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
