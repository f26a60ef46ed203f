"""Writing what the world made: H.264 mp4 (PyAV) with a sidecar JSON, PNG stills, raw-frame archives.

The sidecar sits beside the video with the same stem (``out.mp4`` -> ``out.json``) and holds, per frame,
the camera-to-world pose (OpenCV axes, relative to frame 0) and intrinsics, plus seed, model, sampler and
timings, so a clip can be matched to its camera path exactly.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

SIDECAR_FORMAT = "sana-wm-clip"


def _check_frames(frames: np.ndarray, what: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{what}: expected (N,H,W,3) uint8, got {frames.dtype} {frames.shape}")
    return frames


class VideoWriter:
    """Streams uint8 RGB frames into an H.264 mp4 (yuv420p) with PyAV.

    Args:
        path: output file (parent folders are created).
        fps: frame rate (16 for SANA-WM).
        crf: x264 constant rate factor (lower = better; 18 is visually near lossless).
        codec: PyAV encoder name.

    The frame size is taken from the first frame; width and height must be even (yuv420p).
    ``write(frames)`` takes (N,H,W,3) or (H,W,3) uint8; ``close()`` flushes the encoder. Use as a context manager.
    """

    def __init__(self, path: str | Path, fps: float = 16, crf: int = 18, codec: str = "libx264"):
        import av

        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.frame_count = 0
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf)}
        self._size: tuple[int, int] | None = None

    def write(self, frames: np.ndarray) -> None:
        import av

        frames = _check_frames(frames)
        h, w = frames.shape[1:3]
        if self._size is None:
            if h % 2 or w % 2:
                raise ValueError(f"frames: H.264 yuv420p needs an even width and height, got {w}x{h}")
            self._stream.width, self._stream.height = w, h
            self._size = (h, w)
        elif (h, w) != self._size:
            raise ValueError(f"frames: size changed from {self._size[1]}x{self._size[0]} to {w}x{h} mid-video")
        for f in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                self._container.mux(packet)
            self.frame_count += 1

    def close(self) -> None:
        if self._container is None:
            return
        if self._size is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sidecar_path(video_path: str | Path) -> Path:
    """``out.mp4`` -> ``out.json``."""
    return Path(video_path).with_suffix(".json")


def write_sidecar(
    video_path: str | Path,
    *,
    poses: np.ndarray,
    intrinsics: np.ndarray,
    fps: float,
    width: int,
    height: int,
    seed: int,
    model: Any,
    prompt: str | None = None,
    sampler: str | None = None,
    timings: dict[str, Any] | None = None,
    first_index: int = 1,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the clip's sidecar JSON beside ``video_path``; returns its path.

    Args:
        poses: (N,4,4) camera-to-world per frame (OpenCV axes, relative to frame 0).
        intrinsics: (4,) ``[fx, fy, cx, cy]`` for all frames, or (N,4) per frame, in pixels of the frame.
        timings: seconds spent per stage / in total; ``extra``: any other JSON-able facts.
        first_index: the pixel-frame index of ``poses[0]`` (frame 0 is the first image, not in the video);
            each frame's ``index`` and ``time`` (index / fps) count from it.
    """
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"poses: expected (N,4,4), got {poses.shape}")
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape == (4,):
        k = np.broadcast_to(k, (len(poses), 4))
    if k.shape != (len(poses), 4):
        raise ValueError(f"intrinsics: expected (4,) or ({len(poses)},4), got {np.asarray(intrinsics).shape}")
    doc = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "video": Path(video_path).name,
        "frame_count": len(poses),
        "fps": fps,
        "width": int(width),
        "height": int(height),
        "convention": "OpenCV camera-to-world (+X right, +Y down, +Z forward), relative to frame 0",
        "seed": int(seed),
        "model": model,
        "prompt": prompt,
        "sampler": sampler,
        "timings": timings or {},
        "first_index": int(first_index),
        "frames": [
            {
                "index": first_index + i,
                "time": (first_index + i) / fps,
                "c2w": poses[i].tolist(),
                "intrinsics": k[i].tolist(),
            }
            for i in range(len(poses))
        ],
    }
    doc.update(extra or {})
    out = sidecar_path(video_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return out


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Save one (H,W,3) uint8 image as PNG (lossless)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H,W,3) uint8, got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


def save_frames_npz(path: str | Path, frames: np.ndarray, **arrays: np.ndarray) -> Path:
    """Save raw frames (N,H,W,3) uint8 (plus any named arrays, e.g. poses) to an uncompressed .npz, bit-exact."""
    frames = _check_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, frames=frames, **arrays)
    return path
