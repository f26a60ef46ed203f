"""``Session``: one autoregressive world rollout, chunk by chunk, in constant memory.

Frame numbering: pixel frame 0 is the conditioning image (latent frame 0, pose identity); chunk 0 covers latent
frames 0..3 and emits pixel frames 1..24, chunk ``c >= 1`` covers latent frames ``3c+1 .. 3c+3`` and emits pixel
frames ``24c+1 .. 24c+24``. Every chunk emits exactly ``frames_per_chunk = 24`` frames: the decoded conditioning
frame is not emitted (as NVlabs drops it); ``session.first_frame`` holds the prepared (cropped) image instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Chunk:
    """Frames of one chunk (``Session.step``) or of one latent frame of it (``Session.stream``).

    frames (N,H,W,3) uint8; poses (N,4,4) float64 c2w (OpenCV) relative to frame 0; intrinsics (4,) float64
    ``[fx, fy, cx, cy]`` in pixels of the frame; index: the chunk index; frame_indices (N,) int64 global pixel-frame
    indices; timings: seconds (``denoise``, ``cache_write``, ``decode``, ``total``; a streamed part carries what
    is known when it is yielded); latents: the chunk's clean latents (1,C,F,h,w) on the device (``Session.step``
    only) and latent_start their first latent frame index.
    """

    frames: np.ndarray
    poses: np.ndarray
    intrinsics: np.ndarray
    index: int
    frame_indices: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    latents: torch.Tensor | None = None
    latent_start: int = 0


class Session:
    """One streaming rollout of a ``World`` (made by ``World.start``).

    Camera input per chunk (exactly ``frames_per_chunk`` new frames):
    - an action string (``"w-24"``, ``"jw-12,none-12"``): keys held per frame, replayed through the session's live
      controller so that velocity and pitch carry over between chunks;
    - ``keys=``: one iterable of held key names per frame;
    - ``poses=``: (24,4,4) c2w relative to frame 0 (the controller then continues from the last one).
    """

    frames_per_chunk: int = 24

    def step(self, actions: str | None = None, *, keys: Sequence[Sequence[str]] | None = None,
             poses: np.ndarray | None = None) -> Chunk:
        """Generate the next chunk and return its 24 frames (see module docstring for numbering)."""
        raise NotImplementedError

    def stream(self, actions: str | None = None, *, keys: Sequence[Sequence[str]] | None = None,
               poses: np.ndarray | None = None) -> Iterator[Chunk]:
        """Like ``step`` but yield each latent frame's 8 pixel frames as soon as they are decoded (3 parts)."""
        raise NotImplementedError

    def render_image(self, pose: np.ndarray | None = None) -> np.ndarray:
        """The frame this session would show at ``pose`` (4,4 c2w relative to frame 0; default: the current pose)
        right after its last chunk, as a one-latent-frame rollout. The session does not advance. (H,W,3) uint8."""
        raise NotImplementedError

    def snapshot(self):
        """An exact copy of the state (``engine.Snapshot``); tensors are copied, nothing is recomputed."""
        raise NotImplementedError

    def restore(self, snap) -> None:
        """Return to ``snap`` (taken from this session or a fork of it); the next chunks repeat bitwise."""
        raise NotImplementedError

    def fork(self) -> "Session":
        """A new independent session with a copy of this one's state."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the session's caches; further calls raise."""
        raise NotImplementedError

    on_chunk: Callable[[Chunk], None] | None = None
    """Called with every finished chunk (progress / logging hook)."""
