"""Samplers: the streaming self-forcing chunk sampler and the offline bidirectional flow-matching sampler.

Conventions (spec sections 2.3, 2.4): timesteps on the 0..1000 scale, ``sigma = t / 1000``, the network predicts
the flow velocity ``v = noise - x0`` and an Euler step is ``x <- x - (sigma - sigma_next) * v``. A pinned frame
(the conditioning image latent) has timestep 0, gets ``dt = 0`` and is re-written after every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch

from sana_wm.transformer import TextInputs

DEFAULT_STEPS: tuple[int, ...] = (1000, 960, 889, 727, 0)
"""The distilled streaming student's step list (the shift-8 warp of a uniform 4-step grid)."""

DEFAULT_FLOW_SHIFT = 9.8
"""Inference flow shift of the bidirectional model."""


def validate_steps(steps: Sequence[int]) -> tuple[int, ...]:
    """Check a streaming step list: integers in 0..1000, strictly decreasing, ending at 0, at least 2 entries."""
    try:
        out = tuple(int(t) for t in steps)
    except (TypeError, ValueError):
        raise TypeError(f"steps must be a sequence of integers on the 0..1000 scale, got {steps!r}.") from None
    if any(float(t) != int(t) for t in steps):
        raise ValueError(f"steps must be integers on the 0..1000 scale, got {list(steps)}.")
    if len(out) < 2 or out[-1] != 0 or out[0] > 1000 or any(a <= b for a, b in pairwise(out)):
        raise ValueError(
            f"steps must be strictly decreasing integers from at most 1000 down to 0 (e.g. {list(DEFAULT_STEPS)}), "
            f"got {list(out)}."
        )
    return out


def host_to_device(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without a host synchronisation: through pinned memory to a GPU (the copy is
    queued on the current stream), a plain ``.to`` elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device=device, dtype=dtype)


def noise_generator(seed: int, chunk_index: int) -> torch.Generator:
    """The CPU generator of chunk ``chunk_index``: seeded with ``numpy.random.SeedSequence((seed, chunk_index))``."""
    state = np.random.SeedSequence((int(seed) & (2**64 - 1), int(chunk_index))).generate_state(1, np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & (2**63 - 1))


def chunk_noise(seed: int, chunk_index: int, shape: Sequence[int], device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise for one chunk, a pure function of ``(seed, chunk_index)``.

    Drawn in fp32 on the CPU from ``noise_generator(seed, chunk_index)`` and moved to ``device``: the same on every
    device, independent of how far ahead anything was generated. (The offline sampler draws the whole clip's
    noise as chunk 0.)
    """
    noise = torch.randn(tuple(shape), generator=noise_generator(seed, chunk_index), dtype=torch.float32)
    return host_to_device(noise, device, dtype)


def flow_match_sigmas(num_steps: int, shift: float = DEFAULT_FLOW_SHIFT) -> torch.Tensor:
    """The offline sampler's sigmas, ``(num_steps + 1,)`` fp32 ending in 0 (diffusers
    ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)`` with the terminal sigma appended)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if shift <= 0:
        raise ValueError(f"flow_shift must be > 0, got {shift}.")
    train = torch.arange(1000, 0, -1, dtype=torch.float32) / 1000
    train = shift * train / (1 + (shift - 1) * train)
    t = torch.linspace(train[0].item() * 1000, train[-1].item() * 1000, num_steps, dtype=torch.float64)
    sigmas = (t / 1000).mul(shift).div(1 + (shift - 1) * (t / 1000)).to(torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class StreamingSampler:
    """Self-forcing chunk sampler for the chunk-causal streaming transformer (spec 2.3).

    For one chunk of latent frames ``[s, e)``: Euler steps over ``steps`` reading the cache only, then one pass at
    ``t = 0`` on the clean chunk that writes the cache. No guidance. The latents are carried in fp32 between steps
    and cast to the model's dtype for each forward.
    """

    def __init__(self, model: torch.nn.Module, steps: Sequence[int] = DEFAULT_STEPS) -> None:
        self.model = model
        self.steps = validate_steps(steps)
        sigmas = torch.tensor(self.steps, dtype=torch.float32) / 1000
        self.dts = (sigmas[:-1] - sigmas[1:]).tolist()  # fp32 differences, as diffusers' per-token Euler step
        self.dtype = next(model.parameters()).dtype

    def _timesteps(self, t: int, batch: int, frames: int, pinned: bool, device: torch.device) -> torch.Tensor:
        """The (batch, frames) timestep input of a pass at step ``t`` (0 on a pinned frame 0)."""
        timestep = torch.full((batch, frames), float(t), device=device)
        if pinned:
            timestep[:, 0] = 0.0
        return timestep

    def denoise(self, noise: torch.Tensor, *, pinned: torch.Tensor | None, text: torch.Tensor,
                text_mask: torch.Tensor | None, raymap: torch.Tensor, plucker: torch.Tensor, cache,
                start_frame: int, prompt: TextInputs | None = None) -> torch.Tensor:
        """Denoise one chunk.

        noise (B,C,F,h,w) fp32 (with ``pinned``, frame 0 of it is ignored); pinned (B,C,1,h,w) or None: the clean
        latent written into the chunk's frame 0 with timestep 0 (chunk 0 of a session; it gets ``dt = 0``);
        raymap (B,F,20); plucker (B,48,F,h,w); prompt: the model's ``text_inputs(text, text_mask)`` if computed
        before (streaming passes then skip it). Returns clean latents (B,C,F,h,w) fp32. The cache is read only;
        ``cache=None`` runs a clip from frame 0 with no history (the chunk-causal full forward, e.g. one frame).
        """
        x = noise.to(torch.float32).clone()
        first = 0
        if pinned is not None:
            x[:, :, :1] = pinned
            first = 1
        batch, frames = x.shape[0], x.shape[2]
        for t, dt in zip(self.steps[:-1], self.dts):
            timestep = self._timesteps(t, batch, frames, pinned is not None, x.device)
            if cache is None:
                v = self.model(x.to(self.dtype), timestep, text, text_mask, raymap, plucker, causal=True)
            else:
                v = self.model.forward_chunk(x.to(self.dtype), timestep, text, text_mask, raymap, plucker,
                                             cache=cache, start_frame=start_frame, write_cache=False, prompt=prompt)
            x[:, :, first:] -= dt * v[:, :, first:].float()
        return x

    def write_cache(self, latents: torch.Tensor, *, text: torch.Tensor, text_mask: torch.Tensor | None,
                    raymap: torch.Tensor, plucker: torch.Tensor, cache, start_frame: int,
                    prompt: TextInputs | None = None) -> None:
        """The cache-writing pass at ``t = 0`` on the clean chunk ``latents`` (B,C,F,h,w) (``prompt`` as in
        ``denoise``)."""
        timestep = self._timesteps(0, latents.shape[0], latents.shape[2], False, latents.device)
        self.model.forward_chunk(latents.to(self.dtype), timestep, text, text_mask, raymap, plucker,
                                 cache=cache, start_frame=start_frame, write_cache=True, prompt=prompt)


def sample_bidirectional(model: torch.nn.Module, noise: torch.Tensor, first_latent: torch.Tensor | None, *,
                         text: torch.Tensor, text_mask: torch.Tensor, raymap: torch.Tensor, plucker: torch.Tensor,
                         sigmas: torch.Tensor, guidance_scale: float = 5.0, negative_text: torch.Tensor | None = None,
                         negative_mask: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Multi-step flow-matching Euler sampler over a whole clip (bidirectional model, diffusers semantics).

    noise (1,C,T,h,w) fp32; first_latent (1,C,1,h,w) pinned at frame 0 with timestep 0, or None (no image);
    text (1,L,D), text_mask (1,L); raymap (1,T,20); plucker (1,48,T,h,w); sigmas from ``flow_match_sigmas``;
    classifier-free guidance ``v = v_neg + g (v_pos - v_neg)`` when ``guidance_scale > 1`` (needs
    ``negative_text``/``negative_mask``). Returns clean latents (1,C,T,h,w) fp32.
    """
    from tqdm.auto import tqdm

    dtype = next(model.parameters()).dtype
    guided = guidance_scale > 1.0
    if guided and (negative_text is None or negative_mask is None):
        raise ValueError("guidance_scale > 1 needs negative_text and negative_mask (the negative prompt).")
    x = noise.to(torch.float32).clone()
    first = 0
    if first_latent is not None:
        x[:, :, :1] = first_latent
        first = 1
    if guided:
        text = torch.cat([negative_text, text])
        text_mask = torch.cat([negative_mask, text_mask])
        raymap, plucker = raymap.repeat(2, 1, 1), plucker.repeat(2, 1, 1, 1, 1)
    batch, frames = text.shape[0], x.shape[2]
    timesteps = sigmas[:-1].to(torch.float32) * 1000
    for i in tqdm(range(len(timesteps)), desc="denoise", disable=not progress):
        timestep = timesteps[i].expand(batch, frames).clone()
        timestep[:, :first] = 0.0
        model_in = x.to(dtype)
        v = model(model_in.expand(batch, -1, -1, -1, -1), timestep.to(x.device), text, text_mask, raymap, plucker)
        v = v.float()
        if guided:
            v_neg, v_pos = v.chunk(2)
            v = v_neg + guidance_scale * (v_pos - v_neg)
        x[:, :, first:] -= (timesteps[i] / 1000 - sigmas[i + 1]).item() * v[:, :, first:]
    return x
