"""A video jitter buffer that gives up on a packet once nobody will resend it.

aiortc's receiver asks again (NACK) only for packets among the last ``RTP_HISTORY_SIZE`` (128)
it has seen, and its sender keeps only that many to resend; but its video jitter buffer holds
512 and waits at a hole until 512 newer packets have come. After a cut of a few seconds the
packets lost early in it are never resent, and the picture stays frozen for the rest of those
512 packets: 10 s and more for a small, slow stream (seen in tests/test_netfault.py with the
machine busy; aiortc issues 1416-1418 describe the same stall). This buffer drops the hole as
soon as it falls out of what can be resent, and asks for a fresh picture (PLI).
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket
from aiortc.utils import uint16_add

VIDEO_CAPACITY = 512  # aiortc's own, so a large key frame still fits


class ResendAwareJitterBuffer(JitterBuffer):
    def __init__(self) -> None:
        super().__init__(capacity=VIDEO_CAPACITY, is_video=True)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        newest = packet.sequence_number
        while frame is None and (hole := self._lost_for_good(newest)) is not None:
            # Drop through the hole, then the rest of the frame the drop ends in.
            assert self._origin is not None  # a hole was found from it
            self.smart_remove(uint16_add(hole, -self._origin) + 1)
            pli_flag = True
            frame = self._remove_frame(newest)
        return pli_flag, frame

    def _lost_for_good(self, newest: int) -> int | None:
        """The oldest missing packet too far behind ``newest`` to be resent, if any. Only those
        slots are looked at: usually none, as the buffer's start is within reach of a resend."""
        origin = self._origin
        if origin is None:
            return None
        ahead = uint16_add(newest, -origin)
        if ahead >= self.capacity:
            return None  # ``newest`` is behind the start: a late or repeated packet, ignored
        for offset in range(ahead - RTP_HISTORY_SIZE + 1):
            if self._packets[(origin + offset) % self.capacity] is None:
                return uint16_add(origin, offset)
        return None


def install(receiver: RTCRtpReceiver) -> None:
    """Give a video receiver this buffer; call it before any packet arrives (on ``track``)."""
    # aiortc offers no way to choose the buffer: its private attribute is the only one.
    receiver._RTCRtpReceiver__jitter_buffer = ResendAwareJitterBuffer()  # type: ignore[attr-defined]
