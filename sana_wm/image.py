"""First-frame image preparation: decode, resize + centre-crop to the model's frame size, adjust intrinsics.

SANA-WM conditions on one image resized (aspect-preserving, Lanczos) and centre-cropped to exactly the frame
size (704x1280 for the released models), mapped to [-1, 1]; the camera intrinsics ``[fx, fy, cx, cy]`` follow
the same resize and crop (diffusers ``pipelines/sana_wm/cam_utils.py``: ``resize_and_center_crop`` and
``transform_intrinsics_for_crop``).

Default intrinsics (none given): the pinhole camera SGLang's SANA-WM server assumes, focal length
``0.8 * max(width, height)`` of the *source* image with the principal point at its centre, i.e. about 64 degrees
across the source's longer side (``DEFAULT_FOV_DEG``). ``fov_deg`` instead sets the horizontal field of view of
the source image (square pixels).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = ["DEFAULT_FOV_DEG", "default_intrinsics", "load_image", "prepare_image", "resize_and_center_crop"]

DEFAULT_FOCAL_FRACTION = 0.8
DEFAULT_FOV_DEG = math.degrees(2 * math.atan(0.5 / DEFAULT_FOCAL_FRACTION))  # ~64.01 deg over the longer side


def load_image(image: PIL.Image.Image | np.ndarray | bytes | bytearray | memoryview | str | Path) -> PIL.Image.Image:
    """An RGB PIL image from a PIL image, an (H,W,3) uint8 array, encoded bytes (PNG, JPEG, ...) or a file path.

    EXIF orientation is applied (as diffusers' ``load_image`` does) and other modes are converted to RGB (an
    alpha channel is dropped). Raises FileNotFoundError for a missing path and ValueError / TypeError naming the
    input when it is empty, not an image, or of the wrong shape or dtype."""
    if isinstance(image, PIL.Image.Image):
        return PIL.ImageOps.exif_transpose(image).convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise ValueError(
                f"image array must be (H,W,3) uint8 with H, W > 0, got shape {image.shape} dtype {image.dtype}"
            )
        return PIL.Image.fromarray(np.ascontiguousarray(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ValueError("image bytes are empty (expected an encoded image such as PNG or JPEG)")
        return _decode(io.BytesIO(data), f"image bytes ({len(data)} bytes)")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            folder = " (it is a folder)" if path.is_dir() else ""
            raise FileNotFoundError(f"image file {path} does not exist{folder}")
        if path.stat().st_size == 0:
            raise ValueError(f"image file {path} is empty")
        with path.open("rb") as f:
            return _decode(io.BytesIO(f.read()), f"image file {path}")
    raise TypeError(
        f"image must be a PIL image, an (H,W,3) uint8 array, encoded bytes or a path, got {type(image).__name__}"
    )


def _decode(stream: io.BytesIO, what: str) -> PIL.Image.Image:
    try:
        with PIL.Image.open(stream) as img:
            img.load()
            return PIL.ImageOps.exif_transpose(img).convert("RGB")
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} is not a readable image (PNG, JPEG, WebP, ... expected): {e}") from e


def resize_and_center_crop(
    image: PIL.Image.Image, size: tuple[int, int]
) -> tuple[PIL.Image.Image, tuple[float, float], tuple[int, int]]:
    """Aspect-preserving Lanczos resize so the image covers ``size`` = (H, W), then a centre crop to it.

    Returns (cropped image, (sx, sy) scale factors, (left, top) crop offset in resized pixels)."""
    th, tw = size
    w, h = image.size
    scale = max(th / h, tw / w)
    rw, rh = max(tw, round(w * scale)), max(th, round(h * scale))
    resized = image.resize((rw, rh), PIL.Image.LANCZOS) if (rw, rh) != (w, h) else image
    left, top = (rw - tw) // 2, (rh - th) // 2
    return resized.crop((left, top, left + tw, top + th)), (rw / w, rh / h), (left, top)


def default_intrinsics(width: int, height: int, fov_deg: float | None = None) -> np.ndarray:
    """``[fx, fy, cx, cy]`` of a ``width`` x ``height`` image: focal ``0.8 * max(width, height)`` (about 64 deg
    over the longer side) or, with ``fov_deg``, the focal giving that horizontal field of view; centred."""
    if fov_deg is None:
        focal = DEFAULT_FOCAL_FRACTION * max(width, height)
    else:
        if not 0 < fov_deg < 180:
            raise ValueError(f"fov_deg must be in (0, 180) degrees, got {fov_deg}")
        focal = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    return np.array([focal, focal, width / 2, height / 2], dtype=np.float64)


def _as_vec4(intrinsics) -> np.ndarray:
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape == (3, 3):
        k = np.array([k[0, 0], k[1, 1], k[0, 2], k[1, 2]])
    if k.shape != (4,) or not np.all(np.isfinite(k)) or k[0] <= 0 or k[1] <= 0:
        raise ValueError(
            f"intrinsics must be [fx, fy, cx, cy] (or a 3x3 K) with finite values and fx, fy > 0, got {intrinsics!r}"
        )
    return k


def prepare_image(
    image: PIL.Image.Image | np.ndarray | bytes | str | Path,
    size: tuple[int, int] = (704, 1280),
    intrinsics=None,
    fov_deg: float | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Prepare a first frame for SANA-WM.

    image: PIL image, (H,W,3) uint8 array, encoded bytes (PNG/JPEG/...) or a file path.
    size: target (H, W); the result has exactly this size (resize to cover, Lanczos, then centre crop).
    intrinsics: ``[fx, fy, cx, cy]`` or a 3x3 K in *source* image pixels; default :func:`default_intrinsics`
        of the source (optionally with horizontal field of view ``fov_deg``; give one of the two at most).
    Returns (pixels (3,H,W) float32 in [-1, 1], intrinsics (4,) float64 in pixels of the output frame).
    """
    if (
        not isinstance(size, (tuple, list)) or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size)
    ):
        raise ValueError(f"size must be (H, W) positive ints, got {size!r}")
    if intrinsics is not None and fov_deg is not None:
        raise ValueError("pass either intrinsics or fov_deg, not both")
    img = load_image(image)
    k = default_intrinsics(*img.size, fov_deg) if intrinsics is None else _as_vec4(intrinsics)
    cropped, (sx, sy), (left, top) = resize_and_center_crop(img, (int(size[0]), int(size[1])))
    k = np.array([k[0] * sx, k[1] * sy, k[2] * sx - left, k[3] * sy - top])
    pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels * 2 - 1).contiguous(), k
