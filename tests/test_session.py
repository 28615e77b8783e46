"""A real three-party call through the real server: three aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import pytest

from media.participant import SyntheticParticipant
from signaling.endpoint import SIGNALING
from signaling.hub import RoomHub
from tests.conftest import RunningServer


@contextlib.asynccontextmanager
async def call(server: RunningServer) -> AsyncIterator[tuple[SyntheticParticipant, ...]]:
    room = server.create_room()
    therapist = SyntheticParticipant(room.therapist_link, auto_admit=True)
    a = SyntheticParticipant(room.partner_links[0])
    b = SyntheticParticipant(room.partner_links[1])
    people = (therapist, a, b)
    try:
        for person in people:
            await person.join()
        for person in people:
            await person.wait_for(lambda person=person: person.state == "in_call", 5.0)
        yield people
    finally:
        for person in people:
            await person.close()


def ids(*people: SyntheticParticipant) -> list[str]:
    return [p.me["id"] for p in people]


def hub(server: RunningServer) -> RoomHub:
    return server.app[SIGNALING].hub


async def test_three_party_mesh_decodes_audio_and_video_from_both_others(server: RunningServer) -> None:
    async with call(server) as (therapist, a, b):
        await therapist.wait_media(ids(a, b), frames=5, timeout=15)
        await a.wait_media(ids(therapist, b), frames=5, timeout=15)
        await b.wait_media(ids(therapist, a), frames=5, timeout=15)
        # A full mesh: one connection per pair, each with its own DTLS-SRTP session.
        for person in (therapist, a, b):
            assert len(person.links) == 2
            for link in person.links.values():
                assert link.pc is not None and link.pc.connectionState == "connected"
                assert "a=fingerprint:sha-256" in link.pc.remoteDescription.sdp
                assert "RTP/SAVPF" in link.pc.remoteDescription.sdp


async def test_partner_waits_until_the_therapist_admits(server: RunningServer) -> None:
    room = server.create_room()
    therapist = SyntheticParticipant(room.therapist_link)
    partner = SyntheticParticipant(room.partner_links[0])
    try:
        await partner.join()
        await partner.wait_message("waiting")
        await therapist.join()
        lobby = await therapist.wait_message("lobby", waiting=[{"id": partner.me["id"], "name": "Partner 1"}])
        assert lobby["waiting"][0]["id"] == partner.me["id"]
        await therapist.send({"type": "admit", "participant": partner.me["id"]})
        await partner.wait_message("welcome")
        await partner.wait_media(ids(therapist), frames=3, timeout=15)
    finally:
        await therapist.close()
        await partner.close()


async def test_dropped_signaling_resumes_same_identity_and_media_flows(server: RunningServer) -> None:
    async with call(server) as (therapist, a, b):
        await b.wait_media(ids(therapist, a), frames=3, timeout=15)
        a_id = a.me["id"]

        await a.drop_signaling()
        await therapist.wait_message("presence", peer=a_id, state="reconnecting")
        await b.wait_message("presence", peer=a_id, state="reconnecting")

        await a.join()
        await a.wait_message("welcome", resumed=True)
        await therapist.wait_message("presence", peer=a_id, state="back")
        # Same identity, nobody twice, no one "left" or "joined" again.
        assert a.me["id"] == a_id
        assert len(hub(server).rooms) == 1
        assert [m.id for m in next(iter(hub(server).rooms.values())).members.values()].count(a_id) == 1
        for other in (therapist, b):
            assert not [m for m in other.received if m["type"] == "presence" and m["state"] == "left"]
            assert [m["peer"]["id"] for m in other.received if m["type"] == "peer_joined"].count(a_id) <= 1

        before = {pid: therapist.frames_from(pid)["video"] for pid in ids(a, b)}
        await therapist.wait_for(
            lambda: all(therapist.frames_from(pid)["video"] >= before[pid] + 10 for pid in before), 10
        )


async def test_second_device_takes_over_the_same_link(server: RunningServer) -> None:
    async with call(server) as (therapist, a, b):
        await therapist.wait_media(ids(a, b), frames=3, timeout=15)
        a_id = a.me["id"]
        a2 = SyntheticParticipant(a.link)
        try:
            await a2.join()
            await a.wait_for(lambda: a.bye is not None, 5)
            assert a.bye["reason"] == "replaced"
            await a2.wait_message("welcome", resumed=True)
            assert a2.me["id"] == a_id
            # The new device makes fresh connections, and media flows both ways again.
            await a2.wait_media(ids(therapist, b), frames=3, timeout=15)
            seen = therapist.frames_from(a_id)["video"]
            await therapist.wait_for(lambda: therapist.frames_from(a_id)["video"] >= seen + 10, 10)
            room = next(iter(hub(server).rooms.values()))
            assert len(room.members) == 3
        finally:
            await a2.close()


async def test_grace_window_ends_in_left(make_config) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import start_server

    server = await start_server(make_config(grace_seconds=0.6))
    try:
        async with call(server) as (therapist, a, _b):
            a_id = a.me["id"]
            await a.drop_signaling()
            await therapist.wait_message("presence", peer=a_id, state="reconnecting")
            await therapist.wait_message("presence", peer=a_id, state="left", timeout=5)
            assert a_id not in therapist.links
            # Coming back after the window is a new entrance: the partner waits again.
            await a.join()
            await a.wait_message("waiting")
    finally:
        await server.runner.cleanup()


@pytest.mark.parametrize("via", ["therapist", "cli"])
async def test_ending_the_room_tells_everyone_and_refuses_the_links(server: RunningServer, via: str) -> None:
    async with call(server) as (therapist, a, b):
        if via == "therapist":
            await therapist.send({"type": "end"})
        else:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telehealth.cli", "room", "end", "--data-dir", str(server.config.data_dir),
                next(iter(hub(server).rooms)),
            )
            assert await proc.wait() == 0
        for person in (therapist, a, b):
            await person.wait_for(lambda person=person: person.bye is not None, 5)
            assert person.bye["reason"] == "room_ended"
        late = SyntheticParticipant(a.link)
        try:
            await late.join()
            err = await late.wait_message("error")
            assert err["code"] == "room_ended"
        finally:
            await late.close()
        assert hub(server).rooms == {}
