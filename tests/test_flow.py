"""Table tests of the fallback flow, with plain numbers for the clock."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from fallback import scoring
from fallback.events import (
    Action,
    AudioOnly,
    FreshConnection,
    Hold,
    IceRestart,
    Joined,
    LedgerEntry,
    Left,
    LowerVideo,
    PageRejoin,
    PhonePrompt,
    PutOnHold,
    QualityReport,
    RejoinResult,
    RestoreVideo,
    Resume,
    ReturnToVideo,
    SessionEnded,
    SignalingBack,
    SignalingLost,
    SwitchToPhone,
    Unhold,
)
from fallback.flow import FallbackFlow, FallbackTimings, PersonState, VideoMode
from fallback.ledger import Outcome, Step
from fallback.notices import (
    NOTICE_TEXT,
    Audience,
    Notice,
    NoticeKind,
    call_prompt,
    fallback_plan,
    mask_phone,
    notice_text,
    tel_href,
)
from fallback.scoring import (
    Attribution,
    Cause,
    LinkSample,
    Quality,
    QualityMonitor,
    RoomQuality,
    ScoringThresholds,
    worst,
)
from telehealth.errors import StateError
from telehealth.store import Person, RoomRecord
from telehealth.tokens import PersonId, RoomId

T, A, B = PersonId("therapist"), PersonId("alex"), PersonId("blake")
G, F, P, L = Quality.GOOD, Quality.FAIR, Quality.POOR, Quality.LOST
TIMINGS = FallbackTimings()
Levels = Callable[[float], dict[PersonId, Quality]]


def room(*people: tuple[PersonId, str]) -> FallbackFlow:
    flow = FallbackFlow()
    for person, role in people or ((T, "therapist"), (A, "partner"), (B, "partner")):
        flow.handle(Joined(person, role), 0.0)  # type: ignore[arg-type]
    return flow


def report(
    t: float, levels: dict[PersonId, Quality], cause: Cause = Cause.OWN_NETWORK,
    rising: frozenset[PersonId] = frozenset(),
) -> QualityReport:
    """What the monitor would say: the bad ones blamed on their own network, or on everyone;
    ``rising``: poor ones whose links already read better."""
    bad = {p: q for p, q in levels.items() if q != G}
    if cause == Cause.OWN_NETWORK:
        blame = tuple(Attribution(cause, q, person=p) for p, q in bad.items())
    else:
        blame = (Attribution(cause, worst(bad.values())),) if bad else ()
    return QualityReport(RoomQuality(t, {}, {}, levels, blame, rising=rising))


def run(flow: FallbackFlow, levels: Levels, start: float, end: float, *, every: float = 0.5,
        cause: Cause = Cause.OWN_NETWORK) -> list[tuple[float, Action]]:
    """Feed a report every ``every`` seconds from ``start`` up to ``end`` (exclusive)."""
    seen: list[tuple[float, Action]] = []
    steps = round((end - start) / every)
    for i in range(steps):
        t = round(start + i * every, 6)
        quality = report(t, {T: G, A: G, B: G} | levels(t), cause)
        seen.extend((t, a) for a in flow.handle(quality, t))
    return seen


def when(seen: list[tuple[float, Action]], action: Action) -> list[float]:
    return [t for t, a in seen if a == action]


def notices(
    seen: list[tuple[float, Action]], kind: NoticeKind
) -> dict[PersonId, tuple[float, Audience, PersonId | None]]:
    """Who was told ``kind``: when, as which audience, about whom."""
    return {a.to: (t, a.audience, a.about)
            for t, a in seen if isinstance(a, Notice) and a.kind == kind}


def ledger(seen: list[tuple[float, Action]]) -> list[LedgerEntry]:
    return [a for _, a in seen if isinstance(a, LedgerEntry)]


def steps(entry: LedgerEntry) -> list[tuple[float, Step, str | None]]:
    return [(s.at, s.step, s.outcome) for s in entry.record.steps]


def a_is(level: Quality, since: float, until: float = float("inf")) -> Levels:
    return lambda t: {A: level} if since <= t < until else {}


# -- degraded -----------------------------------------------------------------------------


def test_poor_lowers_video_then_goes_audio_only_with_a_notice_then_steps_back_up() -> None:
    flow = room()
    seen = run(flow, a_is(P, 10, 30), 0, 60)
    # Down: lowered, then audio only. Up, a step at a time: lowered video once the link has
    # been good for the probe wait (video is back within 10 s), full after the restore wait.
    probe = 30 + TIMINGS.probe_video_after_s
    assert when(seen, LowerVideo(A)) == [10 + TIMINGS.lower_video_after_s, probe]
    assert when(seen, AudioOnly(A)) == [10 + TIMINGS.audio_only_after_s]
    assert notices(seen, NoticeKind.VIDEO_PAUSED) == {
        A: (18, Audience.YOU, A), T: (18, Audience.THERAPIST, A), B: (18, Audience.PARTNER, A),
    }
    assert probe - 30 <= 10
    # Good again, video still paused: "weak" would be false now; everyone hears it is coming.
    assert notices(seen, NoticeKind.VIDEO_RETURNING) == {
        A: (30, Audience.YOU, A), T: (30, Audience.THERAPIST, A), B: (30, Audience.PARTNER, A),
    }
    assert when(seen, RestoreVideo(A)) == [probe + TIMINGS.restore_video_after_s]
    assert notices(seen, NoticeKind.VIDEO_BACK) == {
        A: (probe, Audience.YOU, A), T: (probe, Audience.THERAPIST, A), B: (probe, Audience.PARTNER, A),
    }
    [entry] = ledger(seen)
    record = entry.record
    assert (record.person, record.cause, record.started_at) == (A, Cause.OWN_NETWORK, 10)
    restored = probe + TIMINGS.restore_video_after_s
    assert (entry.record.ended_at, entry.record.outcome) == (restored, Outcome.RECOVERED)
    assert steps(entry) == [(14, Step.LOWER_VIDEO, None), (18, Step.AUDIO_ONLY, None),
                            (probe, Step.LOWER_VIDEO, None), (restored, Step.RESTORE_VIDEO, None)]
    assert flow.status(A).state == PersonState.CONNECTED and flow.status(A).video == VideoMode.FULL


def test_weak_again_before_the_video_came_back_is_said_again() -> None:
    # Poor 10-30 s (audio only at 18), good for 2 s (shorter than the probe wait), poor again.
    seen = run(room(), lambda t: {A: P} if 10 <= t < 30 or 32 <= t < 40 else {}, 0, 60)
    told = [(t, a.kind) for t, a in seen if isinstance(a, Notice) and a.to == T]
    assert told == [(18, NoticeKind.VIDEO_PAUSED), (30, NoticeKind.VIDEO_RETURNING),
                    (32, NoticeKind.VIDEO_PAUSED), (40, NoticeKind.VIDEO_RETURNING),
                    (40 + TIMINGS.probe_video_after_s, NoticeKind.VIDEO_BACK)]


def test_no_pause_while_the_link_already_reads_better_and_at_once_if_it_relapses() -> None:
    # Poor from 10 s; from 16 s the monitor sees the link read better while the level waits
    # out the scorer's hold. The pause due at 18 waits; the relapse at 19 pauses at once.
    flow = room()
    seen: list[tuple[float, Action]] = []
    for i in range(60):
        t = i * 0.5
        level = P if t >= 10 else G
        rising = frozenset({A}) if 16 <= t < 19 else frozenset()
        seen.extend((t, a) for a in flow.handle(report(t, {T: G, A: level, B: G}, rising=rising), t))
    assert when(seen, LowerVideo(A)) == [14]
    assert when(seen, AudioOnly(A)) == [19]


def test_a_short_fair_blip_does_not_start_the_poor_count_again() -> None:
    # Poor 10-15, fair for 1.5 s, poor again: still one spell, paused 8 s after it began.
    seen = run(room(), lambda t: {A: F if 15 <= t < 16.5 else P} if t >= 10 else {}, 0, 40)
    assert when(seen, AudioOnly(A)) == [10 + TIMINGS.audio_only_after_s]
    # Fair for lower_video_after_s ends the spell: the count starts again after it.
    seen = run(room(), lambda t: {A: F if 15 <= t < 19.5 else P} if t >= 10 else {}, 0, 40)
    assert when(seen, AudioOnly(A)) == [19.5 + TIMINGS.audio_only_after_s]


def test_fair_only_lowers_video_and_restores_without_alarming_anyone() -> None:
    seen = run(room(), a_is(F, 10, 30), 0, 60)
    assert when(seen, LowerVideo(A)) == [14]
    assert when(seen, AudioOnly(A)) == []
    assert when(seen, RestoreVideo(A)) == [40]
    assert [a for _, a in seen if isinstance(a, Notice)] == []


def test_a_dip_shorter_than_the_lowering_delay_changes_nothing() -> None:
    flow = room()
    seen = run(flow, a_is(P, 10, 13.5), 0, 30)
    assert [a for _, a in seen] == []
    assert flow.ledger.entries == ()


def test_everyone_poor_pauses_everyone_with_one_blameless_notice_each() -> None:
    seen = run(room(), lambda t: {T: P, A: P, B: P} if t >= 10 else {}, 0, 20, cause=Cause.EVERYONE)
    assert {a.person for _, a in seen if isinstance(a, AudioOnly)} == {T, A, B}
    paused = [a for _, a in seen if isinstance(a, Notice) and a.kind == NoticeKind.VIDEO_PAUSED]
    assert sorted(n.to for n in paused) == sorted([T, A, B])
    assert {(n.audience, n.about) for n in paused} == {(Audience.EVERYONE, None)}


# -- lost and the rejoin ladder -------------------------------------------------------------


def test_lost_climbs_the_rejoin_ladder_then_the_phone_step_at_the_end_of_the_window() -> None:
    flow = room()
    seen = run(flow, a_is(L, 10), 0, 70)
    assert when(seen, IceRestart(A)) == [10]
    assert when(seen, FreshConnection(A)) == [10 + TIMINGS.fresh_connection_after_s]
    # Page rejoins from 10 s after the loss, then after 5, 10, 20 s...
    rejoins = [(t, a.attempt) for t, a in seen if isinstance(a, PageRejoin)]
    assert rejoins == [(20, 1), (25, 2), (35, 3)]
    assert when(seen, PhonePrompt(T, A)) == [10 + TIMINGS.rejoin_window_s]
    assert notices(seen, NoticeKind.DROPPED) == {
        A: (10, Audience.YOU, A), T: (10, Audience.THERAPIST, A), B: (10, Audience.PARTNER, A),
    }
    assert notices(seen, NoticeKind.PHONE) == {
        A: (55, Audience.YOU, A), T: (55, Audience.THERAPIST, A), B: (55, Audience.PARTNER, A),
    }
    assert flow.status(A).state == PersonState.PHONE
    assert flow.status(B).state == PersonState.CONNECTED  # the session goes on for the others


def test_a_failed_ice_restart_makes_way_for_a_fresh_connection_at_once() -> None:
    flow = room()
    run(flow, a_is(L, 10), 0, 11)
    assert flow.handle(RejoinResult(A, Step.ICE_RESTART, ok=False), 11.0) == [FreshConnection(A)]
    # The ladder keeps its clock: the first page rejoin still comes 10 s after the loss.
    seen = run(flow, a_is(L, 10), 11.5, 21)
    assert [(t, a) for t, a in seen if not isinstance(a, Notice)] == [(20, PageRejoin(A, 1))]
    record = flow.ledger.entries[0]
    assert [(s.step, s.outcome) for s in record.steps][:3] == [
        (Step.DROPPED, None), (Step.ICE_RESTART, "failed"), (Step.FRESH_CONNECTION, None)]


def test_back_within_the_window_tells_everyone_and_closes_the_ledger_entry() -> None:
    flow = room()
    seen = run(flow, a_is(L, 10, 16), 0, 30)
    assert notices(seen, NoticeKind.BACK) == {
        A: (16, Audience.YOU, A), T: (16, Audience.THERAPIST, A), B: (16, Audience.PARTNER, A),
    }
    assert when(seen, PhonePrompt(T, A)) == []
    [entry] = ledger(seen)
    assert steps(entry) == [(10, Step.DROPPED, None), (10, Step.ICE_RESTART, None),
                            (14, Step.FRESH_CONNECTION, None), (16, Step.BACK, None)]
    assert (entry.record.ended_at, entry.record.outcome) == (16, Outcome.RECOVERED)
    # A rejoin result that arrives after the person is back changes nothing.
    assert flow.handle(RejoinResult(A, Step.FRESH_CONNECTION, ok=True), 16.5) == []


def test_the_rejoin_window_is_configurable() -> None:
    flow = FallbackFlow(FallbackTimings(rejoin_window_s=20))
    for person, role in ((T, "therapist"), (A, "partner")):
        flow.handle(Joined(person, role), 0)  # type: ignore[arg-type]
    assert when(run(flow, a_is(L, 10), 0, 40), PhonePrompt(T, A)) == [30]


# -- the phone step -------------------------------------------------------------------------


def test_the_therapist_can_switch_to_phone_before_the_window_ends() -> None:
    flow = room()
    run(flow, a_is(L, 10), 0, 15)
    actions = flow.handle(SwitchToPhone(A), 15)
    assert actions[0] == PhonePrompt(T, A)
    assert flow.status(A).state == PersonState.PHONE
    assert flow.handle(SwitchToPhone(A), 16) == []  # a second click does nothing
    assert when(run(flow, a_is(L, 10), 16, 70), PhonePrompt(T, A)) == []
    with pytest.raises(StateError):
        flow.handle(SwitchToPhone(T), 20)
    with pytest.raises(StateError):
        flow.handle(SwitchToPhone(PersonId("stranger")), 20)


def test_a_partner_back_online_during_the_phone_step_can_return_to_video() -> None:
    flow = room()
    run(flow, a_is(L, 10), 0, 60)
    assert flow.status(A).state == PersonState.PHONE
    assert flow.handle(ReturnToVideo(B), 60) == []  # B is on video: nothing to return from
    flow.handle(SignalingLost(A), 60)
    offered = flow.handle(SignalingBack(A), 61)
    assert offered == [Notice(A, NoticeKind.VIDEO_AVAILABLE, Audience.YOU, A),
                       Notice(T, NoticeKind.VIDEO_AVAILABLE, Audience.THERAPIST, A)]
    # Media flowing again says the same thing; it is offered once.
    assert run(flow, a_is(G, 0), 61.5, 70) == []
    assert flow.status(A).back_online
    back = flow.handle(ReturnToVideo(A), 70)
    assert {(n.to, n.audience) for n in back if isinstance(n, Notice)} == {
        (A, Audience.YOU), (T, Audience.THERAPIST), (B, Audience.PARTNER)}
    [entry] = [a for a in back if isinstance(a, LedgerEntry)]
    assert [s.step for s in entry.record.steps][-2:] == [Step.PHONE, Step.RETURN_TO_VIDEO]
    assert entry.record.outcome == Outcome.RECOVERED
    assert flow.status(A).state == PersonState.CONNECTED


def test_media_back_during_the_phone_step_offers_video_without_switching_by_itself() -> None:
    flow = room()
    run(flow, a_is(L, 10), 0, 60)
    seen = run(flow, a_is(L, 10, 62), 60, 80)
    assert set(notices(seen, NoticeKind.VIDEO_AVAILABLE)) == {A, T}
    assert flow.status(A).state == PersonState.PHONE


def test_both_partners_failing_at_once_get_a_ladder_each_and_a_call_each() -> None:
    flow = room()
    seen = run(flow, lambda t: {A: L, B: L} if t >= 10 else {}, 0, 60)
    assert when(seen, IceRestart(A)) == when(seen, IceRestart(B)) == [10]
    dropped = [(a.to, a.about) for _, a in seen
               if isinstance(a, Notice) and a.kind == NoticeKind.DROPPED]
    assert (T, A) in dropped and (T, B) in dropped
    assert when(seen, PhonePrompt(T, A)) == when(seen, PhonePrompt(T, B)) == [55]
    with pytest.raises(StateError):
        flow.handle(PutOnHold(), 56)  # nobody is left to hold


def test_the_therapist_failing_tells_the_partners_to_stay_then_that_they_will_be_called() -> None:
    flow = room()
    seen = run(flow, lambda t: {T: L} if t >= 10 else {}, 0, 60)
    assert notices(seen, NoticeKind.DROPPED) == {
        T: (10, Audience.YOU_THERAPIST, T), A: (10, Audience.PARTNER_THERAPIST, T),
        B: (10, Audience.PARTNER_THERAPIST, T),
    }
    assert when(seen, PhonePrompt(T, A)) == when(seen, PhonePrompt(T, B)) == [55]
    phone = notices(seen, NoticeKind.PHONE)
    assert phone[A] == (55, Audience.PARTNER_THERAPIST, T)
    hint = mask_phone("+12025550102")
    text = notice_text(Notice(A, NoticeKind.PHONE, phone[A][1], T), phone_hint=hint)
    assert text == ("Your therapist's video couldn't reconnect. They will call you at "
                    "(•••) •••-0102. Please keep your phone nearby.")
    dropped = notice_text(Notice(A, NoticeKind.DROPPED, Audience.PARTNER_THERAPIST, T))
    assert "Your therapist's connection dropped" in dropped and "call you" in dropped


# -- flapping -------------------------------------------------------------------------------


def test_a_connection_that_keeps_dropping_comes_back_lowered_and_full_video_waits_longer() -> None:
    flow = room()
    # Drops for 3 s every 25 s: each comes back within the flap window of the last.
    seen = run(flow, lambda t: {A: L} if t >= 10 and (t - 10) % 25 < 3 else {}, 0, 200)
    drops = [t for t, a in seen if a == IceRestart(A)]
    assert drops[:2] == [10, 35]
    # Back from the second drop with lowered video, which stays for the drops after it: a
    # picture, softer, while the link holds between drops.
    assert when(seen, LowerVideo(A))[0] == 38
    assert when(seen, AudioOnly(A)) == []  # good between drops: no reason to pause
    # Full video never comes back between drops 25 s apart once the wait has doubled past 22 s.
    assert len(when(seen, RestoreVideo(A))) <= 1
    assert flow.status(A).video == VideoMode.LOWERED


def test_monitor_and_flow_together_do_not_oscillate_on_a_flapping_network() -> None:
    """Loss switches on and off every 5 s for five minutes, end to end from samples."""
    monitor, flow = QualityMonitor(), room()
    seen: list[tuple[float, Action]] = []
    for i in range(600):
        t = i * 0.5
        lossy = t >= 10 and int(t / 5) % 2 == 1
        for reporter, peer in ((T, A), (A, T), (B, A), (A, B), (T, B), (B, T)):
            bad = A in (reporter, peer) and lossy
            monitor.ingest(reporter, peer, LinkSample(
                t=t, rtt_ms=40, jitter_ms=5, loss=0.2 if bad else 0.0, packets_in=i + 1, fps=30,
                out_bitrate=1e6))
        seen.extend((t, a) for a in flow.handle(QualityReport(monitor.evaluate(t)), t))
    kinds = [type(a).__name__ for _, a in seen if not isinstance(a, (Notice, LedgerEntry))]
    assert kinds == ["LowerVideo", "AudioOnly"]
    assert {a.about for _, a in seen if isinstance(a, Notice)} == {A}


# -- hold -----------------------------------------------------------------------------------


def test_hold_waits_for_the_missing_partner_and_ends_when_they_are_back() -> None:
    flow = room()
    with pytest.raises(StateError):
        flow.handle(PutOnHold(), 1)  # nobody is missing
    run(flow, a_is(L, 10, 30), 0, 12)
    held = flow.handle(PutOnHold(), 12)
    assert held == [Hold(B, A), Notice(B, NoticeKind.ON_HOLD, Audience.PARTNER, A)]
    assert flow.handle(PutOnHold(), 13) == []
    assert flow.status(B).held_for == A
    text = notice_text(Notice(B, NoticeKind.ON_HOLD, Audience.PARTNER, A), name="Alex")
    assert text.startswith("Waiting for Alex to reconnect.")
    seen = run(flow, a_is(L, 10, 30), 12, 40)
    assert when(seen, Unhold(B)) == [30]
    assert flow.status(B).held_for is None


def test_the_therapist_can_resume_before_the_partner_is_back() -> None:
    flow = room()
    run(flow, a_is(L, 10), 0, 12)
    flow.handle(PutOnHold(), 12)
    resumed = flow.handle(Resume(), 13)
    assert resumed == [Unhold(B), Notice(B, NoticeKind.RESUMED, Audience.PARTNER, A)]
    assert flow.handle(Resume(), 13.5) == []
    assert [s.step for s in flow.ledger.entries[0].steps if s.step in (Step.HOLD, Step.RESUME)] == [
        Step.HOLD, Step.RESUME]


# -- leaving and ending ---------------------------------------------------------------------


def test_leaving_closes_the_entry_tells_the_others_and_a_later_join_starts_fresh() -> None:
    flow = room()
    run(flow, a_is(L, 10), 0, 20)
    left = flow.handle(Left(A), 20)
    assert [a.record.outcome for a in left if isinstance(a, LedgerEntry)] == [Outcome.LEFT]
    assert {(n.to, n.audience) for n in left if isinstance(n, Notice)} == {
        (T, Audience.THERAPIST), (B, Audience.PARTNER)}
    assert flow.handle(Left(A), 21) == []
    assert run(flow, a_is(L, 10), 21, 80) == []  # a person who left is not chased
    flow.handle(Joined(A, "partner"), 80)
    assert flow.status(A).state == PersonState.CONNECTED


def test_the_session_ending_closes_every_open_entry() -> None:
    flow = room()
    run(flow, lambda t: {A: L, B: P} if t >= 10 else {}, 0, 60)
    ended = flow.handle(SessionEnded(), 60)
    closed = sorted((a.record.person, a.record.outcome)
                    for a in ended if isinstance(a, LedgerEntry))
    assert closed == [(A, Outcome.ENDED_ON_PHONE), (B, Outcome.SESSION_ENDED)]


def test_the_ledger_holds_ids_and_facts_only() -> None:
    flow = room()
    run(flow, a_is(L, 10), 0, 60)
    flow.handle(SessionEnded(), 60)
    rows = flow.ledger.rows()
    assert [r["step"] for r in rows] == [
        "dropped", "ice_restart", "fresh_connection", "page_rejoin", "page_rejoin", "page_rejoin",
        "phone"]
    assert rows[-1]["step_outcome"] == "window"
    assert {r["person"] for r in rows} == {A} and {r["outcome"] for r in rows} == {"ended_on_phone"}
    json.dumps(rows)  # exportable as it is


# -- words and numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(("number", "masked", "href"), [
    # A US number keeps the form its owner knows, with the last four digits.
    ("+12025550102", "(•••) •••-0102", "tel:+12025550102"),
    ("+12015550123;ext=12", "(•••) •••-0123", "tel:+12015550123;ext=12"),
    # Any other keeps its own format: its country code and the last two digits.
    ("+442079460018", "+44 •• •••• ••18", "tel:+442079460018"),
    ("+33142685300", "+33 • •• •• •• 00", "tel:+33142685300"),
    ("+4930123456", "+49 •• ••••56", "tel:+4930123456"),
    # Numbers stored before E.164 still mask and dial.
    ("(202) 555-0102", "(•••) •••-0102", "tel:+12025550102"),
    ("12", "(•••) •••-••12", "tel:12"),
])
def test_mask_phone_keeps_the_numbers_own_format(number: str, masked: str, href: str) -> None:
    assert mask_phone(number) == masked
    assert tel_href(number) == href


def test_call_prompt_is_a_one_click_tel_link() -> None:
    prompt = call_prompt("Alex", "+12025550102")
    assert (prompt.text, prompt.href) == ("Call Alex at +1 202-555-0102", "tel:+12025550102")
    london = call_prompt("Sam", "+442079460018")
    assert (london.text, london.href) == ("Call Sam at +44 20 7946 0018", "tel:+442079460018")


def test_each_participant_gets_its_own_fallback_plan() -> None:
    room_id = RoomId("r1")
    people = (Person(T, room_id, "therapist", 0, "Dr Lee", "+12025550100"),
              Person(A, room_id, "partner", 1, "Alex", "+12025550102"),
              Person(B, room_id, "partner", 2, "Blake", None))
    record = RoomRecord(room_id, 0.0, None, None, None, people)
    therapist = fallback_plan(record, people[0], 45.0)
    assert therapist.rejoin_window_s == 45.0 and therapist.phone_hint is None
    assert therapist.call_list == [{"id": A, "name": "Alex", "phone": "+1 202-555-0102"},
                                   {"id": B, "name": "Blake", "phone": ""}]
    alex = fallback_plan(record, people[1], 45.0)
    assert (alex.phone_hint, alex.call_list) == ("(•••) •••-0102", None)
    assert fallback_plan(record, people[2], 45.0).phone_hint is None


def test_every_notice_the_flow_sends_has_plain_words() -> None:
    flows = [room() for _ in range(4)]
    scenarios: list[list[tuple[float, Action]]] = [
        run(flows[0], lambda t: {T: L} if 10 <= t < 70 else {}, 0, 80),
        run(flows[1], a_is(P, 10, 30), 0, 60),
        run(flows[2], lambda t: {T: P, A: P, B: P} if 10 <= t < 20 else {}, 0, 50,
            cause=Cause.EVERYONE),
        run(flows[3], a_is(L, 10), 0, 60),
    ]
    flows[3].handle(PutOnHold(), 60)
    seen = [a for s in scenarios for _, a in s]
    seen += flows[3].handle(SignalingBack(A), 61) + flows[3].handle(ReturnToVideo(A), 62)
    seen += flows[3].handle(Left(B), 63) + flows[0].handle(ReturnToVideo(T), 81)
    sent = {(a.kind, a.audience) for a in seen if isinstance(a, Notice)}
    assert len(sent) >= 25
    for kind, audience in sent:
        notice = Notice(T, kind, audience, A)
        text = notice_text(notice, name="Alex", phone_hint="(•••) •••-0102")
        assert text and "{" not in text
    assert sent <= set(NOTICE_TEXT)


# -- the contract ---------------------------------------------------------------------------

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "fallback.md"


def test_the_contract_document_states_every_timing_threshold_and_sentence() -> None:
    doc = CONTRACT.read_text(encoding="utf-8")
    for defaults in (FallbackTimings(), ScoringThresholds()):
        for f in dataclasses.fields(defaults):
            value = getattr(defaults, f.name)
            assert re.search(rf"\| `{f.name}` \| {value:g} \|", doc), f"{f.name} = {value:g}"
    for name in ("R_DEFAULT", "DELAY_KNEE_MS", "CODEC_IE", "CODEC_BPL", "JITTER_BUFFER_FACTOR",
                 "PACKET_MS"):
        assert f"| `{name}` | {getattr(scoring, name):g} |" in doc, name
    for kind, audience in NOTICE_TEXT:
        notice = Notice(A, kind, audience, A)
        text = notice_text(notice, name="Alex", phone_hint=mask_phone("+12025550102"))
        assert text in doc, (kind, audience)
    prompt = call_prompt("Alex", "+12025550102")
    assert prompt.text in doc and prompt.href in doc


def test_a_settled_flow_runs_no_timer_and_the_same_report_again_changes_nothing() -> None:
    """The server skips judging a settled room until its quality changes: that is only
    right if nothing would have happened."""
    flow = room()
    assert flow.settled()
    for t in (1.0, 30.0, 600.0):
        assert flow.handle(report(t, {T: G, A: G, B: G}), t) == []
        assert flow.settled()
    flow.handle(report(601.0, {T: G, A: F, B: G}), 601.0)
    assert not flow.settled()  # lowering A's video is timed
    seen = run(flow, lambda t: {A: F} if t < 610 else {}, 601.5, 640.0)
    assert when(seen, LowerVideo(A)) and when(seen, RestoreVideo(A))
    assert flow.settled()


# -- monitor and flow together, with the pages carrying out each step ------------------------


class LinkModel:
    """A's two links as the pages would report them, each step of the flow carried out: audio
    only sends no video, lowered video is capped at 250 kbit/s, and the sender's bandwidth
    estimate ramps up again after each change. ``narrow`` squeezes A's path to 250 kbit/s."""

    def __init__(self, flow: FallbackFlow) -> None:
        self.flow = flow
        self.basis: dict[tuple[PersonId, PersonId], tuple[VideoMode, float]] = {}

    def sample(self, t: float, reporter: PersonId, peer: PersonId, *, narrow: bool,
               cpu: bool = False) -> LinkSample:
        modes = {self.flow.status(x).video for x in (reporter, peer)}
        mode = (VideoMode.AUDIO_ONLY if VideoMode.AUDIO_ONLY in modes
                else VideoMode.LOWERED if VideoMode.LOWERED in modes else VideoMode.FULL)
        on_a = A in (reporter, peer)
        basis = self.basis.get((reporter, peer))
        if basis is None or basis[0] != mode:
            basis = self.basis[(reporter, peer)] = (mode, t)
        video = mode != VideoMode.AUDIO_ONLY
        cap = 250_000.0 if mode == VideoMode.LOWERED else None
        wants = cap or 1_200_000.0
        estimate = min(300_000 + 300_000 * (t - basis[1]), 2_500_000)
        if narrow and on_a:
            estimate = min(estimate, 200_000)
        limit = "cpu" if cpu and reporter == A else "bandwidth" if estimate < wants else "none"
        loss = 0.08 if narrow and on_a and video else 0.0
        return LinkSample(t=t, rtt_ms=150 if narrow and on_a else 30, jitter_ms=4, loss=loss,
                          packets_in=int(50 * t) + 1, fps=20.0, out_bitrate=estimate,
                          send_limit=limit, send_fps=20.0, send_cap=cap, video=video, pc="1")


MESH = ((T, A), (A, T), (T, B), (B, T), (A, B), (B, A))


def simulate(flow: FallbackFlow, end: float, *, narrow=lambda t: False, cpu=lambda t: False,
             every: float = 0.25) -> tuple[list[tuple[float, Action]], list[RoomQuality]]:
    monitor, model = QualityMonitor(), LinkModel(flow)
    seen: list[tuple[float, Action]] = []
    judged: list[RoomQuality] = []
    for i in range(round(end / every)):
        t = round(i * every, 6)
        for reporter, peer in MESH:
            monitor.ingest(reporter, peer, model.sample(t, reporter, peer, narrow=narrow(t), cpu=cpu(t)))
        quality = monitor.evaluate(t)
        judged.append(quality)
        seen.extend((t, a) for a in flow.handle(QualityReport(quality), t))
    return seen, judged


def test_a_narrow_spell_pauses_video_and_a_clean_link_brings_it_back_within_10s_to_stay() -> None:
    flow = room()
    seen, judged = simulate(flow, 150.0, narrow=lambda t: 20 <= t < 70)
    # Named within 5 s, the right person only.
    named = next(q.at for q in judged if q.at >= 20 and q.participants.get(A) in (F, P))
    assert named - 20 <= 5.0
    assert all(q.participants.get(x, G) == G for q in judged for x in (T, B))
    assert all(a.person in (A, None) for q in judged for a in q.attributions)
    # Audio only under the sustained narrow link; clean again, video back (lowered, then
    # full) within 10 s of the last pause, and no pause after that. A probe already running
    # when the link clears is video back at once.
    paused = when(seen, AudioOnly(A))
    assert paused and paused[0] < 70
    back = [t for t in when(seen, LowerVideo(A)) if t > paused[-1]]
    assert back and back[0] - 70 <= 10.0, back
    assert [t for t in paused if t >= back[0]] == []
    full = when(seen, RestoreVideo(A))
    assert full and full[-1] > back[0]
    assert flow.status(A).video == VideoMode.FULL and flow.status(A).state == PersonState.CONNECTED
    # Meanwhile, the narrow link kept video paused but for short probes.
    probes = [t for t in when(seen, LowerVideo(A)) if 20 < t < 70]
    assert len(probes) <= 6, probes


def test_a_narrow_link_that_clears_at_any_moment_of_a_probe_never_pauses_on_the_clean_link() -> None:
    # Seen in CI: a probe begun on the narrow link was poor when the link cleared, and the
    # level, lagging the clean link by the scorer's hold, sent it back to audio only 4 s on.
    # Clear at each quarter second over two probe cycles.
    for k in range(60):
        end = 60 + k * 0.25
        flow = room()
        seen, _ = simulate(flow, end + 30, narrow=lambda t, end=end: 20 <= t < end)
        assert [t for t in when(seen, AudioOnly(A)) if t > end] == [], end
        paused = max(when(seen, AudioOnly(A)))
        back = [t for t in when(seen, LowerVideo(A)) if t > paused]
        assert back and back[0] - max(paused, end) <= 10.0 - 2.0, (end, back)
        assert flow.status(A).video == VideoMode.FULL, end


def test_a_clean_call_start_and_a_capped_step_never_lower_or_pause_video() -> None:
    flow = room()
    seen, judged = simulate(flow, 60.0)
    assert [a for _, a in seen] == []
    assert {q.participants.get(A) for q in judged} <= {None, G}


def test_a_cpu_limited_sender_is_a_busy_device_never_an_escalation() -> None:
    flow = room()
    seen, judged = simulate(flow, 90.0, cpu=lambda t: 10 <= t < 70)
    assert any(q.devices == {A: scoring.Device.BUSY} for q in judged)
    assert all(q.participants.get(A, G) == G for q in judged)
    actions = [a for _, a in seen if not isinstance(a, LedgerEntry)]
    assert actions == []  # no lowering, no pause, no rejoin, no notice
    [entry] = ledger(seen)
    assert entry.record.cause == Cause.DEVICE_BUSY and entry.record.outcome == Outcome.RECOVERED
    assert steps(entry) == [(entry.record.started_at, Step.DEVICE, "busy")]
    # Shown once the signs have held device_hold_s, cleared once gone as long.
    assert 13 <= entry.record.started_at < 15 and 73 <= (entry.record.ended_at or 0) < 76
    assert flow.status(A).state == PersonState.CONNECTED


def test_a_probe_that_fails_goes_back_to_audio_only_and_the_next_waits_longer() -> None:
    flow = room()
    seen = run(flow, lambda t: {A: P} if 10 <= t < 19 or 24 <= t < 40 or t >= 43 else {}, 0, 80)
    assert when(seen, AudioOnly(A)) == [18, 28]  # paused; the probe at 21 was poor from 24
    assert when(seen, LowerVideo(A)) == [14, 19 + TIMINGS.probe_video_after_s]
    # The second probe waits twice as long (4 s of good from 40): the link is poor again at
    # 43, 3 s on, and no probe was made.
    assert flow.status(A).video == VideoMode.AUDIO_ONLY


def test_audio_only_on_a_link_that_is_only_fair_again_still_tries_video_after_the_probe_wait() -> None:
    # After a narrow spell the link often reads fair for a while (the scorer holds its rise
    # to good); waiting for good too kept a clean partner's video paused 12-13 s.
    flow = room()
    seen = run(flow, lambda t: {} if t < 10 else {A: P} if t < 19 else {A: F}, 0, 40)
    assert when(seen, AudioOnly(A)) == [18]
    assert when(seen, LowerVideo(A)) == [14, 19 + TIMINGS.probe_video_after_s]  # the probe, after fair
    # Fair is carried: the probe holds, lowered, and full video waits for good.
    assert flow.status(A).video == VideoMode.LOWERED and when(seen, RestoreVideo(A)) == []


def test_device_verdicts_are_kept_across_a_restart_of_the_flow() -> None:
    flow = room()
    flow.handle(QualityReport(RoomQuality(1.0, {}, {}, {A: G}, (), {A: scoring.Device.ASLEEP})), 1.0)
    again = FallbackFlow.restore(json.loads(json.dumps(flow.snapshot())))
    seen = again.handle(QualityReport(RoomQuality(5.0, {}, {}, {A: G}, ())), 5.0)
    [entry] = ledger([(5.0, a) for a in seen])
    assert entry.record.cause == Cause.DEVICE_ASLEEP and entry.record.ended_at == 5.0
