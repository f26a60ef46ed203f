"""The re-tiled Triton GDN (``sana_wm.ops.gdn_triton``): split gram tiles, independent forward / reverse scan
programs, the token-major output, and the sm_90 launch shapes they were sized for.

- interpreter (CPU): fresh random inputs against the fp32 reference: B 2, several reverse segments, ``chunk_starts``
  None, seeds given / None, head dims 24 / 48 / 112 (masked tiles, 1 and 2x2 gram tiles), ``token_major``;
- ``slow``: the launched variants compile for sm_90a within the register budget the grid sizes assume;
- ``gpu``: bf16 on CUDA against the CPU fp32 reference, token-major == the transformer's permute + reshape.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from triton_interpreter import run_interpreted

ROOT = Path(__file__).resolve().parents[1]

_INTERPRETED = """

    from test_gdn_speed import fresh_inputs, worst_rel
    from sana_wm.ops import gdn as ref
    from sana_wm.ops.gdn_triton import gdn_cam_triton, gdn_main_triton

    torch.set_num_threads(1)
    worst = 0.0
    # (B, H, T, S, D, chunk_starts, seeded)
    for B, H, T, S, D, starts, seeded in [
        (1, 1, 3, 5, 112, None, True),
        (2, 1, 4, 6, 48, [0, 2, 3], False),
        (2, 2, 5, 3, 24, [0, 1, 3], True),
        (1, 1, 2, 4, 64, None, True),  # D == BLOCK_D: no padding column, the normaliser sum per step
    ]:
        (q, k, qr, kr, v), beta, g, skv, sz = fresh_inputs(B, H, T, S, D, seed=D)
        skv, sz = (skv, sz) if seeded else (None, None)
        want = ref.gdn_main(q, k, qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv, state_z=sz)
        got = gdn_main_triton(q, k, qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv, state_z=sz,
                              token_major=D == 24)
        if D == 24:
            assert got[0].shape == (B, T * S, H * D), got[0].shape
            want = (want[0].permute(0, 2, 3, 1, 4).reshape(B, T * S, H * D), *want[1:])
        worst = max(worst, worst_rel(got, want))
        want = ref.gdn_cam(qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv)
        worst = max(worst, worst_rel(gdn_cam_triton(qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv), want))
    print("WORST", worst)
    """


def fresh_inputs(B: int, H: int, T: int, S: int, D: int, seed: int):
    """Random GDN inputs in the kernels' operating range (fp32, CPU): non-negative q/k with rows of norm ~1
    (ReLU'd, key-scaled), rotated copies, beta in (0, 1), g in (0.6, 0.99), small seed states."""
    gen = torch.Generator().manual_seed(seed)
    shape = (B, H, T, S, D)
    q, k = (torch.rand(shape, generator=gen) / D**0.5 for _ in range(2))
    rot = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]
    q_rot, k_rot = q @ rot, k @ rot
    v = torch.randn(shape, generator=gen)
    beta = torch.sigmoid(torch.randn(B, H, T, S, generator=gen))
    g = 0.6 + 0.39 * torch.rand(B, H, T, generator=gen)
    return (
        (q, k, q_rot, k_rot, v),
        beta,
        g,
        0.05 * torch.randn(B, H, D, D, generator=gen),
        torch.rand(B, H, D, generator=gen) / D,
    )


def worst_rel(got, want) -> float:
    return max(float((a.double() - b.double()).norm() / b.double().norm()) for a, b in zip(got, want, strict=True))


def test_gdn_triton_in_interpreter():
    pytest.importorskip("triton")
    numbers = run_interpreted(_INTERPRETED, timeout=600)
    assert numbers[0] < 1e-5  # fp32: the references to rounding


# integer arguments of the streaming launch (B 1, H 20, T 3, S 880, D 112; keys / queries contiguous (B, H, T, S, D),
# v a head view of the merged projection's output, beta a permuted (B, N, H) view, g a transposed (B, T, H) view)
_KEYS = {"sb": 20 * 3 * 880 * 112, "sh": 3 * 880 * 112, "st": 880 * 112, "ss": 112}
_STREAMING_INTS = {
    "H": 20,
    "T": 3,
    "S": 880,
    "D": 112,
    **{f"{t}_{k}": v for t in ("ka", "kz", "qr", "q", "o") for k, v in _KEYS.items()},
    **{"v_sb": 2640 * 15744, "v_sh": 112, "v_st": 880 * 15744, "v_ss": 15744},
    **{"be_sb": 2640 * 20, "be_sh": 1, "be_st": 880 * 20, "be_ss": 20},
    **{"g_sb": 60, "g_sh": 1, "g_st": 20},
}


@pytest.mark.slow
def test_gdn_launch_shapes_fit_sm90():
    """The variants ``_run`` launches at head dim 112 compile for sm_90a, specialised as the streaming launch is
    (16-byte aligned pointers and the multiples of 16 among its integers), within the registers their grids assume:
    gram without spills, its loads pipelined through shared memory; scan <= 80 registers (3 per SM: the 320 streaming
    programs in one wave); out without spills."""
    pytest.importorskip("triton")
    from sm90 import compile_sm90, cuobjdump, launch_attrs, resource_usage

    from sana_wm.ops import gdn_triton as G

    if cuobjdump() is None:
        pytest.skip("Triton ships no cuobjdump here")

    def usage(fn, ptrs: dict, options: dict, **constexprs) -> tuple[int, int, int]:
        attrs = launch_attrs(fn, ptrs, _STREAMING_INTS)
        kernel = compile_sm90(fn, ptrs, constexprs, floats=("eps",), options=options, attrs=attrs)
        fields = resource_usage(kernel)
        return fields["REG"], fields["STACK"], kernel.metadata.shared

    bf, f32 = "*bf16", "*fp32"
    gram_ptrs = {"ka_ptr": bf, "kz_ptr": bf, "v_ptr": bf, "be_ptr": bf, "gram_ptr": f32, "bsum_ptr": f32}
    scan_ptrs = {n: f32 for n in ("gram_ptr", "bsum_ptr", "g_ptr", "init_kv_ptr", "init_z_ptr", "work_ptr")}
    scan_ptrs |= {"work_z_ptr": f32, "seg_last_ptr": "*i32"}
    out_ptrs = {"qr_ptr": bf, "q_ptr": bf, "work_ptr": f32, "work_z_ptr": f32, "out_ptr": bf}
    for has_z in (True, False):
        njobs = 3 if has_z else 2
        for ones_col in (True, False):  # head dim 112 (the normaliser sum from the padding column) / 128
            gram = dict(G.GRAM_LAUNCH)
            regs, stack, shared = usage(
                G._gdn_gram_kernel,
                gram_ptrs,
                {"num_warps": gram.pop("num_warps")},
                NJOBS=njobs,
                BLOCK_D=128,
                DOT_F32=False,
                ONES_COL=ones_col,
                **gram,
            )
            assert regs <= 128 and stack == 0 and shared >= 2 * 2 * 64 * 64 * 2, (regs, stack, shared)
        regs, stack, _ = usage(
            G._gdn_scan_kernel,
            scan_ptrs,
            G._scan_launch(128),
            NJOBS=njobs,
            HAS_Z=has_z,
            BLOCK_D=128,
            BLOCK_V=16,
            BLOCK_K=16,
        )
        assert regs <= 80 and stack <= 128, (regs, stack)
        flags = {"HAS_Z": has_z, "BLOCK_S": 64, "BLOCK_D": 128, "DOT_F32": False}
        regs, stack, _ = usage(G._gdn_out_kernel, out_ptrs, {"num_warps": 8}, **flags)
        assert stack == 0, (regs, stack)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gdn_triton_cuda_segments_and_token_major(dtype):
    from sana_wm.ops import gdn as ref
    from sana_wm.ops.gdn_triton import gdn_cam_triton, gdn_main_triton

    B, H, T, S, D, starts = 2, 3, 7, 45, 112, [0, 3, 4]
    (q, k, qr, kr, v), beta, g, skv, sz = fresh_inputs(B, H, T, S, D, seed=7)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    cuda = [x.cuda().to(dtype) for x in (q, k, qr, kr, v, beta)]
    # the reference sees the rounded inputs, so the bound measures the kernels, not the input rounding
    want = ref.gdn_main(*(x.cpu().float() for x in cuda), g, chunk_starts=starts, state_kv=skv, state_z=sz)
    got = gdn_main_triton(*cuda, g.cuda(), chunk_starts=starts, state_kv=skv.cuda(), state_z=sz.cuda())
    assert worst_rel([x.cpu() for x in got], want) <= tol
    tm = gdn_main_triton(
        *cuda, g.cuda(), chunk_starts=starts, state_kv=skv.cuda(), state_z=sz.cuda(), token_major=True
    )[0]
    assert torch.equal(tm, got[0].permute(0, 2, 3, 1, 4).reshape(B, T * S, H * D))
    want = ref.gdn_cam(*(x.cpu().float() for x in (cuda[2], cuda[3], cuda[4], cuda[5])), g, chunk_starts=starts)
    got = gdn_cam_triton(cuda[2], cuda[3], cuda[4], cuda[5], g.cuda(), chunk_starts=starts)
    assert worst_rel([x.cpu() for x in got], want) <= tol
