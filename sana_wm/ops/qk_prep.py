"""Preparation of the self-attention q / k / v of SANA-WM blocks (PyTorch reference; Triton beside it).

The same steps as ``SanaWMAttention`` in :mod:`sana_wm.transformer`, as functions of the projected tensors:

- :func:`prep_gdn_qk`: main branch of a GDN block: RMSNorm over all C channels, ReLU, key scale
  ``(head_dim * S)^-1/2`` on k, then RoPE on copies (the numerator stream);
- :func:`prep_softmax_qk`: main branch of a softmax block: RMSNorm, RoPE (no ReLU, no key scale);
- :func:`prep_camera`: the UCPE camera branch: RMSNorm (+ ReLU and key scale in GDN blocks) on q and k, the
  per-token 4x4 transforms on the first half of every head and RoPE on the second half for q, k and v, optionally
  the post-UCPE RMS down-scale, and in GDN blocks the beta discount ``beta / max(1, mean_s inflation^2)`` with the
  key-norm inflation ``|k_ucpe| / |k|`` averaged over each frame's tokens.

Inputs are (B, N, C) projections (N = T*S tokens, frame-major); outputs (B, H, N, D) per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rope import apply_rope
from .ucpe import downscale_to_reference_rms, ucpe_transform

__all__ = ["rms_norm", "prep_gdn_qk", "prep_softmax_qk", "prep_camera", "discount_beta", "ucpe_decode"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with statistics in fp32; the normalised value is cast to a half-precision weight's
    dtype before the weight multiplies it (``transformer.RMSNorm``)."""
    var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(var + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(weight.dtype)
    return x * weight


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, H, N, D) view."""
    B, N, C = x.shape
    return x.view(B, N, heads, C // heads).transpose(1, 2)


def prep_gdn_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    rope: torch.Tensor,
    *,
    heads: int,
    key_scale: float,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GDN main branch. q, k (B, N, C) (k after its short conv); weights (C,); rope (N, D/2) complex.

    Returns ``(q, k, q_rot, k_rot)``, each (B, H, N, D): ``q = relu(norm(q))``, ``k = relu(norm(k)) * key_scale``
    and their RoPE-rotated copies."""
    q = _heads(F.relu(rms_norm(q, q_weight, eps)), heads)
    k = _heads(F.relu(rms_norm(k, k_weight, eps)), heads) * key_scale
    return q, k, apply_rope(q, rope), apply_rope(k, rope)


def prep_softmax_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    rope: torch.Tensor,
    *,
    heads: int,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax main branch: ``(RoPE(norm(q)), RoPE(norm(k)))`` (B, H, N, D) from q, k (B, N, C)."""
    q = apply_rope(_heads(rms_norm(q, q_weight, eps), heads), rope)
    k = apply_rope(_heads(rms_norm(k, k_weight, eps), heads), rope)
    return q, k


def discount_beta(beta: torch.Tensor, k: torch.Tensor, k_ucpe: torch.Tensor) -> torch.Tensor:
    """``beta / max(1, mean over each frame's tokens of (|k_ucpe| / |k|)^2)`` (norms clamped at 1e-6).

    beta (B, H, T, S); k, k_ucpe (B, H, T*S, D)."""
    B, H, T, S = beta.shape
    pre = torch.linalg.vector_norm(k.float(), dim=-1).clamp_min(1e-6)
    post = torch.linalg.vector_norm(k_ucpe.float(), dim=-1).clamp_min(1e-6)
    inflation = (post / pre).square().view(B, H, T, S).mean(dim=-1)
    return beta / inflation.clamp_min(1.0).unsqueeze(-1)


def ucpe_decode(x: torch.Tensor, ray_out: torch.Tensor, rope_cam: torch.Tensor) -> torch.Tensor:
    """Decode the camera branch's attention output: per head, the 4x4 ``ray_out`` (P) on each channel group of the
    first half and the conjugate RoPE on the second half. x (B, H, N, D); ray_out (B, N, 4, 4); rope_cam (N, D/4)
    complex -> (B, N, H*D) token-major, in ``x.dtype``."""
    B, H, N, D = x.shape
    return ucpe_transform(x, ray_out, rope_cam, inverse_rope=True).transpose(1, 2).reshape(B, N, H * D)


def prep_camera(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    ray_q: torch.Tensor,
    ray_kv: torch.Tensor,
    rope_cam: torch.Tensor,
    *,
    heads: int,
    key_scale: float | None = None,
    beta: torch.Tensor | None = None,
    rms_downscale: bool = False,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """UCPE camera branch.

    Args:
        q, k, v: (B, N, C) camera projections (k after its short conv in GDN blocks).
        q_weight, k_weight: (C,) RMSNorm weights (``q_norm_cam`` / ``k_norm_cam``).
        ray_q: (B, N, 4, 4) query matrices (P^T); ray_kv: (B, N, 4, 4) key / value matrices (P^-1).
        rope_cam: (N, D/4) complex RoPE of the second half-head.
        key_scale: GDN blocks: ReLU on q and k and this scale on k; None for softmax blocks.
        beta: GDN blocks: (B, H, T, S) gates to discount; None for softmax blocks.
        rms_downscale: scale q/k/v back to their pre-UCPE per-token RMS (bidirectional variant).

    Returns:
        ``(q_u, k_u, v_u, beta_discounted or None)`` with (B, H, N, D) tensors.
    """
    q = _heads(rms_norm(q, q_weight, eps), heads)
    k = _heads(rms_norm(k, k_weight, eps), heads)
    v = _heads(v, heads)
    if key_scale is not None:
        q = F.relu(q)
        k = F.relu(k) * key_scale
    q_u = ucpe_transform(q, ray_q, rope_cam)
    k_u = ucpe_transform(k, ray_kv, rope_cam)
    v_u = ucpe_transform(v, ray_kv, rope_cam)
    if rms_downscale:
        q_u = downscale_to_reference_rms(q, q_u)
        k_u = downscale_to_reference_rms(k, k_u)
        v_u = downscale_to_reference_rms(v, v_u)
    return q_u, k_u, v_u, (None if beta is None else discount_beta(beta, k, k_u))
