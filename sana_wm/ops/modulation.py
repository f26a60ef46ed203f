"""Elementwise glue of a transformer block in plain PyTorch (the references of ``modulation_triton``): adaLN
modulation after a LayerNorm, gated residuals, and the attention's output gate.

Per-frame parameters (``shift``, ``scale``, ``gate``) are (B, T, 1, C) and apply to the S = N / T tokens of their
frame in token-major activations (B, N, C). Every function computes exactly what ``SanaWMBlock`` /
``SanaWMAttention`` computed inline (same ops, same roundings), so swapping them in changes no bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "check_per_frame",
    "gated_output",
    "gated_residual",
    "heads_to_tokens",
    "layernorm_modulate",
    "residual_layernorm_modulate",
]

LN_EPS = 1e-6


def check_per_frame(name: str, x: torch.Tensor, p: torch.Tensor) -> int:
    """Validate a per-frame parameter ``p`` (B, T, 1, C) for tokens ``x`` (B, N, C); returns T."""
    if x.dim() != 3:
        raise ValueError(f"x must be (B, N, C), got shape {tuple(x.shape)}.")
    B, N, C = x.shape
    if p.dim() != 4 or p.shape[0] != B or p.shape[2] != 1 or p.shape[3] != C or N % p.shape[1]:
        raise ValueError(f"{name} must be (B={B}, T, 1, C={C}) with T dividing N={N}, got shape {tuple(p.shape)}.")
    return p.shape[1]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    B, N, C = x.shape
    T = shift.shape[1]
    h = torch.addcmul(shift, F.layer_norm(x, (C,), eps=LN_EPS).view(B, T, -1, C), 1 + scale)
    return h.view(B, N, C)


def layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``LayerNorm(x) * (1 + scale) + shift`` per frame (no affine, eps 1e-6).

    x (B, N, C); shift, scale (B, T, 1, C) -> (B, N, C) in ``x.dtype``."""
    check_per_frame("shift", x, shift)
    check_per_frame("scale", x, scale)
    return _modulate(x, shift, scale)


def residual_layernorm_modulate(
    x: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    gate: torch.Tensor | None = None,
    skip: torch.Tensor | None = None,
    first: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add (gated per frame when ``gate`` is given: :func:`gated_residual`) followed by the modulated
    LayerNorm of the sum.

    x, y, skip (B, N, C); shift, scale, gate (B, T, 1, C); first (B, 1, S, C) -> (r, LayerNorm(r) * (1 + scale) +
    shift), both (B, N, C), with r = x + y or x + gate * y, where ``skip`` is added to y first and ``first`` to its
    first frame's S rows (the FFN's temporal conv: its residual, and the previous chunk's past tap)."""
    T = check_per_frame("shift", x, shift)
    check_per_frame("scale", x, scale)
    if skip is not None:
        y = y + skip
    if first is not None:
        B, N, C = x.shape
        if tuple(first.shape) != (B, 1, N // T, C):
            raise ValueError(f"first must have shape {(B, 1, N // T, C)}, got {tuple(first.shape)}.")
        y = torch.cat([y[:, : N // T] + first[:, 0], y[:, N // T :]], dim=1)
    x = x + y if gate is None else gated_residual(x, gate, y)
    return x, _modulate(x, shift, scale)


def gated_residual(
    x: torch.Tensor,
    gate: torch.Tensor,
    y: torch.Tensor,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x + gate * y`` per frame, plus ``extra`` when given.

    x, y, extra (B, N, C); gate (B, T, 1, C) -> (B, N, C)."""
    T = check_per_frame("gate", x, gate)
    B, N, C = x.shape
    out = torch.addcmul(x.view(B, T, -1, C), gate, y.view(B, T, -1, C)).view(B, N, C)
    return out if extra is None else out + extra


def heads_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) per-head attention output -> (B, N, H*D) token-major (a copy unless already laid out so)."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


def gated_output(main: torch.Tensor, cam: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Attention output gate: ``(main + cam) * silu(gate)``, the product in float32, returned in ``main.dtype``.

    main, cam, gate (B, N, C) (``cam`` = ``out_proj_cam`` output, ``gate`` = ``output_gate`` output); ``main`` may
    also be the attention output per head (B, H, N, D), C = H * D (:func:`heads_to_tokens`)."""
    if main.dim() == 4:
        main = heads_to_tokens(main)
    if main.shape != cam.shape or main.shape != gate.shape:
        raise ValueError(
            f"main, cam and gate must have one shape, got {tuple(main.shape)}, {tuple(cam.shape)}, {tuple(gate.shape)}."
        )
    combined = main + cam
    return (combined * F.silu(gate.to(torch.float32))).to(main.dtype)
