"""Per-session streaming cache of the SANA-WM transformer (:class:`StreamingCache`).

Preallocated, bounded, static shapes (gpt-fast spirit): every tensor is allocated at construction and only written
in place, so the byte size never depends on how many chunks have been streamed.

``cache.blocks[i]`` is a dict of tensors for block i. GDN blocks (states float32, tails in the activation dtype):

- ``state_kv`` (B, H, D, D) main key x value state; ``state_z`` (B, H, D) main normaliser state;
  ``cam_state_kv`` (B, H, D, D) camera state;
- ``k_tail`` (B, K-1, S, C): raw (pre-conv) main K of the last ``conv_kernel_size - 1`` frames;
- ``cam_k_tail`` (B, K-1, S, C): raw camera K tail (only when ``cfg.cam_conv_cross_chunk``; the streaming variant's
  camera conv has no cross-chunk state);
- ``ffn_past`` (B, 1, S, C): the FFN temporal conv's past tap applied to the last frame of its input (what the
  next chunk's first frame adds; kept projected so that a pass adds it instead of running that product).

Softmax blocks: ``kv`` (2, B, 2H, F*S, D): keys (``kv[0]``) and values (``kv[1]``) of the main branch (heads
``[:H]``, post-RoPE) and the camera branch (heads ``[H:]``, post-UCPE) side by side, so that both branches attend in
one SDPA call, with F = ``(chunk_size + 1) + window_chunks * chunk_size + chunk_size`` frames laid out
``[sink: chunk 0 | window slot 1 | ... | slot w | current]``, plus ``ffn_past``. Every stream pass writes its T
frames' K/V at the token offset :meth:`kv_offset` (on CUDA the q/k preparation kernels store them there directly,
the reference path copies them) and attends the buffer prefix ``[0, kv_offset() + T*S)``: one
contiguous view with no mask (SDPA's flash / cuDNN path), no concatenation. Keys stay in slot order, not by age
(softmax does not care):

- chunk 0 (``chunk_size + 1`` frames) and, while the window fills, chunks 1 .. w write straight into their own slot
  (sink, ring slot c), which is not committed before their cache-writing pass; everything before it is committed;
- once the ring is full (chunk c > w: slot ``1 + (c - 1) % w``, the oldest, is being replaced) the passes write the
  scratch slot ``current`` after the ring and attend [sink | ring | current]; the cache-writing pass then copies
  ``current`` into the ring slot (:meth:`write_token_range`). Window 0 keeps no chunk after the sink: [sink | current].

Read-only passes therefore only write uncommitted slots (the chunk's own slot while filling, else ``current``):
committed data is never modified. ``kv_valid`` (1 + w,) bool marks the committed slots. Host-side ints
``frames_written`` / ``chunks_written`` record how many latent frames / chunks the cache holds.
"""

from __future__ import annotations

import torch

from .config import SanaWMConfig

__all__ = ["StreamingCache"]


class StreamingCache:
    """Fixed-size per-session cache; build with ``model.new_cache(batch_size, height=h, width=w)``.

    ``forward_chunk`` must be called with ``start_frame == cache.frames_written``; its chunk has
    ``chunk_size + 1`` frames at frame 0 and ``chunk_size`` frames after (a read-only call: 1 up to that many).
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
        for name, value in (("batch_size", batch_size), ("height", height), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StreamingCache {name} must be a positive int, got {value!r}.")
        self.config = cfg
        self.batch_size = batch_size
        self.height = height
        self.width = width
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        B, C, H, D = batch_size, cfg.hidden_size, cfg.num_heads, cfg.head_dim
        S = height * width
        self.tokens_per_frame = S
        sink_frames = cfg.first_chunk_size
        self.sink_tokens = sink_frames * S
        self.slot_tokens = cfg.chunk_size * S
        self.current_offset = self.sink_tokens + cfg.window_chunks * self.slot_tokens  # token offset of ``current``
        kv_tokens = self.current_offset + self.slot_tokens

        def zeros(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=self.device)

        self.blocks: list[dict[str, torch.Tensor]] = []
        for i in range(cfg.num_layers):
            entry = {"ffn_past": zeros(B, 1, S, C)}
            if cfg.is_softmax_block(i):
                entry["kv"] = zeros(2, B, 2 * H, kv_tokens, D)
            else:
                entry["state_kv"] = zeros(B, H, D, D, dtype=torch.float32)
                entry["state_z"] = zeros(B, H, D, dtype=torch.float32)
                entry["cam_state_kv"] = zeros(B, H, D, D, dtype=torch.float32)
                entry["k_tail"] = zeros(B, cfg.conv_kernel_size - 1, S, C)
                if cfg.cam_conv_cross_chunk:
                    entry["cam_k_tail"] = zeros(B, cfg.conv_kernel_size - 1, S, C)
            self.blocks.append(entry)
        self.kv_valid = torch.zeros(1 + cfg.window_chunks, dtype=torch.bool, device=self.device)
        self.frames_written = 0
        self.chunks_written = 0

    # ------------------------------------------------------------------ tensor management
    def _tensors(self) -> list[torch.Tensor]:
        return [t for entry in self.blocks for t in entry.values()] + [self.kv_valid]

    def nbytes(self) -> int:
        """Total bytes of all cache tensors (constant for the cache's lifetime)."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def clone(self) -> StreamingCache:
        """Deep copy (new tensors, same bookkeeping)."""
        new = object.__new__(StreamingCache)
        new.__dict__.update(self.__dict__)
        new.blocks = [{k: t.clone() for k, t in entry.items()} for entry in self.blocks]
        new.kv_valid = self.kv_valid.clone()
        return new

    def copy_(self, other: StreamingCache) -> StreamingCache:
        """Copy ``other``'s contents into this cache's preallocated tensors (same config and geometry)."""
        if not isinstance(other, StreamingCache):
            raise TypeError(f"copy_ expects a StreamingCache, got {type(other).__name__}.")
        mine, theirs = self._tensors(), other._tensors()
        if self.config != other.config or [t.shape for t in mine] != [t.shape for t in theirs]:
            raise ValueError("copy_: the other StreamingCache has a different configuration or geometry.")
        for dst, src in zip(mine, theirs):
            dst.copy_(src)
        self.frames_written = other.frames_written
        self.chunks_written = other.chunks_written
        return self

    def reset(self) -> StreamingCache:
        """Zero all states / tails / K/V, invalidate all K/V slots, ``frames_written = 0``."""
        for t in self._tensors():
            t.zero_()
        self.frames_written = 0
        self.chunks_written = 0
        return self

    # ------------------------------------------------------------------ used by SanaWMTransformer.forward_chunk
    def expected_chunk_frames(self) -> int:
        """Latent frames of the next chunk (``chunk_size + 1`` for chunk 0, else ``chunk_size``)."""
        return self.config.first_chunk_size if self.chunks_written == 0 else self.config.chunk_size

    def check_chunk(
        self, *, batch_size: int, height: int, width: int, start_frame: int, num_frames: int, write: bool = True
    ) -> None:
        """Raise ``ValueError`` unless a chunk with these sizes is the cache's next chunk (``write=False``: a
        read-only call, which may also hold fewer frames than the chunk, at least 1)."""
        if (batch_size, height, width) != (self.batch_size, self.height, self.width):
            raise ValueError(
                f"chunk (B, H, W) = {(batch_size, height, width)} does not match the cache's "
                f"{(self.batch_size, self.height, self.width)}."
            )
        if start_frame != self.frames_written:
            raise ValueError(
                f"start_frame={start_frame} but the cache holds frames [0, {self.frames_written}); the next chunk "
                f"must start at {self.frames_written}."
            )
        expected = self.expected_chunk_frames()
        if write and num_frames != expected:
            raise ValueError(
                f"chunk at frame {start_frame} must have {expected} latent frames to be written, got {num_frames}."
            )
        if not 1 <= num_frames <= expected:
            raise ValueError(
                f"chunk at frame {start_frame} must have 1 to {expected} latent frames (read-only), got {num_frames}."
            )

    def _next_slot(self) -> int | None:
        if self.chunks_written == 0:
            return 0
        w = self.config.window_chunks
        return None if w == 0 else 1 + (self.chunks_written - 1) % w

    def _slot_start(self, slot: int) -> int:
        return 0 if slot == 0 else self.sink_tokens + (slot - 1) * self.slot_tokens

    def _filling(self) -> bool:
        """True while the next chunk's slot is not committed yet (chunks 0 .. window_chunks): it is written in place."""
        return self._next_slot() is not None and self.chunks_written <= self.config.window_chunks

    def kv_offset(self) -> int:
        """Token offset in the K/V buffers where the next chunk's passes put their K/V (its own slot while the
        window fills, else ``current``); a pass of T frames attends the prefix ``[0, kv_offset() + T*S)``."""
        return self._slot_start(self._next_slot()) if self._filling() else self.current_offset

    def write_token_range(self) -> tuple[int, int] | None:
        """Ring range ``[a, b)`` that the next chunk's cache-writing pass copies ``current`` into (None: nothing to
        copy: the chunk was written in place while the window fills, or window 0 keeps no chunk after the sink)."""
        slot = self._next_slot()
        if slot is None or self._filling():
            return None
        a = self._slot_start(slot)
        return a, a + self.slot_tokens

    def commit_chunk(self, num_frames: int) -> None:
        """Bookkeeping after a cache-writing forward of ``num_frames`` frames."""
        slot = self._next_slot()
        if slot is not None:
            self.kv_valid[slot : slot + 1].fill_(True)  # `t[i] = True` copies a CPU scalar: a host sync on CUDA
        self.frames_written += num_frames
        self.chunks_written += 1
