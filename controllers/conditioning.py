"""The two camera tensors SANA-WM reads: the raymap (T, 20) and the chunk Plucker map (48, T, H/32, W/32).

For latent frame i of a trajectory of pixel frames (spec 3.2, diffusers ``prepare_camera``):

- poses are made relative to pixel frame 0: ``c2w_rel = inv(c2w_0) @ c2w`` (frame 0 is exactly the identity);
- intrinsics are rescaled to the latent grid: ``fx, cx *= (W/32)/W`` and ``fy, cy *= (H/32)/H``;
- raymap[i] = ``[flatten(c2w_rel[8i]) (16), fx, fy, cx, cy]`` with the latent-grid intrinsics of frame 8i;
- Plucker[:, i] stacks 8 pixel frames ``[max(0, 8i-7), +8)`` (past the end the last pose repeats); for each one
  ``d = normalize(R @ [(x-cx)/fx, (y-cy)/fy, 1])`` over x = 0..W/32-1, y = 0..H/32-1, ``m = t x d``, channels
  ``[d, m]`` at index ``6j + c`` for frame j of the 8.

Only the poses the requested latent frames need are read: the cost is O(end - start), whatever the length
of the trajectory. Arithmetic is float32, in the same order as diffusers.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .conventions import _image_size, as_intrinsics, check_poses

__all__ = ["TEMPORAL_STRIDE", "SPATIAL_STRIDE", "num_latent_frames", "camera_conditioning", "plucker_rays"]

TEMPORAL_STRIDE = 8
SPATIAL_STRIDE = 32


def num_latent_frames(num_pixel_frames: int) -> int:
    """Latent frames covered by a trajectory of ``num_pixel_frames`` poses: ``(F - 1) // 8 + 1``."""
    return (num_pixel_frames - 1) // TEMPORAL_STRIDE + 1


def plucker_rays(c2w: np.ndarray, intrinsics: np.ndarray, height: int, width: int) -> np.ndarray:
    """Plucker rays ``[d, t x d]`` on an integer pixel grid, float32, channel-major.

    Args:
        c2w: (N, 4, 4) camera-to-world (OpenCV). intrinsics: (N, 4) ``[fx, fy, cx, cy]`` in grid pixels.
    Returns:
        (N, 6, height, width).

    Elementwise numpy (a few dozen passes over N*height*width values, one thread): the torch version of the same
    arithmetic spent milliseconds per chunk in per-op overhead and thread wake-ups on the interactive path.
    """
    c2w = np.asarray(c2w, dtype=np.float32)
    k = np.asarray(intrinsics, dtype=np.float32)[:, :, None, None]
    x = (np.arange(width, dtype=np.float32)[None, None] - k[:, 2]) / k[:, 0]  # (N, 1, W)
    y = (np.arange(height, dtype=np.float32)[None, :, None] - k[:, 3]) / k[:, 1]  # (N, H, 1)
    r = c2w[:, :3, :3, None, None]
    d = [r[:, i, 0] * x + r[:, i, 1] * y + r[:, i, 2] for i in range(3)]  # R @ [x, y, 1]
    norm = np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    d = [di / norm for di in d]
    t = c2w[:, :3, 3, None, None]
    m = [t[:, 1] * d[2] - t[:, 2] * d[1], t[:, 2] * d[0] - t[:, 0] * d[2], t[:, 0] * d[1] - t[:, 1] * d[0]]
    return np.stack(d + m, axis=1)


def _take(array, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` of a numpy array or torch tensor, as a float64 numpy array (only those rows are read)."""
    if isinstance(array, torch.Tensor):
        return array[torch.from_numpy(index)].detach().cpu().double().numpy()
    return np.asarray(array[index], dtype=np.float64)


def camera_conditioning(
    c2w,
    intrinsics,
    image_size: tuple[int, int],
    start: int,
    end: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raymap and Plucker map for latent frames ``[start, end)`` of a trajectory.

    Args:
        c2w: (F, 4, 4) camera-to-world poses (OpenCV), one per pixel frame, frame 0 first (np.ndarray or
            torch.Tensor); made relative to frame 0 here. F must cover the last latent frame:
            ``8 * (end - 1) < F``.
        intrinsics: ``[fx, fy, cx, cy]`` in pixels of ``image_size``: (4,) shared, or (F, 4) per frame
            (a (3,3) / (F,3,3) K is accepted too).
        image_size: (H, W) of the pixel frames, multiples of 32.
        start, end: latent frame range, ``0 <= start < end``.

    Returns:
        ``raymap`` (end-start, 20) and ``plucker`` (48, end-start, H/32, W/32), torch float32 on the CPU.
        Equal to diffusers ``prepare_camera(c2w, ...)`` sliced to ``[start, end)``.
    """
    height, width = _image_size(image_size)
    if height % SPATIAL_STRIDE or width % SPATIAL_STRIDE:
        raise ValueError(f"image_size must be multiples of {SPATIAL_STRIDE}, got {image_size!r}")
    if not isinstance(c2w, (np.ndarray, torch.Tensor)):
        raise TypeError(f"c2w must be a numpy array or torch tensor of shape (F, 4, 4), got {type(c2w).__name__}")
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4) or c2w.shape[0] == 0:
        raise ValueError(f"c2w must have shape (F, 4, 4) with F >= 1, got {tuple(c2w.shape)}")
    n_frames = int(c2w.shape[0])
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r}")
    n_latent = num_latent_frames(n_frames)
    if not 0 <= start < end <= n_latent:
        raise ValueError(
            f"latent range [start, end) = [{start}, {end}) is not inside [0, {n_latent}): a trajectory of "
            f"{n_frames} pixel frames covers {n_latent} latent frames (latent i needs pixel frame 8i)"
        )
    latent_h, latent_w = height // SPATIAL_STRIDE, width // SPATIAL_STRIDE

    latent = np.arange(start, end)
    ray_frames = latent * TEMPORAL_STRIDE
    window = np.maximum(0, ray_frames - (TEMPORAL_STRIDE - 1))[:, None] + np.arange(TEMPORAL_STRIDE)
    window = np.minimum(window, n_frames - 1)  # past the end: repeat the last pose
    needed, inverse = np.unique(np.concatenate([[0], ray_frames, window.ravel()]), return_inverse=True)
    checked = check_poses(_take(c2w, needed), name="c2w", indices=needed)
    if not isinstance(intrinsics, (np.ndarray, torch.Tensor)):
        intrinsics = as_intrinsics(intrinsics)
    if intrinsics.ndim in (2, 3) and tuple(intrinsics.shape) != (3, 3):  # per frame: read only the rows needed
        if intrinsics.shape[0] != n_frames:
            raise ValueError(
                f"per-frame intrinsics have {intrinsics.shape[0]} rows but c2w has {n_frames} frames; "
                "pass one row per pose or a single (4,) vector"
            )
        intrinsics = _take(intrinsics, needed)
    intr = as_intrinsics(intrinsics, n_frames=len(needed))
    poses = checked.astype(np.float32)
    first_inv = np.zeros((4, 4), dtype=np.float32)
    first_inv[:3, :3] = poses[0, :3, :3].T
    first_inv[:3, 3:] = -poses[0, :3, :3].T @ poses[0, :3, 3:]
    first_inv[3, 3] = 1.0
    rel = first_inv @ poses
    rel[needed == 0] = np.eye(4, dtype=np.float32)

    k_latent = (intr if intr.ndim == 2 else np.tile(intr, (len(needed), 1))).astype(np.float32)
    k_latent[:, [0, 2]] *= np.float32(latent_w / float(width))
    k_latent[:, [1, 3]] *= np.float32(latent_h / float(height))

    ray_idx = inverse[1 : 1 + len(latent)]
    win_idx = inverse[1 + len(latent) :]
    raymap = np.concatenate([rel[ray_idx].reshape(len(latent), 16), k_latent[ray_idx]], axis=-1)
    rays = plucker_rays(rel[win_idx], k_latent[win_idx], latent_h, latent_w)  # (T*8, 6, h, w)
    plucker = rays.reshape(len(latent), TEMPORAL_STRIDE * 6, latent_h, latent_w).transpose(1, 0, 2, 3)
    return torch.from_numpy(raymap), torch.from_numpy(np.ascontiguousarray(plucker))
