"""What a session carries from one chunk to the next, and exact copies of it.

``SessionState`` holds the transformer's streaming cache, the VAE streaming decoder (its feature cache), the
camera (the last pose and the live controller's state) and the chunk counter. Its size does not depend on how long
the session has run. The noise of chunk ``c`` is a pure function of ``(seed, c)`` (``sampler.chunk_noise``), so the
chunk counter is the whole RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Snapshot:
    """An exact copy of a session's state at a chunk boundary (``Session.snapshot``).

    Restoring it (``Session.restore``) and feeding the same inputs gives bitwise the same frames. Cheap: tensor
    copies only, no recomputation. Fields: ``cache`` (a cloned ``sana_wm.StreamingCache``), ``decoder`` (the VAE
    streaming decoder's snapshot), ``pose`` (4,4) float64 c2w of the last emitted frame relative to frame 0,
    ``controller`` (the live controller's ``state_dict()``), ``chunk_index`` (the next chunk to generate; latent
    frame ``3 * chunk_index + 1`` starts it when ``chunk_index >= 1``), ``key`` (identifies the session set-up:
    world, size, prompt, image, seed; restore refuses a snapshot of another set-up).
    """

    cache: Any
    decoder: Any
    pose: np.ndarray
    controller: dict
    chunk_index: int
    key: tuple

    def nbytes(self) -> int:
        """Total bytes of the tensors held."""
        raise NotImplementedError


class SessionState:
    """A session's mutable state; constant size over time (see module docstring)."""

    def __init__(self, cache, decoder, controller, key: tuple) -> None:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Total bytes of the tensors held (transformer cache + decoder cache + camera)."""
        raise NotImplementedError

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    def restore(self, snap: Snapshot) -> None:
        raise NotImplementedError
