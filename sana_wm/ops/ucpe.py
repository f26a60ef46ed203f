"""UCPE camera encoding of SANA-WM's camera branch (PyTorch reference).

Per token (latent pixel) a world->ray SE(3) matrix ``P`` is built from the frame's camera-to-world pose and
intrinsics. Per head, the first half of the channels is split into groups of 4 and multiplied by a 4x4 matrix, the
second half is rotated by a sliced RoPE. Queries use ``P^T``, keys and values ``P^-1``, the attention output is decoded
with ``P`` and the conjugate RoPE (GTA-style relative transform ``q_i^T P_i P_j^-1 k_j``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rope import apply_rope

__all__ = ["RAYMAP_CHANNELS", "downscale_to_reference_rms", "invert_se3", "ray_matrices", "ucpe_transform"]

RAYMAP_CHANNELS = 20  # flattened 4x4 c2w + fx, fy, cx, cy (latent-grid pixels)


def ray_matrices(raymap: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """World->ray matrices (B, T*H*W, 4, 4) float32 from a raymap (B, T, 20).

    Pixel (u, v) on the ``height`` x ``width`` latent grid (u = 0..W-1, v = 0..H-1, no half-pixel offset) has the
    pinhole ray ``d = normalize((u-cx)/fx, (v-cy)/fy, 1)``; in world space ``z = normalize(R d)``,
    ``x = normalize(R[:, 1] x z)``, ``y = normalize(z x x)``; ``P = [[R_w2l, -R_w2l t], [0, 0, 0, 1]]`` with rows
    ``x, y, z`` of ``R_w2l``.
    """
    if raymap.ndim != 3 or raymap.shape[-1] != RAYMAP_CHANNELS:
        raise ValueError(f"raymap must have shape (B, T, {RAYMAP_CHANNELS}), got {tuple(raymap.shape)}.")
    raymap = raymap.to(torch.float32)
    B, T, _ = raymap.shape
    c2w = raymap[..., :16].reshape(B, T, 4, 4)
    fx, fy, cx, cy = (raymap[..., 16 + i].view(B, T, 1, 1) for i in range(4))
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=raymap.device),
        torch.arange(width, dtype=torch.float32, device=raymap.device),
        indexing="ij",
    )
    x = (xs - cx) / fx
    y = (ys - cy) / fy
    inv_norm = torch.rsqrt(1.0 + x * x + y * y)
    d_cam = torch.stack([x * inv_norm, y * inv_norm, inv_norm.expand_as(x)], dim=-1)  # (B, T, H, W, 3)
    rot = c2w[..., :3, :3]
    d_world = torch.einsum("btij,bthwj->bthwi", rot, d_cam)
    cam_down = rot[..., :, 1][:, :, None, None, :].expand_as(d_world)
    z_ray = F.normalize(d_world, dim=-1, eps=1e-6)
    x_ray = F.normalize(torch.cross(cam_down, z_ray, dim=-1), dim=-1, eps=1e-6)
    y_ray = F.normalize(torch.cross(z_ray, x_ray, dim=-1), dim=-1, eps=1e-6)
    r_w2l = torch.stack([x_ray, y_ray, z_ray], dim=-2)  # rows
    t_w2l = -torch.einsum("bthwij,btj->bthwi", r_w2l, c2w[..., :3, 3])
    mats = torch.zeros(B, T, height, width, 4, 4, dtype=torch.float32, device=raymap.device)
    mats[..., :3, :3] = r_w2l
    mats[..., :3, 3] = t_w2l
    mats[..., 3, 3] = 1.0
    return mats.reshape(B, T * height * width, 4, 4)


def invert_se3(mats: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of rigid 4x4 transforms (..., 4, 4)."""
    r_inv = mats[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(mats)
    out[..., :3, :3] = r_inv
    out[..., :3, 3] = -(r_inv @ mats[..., :3, 3:4]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


def ucpe_transform(
    x: torch.Tensor, matrix: torch.Tensor, freqs: torch.Tensor, *, inverse_rope: bool = False
) -> torch.Tensor:
    """UCPE-encode per-token features.

    Args:
        x: (B, H, N, D) features (D divisible by 8).
        matrix: (B, N, 4, 4) per-token matrix applied to each 4-channel group of the first D/2 channels
            (``x_g <- matrix @ x_g``).
        freqs: (N, D/4) complex RoPE for the last D/2 channels (conjugated if ``inverse_rope``).

    Returns:
        (B, H, N, D) in ``x.dtype`` (computed in float32).
    """
    half = x.shape[-1] // 2
    groups = x[..., :half].to(torch.float32).unflatten(-1, (-1, 4))  # (B, H, N, G, 4): rows are the groups
    projected = (groups @ matrix.to(torch.float32).transpose(-1, -2).unsqueeze(1)).flatten(-2)
    rotated = apply_rope(x[..., half:].to(torch.float32), freqs, inverse=inverse_rope)
    return torch.cat([projected, rotated], dim=-1).to(x.dtype)


def downscale_to_reference_rms(reference: torch.Tensor, transformed: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each token of ``transformed`` (..., D) down to the channel RMS of ``reference`` where it is larger
    (scale <= 1; diffusers' post-UCPE stabiliser)."""
    ref_rms = reference.square().mean(dim=-1, keepdim=True).add(eps).sqrt()
    new_rms = transformed.square().mean(dim=-1, keepdim=True).add(eps).sqrt()
    return transformed * (ref_rms / new_rms.clamp_min(eps)).clamp(max=1.0)
