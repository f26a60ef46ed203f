"""LTX-2 VAE streaming decode at the engine's chunk shape, per speed switch of ``LTX2StreamingDecoder``.

    python bench/micro_vae.py                     # prints JSON (CUDA, bf16, full-size VAE, 22 x 40 latents)
    python bench/micro_vae.py --skip compile      # without the torch.compile variants (the slow part)
    git show REV:sana_wm/vae.py > ab_base/vae.py  # here; then on the GPU:
    python bench/micro_vae.py --baseline ab_base/vae.py --skip _   # that decoder against the current one only

``run(device="cuda", reps=5, skip=())`` builds the full-size VAE (``ltx2`` preset, random weights, bf16), and for
every variant decodes a first chunk of 4 latent frames (25 pixel frames) then steady chunks of 3 latent frames (24
pixel frames), the same latents for every variant. Per variant: the median GPU time of a steady chunk (CUDA
events; the first 2 steady chunks are warm-up: cuDNN autotuning, graph capture), the max abs difference of the first
chunk and of the last steady chunk against the ``current`` variant (same inputs, same history), the peak memory of
the decode over the weights, and the wall time of the variant (compile/capture included). ``profile`` lists the
top GPU kernels of one steady chunk of the decoder's defaults (as the engine runs it, but eager: a graph replay hides
its kernels) and of ``current``.
``baseline`` (``--baseline FILE``: an earlier ``sana_wm/vae.py``): that module's streaming decoder, defaults and the
same weights, against the current one on the same steady chunks in ABBA order (the card's clock drifts, so the pairs
count): ms of each, the mean of current - baseline with its standard error, and both last chunks' error against the
fp32 reference. A CPU device with ``preset="tiny"`` serves as a smoke test.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from baseline import mean_se, module_from

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sana_wm.vae import LTX2VAE, STREAMING_DEFAULTS

WARMUP = 2
# name -> decoder options; channels-last variants after the NCDHW ones (the switch converts the shared decoder
# weights in place), compile variants last.
# Every switch off (one latent frame per pass, NCDHW, eager): the decoder before the speed switches; "current" below
# is this base, the engine runs STREAMING_DEFAULTS.
BASE = {k: False for k in STREAMING_DEFAULTS} | {"frames_per_pass": 1}
_OP = {"frames_per_pass": None, "channels_last": True}  # one pass, channels-last
_TN = {**_OP, "triton_norm": True}
VARIANTS = {
    "current": {},
    "one_pass": {"frames_per_pass": None},
    "per_frame+channels_last": {"frames_per_pass": 1, "channels_last": True},
    "one_pass+channels_last": _OP,
    "one_pass+channels_last+triton_norm": _TN,
    "one_pass+channels_last+triton_norm+cudnn_benchmark": {**_TN, "cudnn_benchmark": True},
    "per_frame+channels_last+triton_norm+graph": {**_TN, "frames_per_pass": 1, "cuda_graph": True},
    "one_pass+channels_last+triton_norm+graph": {**_TN, "cuda_graph": True},
    "one_pass+channels_last+triton_norm+graph+cudnn_benchmark": {**_TN, "cuda_graph": True, "cudnn_benchmark": True},
    # One compile serves both: steady chunks compiled, then the same decoder with cuda_graph on ("graph_steady_ms").
    "one_pass+channels_last+compile": {**_OP, "compile": True},
}


def build_vae(preset: str, device, dtype: torch.dtype, seed: int = 1) -> LTX2VAE:
    """The VAE of ``preset`` with random weights (``server.bench.build_vae``, as gpu_check builds it)."""
    from server import bench as B

    return B.build_vae(preset, device, dtype, seed=seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    """(result, milliseconds) of one call: CUDA events on a GPU, wall time otherwise."""
    if device.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = fn()
        b.record()
        b.synchronize()
        return out, a.elapsed_time(b)
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def ab_baseline(vae: LTX2VAE, path: Path, chunks: list[torch.Tensor], ref_last, device: torch.device) -> dict:
    """The streaming decoder of the earlier module ``path`` (same weights: its VAE's parameters are the current one's
    tensors) against the current decoder, steady chunks in ABBA order; see the module docstring."""
    old = module_from(path, package="sana_wm")
    with torch.device("meta"):
        old_vae = old.LTX2VAE(old.LTX2VAEConfig(**dataclasses.asdict(vae.config)))
    old_vae.encoder = None
    old_vae.load_state_dict(vae.state_dict(), assign=True)
    decoders = {"current": vae.streaming_decoder(), "baseline": old_vae.streaming_decoder()}
    for dec in decoders.values():
        dec.decode(chunks[0])
    times: dict[str, list[float]] = {"current": [], "baseline": []}
    last = {}
    for i, z in enumerate(chunks[1:]):
        for name in ("current", "baseline") if i % 2 == 0 else ("baseline", "current"):
            last[name], ms = _timed(lambda name=name, z=z: decoders[name].decode(z), device)
            if i >= WARMUP:
                times[name].append(ms)
    diffs = [a - b for a, b in zip(times["current"], times["baseline"])]
    diff = mean_se(diffs)
    out = {
        "file": str(path),
        "current_ms": [round(t, 2) for t in times["current"]],
        "baseline_ms": [round(t, 2) for t in times["baseline"]],
        "current_minus_baseline_ms": diff["mean"],
        "se_ms": diff["standard_error"] if len(diffs) > 1 else None,
        "rel_diff_frames": float((last["current"].float() - last["baseline"].float()).norm() / last["baseline"].norm()),
    }
    if ref_last is not None:
        for name in ("current", "baseline"):
            out[f"{name}_rel_err_vs_fp32"] = float((last[name].float() - ref_last).norm() / ref_last.norm())
    return out


def _profile(vae: LTX2VAE, options: dict, chunks: list[torch.Tensor], top: int = 12) -> list[dict]:
    """Top GPU kernels (total ms, calls) of one steady chunk decoded eagerly with ``options``."""
    from torch.profiler import ProfilerActivity, profile

    dec = vae.streaming_decoder(**{**BASE, **options})
    dec.decode(chunks[0])
    dec.decode(chunks[1])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec.decode(chunks[2])
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    rows.sort(key=lambda e: e.device_time_total, reverse=True)
    return [
        {"kernel": e.key[:120], "ms": round(e.device_time_total / 1e3, 3), "calls": e.count} for e in rows[:top]
    ]


@torch.no_grad()
def run(
    device: str = "cuda", reps: int = 5, skip=(), preset: str = "ltx2", latent_hw=(22, 40), baseline: Path | None = None
) -> dict:
    """Steady-chunk decode time per variant (see the module docstring); ``skip``: substrings of variant names
    (e.g. ``("compile",)``) or ``"profile"``; ``baseline``: an earlier ``sana_wm/vae.py`` to time against."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    t_start = time.perf_counter()
    vae = build_vae(preset, device, dtype)
    vae.encoder = None  # decode only
    if cuda:
        torch.cuda.empty_cache()
    weights = torch.cuda.memory_allocated(device) if cuda else 0
    c = vae.config.latent_channels
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (1, c, 3, *latent_hw)
    chunks = [torch.randn((1, c, 4, *latent_hw), generator=gen, device=device, dtype=dtype)]
    chunks += [torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(WARMUP + reps)]
    out: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "preset": preset,
        "dtype": str(dtype),
        "latents": {"first": list(chunks[0].shape), "steady": list(shape)},
        "defaults": dict(STREAMING_DEFAULTS),
        "weights_gb": round(weights / 2**30, 3),
        "variants": {},
    }
    ref_first = ref_last = None
    if cuda:  # fp32 reference decode (per frame, no TF32) of the same latents: the accuracy of every variant
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        ref_vae = copy.deepcopy(vae).float()
        ref = ref_vae.streaming_decoder(**BASE)
        ref_first = ref.decode(chunks[0].float())
        for z in chunks[1:]:
            ref_last = ref.decode(z.float())
        del ref, ref_vae
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.cuda.empty_cache()
    base_first = base_last = None
    for name, options in VARIANTS.items():
        if any(s in name for s in skip) or ("compile" in name and not cuda) or ("graph" in name and not cuda):
            continue
        row: dict = {"options": options}
        t0 = time.perf_counter()
        try:
            if not options.get("channels_last"):
                vae.decoder.to(memory_format=torch.contiguous_format)
            if options.get("compile"):
                torch._dynamo.reset()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            dec = vae.streaming_decoder(**{**BASE, **options})
            first, row["first_chunk_ms"] = _timed(lambda dec=dec: dec.decode(chunks[0]), device)
            times = []
            for i, z in enumerate(chunks[1:]):
                last, ms = _timed(lambda dec=dec, z=z: dec.decode(z), device)
                if i >= WARMUP:
                    times.append(ms)
            row["steady_ms"] = round(statistics.median(times), 2)
            row["steady_ms_all"] = [round(t, 2) for t in times]
            if base_first is None:
                base_first, base_last = first, last
            row["max_abs_diff_first"] = _max_diff(first, base_first)
            row["max_abs_diff_steady"] = _max_diff(last, base_last)
            row["rel_err_steady"] = float((last.float() - base_last.float()).norm() / base_last.float().norm())
            if ref_last is not None:
                row["rel_err_vs_fp32_first"] = float((first.float() - ref_first).norm() / ref_first.norm())
                row["rel_err_vs_fp32_steady"] = float((last.float() - ref_last).norm() / ref_last.norm())
            row["out_channels_last"] = last.is_contiguous(memory_format=torch.channels_last_3d)
            if cuda:
                row["peak_over_weights_gb"] = round((torch.cuda.max_memory_allocated(device) - weights) / 2**30, 3)
            row["state_mb"] = round(dec.nbytes() / 2**20, 2)
            if options.get("compile") and cuda:
                dec.cuda_graph = True  # the compiled steady call captured: warm-up, capture, then replays
                times = [_timed(lambda dec=dec, z=z: dec.decode(z), device)[1] for z in chunks[1:]][WARMUP:]
                row["graph_steady_ms"] = round(statistics.median(times), 2)
            del dec, first, last
        except Exception as e:  # noqa: BLE001 - a variant that fails is reported, the others still run
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        out["variants"][name] = row
        print(f"  {name}: {row.get('steady_ms', row.get('error'))}", file=sys.stderr, flush=True)
    if baseline is not None:
        try:
            out["baseline"] = ab_baseline(vae, baseline, chunks, ref_last, device)
            print(f"  baseline: {out['baseline']['current_minus_baseline_ms']} ms", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - reported in the JSON
            out["baseline"] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    if cuda and "profile" not in skip:
        try:
            vae.decoder.to(memory_format=torch.contiguous_format)
            out["profile"] = {
                "defaults": _profile(vae, {**STREAMING_DEFAULTS, "cuda_graph": False}, chunks),  # kernels one by one
                "current": _profile(vae, {}, chunks),
            }
        except Exception as e:  # noqa: BLE001 - reported in the JSON
            out["profile"] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    base = out["variants"].get("current", {}).get("steady_ms")
    timed = {k: v["steady_ms"] for k, v in out["variants"].items() if "steady_ms" in v}
    if timed:
        best = min(timed, key=timed.get)
        speedup = base and round(base / timed[best], 2)
        out["best"] = {"variant": best, "steady_ms": timed[best], "speedup_vs_current": speedup}
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--skip", action="append", default=[], help="skip variants whose name contains this (repeatable)")
    p.add_argument("--preset", default="ltx2", choices=("ltx2", "tiny"))
    p.add_argument("--baseline", type=Path, help="an earlier sana_wm/vae.py, timed against the current decoder")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    hw = (22, 40) if args.preset == "ltx2" else (2, 3)
    text = json.dumps(run(args.device, args.reps, tuple(args.skip), args.preset, hw, args.baseline), indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
