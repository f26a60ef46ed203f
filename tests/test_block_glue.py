"""Block glue kernels (``sana_wm.ops.modulation`` / ``modulation_triton``, ``short_conv_triton``).

- CPU: the references equal the expressions ``SanaWMBlock`` / ``SanaWMAttention`` computed inline before they
  existed (bit for bit, fp32 and bf16), and the dispatch picks the references on CPU tensors;
- CPU through Triton's interpreter (subprocess, ``TRITON_INTERPRET=1``): every kernel vs its reference on fresh
  random inputs (odd channel counts, B = 2, T = 1 / 3 / 4, strided inputs), fp32 to rounding, bf16 inputs within
  one bf16 rounding of the fp32 reference;
- ``gpu``: the real streaming shape (B 1, T 3, S 880, C 2240) in bf16 on CUDA vs the fp32 CPU reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sana_wm.ops import kernels
from sana_wm.ops import modulation as ref
from sana_wm.ops.temporal_conv import short_conv_k
from triton_interpreter import run_interpreted

ROOT = Path(__file__).resolve().parents[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def glue_inputs(B: int, T: int, S: int, C: int, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Tokens (B, N, C) and per-frame parameters (B, T, 1, C) as strided views of one (B, T, 6, 1, C) tensor, like
    the block's ``(scale_shift_table + t0).unsqueeze(3).unbind(2)``."""
    gen = torch.Generator().manual_seed(seed)
    N = T * S
    tok = {n: torch.randn(B, N, C, generator=gen).to(dtype) for n in ("x", "y", "extra", "main", "cam", "gate_out")}
    tok["x"] = 3 + 2 * tok["x"]  # LayerNorm sees a mean and a spread
    mod = (0.3 * torch.randn(B, T, 6, C, generator=gen)).to(dtype).unsqueeze(3).unbind(2)
    return tok | dict(zip(("shift", "scale", "gate", "shift2", "scale2", "gate2"), mod))


# ----------------------------------------------------------------------------------------------------------------
# CPU: references == the old inline expressions; dispatch
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 3])
def test_references_equal_old_block_expressions(dtype, T):
    i = glue_inputs(2, T, 5, 24, seed=T, dtype=dtype)
    x, y, B, N, C = i["x"], i["y"], *i["x"].shape
    old_h = torch.addcmul(i["shift"], F.layer_norm(x, (C,), eps=1e-6).view(B, T, -1, C), 1 + i["scale"]).view(B, N, C)
    assert torch.equal(ref.layernorm_modulate(x, i["shift"], i["scale"]), old_h)

    old_x = torch.addcmul(x.view(B, T, -1, C), i["gate"], y.view(B, T, -1, C)).view(B, N, C)
    assert torch.equal(ref.gated_residual(x, i["gate"], y), old_x)
    assert torch.equal(ref.gated_residual(x, i["gate"], y, i["extra"]), old_x + i["extra"])

    s = x + y
    old_h = torch.addcmul(i["shift"], F.layer_norm(s, (C,), eps=1e-6).view(B, T, -1, C), 1 + i["scale"]).view(B, N, C)
    got_x, got_h = ref.residual_layernorm_modulate(x, y, i["shift"], i["scale"])
    assert torch.equal(got_x, s) and torch.equal(got_h, old_h)
    # gated: the FFN residual of one block taken into the next block's first LayerNorm
    got_x, got_h = ref.residual_layernorm_modulate(x, y, i["shift"], i["scale"], gate=i["gate"])
    assert torch.equal(got_x, old_x) and torch.equal(got_h, ref.layernorm_modulate(old_x, i["shift"], i["scale"]))
    # ... with the FFN's temporal-conv residual (skip) added to y first
    got_x, _ = ref.residual_layernorm_modulate(x, y, i["shift"], i["scale"], gate=i["gate"], skip=i["extra"])
    assert torch.equal(got_x, ref.gated_residual(x, i["gate"], y + i["extra"]))
    # ... and the previous chunk's past tap on the first frame's rows
    first = i["cam"][:, : N // T].unsqueeze(1)
    got_x, _ = ref.residual_layernorm_modulate(x, y, i["shift"], i["scale"], gate=i["gate"], skip=x, first=first)
    y_first = (y + x).clone()
    y_first[:, : N // T] += first[:, 0]
    assert torch.equal(got_x, ref.gated_residual(x, i["gate"], y_first))

    combined = i["main"] + i["cam"]
    old = (combined * F.silu(i["gate_out"].to(torch.float32))).to(dtype)
    got = ref.gated_output(i["main"], i["cam"], i["gate_out"])
    assert got.dtype == dtype and torch.equal(got, old)
    per_head = i["main"].view(B, N, 4, C // 4).transpose(1, 2)  # (B, H, N, D), as SDPA returns it
    assert torch.equal(ref.gated_output(per_head, i["cam"], i["gate_out"]), old)


def test_dispatch_uses_references_on_cpu():
    i = glue_inputs(2, 3, 4, 16, seed=0)
    x, y = i["x"], i["y"]
    assert torch.equal(
        kernels.layernorm_modulate(x, i["shift"], i["scale"]), ref.layernorm_modulate(x, i["shift"], i["scale"])
    )
    for a, b in zip(
        kernels.residual_layernorm_modulate(x, y, i["shift"], i["scale"]),
        ref.residual_layernorm_modulate(x, y, i["shift"], i["scale"]),
    ):
        assert torch.equal(a, b)
    assert torch.equal(
        kernels.gated_residual(x, i["gate"], y, i["extra"]), ref.gated_residual(x, i["gate"], y, i["extra"])
    )
    assert torch.equal(kernels.gated_output(x, y, i["extra"]), ref.gated_output(x, y, i["extra"]))
    k, w, hist = x.view(2, 3, 4, 16), torch.randn(16, 1, 4), torch.randn(2, 3, 4, 16)
    assert torch.equal(kernels.short_conv_k(k, w, history=hist), short_conv_k(k, w, history=hist))


def test_bad_shapes_are_named():
    i = glue_inputs(2, 3, 4, 16, seed=0)
    with pytest.raises(ValueError, match="shift"):
        ref.layernorm_modulate(i["x"], i["shift"][..., :8], i["scale"])
    with pytest.raises(ValueError, match="gate"):
        ref.gated_residual(i["x"], i["gate"][:, :2].reshape(2, 2, 2, 8), i["y"])
    with pytest.raises(ValueError, match="main, cam and gate"):
        ref.gated_output(i["main"], i["cam"][:, 1:], i["gate_out"])


# ----------------------------------------------------------------------------------------------------------------
# CPU: Triton's interpreter
# ----------------------------------------------------------------------------------------------------------------

_INTERPRETED = """

    from test_block_glue import glue_inputs, rel
    from sana_wm.ops import modulation as ref
    from sana_wm.ops.modulation_triton import (
        gated_output_triton, gated_residual_triton, layernorm_modulate_triton, residual_layernorm_modulate_triton)
    from sana_wm.ops.short_conv_triton import short_conv_k_triton
    from sana_wm.ops.temporal_conv import short_conv_k

    torch.set_num_threads(1)

    def heads(x):
        '''(B, N, C) -> the first half of a (B, 2H, N, D) per-head buffer holding it (strided batch).'''
        B, N, C = x.shape
        H = 2 if C % 2 == 0 else 1
        buf = torch.zeros(B, 2 * H, N, C // H, dtype=x.dtype)
        buf[:, :H] = x.view(B, N, H, C // H).transpose(1, 2)
        return buf[:, :H]

    def pairs(i, f32):
        '''(kernel outputs, reference outputs) of every kernel; the reference in fp32 on the same inputs.'''
        up = {n: t.float() for n, t in i.items()} if f32 else i
        x, y = i["x"], i["y"]
        B, N, C = x.shape
        T = i["shift"].shape[1]
        xs = torch.cat([x, y], -1)[..., :C]  # row-strided x
        k = torch.cat([y, x, y], -1).view(B, T, N // T, 3, C)[:, :, :, 1]  # the K slice of a fused qkv
        w = (0.5 * torch.randn(C, 1, 4)).to(x.dtype)
        hist = torch.randn(B, 3, N // T, C).to(x.dtype)
        kf, wf, hf = (t.float() if f32 else t for t in (k, w, hist))
        return [
            ((layernorm_modulate_triton(xs, i["shift"], i["scale"]),),
             (ref.layernorm_modulate(up["x"], up["shift"], up["scale"]),)),
            (residual_layernorm_modulate_triton(x, y, i["shift2"], i["scale2"]),
             ref.residual_layernorm_modulate(up["x"], up["y"], up["shift2"], up["scale2"])),
            (residual_layernorm_modulate_triton(xs, y, i["shift"], i["scale"], gate=i["gate2"]),
             ref.residual_layernorm_modulate(up["x"], up["y"], up["shift"], up["scale"], gate=up["gate2"])),
            (residual_layernorm_modulate_triton(x, y, i["shift"], i["scale"], gate=i["gate2"], skip=xs,
                                                first=i["cam"][:, : N // T].unsqueeze(1)),
             ref.residual_layernorm_modulate(up["x"], up["y"], up["shift"], up["scale"], gate=up["gate2"],
                                             skip=up["x"], first=up["cam"][:, : N // T].unsqueeze(1))),
            ((gated_residual_triton(xs, i["gate"], y, i["extra"]), gated_residual_triton(x, i["gate2"], y)),
             (ref.gated_residual(up["x"], up["gate"], up["y"], up["extra"]), ref.gated_residual(up["x"], up["gate2"], up["y"]))),
            ((gated_output_triton(i["main"], i["cam"], i["gate_out"]),
              gated_output_triton(i["main"], i["cam"], torch.cat([y, i["gate_out"]], -1)[..., C:]),
              gated_output_triton(heads(i["main"]), i["cam"], i["gate_out"])),
             (ref.gated_output(up["main"], up["cam"], up["gate_out"]),
              ref.gated_output(up["main"], up["cam"], up["gate_out"]),
              ref.gated_output(up["main"], up["cam"], up["gate_out"]))),
            ((short_conv_k_triton(k, w, history=hist), short_conv_k_triton(k, w)),
             (short_conv_k(kf, wf, history=hf), short_conv_k(kf, wf, cross_chunk=False))),
        ]

    worst = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for seed, (B, T, S, C) in enumerate([(2, 1, 5, 37), (2, 3, 4, 50), (2, 4, 3, 24)]):
        for dtype in worst:
            i = glue_inputs(B, T, S, C, seed=seed, dtype=dtype)
            for got, want in pairs(i, f32=dtype != torch.float32):
                for a, b in zip(got, want):
                    assert a.dtype == dtype and a.shape == b.shape, (a.dtype, a.shape, b.shape)
                    worst[dtype] = max(worst[dtype], rel(a, b))
    print("WORST", worst[torch.float32], worst[torch.bfloat16])
    """


def test_glue_kernels_in_triton_interpreter():
    pytest.importorskip("triton")
    numbers = run_interpreted(_INTERPRETED, timeout=300)
    f32, bf16 = numbers
    assert f32 < 1e-6  # fp32: the kernels reproduce the references to rounding
    assert bf16 < 6e-3  # bf16 in / out: one output rounding (2^-9 relative) over the fp32 reference


@pytest.mark.slow
def test_glue_kernels_compile_for_sm90_without_spills():
    """The launched variants compile to sm_90a cubins (no GPU needed) with no local-memory spills."""
    pytest.importorskip("triton")
    from sm90 import compile_sm90, resource_usage

    from sana_wm.ops import modulation_triton as M
    from sana_wm.ops import short_conv_triton as SC

    def spills(fn, ptrs, num_warps, **constexprs) -> int:
        kernel = compile_sm90(
            fn, dict.fromkeys(ptrs, "*bf16"), constexprs, floats=("eps",), options={"num_warps": num_warps}
        )
        usage = resource_usage(kernel)
        return 0 if usage is None else usage["STACK"] + usage["LOCAL"]

    ln = ("x_ptr", "y_ptr", "shift_ptr", "scale_ptr", "g_ptr", "k_ptr", "f_ptr", "sum_ptr", "h_ptr")
    for has_y, has_gate, has_skip in ((False, False, False), (True, False, False), (True, True, True)):
        flags = {"HAS_Y": has_y, "HAS_GATE": has_gate, "HAS_SKIP": has_skip, "HAS_FIRST": has_skip}
        assert spills(M._ln_modulate_kernel, ln, 8, **flags, BLOCK_C=4096) == 0
    res = ("x_ptr", "y_ptr", "e_ptr", "g_ptr", "out_ptr")
    assert spills(M._gated_residual_kernel, res, 4, HAS_EXTRA=True, BLOCK_C=1024) == 0
    for head_major in (False, True):
        flags = {"C": 2240, "D": 112, "HEAD_MAJOR": head_major, "BLOCK": 2048}
        assert spills(M._gated_output_kernel, ("main_ptr", "cam_ptr", "gate_ptr", "out_ptr"), 8, **flags) == 0
    conv = ("x_ptr", "hist_ptr", "w_ptr", "out_ptr")
    for has_hist, frames in ((False, 3), (True, 3), (True, 12)):
        flags = {"T": frames, "HAS_HIST": has_hist, "K": 4, "BLOCK_S": 8, "BLOCK_C": 128}
        assert spills(SC._short_conv_kernel, conv, 4, **flags) == 0


# ----------------------------------------------------------------------------------------------------------------
# CUDA: the real streaming shape
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_glue_kernels_match_fp32_reference_at_full_size():
    from sana_wm.ops.modulation_triton import (
        gated_output_triton,
        gated_residual_triton,
        layernorm_modulate_triton,
        residual_layernorm_modulate_triton,
    )
    from sana_wm.ops.short_conv_triton import short_conv_k_triton

    i = glue_inputs(1, 3, 880, 2240, seed=0, dtype=torch.bfloat16)
    up = {n: t.float() for n, t in i.items()}
    g = {n: t.cuda() for n, t in i.items()}
    heads = g["main"].view(1, 2640, 20, 112).transpose(1, 2).contiguous()  # (B, H, N, D), as SDPA returns it
    checks = [
        (
            layernorm_modulate_triton(g["x"], g["shift"], g["scale"]),
            ref.layernorm_modulate(up["x"], up["shift"], up["scale"]),
        ),
        (
            gated_residual_triton(g["x"], g["gate"], g["y"], g["extra"]),
            ref.gated_residual(up["x"], up["gate"], up["y"], up["extra"]),
        ),
        (
            gated_output_triton(g["main"], g["cam"], g["gate_out"]),
            ref.gated_output(up["main"], up["cam"], up["gate_out"]),
        ),
        (
            gated_output_triton(heads, g["cam"], g["gate_out"]),
            ref.gated_output(up["main"], up["cam"], up["gate_out"]),
        ),
    ]
    got = residual_layernorm_modulate_triton(g["x"], g["y"], g["shift"], g["scale"])
    checks += zip(got, ref.residual_layernorm_modulate(up["x"], up["y"], up["shift"], up["scale"]))
    first = {n: t["cam"][:, :880].unsqueeze(1) for n, t in (("g", g), ("up", up))}
    got = residual_layernorm_modulate_triton(
        g["x"], g["y"], g["shift"], g["scale"], gate=g["gate"], skip=g["extra"], first=first["g"]
    )
    want = ref.residual_layernorm_modulate(
        up["x"], up["y"], up["shift"], up["scale"], gate=up["gate"], skip=up["extra"], first=first["up"]
    )
    checks += zip(got, want)
    k = torch.cat([i["y"], i["x"], i["y"]], -1).view(1, 3, 880, 3, 2240)[:, :, :, 1]
    w, hist = (0.5 * torch.randn(2240, 1, 4)).bfloat16(), torch.randn(1, 3, 880, 2240).bfloat16()
    checks.append(
        (
            short_conv_k_triton(k.cuda(), w.cuda(), history=hist.cuda()),
            short_conv_k(k.float(), w.float(), history=hist.float()),
        )
    )
    for a, b in checks:
        assert a.dtype == torch.bfloat16 and rel(a, b) < 2e-2
    # dispatch on CUDA tensors takes the kernels
    assert torch.equal(kernels.gated_output(g["main"], g["cam"], g["gate_out"]), checks[2][0])
