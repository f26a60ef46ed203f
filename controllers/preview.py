"""A camera path seen from above, drawn with numpy and written as a PNG (zlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["preview_png"]


def preview_png(c2w, path: str | Path, size: int = 512) -> np.ndarray:
    """Draw the XZ-plane (top-down) view of (F,4,4) poses into ``path``; returns the (size,size,3) uint8 image."""
    raise NotImplementedError
