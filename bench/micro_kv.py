"""Softmax-block K/V cache at the streaming shape: concatenation per call (old) against the preallocated
``[sink | ring | current]`` buffer attended as one prefix view (new, ``SanaWMAttention._sdpa``'s stream branch).

    python bench/micro_kv.py            # prints JSON

Shape of one softmax branch of one block in a forward over 3 latent frames with a full cache (B 1, H 20, D 112,
S 880 tokens per frame; sink 4 frames, window 1 chunk of 3, current 3 frames; bf16). Per call, median of ``reps``:

- ``old_ms``: ``torch.cat`` of the 7 cached frames and this pass's K and V, then SDPA (the code before the buffer);
- ``new_ms``: copy this pass's K and V into the ``current`` slot, SDPA on the 10-frame prefix view (one branch of
  ``SanaWMAttention._softmax_stream``, which attends both branches' heads in one call); ``new_flash_only_ms``: the
  same under ``sdpa_kernel(FLASH_ATTENTION)`` (an error entry instead if the view is not eligible for the flash
  kernel); ``new_write_ms``: the cache-writing pass (also commits ``current`` to its ring slot); ``max_abs_diff``: old vs new outputs (identical inputs and key order: expected 0);
- ``old_filling_ms`` / ``new_filling_ms``: chunk 1, whose window slot is not written yet: old = concatenation + SDPA
  with an additive mask over the unwritten slot, new = K/V written into that slot, unmasked SDPA over [sink | chunk];
  ``filling_rel_err`` between the two (same softmax, fewer keys: bf16 rounding only).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from server.bench import time_ms

B, H, D, S = 1, 20, 112, 880
SINK, WINDOW, CURRENT = 4, 3, 3  # frames


def _ms(fn, reps: int) -> float:
    """Median ms of ``fn`` after 3 warm-up calls (CUDA events; wall clock on the CPU)."""
    return time_ms(fn, torch.device("cuda" if torch.cuda.is_available() else "cpu"), reps, warmup=3)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def run(device: str = "cuda", reps: int = 50) -> dict:
    torch.manual_seed(0)
    dtype = torch.bfloat16
    sink, cached_tokens, n = SINK * S, (SINK + WINDOW) * S, CURRENT * S
    scale = D**-0.5

    def heads(tokens: int) -> torch.Tensor:  # (B, H, N, D) as a transposed view of (B, N, H, D), like the model
        return torch.randn(B, tokens, H, D, device=device, dtype=dtype).transpose(1, 2)

    q, k, v = heads(n), heads(n), heads(n)
    old_cache = {"k": heads(cached_tokens).contiguous(), "v": heads(cached_tokens).contiguous()}
    buffer = {key: torch.zeros(B, H, cached_tokens + n, D, device=device, dtype=dtype) for key in old_cache}
    for key, t in old_cache.items():
        buffer[key][:, :, :cached_tokens].copy_(t)
    bias = torch.zeros(cached_tokens, device=device)
    bias[sink:] = float("-inf")  # chunk 1: the window slot is not written yet

    def old(key_bias: torch.Tensor | None = None) -> torch.Tensor:
        keys = torch.cat([old_cache["k"], k], dim=2)
        values = torch.cat([old_cache["v"], v], dim=2)
        mask = None
        if key_bias is not None:
            mask = torch.cat([key_bias.to(dtype), q.new_zeros(n)]).view(1, 1, 1, -1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)

    def new(offset: int = cached_tokens, write: bool = False) -> torch.Tensor:
        end = offset + n
        k_slot, v_slot = buffer["k"][:, :, offset:end], buffer["v"][:, :, offset:end]
        k_slot.copy_(k)  # in the model the prep kernels store k / v here; the copies bound that from above
        v_slot.copy_(v)
        out = F.scaled_dot_product_attention(q, buffer["k"][:, :, :end], buffer["v"][:, :, :end], scale=scale)
        if write:  # the cache-writing pass commits `current` to the ring slot it replaces
            buffer["k"][:, :, sink:cached_tokens].copy_(k_slot)
            buffer["v"][:, :, sink:cached_tokens].copy_(v_slot)
        return out

    def flash_only() -> torch.Tensor:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return new()

    out = {
        "shape": {"B": B, "H": H, "D": D, "S": S, "sink": SINK, "window": WINDOW, "current": CURRENT},
        "max_abs_diff": float((old() - new()).abs().max()),
        "old_ms": _ms(old, reps),
        "new_ms": _ms(new, reps),
    }
    try:
        out["new_flash_only_ms"] = _ms(flash_only, reps)
    except RuntimeError as e:
        out["new_flash_only_error"] = str(e).splitlines()[0]
    out["new_write_ms"] = _ms(lambda: new(write=True), reps)
    # chunk 1 (window filling; the window slot is written last: the buffer's ring slot is clobbered from here on)
    out["old_filling_ms"] = _ms(lambda: old(bias), reps)
    out["new_filling_ms"] = _ms(lambda: new(sink), reps)
    out["filling_rel_err"] = _rel(new(sink), old(bias))
    out["calls_per_forward"] = 10  # 5 softmax blocks x (main, camera)
    out["saving_per_forward_ms"] = (out["old_ms"] - out["new_ms"]) * out["calls_per_forward"]
    out["device"] = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"
    return out


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("micro_kv needs CUDA")
    print(json.dumps(run(), indent=1))
