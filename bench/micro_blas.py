"""The transformer's GEMMs inside a CUDA graph with and without a cuBLAS workspace (``sana_wm.cuda_graph.capture``).

    python bench/micro_blas.py [--fallbacks]   # prints JSON (CUDA only)

Shapes of one streaming forward (B 1, 3 latent frames = 2,640 tokens, hidden 2,240, bf16): the merged input
projection of a block (2,240 -> 15,744 rows, bias), the FFN's input linear (2,240 -> 13,440, bias) and output linear
(6,720 -> 2,240), the 2,240 -> 2,240 projections (bias). Each case is a graph of ``CALLS`` back-to-back calls, captured
once with the default workspace and once with workspace size 0; per case: median us per call, the kernel cuBLAS chose
and the memset nodes per call (from the profiler). With a workspace cuBLAS picks kernels that zero a counter in it
first (one memset node per GEMM, with ~7 us of idle device around it in a graph); without one, their ``ssched``
twins.

``--fallbacks``: which token counts make cuBLASLt refuse a bias GEMM without a workspace (it then warns
``gemm_and_bias error ... CUBLAS_STATUS_INVALID_VALUE`` and torch runs the product and the bias add unfused): every
case's shape at the token counts of 1 and 3 latent frames at several resolutions, B = 1 and 2, plus the tiny test
model's 12 tokens; per refused shape, the graph's us per call with and without a workspace.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trace_forward import trace  # noqa: E402

from sana_wm.cuda_graph import _no_blas_workspace  # noqa: E402
from server.bench import time_ms  # noqa: E402

M, C = 2640, 2240
CASES = {  # name: (in features, out features, bias)
    "merged_projection": (C, 15744, True),
    "ffn_in": (C, 13440, True),
    "ffn_out": (6720, C, False),
    "projection": (C, C, True),
}
CALLS = 10


def _graph(fn, workspace: bool) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if workspace:
        with torch.cuda.graph(graph):
            for _ in range(CALLS):
                fn()
    else:
        with _no_blas_workspace(), torch.cuda.graph(graph):
            for _ in range(CALLS):
                fn()
    return graph


def run(reps: int = 30) -> dict:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    out: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "runtime_workspace_api": hasattr(torch.backends.cuda, "cublas_workspace_size"),
    }
    for name, (k, n, has_bias) in CASES.items():
        x = torch.randn(M, k, device=dev, dtype=torch.bfloat16, generator=gen)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * k**-0.5
        b = torch.randn(n, device=dev, dtype=torch.bfloat16, generator=gen) if has_bias else None
        row = {}
        for label, workspace in (("workspace", True), ("no_workspace", False)):
            graph = _graph(lambda: F.linear(x, w, b), workspace)
            events = trace(graph.replay)
            row[label] = {
                "us": round(1e3 * time_ms(graph.replay, dev, reps, warmup=3) / CALLS, 2),
                "memsets_per_call": sum(e["cat"] == "gpu_memset" for e in events) / CALLS,
                "kernel": sorted({e["name"][:80] for e in events if e["cat"] == "kernel"}),
            }
        row["tflops_no_workspace"] = round(2 * M * k * n / row["no_workspace"]["us"] / 1e6, 1)
        out[name] = row
    return out


#: Latent grids (height, width) after the 32x VAE: 704x1280, 480x832, 512x512, 736x1280, and the tiny tests' 2x2.
GRIDS = ((22, 40), (15, 26), (16, 16), (23, 40), (2, 2))


def fallbacks(reps: int = 20) -> dict:
    """Token counts (rows) at which a bias GEMM of ``CASES`` has no cuBLASLt kernel without a workspace."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    tokens = sorted({batch * frames * h * w for h, w in GRIDS for frames in (1, 3) for batch in (1, 2)})
    refused = []
    for name, (k, n, has_bias) in CASES.items():
        if not has_bias:
            continue
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * k**-0.5
        b = torch.randn(n, device=dev, dtype=torch.bfloat16, generator=gen)
        for rows in tokens:
            x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16, generator=gen)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                graph = _graph(lambda: F.linear(x, w, b), workspace=False)
            if any("gemm_and_bias" in str(c.message) for c in caught):
                with_ws = _graph(lambda: F.linear(x, w, b), workspace=True)
                refused.append({
                    "case": name, "tokens": rows,
                    "us_no_workspace": round(1e3 * time_ms(graph.replay, dev, reps, warmup=3) / CALLS, 2),
                    "us_workspace": round(1e3 * time_ms(with_ws.replay, dev, reps, warmup=3) / CALLS, 2),
                })
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": tokens, "refused": refused}


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("micro_blas needs CUDA")
    print(json.dumps(fallbacks() if "--fallbacks" in sys.argv else run(), indent=1))
