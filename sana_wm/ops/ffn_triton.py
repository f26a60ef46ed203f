"""Triton FFN glue: same contract as :func:`sana_wm.ops.ffn.glu_dwconv`, one pass over h.

One program per (frame, strip of ``BLOCK_X`` columns, ``BLOCK_C`` channels of each half). It walks the frame's
rows top to bottom: for input row r it loads the strip and its two column-shifted copies (x - 1, x + 1; masked
loads outside the frame read 0, and silu(0) = 0, so this is the conv's zero padding), applies SiLU in fp32 and adds
the three kernel rows' taps into the rolling accumulators of output rows r + 1, r and r - 1 (bias-seeded). Output
row r - 1 is then complete: value * silu(gate) is stored once, in h's dtype. Every h element is read from memory
once (the shifted copies hit L1/L2) and the (N, M) output written once; the 3 x SiLU per element of the shifted
copies is the price of not exchanging registers between lanes.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, last_dim_contiguous, tl, triton
from .ffn import check_glu_dwconv_args

__all__ = ["glu_dwconv_triton"]

if HAS_TRITON:

    @triton.jit
    def _silu(x):
        return x * tl.fdiv(1.0, 1.0 + tl.exp(-x), ieee_rounding=False)

    @triton.jit
    def _kernel_row(w_ptr, c, mask_c, ky: tl.constexpr):
        """Taps (ky, 0..2) of channels c as fp32 (1, BLOCK_C) rows."""
        w0 = tl.load(w_ptr + c * 9 + 3 * ky, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        w1 = tl.load(w_ptr + c * 9 + 3 * ky + 1, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + c * 9 + 3 * ky + 2, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        return w0, w1, w2

    @triton.jit
    def _silu_at(ptrs, xs, dx: tl.constexpr, W, s_row, r_ok, mask_c):
        """SiLU (fp32) of one input row at columns xs + dx; 0 outside the frame (the conv's zero padding)."""
        xk = xs + dx
        m = (r_ok & (xk >= 0) & (xk < W))[:, None] & mask_c[None, :]
        return _silu(tl.load(ptrs + dx * s_row, mask=m, other=0.0).to(tl.float32))

    @triton.jit
    def _taps(ptrs, xs, W, s_row, r_ok, mask_c, a0, a1, a2, b0, b1, b2, c0, c1, c2):
        """One input row (columns x - 1, x, x + 1) against kernel rows a (ky 0), b (ky 1), c (ky 2): the
        contributions to output rows r + 1, r, r - 1."""
        s = _silu_at(ptrs, xs, -1, W, s_row, r_ok, mask_c)
        t0, t1, t2 = s * a0, s * b0, s * c0
        s = _silu_at(ptrs, xs, 0, W, s_row, r_ok, mask_c)
        t0, t1, t2 = t0 + s * a1, t1 + s * b1, t2 + s * c1
        s = _silu_at(ptrs, xs, 1, W, s_row, r_ok, mask_c)
        return t0 + s * a2, t1 + s * b2, t2 + s * c2

    @triton.jit
    def _glu_dwconv_kernel(
        h_ptr,
        s_row,
        w_ptr,
        b_ptr,
        out_ptr,
        H,
        W,
        M,
        BLOCK_X: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        pid = tl.program_id(0)
        strips = tl.cdiv(W, BLOCK_X)
        frame = pid // strips
        xs = (pid % strips) * BLOCK_X + tl.arange(0, BLOCK_X)
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = cs < M
        mask_x = xs < W
        bias_v = tl.load(b_ptr + cs, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        bias_g = tl.load(b_ptr + M + cs, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        va0, va1, va2 = _kernel_row(w_ptr, cs, mask_c, 0)
        vb0, vb1, vb2 = _kernel_row(w_ptr, cs, mask_c, 1)
        vc0, vc1, vc2 = _kernel_row(w_ptr, cs, mask_c, 2)
        ga0, ga1, ga2 = _kernel_row(w_ptr, M + cs, mask_c, 0)
        gb0, gb1, gb2 = _kernel_row(w_ptr, M + cs, mask_c, 1)
        gc0, gc1, gc2 = _kernel_row(w_ptr, M + cs, mask_c, 2)
        zero = tl.zeros((BLOCK_X, BLOCK_C), dtype=tl.float32)
        prev_v, cur_v = zero + bias_v, zero + bias_v  # output rows r - 1 and r
        prev_g, cur_g = zero + bias_g, zero + bias_g
        first = frame * H * W  # token index of the frame's pixel (0, 0)
        for r in range(H + 1):
            r_ok = r < H  # row H is the zero padding below the frame: it only completes row H - 1
            rows = (first + r * W + xs).to(tl.int64)
            ptrs = h_ptr + rows[:, None] * s_row + cs[None, :]
            v0, v1, v2 = _taps(
                ptrs,
                xs,
                W,
                s_row,
                r_ok,
                mask_c,
                va0,
                va1,
                va2,
                vb0,
                vb1,
                vb2,
                vc0,
                vc1,
                vc2,
            )
            g0, g1, g2 = _taps(
                ptrs + M,
                xs,
                W,
                s_row,
                r_ok,
                mask_c,
                ga0,
                ga1,
                ga2,
                gb0,
                gb1,
                gb2,
                gc0,
                gc1,
                gc2,
            )
            done_v = prev_v + v2  # output row r - 1 is complete
            done_g = prev_g + g2
            out = done_v * _silu(done_g)
            orow = (first + (r - 1) * W + xs).to(tl.int64)
            m = (mask_x & (r >= 1))[:, None] & mask_c[None, :]
            tl.store(
                out_ptr + orow[:, None] * M + cs[None, :],
                out.to(out_ptr.dtype.element_ty),
                mask=m,
            )
            prev_v, cur_v = cur_v + v1, bias_v + v0
            prev_g, cur_g = cur_g + g1, bias_g + g0


def glu_dwconv_triton(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    height: int,
    width: int,
    block_x: int = 8,
    block_c: int = 64,
    num_warps: int = 4,
) -> torch.Tensor:
    """Triton :func:`sana_wm.ops.ffn.glu_dwconv`: h (B*T*H*W, 2M), weight (2M, 1, 3, 3), bias (2M,) ->
    (B*T*H*W, M) in h's dtype; SiLU, taps, bias and GLU in fp32.

    Tiles of ``block_x`` columns x ``block_c`` channels (powers of two; the defaults give 5 strips x 105 channel
    blocks per frame at 704 x 1280, 1,575 programs for a 3-frame chunk, and 8-byte bf16 loads along channels)."""
    frames, M = check_glu_dwconv_args(h, weight, bias, height, width)
    for name, v in (
        ("block_x", block_x),
        ("block_c", block_c),
        ("num_warps", num_warps),
    ):
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two, got {v!r}.")
    h = last_dim_contiguous(h)
    weight, bias = weight.contiguous(), bias.contiguous()
    out = torch.empty(h.shape[0], M, dtype=h.dtype, device=h.device)
    grid = (frames * triton.cdiv(width, block_x), triton.cdiv(M, block_c))
    _glu_dwconv_kernel[grid](
        h,
        h.stride(0),
        weight,
        bias,
        out,
        height,
        width,
        M,
        BLOCK_X=block_x,
        BLOCK_C=block_c,
        num_warps=num_warps,
    )
    return out
