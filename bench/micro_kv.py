"""Softmax-block K/V cache at the streaming shape: concatenation per call (old) against the preallocated
``[sink | ring | current]`` buffer attended as one prefix view (new, ``SanaWMAttention._sdpa``'s stream branch).

    python bench/micro_kv.py            # prints JSON

Shape of one softmax branch of one block in a forward over 3 latent frames with a full cache (B 1, H 20, D 112,
S 880 tokens per frame; sink 4 frames, window 1 chunk of 3, current 3 frames; bf16). Per call, median of ``reps``:

- ``old_ms``: ``torch.cat`` of the 7 cached frames and this pass's K and V, then SDPA (the code before the buffer);
- ``new_ms``: copy this pass's K and V into the ``current`` slot, SDPA on the 10-frame prefix view (the real
  ``_sdpa``); ``new_flash_only_ms``: the same under ``sdpa_kernel(FLASH_ATTENTION)`` (fails if the view is not
  eligible for the flash kernel); ``*_masked_ms``: the same while a ring slot is unwritten (additive mask);
- ``new_write_ms``: the cache-writing pass (also commits ``current`` to its ring slot);
- ``max_abs_diff`` / ``masked_max_abs_diff``: old vs new outputs (identical inputs: expected 0).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sana_wm.transformer import SanaWMAttention

B, H, D, S = 1, 20, 112, 880
SINK, WINDOW, CURRENT = 4, 3, 3  # frames


def _ms(fn, reps: int) -> float:
    """Median ms of ``fn`` (CUDA events; wall clock on the CPU)."""
    for _ in range(3):
        fn()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def run(device: str = "cuda", reps: int = 50) -> dict:
    torch.manual_seed(0)
    dtype = torch.bfloat16
    cached_tokens, n = (SINK + WINDOW) * S, CURRENT * S
    scale = D**-0.5

    def heads(tokens: int) -> torch.Tensor:  # (B, H, N, D) as a transposed view of (B, N, H, D), like the model
        return torch.randn(B, tokens, H, D, device=device, dtype=dtype).transpose(1, 2)

    q, k, v = heads(n), heads(n), heads(n)
    old_cache = {"k": heads(cached_tokens).contiguous(), "v": heads(cached_tokens).contiguous()}
    buffer = {key: torch.zeros(B, H, cached_tokens + n, D, device=device, dtype=dtype) for key in old_cache}
    for key, t in old_cache.items():
        buffer[key][:, :, :cached_tokens].copy_(t)
    bias = torch.zeros(cached_tokens + n, device=device)
    bias[SINK * S : cached_tokens] = float("-inf")  # the window slot not written yet

    def frames(key_bias: torch.Tensor | None, write: bool) -> SimpleNamespace:
        write_tokens = (SINK * S, cached_tokens) if write else None
        return SimpleNamespace(
            mode="stream", kv_offset=cached_tokens, cache_key_bias=key_bias, write_tokens=write_tokens
        )

    def old(key_bias: torch.Tensor | None = None) -> torch.Tensor:
        keys = torch.cat([old_cache["k"], k], dim=2)
        values = torch.cat([old_cache["v"], v], dim=2)
        mask = None
        if key_bias is not None:
            mask = torch.cat([key_bias[:cached_tokens].to(dtype), q.new_zeros(n)]).view(1, 1, 1, -1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)

    def new(key_bias: torch.Tensor | None = None, write: bool = False) -> torch.Tensor:
        return SanaWMAttention._sdpa(None, q, k, v, frames(key_bias, write), scale, buffer, "k", "v", write)

    def flash_only() -> torch.Tensor:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return new()

    out = {
        "shape": {"B": B, "H": H, "D": D, "S": S, "sink": SINK, "window": WINDOW, "current": CURRENT},
        "max_abs_diff": float((old() - new()).abs().max()),
        "masked_max_abs_diff": float((old(bias) - new(bias)).abs().max()),
        "old_ms": _ms(old, reps),
        "new_ms": _ms(new, reps),
        "old_masked_ms": _ms(lambda: old(bias), reps),
        "new_masked_ms": _ms(lambda: new(bias), reps),
    }
    try:
        out["new_flash_only_ms"] = _ms(flash_only, reps)
    except RuntimeError as e:
        out["new_flash_only_error"] = str(e).splitlines()[0]
    out["new_write_ms"] = _ms(lambda: new(write=True), reps)
    out["calls_per_forward"] = 10  # 5 softmax blocks x (main, camera)
    out["saving_per_forward_ms"] = (out["old_ms"] - out["new_ms"]) * out["calls_per_forward"]
    out["device"] = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"
    return out


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("micro_kv needs CUDA")
    print(json.dumps(run(), indent=1))
