"""``World``: the SANA-WM networks (transformer, VAE, prompt encoder) loaded once; starts sessions and renders.

Checkpoint folders:
- streaming release: ``sana_dit/model.pt``, ``ltx2_causal_vae/``, and a Gemma-2-2B-IT folder (``gemma-2-2b-it/``
  or ``text_encoder/`` inside the folder, or the ``text_encoder=`` argument);
- bidirectional release: ``dit/*.safetensors``, ``vae/`` and the Gemma folder likewise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

DEFAULT_FOV_DEG = 60.0
"""Horizontal field of view assumed when neither ``intrinsics`` nor ``fov_deg`` is given."""


class World:
    """Networks loaded once; any number of sessions.

    ``height``/``width`` (multiples of 32) are the default frame size of sessions and renders; each call may
    override them.
    """

    def __init__(self, transformer: torch.nn.Module, vae, prompt_encoder, *, height: int = 704, width: int = 1280,
                 name: str = "sana-wm") -> None:
        raise NotImplementedError

    @classmethod
    def demo(cls, height: int = 64, width: int = 96, seed: int = 0, *, variant: str = "streaming",
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "World":
        """Tiny random transformer + tiny random VAE + tiny prompt encoder (smoke runs and tests)."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             text_encoder: str | Path | None = None, height: int = 704, width: int = 1280) -> "World":
        """Load a downloaded SANA-WM release folder (see module docstring). Default device: CUDA if present, else
        CPU; default dtype: bf16 on CUDA, fp32 on CPU. A missing part raises FileNotFoundError naming it."""
        raise NotImplementedError

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1,L,caption_channels) embeddings and (1,L) mask on the device; cached per prompt."""
        raise NotImplementedError

    def start(self, image, prompt: str, *, seed: int = 0, intrinsics: Sequence[float] | None = None,
              fov_deg: float | None = None, height: int | None = None, width: int | None = None,
              steps: Sequence[int] | None = None, on_chunk: Callable | None = None):
        """Start a streaming ``Session`` from a first image (PIL | (H,W,3) uint8 | encoded bytes | path).

        intrinsics ``[fx, fy, cx, cy]`` in pixels of the source image (adjusted to the resize + crop), or
        ``fov_deg`` the horizontal field of view of the frame; default ``DEFAULT_FOV_DEG``.
        """
        raise NotImplementedError

    def render_path(self, image, prompt: str, c2w: np.ndarray, *, seed: int = 0,
                    intrinsics: Sequence[float] | None = None, fov_deg: float | None = None,
                    sampler: str | None = None, height: int | None = None, width: int | None = None,
                    steps: Sequence[int] | None = None, num_steps: int = 60, guidance_scale: float = 5.0,
                    negative_prompt: str = "", flow_shift: float = 9.8, progress: bool = True) -> np.ndarray:
        """Render a whole camera path offline; returns the frames for ``c2w[1:]`` (F-1,H,W,3) uint8.

        c2w (F,4,4) camera-to-world (OpenCV), relativised to ``c2w[0]``. ``sampler``: "streaming" (the
        chunked self-forcing rollout; ``steps``) or "bidirectional" (multi-step flow matching over the whole clip;
        ``num_steps``, ``flow_shift``, ``guidance_scale``, ``negative_prompt``); default: the world's variant.
        """
        raise NotImplementedError

    def render_image(self, prompt: str, *, seed: int = 0, image=None, pose: np.ndarray | None = None,
                     intrinsics: Sequence[float] | None = None, fov_deg: float | None = None,
                     height: int | None = None, width: int | None = None) -> np.ndarray:
        """One still frame (H,W,3) uint8: from the prompt alone (one latent frame, no image), or with ``image`` the
        frame a fresh session would show at ``pose`` (``Session.render_image``)."""
        raise NotImplementedError
