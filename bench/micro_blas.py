"""The transformer's GEMMs inside a CUDA graph with and without a cuBLAS workspace (``sana_wm.cuda_graph.capture``).

    python bench/micro_blas.py            # prints JSON (CUDA only)

Shapes of one streaming forward (B 1, 3 latent frames = 2,640 tokens, hidden 2,240, bf16): the merged input
projection of a block (2,240 -> 15,744 rows, bias), the FFN's input linear (2,240 -> 13,440, bias) and output linear
(6,720 -> 2,240), the 2,240 -> 2,240 projections (bias). Each case is a graph of ``CALLS`` back-to-back calls, captured
once with the default workspace and once with workspace size 0; per case: median us per call, the kernel cuBLAS chose
and the memset nodes per call (from the profiler). With a workspace cuBLAS picks kernels that zero a counter in it
first (one memset node per GEMM, with ~7 us of idle device around it in a graph); without one, their ``ssched``
twins.
"""

from __future__ import annotations

import json
import sys
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


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("micro_blas needs CUDA")
    print(json.dumps(run(), indent=1))
