"""The graph forward of the current code against earlier kernel modules, in one process, replayed in alternation.

    python bench/ab_forward.py --export e7231be ab_base            # here, with git: writes ab_base/<module>.py
    python bench/ab_forward.py --baseline ab_base                  # on the GPU (needs no git)
    python bench/ab_forward.py --baseline-conditioning-inside      # baseline: timestep conditioning in the graph
    python bench/ab_forward.py --set 'gdn_triton.GRAM_LAUNCH={"BLOCK_S": 32, "num_warps": 4}'   # a launch knob

Full-size streaming model (random weights, bf16), 3 latent frames against a full cache, as ``sana-wm bench``'s graph
forward. The baseline graph runs every ``sana_wm/ops/<module>.py`` found in the baseline folder in place of the
current one (the names in its ``__all__``: the kernels' entry points, which launch their own module's kernels);
``--baseline-conditioning-inside``: the baseline graph also computes the timestep conditioning itself (as every
forward did before the engine computed it once per step, outside its graphs); ``--set MODULE.NAME=JSON`` (repeatable):
the current graph is captured with that module-level constant of ``sana_wm/ops/<MODULE>.py`` set (a tuning knob such
as a launch configuration), the baseline with the code's own value. The
two graphs replay ``--repeats`` times in alternation, in ABBA order (the card's clock drifts as it heats, so the
pairs matter more than the absolute numbers, and the order within a pair flips every repeat); prints and writes JSON
(``--out``, default ``$OUT/ab_forward.json``): ms per repeat for each, and the mean of current - baseline over the
repeats with its standard error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server import bench as B  # noqa: E402
from server.clocks import ClockSampler, summarise  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from baseline import mean_se, module_from  # noqa: E402
from trace_forward import full_size_forward  # noqa: E402

MODULES = ("short_conv_triton", "gdn_triton", "gdn_gates_triton", "qk_prep_triton", "ffn_triton", "modulation_triton")


def export(rev: str, folder: Path) -> None:
    """``sana_wm/ops/<module>.py`` at ``rev`` for every module in MODULES into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in MODULES:
        src = subprocess.run(["git", "show", f"{rev}:sana_wm/ops/{name}.py"], cwd=ROOT, capture_output=True, text=True)
        if src.returncode == 0:
            (folder / f"{name}.py").write_text(src.stdout)
    print(f"exported {sorted(p.name for p in folder.glob('*.py'))} at {rev} to {folder}")


def _swaps(folder: Path) -> list[tuple[object, str, object]]:
    """(live module, name, baseline value) for every public name of every baseline module."""
    swaps = []
    for path in sorted(folder.glob("*.py")):
        live = importlib.import_module(f"sana_wm.ops.{path.stem}")
        base = module_from(path)
        names = [n for n in getattr(base, "__all__", ()) if hasattr(live, n)]
        swaps += [(live, n, getattr(base, n)) for n in names]
    return swaps


def _setting(text: str) -> tuple[object, str, object]:
    """``MODULE.NAME=JSON`` -> (live module of sana_wm.ops, NAME, value); the constant must exist."""
    target, _, value = text.partition("=")
    module, _, name = target.partition(".")
    live = importlib.import_module(f"sana_wm.ops.{module}")
    if not name or not hasattr(live, name) or not value:
        sys.exit(f"--set {text!r}: expected MODULE.NAME=JSON with NAME a constant of sana_wm/ops/MODULE.py")
    return live, name, json.loads(value)


@contextmanager
def patched(assignments: list[tuple[object, str, object]]) -> Iterator[None]:
    """``setattr(owner, name, value)`` for every (owner, name, value) for the block, then the values from before."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in assignments]
    for owner, name, value in assignments:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def abba(
    a: Callable[[], None],
    b: Callable[[], None],
    dev: torch.device,
    repeats: int,
    reps: int,
    before_b: Callable[[], object] | None = None,
    after_b: Callable[[], object] | None = None,
) -> dict:
    """Both replays timed ``repeats`` times (median of ``reps`` each) in ABBA order: the order within a pair flips
    every repeat, so a drift with the card's temperature cancels over two repeats. ``before_b`` / ``after_b`` run
    around each timing of ``b``. Returns ``a_ms`` / ``b_ms`` per repeat, ``b_minus_a_ms`` (:func:`mean_se` of the
    pairs) and ``clocks`` (nvidia-smi summaries of each side's timings)."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    samples: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(repeats):
        for key, replay in (("a", a), ("b", b))[:: 1 if i % 2 == 0 else -1]:
            if key == "b" and before_b is not None:
                before_b()
            with ClockSampler(dev) as clocks:
                times[key].append(B.time_ms(replay, dev, reps))
            samples[key] += clocks.lines
            if key == "b" and after_b is not None:
                after_b()
    return {
        "a_ms": [round(t, 3) for t in times["a"]],
        "b_ms": [round(t, 3) for t in times["b"]],
        "b_minus_a_ms": mean_se([y - x for x, y in zip(times["a"], times["b"])]),
        "clocks": {key: summarise(lines) for key, lines in samples.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", nargs=2, metavar=("REV", "FOLDER"))
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--baseline-conditioning-inside", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=JSON")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "."), "ab_forward.json"))
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    if args.export:
        export(args.export[0], Path(args.export[1]))
        return 0
    inside = args.baseline_conditioning_inside
    if (args.baseline is None and not inside and not args.set) or not torch.cuda.is_available():
        sys.exit("ab_forward needs CUDA and --baseline FOLDER, --baseline-conditioning-inside and / or --set")
    dev = torch.device("cuda")
    swaps = [] if args.baseline is None else _swaps(args.baseline)
    settings = [_setting(text) for text in args.set]
    with torch.no_grad(), B.kernels(True, dev):
        inputs = full_size_forward(dev)
        with patched(swaps):
            baseline = B._forward_graph(*inputs, conditioning_outside=not inside)
        with patched(settings):
            current = B._forward_graph(*inputs)
        timed = abba(baseline, current, dev, args.repeats, args.reps)
        result = {
            "device": torch.cuda.get_device_name(),
            "baseline_swaps": sorted(f"{s[0].__name__}.{s[1]}" for s in swaps),
            "baseline_conditioning_inside": inside,
            "current_settings": args.set,
            "baseline_ms": timed["a_ms"],
            "current_ms": timed["b_ms"],
            "current_minus_baseline_ms": timed["b_minus_a_ms"],
        }
    print(json.dumps(result))
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
