"""The kernels of one CUDA-graph forward in launch order, with their durations and the idle gaps between them.

    python bench/trace_forward.py [--out trace_forward.json]     # needs CUDA

Full-size streaming model (random weights, bf16), 3 latent frames against a full cache, the same graph as
``sana-wm bench``'s ``graph`` forward. Writes JSON: ``replay_ms`` (CUDA events), ``kernel_ms`` (sum of kernel
durations), ``gap_ms`` (sum of idle time between consecutive kernels), ``kernels`` (count), ``by_name`` (count, total
and mean duration per kernel name, largest total first) and ``sequence`` ([name, duration us, gap before us] for
every kernel, in order): what one block launches and where the device idles.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from server import bench as B


def trace(fn) -> list[dict]:
    """Device activity (kernels, memcpy, memset) of one ``fn()`` call, ordered by start time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    path = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    device = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    return sorted(device, key=lambda e: e["ts"])


def summarise(events: list[dict]) -> dict:
    seq, by_name, gaps = [], {}, 0.0
    end = None
    for e in events:
        gap = 0.0 if end is None else max(0.0, e["ts"] - end)
        gaps += gap
        end = max(end or 0.0, e["ts"] + e["dur"])
        name = e["name"][:100]
        seq.append([name, round(e["dur"], 2), round(gap, 2)])
        row = by_name.setdefault(name, [0, 0.0])
        row[0] += 1
        row[1] += e["dur"]
    table = sorted(by_name.items(), key=lambda kv: -kv[1][1])
    return {
        "kernel_ms": round(sum(e["dur"] for e in events) / 1000, 3),
        "gap_ms": round(gaps / 1000, 3),
        "kernels": len(events),
        "by_name": [[n, c, round(t / 1000, 4), round(t / c, 2)] for n, (c, t) in table],
        "sequence": seq,
    }


def full_size_forward(dev: torch.device) -> tuple:
    """The full-size streaming model (random weights, bf16, prepared for inference) and the inputs of one forward over
    3 latent frames against a full cache, in ``server.bench._forward_graph``'s argument order: (model, latents,
    timestep, scene, raymap, plucker, cache, start). Call under ``torch.no_grad()`` and ``server.bench.kernels``."""
    model = B.build_transformer("streaming-2.6b", dev, torch.bfloat16, seed=0)
    scene = B.Scene(model, 704, 1280, 1, dev, torch.bfloat16, seed=0)
    B.prepare_for_inference(model)
    cache = B._full_cache(model, scene)
    raymap, plucker, start = scene.camera(2)
    latents = scene.noise(2).to(torch.bfloat16)
    timestep = torch.full((1, 3), 727.0, device=dev)
    return model, latents, timestep, scene, raymap, plucker, cache, start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "trace_forward.json"))
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("trace_forward needs CUDA")
    dev = torch.device("cuda")
    with torch.no_grad(), B.kernels(True, dev):
        replay = B._forward_graph(*full_size_forward(dev))
        result = {"device": torch.cuda.get_device_name(), "replay_ms": B.time_ms(replay, dev, args.reps)}
        result.update(summarise(trace(replay)))
    Path(args.out).write_text(json.dumps(result, indent=0))
    print(json.dumps({k: v for k, v in result.items() if k not in ("sequence", "by_name")}))
    for row in result["by_name"][:40]:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
