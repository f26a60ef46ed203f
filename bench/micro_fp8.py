"""FP8 (e4m3, row-wise scales) against bf16 for the transformer's linear layers at the streaming shape.

    python bench/micro_fp8.py            # prints JSON

For every GEMM shape of one forward over 3 latent frames (2,640 tokens): bf16 ``F.linear`` time, FP8
``torch._scaled_mm`` time (weights quantised once per output channel, activations per token), the activation
quantisation time (eager amax + scale + cast), the relative error of each against an fp32 product of the same bf16
inputs, and the per-forward totals weighted by how often each shape occurs. Decides whether an FP8 path can win.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.bench import time_ms  # noqa: E402

TOKENS = 2640
# (in, out, calls per forward): 8 square projections per block, qkv, FFN inverted / point, temporal-conv taps
SHAPES = [(2240, 2240, 160 + 60), (2240, 6720, 20), (2240, 13440, 20), (6720, 2240, 20)]
E4M3_MAX = 448.0




def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> e4m3 values (M, K) and fp32 scales (M, 1) with x ~= q * scale."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / E4M3_MAX
    return (x / scale).to(torch.float8_e4m3fn), scale


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _shape_row(k: int, n: int, calls: int, device: str, reps: int) -> dict:
    x = torch.randn(TOKENS, k, device=device, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device=device) * k**-0.5).to(torch.bfloat16)
    bias = torch.randn(n, device=device, dtype=torch.bfloat16) * 0.1
    ref = x.float() @ w.float().t() + bias.float()
    wq, ws = quantize_rows(w)
    xq, xs = quantize_rows(x)
    # per-tensor scales (the cuBLAS FP8 path)
    wt_scale = w.abs().amax().float() / E4M3_MAX
    xt_scale = x.abs().amax().float() / E4M3_MAX
    wt, xt = (
        (w / wt_scale).to(torch.float8_e4m3fn),
        (x / xt_scale).to(torch.float8_e4m3fn),
    )

    def fp8(fast: bool = False) -> torch.Tensor:
        return torch._scaled_mm(
            xq,
            wq.t(),
            scale_a=xs,
            scale_b=ws.t(),
            bias=bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=fast,
        )

    def fp8_tensorwise() -> torch.Tensor:
        return torch._scaled_mm(
            xt,
            wt.t(),
            scale_a=xt_scale,
            scale_b=wt_scale,
            bias=bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )

    row = {
        "shape": [TOKENS, k, n],
        "calls": calls,
        "bf16_ms": time_ms(lambda: F.linear(x, w, bias), x.device, reps, warmup=3),
        "fp8_gemm_ms": time_ms(fp8, x.device, reps, warmup=3),
        "fp8_fast_ms": time_ms(lambda: fp8(True), x.device, reps, warmup=3),
        "fp8_tensorwise_ms": time_ms(fp8_tensorwise, x.device, reps, warmup=3),
        "quant_ms": time_ms(lambda: quantize_rows(x), x.device, reps, warmup=3),
        "bf16_rel_err": _rel(F.linear(x, w, bias), ref),
        "fp8_rel_err": _rel(fp8(), ref),
        "fp8_fast_rel_err": _rel(fp8(True), ref),
        "fp8_tensorwise_rel_err": _rel(fp8_tensorwise(), ref),
    }
    flop = 2 * TOKENS * k * n
    row["bf16_tflops"] = flop / row["bf16_ms"] / 1e9
    row["fp8_tflops"] = flop / row["fp8_gemm_ms"] / 1e9
    return row


def run(device: str = "cuda", reps: int = 50) -> dict:
    torch.manual_seed(0)
    keys = ("bf16_ms", "fp8_gemm_ms", "fp8_fast_ms", "fp8_tensorwise_ms", "quant_ms")
    rows = [_shape_row(k, n, calls, device, reps) for k, n, calls in SHAPES]
    totals = {key: sum(r[key] * r["calls"] for r in rows) for key in keys}
    return {
        "rows": rows,
        "per_forward_ms": totals,
        "device": torch.cuda.get_device_name(),
    }


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("micro_fp8 needs CUDA")
    print(json.dumps(run(), indent=1))
