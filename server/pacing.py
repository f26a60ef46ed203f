"""Frame pacing for live viewing: a small jitter buffer shown at a fixed rate, and a just-in-time request policy.

Frames come from the world in bursts (1 or 8 pixel frames per latent frame, 24 per chunk). ``FramePacer``
shows them evenly at the model's frame rate. ``FramePacer.should_request`` asks for the next chunk only
when the buffered frames would run out before a new chunk could arrive (estimated from recent chunk
times), and never with a chunk already in flight, so the source never runs ahead of playback by more than
about one chunk: a key pressed now shows up after at most (buffer + one chunk time).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class PacedFrame:
    """One frame in the buffer: pixels (H,W,3) uint8 and what came with it (chunk index, input time, ...)."""

    pixels: np.ndarray
    meta: dict[str, Any]


class FramePacer:
    """Jitter buffer with a fixed-rate presentation clock.

    Args:
        fps: presentation rate (the model's 16 fps).
        prebuffer: frames to hold before (re)starting playback after an underrun; absorbs a burst gap.
        margin_s: extra time kept in the buffer beyond the estimated chunk time when deciding to request.

    ``push`` adds frames as they arrive; ``tick(now)`` returns the frame due at ``now`` (or None: keep showing
    the last one). Playback never catches up by showing frames faster than ``fps``: after a stall the clock
    is re-anchored to ``now``. After an underrun it waits for ``prebuffer`` frames, or for the end of the chunk
    being generated (``chunk_done``), whichever comes first.
    """

    def __init__(self, fps: float = 16.0, prebuffer: int = 4, margin_s: float = 0.25):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if prebuffer < 1:
            raise ValueError(f"prebuffer must be >= 1 frame, got {prebuffer}")
        self.fps = float(fps)
        self.period = 1.0 / self.fps
        self.prebuffer = int(prebuffer)
        self.margin_s = float(margin_s)
        self._buf: deque[PacedFrame] = deque()
        self._next_due: float | None = None  # None: not playing (start-up or underrun)
        self._source_idle = True  # no chunk is being produced right now
        self._chunk_time_s: float | None = None
        self.paused = False
        self.shown = 0
        self.underruns = 0
        self._shown_times: deque[float] = deque(maxlen=33)

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def buffered_s(self) -> float:
        """Seconds of video waiting in the buffer."""
        return len(self._buf) * self.period

    def push(self, frames: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        """Add frames (N,H,W,3) uint8 (or one frame (H,W,3)); ``meta`` is attached to the first frame only."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames: expected (N,H,W,3) uint8, got {frames.dtype} {frames.shape}")
        for i, f in enumerate(frames):
            self._buf.append(PacedFrame(f, dict(meta or {}) if i == 0 else {}))

    def chunk_started(self) -> None:
        """The source began producing a chunk."""
        self._source_idle = False

    def chunk_done(self, seconds: float) -> None:
        """The source finished a chunk that took ``seconds``; updates the chunk-time estimate."""
        self._source_idle = True
        s = float(seconds)
        self._chunk_time_s = s if self._chunk_time_s is None else 0.7 * self._chunk_time_s + 0.3 * s

    def clear(self) -> None:
        """Drop buffered frames (after a restore or reset) and wait for new ones."""
        self._buf.clear()
        self._next_due = None

    def should_request(self, in_flight: bool) -> bool:
        """Whether to ask for the next chunk now: none in flight, not paused, and the buffer runs out before
        a chunk could arrive (buffered seconds <= estimated chunk time + margin)."""
        if in_flight or self.paused:
            return False
        if self._chunk_time_s is None:
            return True
        return self.buffered_s <= self._chunk_time_s + self.margin_s

    def tick(self, now: float) -> PacedFrame | None:
        """The frame to show at time ``now`` (seconds, monotonic), or None if the shown frame stays."""
        if self.paused or not self._buf:
            if not self._buf and self._next_due is not None and now >= self._next_due:
                self._next_due = None  # ran dry when a frame was due
                self.underruns += not self._source_idle  # an underrun if the source was still at work
            return None
        if self._next_due is None:
            if len(self._buf) < self.prebuffer and not self._source_idle:
                return None
            self._next_due = now
        if now < self._next_due:
            return None
        frame = self._buf.popleft()
        self._next_due += self.period
        if now - self._next_due > self.period:  # fell behind (window stalled): re-anchor, do not burst
            self._next_due = now + self.period
        self.shown += 1
        self._shown_times.append(now)
        return frame

    def set_paused(self, paused: bool) -> None:
        self.paused = bool(paused)
        self._next_due = None

    def displayed_fps(self, now: float) -> float:
        """Frames shown per second over the last ~2 s (0 when nothing was shown recently)."""
        times = [t for t in self._shown_times if now - t <= 2.0]
        if len(times) < 2 or now - times[-1] > 3 * self.period:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def next_wait(self, now: float) -> float:
        """Seconds until the next frame is due (capped at one period): how long the loop may sleep."""
        if self._next_due is None:
            return self.period / 4
        return min(max(self._next_due - now, 0.0), self.period)
