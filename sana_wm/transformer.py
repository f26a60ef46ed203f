"""SANA-WM transformer (hybrid Gated-DeltaNet + softmax DiT with UCPE camera control) in plain PyTorch.

One parameter set, three forwards:
- ``model(latents, timestep, text, text_mask, raymap, plucker)``: bidirectional over the whole clip (diffusers);
- ``model(..., causal=True)``: chunk-causal over the whole clip (the oracle for streaming);
- ``model.forward_chunk(..., cache=cache, start_frame=s, write_cache=False)``: one chunk against a
  :class:`~sana_wm.cache.StreamingCache`.

Parameter names and shapes equal diffusers' ``SanaWMTransformer3DModel`` (minus the dropped ``pos_embed``).
"""

from __future__ import annotations

import torch
from torch import nn

from .cache import StreamingCache
from .config import SanaWMConfig

__all__ = ["SanaWMTransformer"]


class SanaWMTransformer(nn.Module):
    """The SANA-WM DiT. ``SanaWMTransformer(SanaWMConfig.preset("streaming-2.6b"))``."""

    def __init__(self, cfg: SanaWMConfig) -> None:
        super().__init__()
        self.config = cfg
        raise NotImplementedError

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        raymap: torch.Tensor,
        plucker: torch.Tensor,
        causal: bool = False,
    ) -> torch.Tensor:
        """Velocity for a whole clip.

        Args:
            latents: (B, C, T, H, W) normalised latents.
            timestep: (B, T) per-frame timesteps on the 0..1000 scale (or (B,) for all frames); truncated with
                ``.long()`` like diffusers.
            text: (B, L, caption_channels) prompt embeddings; text_mask: (B, L) bool / 0-1 padding mask.
            raymap: (B, T, 20) flattened relative c2w (16) + fx, fy, cx, cy in latent-grid pixels.
            plucker: (B, 48, T, H, W) chunk Plücker maps.
            causal: False = bidirectional; True = chunk-causal (chunks of ``chunk_size``, first ``chunk_size + 1``).

        Returns:
            (B, C, T, H, W) flow velocity ``noise - x0``.
        """
        raise NotImplementedError

    def forward_chunk(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        raymap: torch.Tensor,
        plucker: torch.Tensor,
        *,
        cache: StreamingCache,
        start_frame: int,
        write_cache: bool = False,
    ) -> torch.Tensor:
        """Velocity for one chunk at absolute latent frames ``[start_frame, start_frame + T_chunk)``.

        Shapes as in :meth:`forward` with T = T_chunk (``chunk_size + 1`` for the chunk at frame 0, else
        ``chunk_size``); ``raymap`` / ``plucker`` hold only this chunk's frames. Reads ``cache`` (which must hold all
        frames before ``start_frame``); writes this chunk's states / tails / K/V into it only if ``write_cache``.
        """
        raise NotImplementedError

    def new_cache(
        self,
        batch_size: int = 1,
        *,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamingCache:
        """A zeroed :class:`StreamingCache` for a latent grid of ``height`` x ``width`` (defaults: the model's
        device and parameter dtype)."""
        raise NotImplementedError
