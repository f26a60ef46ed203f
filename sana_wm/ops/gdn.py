"""Frame-wise Gated DeltaNet of SANA-WM (PyTorch reference; Triton kernels with the same signatures go beside it).

Layout: per-token tensors are (B, H, T, S, D) (T frames of S tokens), ``beta`` (B, H, T, S), ``g`` (B, H, T) in
(0, 1). States are float32 ``M`` (B, H, D, D) indexed [key, value] and ``z`` (B, H, D).

Per frame t (all S tokens update the state at once from ``M_{t-1}``), with ``P_t = K_t^T diag(beta_t) K_t``:

    M_t = g_t (I - P_t) M_{t-1} + K_t^T diag(beta_t) V_t        (rotated keys K_hat in the main numerator stream)
    z_t = g_t (I - P^z_t) z_{t-1} + K_t^T beta_t                (unrotated keys; "delta rule towards 1")

The reverse direction is exclusive: ``R_t`` accumulates frames t+1 .. end of t's segment with the same rule
(``R`` = 0 at the segment's last frame). Segments are given by ``chunk_starts``: ``None`` = one segment over all T
frames (bidirectional, or one streaming chunk), ``[0, 4, 7, ...]`` = chunk-causal (reverse reset per chunk). The
forward direction runs over all T frames, seeded with ``state_kv`` / ``state_z`` (zeros if ``None``), and its final
state is returned (the streaming cache write).

Main output:   ``(Q_hat (M_t + R_t)) / (Q (z_t + r_t) + eps)``.   Camera output: ``Q (M_t + R_t)`` (no normaliser).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

__all__ = ["chunk_segments", "gdn_cam", "gdn_gates", "gdn_main"]


def chunk_segments(num_frames: int, chunk_starts: Sequence[int] | None) -> list[tuple[int, int]]:
    if chunk_starts is None:
        return [(0, num_frames)]
    starts = [int(s) for s in chunk_starts]
    if not starts or starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts)) or starts[-1] >= num_frames:
        raise ValueError(
            f"chunk_starts must be strictly increasing, start at 0 and lie below T={num_frames}, got {starts}."
        )
    return list(zip(starts, [*starts[1:], num_frames]))


def gdn_gates(
    beta_logits: torch.Tensor, gate_logits: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The GDN gates of a block from its per-token projections (``beta_proj`` / ``gate_proj`` outputs, bias included).

    ``beta = sigmoid(beta_logits)`` per token; the per-frame decay ``g = exp(-exp(A_log) softplus(mean_S(gate) +
    dt_bias))``: the gate projection of the frame's mean token, taken as the mean of the per-token projections (the
    projection is affine, so the two are equal; the mean is in float32).

    Args:
        beta_logits, gate_logits: (B, N, H), any strides (e.g. column slices of a merged projection).
        A_log, dt_bias: (H,). frames: T, with N = T * S.

    Returns:
        beta (B, H, T, S) in the logits' dtype (a permuted view of a contiguous (B, N, H)), g (B, H, T) float32.
    """
    B, N, H = beta_logits.shape
    if tuple(gate_logits.shape) != (B, N, H) or N % frames:
        raise ValueError(
            f"beta_logits and gate_logits must both be (B, N, H) with N divisible by frames={frames}, got "
            f"{tuple(beta_logits.shape)} and {tuple(gate_logits.shape)}."
        )
    S = N // frames
    beta = torch.sigmoid(beta_logits).view(B, frames, S, H).permute(0, 3, 1, 2)
    gate = gate_logits.to(torch.float32).view(B, frames, S, H).mean(dim=2)
    g = torch.exp(-A_log.float().exp() * torch.nn.functional.softplus(gate + dt_bias.float()))
    return beta, g.transpose(1, 2)


def _frame_terms(keys: torch.Tensor, values: torch.Tensor | None, beta: torch.Tensor):
    """``P_t`` (B, H, T, D, D) and ``K_t^T diag(beta) V_t`` (B, H, T, D, Dv) (V = ones -> ``K_t^T beta``)."""
    kb = keys * beta.unsqueeze(-1)
    p = kb.transpose(-1, -2) @ keys
    a = kb.sum(dim=-2).unsqueeze(-1) if values is None else kb.transpose(-1, -2) @ values
    return p, a


def _scan(
    p: torch.Tensor,
    a: torch.Tensor,
    g: torch.Tensor,
    init: torch.Tensor,
    segments: list[tuple[int, int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward inclusive states + reverse exclusive (per segment) states, summed: (B, H, T, D, Dv); and the final
    forward state."""
    num_frames = p.shape[2]
    gate = g.unsqueeze(-1).unsqueeze(-1)
    state = init
    fwd = []
    for t in range(num_frames):
        state = gate[:, :, t] * (state - p[:, :, t] @ state) + a[:, :, t]
        fwd.append(state)
    rev: list[torch.Tensor] = [None] * num_frames  # type: ignore[list-item]
    zero = torch.zeros_like(init)
    for start, end in segments:
        r = zero
        rev[end - 1] = zero
        for t in range(end - 2, start - 1, -1):
            r = gate[:, :, t + 1] * (r - p[:, :, t + 1] @ r) + a[:, :, t + 1]
            rev[t] = r
    total = torch.stack(fwd, dim=2) + torch.stack(rev, dim=2)
    return total, state


def _check(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}.")


def gdn_main(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rot: torch.Tensor,
    k_rot: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    *,
    chunk_starts: Sequence[int] | None = None,
    state_kv: torch.Tensor | None = None,
    state_z: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Main-branch GDN with the z normaliser.

    Args:
        q, k: (B, H, T, S, D) unrotated (ReLU'd, key-scaled) queries / keys (normaliser stream).
        q_rot, k_rot: (B, H, T, S, D) the same after RoPE (numerator stream).
        v: (B, H, T, S, D) values. beta: (B, H, T, S). g: (B, H, T).
        chunk_starts: reverse-scan segment starts (see module docstring).
        state_kv: (B, H, D, D) / state_z: (B, H, D) forward seeds (float32), zeros if None.

    Returns:
        ``(out (B, H, T, S, D) in v.dtype, state_kv, state_z)`` with the forward states after the last frame.
    """
    B, H, T, S, D = v.shape
    for name, x in (("q", q), ("k", k), ("q_rot", q_rot), ("k_rot", k_rot)):
        _check(name, x, (B, H, T, S, D))
    _check("beta", beta, (B, H, T, S))
    _check("g", g, (B, H, T))
    segments = chunk_segments(T, chunk_starts)
    f32 = torch.float32
    q, k, q_rot, k_rot, vf, beta, g = (x.to(f32) for x in (q, k, q_rot, k_rot, v, beta, g))
    if state_kv is None:
        state_kv = torch.zeros(B, H, D, D, dtype=f32, device=v.device)
    if state_z is None:
        state_z = torch.zeros(B, H, D, dtype=f32, device=v.device)
    _check("state_kv", state_kv, (B, H, D, D))
    _check("state_z", state_z, (B, H, D))

    p_kv, a_kv = _frame_terms(k_rot, vf, beta)
    p_z, a_z = _frame_terms(k, None, beta)
    m, state_kv = _scan(p_kv, a_kv, g, state_kv.to(f32), segments)
    z, state_z = _scan(p_z, a_z, g, state_z.to(f32).unsqueeze(-1), segments)
    num = q_rot @ m
    den = q @ z
    return (num / (den + eps)).to(v.dtype), state_kv, state_z.squeeze(-1)


def gdn_cam(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    *,
    chunk_starts: Sequence[int] | None = None,
    state_kv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-branch (numerator-only) GDN on UCPE-encoded q, k, v (B, H, T, S, D); beta (B, H, T, S) (already
    discounted), g (B, H, T). Returns ``(out (B, H, T, S, D) in v.dtype, final forward state_kv (B, H, D, D))``."""
    B, H, T, S, D = v.shape
    _check("q", q, (B, H, T, S, D))
    _check("k", k, (B, H, T, S, D))
    _check("beta", beta, (B, H, T, S))
    _check("g", g, (B, H, T))
    segments = chunk_segments(T, chunk_starts)
    f32 = torch.float32
    q, k, vf, beta, g = (x.to(f32) for x in (q, k, v, beta, g))
    if state_kv is None:
        state_kv = torch.zeros(B, H, D, D, dtype=f32, device=v.device)
    _check("state_kv", state_kv, (B, H, D, D))
    p_kv, a_kv = _frame_terms(k, vf, beta)
    m, state_kv = _scan(p_kv, a_kv, g, state_kv.to(f32), segments)
    return (q @ m).to(v.dtype), state_kv
