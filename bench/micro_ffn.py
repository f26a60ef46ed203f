"""The FFN glue between the two 1x1 linears (SiLU -> depthwise 3x3 + bias -> GLU) at the streaming shape.

    python bench/micro_ffn.py                      # prints JSON (CUDA only); baseline from git
    python bench/micro_ffn.py --baseline ab_base   # baseline: ab_base/ffn_triton.py (bench/ab_forward.py --export)

One call per transformer block and forward (20 per forward): h (3 frames x 22 x 40 = 2,640 tokens, 2M = 13,440) bf16.
Times (CUDA events around one CUDA graph of 20 back-to-back calls, as in the transformer's graph: median ms per call)
the old path as the transformer ran it before ``glu_dwconv`` (separate SiLU, cuDNN channels-last depthwise conv with
bias, SiLU of the gate half, product), the PyTorch reference (``sana_wm.ops.ffn.glu_dwconv``: the same ops plus its
argument checks), the Triton kernel at its default tile and the other candidate tiles (``TILES``) and the previous
kernel (``baseline``: ``BASELINE_REV`` from git, or the module file given with ``--baseline``); reports each one's
error against the fp32 reference of the same bf16 inputs, the kernel's effective memory bandwidth (71 MB read + 35 MB
written per call) and the per-forward saving of the fastest tile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from baseline import module_at, module_from

FRAMES, HEIGHT, WIDTH, HALF = 3, 22, 40, 6720  # 704 x 1280, 3 latent frames; mlp hidden M = 6720
CALLS_PER_FORWARD = 20
# ffn_triton.py before the tanh form of SiLU (two MUFU ops per SiLU: 60.4 us per call on an H100), timed in the same
# run when git and the revision are there
BASELINE_REV = "e2cb59e"
ROOT = Path(__file__).resolve().parents[1]
# (block_x, block_c, num_warps): output columns x channels of each half per program; the first is the default
# (``GLU_LAUNCH``). sm_90a with the tanh SiLU, no spills, registers (programs per SM): 10x64w2 149 (6), 8x64w2 128 (8),
# 16x64w2 227 (4), 6x64w2 114 (8), 5x64w2 96 (10), 4x64w2 87 (11), 8x128w2 217 (4; 2 channels per thread),
# 8x128w4 118 (4), 6x128w4 95 (5), 5x128w4 90 (5), 4x128w4 78 (6), 3x128w4 63 (8), 5x256w8 100 (2).
TILES = [
    (10, 64, 2),
    (8, 64, 2),
    (16, 64, 2),
    (6, 64, 2),
    (5, 64, 2),
    (4, 64, 2),
    (8, 128, 2),
    (8, 128, 4),
    (6, 128, 4),
    (5, 128, 4),
    (4, 128, 4),
    (3, 128, 4),
    (5, 256, 8),
]


def _ms(fn, reps: int) -> float:
    """Median ms per call: CUDA events around one CUDA-graph replay of ``CALLS_PER_FORWARD`` back-to-back calls (as
    inside the transformer's graph: no launch gaps), divided by the calls."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_FORWARD):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / CALLS_PER_FORWARD)
    return round(statistics.median(times), 4)


def _errors(got: torch.Tensor, want: torch.Tensor) -> dict:
    """Relative error (norm ratio) and max abs error / max |want| of ``got`` against the fp32 ``want``."""
    d = got.double() - want.double()
    return {
        "rel": float(d.norm() / want.double().norm()),
        "max_rel": float(d.abs().max() / want.double().abs().max()),
    }


def _old_path(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``GLUMBConvTemp.spatial`` between its linears before the kernel (commit 28c8ff5..9de3a28)."""
    x = F.silu(h).view(FRAMES, HEIGHT, WIDTH, -1).permute(0, 3, 1, 2)
    x = F.conv2d(x, weight, bias, padding=1, groups=weight.shape[0])
    value, gate = x.permute(0, 2, 3, 1).reshape(h.shape[0], -1).chunk(2, dim=-1)
    return value * F.silu(gate)



def run(device: str = "cuda", reps: int = 10, baseline: Path | None = None) -> dict:
    """Times and errors at the streaming shape on ``device`` (a CUDA device); ``baseline``: an earlier
    ``ffn_triton.py`` to time beside the current one (default: ``BASELINE_REV`` from git). Returns a JSON-able
    dict."""
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        raise RuntimeError(
            f"micro_ffn needs a CUDA device, got device={device!r} (cuda available: {torch.cuda.is_available()})."
        )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sana_wm.ops.ffn import glu_dwconv
    from sana_wm.ops.ffn_triton import glu_dwconv_triton

    gen = torch.Generator(device=device).manual_seed(0)
    n, c2 = FRAMES * HEIGHT * WIDTH, 2 * HALF
    h32 = 2 * torch.randn(n, c2, device=device, generator=gen)  # inverted-conv output scale
    w32 = (torch.rand(c2, 1, 3, 3, device=device, generator=gen) - 0.5) * (2 / 3)  # nn.Conv2d init range
    b32 = (torch.rand(c2, device=device, generator=gen) - 0.5) * (2 / 3)
    h, w, b = h32.bfloat16(), w32.bfloat16(), b32.bfloat16()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 reference of the same bf16 inputs
        want = glu_dwconv(h.float(), w.float(), b.float(), height=HEIGHT, width=WIDTH)

    out: dict = {
        "shape": {"tokens": n, "channels_in": c2, "channels_out": HALF, "frames": FRAMES, "h": HEIGHT, "w": WIDTH},
        "device": torch.cuda.get_device_name(device),
        "reps": reps,
    }
    old_ms = _ms(lambda: _old_path(h, w, b), reps)
    out["old_path_ms"] = old_ms
    out["old_path_err"] = _errors(_old_path(h, w, b), want)
    out["reference_ms"] = _ms(lambda: glu_dwconv(h, w, b, height=HEIGHT, width=WIDTH), reps)
    out["reference_err"] = _errors(glu_dwconv(h, w, b, height=HEIGHT, width=WIDTH), want)

    bytes_moved = (n * c2 + n * HALF) * h.element_size()
    tiles = {}
    for bx, bc, nw in TILES:
        name = f"{bx}x{bc}w{nw}"

        def call(bx=bx, bc=bc, nw=nw):
            return glu_dwconv_triton(h, w, b, height=HEIGHT, width=WIDTH, block_x=bx, block_c=bc, num_warps=nw)

        try:
            ms = _ms(call, reps)
            tiles[name] = {"ms": ms, "GBps": round(bytes_moved / ms / 1e6, 1), **_errors(call(), want)}
        except Exception as exc:  # noqa: BLE001 - a tile that fails to compile or launch is reported
            tiles[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    out["triton_tiles"] = tiles
    base, rev = module_at(BASELINE_REV, "ffn_triton") if baseline is None else (module_from(baseline), str(baseline))
    out["baseline"] = {"rev": rev}
    if base is not None:

        def base_call():
            return base.glu_dwconv_triton(h, w, b, height=HEIGHT, width=WIDTH)

        try:
            ms = _ms(base_call, reps)
            out["baseline"].update({"ms": ms, "GBps": round(bytes_moved / ms / 1e6, 1), **_errors(base_call(), want)})
        except Exception as exc:  # noqa: BLE001 - reported, the candidates' numbers stay
            out["baseline"]["error"] = f"{type(exc).__name__}: {exc}"[:300]
    default = next(iter(tiles.values()))
    out["triton_ms"] = default.get("ms")
    out["triton_err"] = {k: default.get(k) for k in ("rel", "max_rel")}
    timed = {k: v["ms"] for k, v in tiles.items() if "ms" in v}
    if timed:
        best = min(timed, key=timed.get)
        out["triton_best_tile"], out["triton_best_ms"] = best, timed[best]
        out["saving_per_forward_ms"] = round(CALLS_PER_FORWARD * (old_ms - timed[best]), 3)
    out["fp32_triton_vs_reference_rel"] = _errors(
        glu_dwconv_triton(h.float(), w.float(), b.float(), height=HEIGHT, width=WIDTH), want
    )["rel"]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="folder holding an earlier ffn_triton.py")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    path = None if args.baseline is None else args.baseline / "ffn_triton.py"
    print(json.dumps(run(reps=args.reps, baseline=path), indent=1))
