"""The tiled q / k / v preparation kernels (``sana_wm.ops.qk_prep_triton``) against the PyTorch references.

- CPU: Triton's interpreter on fresh random inputs with several token blocks and a partial last block (105 tokens),
  B = 2, strided projections (q, k, v as column slices of one packed tensor; a (B, N, H, D)-strided decode input),
  masked head tiles (D = 24, 32, 48); the kernels compile for sm_90a without register spills (slow).
- GPU: the same checks at the real head dim (112) in bf16 on CUDA.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_kernels_gpu import prep_inputs, rel

from sana_wm.ops import qk_prep as prep_ref
from triton_interpreter import run_interpreted

ROOT = Path(__file__).resolve().parents[1]


def packed(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x, y, z (B, N, C) as column slices of one (B, N, 3C) tensor (row stride 3C, like a fused qkv projection)."""
    qkv = torch.cat([x, y, z], dim=-1)
    C = x.shape[-1]
    return qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]


def all_pairs(
    B: int,
    T: int,
    h: int,
    w: int,
    H: int,
    D: int,
    seed: int,
    dtype: torch.dtype,
    device: str,
):
    """(got, want) output tuples of every entry point: Triton on ``device`` in ``dtype`` vs the CPU fp32 reference."""
    from sana_wm.ops.qk_prep_triton import (
        prep_camera_triton,
        prep_gdn_qk_triton,
        prep_softmax_qk_triton,
        ucpe_decode_triton,
    )

    (q, k, v, wq, wk), rope, rope_cam, ray_q, ray_kv, beta = prep_inputs(B, T, h, w, H, D, seed=seed)
    ks = (D * h * w) ** -0.5
    dq, dk, dv = packed(*(x.to(device, dtype) for x in (q, k, v)))
    dwq, dwk, drope, drc, drq, drkv = (x.to(device) for x in (wq, wk, rope, rope_cam, ray_q, ray_kv))
    dwq, dwk = dwq.to(dtype), dwk.to(dtype)
    dbeta = beta.to(device, dtype)
    x = torch.randn(B, T * h * w, H, D, generator=torch.Generator().manual_seed(seed + 1))
    dx = x.to(device, dtype).transpose(1, 2)  # (B, H, N, D) view of a token-major tensor
    cam = (dq, dk, dv, dwq, dwk, drq, drkv, drc)
    cam_ref = (q, k, v, wq, wk, ray_q, ray_kv, rope_cam)
    return [
        (
            prep_gdn_qk_triton(dq, dk, dwq, dwk, drope, heads=H, key_scale=ks),
            prep_ref.prep_gdn_qk(q, k, wq, wk, rope, heads=H, key_scale=ks),
        ),
        (
            prep_softmax_qk_triton(dq, dk, dwq, dwk, drope, heads=H),
            prep_ref.prep_softmax_qk(q, k, wq, wk, rope, heads=H),
        ),
        (
            prep_camera_triton(*cam, heads=H, key_scale=ks, beta=dbeta),
            prep_ref.prep_camera(*cam_ref, heads=H, key_scale=ks, beta=beta),
        ),
        (
            prep_camera_triton(*cam, heads=H, key_scale=ks, beta=dbeta, rms_downscale=True),
            prep_ref.prep_camera(*cam_ref, heads=H, key_scale=ks, beta=beta, rms_downscale=True),
        ),
        (
            prep_camera_triton(*cam, heads=H, rms_downscale=True)[:3],
            prep_ref.prep_camera(*cam_ref, heads=H, rms_downscale=True)[:3],
        ),
        (
            (ucpe_decode_triton(dx, drq, drc),),
            (prep_ref.ucpe_decode(x.transpose(1, 2), ray_q, rope_cam),),
        ),
    ]


def worst_error(pairs) -> float:
    worst = 0.0
    for got, want in pairs:
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape, (a.shape, b.shape)
            worst = max(worst, rel(a, b))
    return worst


# pointer argument types of the prep kernels (offline sm_90a compiles)
PREP_POINTERS = {
    n: "*bf16"
    for n in ("q_ptr", "k_ptr", "v_ptr", "q_out", "k_out", "v_out", "q_plain_out", "k_plain_out", "wq_ptr", "wk_ptr")
} | {n: "*fp32" for n in ("inv_ptr", "rope_ptr", "mq_ptr", "mkv_ptr", "infl_out")}
# integer arguments at the streaming shape (2,640 tokens, 20 heads x 112; q / v views of the merged projection's
# output, k the short conv's contiguous output, outputs (B, H, N, D)), which a launch specialises
_OUT = {"sb": 2640 * 2240, "sh": 2640 * 112, "sn": 112}
STREAMING_INTS = {
    "N": 2640,
    "C": 2240,
    "H": 20,
    "D": 112,
    "ROPE_PAIRS": 28,
    "q_sb": 2640 * 15744,
    "q_sn": 15744,
    "k_sb": 2640 * 2240,
    "k_sn": 2240,
    "v_sb": 2640 * 15744,
    "v_sn": 15744,
    "x_sb": 2640 * 2240,
    "x_sh": 2640 * 112,
    "x_sn": 112,
    **{f"{t}_{k}": v for t in ("qo", "ko", "vo") for k, v in _OUT.items()},
}


_INTERPRETED = """

    from test_qk_prep_speedup import all_pairs, worst_error

    torch.set_num_threads(1)
    worst = 0.0
    # (B, T, h, w, H, D): 105 tokens = 6 full blocks of 16 + 9; 3 heads of 32; one block, one head of 48
    for i, case in enumerate([(2, 3, 5, 7, 2, 24), (1, 2, 3, 7, 3, 32), (2, 1, 2, 3, 1, 48)]):
        worst = max(worst, worst_error(all_pairs(*case, seed=10 + i, dtype=torch.float32, device="cpu")))
    print("WORST", worst)
    """


def test_tiled_prep_kernels_in_triton_interpreter():
    pytest.importorskip("triton")
    numbers = run_interpreted(_INTERPRETED, timeout=600)
    worst = numbers[0]
    assert worst < 1e-6  # fp32 inputs: same fp32 math as the references, up to summation order


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-5)])
def test_tiled_prep_kernels_on_cuda(dtype, tol):
    # 2 x 105 tokens (partial last block), the real head dim (112 -> masked 128-wide tile), strided inputs
    assert worst_error(all_pairs(2, 3, 5, 7, 4, 112, seed=3, dtype=dtype, device="cuda")) <= tol


@pytest.mark.slow
def test_tiled_prep_kernels_compile_for_sm90_without_spills():
    """Every prep / decode variant compiles to an sm_90a cubin, specialised as the streaming launch is; where Triton
    ships cuobjdump, no local memory."""
    pytest.importorskip("triton")
    from sm90 import compile_sm90, launch_attrs, resource_usage

    from sana_wm.ops import qk_prep_triton as Q

    def compile_(fn, ptrs: dict, floats=(), **constexprs):
        attrs = launch_attrs(fn, ptrs, STREAMING_INTS)
        usage = resource_usage(compile_sm90(fn, ptrs, constexprs, floats=floats, attrs=attrs))
        assert usage is None or (usage["LOCAL"] == 0 and usage["STACK"] == 0), usage

    bf, f32 = "*bf16", "*fp32"
    compile_(
        Q._prep_kernel_rms,
        {"q_ptr": bf, "k_ptr": bf, "inv_ptr": f32},
        floats=("eps",),
        BLOCK_N=4,
        BLOCK_C=512,
    )
    ptrs = PREP_POINTERS
    # GDN main, softmax main, GDN camera (streaming), softmax camera with the down-scale (bidirectional)
    for mode, relu, plain, downscale, inflation in (
        (0, True, True, False, False),
        (0, False, False, False, False),
        (1, True, False, False, True),
        (1, False, False, True, False),
    ):
        compile_(
            Q._prep_kernel,
            ptrs,
            floats=("key_scale",),
            MODE=mode,
            RELU=relu,
            PLAIN=plain,
            DOWNSCALE=downscale,
            INFLATION=inflation,
            BLOCK_N=Q._BLOCK_N,
            BLOCK_D=128,
        )
    dec_ptrs = {"x_ptr": bf, "rope_ptr": f32, "mat_ptr": f32, "out_ptr": bf}
    compile_(Q._ucpe_decode_kernel, dec_ptrs, BLOCK_N=Q._BLOCK_N, BLOCK_D=128)
