"""Triton FFN glue: same contract as :func:`sana_wm.ops.ffn.glu_dwconv`, one pass over h.

One program per (frame, strip of ``BLOCK_X`` columns, ``BLOCK_C`` channels of each half). It walks the frame's
rows top to bottom with rows r + 1 and r + 2 in flight while row r computes: SiLU in fp32, then the three kernel
rows' taps are added into the bias-seeded rolling accumulators of output rows r + 1, r and r - 1; output row r - 1
is then complete and value * silu(gate) is stored once, in h's dtype. Masked loads outside the frame read 0 and
silu(0) = 0: that is the conv's zero padding. Column neighbours (GATHER, default): SiLU once per element and
``tl.gather`` along the strip, strips overlapping by a 2-column halo; else the row is loaded at three column shifts
(L1 hits) and SiLU runs 3x per element (3x the MUFU work: ~70 us of SFU time at 704 x 1280 on an H100, above the
~35 us memory floor).
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
    def _load_at(ptrs, xs, dx: tl.constexpr, W, s_row, r_ok, mask_c):
        """One input row at columns xs + dx (raw); 0 outside the frame, i.e. the conv's zero padding after SiLU."""
        xk = xs + dx
        m = (r_ok & (xk >= 0) & (xk < W))[:, None] & mask_c[None, :]
        return tl.load(ptrs + dx * s_row, mask=m, other=0.0)

    @triton.jit
    def _load_row(ptrs, xs, W, s_row, r_ok, mask_c, GATHER: tl.constexpr):
        """Raw (left, centre, right) column views of one input row (GATHER: the centre only, returned 3x)."""
        centre = _load_at(ptrs, xs, 0, W, s_row, r_ok, mask_c)
        if GATHER:
            return centre, centre, centre
        return _load_at(ptrs, xs, -1, W, s_row, r_ok, mask_c), centre, _load_at(ptrs, xs, 1, W, s_row, r_ok, mask_c)

    @triton.jit
    def _taps(left, centre, right, a0, a1, a2, b0, b1, b2, c0, c1, c2, GATHER: tl.constexpr):
        """One input row (raw columns x - 1, x, x + 1) against kernel rows a (ky 0), b (ky 1), c (ky 2): the
        contributions to output rows r + 1, r, r - 1. GATHER: SiLU once on the strip, the neighbours by a gather
        along the strip (its edge columns are halo, not stored); else SiLU of each of the three views."""
        s = _silu(centre.to(tl.float32))
        if GATHER:
            i = tl.arange(0, s.shape[0])[:, None] + tl.zeros(s.shape, dtype=tl.int32)
            sl = tl.gather(s, tl.maximum(i - 1, 0), 0)
            sr = tl.gather(s, tl.minimum(i + 1, s.shape[0] - 1), 0)
        else:
            sl = _silu(left.to(tl.float32))
            sr = _silu(right.to(tl.float32))
        t0 = sl * a0 + s * a1 + sr * a2
        t1 = sl * b0 + s * b1 + sr * b2
        t2 = sl * c0 + s * c1 + sr * c2
        return t0, t1, t2

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
        GATHER: tl.constexpr,
    ):
        pid = tl.program_id(0)
        step = BLOCK_X - 2 if GATHER else BLOCK_X  # output columns per strip (GATHER: the edge columns are halo)
        strips = tl.cdiv(W, step)
        frame = pid // strips
        xs = (pid % strips) * step - (1 if GATHER else 0) + tl.arange(0, BLOCK_X)
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = cs < M
        mask_x = (xs >= 0) & (xs < W)
        if GATHER:
            inner = tl.arange(0, BLOCK_X)
            mask_x = mask_x & (inner >= 1) & (inner < BLOCK_X - 1)
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
        ptrs = h_ptr + (first + xs).to(tl.int64)[:, None] * s_row + cs[None, :]
        vl, vm, vr = _load_row(ptrs, xs, W, s_row, H > 0, mask_c, GATHER)  # row r
        gl, gm, gr = _load_row(ptrs + M, xs, W, s_row, H > 0, mask_c, GATHER)
        ptrs += W * s_row
        nvl, nvm, nvr = _load_row(ptrs, xs, W, s_row, H > 1, mask_c, GATHER)  # row r + 1
        ngl, ngm, ngr = _load_row(ptrs + M, xs, W, s_row, H > 1, mask_c, GATHER)
        for r in range(H + 1):
            # rows r + 1 and r + 2 stay in flight while row r computes (rows >= H: the zero padding below the frame)
            ptrs += W * s_row
            fvl, fvm, fvr = _load_row(ptrs, xs, W, s_row, r + 2 < H, mask_c, GATHER)
            fgl, fgm, fgr = _load_row(ptrs + M, xs, W, s_row, r + 2 < H, mask_c, GATHER)
            v0, v1, v2 = _taps(vl, vm, vr, va0, va1, va2, vb0, vb1, vb2, vc0, vc1, vc2, GATHER)
            g0, g1, g2 = _taps(gl, gm, gr, ga0, ga1, ga2, gb0, gb1, gb2, gc0, gc1, gc2, GATHER)
            vl, vm, vr, gl, gm, gr = nvl, nvm, nvr, ngl, ngm, ngr
            nvl, nvm, nvr, ngl, ngm, ngr = fvl, fvm, fvr, fgl, fgm, fgr
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
    block_x: int = 16,
    block_c: int = 32,
    num_warps: int = 4,
    gather: bool = True,
) -> torch.Tensor:
    """Triton :func:`sana_wm.ops.ffn.glu_dwconv`: h (B*T*H*W, 2M), weight (2M, 1, 3, 3), bias (2M,) ->
    (B*T*H*W, M) in h's dtype; SiLU, taps, bias and GLU in fp32.

    Tiles of ``block_x`` columns x ``block_c`` channels (powers of two). ``gather``: SiLU once per element, column
    neighbours by ``tl.gather``, ``block_x - 2`` output columns per strip (the defaults: 3 strips x 210 channel blocks
    per frame at 704 x 1280, 1,890 programs for a 3-frame chunk, 8-byte bf16 loads along channels); else each row
    is loaded at three column shifts and SiLU runs 3x per element (``bench/micro_ffn.py`` times both)."""
    frames, M = check_glu_dwconv_args(h, weight, bias, height, width)
    for name, v in (("block_x", block_x), ("block_c", block_c), ("num_warps", num_warps)):
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two, got {v!r}.")
    if gather and block_x < 4:
        raise ValueError(f"block_x must be >= 4 with gather=True (2 halo columns per strip), got {block_x}.")
    h = last_dim_contiguous(h)
    weight, bias = weight.contiguous(), bias.contiguous()
    out = torch.empty(h.shape[0], M, dtype=h.dtype, device=h.device)
    grid = (frames * triton.cdiv(width, block_x - 2 if gather else block_x), triton.cdiv(M, block_c))
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
        GATHER=bool(gather),
        num_warps=num_warps,
    )
    return out
