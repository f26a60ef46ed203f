"""Camera conventions: checking poses, converting between OpenCV, OpenGL and Blender, and intrinsics forms.

Our convention (everything inside sana-wm): OpenCV camera axes (+X right, +Y down, +Z forward), 4x4
camera-to-world, world "down" along +Y (the action keys move on the world XZ plane).

==========  ==================================  ==================
convention  camera axes                         world up
==========  ==================================  ==================
opencv      +X right, +Y down, +Z forward       -Y (Y down)
opengl      +X right, +Y up, -Z forward         +Y
blender     +X right, +Y up, -Z forward         +Z
==========  ==================================  ==================

Converting flips the camera axes and rotates the world so that "up" stays up:
``c2w_opencv = W @ c2w_src @ diag(1, -1, -1, 1)`` (W = identity / diag(1,-1,-1) / Blender
x->x, y->z, z->-y). The model reads poses relative to frame 0, so only the camera-axis flip changes what it
sees; the world rotation keeps previews and action keys upright. All the matrices are signed permutations,
so round trips are exact.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["CONVENTIONS", "convert_poses", "check_poses", "as_intrinsics", "fov_to_intrinsics"]

CONVENTIONS = ("opencv", "opengl", "blender")

_CAMERA_FLIP = {
    "opencv": np.eye(4),
    "opengl": np.diag([1.0, -1.0, -1.0, 1.0]),
    "blender": np.diag([1.0, -1.0, -1.0, 1.0]),
}
# World rotation taking each convention's world axes to ours (gravity along +Y).
_WORLD_TO_OPENCV = {
    "opencv": np.eye(4),
    "opengl": np.diag([1.0, -1.0, -1.0, 1.0]),
    "blender": np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),
}

ROTATION_TOLERANCE = 1e-4


def _convention(name: str, what: str) -> str:
    if not isinstance(name, str) or name.lower() not in CONVENTIONS:
        raise ValueError(f"unknown {what} camera convention {name!r}; expected one of {list(CONVENTIONS)}")
    return name.lower()


def _float64(value, name: str, expected: str) -> np.ndarray:
    """``value`` (array-like or torch tensor) as a float64 numpy array; a TypeError naming ``name`` and what was
    ``expected`` if it is not numeric."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be {expected}, got {value!r}") from exc


def check_poses(c2w, name: str = "c2w", indices: Sequence[int] | None = None) -> np.ndarray:
    """Check camera-to-world poses and return them as float64 (F, 4, 4).

    Raises ValueError naming ``name`` and the first bad frame for: a shape other than (F,4,4) with F >= 1,
    non-finite values, a last row other than [0,0,0,1], or a 3x3 block that is not a rotation
    (|R^T R - I| > 1e-4 or det < 0). ``indices`` gives the frame number of each row for messages.
    """
    poses = _float64(c2w, name, "an array of shape (F, 4, 4)")
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or poses.shape[0] == 0:
        raise ValueError(f"{name} must have shape (F, 4, 4) with F >= 1, got {poses.shape}")
    frame = np.arange(len(poses)) if indices is None else np.asarray(indices)
    finite = np.isfinite(poses).all(axis=(1, 2))
    if not finite.all():
        raise ValueError(f"{name}[{frame[np.argmin(finite)]}] holds NaN or infinite values")
    bottom = np.abs(poses[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1) > 1e-6
    if bottom.any():
        i = int(np.argmax(bottom))
        raise ValueError(f"{name}[{frame[i]}] last row is {poses[i, 3].tolist()}, expected [0, 0, 0, 1]")
    rot = poses[:, :3, :3]
    ortho = np.abs(rot.transpose(0, 2, 1) @ rot - np.eye(3)).max(axis=(1, 2))
    bad = (ortho > ROTATION_TOLERANCE) | (np.linalg.det(rot) < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name}[{frame[i]}] 3x3 block is not a rotation (max |R^T R - I| = {ortho[i]:.2e}, "
            f"det = {np.linalg.det(rot[i]):.4f}); expected an orthonormal matrix with det +1 (no scale or mirror)"
        )
    return poses


def convert_poses(c2w, src: str, dst: str) -> np.ndarray:
    """Convert (F,4,4) (or (4,4)) camera-to-world poses from convention ``src`` to ``dst``.

    Conventions: ``"opencv"``, ``"opengl"``, ``"blender"`` (see the module docstring). Returns float64.
    """
    src, dst = _convention(src, "source"), _convention(dst, "target")
    single = np.ndim(c2w) == 2
    poses = check_poses(np.asarray(c2w)[None] if single else c2w)
    to_cv = _WORLD_TO_OPENCV[src]
    world = _WORLD_TO_OPENCV[dst].T @ to_cv
    camera = _CAMERA_FLIP[src] @ _CAMERA_FLIP[dst]
    out = world @ poses @ camera
    return out[0] if single else out


def as_intrinsics(intrinsics, n_frames: int | None = None, name: str = "intrinsics") -> np.ndarray:
    """Normalise intrinsics to ``[fx, fy, cx, cy]``: (4,) stays (4,), (F,4) stays (F,4), a (3,3) K becomes (4,),
    (F,3,3) becomes (F,4). With ``n_frames`` a per-frame form must have exactly that many rows.
    Raises ValueError for other shapes, non-finite values or non-positive focal lengths. Returns float64."""
    k = _float64(intrinsics, name, "numeric [fx, fy, cx, cy] or a 3x3 K")
    if k.shape[-2:] == (3, 3) and k.ndim in (2, 3):
        k = np.stack([k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]], axis=-1)
    elif k.ndim not in (1, 2) or k.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (4,), (F, 4), (3, 3) or (F, 3, 3), got {np.shape(intrinsics)}")
    if k.ndim == 2 and (k.shape[0] == 0 or (n_frames is not None and k.shape[0] != n_frames)):
        want = "F >= 1" if n_frames is None else f"{n_frames}"
        raise ValueError(f"{name} has {k.shape[0]} per-frame rows, expected {want} (or one shared (4,) vector)")
    if not np.isfinite(k).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if (k[..., :2] <= 0).any():
        raise ValueError(f"{name} focal lengths fx, fy must be > 0, got {k[..., :2].tolist()}")
    return k


def fov_to_intrinsics(fov_deg, image_size: Sequence[int]) -> np.ndarray:
    """Pinhole intrinsics from a horizontal field of view: ``fx = fy = (W/2) / tan(fov/2)``, ``cx = W/2``,
    ``cy = H/2`` in pixels of ``image_size = (H, W)``. A scalar fov gives (4,), an (F,) array gives (F,4)."""
    height, width = _image_size(image_size)
    fov = np.asarray(fov_deg, dtype=np.float64)
    if fov.ndim > 1 or not np.isfinite(fov).all() or ((fov <= 0) | (fov >= 180)).any():
        raise ValueError(f"fov_deg must be a number or (F,) array in (0, 180) degrees, got {fov_deg!r}")
    focal = (width / 2.0) / np.tan(np.radians(fov) / 2.0)
    out = np.stack(np.broadcast_arrays(focal, focal, width / 2.0, height / 2.0), axis=-1)
    return out


def _image_size(image_size) -> tuple[int, int]:
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(f"image_size must be (H, W) positive integers, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])
