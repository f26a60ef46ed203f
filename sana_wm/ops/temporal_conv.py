"""Temporal convolutions of SANA-WM over the latent-frame axis (PyTorch reference).

- :func:`short_conv_k`: the depthwise K short conv of GDN blocks (kernel K = 4, weight (C, 1, K) laid out like
  FLA's causal ``ShortConvolution``), run forwards and backwards minus the shared centre tap:
  ``y[t] = w[K-1] x[t] + sum_{d=1}^{K-1} w[K-1-d] (x[t-d] + x[t+d])``.
- :func:`ffn_temporal_conv_tokens`: the FFN's residual temporal conv ``h + Conv2d(C, C, (3, 1))(h)`` (as matrix
  products) on token-major (B, T, S, C) activations; :func:`ffn_temporal_conv` the same on channel-first ones.

Both take ``chunk_starts`` (segment starts of a chunk-causal forward; ``None`` = one segment) and what the frames
before the first one contribute (the streaming cache tails: raw K frames; the FFN's past tap of its last
frame). Future taps never cross a segment end (they see zeros); past taps see the previous frames, across segments
unless ``cross_chunk=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .gdn import chunk_segments

__all__ = ["ffn_temporal_conv", "ffn_temporal_conv_tokens", "past_tap", "short_conv_k", "tap_major"]


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
    if len(segments) == 1:  # one segment (a streamed chunk, or bidirectional): in-place taps on shifted views
        for d in range(1, K):
            if d < T:
                out[:, d:].addcmul_(x[:, : T - d], w[:, K - 1 - d])
                out[:, : T - d].addcmul_(x[:, d:], w[:, K - 1 - d])
            if history is not None:  # frames t < d see history frame K - 1 + t - d
                n = min(d, T)
                out[:, :n].addcmul_(history[:, K - 1 - d : K - 1 - d + n].to(x.dtype), w[:, K - 1 - d])
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


def ffn_temporal_conv_tokens(
    h: torch.Tensor,
    weight: torch.Tensor,
    *,
    chunk_starts: Sequence[int] | None = None,
    residual: bool = True,
) -> torch.Tensor:
    """Residual temporal conv ``h + conv(h)`` of the FFN on token-major activations, as matrix products (cuBLAS runs
    them several times faster than cuDNN's (3, 1) convolution) with no padded copy: the centre tap (and the
    residual: one ``addmm``) over all tokens; the past / future taps accumulate into the frame-shifted rows of each
    segment. ``residual=False`` returns ``conv(h)`` alone (the caller adds ``h`` later, e.g. in the next LayerNorm's
    pass: no copy of h into the GEMM's output first).

    Args:
        h: (B, T, S, C) point-conv output. weight: (C, C, 3, 1) (``mlp.t_conv.weight``); stored tap-major
            (:func:`tap_major`) each tap is a contiguous matrix.
        chunk_starts: segment starts; a segment's last frame sees zeros on the right, its first frame sees the
            previous frame (of the previous segment) on the left; the first segment's first frame sees zeros (a
            streamed chunk's caller adds the cached :func:`past_tap` of the frame before it).

    Returns:
        (B, T, S, C), contiguous.
    """
    B, T, S, C = h.shape
    _check_tconv_weight(weight, C)
    past_w, centre, future = (weight[:, :, j, 0].to(h.dtype).t() for j in range(3))  # (C_in, C_out) each
    h = h.contiguous()
    flat = h.view(B * T * S, C)
    out = (torch.addmm(flat, flat, centre) if residual else flat @ centre).view(B, T, S, C)
    for s, e in chunk_segments(T, chunk_starts):
        for b in range(B):
            if e - s > 1:
                out[b, s : e - 1].view(-1, C).addmm_(h[b, s + 1 : e].view(-1, C), future)
                out[b, s + 1 : e].view(-1, C).addmm_(h[b, s : e - 1].view(-1, C), past_w)
            if s > 0:
                out[b, s].addmm_(h[b, s - 1], past_w)
    return out


def past_tap(frame: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The temporal conv's past tap applied to ``frame`` (B, 1, S, C): what the next frame's output adds (the
    streaming cache keeps it for the next chunk's first frame)."""
    C = frame.shape[-1]
    _check_tconv_weight(weight, C)
    return frame @ weight[:, :, 0, 0].to(frame.dtype).t()


def _check_tconv_weight(weight: torch.Tensor, C: int) -> None:
    if tuple(weight.shape) != (C, C, 3, 1):
        raise ValueError(f"ffn_temporal_conv expects a ({C}, {C}, 3, 1) weight, got {tuple(weight.shape)}.")


def ffn_temporal_conv(
    h: torch.Tensor, weight: torch.Tensor, *, chunk_starts: Sequence[int] | None = None
) -> torch.Tensor:
    """:func:`ffn_temporal_conv_tokens` on channel-first tensors: h (B, C, T, S) -> (B, C, T, S), stored token-major
    (``out.permute(0, 2, 3, 1)`` is contiguous)."""
    return ffn_temporal_conv_tokens(h.permute(0, 2, 3, 1), weight, chunk_starts=chunk_starts).permute(0, 3, 1, 2)


def tap_major(weight: torch.Tensor) -> torch.Tensor:
    """The same (C, C, 3, 1) temporal-conv weight values stored tap-major (storage (3, C, C)), so that
    ``weight[:, :, j, 0]`` is a contiguous matrix. Assign once after loading: ``t_conv.weight.data =
    tap_major(t_conv.weight.data)`` (state-dict names and shapes are unchanged)."""
    return weight.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
