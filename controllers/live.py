"""Live camera control: key-down/key-up events and mouse-look deltas -> per-frame poses for the next chunk."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["LiveController"]


class LiveController:
    """The camera of one live session (state: pose, velocity, held keys, pending events)."""

    def __init__(
        self,
        mapping: str = "sana-wm-v2",
        *,
        translation_speed: float | None = None,
        rotation_speed_deg: float | None = None,
        pitch_limit_deg: float | None = None,
        smooth: bool | None = None,
        mouse_deg_per_px: float = 0.1,
        shift_multiplier: float = 2.0,
        fps: float = 16.0,
    ) -> None:
        raise NotImplementedError

    def key_down(self, key: str, t: float) -> None:
        """Key ``key`` went down at time ``t`` (seconds)."""
        raise NotImplementedError

    def key_up(self, key: str, t: float) -> None:
        """Key ``key`` went up at time ``t`` (seconds)."""
        raise NotImplementedError

    def mouse(self, dx: float, dy: float, t: float) -> None:
        """Mouse moved by (dx, dy) pixels at time ``t``; +dx turns right, +dy looks down."""
        raise NotImplementedError

    def poses_for_next(self, n_frames: int) -> np.ndarray:
        """(n_frames, 4, 4) poses of the next frames from the events received since the last call."""
        raise NotImplementedError

    def poses_for_keys(self, keys_per_frame: Sequence[Iterable[str]]) -> np.ndarray:
        """(N, 4, 4) poses for explicit held-key sets, one set per frame, continuing from the current pose."""
        raise NotImplementedError

    def poses_for_actions(self, actions: str) -> np.ndarray:
        """(N, 4, 4) poses for an action string, continuing from the current pose."""
        raise NotImplementedError

    def reset(self, pose=None) -> None:
        """Forget velocity, keys and events; put the camera at ``pose`` (4,4) (default identity)."""
        raise NotImplementedError

    @property
    def pose(self) -> np.ndarray:
        """(4, 4) current camera-to-world pose."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Plain-Python (JSON-serialisable) snapshot of the whole controller state."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` snapshot."""
        raise NotImplementedError
