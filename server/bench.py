"""``sana-wm bench``: speed, latency and memory of streaming generation, with the diffusers reference in the same run.

    sana-wm bench                                  # full-size random-weight models on CUDA, bf16
    sana-wm bench --dtype fp16 --compile --chunks 20 --json bench.json --png bench.png
    sana-wm bench --demo --device cpu --chunks 3 --json out.json     # tiny model on the CPU (CI)

The work does not depend on weight values (their power draw does, on a power-capped card: ``clocks``), so the models
are built with random weights straight on the device in the benchmark dtype (parameters are created on the meta
device first: no fp32 copy on the CPU). The text encoder is not loaded (prompt embeddings are random), as in a
session whose encoder was offloaded after the prompt.

Reported (JSON, see ``FIELDS``): forward ms over one 3-frame chunk against a full cache (eager, with the Triton
kernels, as a CUDA graph, the graph again after ``--sustain-s`` seconds of replays (the card hot and at its power
cap, as in a long session), compiled with ``--compile``); the diffusers ``SanaWMTransformer3DModel`` forward on the
same latent shape, its ratio to ours, and the device time of its kernels (the eager reference is host-bound); the
steady chunk time (the sampler's passes + the VAE decode of the chunk's 24 frames, decode overlapped on a side
stream) and the generated fps it gives, with its multiple of real time (16 fps); time to the first frame of a new
session on a warm world; peak device memory and the memory after chunk 5 and chunk ``--memory-chunks`` (the later
chunks only run the cache-writing pass, which is what grows state if anything does); batched sessions (``--batch
1,2,4``): aggregate and per-session fps; ``clocks``: the GPU's SM clock, power and power-cap share while the timings
ran (``server.clocks``, where nvidia-smi is there).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .clocks import ClockSampler

__all__ = ["main", "build_parser", "run", "FIELDS", "build_transformer", "build_vae", "random_init_"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
REALTIME_FPS = 16
FRAMES_PER_CHUNK = 24
TEXT_TOKENS = 300
TARGETS = {
    "forward_ms": 30.0,
    "diffusers_ratio": 8.0,
    "fps": 80.0,
    "ttff_ms": 1000.0,
    "peak_gb": 12.0,
}
FIELDS = (
    "version",
    "device",
    "card",
    "torch",
    "triton",
    "model",
    "dtype",
    "compile",
    "kernels",
    "graphs",
    "height",
    "width",
    "tokens_per_chunk",
    "forward_ms",
    "diffusers",
    "chunk_ms",
    "fps",
    "realtime_multiple",
    "ttff_ms",
    "memory_gb",
    "batched",
    "targets",
    "clocks",
    "notes",
    "elapsed_s",
)
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Models with random weights, built on the device
# ----------------------------------------------------------------------------------------------------------------


@contextmanager
def _meta_parameters() -> Iterator[None]:
    """Parameters created inside this block live on the meta device (their initialisers become no-ops); buffers and
    plain tensor attributes (e.g. diffusers' RoPE table) stay real."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param) -> None:
        original(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@torch.no_grad()
def random_init_(module: nn.Module, *, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Give every parameter fresh random values in ``dtype`` on ``device`` (meta parameters are materialised):
    norm weights ~1, GDN ``A_log`` ~ -1, vectors and modulation tables small, matrices ``N(0, 0.25 / fan_in)``.
    Buffers are moved to ``device`` with their values."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            noise = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
            if "norm" in name or "norm" in type(mod).__name__.lower():
                value = 1.0 + 0.1 * noise
            elif name == "A_log":
                value = 0.5 * noise - 1.0
            elif p.ndim == 1 or name == "scale_shift_table":
                value = 0.1 * noise
            else:
                value = noise * (0.5 / max(1, p[0].numel()) ** 0.5)
            mod._parameters[name] = nn.Parameter(
                value.to(dtype if p.is_floating_point() else p.dtype), requires_grad=False
            )
    return module.to(device)


def build_transformer(preset: str, device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """``sana_wm.SanaWMTransformer`` of a ``SanaWMConfig`` preset with random weights on ``device``."""
    import sana_wm

    with _meta_parameters():
        model = sana_wm.SanaWMTransformer(sana_wm.SanaWMConfig.preset(preset))
    return random_init_(model, device=device, dtype=dtype, seed=seed).eval().requires_grad_(False)


def build_vae(preset: str, device, dtype: torch.dtype, seed: int = 1) -> nn.Module:
    """``sana_wm.LTX2VAE`` of a config preset (``"ltx2"`` full size, ``"tiny"``) with random weights."""
    import sana_wm

    with _meta_parameters():
        vae = sana_wm.LTX2VAE(sana_wm.LTX2VAEConfig.preset(preset))
    return random_init_(vae, device=device, dtype=dtype, seed=seed).eval().requires_grad_(False)


def build_diffusers(cfg, device, dtype: torch.dtype, seed: int = 2) -> nn.Module:
    """diffusers' ``SanaWMTransformer3DModel`` with our config's layout and random weights (ImportError if absent)."""
    from diffusers.models.transformers.transformer_sana_wm import SanaWMTransformer3DModel

    with _meta_parameters():
        ref = SanaWMTransformer3DModel(**cfg.to_diffusers_config())
    return random_init_(ref, device=device, dtype=dtype, seed=seed).eval().requires_grad_(False)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """``model.prepare_inference()`` (tap-major FFN temporal-conv weights; values unchanged)."""
    return model.prepare_inference()


@contextmanager
def kernels(enabled: bool, device: torch.device) -> Iterator[bool]:
    """Run the transformer with (``True``) or without the Triton kernels of ``sana_wm.ops.kernels``.

    Until the transformer imports its GDN ops from ``sana_wm.ops.kernels`` itself, this points its module-level
    ``gdn_main`` / ``gdn_cam`` names there for the duration (same signatures). Yields whether Triton runs on
    ``device``."""
    import sana_wm.transformer as tr
    from sana_wm.ops import kernels as K
    from sana_wm.ops._triton import runnable_on

    saved = {name: getattr(tr, name) for name in ("gdn_main", "gdn_cam")}
    try:
        for name in saved:
            setattr(tr, name, getattr(K, name))
        with K.use_triton(enabled):
            yield enabled and K.triton_enabled() and runnable_on(torch.empty(0, device=device))
    finally:
        for name, fn in saved.items():
            setattr(tr, name, fn)


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


class Scene:
    """Random prompt embeddings, a first image and a steady forward camera for ``batch`` sessions of one size."""

    def __init__(self, model: nn.Module, height: int, width: int, batch: int, device, dtype, seed: int = 0):
        cfg = model.config
        gen = torch.Generator().manual_seed(seed)
        self.model, self.height, self.width, self.batch = model, height, width, batch
        self.device, self.dtype, self.seed = torch.device(device), dtype, seed
        self.h, self.w = height // 32, width // 32
        from engine.world import valid_text

        text = torch.randn(batch, TEXT_TOKENS, cfg.caption_channels, generator=gen)
        mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.bool)
        mask[:, TEXT_TOKENS // 2 :] = False
        # the prompt encoder's layout (300 tokens, right padding; what diffusers attends, masked) and what a session
        # feeds the streaming transformer (one session: the 150 valid tokens, no mask)
        self.padded_text, self.padded_mask = text.to(self.device, dtype), mask.to(self.device)
        self.text, self.text_mask = valid_text(self.padded_text, self.padded_mask)
        self.image = torch.rand(batch, 3, 1, height, width, generator=gen) * 2 - 1
        self.intrinsics = np.array([0.8 * width, 0.8 * width, width / 2, height / 2])

    def camera(self, chunk: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(raymap (B,F,20), plucker (B,48,F,h,w), start_frame) of chunk ``chunk``, built like a session's window
        (identity + the chunk's 24 poses moving forward and yawing slowly)."""
        import controllers

        first = FRAMES_PER_CHUNK * chunk + 1
        poses = np.tile(np.eye(4), (FRAMES_PER_CHUNK + 1, 1, 1))
        for i, frame in enumerate(range(first, first + FRAMES_PER_CHUNK), start=1):
            yaw = 0.004 * frame
            poses[i, :3, :3] = [[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]]
            poses[i, :3, 3] = [0.0, 0.0, 0.02 * frame]
        lat0, start = (0, 0) if chunk == 0 else (1, 3 * chunk + 1)
        raymap, plucker = controllers.camera_conditioning(poses, self.intrinsics, (self.height, self.width), lat0, 4)
        B = self.batch
        raymap = raymap[None].expand(B, -1, -1).to(self.device, self.dtype)
        plucker = plucker[None].expand(B, -1, -1, -1, -1).to(self.device, self.dtype)
        return raymap, plucker, start

    def noise(self, chunk: int) -> torch.Tensor:
        from engine.sampler import chunk_noise

        frames = 4 if chunk == 0 else 3
        shape = (self.batch, self.model.config.in_channels, frames, self.h, self.w)
        return chunk_noise(self.seed, chunk, shape, self.device)


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median milliseconds of ``fn()`` (CUDA events on a GPU, wall clock on the CPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def kernel_ms(fn: Callable[[], object], device: torch.device) -> float | None:
    """Summed device time (ms) of the kernels, copies and memsets of one ``fn()`` after a warm-up call (the profiler);
    None off CUDA, or where the profiler cannot run (no CUPTI, another profiler active: logged). Beside a wall time
    it shows how much of a call the device was busy."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    _sync(device)
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            _sync(device)
    except RuntimeError as e:
        log(f"kernel time not measured: {e}")
        return None
    return round(sum(event.device_time_total for event in prof.key_averages()) / 1000, 2)


def run_for(fn: Callable[[], object], device: torch.device, seconds: float) -> int:
    """Call ``fn`` back to back for ``seconds`` (synchronising every few calls, so the launch queue stays short);
    returns the number of calls. Heats the card to the state a long session runs in before a sustained timing."""
    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            fn()
        calls += 8
        _sync(device)
    return calls


def time_graph(
    replay: Callable[[], object], device: torch.device, reps: int, sustain_s: float = 0.0, warmup: int = 1
) -> dict:
    """Median ms of a graph forward's ``replay`` (``graph``) and, after ``sustain_s`` seconds of back-to-back
    replays (the card hot and at its power cap, as in a long session; 0: skipped), again (``graph_sustained``, else
    None); ``clocks``: nvidia-smi summaries of the two timings (``forward_graph``, ``forward_graph_sustained``)."""
    with ClockSampler(device) as clocks:
        out = {"graph": time_ms(replay, device, reps, warmup), "graph_sustained": None}
    out["clocks"] = {"forward_graph": clocks.summary()}
    if sustain_s > 0:
        run_for(replay, device, sustain_s)
        with ClockSampler(device) as clocks:
            out["graph_sustained"] = time_ms(replay, device, reps, warmup)
        out["clocks"]["forward_graph_sustained"] = clocks.summary()
    return out


def _gb(n: int | float) -> float:
    return round(n / 2**30, 3)


def _mem(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def _write_chunk(model: nn.Module, scene: Scene, cache, chunk: int) -> None:
    """The cache-writing pass of ``chunk`` on the scene's noise taken as clean latents (t = 0)."""
    raymap, plucker, start = scene.camera(chunk)
    latents = scene.noise(chunk).to(scene.dtype)
    zeros = torch.zeros(scene.batch, latents.shape[2], device=scene.device)
    model.forward_chunk(
        latents, zeros, scene.text, scene.text_mask, raymap, plucker, cache=cache, start_frame=start, write_cache=True
    )


def _full_cache(model: nn.Module, scene: Scene):
    """A cache that holds chunks 0 and 1 (its sink and window are full), written with random clean latents."""
    cache = model.new_cache(scene.batch, height=scene.h, width=scene.w)
    for chunk in (0, 1):
        _write_chunk(model, scene, cache, chunk)
    return cache


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def measure_forward(
    model: nn.Module, scene: Scene, reps: int, use_kernels: bool, compile_: bool, notes: list, sustain_s: float = 0.0
) -> dict:
    """Forward ms of one read-only 3-frame chunk against a full cache: eager (reference ops), eager with the
    Triton kernels, one CUDA-graph replay, the same after ``sustain_s`` seconds of back-to-back replays
    (``graph_sustained``: the card at the temperature and power cap a long session runs at), compiled. ``clocks``:
    nvidia-smi summaries of the graph timings."""
    device = scene.device
    cache = _full_cache(model, scene)
    raymap, plucker, start = scene.camera(2)
    latents = scene.noise(2).to(scene.dtype)
    timestep = torch.full((scene.batch, 3), 727.0, device=device)

    def forward() -> torch.Tensor:
        return model.forward_chunk(
            latents, timestep, scene.text, scene.text_mask, raymap, plucker, cache=cache, start_frame=start
        )

    out: dict = {
        "eager_reference": None,
        "eager_kernels": None,
        "graph": None,
        "graph_sustained": None,
        "compiled": None,
        "compiled_graph": None,
        "compile_s": None,
    }
    with kernels(False, device):
        out["eager_reference"] = time_ms(forward, device, reps)
    with kernels(use_kernels, device) as active:
        if active:
            out["eager_kernels"] = time_ms(forward, device, reps)
        if device.type == "cuda":
            try:
                replay = _forward_graph(model, latents, timestep, scene, raymap, plucker, cache, start)
                out.update(time_graph(replay, device, reps, sustain_s))
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                notes.append(f"forward CUDA graph failed: {type(e).__name__}: {e}")
        if compile_:
            out.update(_measure_compiled(model, latents, timestep, scene, raymap, plucker, cache, start, reps, notes))
    log(f"forward ms: {out}")
    return out


def _forward_graph(
    model, latents, timestep, scene, raymap, plucker, cache, start, conditioning_outside: bool = True
) -> Callable[[], None]:
    """A CUDA graph of one read-only forward (the per-chunk inputs and the step's timestep conditioning computed once,
    outside it, as the engine does; ``conditioning_outside=False``: the conditioning inside, as before round 7);
    returns its replay."""
    from sana_wm.cuda_graph import capture

    frames = model.chunk_inputs(scene.text, scene.text_mask, raymap, plucker, start, "stream", None)
    frames.kv_offset = cache.kv_offset()
    cond = model.conditioning(timestep) if conditioning_outside else timestep
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        model.run_blocks(latents, cond, frames, cache, False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with capture(graph):  # as the engine captures its chunk graphs
        model.run_blocks(latents, cond, frames, cache, False)

    def replay() -> None:
        graph.replay()

    replay.inputs = (frames, cond)  # the graph reads their memory: alive as long as the replay is
    return replay


def _measure_compiled(model, latents, timestep, scene, raymap, plucker, cache, start, reps, notes) -> dict:
    """torch.compile of the blocks (``nn.Module.compile``), measured eagerly and inside a CUDA graph."""
    out: dict = {}
    device = scene.device
    try:
        for block in model.blocks:
            block.compile(dynamic=False)
        frames = model.chunk_inputs(scene.text, scene.text_mask, raymap, plucker, start, "stream", None)
        frames.kv_offset = cache.kv_offset()
        t = time.perf_counter()
        model.run_blocks(latents, timestep, frames, cache, False)
        _sync(device)
        out["compile_s"] = round(time.perf_counter() - t, 1)
        out["compiled"] = time_ms(lambda: model.run_blocks(latents, timestep, frames, cache, False), device, reps)
        if device.type == "cuda":
            try:
                out["compiled_graph"] = time_ms(
                    _forward_graph(model, latents, timestep, scene, raymap, plucker, cache, start), device, reps
                )
            except Exception as e:  # noqa: BLE001
                notes.append(f"compiled forward in a CUDA graph failed: {type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001
        notes.append(f"torch.compile failed: {type(e).__name__}: {e}")
    finally:
        for block in model.blocks:
            block._compiled_call_impl = None
    return out


@torch.no_grad()
def measure_diffusers(cfg, scene: Scene, reps: int, dtype: torch.dtype) -> dict:
    """diffusers' forward over the same latent shape (bidirectional, 3 frames, no cache): median wall ms (CUDA events)
    and, on CUDA, the device time of its kernels in one forward (``kernel_ms``: the eager reference is host-bound, so
    its wall time depends on the host's CPU more than on the card)."""
    try:
        ref = build_diffusers(cfg, scene.device, dtype)
    except ImportError as e:
        return {"forward_ms": None, "kernel_ms": None, "ratio": None, "reason": f"diffusers not importable: {e}"}
    raymap, plucker, _ = (x.to(dtype) if torch.is_tensor(x) else x for x in scene.camera(2))
    latents, text = scene.noise(2).to(dtype), scene.padded_text.to(dtype)
    timestep = torch.full((scene.batch, 1, 3), 727.0, device=scene.device)

    def forward():
        return ref(
            latents,
            timestep,
            text,
            encoder_attention_mask=scene.padded_mask,
            camera_conditions=raymap,
            chunk_plucker=plucker,
        ).sample

    try:
        with ClockSampler(scene.device) as clocks:
            ms = time_ms(forward, scene.device, reps)
        busy = kernel_ms(forward, scene.device)
    except Exception as e:  # noqa: BLE001
        return {
            "forward_ms": None, "kernel_ms": None, "ratio": None,
            "reason": f"diffusers forward failed: {type(e).__name__}: {e}",
        }
    finally:
        ref = None  # frees the reference model (the closure shares this cell)
        if scene.device.type == "cuda":
            torch.cuda.empty_cache()
    log(f"diffusers forward: {ms:.2f} ms" + (f", of which its kernels {busy:.2f} ms" if busy is not None else ""))
    return {"forward_ms": ms, "kernel_ms": busy, "ratio": None, "reason": None, "clocks": clocks.summary()}


@torch.no_grad()
def measure_stream(model, vae, scene: Scene, chunks: int, use_graphs: bool) -> dict:
    """Stream ``chunks`` chunks the way a session does (chunk 0 pinned to the encoded image), the transformer on
    the main stream (CUDA graphs from chunk 1) and the decode of each chunk on a side stream into pinned memory, one
    decoder call per latent frame as in ``Session.stream`` / ``step``.
    Returns per-chunk timings and the steady chunk time (wall clock between chunks once graphs exist)."""
    from engine.graphs import ChunkGraphs, FramePipe
    from engine.session import decode_parts

    device = scene.device
    cache = model.new_cache(scene.batch, height=scene.h, width=scene.w)
    decoder = vae.streaming_decoder()
    graphs = ChunkGraphs(model, enabled=use_graphs)
    pipe = FramePipe(lambda dec, z: dec.decode(z.to(vae.dtype)), device, slots=2 * len(decode_parts(1, 3)))
    first = vae.encode(scene.image.to(device, vae.dtype)).float()
    cuda = device.type == "cuda"
    marks, transformer_ms, decode_ms = [], [], []  # marks[c]: host time when chunk c's frames are on the host
    captured = []  # per chunk: whether its step captured CUDA graphs (host time that a steady chunk does not spend)
    previous = None
    prompt = model.text_inputs(scene.text, scene.text_mask)  # once, as a session's start does
    _sync(device)
    for c in range(chunks):
        raymap, plucker, start = scene.camera(c)
        noise = scene.noise(c)
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        else:
            t = time.perf_counter()
        captures = graphs.captures
        latents = graphs.step(
            noise,
            pinned=first if c == 0 else None,
            text=scene.text,
            text_mask=scene.text_mask,
            raymap=raymap,
            plucker=plucker,
            cache=cache,
            start_frame=start,
            prompt=prompt,
        ).clone()
        captured.append(graphs.captures != captures)
        if cuda:
            end.record()
        else:
            transformer_ms.append((time.perf_counter() - t) * 1000)
        # decoded like a session does: one decoder call per latent frame (the parts of Session.stream)
        tickets = [
            pipe.submit(decoder, latents[:, :, lo:hi], drop) for lo, hi, drop in decode_parts(c, latents.shape[2])
        ]
        if previous is not None:  # chunk c - 1's frames, while chunk c runs on the device
            _consume(pipe, previous, decode_ms, transformer_ms, cuda)
            marks.append(time.perf_counter())
        previous = (tickets, begin, end) if cuda else (tickets, None, None)
    _consume(pipe, previous, decode_ms, transformer_ms, cuda)
    marks.append(time.perf_counter())
    # Steady state: the interval between chunk k-1's and chunk k's frames on the host (k >= 1), in which chunk k + 1
    # is launched; left out where chunk k or k + 1 captured graphs, and the last one (the pipeline draining).
    spans = [marks[k] - marks[k - 1] for k in range(1, chunks - 1) if not (captured[k] or captured[k + 1])]
    steady = bool(spans)
    if not steady:  # too few chunks: every interval holds a capture or the drain
        spans = list(np.diff(marks)) or [marks[-1] - marks[0]]
    replays = [ms for ms, cap in zip(transformer_ms[1:], captured[1:]) if not cap]
    return {
        "chunks": chunks,
        "wall_ms": float(np.median(spans) * 1000),
        "transformer_ms": float(np.median(replays or transformer_ms[1:] or transformer_ms)),
        "decode_ms": float(np.median(decode_ms[1:] or decode_ms)),
        "steady": steady,
        "graph_captures": graphs.captures,
        "decoder_bytes": decoder.nbytes(),
    }


def _consume(pipe, entry, decode_ms: list, transformer_ms: list, cuda: bool) -> None:
    tickets, begin, end = entry
    for ticket in tickets:
        pipe.frames(ticket)
    decode_ms.append(sum(ticket.decode_time_ms() for ticket in tickets))
    if cuda:
        transformer_ms.append(begin.elapsed_time(end))


@torch.no_grad()
def measure_ttff(model, vae, scene: Scene) -> float:
    """Milliseconds from a new session's first image to its first pixel frame on the host, on a warm world: image
    encode, chunk 0 (eager, 4 frames), decode of latent frames 0 and 1 (frame 0 is dropped; 8 frames out)."""
    from engine.graphs import frames_uint8
    from engine.sampler import StreamingSampler

    device = scene.device
    sampler = StreamingSampler(model)
    _sync(device)
    t = time.perf_counter()
    cache = model.new_cache(scene.batch, height=scene.h, width=scene.w)
    decoder = vae.streaming_decoder()
    first = vae.encode(scene.image.to(device, vae.dtype)).float()
    raymap, plucker, start = scene.camera(0)
    prompt = model.text_inputs(scene.text, scene.text_mask)
    cond = dict(text=scene.text, text_mask=scene.text_mask, raymap=raymap, plucker=plucker, cache=cache,
                start_frame=start, prompt=prompt)
    latents = sampler.denoise(scene.noise(0), pinned=first, **cond)
    video = decoder.decode(latents[:, :, :2].to(vae.dtype))
    frames_uint8(video[:, :, 1:]).cpu()
    ms = (time.perf_counter() - t) * 1000
    log(f"time to first frame: {ms:.1f} ms")
    return ms


def batched_row(batch: int, stream: dict) -> dict:
    """One row of the batched report from ``measure_stream``'s result: chunk timings and fps, aggregate and per
    session."""
    fps = batch * FRAMES_PER_CHUNK / (stream["wall_ms"] / 1000)
    return {
        "batch": batch,
        "chunk_ms": round(stream["wall_ms"], 2),
        "transformer_ms": round(stream["transformer_ms"], 2),
        "decode_ms": round(stream["decode_ms"], 2),
        "aggregate_fps": round(fps, 2),
        "per_session_fps": round(fps / batch, 2),
    }


@torch.no_grad()
def measure_memory(model, scene: Scene, early: int, late: int) -> dict:
    """Device memory allocated after chunk ``early`` and after chunk ``late`` of a session that runs only the
    cache-writing pass per chunk (the cheap path; it is the pass that writes the state), measured in the same state
    (synchronised, no transients alive). Returns bytes (None on the CPU) and the cache size. Garbage of the bench's
    earlier measurements is collected first, so that a collection during the chunks cannot lower the later sample;
    what the chunks themselves leave in reference cycles still shows."""
    gc.collect()
    cache = model.new_cache(scene.batch, height=scene.h, width=scene.w)
    out = {}
    for c in range(late):
        _write_chunk(model, scene, cache, c)
        if c + 1 in (early, late):
            _sync(scene.device)
            out[c + 1] = _mem(scene.device)
    out["cache_bytes"] = cache.nbytes()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sana-wm bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true", help="tiny model and VAE (any device; CI)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile of the transformer blocks")
    p.add_argument("--chunks", type=int, default=None, help="streamed chunks per run, at least 3 (default 10, demo 3)")
    p.add_argument("--batch", default=None, help="session batch sizes, comma separated (default 1,2,4; demo 1,2)")
    p.add_argument("--height", type=int, default=None, help="frame height in pixels (default 704, demo 64)")
    p.add_argument("--width", type=int, default=None, help="frame width in pixels (default 1280, demo 96)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per forward (default 10, demo 2)")
    p.add_argument(
        "--memory-chunks", type=int, default=None, help="chunk count of the memory check (default 200, demo 12)"
    )
    p.add_argument(
        "--sustain-s",
        type=float,
        default=None,
        help="seconds of back-to-back graph replays before the sustained forward timing (default 30 on CUDA, 0 demo)",
    )
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers reference forward")
    p.add_argument("--no-kernels", action="store_true", help="PyTorch reference ops only (no Triton)")
    p.add_argument("--no-graphs", action="store_true", help="run chunks eagerly (no CUDA graphs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--png", type=Path, default=None, help="write a plot here (needs matplotlib)")
    return p


def _options(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --demo --device cpu)")
    if device.type == "cpu" and not args.demo:
        raise ValueError("the full-size model needs a CUDA device; use --demo for the tiny model on the CPU")
    args.device = device
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cpu" and args.dtype != "fp32":
        raise ValueError(f"--dtype {args.dtype} on the CPU is not supported by every op; use fp32")
    args.chunks = args.chunks or (3 if args.demo else 10)
    args.reps = args.reps or (2 if args.demo else 10)
    args.height = args.height or (64 if args.demo else 704)
    args.width = args.width or (96 if args.demo else 1280)
    args.memory_chunks = args.memory_chunks or (12 if args.demo else 200)
    args.batch = args.batch or ("1,2" if args.demo else "1,2,4")
    if args.sustain_s is None:
        args.sustain_s = 30.0 if device.type == "cuda" and not args.demo else 0.0
    if not args.sustain_s >= 0:
        raise ValueError(f"--sustain-s must be >= 0, got {args.sustain_s}")
    for name in ("chunks", "reps", "height", "width", "memory_chunks"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.chunks < 3:  # the steady chunk time is the interval between chunks k and k + 1 while k + 2 launches
        raise ValueError(f"--chunks must be at least 3 for a steady chunk time, got {args.chunks}")
    if args.height % 32 or args.width % 32:
        raise ValueError(f"--height and --width must be multiples of 32, got {args.height}x{args.width}")
    try:
        args.batch = sorted({int(b) for b in args.batch.split(",")})
    except ValueError:
        raise ValueError(f"--batch must be comma-separated integers, got {args.batch!r}") from None
    if not args.batch or min(args.batch) < 1:
        raise ValueError(f"--batch sizes must be >= 1, got {args.batch}")
    return args


def _target(value, limit: float, above: bool = False) -> bool | None:
    if value is None:
        return None
    return bool(value >= limit) if above else bool(value <= limit)


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark described by parsed options; returns the report (the JSON fields)."""
    import sana_wm
    from sana_wm.ops._triton import HAS_TRITON, triton

    device, dtype = args.device, DTYPES[args.dtype]
    notes: list[str] = []
    cuda = device.type == "cuda"
    preset = "tiny" if args.demo else "streaming-2.6b"
    cfg = sana_wm.SanaWMConfig.preset(preset)
    log(
        f"device {device} ({torch.cuda.get_device_name(device) if cuda else platform.processor() or 'cpu'}), "
        f"{args.dtype}, model {preset}, {args.height}x{args.width}"
    )
    report: dict = {
        "version": 1,
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__ if HAS_TRITON else None,
        "model": preset,
        "dtype": args.dtype,
        "compile": bool(args.compile),
        "kernels": False,
        "graphs": bool(cuda and not args.no_graphs),
        "height": args.height,
        "width": args.width,
        "tokens_per_chunk": cfg.chunk_size * (args.height // 32) * (args.width // 32),
        # a session attends the valid prompt tokens unmasked (engine.world.valid_text); diffusers attends all of
        # them with the padding mask, as its pipeline pads them
        "text_tokens": {"valid": TEXT_TOKENS // 2, "padded": TEXT_TOKENS},
        "notes": notes,
    }
    scene1 = None
    if not args.no_diffusers:
        scene1 = Scene(_stub_model(cfg), args.height, args.width, 1, device, dtype, args.seed)
        report["diffusers"] = measure_diffusers(cfg, scene1, args.reps, dtype)
    else:
        skipped = "skipped (--no-diffusers)"
        report["diffusers"] = {"forward_ms": None, "kernel_ms": None, "ratio": None, "reason": skipped}

    t = time.perf_counter()
    model = prepare_for_inference(build_transformer(preset, device, dtype, args.seed))
    vae = build_vae("tiny" if args.demo else "ltx2", device, dtype, args.seed + 1)
    _sync(device)
    log(f"built models in {time.perf_counter() - t:.1f} s")
    scene1 = Scene(model, args.height, args.width, 1, device, dtype, args.seed)

    use_kernels = not args.no_kernels
    forward = measure_forward(model, scene1, args.reps, use_kernels, args.compile, notes, args.sustain_s)
    report["kernels"] = bool(use_kernels and forward["eager_kernels"] is not None)
    # nvidia-smi samples while the timings ran (None without nvidia-smi): a power-capped card runs slower clocks
    report["clocks"] = {**forward.pop("clocks", {}), "diffusers": report["diffusers"].pop("clocks", None)}
    candidates = [forward[k] for k in ("graph", "eager_kernels", "eager_reference", "compiled_graph") if forward[k]]
    forward["best"] = min(candidates)
    report["forward_ms"] = forward
    diff = report["diffusers"]
    if diff["forward_ms"] is not None:
        diff["ratio"] = round(diff["forward_ms"] / forward["best"], 2)

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    batched = []
    with kernels(use_kernels, device):
        for batch in args.batch:
            scene = Scene(model, args.height, args.width, batch, device, dtype, args.seed)
            with ClockSampler(device) as clocks:
                stream = measure_stream(model, vae, scene, args.chunks, use_graphs=report["graphs"])
            if not stream["steady"]:
                notes.append(
                    f"batch {batch}: no steady interval among {args.chunks} chunks (each held a CUDA-graph capture, "
                    "or too few chunks), so the chunk time and fps include start-up time; use more --chunks (the "
                    "default 10 leaves 6 steady ones)"
                )
            if batch == 1:
                report["clocks"]["stream"] = clocks.summary()
            entry = batched_row(batch, stream)
            log(f"batch {batch}: {entry}")
            batched.append(entry)
            if batch == 1:
                report["chunk_ms"] = {
                    "total": entry["chunk_ms"],
                    "transformer": entry["transformer_ms"],
                    "decode": entry["decode_ms"],
                    "chunks": stream["chunks"],
                }
                report["fps"] = entry["aggregate_fps"]
                report["realtime_multiple"] = round(FRAMES_PER_CHUNK * 1000 / stream["wall_ms"] / REALTIME_FPS, 2)
                peak = torch.cuda.max_memory_allocated(device) if cuda else None
                report["ttff_ms"] = round(measure_ttff(model, vae, scene), 1)
                late = max(args.memory_chunks, 6)
                mem = measure_memory(model, scene, 5, late)
                m5, mN = mem[5], mem[late]
                report["memory_gb"] = {
                    "peak": None if peak is None else _gb(peak),
                    "chunk5": None if m5 is None else _gb(m5),
                    f"chunk{late}": None if mN is None else _gb(mN),
                    "equal": None if m5 is None or mN is None else m5 == mN,
                    "cache_gb": _gb(mem["cache_bytes"]),
                    "decoder_state_gb": _gb(stream["decoder_bytes"]),
                    "text_encoder": "not loaded (random prompt embeddings; offloaded in a session)",
                }
                log(f"memory: {report['memory_gb']}")
            del stream
            if cuda:
                torch.cuda.empty_cache()
    report["batched"] = batched
    on_target = cuda and not args.demo and (args.height, args.width) == (704, 1280)
    report["targets"] = {
        "forward_ms<=30": _target(forward["best"], TARGETS["forward_ms"]) if on_target else None,
        "diffusers_ratio>=8": _target(diff["ratio"], TARGETS["diffusers_ratio"], above=True) if on_target else None,
        "fps>=80": _target(report["fps"], TARGETS["fps"], above=True) if on_target else None,
        "ttff_ms<=1000": _target(report["ttff_ms"], TARGETS["ttff_ms"]) if on_target else None,
        "peak_gb<=12": _target(report["memory_gb"]["peak"], TARGETS["peak_gb"]) if on_target else None,
        "memory_constant": report["memory_gb"]["equal"] if on_target else None,
    }
    report["elapsed_s"] = round(time.perf_counter() - _T0, 1)
    return report


def _stub_model(cfg):
    """Just enough of a model for ``Scene`` (its config) before the real one is built."""
    return type("Stub", (), {"config": cfg})()


def summary(report: dict) -> str:
    fwd = report["forward_ms"]
    diff = report["diffusers"]
    lines = [
        f"sana-wm bench  {report['card']}  {report['model']}  {report['dtype']}  {report['height']}x{report['width']}",
        "forward (3 frames, full cache) ms: "
        + ", ".join(f"{k} {v:.2f}" for k, v in fwd.items() if isinstance(v, float) and k != "compile_s"),
        f"diffusers forward ms: {diff['forward_ms']}  ratio: {diff['ratio']}"
        + (f"  (its kernels: {diff['kernel_ms']} ms)" if diff.get("kernel_ms") else "")
        + (f"  ({diff['reason']})" if diff.get("reason") else ""),
        f"chunk ms: {report['chunk_ms']}",
        f"fps: {report['fps']}  ({report['realtime_multiple']}x real time)   ttff ms: {report['ttff_ms']}",
        f"memory GB: {report['memory_gb']}",
        "batched: "
        + "; ".join(
            f"B={b['batch']}: {b['aggregate_fps']} fps ({b['per_session_fps']}/session)" for b in report["batched"]
        ),
        f"targets: {report['targets']}",
        "clocks: "
        + (
            "; ".join(
                f"{part} {c['sm_mhz']['mean']} MHz, {c['power_w']} W, at the power cap {c['power_capped']:.0%}"
                for part, c in report["clocks"].items()
                if c
            )
            or "not sampled (no CUDA device or no nvidia-smi)"
        ),
    ]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def write_png(report: dict, path: Path) -> bool:
    """A 2x2 summary plot; False (and a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["notes"].append("matplotlib not installed: no PNG written")
        return False
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    fwd = {k: v for k, v in report["forward_ms"].items() if isinstance(v, float) and k not in ("compile_s", "best")}
    if report["diffusers"]["forward_ms"]:
        busy = {"diffusers kernels": report["diffusers"]["kernel_ms"]} if report["diffusers"].get("kernel_ms") else {}
        fwd = {"diffusers": report["diffusers"]["forward_ms"], **busy, **fwd}
    ax = axes[0][0]
    bars = ax.bar(list(fwd), list(fwd.values()), color="tab:blue")
    clocks = report.get("clocks") or {}
    sampled = {"diffusers": "diffusers", "graph": "forward_graph", "graph_sustained": "forward_graph_sustained"}
    for bar, name in zip(bars, fwd):  # the SM clock each timing ran at, where nvidia-smi sampled it
        c = clocks.get(sampled.get(name, ""))
        if c:
            ax.annotate(
                f"{c['sm_mhz']['mean']:.0f} MHz",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.axhline(TARGETS["forward_ms"], color="tab:red", ls="--", lw=1)
    ax.set_title("forward over 3 latent frames (ms)")
    ax.tick_params(axis="x", rotation=30)
    ax = axes[0][1]
    chunk = {k: v for k, v in report["chunk_ms"].items() if k in ("transformer", "decode", "total") and v}
    ax.bar(list(chunk), list(chunk.values()), color="tab:green")
    ax.set_title("chunk of 24 frames (ms)")
    ax = axes[1][0]
    batches = [b["batch"] for b in report["batched"]]
    ax.plot(batches, [b["aggregate_fps"] for b in report["batched"]], "o-", label="aggregate")
    ax.plot(batches, [b["per_session_fps"] for b in report["batched"]], "s-", label="per session")
    ax.axhline(REALTIME_FPS, color="tab:red", ls="--", lw=1, label="real time")
    ax.set_xlabel("sessions in a batch")
    ax.set_title("generated frames per second")
    ax.legend()
    ax = axes[1][1]
    mem = {k: v for k, v in report["memory_gb"].items() if isinstance(v, float)}
    ax.bar(list(mem), list(mem.values()), color="tab:purple")
    ax.set_title("memory (GB)")
    ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"sana-wm bench: {report['card']}, {report['dtype']}, {report['height']}x{report['width']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """``sana-wm bench``; errors in the options raise ValueError (reported in one line by ``server.cli``)."""
    args = _options(argv)
    report = run(args)
    if args.png is not None:
        write_png(report, args.png)
    print(summary(report), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0
