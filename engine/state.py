"""What a session carries from one chunk to the next, and exact copies of it.

``SessionSetup`` is what a session was started from (prompt embeddings, image latent, intrinsics, seed, size,
step list); it never changes and is shared, not copied, by forks and snapshots. ``SessionState`` is what changes:
the transformer's streaming cache, the VAE streaming decoder (its feature cache), the camera (the live controller:
pose, velocity, held keys) and the chunk counter. Its size does not depend on how long the session has run. The
noise of chunk ``c`` is a pure function of ``(seed, c)`` (``sampler.chunk_noise``), so the chunk counter is the
whole RNG state.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sana_wm.transformer import TextInputs


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors and numpy arrays inside ``obj`` (nested dicts, lists, tuples, dataclass fields)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if hasattr(obj, "nbytes") and callable(obj.nbytes):
        return int(obj.nbytes())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


@dataclass(frozen=True)
class SessionSetup:
    """The immutable inputs of a session.

    text (1,L,D) / text_mask (1,L) on the device (``engine.world.valid_text``: the valid tokens and None);
    text_inputs: what the transformer derives from them alone (``SanaWMTransformer.text_inputs``: cross-attention
    K/V of every block), computed once here instead of once per chunk;
    first_latent (1,C,1,h,w) fp32, the VAE-encoded first image; first_frame (H,W,3) uint8, the prepared (resized +
    centre-cropped) image; intrinsics (4,) float64 in pixels of the frame; steps: the streaming step list; world:
    ``id`` of the World (snapshots only restore into its sessions).
    """

    prompt: str
    seed: int
    height: int
    width: int
    text: torch.Tensor
    text_mask: torch.Tensor | None
    text_inputs: TextInputs
    first_latent: torch.Tensor
    first_frame: np.ndarray
    intrinsics: np.ndarray
    steps: tuple[int, ...]
    mapping: str
    world: int

    def nbytes(self) -> int:
        return tensor_bytes([self.text, self.text_mask, self.text_inputs, self.first_latent, self.first_frame,
                             self.intrinsics])


@dataclass(frozen=True)
class Snapshot:
    """An exact copy of a session's state between chunks (``Session.snapshot``).

    Restoring it (``Session.restore``) and feeding the same inputs gives bitwise the same frames. Cheap: tensor
    copies only, no recomputation. Fields: ``cache`` (a cloned ``sana_wm.StreamingCache``), ``decoder`` (the VAE
    streaming decoder's snapshot), ``controller`` (the live controller's ``state_dict()``: pose, velocity, keys),
    ``chunk_index`` (the next chunk to generate; it fixes the latent positions ``3 * chunk_index + 1 ..`` and the
    noise), ``setup`` (the session's ``SessionSetup``, shared by reference).
    """

    cache: Any
    decoder: Any
    controller: dict
    chunk_index: int
    setup: SessionSetup

    def nbytes(self) -> int:
        """Total bytes of the tensors held (the shared setup excluded)."""
        return tensor_bytes([self.cache, self.decoder])


class SessionState:
    """A session's mutable state (see the module docstring); constant size over time.

    cache: ``sana_wm.StreamingCache``; decoder: the VAE streaming decoder; controller: ``controllers.LiveController``;
    chunk_index: the next chunk to generate.
    """

    def __init__(self, setup: SessionSetup, cache, decoder, controller) -> None:
        self.setup = setup
        self.cache = cache
        self.decoder = decoder
        self.controller = controller
        self.chunk_index = 0

    @property
    def pose(self) -> np.ndarray:
        """(4,4) c2w of the last generated frame, relative to frame 0."""
        return self.controller.pose

    def nbytes(self) -> int:
        """Total bytes of the tensors held: transformer cache + decoder cache + setup (embeddings, image latent)."""
        return self.cache.nbytes() + self.decoder.nbytes() + self.setup.nbytes()

    def snapshot(self) -> Snapshot:
        return Snapshot(
            cache=self.cache.clone(),
            decoder=self.decoder.state_dict_snapshot(),
            controller=copy.deepcopy(self.controller.state_dict()),
            chunk_index=self.chunk_index,
            setup=self.setup,
        )

    def restore(self, snap: Snapshot) -> None:
        """Copy ``snap`` into this state's preallocated tensors (``snap`` stays usable for later restores)."""
        self.cache.copy_(snap.cache)
        self.decoder.load_snapshot(snap.decoder)
        self.controller.load_state_dict(copy.deepcopy(snap.controller))
        self.chunk_index = snap.chunk_index
        self.setup = snap.setup
