"""Per-session streaming cache of the SANA-WM transformer (:class:`StreamingCache`).

Preallocated, bounded, static shapes (gpt-fast spirit): its byte size is fixed at construction and does not depend
on how many chunks have been streamed.

Per GDN block (fp32 states, activation-dtype tails):
- ``state_kv`` (B, H, D, D) main key x value state, ``state_z`` (B, H, D) main normaliser state,
  ``cam_state_kv`` (B, H, D, D) camera key x value state;
- ``k_tail`` (B, K-1, S, C): raw (pre-conv) main K of the last ``conv_kernel_size - 1`` frames;
- ``cam_k_tail`` (B, K-1, S, C): raw camera K tail (only when ``cfg.cam_conv_cross_chunk``);
- ``ffn_tail`` (B, 1, S, C): last frame of the FFN point-conv output (temporal-conv left context).
Per softmax block: post-RoPE main K/V and post-UCPE camera K/V, each (B, H, F_slots * S, D), laid out as
``[sink chunk (chunk_size + 1 frames) | window slot 0 | ... | window slot w-1]`` (ring buffer of ``chunk_size``
frames per slot), plus ``ffn_tail``. ``valid`` (F_slots,) bool marks which frames hold written K/V.
"""

from __future__ import annotations

import torch

from .config import SanaWMConfig

__all__ = ["StreamingCache"]


class StreamingCache:
    """Fixed-size per-session cache; build with ``model.new_cache(batch_size, height=h, width=w)``.

    Bookkeeping (host-side ints, no device syncs): ``frames_written`` (latent frames whose clean-pass state is in the
    cache), ``chunks_written``. ``forward_chunk`` must be called with ``start_frame == frames_written``.
    """

    def __init__(
        self,
        cfg: SanaWMConfig,
        *,
        batch_size: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Total bytes of all cache tensors (constant for the cache's lifetime)."""
        raise NotImplementedError

    def clone(self) -> "StreamingCache":
        """Deep copy (new tensors, same bookkeeping)."""
        raise NotImplementedError

    def copy_(self, other: "StreamingCache") -> "StreamingCache":
        """Copy ``other``'s contents into this cache's preallocated tensors (shapes must match)."""
        raise NotImplementedError

    def reset(self) -> "StreamingCache":
        """Zero all states/tails, invalidate all K/V slots, ``frames_written = 0``."""
        raise NotImplementedError
