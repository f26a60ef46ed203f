"""3-D Wan rotary position embedding of SANA-WM (PyTorch reference).

Frequencies are complex64 ``(N, head_dim // 2)`` for N = T*H*W tokens in (t, h, w) raster order; the head dim is
split into t/h/w parts of ``head_dim - 4*(head_dim//6)``, ``2*(head_dim//6)``, ``2*(head_dim//6)`` channels (112 ->
40/36/36), each a 1-D RoPE with ``theta`` over its own axis. Rotation acts on interleaved channel pairs
``(x[2i], x[2i+1])`` as a complex product.

Temporal positions are absolute latent-frame indices computed on the fly (``angle = pos * inv_freq`` in float32,
then ``polar``), which is bit-identical to diffusers' 1024-row table for positions below 1024 and keeps working past
it (the table would cap a session at 1024 latent frames ~ 8.5 min at 16 fps).
"""

from __future__ import annotations

import torch

__all__ = ["apply_rope", "rope_axis_dims", "rope_frequencies", "slice_rope_for_camera"]


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Complex entries (pairs) for the t, h, w axes: ``(hd//2 - 2*(hd//6), hd//6, hd//6)``."""
    return head_dim // 2 - 2 * (head_dim // 6), head_dim // 6, head_dim // 6


def _axis_angles(num_pairs: int, positions: torch.Tensor, theta: float) -> torch.Tensor:
    dim = 2 * num_pairs
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    return torch.outer(positions.to(torch.float32), inv_freq)


def rope_frequencies(
    head_dim: int,
    frame_index: torch.Tensor,
    height: int,
    width: int,
    *,
    theta: float = 10000.0,
) -> torch.Tensor:
    """Complex RoPE frequencies (T*H*W, head_dim // 2) for absolute latent frames ``frame_index`` (T,) int64 and an
    ``height`` x ``width`` token grid."""
    nt, nh, nw = rope_axis_dims(head_dim)
    device = frame_index.device
    ang_t = _axis_angles(nt, frame_index, theta)
    ang_h = _axis_angles(nh, torch.arange(height, device=device), theta)
    ang_w = _axis_angles(nw, torch.arange(width, device=device), theta)
    T = frame_index.shape[0]
    ang = torch.cat(
        [
            ang_t.view(T, 1, 1, nt).expand(T, height, width, nt),
            ang_h.view(1, height, 1, nh).expand(T, height, width, nh),
            ang_w.view(1, 1, width, nw).expand(T, height, width, nw),
        ],
        dim=-1,
    ).reshape(T * height * width, nt + nh + nw)
    return torch.polar(torch.ones_like(ang), ang)


def slice_rope_for_camera(freqs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """RoPE for the camera branch's second half-head (``head_dim // 2`` channels): the leading entries of the main
    table's t, h and w parts (112 -> 10/9/9 pairs). ``freqs`` (N, head_dim//2) -> (N, head_dim//4)."""
    nt, nh, _ = rope_axis_dims(head_dim)
    ct, ch, cw = rope_axis_dims(head_dim // 2)
    return torch.cat([freqs[:, :ct], freqs[:, nt : nt + ch], freqs[:, nt + nh : nt + nh + cw]], dim=-1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` (..., N, 2P) by ``freqs`` (N, P) complex (conjugate if
    ``inverse``). Computed in float32, returned in ``x.dtype``."""
    xc = torch.view_as_complex(x.to(torch.float32).unflatten(-1, (-1, 2)).contiguous())
    f = freqs.conj() if inverse else freqs
    return torch.view_as_real(xc * f).flatten(-2).to(x.dtype)
