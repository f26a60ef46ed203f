"""Block glue: the transformer's old torch expressions against the fused Triton kernels at the streaming shape.

    python bench/micro_glue.py            # prints JSON (CUDA, bf16, B 1, T 3, S 880, C 2240)

``run(device="cuda", reps=50)`` returns, per fused op: the median GPU time of the old expressions and of the kernel
(us per call, 10 back-to-back calls per timed sample so launch gaps do not count, as under the chunk's CUDA graph),
calls per forward (streaming 2.6B preset), the relative error of both against an fp32 reference on the same bf16
inputs, and the per-forward totals. ``shape`` (B, T, S, C) and a CPU device (under ``TRITON_INTERPRET=1``) serve as a
smoke test.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
import torch.nn.functional as F

from sana_wm.config import SanaWMConfig
from sana_wm.ops import modulation as ref
from sana_wm.ops.modulation_triton import (
    gated_output_triton,
    gated_residual_triton,
    layernorm_modulate_triton,
    residual_layernorm_modulate_triton,
)
from sana_wm.ops.short_conv_triton import short_conv_k_triton
from sana_wm.ops.temporal_conv import short_conv_k

INNER = 10


def _us(fn, reps: int, cuda: bool) -> float:
    """Median time of one call in microseconds."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(INNER):
                fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3 / INNER)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def _rel(a, b) -> float:
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return max(float((x.double().cpu() - y.double().cpu()).norm() / y.double().cpu().norm()) for x, y in zip(a, b))


def _old_modulate(x, shift, scale):
    B, N, C = x.shape
    T = shift.shape[1]
    return torch.addcmul(shift, F.layer_norm(x, (C,), eps=1e-6).view(B, T, -1, C), 1 + scale).view(B, N, C)


def _old_gated_residual(x, gate, y, extra):
    B, N, C = x.shape
    T = gate.shape[1]
    return torch.addcmul(x.view(B, T, -1, C), gate, y.view(B, T, -1, C)).view(B, N, C) + extra


def _old_residual_modulate(x, y, shift, scale):
    x = x + y
    return x, _old_modulate(x, shift, scale)


def _old_gated_output(main, cam, gate):
    combined = main + cam
    combined = combined * F.silu(gate.to(torch.float32))
    return combined.to(main.dtype)


def run(device: str = "cuda", reps: int = 50, shape: tuple[int, int, int, int] = (1, 3, 880, 2240)) -> dict:
    """Old expressions vs Triton kernels; see the module docstring."""
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16
    B, T, S, C = shape
    N = T * S
    gen = torch.Generator().manual_seed(0)

    def rand(*size, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*size, generator=gen)).to(dtype).to(device)

    x, y, extra, main, cam, gate_out = (rand(B, N, C, shift=s) for s in (3.0, 0, 0, 0, 0, 0))
    shift, scale, gate = (0.3 * torch.randn(B, T, 3, C, generator=gen)).to(dtype).to(device).unsqueeze(3).unbind(2)
    qkv = rand(B, N, 3, C)
    k = qkv[:, :, 1].reshape(B, T, S, C)  # strided like the fused projection's K slice
    w = rand(C, 1, 4, scale=0.5)
    hist = rand(B, 3, S, C)

    cfg = SanaWMConfig.preset("streaming-2.6b")
    gdn_blocks = cfg.num_layers - len(cfg.softmax_blocks)
    plucker_blocks = sum(cfg.has_plucker_proj(i) for i in range(cfg.num_layers))

    def f32(*ts):
        return tuple(t.float().cpu() for t in ts)

    cases = {
        "layernorm_modulate": (
            cfg.num_layers,
            lambda: _old_modulate(x, shift, scale),
            lambda: layernorm_modulate_triton(x, shift, scale),
            lambda: ref.layernorm_modulate(*f32(x, shift, scale)),
        ),
        "residual_layernorm_modulate": (
            cfg.num_layers,
            lambda: _old_residual_modulate(x, y, shift, scale),
            lambda: residual_layernorm_modulate_triton(x, y, shift, scale),
            lambda: ref.residual_layernorm_modulate(*f32(x, y, shift, scale)),
        ),
        "gated_residual_plus_plucker": (
            plucker_blocks,
            lambda: _old_gated_residual(x, gate, y, extra),
            lambda: gated_residual_triton(x, gate, y, extra),
            lambda: ref.gated_residual(*f32(x, gate, y, extra)),
        ),
        "gated_output": (
            cfg.num_layers,
            lambda: _old_gated_output(main, cam, gate_out),
            lambda: gated_output_triton(main, cam, gate_out),
            lambda: ref.gated_output(*f32(main, cam, gate_out)),
        ),
        "short_conv_k_history": (
            gdn_blocks,
            lambda: short_conv_k(k, w, history=hist),
            lambda: short_conv_k_triton(k, w, history=hist),
            lambda: short_conv_k(*f32(k, w), history=hist.float().cpu()),
        ),
        "short_conv_k_camera": (
            gdn_blocks,
            lambda: short_conv_k(k, w, cross_chunk=False),
            lambda: short_conv_k_triton(k, w),
            lambda: short_conv_k(*f32(k, w), cross_chunk=False),
        ),
    }
    rows, old_total, new_total = {}, 0.0, 0.0
    for name, (calls, old, new, want) in cases.items():
        truth = want()
        row = {
            "calls_per_forward": calls,
            "old_us": _us(old, reps, cuda),
            "triton_us": _us(new, reps, cuda),
            "old_rel_err": _rel(old(), truth),
            "triton_rel_err": _rel(new(), truth),
        }
        row["saving_us_per_forward"] = calls * (row["old_us"] - row["triton_us"])
        old_total += calls * row["old_us"]
        new_total += calls * row["triton_us"]
        rows[name] = row
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": {"B": B, "T": T, "S": S, "C": C, "dtype": "bf16"},
        "ops": rows,
        "per_forward_old_ms": old_total / 1e3,
        "per_forward_triton_ms": new_total / 1e3,
        "per_forward_saving_ms": (old_total - new_total) / 1e3,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
