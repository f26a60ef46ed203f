"""A camera path seen from above, drawn with numpy and written as a PNG (zlib, no imaging library)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .conventions import check_poses

__all__ = ["preview_png", "write_png"]

_BACKGROUND = (248, 248, 245)
_GRID = (222, 222, 218)
_PATH = (40, 90, 200)
_HEADING = (235, 140, 30)
_START = (30, 160, 60)
_END = (210, 40, 40)


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 image as an 8-bit RGB PNG."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    raw = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    out = Path(path)
    out.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )
    return out


def _disk(image: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float, color) -> None:
    """Stamp filled disks of ``radius`` px centred at float pixel coords (x, y)."""
    r = int(np.ceil(radius))
    offsets = [(dx, dy) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dx * dx + dy * dy <= radius**2]
    h, w = image.shape[:2]
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    for dx, dy in offsets:
        px, py = cx + dx, cy + dy
        keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        image[py[keep], px[keep]] = color


def _line(image: np.ndarray, p0: np.ndarray, p1: np.ndarray, width: float, color) -> None:
    """Polyline segments p0[i] -> p1[i] ((N, 2) pixel coords), ``width`` px thick."""
    length = np.linalg.norm(p1 - p0, axis=1)
    steps = np.maximum(1, np.ceil(length * 2).astype(int))
    u = np.concatenate([np.linspace(0.0, 1.0, s + 1) for s in steps])
    seg = np.repeat(np.arange(len(p0)), steps + 1)
    pts = p0[seg] + u[:, None] * (p1[seg] - p0[seg])
    _disk(image, pts[:, 0], pts[:, 1], width / 2, color)


def preview_png(c2w, path: str | Path, size: int = 512) -> np.ndarray:
    """Draw a camera path seen from above and write it as a PNG.

    The view looks down the world +Y (down) axis of the OpenCV world: +X to the right, +Z (the start camera's
    forward) up the image. Blue: the path; orange ticks: where the camera faces (every ~1/16 of the path);
    green: the first frame; red: the last; light grid lines every "round" world unit (0.1, 0.2, 0.5, 1, 2...).

    Args:
        c2w: (F, 4, 4) camera-to-world poses (OpenCV). path: output ``.png`` file. size: image side in pixels.
    Returns:
        The (size, size, 3) uint8 image that was written.
    """
    poses = check_poses(c2w)
    if isinstance(size, bool) or not isinstance(size, int) or size < 64:
        raise ValueError(f"size must be an int >= 64 pixels, got {size!r}")
    xz = poses[:, [0, 2], 3]
    forward = poses[:, [0, 2], 2]
    lo, hi = xz.min(axis=0), xz.max(axis=0)
    extent = max(float((hi - lo).max()), 1e-3)
    arrow = 0.08 * extent if extent > 1e-3 else 0.1
    lo, hi = lo - arrow - 0.05 * extent, hi + arrow + 0.05 * extent
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    margin = 16
    scale = (size - 2 * margin) / (2 * half)

    def to_px(p: np.ndarray) -> np.ndarray:
        return np.stack([size / 2 + (p[:, 0] - centre[0]) * scale, size / 2 - (p[:, 1] - centre[1]) * scale], axis=1)

    image = np.empty((size, size, 3), np.uint8)
    image[:] = _BACKGROUND
    step = 10.0 ** np.floor(np.log10(2 * half / 4))
    step *= 5 if 2 * half / step > 20 else 2 if 2 * half / step > 10 else 1
    for axis in (0, 1):
        for v in np.arange(np.ceil((centre[axis] - half) / step), np.floor((centre[axis] + half) / step) + 1) * step:
            pix = to_px(np.array([[v, v]]))[0]
            if axis == 0:
                image[:, int(np.clip(round(pix[0]), 0, size - 1))] = _GRID
            else:
                image[int(np.clip(round(pix[1]), 0, size - 1)), :] = _GRID

    pts = to_px(xz)
    if len(pts) > 1:
        _line(image, pts[:-1], pts[1:], 2.5, _PATH)
    ticks = np.unique(np.linspace(0, len(poses) - 1, min(len(poses), 17)).round().astype(int))
    norm = np.linalg.norm(forward[ticks], axis=1, keepdims=True)
    flat = norm[:, 0] > 1e-6  # a camera looking straight down or up has no heading to draw
    tips = xz[ticks[flat]] + arrow * forward[ticks[flat]] / norm[flat]
    if flat.any():
        _line(image, pts[ticks[flat]], to_px(tips), 2.0, _HEADING)
    _disk(image, pts[:1, 0], pts[:1, 1], 5, _START)
    _disk(image, pts[-1:, 0], pts[-1:, 1], 4, _END)
    write_png(image, path)
    return image
