"""Temporal convolutions of SANA-WM over the latent-frame axis (PyTorch reference).

- :func:`short_conv_k`: the depthwise K short conv of GDN blocks (kernel K = 4, weight (C, 1, K) laid out like
  FLA's causal ``ShortConvolution``), run forwards and backwards minus the shared centre tap:
  ``y[t] = w[K-1] x[t] + sum_{d=1}^{K-1} w[K-1-d] (x[t-d] + x[t+d])``.
- :func:`ffn_temporal_conv`: the FFN's residual temporal conv ``h + Conv2d(C, C, (3, 1))(h)``.

Both take ``chunk_starts`` (segment starts of a chunk-causal forward; ``None`` = one segment) and history frames
from before the first frame (the streaming cache tails). Future taps never cross a segment end (they see zeros);
past taps see the previous frames, across segments unless ``cross_chunk=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .gdn import chunk_segments

__all__ = ["ffn_temporal_conv", "short_conv_k"]


def _future_taps(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_{d>=1} w[:, K-1-d] * x[t+d] over (B, T, S, C), zeros past the end."""
    K = w.shape[-1]
    T = x.shape[1]
    out = torch.zeros_like(x)
    for d in range(1, min(K, T)):
        out[:, : T - d] += x[:, d:] * w[:, K - 1 - d]
    return out


def short_conv_k(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    chunk_starts: Sequence[int] | None = None,
    history: torch.Tensor | None = None,
    cross_chunk: bool = True,
) -> torch.Tensor:
    """Bidirectional / chunk-causal depthwise short conv.

    Args:
        x: (B, T, S, C) raw keys (T frames of S tokens).
        weight: (C, 1, K) depthwise kernel (causal layout: ``weight[..., -1]`` multiplies the current frame).
        chunk_starts: segment starts; backward taps stay inside each segment.
        history: (B, K-1, S, C) raw frames preceding ``x`` (streaming tail); zeros if None.
        cross_chunk: if False the forward taps also stay inside each segment (``history`` must be None).

    Returns:
        (B, T, S, C) in ``x.dtype``.
    """
    B, T, S, C = x.shape
    K = weight.shape[-1]
    w = weight[:, 0, :].to(x.dtype)  # (C, K)
    segments = chunk_segments(T, chunk_starts)
    if history is not None and not cross_chunk:
        raise ValueError("short_conv_k: history is only meaningful with cross_chunk=True.")
    if history is not None and tuple(history.shape) != (B, K - 1, S, C):
        raise ValueError(f"history must have shape {(B, K - 1, S, C)}, got {tuple(history.shape)}.")

    out = x * w[:, K - 1]
    if cross_chunk:
        if history is None:
            history = x.new_zeros(B, K - 1, S, C)
        xx = torch.cat([history.to(x.dtype), x], dim=1)  # frame t of x is xx[t + K - 1]
        for d in range(1, K):
            out = out + xx[:, K - 1 - d : K - 1 - d + T] * w[:, K - 1 - d]
        pieces = [_future_taps(x[:, s:e], w) for s, e in segments]
    else:
        pieces = [_future_taps(x[:, s:e], w) + _future_taps(x[:, s:e].flip(1), w).flip(1) for s, e in segments]
    return out + (pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1))


def ffn_temporal_conv(
    h: torch.Tensor,
    weight: torch.Tensor,
    *,
    chunk_starts: Sequence[int] | None = None,
    history: torch.Tensor | None = None,
) -> torch.Tensor:
    """Residual temporal conv ``h + conv(h)`` of the FFN.

    Args:
        h: (B, C, T, S) point-conv output. weight: (C, C, 3, 1) (``mlp.t_conv.weight``).
        chunk_starts: segment starts; a segment's last frame sees zeros on the right, its first frame sees the
            previous frame (of the previous segment) on the left.
        history: (B, C, 1, S) frame preceding ``h`` (streaming FFN tail); zeros if None.

    Returns:
        (B, C, T, S).
    """
    T = h.shape[2]
    if weight.shape[2:] != (3, 1):
        raise ValueError(f"ffn_temporal_conv expects a (C, C, 3, 1) weight, got {tuple(weight.shape)}.")
    segments = chunk_segments(T, chunk_starts)
    if history is None and len(segments) == 1:
        return h + F.conv2d(h, weight, padding=(1, 0))
    pieces = []
    for s, e in segments:
        if s > 0:
            left = h[:, :, s - 1 : s]
        elif history is not None:
            left = history.to(h.dtype)
        else:
            left = torch.zeros_like(h[:, :, :1])
        seg = torch.cat([left, h[:, :, s:e], torch.zeros_like(left)], dim=2)
        pieces.append(F.conv2d(seg, weight))
    return h + torch.cat(pieces, dim=2)
