"""Join time with three synthetic aiortc participants through a real server process.

Measures, per run, the time from the third participant's `join` to its first decoded audio
and video frame from both others; and the server's resident memory idle, and with one room
of three connected. Usage: python -m bench.join [--runs 5] (smoke: --runs 1)
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import start_server, summary, write_result
from media.participant import SyntheticParticipant


async def one_run(server) -> float:  # type: ignore[no-untyped-def]
    room = server.create_room()
    therapist = SyntheticParticipant(room.therapist_link, auto_admit=True)
    first = SyntheticParticipant(room.partner_links[0])
    third = SyntheticParticipant(room.partner_links[1])
    try:
        await therapist.join()
        await first.join()
        await first.wait_for(lambda: first.state == "in_call", 10)
        await therapist.wait_media([first.me["id"]], frames=1, timeout=20)
        started = time.monotonic()
        await third.join()
        await third.wait_for(lambda: third.state == "in_call", 10)
        peers = [therapist.me["id"], first.me["id"]]
        await third.wait_media(peers, frames=1, timeout=20)
        return max(third.links[p].first_frame_at[k] for p in peers for k in ("audio", "video")) - started
    finally:
        for person in (therapist, first, third):
            await person.close()


async def main(runs: int) -> None:
    server = await start_server()
    try:
        rss_idle = server.rss_kib()
        times = [await one_run(server) for _ in range(runs)]
        room = server.create_room()
        people = [SyntheticParticipant(room.therapist_link, auto_admit=True),
                  SyntheticParticipant(room.partner_links[0]), SyntheticParticipant(room.partner_links[1])]
        for person in people:
            await person.join()
        for person in people:
            await person.wait_for(lambda person=person: person.state == "in_call", 10)
        await asyncio.sleep(1.0)  # let the room settle before reading memory
        rss_room = server.rss_kib()
        for person in people:
            await person.close()
    finally:
        await server.stop()
    write_result("join", {
        "what": "third participant's join to first decoded audio+video frame from both peers (s)",
        "join_to_media_s": summary(times),
        "join_to_media_each_s": [round(t, 4) for t in times],
        "server_rss_idle_kib": rss_idle,
        "server_rss_one_room_of_three_kib": rss_room,
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
