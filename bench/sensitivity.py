"""How much each kernel family costs the graph forward's critical path: the forward with that family launched twice.

    python bench/sensitivity.py [--groups prep,gdn_scan] [--mode twice|skip] [--repeats 6] [--reps 40]
                                [--png sensitivity.png]                                        # needs CUDA

Full-size streaming model (random weights, bf16), 3 latent frames against a full cache, the same graph as
``sana-wm bench``'s ``graph`` forward. For every group below a second graph is captured with the group's Triton
kernels (or SDPA) launched twice (``--mode twice``), and the two graphs replay in ABBA order (``bench/ab_forward.py``'s
method), with ``nvidia-smi`` sampling the clocks of each (``server.clocks``). A group's ``delta_ms`` (changed - full,
mean over the repeats, with its standard error) is what its kernels add to the critical path: about their in-context
time where nothing hides them, less where the other CUDA stream's work overlaps them. The kernels' summed durations
cannot tell the two apart.

``--mode skip`` replaces the launches by no-ops instead. Their outputs then stay uninitialised, NaN spreads through
the residual stream, and the GEMMs run faster on NaN than on real data (this H100 is power-limited in the forward):
the ``nan_latents`` row (the full graph on NaN latents, every other input unchanged) measures that effect alone, and
it is as large as any kernel's cost, so skipped forwards say little about the kernels (each row's ``clocks`` show
the power cap at work). Writes ``$OUT/sensitivity.json`` (and a bar chart with ``--png``, given matplotlib).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server import bench as B  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from ab_forward import abba, patched  # noqa: E402
from trace_forward import full_size_forward  # noqa: E402

_GDN = ("gdn_triton", ("_gdn_gram_kernel", "_gdn_scan_kernel", "_gdn_out_kernel"))
_PREP = ("qk_prep_triton", ("_prep_kernel_rms", "_prep_kernel", "_beta_discount_kernel", "_ucpe_decode_kernel"))
_GLUE = ("modulation_triton", ("_ln_modulate_kernel", "_gated_output_kernel", "_gated_residual_kernel"))
_SHORT = ("short_conv_triton", ("_short_conv_kernel",))
# group -> [(module under sana_wm.ops, kernel names)]; "sdpa" is PyTorch's attention call
GROUPS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "prep_rms": [("qk_prep_triton", ("_prep_kernel_rms",))],
    "prep": [("qk_prep_triton", ("_prep_kernel",))],
    "beta_discount": [("qk_prep_triton", ("_beta_discount_kernel",))],
    "ucpe_decode": [("qk_prep_triton", ("_ucpe_decode_kernel",))],
    "short_conv": [_SHORT],
    "gdn_gates": [("gdn_gates_triton", ("_gdn_gates_kernel",))],
    "gdn_gram": [("gdn_triton", ("_gdn_gram_kernel",))],
    "gdn_scan": [("gdn_triton", ("_gdn_scan_kernel",))],
    "gdn_out": [("gdn_triton", ("_gdn_out_kernel",))],
    "glu_dwconv": [("ffn_triton", ("_glu_dwconv_kernel",))],
    "ln_modulate": [("modulation_triton", ("_ln_modulate_kernel",))],
    "gated_output_residual": [("modulation_triton", ("_gated_output_kernel", "_gated_residual_kernel"))],
    "qk_prep_and_gdn": [_GDN, _PREP, _SHORT],
    "all_triton": [
        _GDN,
        _PREP,
        _GLUE,
        _SHORT,
        ("gdn_gates_triton", ("_gdn_gates_kernel",)),
        ("ffn_triton", ("_glu_dwconv_kernel",)),
    ],
    "sdpa": [],
}


class _Launches:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` launches the real kernel ``times`` times."""

    def __init__(self, kernel, times: int) -> None:
        self.kernel, self.times = kernel, times

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            for _ in range(self.times):
                self.kernel[grid](*args, **kwargs)

        return launch


def _sdpa_times(sdpa, times: int):
    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        for _ in range(times):
            out = sdpa(q, k, v, *args, **kwargs)
        return out

    return call


def _stand_ins(group: str, times: int) -> list[tuple[object, str, object]]:
    """(owner, attribute, stand-in) that run the group's launches ``times`` times (0: none), for ``patched``."""
    owners = [(torch.nn.functional, "scaled_dot_product_attention")] if group == "sdpa" else []
    for module, names in GROUPS[group]:
        live = importlib.import_module(f"sana_wm.ops.{module}")
        owners += [(live, name) for name in names]
    wrap = _sdpa_times if group == "sdpa" else _Launches
    return [(owner, name, wrap(getattr(owner, name), times)) for owner, name in owners]


def _row(timed: dict) -> dict:
    """:func:`ab_forward.abba`'s result (a: the full graph, b: the changed one) under this script's names."""
    return {
        "full_ms": timed["a_ms"],
        "changed_ms": timed["b_ms"],
        "delta_ms": timed["b_minus_a_ms"],
        "clocks": {"full": timed["clocks"]["a"], "changed": timed["clocks"]["b"]},
    }


def write_png(result: dict, path: Path) -> bool:
    """Horizontal bars of every row's delta ms (error bars: standard error); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = sorted(result["rows"].items(), key=lambda kv: kv[1]["delta_ms"]["mean"])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh(
        [name for name, _ in rows],
        [r["delta_ms"]["mean"] for _, r in rows],
        xerr=[r["delta_ms"]["standard_error"] for _, r in rows],
        color="tab:blue",
    )
    what = "launched twice" if result["mode"] == "twice" else "skipped"
    ax.set_xlabel(f"forward ms added with the group {what} (nan_latents: the full graph on NaN latents)")
    ax.set_title(f"graph forward {result['full_ms']:.2f} ms, {result['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default=",".join(GROUPS), help="comma-separated, from: " + ", ".join(GROUPS))
    ap.add_argument("--mode", choices=("twice", "skip"), default="twice")
    ap.add_argument("--no-nan", action="store_true", help="skip the nan_latents row")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args()
    groups = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        sys.exit(f"unknown --groups {unknown}; choose from {sorted(GROUPS)}")
    if not torch.cuda.is_available():
        sys.exit("sensitivity needs CUDA")
    dev = torch.device("cuda")
    result: dict = {"device": torch.cuda.get_device_name(), "mode": args.mode, "rows": {}}
    times = 2 if args.mode == "twice" else 0
    with torch.no_grad(), B.kernels(True, dev):
        inputs = full_size_forward(dev)
        full = B._forward_graph(*inputs)
        for group in groups:
            with patched(_stand_ins(group, times)):
                changed = B._forward_graph(*inputs)
            result["rows"][group] = _row(abba(full, changed, dev, args.repeats, args.reps))
            print(group, json.dumps(result["rows"][group]), flush=True)
            del changed
            torch.cuda.empty_cache()
        if not args.no_nan:
            latents = inputs[1]
            saved = latents.clone()
            row = _row(
                abba(
                    full,
                    full,
                    dev,
                    args.repeats,
                    args.reps,
                    lambda: latents.fill_(float("nan")),
                    lambda: latents.copy_(saved),
                )
            )
            result["rows"]["nan_latents"] = row
            print("nan_latents", json.dumps(row), flush=True)
        fulls = [t for row in result["rows"].values() for t in row["full_ms"]]
        result["full_ms"] = round(statistics.median(fulls), 3)
    out = Path(os.environ.get("OUT", "."))
    (out / "sensitivity.json").write_text(json.dumps(result, indent=1))
    if args.png is not None and not write_png(result, args.png):
        print("matplotlib not installed: no PNG written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
