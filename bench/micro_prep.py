"""The q / k / v preparation kernels and the camera-branch output decode at the streaming shape.

    python bench/micro_prep.py            # prints JSON (CUDA only)

Shape of one call: B 1, 3 latent frames x 22 x 40 = 2,640 tokens, C 2,240 = 20 heads x 112, bf16. Per forward the
transformer makes 40 prep calls (15 GDN blocks: ``prep_gdn_qk`` + ``prep_camera`` with key scale and beta; 5 softmax
blocks: ``prep_softmax_qk`` + ``prep_camera`` without) and 20 ``ucpe_decode`` calls. For each entry point: median
time (CUDA events) of the PyTorch reference (``sana_wm.ops.qk_prep``) and of the Triton path
(``sana_wm.ops.qk_prep_triton``), both on the same bf16 inputs; the Triton outputs' error against the fp32
reference of those inputs (norm ratio ``rel`` and ``max_rel`` = max abs error / max |reference|); the bytes one
call must move (inputs read once, outputs written once) and the Triton path's effective bandwidth. Also: the row
statistics kernel alone and at other tiles (``RMS_SWEEP``), the Triton path at other token-block sizes
(``_BLOCK_N``), and the per-forward totals.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_check import LAT_H, LAT_W, S_FULL, camera_rays, cuda_ms, projections

from sana_wm.ops import qk_prep as ref
from sana_wm.ops import qk_prep_triton as tri
from sana_wm.ops.rope import rope_frequencies, slice_rope_for_camera

HEADS, HEAD_DIM, FRAMES = 20, 112, 3
CALLS_PER_FORWARD = {"prep_gdn_qk": 15, "prep_camera_gdn": 15, "prep_softmax_qk": 5, "prep_camera_softmax": 5}
DECODE_CALLS_PER_FORWARD = 20
BLOCK_N_SWEEP = (8, 16, 32)
RMS_SWEEP = ((4, 512, 4), (4, 1024, 4), (8, 512, 8), (2, 1024, 4), (1, 4096, 4), (2, 4096, 8), (16, 256, 8))


def _errors(got: tuple, want: tuple) -> dict:
    rel, max_rel = 0.0, 0.0
    for a, b in zip(got, want, strict=True):
        d = a.double() - b.double()
        rel = max(rel, float(d.norm() / b.double().norm()))
        max_rel = max(max_rel, float(d.abs().max() / b.double().abs().max()))
    return {"rel": rel, "max_rel": max_rel}


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _as_tuple(x) -> tuple:
    return tuple(t for t in x if t is not None) if isinstance(x, tuple) else (x,)


def run(device: str = "cuda", reps: int = 50) -> dict:
    """Times every prep entry point and ``ucpe_decode`` (reference vs Triton) at the streaming shape; see the module
    docstring for the fields. ``us`` values are medians in microseconds."""
    dev = torch.device(device)
    bf = torch.bfloat16
    H, D = HEADS, HEAD_DIM
    (q, k, v), wq, wk, _ = projections(1, FRAMES, H, D, seed=22)
    q, k, v, wq, wk = (x.to(dev, bf) for x in (q, k, v, wq, wk))
    rope = rope_frequencies(D, torch.arange(7, 7 + FRAMES), LAT_H, LAT_W).to(dev)
    rope_cam = slice_rope_for_camera(rope, D)
    ray_q, ray_kv = (x.to(dev) for x in camera_rays(1, FRAMES, LAT_H, LAT_W, seed=23))
    beta = torch.sigmoid(torch.randn(1, H, FRAMES, S_FULL, device=dev)).to(bf)
    x_dec = torch.randn(1, H, FRAMES * S_FULL, D, device=dev, dtype=bf)  # attention output (B, H, N, D)
    ks = (D * S_FULL) ** -0.5

    def f32(*xs):
        return tuple(x.float() for x in xs)

    cases = {
        "prep_gdn_qk": (
            lambda m, a: m.prep_gdn_qk(*a[:2], *a[3:5], rope, heads=H, key_scale=ks),
            lambda: tri.prep_gdn_qk_triton(q, k, wq, wk, rope, heads=H, key_scale=ks),
            (q, k, v, wq, wk),
            (q, k),
        ),
        "prep_softmax_qk": (
            lambda m, a: m.prep_softmax_qk(*a[:2], *a[3:5], rope, heads=H),
            lambda: tri.prep_softmax_qk_triton(q, k, wq, wk, rope, heads=H),
            (q, k, v, wq, wk),
            (q, k),
        ),
        "prep_camera_gdn": (
            lambda m, a: m.prep_camera(*a[:5], ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=a[5]),
            lambda: tri.prep_camera_triton(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=beta),
            (q, k, v, wq, wk, beta),
            (q, k, v, beta),
        ),
        "prep_camera_softmax": (
            lambda m, a: m.prep_camera(*a[:5], ray_q, ray_kv, rope_cam, heads=H),
            lambda: tri.prep_camera_triton(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H),
            (q, k, v, wq, wk),
            (q, k, v),
        ),
        "prep_camera_bidirectional": (
            lambda m, a: m.prep_camera(*a[:5], ray_q, ray_kv, rope_cam, heads=H, rms_downscale=True),
            lambda: tri.prep_camera_triton(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, rms_downscale=True),
            (q, k, v, wq, wk),
            (q, k, v),
        ),
        "ucpe_decode": (
            lambda m, a: m.ucpe_decode(a[0], ray_q, rope_cam),
            lambda: tri.ucpe_decode_triton(x_dec, ray_q, rope_cam),
            (x_dec,),
            (x_dec,),
        ),
    }

    out: dict = {"shape": {"B": 1, "N": FRAMES * S_FULL, "C": H * D, "H": H, "D": D, "dtype": "bfloat16"}}
    out["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    default_block_n = tri._BLOCK_N
    for name, (ref_call, tri_call, args, reads) in cases.items():
        got = _as_tuple(tri_call())
        want = _as_tuple(ref_call(ref, f32(*args)))
        moved = _nbytes(*reads) + _nbytes(*got)
        ref_us = 1e3 * cuda_ms(lambda ref_call=ref_call, args=args: ref_call(ref, args), reps)
        tri_us = 1e3 * cuda_ms(tri_call, reps)
        row = {
            "reference_us": round(ref_us, 1),
            "triton_us": round(tri_us, 1),
            "speedup": round(ref_us / tri_us, 2),
            "error_vs_fp32": _errors(got, want),
            "reference_bf16_error_vs_fp32": _errors(_as_tuple(ref_call(ref, args)), want),
            "min_bytes_MB": round(moved / 1e6, 2),
            "triton_GBps": round(moved / tri_us / 1e3, 1),
            "floor_us_at_3TBps": round(moved / 3e6, 1),
        }
        sweep = {}
        for block_n in BLOCK_N_SWEEP:
            tri._BLOCK_N = block_n
            try:
                sweep[block_n] = round(1e3 * cuda_ms(tri_call, reps), 1)
            finally:
                tri._BLOCK_N = default_block_n
        row["triton_us_by_block_n"] = sweep
        out[name] = row
        print(
            f"{name:26s} ref {ref_us:8.1f} us  triton {tri_us:7.1f} us  {row['triton_GBps']:7.1f} GB/s", file=sys.stderr
        )

    inv = torch.empty(2, 1, q.shape[1], dtype=torch.float32, device=dev)

    N, C = q.shape[1], q.shape[2]
    strides = (q.stride(0), q.stride(1), k, k.stride(0), k.stride(1))
    rms_blocks = (-(-N // tri._RMS_BLOCK_N), 1)

    def rms_only():
        tri._prep_kernel_rms[rms_blocks](
            q, *strides, inv, N, C, 1e-5, BLOCK_N=tri._RMS_BLOCK_N, BLOCK_C=tri._RMS_BLOCK_C
        )

    out["row_stats_kernel_us"] = round(1e3 * cuda_ms(rms_only, reps), 1)
    sweep = {}
    for block_n, block_c, warps in RMS_SWEEP:

        def rms_variant(block_n=block_n, block_c=block_c, warps=warps):
            tri._prep_kernel_rms[(-(-N // block_n), 1)](
                q, *strides, inv, N, C, 1e-5, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps
            )

        sweep[f"{block_n} tokens x {block_c} channels, {warps} warps"] = round(1e3 * cuda_ms(rms_variant, reps), 1)
    out["row_stats_sweep_us"] = sweep
    out["row_stats_error_vs_fp32"] = float(
        (inv[0, 0] - torch.rsqrt(q.float().pow(2).mean(-1) + 1e-5)[0]).abs().max() / inv[0, 0].abs().max()
    )
    per_forward = {}
    for path in ("reference_us", "triton_us"):
        total = sum(n * out[name][path] for name, n in CALLS_PER_FORWARD.items())
        per_forward[path.replace("_us", "_prep_ms")] = round(total / 1e3, 3)
        per_forward[path.replace("_us", "_decode_ms")] = round(
            DECODE_CALLS_PER_FORWARD * out["ucpe_decode"][path] / 1e3, 3
        )
    out["per_forward"] = per_forward
    return out


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("micro_prep: needs CUDA")
    print(json.dumps(run(), indent=1))
