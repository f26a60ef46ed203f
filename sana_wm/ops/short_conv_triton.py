"""Triton GDN K short conv for one segment (a streamed chunk, or a bidirectional clip): same contract as
:func:`sana_wm.ops.temporal_conv.short_conv_k` with ``chunk_starts`` None or ``[0]``.

One program per (batch, BLOCK_S tokens, BLOCK_C channels) tile walks the frames: output frame t sums the centre tap
and, for every offset d < K, ``w[K-1-d] * (x[t-d] + x[t+d])`` with ``x[t-d]`` taken from the history tail before the
first frame (zeros without one) and ``x[t+d]`` zero past the last frame. The frame count T is a compile-time constant:
the walk is unrolled and keeps a window of the 2K - 1 frames that output t reads in registers (fp32), loading every
input frame once and ahead of its first use, so a program waits on memory about once rather than once per frame and
tap. The accumulation is fp32 with one rounding on store; x may be a strided view (e.g. the K slice of the fused qkv
projection), the output is contiguous. The torch version is one product plus up to 3 (K - 1) in-place ``addcmul_``
over shifted views (8 kernels per call with history for K = 4, T = 3).
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, last_dim_contiguous, tl, triton

__all__ = ["short_conv_k_triton"]

if HAS_TRITON:

    @triton.jit
    def _frame(
        x_base,
        x_st,
        h_base,
        hist_st,
        mask,
        f: tl.constexpr,
        T: tl.constexpr,
        K: tl.constexpr,
        HAS_HIST: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """Input frame f (-(K-1) <= f < T + K - 1) of the tile in fp32: x, history frame K - 1 + f before the first
        (rounded to x's dtype like the reference), zeros past the last or without history."""
        if f >= T:
            return tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
        if f >= 0:
            return tl.load(x_base + f * x_st, mask=mask, other=0.0).to(tl.float32)
        if HAS_HIST:
            past = tl.load(h_base + (K - 1 + f) * hist_st, mask=mask, other=0.0)
            return past.to(x_base.dtype.element_ty).to(tl.float32)
        return tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)

    @triton.jit
    def _short_conv_kernel(
        x_ptr,
        x_sb,
        x_st,
        x_ss,
        hist_ptr,
        hist_sb,
        hist_st,
        hist_ss,
        w_ptr,
        w_sc,
        w_sk,
        out_ptr,
        S,
        C,
        T: tl.constexpr,
        HAS_HIST: tl.constexpr,
        K: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        b = tl.program_id(0)
        rs = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
        rc = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        mc = rc < C
        mask = (rs < S)[:, None] & mc[None, :]
        x_base = x_ptr + b * x_sb + rs[:, None] * x_ss + rc[None, :]
        h_base = hist_ptr + b * hist_sb + rs[:, None] * hist_ss + rc[None, :]
        o_base = out_ptr + b * T * S * C + rs[:, None] * C + rc[None, :]
        xdt = x_ptr.dtype.element_ty
        taps = ()  # taps[j] multiplies frames t - (K - 1 - j) and t + (K - 1 - j); taps[K - 1] the centre
        for j in tl.static_range(K):
            taps = taps + (tl.load(w_ptr + rc * w_sc + j * w_sk, mask=mc, other=0.0).to(xdt).to(tl.float32),)
        window = ()  # frames t - (K - 1) .. t + K - 1 for t = 0
        for f in tl.static_range(-(K - 1), K):
            window = window + (_frame(x_base, x_st, h_base, hist_st, mask, f, T, K, HAS_HIST, BLOCK_S, BLOCK_C),)
        for t in tl.static_range(T):
            acc = taps[K - 1][None, :] * window[K - 1]
            for d in tl.static_range(1, K):
                acc += taps[K - 1 - d][None, :] * (window[K - 1 - d] + window[K - 1 + d])
            tl.store(o_base + t * S * C, acc.to(out_ptr.dtype.element_ty), mask=mask)
            shifted = ()
            for j in tl.static_range(1, 2 * K - 1):
                shifted = shifted + (window[j],)
            window = shifted + (_frame(x_base, x_st, h_base, hist_st, mask, t + K, T, K, HAS_HIST, BLOCK_S, BLOCK_C),)


def short_conv_k_triton(x: torch.Tensor, weight: torch.Tensor, *, history: torch.Tensor | None = None) -> torch.Tensor:
    """One-segment :func:`sana_wm.ops.temporal_conv.short_conv_k`.

    x (B, T, S, C) raw keys (last dim contiguous, other strides free); weight (C, 1, K); history (B, K-1, S, C) or
    None (zeros) -> (B, T, S, C) contiguous in ``x.dtype``."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, T, S, C), got shape {tuple(x.shape)}.")
    B, T, S, C = x.shape
    if weight.dim() != 3 or weight.shape[0] != C or weight.shape[1] != 1:
        raise ValueError(f"weight must be ({C}, 1, K), got shape {tuple(weight.shape)}.")
    K = weight.shape[-1]
    if history is not None and tuple(history.shape) != (B, K - 1, S, C):
        raise ValueError(f"history must have shape {(B, K - 1, S, C)}, got {tuple(history.shape)}.")
    x = last_dim_contiguous(x)
    hist = x if history is None else last_dim_contiguous(history)
    out = torch.empty(B, T, S, C, dtype=x.dtype, device=x.device)
    block_s, block_c = 8, min(128, max(16, triton.next_power_of_2(C)))  # 8 values a thread: ~140 registers, no spill
    _short_conv_kernel[(B, triton.cdiv(S, block_s), triton.cdiv(C, block_c))](
        x,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        hist,
        hist.stride(0),
        hist.stride(1),
        hist.stride(2),
        weight,
        weight.stride(0),
        weight.stride(2),
        out,
        S,
        C,
        T=T,
        HAS_HIST=history is not None,
        K=K,
        BLOCK_S=block_s,
        BLOCK_C=block_c,
        num_warps=4,
    )
    return out
