"""Attention and GEMM layouts of one softmax block at the streaming shape, each timed beside today's layout.

    python bench/micro_attn.py            # prints JSON (needs CUDA)

One forward over 3 latent frames with a full cache (B 1, H 20, D 112, S 880 tokens per frame, 2,640 queries,
8,800 keys = sink 4 + window 3 + current 3 frames; bf16; both softmax branches use the scale 1/sqrt(128)).
Per call, median of ``reps``:

- ``self``: the softmax blocks' two SDPA calls (main and camera, 20 heads each, K/V prefix views of the cache
  buffer) against one call over 40 heads (both branches' q / K / V side by side), each at head dim 112 and zero-padded
  to 128 (what NVlabs does; same result), under the default backend choice and each backend alone; ``rel_err`` of
  every variant against the two-call default;
- ``cross``: the text cross-attention (2,640 queries, 300 text tokens of which 150 are valid) with the boolean
  padding mask (today), a precomputed additive mask, and no mask over the valid tokens only;
- ``gemm``: the FFN's input projection (2,640 x 2,240 -> 13,440) with and without its bias in the GEMM, and the
  2,240 -> 2,240 projections with and without bias;
- ``layouts``: the 40-head call with q and K / V stored head-major or token-major;
- ``gemm_layouts``: ``F.linear`` against ``addmm`` on a transposed weight copy at the block's GEMM shapes.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from server.bench import time_ms

B, H, D, S = 1, 20, 112, 880
N, KEYS, TEXT, VALID = 3 * S, 10 * S, 300, 150
BACKENDS = {
    "auto": None,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def _ms(fn, reps: int) -> float:
    return time_ms(fn, torch.device("cuda"), reps, warmup=3)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _timed(fn, reps: int, ref: torch.Tensor | None, backend) -> dict:
    """{"ms", "rel_err"} of ``fn`` under ``backend`` (None: PyTorch's choice), or {"error"}."""
    try:
        if backend is None:
            out = fn()
            ms = _ms(fn, reps)
        else:
            with sdpa_kernel([backend]):
                out = fn()
                ms = _ms(fn, reps)
    except RuntimeError as e:
        return {"error": str(e).splitlines()[0][:160]}
    row = {"ms": round(ms, 4)}
    if ref is not None:
        row["rel_err"] = _rel(out, ref)
    return row


def self_attention(reps: int) -> dict:
    dt, dev = torch.bfloat16, "cuda"
    scale = 128**-0.5
    q2 = torch.randn(B, 2 * H, N, D, device=dev, dtype=dt)
    buf = {d: torch.zeros(2, B, 2 * H, KEYS + 64, d, device=dev, dtype=dt) for d in (D, 128)}
    buf[D][:, :, :, :KEYS].normal_()
    buf[128][..., :D].copy_(buf[D])
    q_pad = torch.zeros(B, 2 * H, N, 128, device=dev, dtype=dt)
    q_pad[..., :D].copy_(q2)

    def two(d: int):
        q = q2 if d == D else q_pad
        k, v = buf[d][0][:, :, :KEYS], buf[d][1][:, :, :KEYS]

        def run():
            a = F.scaled_dot_product_attention(q[:, :H], k[:, :H], v[:, :H], scale=scale)
            b = F.scaled_dot_product_attention(q[:, H:], k[:, H:], v[:, H:], scale=scale)
            return torch.cat([a, b], dim=1)[..., :D]

        return run

    def one(d: int):
        q = q2 if d == D else q_pad
        k, v = buf[d][0][:, :, :KEYS], buf[d][1][:, :, :KEYS]
        return lambda: F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :D]

    ref = two(D)()
    out = {}
    for name, backend in BACKENDS.items():
        out[f"two_calls_hd112_{name}"] = _timed(two(D), reps, ref, backend)
        out[f"one_call_40h_hd112_{name}"] = _timed(one(D), reps, ref, backend)
        out[f"two_calls_hd128_{name}"] = _timed(two(128), reps, ref, backend)
        out[f"one_call_40h_hd128_{name}"] = _timed(one(128), reps, ref, backend)
    flops = 4 * B * 2 * H * N * KEYS * D
    best = min((v["ms"], k) for k, v in out.items() if "ms" in v)
    out["best"] = {"variant": best[1], "ms": best[0], "tflops_hd112": round(flops / best[0] / 1e9, 1)}
    out["per_forward_calls"] = "5 blocks x (two calls | one call)"
    return out


def layouts(reps: int) -> dict:
    """The 40-head call with q / output and K / V stored head-major (B, H, N, D: "bhsd") or token-major (B, N, H, D:
    "bshd", the views transposed), each with the default backend choice and cuDNN alone."""
    dt, dev = torch.bfloat16, "cuda"
    scale = 128**-0.5
    ref_q = torch.randn(B, 2 * H, N, D, device=dev, dtype=dt)
    ref_k = torch.randn(B, 2 * H, KEYS, D, device=dev, dtype=dt)
    ref_v = torch.randn(B, 2 * H, KEYS, D, device=dev, dtype=dt)
    ref = F.scaled_dot_product_attention(ref_q, ref_k, ref_v, scale=scale)

    def stored(x: torch.Tensor, layout: str) -> torch.Tensor:
        return x.contiguous() if layout == "bhsd" else x.transpose(1, 2).contiguous().transpose(1, 2)

    out = {}
    for ql in ("bhsd", "bshd"):
        for kl in ("bhsd", "bshd"):
            q, k, v = stored(ref_q, ql), stored(ref_k, kl), stored(ref_v, kl)
            for name in ("auto", "cudnn"):
                fn = lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, scale=scale)  # noqa: E731
                row = _timed(fn, reps, ref, BACKENDS[name])
                if "ms" in row:
                    got = fn() if BACKENDS[name] is None else None
                    row["out_token_major"] = None if got is None else bool(got.transpose(1, 2).is_contiguous())
                out[f"q_{ql}_kv_{kl}_{name}"] = row
    return out


def gemm_layouts(reps: int) -> dict:
    """F.linear (weight (out, in)) against addmm on a weight stored transposed (in, out), at the block's shapes."""
    dt, dev = torch.bfloat16, "cuda"
    x = torch.randn(N, 2240, device=dev, dtype=dt)
    out = {}
    for rows in (2240, 13440, 15744, 15872, 16128):
        w = torch.randn(rows, 2240, device=dev, dtype=dt) * 0.02
        wt = w.t().contiguous()
        b = torch.randn(rows, device=dev, dtype=dt)
        flops = 2 * N * 2240 * rows
        for tag, fn in (
            ("linear", lambda w=w, b=b: F.linear(x, w, b)),
            ("addmm_wt", lambda wt=wt, b=b: torch.addmm(b, x, wt)),
        ):
            ms = _ms(fn, reps)
            out[f"{rows}_{tag}"] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
    h = torch.randn(N, 6720, device=dev, dtype=dt)
    w = torch.randn(2240, 6720, device=dev, dtype=dt) * 0.02
    wt = w.t().contiguous()
    flops = 2 * N * 6720 * 2240
    for tag, fn in (("linear", lambda: F.linear(h, w)), ("mm_wt", lambda: h @ wt)):
        ms = _ms(fn, reps)
        out[f"down_6720_{tag}"] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
    return out


def cross_attention(reps: int) -> dict:
    dt, dev = torch.bfloat16, "cuda"
    q = torch.randn(B, N, H, D, device=dev, dtype=dt).transpose(1, 2)
    k = torch.randn(B, H, TEXT, D, device=dev, dtype=dt)
    v = torch.randn(B, H, TEXT, D, device=dev, dtype=dt)
    mask = torch.zeros(B, 1, 1, TEXT, dtype=torch.bool, device=dev)
    mask[..., :VALID] = True
    additive = torch.zeros(B, 1, 1, TEXT, device=dev, dtype=dt).masked_fill(~mask, float("-inf"))
    kv, vv = k[:, :, :VALID].contiguous(), v[:, :, :VALID].contiguous()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = {
        "bool_mask_auto": _timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), reps, ref, None),
        "additive_mask_auto": _timed(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=additive), reps, ref, None
        ),
    }
    for name, backend in BACKENDS.items():
        out[f"valid_only_{name}"] = _timed(lambda: F.scaled_dot_product_attention(q, kv, vv), reps, ref, backend)
    out["per_forward_calls"] = 20
    return out


def gemms(reps: int) -> dict:
    dt, dev = torch.bfloat16, "cuda"
    x = torch.randn(N, 2240, device=dev, dtype=dt)
    out = {}
    for name, rows in (("ffn_in_13440", 13440), ("proj_2240", 2240), ("merged_15744", 15744)):
        w = torch.randn(rows, 2240, device=dev, dtype=dt) * 0.02
        b = torch.randn(rows, device=dev, dtype=dt)
        flops = 2 * N * 2240 * rows
        for tag, fn in (("bias", lambda w=w, b=b: F.linear(x, w, b)), ("no_bias", lambda w=w: F.linear(x, w))):
            ms = _ms(fn, reps)
            out[f"{name}_{tag}"] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
    return out


def run(reps: int = 50) -> dict:
    torch.manual_seed(0)
    return {
        "device": torch.cuda.get_device_name(),
        "self": self_attention(reps),
        "layouts": layouts(reps),
        "cross": cross_attention(reps),
        "gemm": gemms(reps),
        "gemm_layouts": gemm_layouts(reps),
    }


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("micro_attn needs CUDA")
    print(json.dumps(run(), indent=1))
