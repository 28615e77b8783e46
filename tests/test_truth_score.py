"""bench/truth_score.py: recorded seconds of a call, scored against the truth, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from bench.truth_score import (
    Phase,
    banner_claims,
    score,
    table,
    timeline,
    verdicts,
)

NAMES = {"therapist": "Dr T", "a": "Sam", "b": "Alex"}
ROLES = {v: k for k, v in NAMES.items()}


def tile(name: str, *, t: int, level: str = "good", frames: int | None = None, lost: int = 0,
         packets: int | None = None, pc: int = 0, device: str | None = None, rtt: int = 5,
         limitation: str = "none", kbps: int = 800, status: str | None = None,
         encoded: int | None = None) -> dict[str, Any]:
    """A tile as tests/probe.js reads it, ``t`` seconds into a steady call."""
    got = packets if packets is not None else 100 * t
    return {"peer": f"id-{name}", "name": name, "level": level, "device": device, "status": status,
            "frames": 20 * t if frames is None else frames, "width": 640,
            "truth": {"pc": pc, "state": "connected", "packetsIn": got, "packetsLost": lost,
                      "bytesIn": kbps * 125 * t, "bytesOut": kbps * 125 * t, "framesDecoded": 20 * t,
                      "framesEncoded": 20 * t if encoded is None else encoded, "fpsIn": 20, "fpsOut": 20, "rttMs": rtt,
                      "limitation": limitation, "videoOut": True, "videoIn": True}}


def page(t: int, *tiles: dict[str, Any], banners: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"t": 1000 * t, "visible": True, "tiles": list(tiles),
            "banners": [{"region": "banners", "key": "quality", "text": b} for b in banners]}


def clean_pages(t: int, **shown: Any) -> dict[str, Any]:
    """Every page at second ``t`` of a clean call; ``shown``: per "viewer_peer", tile options."""
    pages = {}
    for viewer in ("therapist", "a", "b"):
        tiles = [tile(NAMES[p], t=t, **shown.get(f"{viewer}_{p}", {})) for p in ("therapist", "a", "b") if p != viewer]
        pages[viewer] = page(t, *tiles, banners=shown.get(f"{viewer}_banners", ()))
    return pages


def record(t: int, phase: str, pages: dict[str, Any], network: list[Any] | None = None,
           device: list[str] | None = None, network_at: float | None = None) -> dict[str, Any]:
    return {"t": float(t), "phase": phase, "network": network, "network_at": network_at, "device": device,
            "pages": pages}


def test_counters_become_rates_and_a_fault_free_link_is_clean() -> None:
    seconds = timeline([record(1, "clean", clean_pages(1)), record(2, "clean", clean_pages(2))], NAMES)
    link = seconds[1].link("therapist", "b")
    assert link is not None
    assert link.truth == "clean" and link.loss == 0.0 and link.fps_in == 20.0 and link.kbps_in == 800.0
    assert link.advancing
    # The first second has nothing to compare with: no rates, so no verdict on the truth.
    assert seconds[0].link("therapist", "b").truth == "unknown"  # type: ignore[union-attr]


def test_loss_nobody_applied_is_impaired_not_clean() -> None:
    lossy = clean_pages(2, therapist_a={"lost": 10})
    seconds = timeline([record(1, "clean", clean_pages(1)), record(2, "clean", lossy)], NAMES)
    assert seconds[1].link("therapist", "a").truth == "impaired"  # type: ignore[union-attr]
    # Both directions of the link carry the verdict.
    assert seconds[1].link("a", "therapist").truth == "impaired"  # type: ignore[union-attr]
    assert seconds[1].link("therapist", "b").truth == "clean"  # type: ignore[union-attr]


def test_an_applied_fault_makes_the_namespace_partners_links_faulty_only() -> None:
    seconds = timeline([record(1, "loss5", clean_pages(1), ["loss", 5]),
                        record(2, "loss5", clean_pages(2), ["loss", 5])], NAMES)
    truth = {(x.viewer, x.peer): x.truth for x in seconds[1].links}
    assert truth[("therapist", "b")] == truth[("b", "a")] == "faulty"
    assert truth[("therapist", "a")] == truth[("a", "therapist")] == "clean"


CLEAN = Phase("clean", "clean", 3)


def scored(*records: dict[str, Any], phases: tuple[Phase, ...] = (CLEAN,)) -> dict[str, Any]:
    rows = score(timeline(records, NAMES), phases, NAMES)
    return {r.phase: r for r in rows}


def test_a_weak_tile_on_a_clean_call_is_a_false_alarm_and_a_good_one_is_not() -> None:
    rows = scored(record(1, "clean", clean_pages(1)),
                  record(2, "clean", clean_pages(2, therapist_b={"level": "poor"})),
                  record(3, "clean", clean_pages(3)))
    assert rows["clean"].clean_seconds == 2 and rows["clean"].false_alarm_seconds == 1
    assert "therapist: tile poor" in rows["clean"].examples[0]


def test_a_weak_banner_is_a_false_alarm_but_device_words_are_not() -> None:
    rows = scored(record(1, "clean", clean_pages(1)),
                  record(2, "clean", clean_pages(2, a_banners=("Your connection is weak, so video may freeze.",))),
                  record(3, "clean", clean_pages(3, a_banners=("Alex's computer is busy, so their video may be slow.",))),
                  record(4, "clean", clean_pages(4, a_banners=(
                      "Alex's phone or computer may have locked its screen or paused this page.",))))
    assert rows["clean"].false_alarm_seconds == 1


def test_alarms_before_the_first_remote_frame_are_not_counted() -> None:
    rows = scored(record(1, "clean", clean_pages(1, therapist_b={"frames": 0}, therapist_a={"frames": 0})),
                  record(2, "clean", clean_pages(2, therapist_b={"frames": 0, "level": "poor"},
                                                 therapist_a={"frames": 0})))
    assert rows["clean"].false_alarm_seconds == 0


@pytest.mark.parametrize(("text", "target"), [
    ("Your connection is weak, so video may freeze.", {"a"}),
    ("Alex's connection is weak. Their video may freeze.", {"b"}),
    ("The connection to Alex is weak. Their video may freeze.", {"a", "b"}),
    ("Dr T: Sam and Alex cannot see each other well.", {"a", "b"}),
    ("Your therapist's connection is weak, so their video is paused.", {"therapist"}),
    ("The connection is weak right now, so video is paused to keep the sound clear.", set()),
])
def test_banner_words_name_a_person_or_a_link(text: str, target: set[str]) -> None:
    viewer = "therapist" if "each other" in text else "a"
    (claim,) = banner_claims(viewer, text, NAMES)
    assert claim.target == frozenset(target)


def test_blaming_the_clean_partner_while_the_other_is_faulty_is_wrong_person() -> None:
    loss = Phase("loss5", "fault", 3, subject="b", network=("loss", 5))
    records = [
        record(1, "loss5", clean_pages(1), ["loss", 5]),
        record(2, "loss5", clean_pages(2, therapist_b={"level": "fair"}), ["loss", 5]),
        # Sam's tile on the therapist's page, Sam's own network named: both wrong.
        record(3, "loss5", clean_pages(3, therapist_a={"level": "poor"}, therapist_b={"level": "poor"},
                                       b_banners=("Sam's connection is weak.",)), ["loss", 5]),
        # Alex named on Sam's page: right.
        record(4, "loss5", clean_pages(4, a_banners=("Alex's connection is weak.",)), ["loss", 5]),
    ]
    rows = scored(*records, phases=(loss,))
    assert rows["loss5"].wrong_person_seconds == 1
    assert rows["loss5"].warn_s == {"therapist": 1.0, "a": 3.0}


def test_a_cut_is_warned_only_once_shown_lost() -> None:
    cut = Phase("cut", "fault", 3, subject="b", network=("cut", None))
    rows = scored(record(1, "cut", clean_pages(1), ["cut", None]),
                  record(2, "cut", clean_pages(2, therapist_b={"level": "poor"}, a_b={"level": "lost"}), ["cut", None]),
                  record(3, "cut", clean_pages(3, therapist_b={"level": "lost"}), ["cut", None]),
                  phases=(cut,))
    assert rows["cut"].warn_s == {"therapist": 2.0, "a": 1.0}


def test_timings_run_from_the_fault_asked_for_to_the_instant_a_page_was_read() -> None:
    # The phase's first tick comes before its fault is in force (the record still carries the
    # last change's time); the cut is asked for at 1.5 s; pages are read on the second.
    clean = Phase("clean", "clean", 1)
    cut = Phase("cut", "fault", 3, subject="b", network=("cut", None))
    rows = scored(record(0, "clean", clean_pages(0)),
                  record(1, "cut", clean_pages(1), None, network_at=None),
                  record(2, "cut", clean_pages(2, a_b={"level": "lost"}), ["cut", None], network_at=1500),
                  record(3, "cut", clean_pages(3, therapist_b={"level": "lost"}), ["cut", None], network_at=1500),
                  phases=(clean, cut))
    assert rows["cut"].warn_s == {"therapist": 1.5, "a": 0.5}
    # The restore is asked for at 10.4 s; the picture advances from the reading at 13 s.
    back = Phase("after", "recover", 6, subject="b")
    frames = {10: 0, 11: 0, 12: 0, 13: 40, 14: 60, 15: 80}
    records = [record(t, "after", clean_pages(t, therapist_b={"frames": f}), network_at=1500 if t < 12 else 10400)
               for t, f in frames.items()]
    rows = scored(*records, phases=(cut, back))
    assert rows["after"].video_back_s == {"therapist": 2.6, "a": 0.6}


def test_video_back_and_stopping_again_after_a_restore() -> None:
    back = Phase("after", "recover", 10, subject="b")
    # Paused; one second of queued frames flushed at 3 s, still again at 4 s; moving for good
    # from 5 s, but for one more stop at 8 s.
    frames = [0, 0, 0, 40, 40, 60, 80, 100, 100, 120]
    records = [record(t, "after", clean_pages(t, therapist_b={"frames": f}, a_b={"frames": 20 * t}))
               for t, f in enumerate(frames)]
    rows = scored(*records, phases=(back,))
    assert rows["after"].video_back_s == {"therapist": 5.0, "a": 1.0}
    assert rows["after"].video_stopped_again_s == {"therapist": 1, "a": 0}
    # Within the grace after a restore, verdicts are not counted as false alarms.
    assert rows["after"].clean_seconds == 0


def test_frames_behind_the_flows_words_are_not_video_back() -> None:
    # Seen with a Firefox partner: after 250 kbit/s cleared, Partner A's page decoded 3 s of
    # queued frames behind the "audio only" placeholder; the picture came with the probe.
    back = Phase("after", "recover", 8, subject="b")
    covered = {0: "audio_only", 1: "audio_only", 2: "audio_only", 3: "audio_only", 4: "audio_only"}
    records = [record(t, "after", clean_pages(t, a_b={"status": covered.get(t)})) for t in range(8)]
    rows = scored(*records, phases=(back,))
    assert rows["after"].video_back_s == {"therapist": 1.0, "a": 5.0}
    assert rows["after"].video_stopped_again_s == {"therapist": 0, "a": 0}


def test_a_second_a_page_was_not_read_is_not_video_standing_still() -> None:
    back = Phase("after", "recover", 6, subject="b")
    records = [record(t, "after", clean_pages(t)) for t in range(6)]
    del records[3]["pages"]["therapist"]  # the busy machine missed one reading of that page
    rows = scored(*records, phases=(back,))
    assert rows["after"].video_back_s == {"therapist": 1.0, "a": 1.0}
    assert rows["after"].video_stopped_again_s == {"therapist": 0, "a": 0}


def test_a_cpu_bound_partner_worded_as_their_device_meets_the_target() -> None:
    cpu = Phase("cpu", "device", 2, subject="a", device="cpu")
    busy = {"device": "busy", "level": "good"}
    records = [record(1, "cpu", clean_pages(1, therapist_a=busy, b_a=busy), device=["a", "cpu"]),
               record(2, "cpu", clean_pages(2, therapist_a=busy, b_a=busy, a_therapist={"limitation": "cpu"},
                                            a_b={"limitation": "cpu"}), device=["a", "cpu"])]
    rows = scored(*records, phases=(cpu,))
    row = rows["cpu"]
    assert (row.device_worded_seconds, row.network_blamed_seconds, row.cpu_limited_seconds) == (2, 0, 1)
    assert row.false_alarm_seconds == 0
    assert verdicts(list(rows.values()), [cpu])["cpu_worded_as_device"]["met"]


SLOW_PARTNER = (Phase("clean", "clean", 3), Phase("cpu", "device", 3, subject="a", device="cpu"))


def slow_partner_call(fps: int, **shown: Any) -> tuple[int | None, int | None, dict[str, Any]]:
    """Partner A sends 20 fps in the clean phase (seconds 1-3), then ``fps`` in the cpu phase:
    the cpu phase's strained and worded seconds, and the run's verdict on it."""
    records = [record(t, "clean", clean_pages(t)) for t in (1, 2, 3)]
    for t in (4, 5, 6):
        sent = {"encoded": 60 + fps * (t - 3)}
        records.append(record(t, "cpu", clean_pages(t, a_therapist=sent, a_b=sent, **shown), device=["a", "cpu"]))
    rows = scored(*records, phases=SLOW_PARTNER)
    verdict = verdicts(list(rows.values()), SLOW_PARTNER)["cpu_worded_as_device"]
    return rows["cpu"].strained_seconds, rows["cpu"].device_worded_seconds, verdict


def test_a_slow_computer_is_judged_only_while_its_own_stats_show_it_strained() -> None:
    busy = {"device": "busy", "level": "good"}
    # Sending 5 fps of its usual 20: strained, and worded as its device.
    assert slow_partner_call(5, therapist_a=busy, b_a=busy) == (
        3, 3, {"met": True, "strained_seconds": 3, "worded_seconds": 3})
    # Strained and not worded: a miss.
    assert slow_partner_call(5) == (3, 0, {"met": False, "strained_seconds": 3, "worded_seconds": 0})
    # A limit its browser shrugged off (still 18 fps): no slow computer. The run shows that
    # (0 strained seconds) rather than passing on silence.
    assert slow_partner_call(18) == (0, 0, {"met": False, "strained_seconds": 0, "worded_seconds": 0})


def test_the_cpu_bound_partner_shown_weak_is_blamed_on_the_network() -> None:
    cpu = Phase("cpu", "device", 2, subject="a", device="cpu")
    # The bars are the network's: weak bars beside "Computer busy" still blame the network.
    shown = {"level": "poor", "device": "busy"}
    records = [record(t, "cpu", clean_pages(t, therapist_a=shown), device=["a", "cpu"]) for t in (1, 2)]
    rows = scored(*records, phases=(cpu,))
    assert rows["cpu"].network_blamed_seconds == 2 and rows["cpu"].false_alarm_seconds == 1
    assert rows["cpu"].device_worded_seconds == 2
    assert not verdicts(list(rows.values()), [cpu])["cpu_worded_as_device"]["met"]


def test_verdicts_and_table_over_a_whole_run() -> None:
    phases = [CLEAN, Phase("loss5", "fault", 2, subject="b", network=("loss", 5))]
    records = [record(t, "clean", clean_pages(t)) for t in (1, 2, 3)]
    records += [record(t, "loss5", clean_pages(t, therapist_b={"level": "fair"}, a_b={"level": "fair"}), ["loss", 5])
                for t in (4, 5)]
    rows = score(timeline(records, NAMES), phases, NAMES)
    v = verdicts(rows, phases)
    assert v["false_alarms"] == {"seconds": 0, "of_clean_seconds": 2, "share": 0.0, "met": True}
    assert v["alarms_without_any_fault"] == {"seconds": 0, "of_seconds": 3, "share": 0.0}
    assert v["wrong_person"]["met"] and v["warned_s"] == {"worst_per_phase": {"loss5": 0.0}, "met": True}
    text = table(rows)
    assert text.splitlines()[0].startswith("phase") and "loss5" in text
