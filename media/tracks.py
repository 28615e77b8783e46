"""Generated media for synthetic participants: a moving test picture and a tone.

Frames are built with av directly (no numpy) and precomputed, so a synthetic participant
costs little more than encoding.
"""

from __future__ import annotations

import fractions
import math

import av
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms


class TestPatternTrack(VideoStreamTrack):
    """A grey picture with a bright bar that moves, so frames differ and the encoder works."""

    def __init__(self, width: int = 320, height: int = 240, frames: int = 30) -> None:
        super().__init__()
        self._frames = [self._pattern(width, height, i, frames) for i in range(frames)]
        self._index = 0

    @staticmethod
    def _pattern(width: int, height: int, step: int, steps: int) -> av.VideoFrame:
        frame = av.VideoFrame(width, height, "yuv420p")
        bar = (width * step) // steps
        y_plane, u_plane, v_plane = frame.planes
        row = bytearray(b"\x50" * y_plane.line_size)
        row[bar : bar + width // 10] = b"\xeb" * len(row[bar : bar + width // 10])
        y_plane.update(bytes(row) * height)
        u_plane.update(b"\x80" * (u_plane.line_size * (height // 2)))
        v_plane.update(b"\x80" * (v_plane.line_size * (height // 2)))
        return frame

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = self._frames[self._index % len(self._frames)]
        self._index += 1
        out = frame.reformat()  # a fresh frame object: the encoder may keep a reference
        out.pts, out.time_base = pts, time_base
        return out


class ToneTrack(AudioStreamTrack):
    """A quiet 440 Hz tone, paced in real time by aiortc's base class."""

    def __init__(self, freq: float = 440.0) -> None:
        super().__init__()
        period = int(AUDIO_RATE / math.gcd(int(freq), AUDIO_RATE))
        samples = bytearray()
        for i in range(max(period, AUDIO_SAMPLES)):
            value = int(3000 * math.sin(2 * math.pi * freq * i / AUDIO_RATE))
            samples += value.to_bytes(2, "little", signed=True)
        self._pcm = bytes(samples)
        self._offset = 0
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        # Let the base class pace us (it sleeps until this frame is due).
        await super().recv()
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        need = AUDIO_SAMPLES * 2
        chunk = self._pcm[self._offset : self._offset + need]
        if len(chunk) < need:
            chunk += self._pcm[: need - len(chunk)]
        self._offset = (self._offset + need) % len(self._pcm)
        frame.planes[0].update(chunk)
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._pts += AUDIO_SAMPLES
        return frame
