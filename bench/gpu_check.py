"""One GPU run for the performance work: kernel checks, kernel timings, full-size forward / chunk / memory, diffusers.

    OUT=/path/to/dir python bench/gpu_check.py [--budget-s 600] [--pytest-timeout-s 300] [--skip compile,batched]

Sections run in order of importance, each guarded (an error is recorded and the run goes on) and skipped when the
time budget would be exceeded; ``$OUT/gpu_check.json`` is rewritten after every section, so a run that is cut
short still leaves its results. Also writes ``$OUT/bench.json`` (the ``sana-wm bench`` report fields) and
``$OUT/bench.png`` (when matplotlib is present) and prints a summary table at the end.

Sections: env, micro_scripts (with ``--micro ffn,prep,...``: ``run()`` of each ``bench/micro_<name>.py``), pytest_gpu
(the repository's ``-m gpu`` tests), kernels_bf16 (each Triton kernel vs the CPU fp32 reference on fresh random
inputs), forward (full-size forward over 3 latent frames against a full cache: reference ops / Triton kernels / CUDA
graph; profiles by kernel category of the eager forward and of the graph replay, and the top-25 ops by CUDA time),
diffusers (its forward on the same shape, ratio), stream (chunks with the VAE decode overlapped, fps, time to first
frame, peak memory), session (``bench/bench_session.py``: real sessions' key-to-frame latency and chunk rate, decode
overlap off / on), compile (torch.compile of the blocks: compile time, compiled and compiled + graph forward), memory
(after chunk 5 and chunk 200), accuracy (a whole chunk: GPU bf16 path vs fp32 reference, full size and a small config
against the CPU), batched (B = 2, 4), micro (reference vs Triton, temporal conv variants, softmax attention over the
cached window), compile_stream (chunks with compiled blocks inside the chunk graphs), kernels_fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def _missing_modules() -> dict[str, str]:
    out = {}
    for name in ("numpy", "safetensors", "diffusers", "matplotlib", "triton"):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            out[name] = f"{type(e).__name__}: {e}"
    return out


MISSING = _missing_modules()
if "numpy" in MISSING:
    sys.exit("gpu_check: numpy is required (controllers / engine use it): " + MISSING["numpy"])
if "safetensors" in MISSING:
    # sana_wm.weights imports safetensors at module level; this script reads no checkpoint, so a stand-in suffices.
    stub = types.ModuleType("safetensors")
    stub.SafetensorError = type("SafetensorError", (Exception,), {})
    stub.safe_open = None
    stub.torch = types.ModuleType("safetensors.torch")
    stub.torch.load_file = stub.torch.save_file = None
    sys.modules["safetensors"], sys.modules["safetensors.torch"] = stub, stub.torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from server.clocks import ClockSampler  # noqa: E402

RESULTS: dict = {"env": {}, "sections": {}, "errors": {}, "skipped": [], "durations_s": {}}
SUSTAIN_S = 30.0  # seconds of forward replays before the sustained timing
OUT = Path(os.environ.get("OUT", "gpu_check_out"))
DEV = torch.device("cuda")
STATE: dict = {}  # objects shared between sections (models, caches)


def dump() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def run_section(name: str, fn, need_s: float, budget_s: float, skip: set[str]) -> None:
    left = budget_s - (time.perf_counter() - T0)
    if name in skip or left < need_s:
        why = "skipped by --skip" if name in skip else f"needs ~{need_s:.0f} s, {left:.0f} s left"
        RESULTS["skipped"].append(f"{name}: {why}")
        log(f"SKIP {name} ({why})")
        dump()
        return
    log(f"== {name} (budget left {left:.0f} s)")
    t = time.perf_counter()
    try:
        RESULTS["sections"][name] = fn()
    except Exception as e:  # noqa: BLE001 - recorded; the run goes on
        RESULTS["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        log(f"ERROR in {name}: {type(e).__name__}: {e}")
    RESULTS["durations_s"][name] = round(time.perf_counter() - t, 1)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    dump()


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())


def cuda_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    from server.bench import time_ms

    return round(time_ms(fn, DEV, reps, warmup), 4)


@contextlib.contextmanager
def exact_fp32():
    """fp32 reference math on the GPU: no TF32 in matmuls / convs."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def named(names, got, want) -> dict:
    """{name: (got_i, want_i)} for the first len(names) outputs."""
    return {n: (got[i], want[i]) for i, n in enumerate(names)}


TOL = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-4}


def check(rows: list, kernel: str, dtype: torch.dtype, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    for name, (got, want) in outputs.items():
        r = rel(got, want)
        rows.append(
            {
                "kernel": kernel,
                "dtype": str(dtype).replace("torch.", ""),
                "output": name,
                "rel_err": r,
                "max_abs": maxabs(got, want),
                "pass": bool(r <= TOL[dtype]),
            }
        )
        log(f"  {kernel:28s} {str(dtype):15s} {name:10s} rel {r:.2e} {'ok' if r <= TOL[dtype] else 'FAIL'}")


LAT_H, LAT_W = 22, 40  # 704 x 1280
S_FULL = LAT_H * LAT_W


def camera_rays(B: int, T: int, h: int, w: int, seed: int):
    """UCPE matrices (P^T, P^-1) for random camera poses (B, T*h*w, 4, 4)."""
    from sana_wm.ops.ucpe import invert_se3, ray_matrices

    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(B, T, 3, 3, generator=gen))
    c2w = torch.zeros(B, T, 4, 4)
    c2w[..., :3, :3] = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    c2w[..., :3, 3] = torch.randn(B, T, 3, generator=gen)
    c2w[..., 3, 3] = 1
    raymap = torch.cat([c2w.reshape(B, T, 16), torch.tensor([w * 0.8, w * 0.8, w / 2, h / 2]).expand(B, T, 4)], -1)
    ray = ray_matrices(raymap, h, w)
    return ray.transpose(-1, -2).contiguous(), invert_se3(ray)


def projections(B: int, T: int, H: int, D: int, seed: int, n: int = 3):
    gen = torch.Generator().manual_seed(seed)
    C = H * D
    xs = [torch.randn(B, T * S_FULL, C, generator=gen) for _ in range(n)]
    wq, wk = 1 + 0.1 * torch.randn(C, generator=gen), 1 + 0.1 * torch.randn(C, generator=gen)
    return xs, wq, wk, gen


def gdn_case(B: int, H: int, T: int, D: int, seed: int):
    """Realistic GDN inputs (CPU fp32) made by the reference preparation."""
    from sana_wm.ops.qk_prep import prep_gdn_qk
    from sana_wm.ops.rope import rope_frequencies

    (q, k, v), wq, wk, gen = projections(B, T, H, D, seed)
    rope = rope_frequencies(D, torch.arange(7, 7 + T), LAT_H, LAT_W)
    q, k, q_rot, k_rot = prep_gdn_qk(q, k, wq, wk, rope, heads=H, key_scale=(D * S_FULL) ** -0.5)
    v = v.view(B, T * S_FULL, H, D).transpose(1, 2)
    five = [x.reshape(B, H, T, S_FULL, D) for x in (q, k, q_rot, k_rot, v)]
    beta = torch.sigmoid(torch.randn(B, H, T, S_FULL, generator=gen))
    g = 0.6 + 0.39 * torch.rand(B, H, T, generator=gen)
    state_kv = 0.05 * torch.randn(B, H, D, D, generator=gen)
    state_z = 0.1 * torch.rand(B, H, D, generator=gen)
    return five, beta, g, state_kv, state_z


# ----------------------------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------------------------


def sec_env() -> dict:
    from torch.backends.cuda import cudnn_sdp_enabled, flash_sdp_enabled, math_sdp_enabled, mem_efficient_sdp_enabled

    props = torch.cuda.get_device_properties(DEV)
    env = {
        "card": torch.cuda.get_device_name(DEV),
        "sm": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "memory_gb": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "missing_modules": MISSING,
        "sdpa_backends": {
            "flash": flash_sdp_enabled(),
            "efficient": mem_efficient_sdp_enabled(),
            "cudnn": cudnn_sdp_enabled(),
            "math": math_sdp_enabled(),
        },
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    RESULTS["env"] = env
    log(f"env: {env}")
    return env


def sec_kernels(dtypes: tuple[torch.dtype, ...]) -> dict:
    from sana_wm.ops import gdn as gdn_ref
    from sana_wm.ops import qk_prep as prep_ref
    from sana_wm.ops.gdn_triton import gdn_cam_triton, gdn_main_triton
    from sana_wm.ops.qk_prep_triton import prep_camera_triton, prep_gdn_qk_triton, prep_softmax_qk_triton
    from sana_wm.ops.rope import rope_frequencies, slice_rope_for_camera
    from sana_wm.ops.temporal_conv import ffn_temporal_conv, past_tap, tap_major

    rows: list = []
    to = lambda x, dt: x.to(DEV, dt)  # noqa: E731
    cases = [
        ("stream B1 T3 H20", dict(B=1, H=20, T=3, D=112), None),
        ("causal B2 T7 H4", dict(B=2, H=4, T=7, D=112), [0, 4]),
    ]
    for label, shape, starts in cases:
        (q, k, qr, kr, v), beta, g, skv, sz = gdn_case(**shape, seed=11)
        want, want_kv, want_z = gdn_ref.gdn_main(
            q, k, qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv, state_z=sz
        )
        want_c, want_ckv = gdn_ref.gdn_cam(qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv)
        for dt in dtypes:
            out, kv, z = gdn_main_triton(
                *(to(x, dt) for x in (q, k, qr, kr, v)),
                to(beta, dt),
                to(g, torch.float32),
                chunk_starts=starts,
                state_kv=to(skv, torch.float32),
                state_z=to(sz, torch.float32),
            )
            check(
                rows, f"gdn_main {label}", dt, {"out": (out, want), "state_kv": (kv, want_kv), "state_z": (z, want_z)}
            )
            out, kv = gdn_cam_triton(
                *(to(x, dt) for x in (qr, kr, v)),
                to(beta, dt),
                to(g, torch.float32),
                chunk_starts=starts,
                state_kv=to(skv, torch.float32),
            )
            check(rows, f"gdn_cam {label}", dt, {"out": (out, want_c), "state_kv": (kv, want_ckv)})

    B, T, H, D = 1, 3, 20, 112
    (q, k, v), wq, wk, gen = projections(B, T, H, D, seed=12)
    rope = rope_frequencies(D, torch.arange(7, 7 + T), LAT_H, LAT_W)
    rope_cam = slice_rope_for_camera(rope, D)
    ray_q, ray_kv = camera_rays(B, T, LAT_H, LAT_W, seed=13)
    beta = torch.sigmoid(torch.randn(B, T, S_FULL, H, generator=gen)).permute(0, 3, 1, 2)
    ks = (D * S_FULL) ** -0.5
    want_gdn = prep_ref.prep_gdn_qk(q, k, wq, wk, rope, heads=H, key_scale=ks)
    want_soft = prep_ref.prep_softmax_qk(q, k, wq, wk, rope, heads=H)
    want_cam = prep_ref.prep_camera(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=beta)
    want_cam_soft = prep_ref.prep_camera(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H)
    want_cam_ds = prep_ref.prep_camera(
        q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=beta, rms_downscale=True
    )
    names4 = ("q", "k", "q_rot", "k_rot")
    for dt in dtypes:
        qd, kd, vd, wqd, wkd = (to(x, dt) for x in (q, k, v, wq, wk))
        rd, rcd, rqd, rkd = rope.to(DEV), rope_cam.to(DEV), ray_q.to(DEV), ray_kv.to(DEV)
        got = prep_gdn_qk_triton(qd, kd, wqd, wkd, rd, heads=H, key_scale=ks)
        check(rows, "prep_gdn_qk", dt, named(names4, got, want_gdn))
        got = prep_softmax_qk_triton(qd, kd, wqd, wkd, rd, heads=H)
        check(rows, "prep_softmax_qk", dt, named(("q_rot", "k_rot"), got, want_soft))
        got = prep_camera_triton(qd, kd, vd, wqd, wkd, rqd, rkd, rcd, heads=H, key_scale=ks, beta=to(beta, dt))
        check(rows, "prep_camera gdn", dt, named(("q_u", "k_u", "v_u", "beta"), got, want_cam))
        got = prep_camera_triton(qd, kd, vd, wqd, wkd, rqd, rkd, rcd, heads=H)
        check(rows, "prep_camera softmax", dt, named(("q_u", "k_u", "v_u"), got, want_cam_soft))
        got = prep_camera_triton(
            qd, kd, vd, wqd, wkd, rqd, rkd, rcd, heads=H, key_scale=ks, beta=to(beta, dt), rms_downscale=True
        )
        check(rows, "prep_camera gdn downscale", dt, named(("q_u", "k_u", "v_u", "beta"), got, want_cam_ds))

    C = H * D
    h = torch.randn(1, 3, C, S_FULL, generator=gen).permute(0, 2, 1, 3)
    hist = torch.randn(1, C, 1, S_FULL, generator=gen)
    w = torch.randn(C, C, 3, 1, generator=gen) / C**0.5
    want = h + F.conv2d(torch.cat([hist, h, torch.zeros_like(hist)], 2), w)
    for dt in dtypes:
        wd = tap_major(to(w, dt))
        got = ffn_temporal_conv(to(h, dt), wd)
        got[:, :, :1] += past_tap(to(hist, dt).permute(0, 2, 3, 1), wd).permute(0, 3, 1, 2)
        check(rows, "ffn_temporal_conv (GEMM)", dt, {"out": (got, want)})
    failed = [r for r in rows if not r["pass"]]
    return {"rows": rows, "all_pass": not failed, "failed": failed}


def _build_full():
    from server import bench as B

    if "model" not in STATE:
        t = time.perf_counter()
        model = B.build_transformer("streaming-2.6b", DEV, torch.bfloat16, seed=0)
        STATE["untapped_ok"] = True
        STATE["model"] = model
        STATE["scene1"] = B.Scene(model, 704, 1280, 1, DEV, torch.bfloat16, seed=0)
        torch.cuda.synchronize()
        log(
            f"built streaming-2.6b bf16 in {time.perf_counter() - t:.1f} s, "
            f"{torch.cuda.memory_allocated() / 2**30:.2f} GB allocated"
        )
    return STATE["model"], STATE["scene1"]


def _profile(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    cats = {"gemm": 0.0, "attention": 0.0, "triton_ours": 0.0, "triton_other": 0.0, "conv": 0.0, "other": 0.0}
    kernels = []
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None)
        if t is None:
            t = getattr(evt, "cuda_time_total", 0.0)
        if not t:
            continue
        name = evt.key
        low = name.lower()
        ms = t / 1000
        if any(s in low for s in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "_mma", "splitk")):
            cat = "gemm"
        elif any(s in low for s in ("flash", "fmha", "attention", "attn")):
            cat = "attention"
        elif any(s in low for s in ("_gdn_", "_prep_kernel", "_beta_discount")):
            cat = "triton_ours"
        elif "triton" in low:
            cat = "triton_other"
        elif "conv" in low or "implicit" in low:
            cat = "conv"
        else:
            cat = "other"
        cats[cat] += ms
        kernels.append({"name": name[:120], "ms": round(ms, 4), "count": evt.count, "cat": cat})
    kernels.sort(key=lambda k: -k["ms"])
    return {
        "by_category_ms": {k: round(v, 3) for k, v in cats.items()},
        "total_ms": round(sum(cats.values()), 3),
        "kernel_launches": sum(k["count"] for k in kernels),
        "top": kernels[:30],
    }


def _ops_table(fn, rows: int = 25) -> str:
    """Per-op (aten level, with input shapes) table of one call, sorted by CUDA time: what the glue is made of."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    key = "device_time_total" if hasattr(prof.key_averages()[0], "device_time_total") else "cuda_time_total"
    return prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=rows, max_name_column_width=60)


def sec_pytest_gpu(timeout_s: float) -> dict:
    """The repository's CUDA tests (``-m gpu``) of the files that hold them, in a subprocess."""
    import subprocess

    files = [
        str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text()
    ]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs", *files]
    t = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
        rc, text = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = (
            "timeout",
            (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout),
        )
    tail = text.strip().splitlines()[-40:]
    log("  pytest -m gpu: rc " + str(rc) + "\n    " + "\n    ".join(tail[-15:]))
    return {"files": files, "rc": rc, "seconds": round(time.perf_counter() - t, 1), "tail": tail}


def sec_forward(reps: int) -> dict:
    from server import bench as B

    model, scene = _build_full()
    cache = B._full_cache(model, scene)
    STATE["cache_full"] = cache
    raymap, plucker, start = scene.camera(2)
    latents = scene.noise(2).to(torch.bfloat16)
    timestep = torch.full((1, 3), 727.0, device=DEV)

    def fwd():
        return model.forward_chunk(
            latents, timestep, scene.text, scene.text_mask, raymap, plucker, cache=cache, start_frame=start
        )

    out: dict = {}
    B.prepare_for_inference(model)
    with B.kernels(False, DEV):
        out["eager_reference_ms"] = cuda_ms(fwd, reps)
        log(f"  eager reference ops: {out['eager_reference_ms']} ms")
    with B.kernels(True, DEV) as active:
        out["triton_active"] = active
        out["eager_kernels_ms"] = cuda_ms(fwd, reps)
        log(f"  eager + Triton (GDN + q/k/camera prep): {out['eager_kernels_ms']} ms")
        replay = B._forward_graph(model, latents, timestep, scene, raymap, plucker, cache, start)
        timed = B.time_graph(replay, DEV, reps, SUSTAIN_S, warmup=3)  # and again hot, at the power cap
        out["graph_kernels_ms"] = round(timed["graph"], 4)
        out["graph_clocks"] = timed["clocks"]["forward_graph"]
        log(f"  graph + Triton: {out['graph_kernels_ms']} ms; clocks {out['graph_clocks']}")
        out["graph_kernels_sustained_ms"] = round(timed["graph_sustained"], 4)
        out["graph_sustained_clocks"] = timed["clocks"]["forward_graph_sustained"]
        log(
            f"  graph + Triton after {SUSTAIN_S:.0f} s of replays: {out['graph_kernels_sustained_ms']} ms; "
            f"clocks {out['graph_sustained_clocks']}"
        )
        out["profile_eager_kernels"] = _profile(fwd)
        log(
            f"  profile by category (ms): {out['profile_eager_kernels']['by_category_ms']}, "
            f"{out['profile_eager_kernels']['kernel_launches']} launches"
        )
        out["profile_graph"] = _profile(replay)
        log(f"  graph replay profile by category (ms): {out['profile_graph']['by_category_ms']}")
        out["ops_top25"] = _ops_table(fwd)
        log("  top 25 ops by CUDA time (eager forward, Triton on):\n" + out["ops_top25"])
        first = model.forward_chunk(
            latents, timestep, scene.text, scene.text_mask, raymap, plucker, cache=cache, start_frame=start
        )
    with B.kernels(False, DEV):
        ref = fwd()
    out["kernels_vs_reference_rel_err"] = rel(first, ref)
    out["best_ms"] = min(
        v for k, v in out.items() if k.endswith("_ms") and "untapped" not in k and "sustained" not in k
    )
    out["model_tflops_at_best"] = round(15.1e12 / (out["best_ms"] / 1000) / 1e12, 1)  # 15.1 TFLOP per forward
    STATE["forward"] = out
    return out


def sec_diffusers(reps: int) -> dict:
    from server import bench as B

    model, scene = _build_full()
    res = B.measure_diffusers(model.config, scene, reps, torch.bfloat16)
    best = STATE.get("forward", {}).get("best_ms")
    if res["forward_ms"] is not None and best:
        res["ratio"] = round(res["forward_ms"] / best, 2)
    STATE["diffusers"] = res
    log(f"  diffusers: {res}")
    return res


def _vae():
    from server import bench as B

    if "vae" not in STATE:
        STATE["vae"] = B.build_vae("ltx2", DEV, torch.bfloat16, seed=1)
    return STATE["vae"]


def sec_stream(chunks: int) -> dict:
    from server import bench as B

    model, scene = _build_full()
    vae = _vae()
    out: dict = {}
    z = scene.noise(2)
    dec = vae.streaming_decoder()
    dec.decode(scene.noise(0)[:, :, :1].to(torch.bfloat16))
    out["decode_3_latent_frames_ms"] = cuda_ms(lambda: dec.decode(z.to(torch.bfloat16)), reps=3, warmup=1)
    log(f"  VAE decode of 3 latent frames (24 px frames): {out['decode_3_latent_frames_ms']} ms")
    out["vae_params_m"] = round(sum(p.numel() for p in vae.parameters()) / 1e6, 1)
    dec = None
    STATE.pop("cache_full", None)  # the peak below is one session's: weights, VAE, its cache, activations
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(DEV)
    with B.kernels(True, DEV):
        with ClockSampler(DEV) as clocks:
            s = B.measure_stream(model, vae, scene, chunks, use_graphs=True)
        out["graphs"] = {k: v for k, v in s.items()}
        out["graphs_clocks"] = clocks.summary()
        out["peak_gb"] = round(torch.cuda.max_memory_allocated(DEV) / 2**30, 3)
        out["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(DEV) / 2**30, 3)
        out["fps"] = round(24 / (s["wall_ms"] / 1000), 2)
        log(
            f"  graphs: chunk {s['wall_ms']:.1f} ms (transformer {s['transformer_ms']:.1f}, decode "
            f"{s['decode_ms']:.1f}) -> {out['fps']} fps; peak {out['peak_gb']} GB"
        )
        out["ttff_ms"] = round(B.measure_ttff(model, vae, scene), 1)
        s = B.measure_stream(model, vae, scene, max(4, chunks // 2), use_graphs=False)
        out["eager"] = s
        out["eager_fps"] = round(24 / (s["wall_ms"] / 1000), 2)
        log(f"  eager chunks: {s['wall_ms']:.1f} ms -> {out['eager_fps']} fps")
    STATE["stream"] = out
    return out


def sec_memory(late: int) -> dict:
    from server import bench as B

    model, scene = _build_full()
    with B.kernels(True, DEV):
        mem = B.measure_memory(model, scene, 5, late)
    out = {
        "chunk5_bytes": mem[5],
        f"chunk{late}_bytes": mem[late],
        "equal": mem[5] == mem[late],
        "cache_gb": round(mem["cache_bytes"] / 2**30, 3),
    }
    log(f"  memory: {out}")
    STATE["memory"] = out
    return out


def _stream_chunks(model, scene, x0, noise1, graphs: bool):
    """Write chunk 0 from clean latents x0, then sample chunk 1 (4 steps + write); returns (v at t=1000, latents)."""
    from engine.graphs import ChunkGraphs

    cache = model.new_cache(scene.batch, height=scene.h, width=scene.w)
    raymap, plucker, start = scene.camera(0)
    dt = next(model.parameters()).dtype
    model.forward_chunk(
        x0.to(dt),
        torch.zeros(scene.batch, 4, device=DEV),
        scene.text.to(dt),
        scene.text_mask,
        raymap.to(dt),
        plucker.to(dt),
        cache=cache,
        start_frame=0,
        write_cache=True,
    )
    raymap, plucker, start = scene.camera(1)
    ts = torch.full((scene.batch, 3), 1000.0, device=DEV)
    v = model.forward_chunk(
        noise1.to(dt),
        ts,
        scene.text.to(dt),
        scene.text_mask,
        raymap.to(dt),
        plucker.to(dt),
        cache=cache,
        start_frame=start,
    )
    runner = ChunkGraphs(model, enabled=graphs)
    latents = runner.step(
        noise1,
        pinned=None,
        text=scene.text.to(dt),
        text_mask=scene.text_mask,
        raymap=raymap.to(dt),
        plucker=plucker.to(dt),
        cache=cache,
        start_frame=start,
    ).clone()
    return v.float(), latents


def sec_accuracy() -> dict:
    from server import bench as B

    out: dict = {}
    model, scene = _build_full()
    x0, noise1 = scene.noise(0), scene.noise(1)
    with B.kernels(True, DEV):
        v_bf, lat_bf = _stream_chunks(model, scene, x0, noise1, graphs=True)
    ref = B.build_transformer("streaming-2.6b", DEV, torch.float32, seed=0)
    B.prepare_for_inference(ref)
    with B.kernels(False, DEV), exact_fp32():
        v_32, lat_32 = _stream_chunks(ref, scene, x0, noise1, graphs=False)
    del ref
    torch.cuda.empty_cache()
    out["full_size"] = {
        "velocity_rel_err": rel(v_bf, v_32),
        "chunk_latents_rel_err": rel(lat_bf, lat_32),
        "note": "bf16 + Triton + CUDA graph vs the same reference code in fp32 on the GPU (TF32 off)",
    }
    log(f"  full size bf16 vs fp32: {out['full_size']}")

    # small config: GPU bf16 path vs the CPU fp32 reference, whole chunk (same weights, copied)
    import copy

    import sana_wm

    cfg_kw = dict(num_layers=4, hidden_size=448, num_attention_heads=4)
    with B._meta_parameters():
        m_cpu = sana_wm.SanaWMTransformer(sana_wm.SanaWMConfig.preset("streaming-2.6b", **cfg_kw))
    m_cpu = B.prepare_for_inference(B.random_init_(m_cpu, device="cpu", dtype=torch.float32, seed=5).eval())
    m_gpu = copy.deepcopy(m_cpu).to(DEV, torch.bfloat16)
    sc_gpu = B.Scene(m_gpu, 704, 1280, 1, DEV, torch.float32, seed=3)
    with B.kernels(True, DEV):
        v_g, lat_g = _stream_chunks(m_gpu, sc_gpu, sc_gpu.noise(0), sc_gpu.noise(1), graphs=True)
    sc_cpu = B.Scene(m_cpu, 704, 1280, 1, torch.device("cpu"), torch.float32, seed=3)
    with B.kernels(False, torch.device("cpu")):
        v_c, lat_c = _stream_chunks_cpu(m_cpu, sc_cpu)
    err = rel(lat_g, lat_c)
    out["small_vs_cpu"] = {
        "config": cfg_kw,
        "velocity_rel_err": rel(v_g, v_c),
        "chunk_latents_rel_err": err,
        "pass": err <= 2e-2,
    }
    log(f"  small config GPU bf16 vs CPU fp32: {out['small_vs_cpu']}")
    return out


def _stream_chunks_cpu(model, scene):
    """The CPU fp32 counterpart of ``_stream_chunks`` (same noise and camera), eager."""
    from engine.sampler import StreamingSampler

    cache = model.new_cache(1, height=scene.h, width=scene.w)
    raymap, plucker, _ = scene.camera(0)
    x0 = scene.noise(0)
    model.forward_chunk(
        x0,
        torch.zeros(1, 4),
        scene.text,
        scene.text_mask,
        raymap,
        plucker,
        cache=cache,
        start_frame=0,
        write_cache=True,
    )
    raymap, plucker, start = scene.camera(1)
    noise1 = scene.noise(1)
    v = model.forward_chunk(
        noise1, torch.full((1, 3), 1000.0), scene.text, scene.text_mask, raymap, plucker, cache=cache, start_frame=start
    )
    sampler = StreamingSampler(model)
    cond = dict(
        text=scene.text, text_mask=scene.text_mask, raymap=raymap, plucker=plucker, cache=cache, start_frame=start
    )
    latents = sampler.denoise(noise1, pinned=None, **cond)
    sampler.write_cache(latents, **cond)
    return v, latents


def sec_micro(reps: int) -> dict:
    from sana_wm.ops import gdn as gdn_ref
    from sana_wm.ops import qk_prep as prep_ref
    from sana_wm.ops.gdn_triton import gdn_cam_triton, gdn_main_triton
    from sana_wm.ops.qk_prep_triton import prep_camera_triton, prep_gdn_qk_triton, prep_softmax_qk_triton
    from sana_wm.ops.rope import rope_frequencies, slice_rope_for_camera
    from sana_wm.ops.temporal_conv import ffn_temporal_conv, tap_major

    bf = torch.bfloat16
    out: dict = {}

    def pair(name, ref_fn, tri_fn):
        r, t = cuda_ms(ref_fn, reps), cuda_ms(tri_fn, reps)
        out[name] = {"reference_ms": r, "triton_ms": t, "speedup": round(r / t, 2)}
        log(f"  {name:24s} reference {r:8.3f} ms  triton {t:8.3f} ms  x{r / t:.1f}")

    (q, k, qr, kr, v), beta, g, skv, sz = gdn_case(1, 20, 3, 112, seed=21)
    q, k, qr, kr, v, beta = (x.to(DEV, bf) for x in (q, k, qr, kr, v, beta))
    g, skv, sz = g.to(DEV), skv.to(DEV), sz.to(DEV)
    pair(
        "gdn_main",
        lambda: gdn_ref.gdn_main(q, k, qr, kr, v, beta, g, state_kv=skv, state_z=sz),
        lambda: gdn_main_triton(q, k, qr, kr, v, beta, g, state_kv=skv, state_z=sz),
    )
    pair(
        "gdn_cam",
        lambda: gdn_ref.gdn_cam(qr, kr, v, beta, g, state_kv=skv),
        lambda: gdn_cam_triton(qr, kr, v, beta, g, state_kv=skv),
    )

    H, D, T = 20, 112, 3
    (pq, pk, pv), wq, wk, gen = projections(1, T, H, D, seed=22)
    pq, pk, pv, wq, wk = (x.to(DEV, bf) for x in (pq, pk, pv, wq, wk))
    rope = rope_frequencies(D, torch.arange(7, 10), LAT_H, LAT_W).to(DEV)
    rope_cam = slice_rope_for_camera(rope, D)
    ray_q, ray_kv = (x.to(DEV) for x in camera_rays(1, T, LAT_H, LAT_W, seed=23))
    b2 = torch.sigmoid(torch.randn(1, H, T, S_FULL, device=DEV)).to(bf)
    ks = (D * S_FULL) ** -0.5
    pair(
        "prep_gdn_qk",
        lambda: prep_ref.prep_gdn_qk(pq, pk, wq, wk, rope, heads=H, key_scale=ks),
        lambda: prep_gdn_qk_triton(pq, pk, wq, wk, rope, heads=H, key_scale=ks),
    )
    pair(
        "prep_softmax_qk",
        lambda: prep_ref.prep_softmax_qk(pq, pk, wq, wk, rope, heads=H),
        lambda: prep_softmax_qk_triton(pq, pk, wq, wk, rope, heads=H),
    )
    pair(
        "prep_camera gdn",
        lambda: prep_ref.prep_camera(pq, pk, pv, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=b2),
        lambda: prep_camera_triton(pq, pk, pv, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=b2),
    )

    C = H * D
    h = torch.randn(1, 3, C, S_FULL, device=DEV, dtype=bf).permute(0, 2, 1, 3)
    hist = torch.randn(1, C, 1, S_FULL, device=DEV, dtype=bf)
    w = torch.randn(C, C, 3, 1, device=DEV, dtype=bf) / C**0.5
    wt = tap_major(w)
    zeros = torch.zeros_like(hist)
    tconv = {
        "cudnn_conv2d_ms": cuda_ms(lambda: h + F.conv2d(torch.cat([hist, h, zeros], 2), w), reps),
        "gemm_strided_taps_ms": cuda_ms(lambda: ffn_temporal_conv(h, w), reps),
        "gemm_tap_major_ms": cuda_ms(lambda: ffn_temporal_conv(h, wt), reps),
    }
    out["temporal_conv"] = tconv
    log(f"  temporal conv (per block): {tconv}")

    # softmax attention of a streaming block: cached sink (4 frames) + window (3 frames) + current chunk (3 frames)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    nq, nc = 3 * S_FULL, 7 * S_FULL
    scale = 128**-0.5
    qa = torch.randn(1, H, nq, D, device=DEV, dtype=bf)
    cached = torch.randn(1, H, nc, D, device=DEV, dtype=bf)
    cur = torch.randn(1, H, nq, D, device=DEV, dtype=bf)
    bias = torch.zeros(nc + nq, device=DEV, dtype=bf).view(1, 1, 1, -1)
    buf = torch.cat([cached, cur], 2)
    flops = 4 * nq * (nc + nq) * D * H
    attn = {
        "concat_masked_auto_ms": cuda_ms(
            lambda: F.scaled_dot_product_attention(
                qa, torch.cat([cached, cur], 2), torch.cat([cached, cur], 2), attn_mask=bias, scale=scale
            ),
            reps,
        )
    }
    attn["buffer_unmasked_auto_ms"] = cuda_ms(lambda: F.scaled_dot_product_attention(qa, buf, buf, scale=scale), reps)
    for name, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
    ):
        try:
            with sdpa_kernel([backend]):
                attn[f"buffer_unmasked_{name}_ms"] = cuda_ms(
                    lambda: F.scaled_dot_product_attention(qa, buf, buf, scale=scale), reps
                )
        except Exception as e:  # noqa: BLE001
            attn[f"buffer_unmasked_{name}_ms"] = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
    best = min(v for v in attn.values() if isinstance(v, float))
    attn["best_tflops"] = round(flops / (best / 1000) / 1e12, 1)
    attn["per_forward_estimate_ms"] = {
        "current": round(10 * attn["concat_masked_auto_ms"], 2),
        "proposed": round(10 * best, 2),
    }
    out["softmax_window_attention"] = attn
    log(f"  softmax window attention (one branch of one block): {attn}")
    return out


def sec_batched(chunks: int) -> dict:
    from server import bench as B

    model, _ = _build_full()
    vae = _vae()
    rows = []
    with B.kernels(True, DEV):
        for batch in (2, 4):
            scene = B.Scene(model, 704, 1280, batch, DEV, torch.bfloat16, seed=0)
            s = B.measure_stream(model, vae, scene, chunks, use_graphs=True)
            rows.append(B.batched_row(batch, s))
            log(f"  batch {batch}: {rows[-1]}")
            torch.cuda.empty_cache()
    STATE["batched"] = rows
    return {"rows": rows}


def sec_compile(reps: int) -> dict:
    from server import bench as B

    model, scene = _build_full()
    cache = STATE.get("cache_full") or B._full_cache(model, scene)
    raymap, plucker, start = scene.camera(2)
    latents = scene.noise(2).to(torch.bfloat16)
    timestep = torch.full((1, 3), 727.0, device=DEV)
    notes: list = []
    out: dict = {}
    with B.kernels(True, DEV):
        res = B._measure_compiled(model, latents, timestep, scene, raymap, plucker, cache, start, reps, notes)
        out["forward"] = res
        log(f"  compile (Triton on): {res}")
        STATE["compiled"] = res
    out["notes"] = notes
    return out


def sec_compile_stream(chunks: int) -> dict:
    """Chunks with the compiled blocks captured in the chunk graphs (the engine's ``compile=True`` path); the first
    chunks compile the variants the forward section did not (cache write, masked chunk 1, the 4-frame chunk 0)."""
    from server import bench as B

    model, scene = _build_full()
    STATE.pop("cache_full", None)
    torch.cuda.empty_cache()
    out: dict = {}
    try:
        for block in model.blocks:
            block.compile(dynamic=False)
        with B.kernels(True, DEV):
            s = B.measure_stream(model, _vae(), scene, chunks, use_graphs=True)
        out["stream"] = s
        out["fps"] = round(24 / (s["wall_ms"] / 1000), 2)
        log(
            f"  compiled + graphs: chunk {s['wall_ms']:.1f} ms (transformer {s['transformer_ms']:.1f}) -> "
            f"{out['fps']} fps"
        )
    finally:
        for block in model.blocks:
            block._compiled_call_impl = None
        torch._dynamo.reset()
    STATE["compiled_stream"] = out.get("fps")
    return out


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------


def _gb(n) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def bench_report() -> dict:
    """The ``sana-wm bench`` JSON fields, filled from the sections."""
    from server import bench as B

    fwd = STATE.get("forward", {})
    stream = STATE.get("stream", {})
    mem = STATE.get("memory", {})
    diff = STATE.get("diffusers", {"forward_ms": None, "ratio": None, "reason": "section did not run"})
    g = stream.get("graphs", {})
    fps = stream.get("fps")
    batched = (
        [
            {
                "batch": 1,
                "chunk_ms": g.get("wall_ms"),
                "transformer_ms": g.get("transformer_ms"),
                "decode_ms": g.get("decode_ms"),
                "aggregate_fps": fps,
                "per_session_fps": fps,
            }
        ]
        if g
        else []
    )
    batched += STATE.get("batched", [])
    compiled = STATE.get("compiled", {})
    candidates = [v for v in (fwd.get("best_ms"), compiled.get("compiled_graph")) if isinstance(v, float)]
    best = min(candidates) if candidates else None
    diff = dict(diff)
    if diff.get("forward_ms") and best:
        diff["ratio"] = round(diff["forward_ms"] / best, 2)
    report = {
        "version": 1,
        "device": "cuda",
        "card": RESULTS["env"].get("card"),
        "torch": torch.__version__,
        "triton": RESULTS["env"].get("triton"),
        "model": "streaming-2.6b",
        "dtype": "bf16",
        "compile": bool(compiled),
        "kernels": bool(fwd.get("triton_active")),
        "graphs": True,
        "height": 704,
        "width": 1280,
        "tokens_per_chunk": 3 * S_FULL,
        "forward_ms": {
            "eager_reference": fwd.get("eager_reference_ms"),
            "eager_kernels": fwd.get("eager_kernels_ms"),
            "graph": fwd.get("graph_kernels_ms"),
            "graph_sustained": fwd.get("graph_kernels_sustained_ms"),
            "compiled": STATE.get("compiled", {}).get("compiled"),
            "compiled_graph": STATE.get("compiled", {}).get("compiled_graph"),
            "compile_s": STATE.get("compiled", {}).get("compile_s"),
            "best": best,
        },
        "diffusers": diff,
        "chunk_ms": {
            "total": g.get("wall_ms"),
            "transformer": g.get("transformer_ms"),
            "decode": g.get("decode_ms"),
            "chunks": g.get("chunks"),
        },
        "fps": fps,
        "fps_compiled": STATE.get("compiled_stream"),
        "realtime_multiple": None if fps is None else round(fps / 16, 2),
        "ttff_ms": stream.get("ttff_ms"),
        "memory_gb": {
            "peak": stream.get("peak_gb"),
            "chunk5": _gb(mem.get("chunk5_bytes")),
            "chunk200": _gb(mem.get("chunk200_bytes")),
            "equal": mem.get("equal"),
            "cache_gb": mem.get("cache_gb"),
            "text_encoder": "not loaded (random prompt embeddings)",
        },
        "batched": batched,
        "clocks": {
            "forward_graph": fwd.get("graph_clocks"),
            "forward_graph_sustained": fwd.get("graph_sustained_clocks"),
            "diffusers": diff.get("clocks"),
            "stream": stream.get("graphs_clocks"),
        },
        "notes": ["written by bench/gpu_check.py"],
        "elapsed_s": round(time.perf_counter() - T0, 1),
    }
    report["targets"] = {
        "forward_ms<=30": B._target(best, B.TARGETS["forward_ms"]),
        "diffusers_ratio>=8": B._target(diff.get("ratio"), B.TARGETS["diffusers_ratio"], above=True),
        "fps>=80": B._target(fps, B.TARGETS["fps"], above=True),
        "ttff_ms<=1000": B._target(stream.get("ttff_ms"), B.TARGETS["ttff_ms"]),
        "peak_gb<=12": B._target(stream.get("peak_gb"), B.TARGETS["peak_gb"]),
        "memory_constant": mem.get("equal"),
    }
    return report


def summary_table() -> str:
    lines = ["", "=" * 100, "GPU CHECK SUMMARY", "=" * 100]
    env = RESULTS["env"]
    lines.append(
        f"card {env.get('card')}  torch {env.get('torch')}  triton {env.get('triton')}  "
        f"missing {list(env.get('missing_modules', {}))}"
    )
    kern = RESULTS["sections"].get("kernels_bf16")
    if kern:
        worst: dict = {}
        for r in kern["rows"]:
            worst[r["kernel"]] = max(worst.get(r["kernel"], 0.0), r["rel_err"])
        lines.append("kernel (bf16 vs CPU fp32)            worst rel err   <= 2e-2")
        lines += [f"  {k:34s} {v:12.2e}   {'ok' if v <= 2e-2 else 'FAIL'}" for k, v in worst.items()]
    kern32 = RESULTS["sections"].get("kernels_fp32")
    if kern32:
        lines.append(f"fp32 kernels all within 1e-4: {kern32['all_pass']}")
    pt = RESULTS["sections"].get("pytest_gpu")
    if pt:
        lines.append(f"pytest -m gpu: rc {pt['rc']} in {pt['seconds']} s: {pt['tail'][-1] if pt['tail'] else ''}")
    rep = bench_report()
    lines.append(f"forward ms (3 frames, full cache): {rep['forward_ms']}")
    prof = RESULTS["sections"].get("forward", {}).get("profile_eager_kernels")
    if prof:
        lines.append(f"eager forward by category (ms): {prof['by_category_ms']}, {prof['kernel_launches']} launches")
    lines.append(f"diffusers: {rep['diffusers']}")
    lines.append(
        f"chunk ms: {rep['chunk_ms']}  fps {rep['fps']}  fps compiled {rep['fps_compiled']}  ttff {rep['ttff_ms']} ms"
    )
    lines.append(f"memory GB: {rep['memory_gb']}")
    lines.append(f"batched: {rep['batched']}")
    lines.append(f"targets: {rep['targets']}")
    micro = RESULTS["sections"].get("micro")
    if micro:
        for k, v in micro.items():
            lines.append(f"micro {k}: {v}")
    acc = RESULTS["sections"].get("accuracy")
    if acc:
        lines.append(f"accuracy: {acc}")
    comp = RESULTS["sections"].get("compile")
    if comp:
        lines.append(f"compile: {comp}")
    lines.append(f"errors in: {list(RESULTS['errors'])}  skipped: {RESULTS['skipped']}")
    lines.append(f"durations (s): {RESULTS['durations_s']}  total {time.perf_counter() - T0:.0f} s")
    return "\n".join(lines)


def sec_micro_scripts(names: list[str]) -> dict:
    """``run()`` of every ``bench/micro_<name>.py`` (each kernel's old path vs new path at the real shape)."""
    sys.path.insert(0, str(ROOT / "bench"))
    out = {}
    for name in names:
        t = time.perf_counter()
        try:
            out[name] = importlib.import_module(f"micro_{name}").run()
        except Exception as e:  # noqa: BLE001 - one script's failure must not hide the others
            out[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        log(f"  micro_{name}: {time.perf_counter() - t:.1f} s")
        torch.cuda.empty_cache()
    return out


def sec_session() -> dict:
    """``bench/bench_session.py``: key-to-frame latency and chunk rate of real sessions (decode overlap off / on)."""
    sys.path.insert(0, str(ROOT / "bench"))
    STATE.pop("cache_full", None)
    torch.cuda.empty_cache()
    return importlib.import_module("bench_session").run()


def _exact(fn):
    def run():
        with exact_fp32():
            return fn()

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=600.0, help="start no section that would end after this (600)")
    p.add_argument("--pytest-timeout-s", type=float, default=300.0,
                   help="limit of the pytest -m gpu section (300; the 36 tests took 140-200+ s on one H100 / H200)")
    p.add_argument("--skip", default="", help="comma-separated section names to skip")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--micro", default="", help="comma-separated bench/micro_<name>.py scripts to run first")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: needs a CUDA device")
    torch.set_grad_enabled(False)
    skip = {s for s in args.skip.split(",") if s}
    budget = args.budget_s
    log(f"writing to {OUT.resolve()}; budget {budget:.0f} s; missing modules: {list(MISSING)}")
    micro = [m for m in args.micro.split(",") if m]
    sections = [
        ("env", sec_env, 0),
        ("pytest_gpu", lambda: sec_pytest_gpu(args.pytest_timeout_s), args.pytest_timeout_s),
        ("kernels_bf16", lambda: sec_kernels((torch.bfloat16,)), 30),
        ("forward", lambda: sec_forward(args.reps), 40),
        ("diffusers", lambda: sec_diffusers(args.reps), 30),
        ("stream", lambda: sec_stream(args.chunks), 40),
        ("session", sec_session, 60),
        ("compile", lambda: sec_compile(args.reps), 45),
        ("memory", lambda: sec_memory(200), 35),
        ("accuracy", sec_accuracy, 25),
        ("batched", lambda: sec_batched(5), 30),
        ("micro", lambda: sec_micro(args.reps), 10),
        ("compile_stream", lambda: sec_compile_stream(args.chunks), 110),
        ("kernels_fp32", lambda: _exact(lambda: sec_kernels((torch.float32,)))(), 25),
    ]
    if micro:
        sections.insert(1, ("micro_scripts", lambda: sec_micro_scripts(micro), 0))
    for name, fn, need in sections:
        run_section(name, fn, need, budget, skip)
    report = bench_report()
    (OUT / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    try:
        from server.bench import write_png

        write_png(report, OUT / "bench.png")
    except Exception as e:  # noqa: BLE001
        RESULTS["errors"]["png"] = f"{type(e).__name__}: {e}"
    dump()
    print(summary_table(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
