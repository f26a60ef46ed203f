"""Temporal convolutions of SANA-WM over the latent-frame axis (PyTorch reference).

- :func:`short_conv_k`: the depthwise K short conv of GDN blocks (kernel K = 4, weight (C, 1, K) laid out like
  FLA's causal ``ShortConvolution``), run forwards and backwards minus the shared centre tap:
  ``y[t] = w[K-1] x[t] + sum_{d=1}^{K-1} w[K-1-d] (x[t-d] + x[t+d])``.
- :func:`ffn_temporal_conv`: the FFN's residual temporal conv ``h + Conv2d(C, C, (3, 1))(h)`` (as matrix products).

Both take ``chunk_starts`` (segment starts of a chunk-causal forward; ``None`` = one segment) and history frames
from before the first frame (the streaming cache tails). Future taps never cross a segment end (they see zeros);
past taps see the previous frames, across segments unless ``cross_chunk=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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
    if len(segments) == 1:  # one segment (a streamed chunk, or bidirectional): 2K - 2 fused taps over a padded copy
        pad = x.new_zeros(B, K - 1, S, C)
        left = history.to(x.dtype) if history is not None else pad
        xx = torch.cat([left, x, pad], dim=1)  # frame t of x is xx[t + K - 1]
        for d in range(1, K):
            out.addcmul_(xx[:, K - 1 - d : K - 1 - d + T], w[:, K - 1 - d])
            out.addcmul_(xx[:, K - 1 + d : K - 1 + d + T], w[:, K - 1 - d])
        return out
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
    """Residual temporal conv ``h + conv(h)`` of the FFN, as three matrix products per segment (one per tap:
    ``W_j @ frames shifted by j - 1``), which cuBLAS runs several times faster than cuDNN's (3, 1) convolution.

    Args:
        h: (B, C, T, S) point-conv output. weight: (C, C, 3, 1) (``mlp.t_conv.weight``); stored tap-major
            (:func:`tap_major`) each tap is a contiguous matrix, otherwise every call copies the taps.
        chunk_starts: segment starts; a segment's last frame sees zeros on the right, its first frame sees the
            previous frame (of the previous segment) on the left.
        history: (B, C, 1, S) frame preceding ``h`` (streaming FFN tail); zeros if None.

    Returns:
        (B, C, T, S), stored token-major (``out.permute(0, 2, 3, 1)`` is contiguous).
    """
    B, C, T, S = h.shape
    if tuple(weight.shape) != (C, C, 3, 1):
        raise ValueError(f"ffn_temporal_conv expects a ({C}, {C}, 3, 1) weight, got {tuple(weight.shape)}.")
    taps = [weight[:, :, j, 0].to(h.dtype).t() for j in range(3)]  # (C_in, C_out) each
    # Token-major result (B, T*S, C): the GEMMs write rows of tokens; returned as a (B, C, T, S) view.
    out = torch.empty(B, T, S, C, dtype=h.dtype, device=h.device)
    out.copy_(h.permute(0, 2, 3, 1))
    out = out.view(B, T * S, C)
    zeros = h.new_zeros(B, C, 1, S)
    for s, e in chunk_segments(T, chunk_starts):
        if s > 0:
            left = h[:, :, s - 1 : s]
        elif history is not None:
            left = history.to(h.dtype)
        else:
            left = zeros
        seg = torch.cat([left, h[:, :, s:e], zeros], dim=2)  # (B, C, L + 2, S)
        L = e - s
        for b in range(B):
            dst = out[b, s * S : e * S]
            for j, w in enumerate(taps):
                dst.addmm_(seg[b, :, j : j + L].reshape(C, L * S).t(), w)
    return out.view(B, T, S, C).permute(0, 3, 1, 2)


def tap_major(weight: torch.Tensor) -> torch.Tensor:
    """The same (C, C, 3, 1) temporal-conv weight values stored tap-major (storage (3, C, C)), so that
    ``weight[:, :, j, 0]`` is a contiguous matrix. Assign once after loading: ``t_conv.weight.data =
    tap_major(t_conv.weight.data)`` (state-dict names and shapes are unchanged)."""
    return weight.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
