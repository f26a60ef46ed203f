"""Triton block glue: same contract as :mod:`sana_wm.ops.modulation`, one memory pass per function.

- ``_ln_modulate_kernel``: one program per token row: [(gated) residual add of y (+ skip, + first on frame 0),
  stored] -> LayerNorm row statistics in fp32 -> ``* (1 + scale) + shift`` of the row's frame. The torch version is
  2 passes (LayerNorm, addcmul), 3 with the residual add, each reading and writing the whole activation.
- ``_gated_residual_kernel``: ``x + gate * y [+ extra]`` in one pass (torch: addcmul + add).
- ``_gated_output_kernel``: ``(main + cam) * silu(gate)`` in fp32 registers, stored once in the activation dtype
  (torch: an add, an fp32 copy, fp32 SiLU, fp32 product and the copy back: five passes, three of them fp32).

Everything computes in fp32 and rounds once on store, so results differ from the torch references (which round
after every op in bf16) by about one bf16 rounding; in fp32 they agree to ~1e-7.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, last_dim_contiguous, tl, triton
from .modulation import LN_EPS, check_per_frame, heads_to_tokens

__all__ = [
    "gated_output_triton",
    "gated_residual_triton",
    "layernorm_modulate_triton",
    "residual_layernorm_modulate_triton",
]

if HAS_TRITON:

    @triton.jit
    def _ln_modulate_kernel(
        x_ptr,
        x_sb,
        x_sn,
        y_ptr,
        y_sb,
        y_sn,
        shift_ptr,
        shift_sb,
        shift_st,
        scale_ptr,
        scale_sb,
        scale_st,
        g_ptr,
        g_sb,
        g_st,
        k_ptr,
        k_sb,
        k_sn,
        f_ptr,
        f_sb,
        f_sn,
        sum_ptr,
        h_ptr,
        N,
        S,
        C,
        eps,
        HAS_Y: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_SKIP: tl.constexpr,
        HAS_FIRST: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        row = tl.program_id(0)
        b = row // N
        n = row % N
        t = n // S
        cols = tl.arange(0, BLOCK_C)
        mask = cols < C
        x = tl.load(x_ptr + b * x_sb + n * x_sn + cols, mask=mask, other=0.0)
        if HAS_Y:
            y = tl.load(y_ptr + b * y_sb + n * y_sn + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_SKIP:
                y += tl.load(k_ptr + b * k_sb + n * k_sn + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_FIRST:
                if t == 0:
                    y += tl.load(f_ptr + b * f_sb + n * f_sn + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_GATE:
                y *= tl.load(g_ptr + b * g_sb + t * g_st + cols, mask=mask, other=0.0).to(tl.float32)
            x = (x.to(tl.float32) + y).to(sum_ptr.dtype.element_ty)  # the stored residual stream
            tl.store(sum_ptr + row * C + cols, x, mask=mask)
        x = x.to(tl.float32)
        mean = tl.sum(x, axis=0) / C
        d = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
        shift = tl.load(shift_ptr + b * shift_sb + t * shift_st + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + b * scale_sb + t * scale_st + cols, mask=mask, other=0.0).to(tl.float32)
        h = d * rstd * (1.0 + scale) + shift
        tl.store(h_ptr + row * C + cols, h.to(h_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gated_residual_kernel(
        x_ptr,
        x_sb,
        x_sn,
        y_ptr,
        y_sb,
        y_sn,
        e_ptr,
        e_sb,
        e_sn,
        g_ptr,
        g_sb,
        g_st,
        out_ptr,
        N,
        S,
        C,
        HAS_EXTRA: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        row = tl.program_id(0)
        b = row // N
        n = row % N
        t = n // S
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = cols < C
        x = tl.load(x_ptr + b * x_sb + n * x_sn + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + b * y_sb + n * y_sn + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b * g_sb + t * g_st + cols, mask=mask, other=0.0).to(tl.float32)
        out = x + g * y
        if HAS_EXTRA:
            out += tl.load(e_ptr + b * e_sb + n * e_sn + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * C + cols, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gated_output_kernel(
        main_ptr,
        m_sb,
        m_sh,
        cam_ptr,
        gate_ptr,
        gate_sr,
        out_ptr,
        numel,
        N,
        C: tl.constexpr,
        D: tl.constexpr,
        HEAD_MAJOR: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Flat contiguous cam / out (B, N, C); gate rows of C channels ``gate_sr`` apart (a slice of a wider GEMM
        output); main flat like cam, or HEAD_MAJOR: (B, H, N, D) with contiguous (N, D) per head at batch / head
        strides ``m_sb`` / ``m_sh``."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        if HEAD_MAJOR:
            row = offs // C
            c = offs % C
            m_offs = (row // N) * m_sb + (c // D) * m_sh + (row % N) * D + c % D
        else:
            m_offs = offs
        main = tl.load(main_ptr + m_offs, mask=mask, other=0.0).to(tl.float32)
        cam = tl.load(cam_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(gate_ptr + (offs // C) * gate_sr + offs % C, mask=mask, other=0.0).to(tl.float32)
        out = (main + cam) * (gate / (1.0 + tl.exp(-gate)))
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _row_block(C: int) -> tuple[int, int]:
    """(BLOCK_C, num_warps) for one-row programs over C channels."""
    block = max(16, triton.next_power_of_2(C))
    return block, 8 if block >= 2048 else 4


def _ln_modulate(x, y, shift, scale, gate=None, skip=None, first=None):
    check_per_frame("shift", x, shift)
    T = check_per_frame("scale", x, scale)
    if gate is not None:
        check_per_frame("gate", x, gate)
    B, N, C = x.shape
    for name, t in (("y", y), ("skip", skip)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}.")
    if first is not None and tuple(first.shape) != (B, 1, N // T, C):
        raise ValueError(f"first must have shape {(B, 1, N // T, C)}, got {tuple(first.shape)}.")
    x, shift, scale = (last_dim_contiguous(t) for t in (x, shift, scale))
    y = x if y is None else last_dim_contiguous(y)
    g = shift if gate is None else last_dim_contiguous(gate)
    k = x if skip is None else last_dim_contiguous(skip)
    f = x if first is None else last_dim_contiguous(first).flatten(1, 2)
    h = torch.empty(B, N, C, dtype=x.dtype, device=x.device)
    total = torch.empty_like(h) if y is not x else h
    block, warps = _row_block(C)
    _ln_modulate_kernel[(B * N,)](
        x,
        x.stride(0),
        x.stride(1),
        y,
        y.stride(0),
        y.stride(1),
        shift,
        shift.stride(0),
        shift.stride(1),
        scale,
        scale.stride(0),
        scale.stride(1),
        g,
        g.stride(0),
        g.stride(1),
        k,
        k.stride(0),
        k.stride(1),
        f,
        f.stride(0),
        f.stride(1),
        total,
        h,
        N,
        N // T,
        C,
        LN_EPS,
        HAS_Y=y is not x,
        HAS_GATE=gate is not None,
        HAS_SKIP=skip is not None,
        HAS_FIRST=first is not None,
        BLOCK_C=block,
        num_warps=warps,
    )
    return total, h


def layernorm_modulate_triton(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Triton :func:`sana_wm.ops.modulation.layernorm_modulate` (one pass)."""
    return _ln_modulate(x, None, shift, scale)[1]


def residual_layernorm_modulate_triton(
    x: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    gate: torch.Tensor | None = None,
    skip: torch.Tensor | None = None,
    first: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton :func:`sana_wm.ops.modulation.residual_layernorm_modulate` (one pass; ``y + skip [+ first]`` stays in
    fp32, the LayerNorm sees the sum rounded to the activation dtype, as stored)."""
    return _ln_modulate(x, y, shift, scale, gate, skip, first)


def gated_residual_triton(
    x: torch.Tensor,
    gate: torch.Tensor,
    y: torch.Tensor,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton :func:`sana_wm.ops.modulation.gated_residual` (one pass)."""
    T = check_per_frame("gate", x, gate)
    B, N, C = x.shape
    for name, t in (("y", y), ("extra", extra)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}.")
    x, gate, y = (last_dim_contiguous(t) for t in (x, gate, y))
    e = x if extra is None else last_dim_contiguous(extra)
    out = torch.empty(B, N, C, dtype=x.dtype, device=x.device)
    block = min(1024, max(16, triton.next_power_of_2(C)))
    _gated_residual_kernel[(B * N, triton.cdiv(C, block))](
        x,
        x.stride(0),
        x.stride(1),
        y,
        y.stride(0),
        y.stride(1),
        e,
        e.stride(0),
        e.stride(1),
        gate,
        gate.stride(0),
        gate.stride(1),
        out,
        N,
        N // T,
        C,
        HAS_EXTRA=extra is not None,
        BLOCK_C=block,
        num_warps=4,
    )
    return out


def gated_output_triton(main: torch.Tensor, cam: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Triton :func:`sana_wm.ops.modulation.gated_output` (one pass; the sum ``main + cam`` stays in fp32; a per-head
    (B, H, N, D) ``main`` is read in place when each head's (N, D) is contiguous)."""
    head_major = main.dim() == 4 and main.stride(3) == 1 and main.stride(2) == main.shape[3]
    if main.dim() == 4 and not head_major:
        main = heads_to_tokens(main)
    shape = (main.shape[0], main.shape[2], main.shape[1] * main.shape[3]) if head_major else main.shape
    if shape != cam.shape or shape != gate.shape:
        raise ValueError(
            f"main, cam and gate must have one shape, got {tuple(shape)}, {tuple(cam.shape)}, {tuple(gate.shape)}."
        )
    cam = cam.contiguous()
    if not head_major:
        main = main.contiguous()
    B, N, C = cam.shape
    gate = last_dim_contiguous(gate).reshape(-1, C)  # a view for row slices of a merged projection
    out = torch.empty_like(cam)
    block = 2048
    _gated_output_kernel[(triton.cdiv(out.numel(), block),)](
        main,
        main.stride(0),
        main.stride(1) if head_major else 0,
        cam,
        gate,
        gate.stride(0),
        out,
        out.numel(),
        N,
        C=C,
        D=main.shape[3] if head_major else C,
        HEAD_MAJOR=head_major,
        BLOCK=block,
        num_warps=8,
    )
    return out
