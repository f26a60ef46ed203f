"""Samplers: the streaming self-forcing chunk sampler and the offline bidirectional flow-matching sampler.

Conventions (spec sections 2.3, 2.4): timesteps on the 0..1000 scale, ``sigma = t / 1000``, the network predicts
the flow velocity ``v = noise - x0`` and an Euler step is ``x <- x - (sigma - sigma_next) * v``. A pinned frame
(the conditioning image latent) has timestep 0, gets ``dt = 0`` and is re-written after every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_STEPS: tuple[int, ...] = (1000, 960, 889, 727, 0)
"""The distilled streaming student's step list (the shift-8 warp of a uniform 4-step grid)."""

DEFAULT_FLOW_SHIFT = 9.8
"""Inference flow shift of the bidirectional model."""


def validate_steps(steps: Sequence[int]) -> tuple[int, ...]:
    """Check a streaming step list: integers in 0..1000, strictly decreasing, ending at 0, at least 2 entries."""
    raise NotImplementedError


def chunk_noise(seed: int, chunk_index: int, shape: Sequence[int], device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise for one chunk, a pure function of ``(seed, chunk_index)``.

    Drawn in fp32 on the CPU from a generator seeded with ``numpy.random.SeedSequence((seed, chunk_index))`` and
    moved to ``device``: the same on every device, independent of how far ahead anything was generated.
    """
    raise NotImplementedError


def flow_match_sigmas(num_steps: int, shift: float = DEFAULT_FLOW_SHIFT) -> torch.Tensor:
    """The offline sampler's sigmas, ``(num_steps + 1,)`` fp32 ending in 0 (diffusers
    ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)`` with the terminal sigma appended)."""
    raise NotImplementedError


class StreamingSampler:
    """Self-forcing chunk sampler for the chunk-causal streaming transformer (spec 2.3).

    For one chunk of latent frames ``[s, e)``: Euler steps over ``steps`` reading the cache only, then one pass at
    ``t = 0`` on the clean chunk that writes the cache. No guidance.
    """

    def __init__(self, model: torch.nn.Module, steps: Sequence[int] = DEFAULT_STEPS) -> None:
        raise NotImplementedError

    def denoise(self, noise: torch.Tensor, *, pinned: torch.Tensor | None, text: torch.Tensor,
                text_mask: torch.Tensor, raymap: torch.Tensor, plucker: torch.Tensor, cache,
                start_frame: int) -> torch.Tensor:
        """Denoise one chunk.

        noise (B,C,F,h,w) fp32; pinned (B,C,1,h,w) or None: the clean latent written into the chunk's frame 0 with
        timestep 0 (chunk 0 of a session); raymap (B,F,20); plucker (B,48,F,h,w). Returns clean latents (B,C,F,h,w)
        fp32. The cache is read, never written.
        """
        raise NotImplementedError

    def write_cache(self, latents: torch.Tensor, *, text: torch.Tensor, text_mask: torch.Tensor,
                    raymap: torch.Tensor, plucker: torch.Tensor, cache, start_frame: int) -> None:
        """The cache-writing pass at ``t = 0`` on the clean chunk ``latents`` (B,C,F,h,w)."""
        raise NotImplementedError


def sample_bidirectional(model: torch.nn.Module, noise: torch.Tensor, first_latent: torch.Tensor | None, *,
                         text: torch.Tensor, text_mask: torch.Tensor, raymap: torch.Tensor, plucker: torch.Tensor,
                         sigmas: torch.Tensor, guidance_scale: float = 5.0, negative_text: torch.Tensor | None = None,
                         negative_mask: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Multi-step flow-matching Euler sampler over a whole clip (bidirectional model, diffusers semantics).

    noise (1,C,T,h,w) fp32; first_latent (1,C,1,h,w) pinned at frame 0 with timestep 0, or None (no image);
    sigmas from ``flow_match_sigmas``; classifier-free guidance ``v = v_neg + g (v_pos - v_neg)`` when
    ``guidance_scale > 1`` (needs ``negative_text``/``negative_mask``). Returns clean latents (1,C,T,h,w) fp32.
    """
    raise NotImplementedError
