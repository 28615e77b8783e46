"""The video jitter buffer of our aiortc peers, against aiortc's own, packet by packet."""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from media.jitter import ResendAwareJitterBuffer

PACKETS_PER_FRAME = 2


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(sequence_number=seq % 65536, timestamp=(seq // PACKETS_PER_FRAME) * 3000)
    p._data = seq.to_bytes(4, "big")  # type: ignore[attr-defined]
    return p


def feed(buffer: JitterBuffer, seqs: range | list[int]) -> tuple[list[int], bool]:
    """The first sequence number of each frame that came out, and whether a PLI was asked for."""
    frames, pli = [], False
    for seq in seqs:
        flag, frame = buffer.add(packet(seq))
        pli = pli or flag
        if frame is not None:
            frames.append(int.from_bytes(frame.data[:4], "big"))
    return frames, pli


def test_a_hole_nobody_will_resend_is_skipped_and_a_fresh_picture_asked_for() -> None:
    # 200 packets lost in a cut: more than the 128 a sender keeps to resend.
    for buffer, frozen in ((JitterBuffer(capacity=512, is_video=True), True), (ResendAwareJitterBuffer(), False)):
        before, _ = feed(buffer, range(10))
        assert before == [0, 2, 4, 6]
        after, pli = feed(buffer, range(210, 240))
        if frozen:
            assert after == [], "aiortc's buffer waits for 512 packets, so this test would prove nothing"
        else:
            assert after[:3] == [210, 212, 214] and pli


def test_a_hole_that_can_still_be_resent_is_waited_for() -> None:
    buffer = ResendAwareJitterBuffer()
    feed(buffer, range(10))
    waiting, pli = feed(buffer, range(60, 80))
    assert waiting == [] and not pli
    resent, _ = feed(buffer, range(8, 60))
    # aiortc gives out one frame per packet that arrives, so the backlog drains frame by frame.
    assert resent == list(range(8, 60, 2))[:len(resent)] and len(resent) >= 20


def test_sequence_numbers_that_wrap_do_not_look_like_a_hole() -> None:
    frames, pli = feed(ResendAwareJitterBuffer(), range(65500, 65700))
    assert len(frames) == 99 and not pli


def test_a_key_frame_longer_than_what_can_be_resent_is_kept_whole() -> None:
    buffer = ResendAwareJitterBuffer()
    frames = []
    for seq in range(301):  # 300 packets of one picture, then the next picture starts
        p = RtpPacket(sequence_number=seq, timestamp=0 if seq < 300 else 3000)
        p._data = b"x"  # type: ignore[attr-defined]
        flag, frame = buffer.add(p)
        assert not flag
        if frame is not None:
            frames.append(frame)
    assert [len(f.data) for f in frames] == [300]


def test_a_late_packet_from_before_the_start_drops_nothing() -> None:
    buffer = ResendAwareJitterBuffer()
    feed(buffer, range(10))
    feed(buffer, range(11, 30))  # packet 10 missing: waited for
    late, pli = feed(buffer, [3])  # a repeat of one already given out
    assert late == [] and not pli
    resent, _ = feed(buffer, [10])
    assert resent == [8]
