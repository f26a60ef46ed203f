"""Triton FFN glue: same contract as :func:`sana_wm.ops.ffn.glu_dwconv`, one pass over h, no shared memory.

One program per (frame, strip of ``BLOCK_X`` output columns, ``BLOCK_C`` channels of each half). The strip's
``BLOCK_X + 2`` input columns (one halo column each side) are separate ``[BLOCK_C]`` vectors (a compile-time tuple),
so every column shift of the 3x3 stencil is a register rename: no ``tl.gather``, no barrier. The program walks the
frame's rows top to bottom with rows r + 1 and r + 2 in flight while row r computes: SiLU once per loaded element in
fp32, then per output column three chained FMAs per kernel row into the bias-seeded rolling accumulators of output
rows r + 1, r and r - 1; output row r - 1 is then complete and value * silu(gate) is stored once, in h's dtype.
Masked loads outside the frame read 0 and silu(0) = 0: that is the conv's zero padding. SiLU runs
(BLOCK_X + 2) / BLOCK_X times per element (the halo columns, which the neighbouring strips, launched next to each
other, also read: mostly L2 hits). h's row stride and M are compile-time constants, so all loads of a row share one
base register with immediate offsets (runtime strides cost a 64-bit address register pair per column).
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, interpreting, last_dim_contiguous, tl, triton
from .ffn import check_glu_dwconv_args

__all__ = ["glu_dwconv_triton"]

if HAS_TRITON:

    @triton.jit
    def _silu(x, PTX: tl.constexpr, TANH: tl.constexpr):
        """x * sigmoid(x) in fp32. PTX and TANH (16-bit outputs on CUDA): 0.5x + 0.5x tanh(0.5x) with tanh.approx.f32
        (one MUFU op, relative error ~2^-11: below a bf16 output's rounding, about an fp16 output's); PTX alone:
        x * rcp(1 + ex2(-x log2 e)) with ex2.approx.ftz and rcp.approx.ftz (two MUFU ops, ~2^-22; div.full is the
        same reciprocal and product plus a range fix-up for denominators above 2^126, i.e. x < -87, where both give
        silu ~ 0); neither (Triton's interpreter, which runs no PTX): the sigmoid formula in tl ops. The
        special-function unit (16 results per clock and SM) matters here: 2.4 SiLUs per output (halo columns
        included) plus the gate's; the tanh form halves its work (H100: 60.6 -> 57.8 us per call)."""
        if PTX:
            if TANH:
                return tl.inline_asm_elementwise(
                    "{ .reg .f32 h, t; mul.f32 h, $1, 0f3F000000; tanh.approx.f32 t, h; fma.rn.f32 $0, h, t, h; }",
                    "=r,r",
                    [x],
                    dtype=tl.float32,
                    is_pure=True,
                    pack=1,
                )
            return tl.inline_asm_elementwise(
                "{ .reg .f32 t; ex2.approx.ftz.f32 t, $1; add.f32 t, t, 0f3F800000; rcp.approx.ftz.f32 t, t; "
                "mul.f32 $0, $2, t; }",
                "=r,r,r",
                [x * -1.4426950408889634, x],
                dtype=tl.float32,
                is_pure=True,
                pack=1,
            )
        return tl.fdiv(x, 1.0 + tl.exp2(x * -1.4426950408889634), ieee_rounding=False)

    @triton.jit
    def _taps(w_ptr, c, mask_c):
        """The 9 taps (ky-major) of channels c as a tuple of fp32 [BLOCK_C] vectors."""
        taps = ()
        for k in tl.static_range(9):
            taps = taps + (tl.load(w_ptr + c * 9 + k, mask=mask_c, other=0.0).to(tl.float32),)
        return taps

    @triton.jit
    def _load_row(row_ptr, s_row: tl.constexpr, x0, W, row_ok, mask_c, NCOL: tl.constexpr):
        """Raw columns x0 - 1 .. x0 + NCOL - 2 of one input row (row_ptr: its column x0 - 1, channel block start) as
        a tuple of [BLOCK_C] vectors; 0 outside the frame. Column j sits at the compile-time offset j * s_row."""
        cols = ()
        for j in tl.static_range(NCOL):
            x = x0 - 1 + j
            ok = row_ok & (x >= 0) & (x < W)
            cols = cols + (tl.load(row_ptr + j * s_row, mask=mask_c & ok, other=0.0),)
        return cols

    @triton.jit
    def _column(s, prev, cur, bias, w, i: tl.constexpr):
        """Output column i from SiLU'd input columns s[i .. i + 2] of row r: (output row r - 1 complete, new row r
        accumulator, new row r + 1 accumulator)."""
        a, b, c = s[i], s[i + 1], s[i + 2]  # chained FMAs: three per kernel row
        done = prev[i] + a * w[6] + b * w[7] + c * w[8]
        return done, cur[i] + a * w[3] + b * w[4] + c * w[5], bias + a * w[0] + b * w[1] + c * w[2]

    @triton.jit
    def _glu_dwconv_kernel(
        h_ptr,
        w_ptr,
        b_ptr,
        out_ptr,
        H,
        W,
        s_row: tl.constexpr,
        M: tl.constexpr,
        BLOCK_X: tl.constexpr,
        BLOCK_C: tl.constexpr,
        PTX: tl.constexpr,
        TANH: tl.constexpr,
    ):
        pid = tl.program_id(0)  # strips vary fastest: neighbours that share halo columns run together
        strips = tl.cdiv(W, BLOCK_X)
        x0 = (pid % strips) * BLOCK_X
        frame = pid // strips
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = cs < M
        wv = _taps(w_ptr, cs, mask_c)
        wg = _taps(w_ptr, M + cs, mask_c)
        bias_v = tl.load(b_ptr + cs, mask=mask_c, other=0.0).to(tl.float32)
        bias_g = tl.load(b_ptr + M + cs, mask=mask_c, other=0.0).to(tl.float32)
        prev_v = ()  # output rows r - 1 and r
        prev_g = ()
        for i in tl.static_range(BLOCK_X):
            prev_v = prev_v + (bias_v,)
            prev_g = prev_g + (bias_g,)
        cur_v, cur_g = prev_v, prev_g
        first = frame * H * W  # token index of the frame's pixel (0, 0)
        in_row = h_ptr + (first + x0 - 1).to(tl.int64) * s_row + cs  # the strip's left halo column
        out_row = out_ptr + (first + x0).to(tl.int64) * M + cs - W * M  # output row r - 1 at r = 0
        raw_v = _load_row(in_row, s_row, x0, W, H > 0, mask_c, BLOCK_X + 2)  # row r
        raw_g = _load_row(in_row + M, s_row, x0, W, H > 0, mask_c, BLOCK_X + 2)
        in_row += W * s_row
        next_v = _load_row(in_row, s_row, x0, W, H > 1, mask_c, BLOCK_X + 2)  # row r + 1
        next_g = _load_row(in_row + M, s_row, x0, W, H > 1, mask_c, BLOCK_X + 2)
        for r in range(H + 1):
            # rows r + 1 and r + 2 in flight while row r computes (rows >= H: the zero padding below the frame)
            in_row += W * s_row
            far_v = _load_row(in_row, s_row, x0, W, r + 2 < H, mask_c, BLOCK_X + 2)
            far_g = _load_row(in_row + M, s_row, x0, W, r + 2 < H, mask_c, BLOCK_X + 2)
            sv = ()
            sg = ()
            for j in tl.static_range(BLOCK_X + 2):
                sv = sv + (_silu(raw_v[j].to(tl.float32), PTX, TANH),)
                sg = sg + (_silu(raw_g[j].to(tl.float32), PTX, TANH),)
            raw_v, raw_g, next_v, next_g = next_v, next_g, far_v, far_g
            pv = ()
            cv = ()
            pg = ()
            cg = ()
            for i in tl.static_range(BLOCK_X):
                done_v, p, c = _column(sv, prev_v, cur_v, bias_v, wv, i)
                pv, cv = pv + (p,), cv + (c,)
                done_g, p, c = _column(sg, prev_g, cur_g, bias_g, wg, i)
                pg, cg = pg + (p,), cg + (c,)
                ok = mask_c & (r >= 1) & (x0 + i < W)
                tl.store(out_row + i * M, (done_v * _silu(done_g, PTX, TANH)).to(out_ptr.dtype.element_ty), mask=ok)
            prev_v, cur_v, prev_g, cur_g = pv, cv, pg, cg
            out_row += W * M


# Default tile: output columns x channels of each half per program, warps. On an H100 at 704 x 1280 (22 x 40 tokens)
# inside a CUDA graph of 20 calls (``bench/micro_ffn.py``), with the tanh SiLU: 10 x 64 at 2 warps (149 registers)
# 57.8 us per call, 5 x 64 at 2 warps 54.5, 5 x 128 at 4 warps 54.2-54.9 (ex2 / rcp SiLU: 60.4 and 61.8 us). Inside
# the forward the smaller tiles gain nothing (+0.03 +- 0.03 and -0.02 +- 0.03 ms per forward, ``bench/ab_forward.py
# --set``), so the default stays.
GLU_LAUNCH = {"block_x": 10, "block_c": 64, "num_warps": 2}


def glu_dwconv_triton(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    height: int,
    width: int,
    block_x: int | None = None,
    block_c: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Triton :func:`sana_wm.ops.ffn.glu_dwconv`: h (B*T*H*W, 2M), weight (2M, 1, 3, 3), bias (2M,) ->
    (B*T*H*W, M) in h's dtype; SiLU, taps, bias and GLU in fp32.

    Programs of ``block_x`` output columns (any positive int; unrolled) x ``block_c`` channels of each half (a
    power of two; ``block_c / (32 num_warps)`` channels per thread); None: ``GLU_LAUNCH``'s. h's row stride and M
    are compile-time constants (every load and store of a row is one base register plus immediates; one compile per
    model width)."""
    block_x = GLU_LAUNCH["block_x"] if block_x is None else block_x
    block_c = GLU_LAUNCH["block_c"] if block_c is None else block_c
    num_warps = GLU_LAUNCH["num_warps"] if num_warps is None else num_warps
    frames, M = check_glu_dwconv_args(h, weight, bias, height, width)
    if isinstance(block_x, bool) or not isinstance(block_x, int) or block_x < 1:
        raise ValueError(f"block_x must be a positive int, got {block_x!r}.")
    for name, v in (("block_c", block_c), ("num_warps", num_warps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two, got {v!r}.")
    h = last_dim_contiguous(h)
    weight, bias = weight.contiguous(), bias.contiguous()
    out = torch.empty(h.shape[0], M, dtype=h.dtype, device=h.device)
    grid = (frames * triton.cdiv(width, block_x), triton.cdiv(M, block_c))
    _glu_dwconv_kernel[grid](
        h,
        weight,
        bias,
        out,
        height,
        width,
        h.stride(0),
        M,
        BLOCK_X=block_x,
        BLOCK_C=block_c,
        PTX=not interpreting(),
        TANH=h.element_size() == 2,
        num_warps=num_warps,
    )
    return out
