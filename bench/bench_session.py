"""What a user of the engine sees: key-to-frame latency and chunk rate of real ``Session`` objects.

    OUT=out python bench/bench_session.py          # CUDA, full size, random weights, bf16, 1280x704
    python bench/bench_session.py --smoke          # CPU, tiny networks, 64x64 (checks the script itself)

A ``World`` is built from the full-size random-weight transformer and VAE (a tiny prompt encoder: only its output
shape matters). For ``World.overlap_decode`` off (decode after the cache-writing pass, one stream) and on (decode
parts on a side stream while the cache-writing pass runs):

- ``stream``: ``Session.stream(actions)`` per chunk, host milliseconds from the call to its first part (8 frames:
  the key-to-frame latency of an interactive client), to the whole chunk and to its denoise passes being queued
  (``queued_ms``: the host work before the device can start on the chunk), and the chunk's ``camera`` stage (its
  conditioning and noise reaching the device, ``Chunk.timings``);
- ``pipeline``: ``Session.pipeline`` over a known path (``render_path``'s loop): chunk interval and frames per
  second.

The first chunks (eager chunk 0, graph captures) are left out of the medians. Also reports whether the frames of
every run are bitwise equal (they must be) and the world's peak GPU memory (what the process held before is left
out). Writes ``$OUT/bench_session.json`` (``--json``); ``--decoder-options JSON`` sets the sessions' VAE decoder
switches (``World.decoder_options``, e.g. ``{"cuda_graph": true}``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ACTIONS = ["w-24", "dw-24", "a-24", "w-24", "jw-24", "none-24", "d-24", "w-24", "aw-24", "none-24"]
WARM_CHUNKS = 3  # chunk 0 runs eagerly, chunks 1 and 2 capture their graphs
PROMPT = "a harbour at dusk"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_world(device: torch.device, smoke: bool):
    """A World of random full-size networks (``smoke``: tiny networks on the CPU)."""
    import sana_wm
    from engine import World
    from server import bench

    dtype = torch.float32 if smoke else torch.bfloat16
    model = bench.build_transformer("tiny" if smoke else "streaming-2.6b", device, dtype, seed=0)
    vae = bench.build_vae("tiny" if smoke else "ltx2", device, dtype)
    encoder = sana_wm.PromptEncoder.tiny(hidden_size=model.config.caption_channels, seed=0)
    size = (64, 64) if smoke else (704, 1280)
    return World(model, vae, encoder, height=size[0], width=size[1], name="random-weights")


def _median_ms(values: list[float]) -> float:
    return round(float(np.median(values[WARM_CHUNKS:] or values)) * 1000, 2)


@contextlib.contextmanager
def _denoise_marks(marks: list[float]):
    """Append the host clock to ``marks`` each time ``ChunkGraphs.denoise`` returns (the denoise passes queued)."""
    from engine.graphs import ChunkGraphs

    original = ChunkGraphs.denoise

    def denoise(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        marks.append(time.perf_counter())
        return out

    ChunkGraphs.denoise = denoise
    try:
        yield
    finally:
        ChunkGraphs.denoise = original


def stream_latency(world, image: np.ndarray) -> tuple[dict, np.ndarray]:
    """Host time to the first part and to the whole chunk of ``Session.stream`` per chunk, and to the moment its
    denoise passes are queued (the host work a key press waits for before the device can start)."""
    session = world.start(image, PROMPT, seed=0)
    first, whole, camera, queued, frames = [], [], [], [], []
    for actions in ACTIONS:
        _sync(world.device)
        marks: list[float] = []
        t0 = time.perf_counter()
        parts = []
        with _denoise_marks(marks):
            for part in session.stream(actions):
                if not parts:
                    first.append(time.perf_counter() - t0)
                    camera.append(part.timings["camera"])
                parts.append(part.frames)
        whole.append(time.perf_counter() - t0)
        queued.append(marks[0] - t0)
        frames.append(np.concatenate(parts))
    session.close()
    out = {"first_part_ms": _median_ms(first), "chunk_ms": _median_ms(whole), "camera_ms": _median_ms(camera),
           "queued_ms": _median_ms(queued)}
    return out, np.concatenate(frames)


def pipeline_rate(world, image: np.ndarray) -> tuple[dict, np.ndarray]:
    """Chunk interval and fps of ``Session.pipeline`` over a known path."""
    session = world.start(image, PROMPT, seed=0)
    marks, frames = [], []
    _sync(world.device)
    for chunk in session.pipeline(ACTIONS):
        marks.append(time.perf_counter())
        frames.append(chunk.frames)
    session.close()
    interval = float(np.median(np.diff(marks)[WARM_CHUNKS:]))
    return {"chunk_interval_ms": round(interval * 1000, 2), "fps": round(24 / interval, 2)}, np.concatenate(frames)


@torch.no_grad()
def run(device: str = "cuda", smoke: bool = False, decoder_options: dict | None = None) -> dict:
    device = torch.device(device)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0  # the caller's own tensors (e.g. gpu_check's)
    world = build_world(device, smoke)
    world.decoder_options = dict(decoder_options or {})
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    image = np.random.default_rng(0).integers(0, 256, (world.height, world.width, 3), dtype=np.uint8)
    out: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu"}
    out["decoder_options"] = world.decoder_options
    frames = {}
    for name, measure in (("stream", stream_latency), ("pipeline", pipeline_rate)):
        for overlap in (False, True):
            world.overlap_decode = overlap
            key = f"{name}_{'overlap' if overlap else 'sequential'}"
            out[key], frames[key] = measure(world, image)
            print(f"  {key}: {out[key]}", file=sys.stderr, flush=True)
    ref = frames["stream_sequential"]
    out["frames_bitwise_equal"] = all(np.array_equal(f, ref) for f in frames.values())
    if cuda:  # this world only: its weights and, at the peak, one session's cache, decoder and activations
        out["peak_gb"] = round((torch.cuda.max_memory_allocated(device) - before) / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny networks on the CPU (checks the script)")
    p.add_argument("--decoder-options", type=json.loads, default={},
                   help="the sessions' VAE decoder switches as JSON (World.decoder_options)")
    p.add_argument("--json", default="bench_session.json", help="file name under $OUT (bench_session.json)")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench_session needs CUDA (or --smoke)")
    out = run("cpu" if args.smoke else "cuda", smoke=args.smoke, decoder_options=args.decoder_options)
    text = json.dumps(out, indent=1)
    print(text)
    folder = Path(os.environ.get("OUT", "."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
