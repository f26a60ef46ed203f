"""Where the steady chunks of a real session go: device busy and idle time per stream, and what the host ran while
the device idled.

    OUT=out python bench/trace_chunk.py [--chunks 3]     # CUDA, full size, random weights, bf16, 1280x704

A ``World`` as ``bench/bench_session.py`` builds it; one session's ``Session.pipeline`` (``render_path``'s loop, the
decode overlapped) runs past its warm-up chunks (eager chunk 0, graph captures), then ``--chunks`` + 2 chunks under
``torch.profiler`` with Python stacks; the device time counted is that between the host receiving the first of them
and the last but one (``--chunks`` chunk intervals: the profiler's start-up and the pipeline's drain left out).
Writes ``$OUT/trace_chunk.json``: the chunk interval (host, median), the window, the device's busy time (the union of
all kernels, copies and memsets over every stream) and idle time, per stream its busy time and kernel count, and every
idle gap of the device longer than ``--gap-us`` with the innermost frames of our code (``engine/``, ``sana_wm/``,
``server/``) that the host was running when it began, also summed per innermost frame: the host code the device
waited for.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_session import ACTIONS, PROMPT, WARM_CHUNKS, build_world  # noqa: E402

OURS = ("engine/", "sana_wm/", "server/")
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, merged (start, end) intervals."""
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _host_frames(events: list[dict], at: float) -> tuple[list[str], str | None]:
    """(names of the Python frames of our code running on the host at time ``at``, outermost first; the innermost
    Python frame of any code then, with its thread)."""
    live = [e for e in events if e["ts"] <= at < e["ts"] + e["dur"]]
    live.sort(key=lambda e: (e["ts"], -e["dur"]))
    inner = f"{live[-1]['name']} [thread {live[-1].get('tid')}]" if live else None
    return [e["name"] for e in live if any(part in e["name"] for part in OURS)], inner


def analyse(events: list[dict], gap_us: float, window: tuple[float, float] | None = None) -> dict:
    """The summary described in the module docstring, from a chrome trace's events; ``window`` (start, end) in the
    trace's microseconds: only device time inside it counts (default: from the first device event to the last)."""
    device = [e for e in events if e.get("cat") in DEVICE_CATS and "dur" in e]
    python = [e for e in events if e.get("cat") in ("python_function", "cpu_op", "cuda_runtime") and "dur" in e]
    if window is not None:
        lo, hi = window
        device = [
            {**e, "ts": max(e["ts"], lo), "dur": min(e["ts"] + e["dur"], hi) - max(e["ts"], lo)}
            for e in device if e["ts"] < hi and e["ts"] + e["dur"] > lo
        ]
    if not device:
        return {"note": "no device events (CPU run)"}
    busy = _union([(e["ts"], e["ts"] + e["dur"]) for e in device])
    start, end = (busy[0][0], busy[-1][1]) if window is None else window
    streams: dict = collections.defaultdict(lambda: [[], 0])
    for e in device:
        row = streams[str(e.get("args", {}).get("stream", e.get("tid")))]
        row[0].append((e["ts"], e["ts"] + e["dur"]))
        row[1] += 1
    gaps, by_frame = [], collections.Counter()
    for (_, a), (b, _) in zip(busy, busy[1:]):
        if b - a < gap_us:
            continue
        frames, inner = _host_frames(python, a)
        key = frames[-1] if frames else f"(no frame of ours; innermost: {inner})"
        by_frame[key] += b - a
        gaps.append({
            "at_ms": round((a - start) / 1000, 3), "ms": round((b - a) / 1000, 3), "host": frames[-3:], "inner": inner,
        })
    busy_us = sum(b - a for a, b in busy)
    return {
        "host_events": dict(collections.Counter(e["cat"] for e in python)),
        "window_ms": round((end - start) / 1000, 2),
        "device_busy_ms": round(busy_us / 1000, 2),
        "device_idle_ms": round((end - start - busy_us) / 1000, 2),
        "streams": {
            s: {"busy_ms": round(sum(b - a for a, b in _union(iv)) / 1000, 2), "events": n}
            for s, (iv, n) in sorted(streams.items(), key=lambda kv: -len(kv[1][0]))
        },
        "gaps_over_threshold": len(gaps),
        "gap_ms_over_threshold": round(sum(g["ms"] for g in gaps), 2),
        "idle_by_host_frame_ms": {k: round(v / 1000, 2) for k, v in by_frame.most_common(20)},
        "largest_gaps": sorted(gaps, key=lambda g: -g["ms"])[:25],
    }


@torch.no_grad()
def run(chunks: int, gap_us: float) -> dict:
    from torch.profiler import ProfilerActivity, profile, record_function

    device = torch.device("cuda")
    world = build_world(device, smoke=False)
    world.overlap_decode = True
    image = np.random.default_rng(0).integers(0, 256, (world.height, world.width, 3), dtype=np.uint8)
    session = world.start(image, PROMPT, seed=0)
    n = WARM_CHUNKS + 1 + chunks + 2
    path = (ACTIONS * (1 + n // len(ACTIONS)))[:n]
    pipe = iter(session.pipeline(path))
    for _ in range(WARM_CHUNKS + 1):
        next(pipe)
    marks = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        for i in range(chunks + 2):
            with record_function(f"trace_chunk:{i}"):
                next(pipe)
            marks.append(time.perf_counter())
        torch.cuda.synchronize()
    session.close()
    trace = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    ends = {e["name"]: e["ts"] + e["dur"] for e in events if str(e.get("name", "")).startswith("trace_chunk:")}
    out = {
        "device": torch.cuda.get_device_name(device),
        "chunks": chunks,
        "chunk_interval_ms": round(float(np.median(np.diff(marks[:-1]))) * 1000, 2),
        "note": "under the profiler (with Python stacks) the host runs slower than without it",
    }
    out.update(analyse(events, gap_us, (ends["trace_chunk:0"], ends[f"trace_chunk:{chunks}"])))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=3)
    p.add_argument("--gap-us", type=float, default=50.0, help="report device idle gaps longer than this (50)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("trace_chunk needs CUDA")
    out = run(args.chunks, args.gap_us)
    text = json.dumps(out, indent=1)
    print(text)
    folder = Path(os.environ.get("OUT", "."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trace_chunk.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
