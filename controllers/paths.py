"""Scripted camera paths (keyframes, presets) and pose files (.npy / .npz / .json)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["PRESETS", "keyframe_path", "load_path", "preset", "load_poses", "save_poses"]

PRESETS: dict = {}


def keyframe_path(spec, fps: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Interpolate keyframes -> ``(c2w (F,4,4), fov_deg (F,) or None)``."""
    raise NotImplementedError


def load_path(file: str | Path) -> np.ndarray:
    """Keyframe JSON file -> (F, 4, 4) camera-to-world poses."""
    raise NotImplementedError


def preset(name: str, n_frames: int, **params) -> np.ndarray:
    """A named path (orbit, dolly, pan, figure-eight, walk-forward) of ``n_frames`` poses, identity first."""
    raise NotImplementedError


def load_poses(file: str | Path, convention: str | None = None, image_size: tuple[int, int] | None = None):
    """Read (F,4,4) c2w from .npy/.npz/.json in ``convention``; returns ``(c2w OpenCV, intrinsics or None)``."""
    raise NotImplementedError


def save_poses(file: str | Path, c2w, intrinsics=None, convention: str = "opencv") -> Path:
    """Write OpenCV c2w (and intrinsics) to .npy/.npz/.json in ``convention``."""
    raise NotImplementedError
