"""Frame-wise GDN at the streaming shape: Triton (``sana_wm.ops.gdn_triton``) vs the PyTorch reference on CUDA.

    python bench/micro_gdn.py            # prints JSON (CUDA only)

One call per GDN block and branch (15 blocks x 2 branches = 30 per forward): B 1, H 20, T 3 latent frames of
S 880 tokens (704 x 1280), head dim 112, bf16 q/k/v/beta, fp32 g and seed states (the streaming cache's
``state_kv`` / ``state_z``), one reverse segment. Times (CUDA events, median us per call) ``gdn_main`` (also with
``token_major=True`` against the default layout followed by the transformer's ``permute(0, 2, 3, 1, 4).reshape``
copy) and ``gdn_cam``; the per-kernel device time from the profiler; errors against the CPU fp32 reference of the
same inputs (``rel``: norm ratio, ``max_rel``: max |diff| / max |want|; worst over the returned tensors); and, when
git is there, the same for ``gdn_triton.py`` before the re-tiling (``BASELINE_REV``), measured in the same run;
``variants``: the launch alternatives in ``VARIANTS`` (module-level tuning knobs of ``gdn_triton``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from baseline import module_at  # noqa: E402

from server.bench import time_ms  # noqa: E402

B, H, T, D = 1, 20, 3, 112
BLOCKS = 15  # GDN blocks; each calls gdn_main and gdn_cam once per forward
# launch alternatives of sana_wm.ops.gdn_triton, timed beside its defaults: (name, module attribute(s), value(s))
VARIANTS = [
    ("gram 64-token steps, 8 warps", "GRAM_LAUNCH", {"BLOCK_S": 64, "num_warps": 8}),
    ("gram 64-token steps, 4 warps", "GRAM_LAUNCH", {"BLOCK_S": 64, "num_warps": 4}),
    ("gram 16-token steps, 4 warps", "GRAM_LAUNCH", {"BLOCK_S": 16, "num_warps": 4}),
    ("gram 64-token steps, 4 warps, 2 stages", "GRAM_LAUNCH", {"BLOCK_S": 64, "num_warps": 4, "num_stages": 2}),
    ("gram 64-token steps, 4 warps, 4 stages", "GRAM_LAUNCH", {"BLOCK_S": 64, "num_warps": 4, "num_stages": 4}),
    ("gram 32-token steps, 4 warps, 4 stages", "GRAM_LAUNCH", {"BLOCK_S": 32, "num_warps": 4, "num_stages": 4}),
    ("gram 128-token steps, 8 warps, 3 stages", "GRAM_LAUNCH", {"BLOCK_S": 128, "num_warps": 8, "num_stages": 3}),
    ("scan without register cap", "SCAN_MAXNREG", None),
    ("scan 32-wide K slices", "SCAN_BLOCK_K", 32),
    ("scan 32-wide K slices, no register cap", ("SCAN_BLOCK_K", "SCAN_MAXNREG"), (32, None)),
    ("scan 64-wide K slices, no register cap", ("SCAN_BLOCK_K", "SCAN_MAXNREG"), (64, None)),
    ("out 1 wave", "OUT_WAVES", 1),
    ("out 4 waves", "OUT_WAVES", 4),
]
BASELINE_REV = "9f693bd^"  # gdn_triton.py as GPU run 3 measured it (one program per frame and product, 2T-step scan)


def _us(fn, reps: int) -> float:
    """Median microseconds of ``fn`` on the GPU after 3 warm-up calls."""
    return round(time_ms(fn, torch.device("cuda"), reps, warmup=3) * 1e3, 2)


def _errors(got, want) -> dict:
    rels, maxrels = [], []
    for a, b in zip(got, want, strict=True):
        d = a.detach().double().cpu() - b.double()
        rels.append(float(d.norm() / b.double().norm()))
        maxrels.append(float(d.abs().max() / b.double().abs().max()))
    return {"rel": max(rels), "max_rel": max(maxrels)}


def _kernel_us(fn, reps: int) -> dict[str, float]:
    """Device time per call of every CUDA kernel ``fn`` launches (profiler, averaged over ``reps`` calls)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    totals = {evt.key: evt.device_time_total for evt in prof.key_averages() if evt.device_time_total}
    return {name: round(t / reps, 2) for name, t in sorted(totals.items(), key=lambda kv: -kv[1])}



def run(device: str = "cuda", reps: int = 50) -> dict:
    """Time and check ``gdn_main`` / ``gdn_cam`` (Triton vs reference) at the streaming shape; returns a dict."""
    from gpu_check import gdn_case

    from sana_wm.ops import gdn as gdn_ref
    from sana_wm.ops import gdn_triton as G
    from sana_wm.ops.gdn_triton import gdn_cam_triton, gdn_main_triton

    dev = torch.device(device)
    torch.manual_seed(0)
    (q, k, qr, kr, v), beta, g, skv, sz = gdn_case(B, H, T, D, seed=3)
    S = q.shape[3]
    bf = torch.bfloat16
    cq, ck, cqr, ckr, cv, cbeta = (x.to(dev, bf) for x in (q, k, qr, kr, v, beta))
    cg, cskv, csz = g.to(dev), skv.to(dev), sz.to(dev)
    # the fp32 reference of exactly the bf16-rounded inputs the kernels see
    rq, rk, rqr, rkr, rv, rbeta = (x.float().cpu() for x in (cq, ck, cqr, ckr, cv, cbeta))
    want_main = gdn_ref.gdn_main(rq, rk, rqr, rkr, rv, rbeta, g, state_kv=skv, state_z=sz)
    want_cam = gdn_ref.gdn_cam(rqr, rkr, rv, rbeta, g, state_kv=skv)

    def main_triton(token_major=False):
        return gdn_main_triton(cq, ck, cqr, ckr, cv, cbeta, cg, state_kv=cskv, state_z=csz, token_major=token_major)

    def main_ref():
        return gdn_ref.gdn_main(cq, ck, cqr, ckr, cv, cbeta, cg, state_kv=cskv, state_z=csz)

    def main_copy():
        out = main_triton()[0]
        return out.permute(0, 2, 3, 1, 4).reshape(B, T * S, H * D)

    def cam_triton():
        return gdn_cam_triton(cqr, ckr, cv, cbeta, cg, state_kv=cskv)

    def cam_ref():
        return gdn_ref.gdn_cam(cqr, ckr, cv, cbeta, cg, state_kv=cskv)

    tm = main_triton(token_major=True)[0]
    result = {
        "shape": {"B": B, "H": H, "T": T, "S": S, "D": D, "dtype": "bf16", "calls_per_forward": 2 * BLOCKS},
        "card": torch.cuda.get_device_name(dev),
        "gdn_main": {
            "triton_us": _us(main_triton, reps),
            "reference_us": _us(main_ref, reps),
            "triton_then_token_major_copy_us": _us(main_copy, reps),
            "triton_token_major_us": _us(lambda: main_triton(token_major=True), reps),
            "triton_error": _errors(main_triton(), want_main),
            "reference_error": _errors(main_ref(), want_main),
            "token_major_equals_copy": bool(torch.equal(tm, main_copy())),
            "kernels_us": _kernel_us(main_triton, reps),
        },
        "gdn_cam": {
            "triton_us": _us(cam_triton, reps),
            "reference_us": _us(cam_ref, reps),
            "triton_error": _errors(cam_triton(), want_cam),
            "reference_error": _errors(cam_ref(), want_cam),
            "kernels_us": _kernel_us(cam_triton, reps),
        },
    }
    result["variants"] = {}
    for name, attr, value in VARIANTS:
        attrs, values = (attr, value) if isinstance(attr, tuple) else ((attr,), (value,))
        defaults = [getattr(G, a) for a in attrs]
        for a, v in zip(attrs, values):
            setattr(G, a, v)
        try:
            result["variants"][name] = {
                "gdn_main_us": _us(main_triton, reps),
                "gdn_cam_us": _us(cam_triton, reps),
                "gdn_main_kernels_us": _kernel_us(main_triton, reps),
                "gdn_main_error": _errors(main_triton(), want_main),
            }
        finally:
            for a, v in zip(attrs, defaults):
                setattr(G, a, v)
    m, c = result["gdn_main"], result["gdn_cam"]
    per_forward = {  # ms per forward (15 blocks x one call of each branch)
        "triton": (m["triton_us"] + c["triton_us"]) * BLOCKS / 1e3,
        "triton_token_major": (m["triton_token_major_us"] + c["triton_us"]) * BLOCKS / 1e3,
        "reference": (m["reference_us"] + c["reference_us"]) * BLOCKS / 1e3,
    }
    base, rev = module_at(BASELINE_REV, "gdn_triton")
    result["baseline"] = {"rev": rev}
    if base is not None:

        def base_main():
            return base.gdn_main_triton(cq, ck, cqr, ckr, cv, cbeta, cg, state_kv=cskv, state_z=csz)

        def base_cam():
            return base.gdn_cam_triton(cqr, ckr, cv, cbeta, cg, state_kv=cskv)

        b = result["baseline"]
        b["gdn_main_us"], b["gdn_cam_us"] = _us(base_main, reps), _us(base_cam, reps)
        b["gdn_main_then_copy_us"] = _us(lambda: base_main()[0].permute(0, 2, 3, 1, 4).reshape(B, T * S, H * D), reps)
        b["gdn_main_kernels_us"], b["gdn_cam_kernels_us"] = _kernel_us(base_main, reps), _kernel_us(base_cam, reps)
        per_forward["baseline"] = (b["gdn_main_us"] + b["gdn_cam_us"]) * BLOCKS / 1e3
        per_forward["baseline_with_copy"] = (b["gdn_main_then_copy_us"] + b["gdn_cam_us"]) * BLOCKS / 1e3
    result["per_forward_ms"] = {name: round(ms, 3) for name, ms in per_forward.items()}
    return result


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("micro_gdn: needs a CUDA device")
    print(json.dumps(run(), indent=2))
