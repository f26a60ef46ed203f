"""The LTX-2 video VAE (diffusers ``AutoencoderKLLTX2Video``) with a streaming causal decoder.

SANA-WM's latents come from this autoencoder: 128 channels, 32x spatial and 8x temporal compression with a
causal first frame (``F = 1 + 8k`` pixel frames <-> ``1 + k`` latent frames; 704x1280 -> 22x40).

- :class:`LTX2VAEConfig`: the diffusers config (``preset("ltx2" | "tiny")``, ``from_diffusers_config(dict)``).
- :class:`LTX2VAE`: encoder + decoder with parameter names identical to diffusers, so diffusers folders
  (SANA-WM's ``vae/``, the streaming release's ``ltx2_causal_vae/``) load strictly with :func:`load_vae`.
  ``encode`` returns normalised latents (posterior mode), ``decode`` un-normalises and decodes the whole clip.
- :class:`LTX2StreamingDecoder` (``vae.streaming_decoder()``): decodes latent frames one at a time (the first
  gives 1 pixel frame, each later one 8), carrying every causal conv's temporal tail between calls in
  fixed-size buffers; the result equals a full causal decode of the same latents.

Latent normalisation (per channel): ``z = (z_raw - latents_mean) * scaling_factor / latents_std``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cuda_graph import capture
from .ops._triton import HAS_TRITON, runnable_on, tl, triton
from .weights import load_into, read_state_dict

__all__ = ["LTX2VAE", "STREAMING_DEFAULTS", "LTX2StreamingDecoder", "LTX2VAEConfig", "load_vae"]

DIFFUSERS_CLASS_NAMES = ("AutoencoderKLLTX2Video", "AutoencoderKLCausalLTX2Video")
_DOWN_STRIDES = {"conv": (2, 2, 2), "spatial": (1, 2, 2), "temporal": (2, 1, 1), "spatiotemporal": (2, 2, 2)}
_UP_STRIDES = {"spatial": (1, 2, 2), "temporal": (2, 1, 1), "spatiotemporal": (2, 2, 2)}
# Keys of the NVlabs causal-VAE config that only matter for training.
_TRAINING_ONLY_KEYS = ("gradient_checkpointing",)


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


def _per_block(value, n: int, name: str) -> tuple:
    """A bool/int broadcast to ``n`` blocks, or a sequence of exactly ``n`` entries, as a tuple."""
    if isinstance(value, (bool, int, str)):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"LTX2VAEConfig.{name} needs {n} entries, got {len(value)}: {value}")
    return value


@dataclass(frozen=True)
class LTX2VAEConfig:
    """Configuration of :class:`LTX2VAE`; field names and defaults are diffusers' ``AutoencoderKLLTX2Video``.

    Per-block fields given as a single bool are broadcast like diffusers does. ``spatial_compression_ratio`` /
    ``temporal_compression_ratio`` may be left ``None``: the real ratios follow from the block layout
    (:attr:`spatial_compression`, :attr:`temporal_compression`) and explicit values must agree with them.
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 128
    block_out_channels: tuple[int, ...] = (256, 512, 1024, 2048)
    down_block_types: tuple[str, ...] = ("LTX2VideoDownBlock3D",) * 4
    decoder_block_out_channels: tuple[int, ...] = (256, 512, 1024)
    layers_per_block: tuple[int, ...] = (4, 6, 6, 2, 2)
    decoder_layers_per_block: tuple[int, ...] = (5, 5, 5, 5)
    spatio_temporal_scaling: tuple[bool, ...] = (True, True, True, True)
    decoder_spatio_temporal_scaling: tuple[bool, ...] = (True, True, True)
    decoder_inject_noise: tuple[bool, ...] = (False, False, False, False)
    downsample_type: tuple[str, ...] = ("spatial", "temporal", "spatiotemporal", "spatiotemporal")
    upsample_type: tuple[str, ...] = ("spatiotemporal", "spatiotemporal", "spatiotemporal")
    upsample_residual: tuple[bool, ...] = (True, True, True)
    upsample_factor: tuple[int, ...] = (2, 2, 2)
    timestep_conditioning: bool = False
    patch_size: int = 4
    patch_size_t: int = 1
    resnet_norm_eps: float = 1e-6
    scaling_factor: float = 1.0
    encoder_causal: bool = True
    decoder_causal: bool = True
    encoder_spatial_padding_mode: str = "zeros"
    decoder_spatial_padding_mode: str = "reflect"
    spatial_compression_ratio: int | None = None
    temporal_compression_ratio: int | None = None

    def __post_init__(self) -> None:
        n_enc = len(tuple(self.layers_per_block))
        n_dec = len(tuple(self.decoder_layers_per_block))
        n_down, n_up = len(tuple(self.block_out_channels)), len(tuple(self.decoder_block_out_channels))
        if n_enc != n_down + 1 or n_dec != n_up + 1:
            raise ValueError(
                "LTX2VAEConfig: layers_per_block needs one entry per encoder block plus one for the mid block "
                f"(got {n_enc} for {n_down} blocks) and decoder_layers_per_block likewise (got {n_dec} for {n_up})"
            )
        fix = {
            "block_out_channels": tuple(int(c) for c in self.block_out_channels),
            "decoder_block_out_channels": tuple(int(c) for c in self.decoder_block_out_channels),
            "layers_per_block": tuple(int(c) for c in self.layers_per_block),
            "decoder_layers_per_block": tuple(int(c) for c in self.decoder_layers_per_block),
            "down_block_types": _per_block(self.down_block_types, n_down, "down_block_types"),
            "spatio_temporal_scaling": _per_block(self.spatio_temporal_scaling, n_down, "spatio_temporal_scaling"),
            "decoder_spatio_temporal_scaling": _per_block(
                self.decoder_spatio_temporal_scaling, n_up, "decoder_spatio_temporal_scaling"
            ),
            "decoder_inject_noise": _per_block(self.decoder_inject_noise, n_dec, "decoder_inject_noise"),
            "downsample_type": _per_block(self.downsample_type, n_down, "downsample_type"),
            "upsample_type": _per_block(self.upsample_type, n_up, "upsample_type"),
            "upsample_residual": _per_block(self.upsample_residual, n_up, "upsample_residual"),
            "upsample_factor": _per_block(self.upsample_factor, n_up, "upsample_factor"),
        }
        for name, value in fix.items():
            object.__setattr__(self, name, value)
        bad = [t for t in self.down_block_types if t != "LTX2VideoDownBlock3D"]
        if bad:
            raise ValueError(f"LTX2VAEConfig.down_block_types: unknown block type(s) {bad}")
        bad = [t for t in self.downsample_type if t not in _DOWN_STRIDES]
        if bad:
            raise ValueError(f"LTX2VAEConfig.downsample_type: {bad} not in {sorted(_DOWN_STRIDES)}")
        bad = [t for t in self.upsample_type if t not in _UP_STRIDES]
        if bad:
            raise ValueError(f"LTX2VAEConfig.upsample_type: {bad} not in {sorted(_UP_STRIDES)}")
        if self.patch_size_t != 1:
            raise ValueError(f"LTX2VAEConfig.patch_size_t must be 1 (as in every LTX-2 VAE), got {self.patch_size_t}")
        for name in ("encoder_spatial_padding_mode", "decoder_spatial_padding_mode"):
            if getattr(self, name) not in ("zeros", "reflect", "replicate", "circular"):
                raise ValueError(f"LTX2VAEConfig.{name}: unknown padding mode {getattr(self, name)!r}")
        enc, dec = self._encoder_factors(), self._decoder_factors()
        if enc != dec:
            raise ValueError(
                f"LTX2VAEConfig: encoder compresses (t, s) by {enc} but the decoder expands by {dec}"
            )
        for name, actual in (("temporal_compression_ratio", enc[0]), ("spatial_compression_ratio", enc[1])):
            given = getattr(self, name)
            if given is not None and int(given) != actual:
                raise ValueError(f"LTX2VAEConfig.{name}={given} disagrees with the block layout, which gives {actual}")

    def _encoder_factors(self) -> tuple[int, int]:
        t, s = self.patch_size_t, self.patch_size
        for kind, on in zip(self.downsample_type, self.spatio_temporal_scaling, strict=True):
            if on:
                t, s = t * _DOWN_STRIDES[kind][0], s * _DOWN_STRIDES[kind][1]
        return t, s

    def _decoder_factors(self) -> tuple[int, int]:
        t, s = self.patch_size_t, self.patch_size
        for kind, on in zip(self.upsample_type, self.decoder_spatio_temporal_scaling, strict=True):
            if on:
                t, s = t * _UP_STRIDES[kind][0], s * _UP_STRIDES[kind][1]
        return t, s

    @property
    def temporal_compression(self) -> int:
        """Pixel frames per latent frame after the first (8 for LTX-2)."""
        return self._encoder_factors()[0]

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent cell along H and W (32 for LTX-2)."""
        return self._encoder_factors()[1]

    @classmethod
    def preset(cls, name: str) -> LTX2VAEConfig:
        """``"ltx2"``: diffusers' default (full-size LTX-2 VAE). ``"tiny"``: 16 latent channels, small widths,
        still 32x spatial / 8x temporal; fast on a CPU (tests and the demo world)."""
        if name == "ltx2":
            return cls()
        if name == "tiny":
            return cls(
                latent_channels=16,
                block_out_channels=(16, 32, 64, 64),
                layers_per_block=(1, 1, 1, 1, 1),
                decoder_block_out_channels=(16, 32, 64),
                decoder_layers_per_block=(1, 1, 1, 1),
            )
        raise ValueError(f"unknown LTX-2 VAE preset {name!r}; expected 'ltx2' or 'tiny'")

    @classmethod
    def from_diffusers_config(cls, config: Mapping) -> LTX2VAEConfig:
        """Build from a diffusers ``config.json`` dict (``AutoencoderKLLTX2Video`` or NVlabs'
        ``AutoencoderKLCausalLTX2Video``). Keys starting with ``_`` are metadata; NVlabs'
        ``decoder_upsample_type`` (listed from the innermost block out) maps to ``upsample_type``; keys this
        class does not know are reported with a warning and ignored, as diffusers does."""
        if not isinstance(config, Mapping):
            raise TypeError(f"expected a dict (parsed config.json), got {type(config).__name__}")
        class_name = config.get("_class_name")
        if class_name is not None and class_name not in DIFFUSERS_CLASS_NAMES:
            raise ValueError(
                f"config is for {class_name!r}, not an LTX-2 video VAE ({' / '.join(DIFFUSERS_CLASS_NAMES)})"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs, unknown = {}, []
        for key, value in config.items():
            if key.startswith("_") or key in _TRAINING_ONLY_KEYS:
                continue
            if key == "decoder_upsample_type":
                if value is not None:
                    kwargs["upsample_type"] = tuple(reversed(value))
                continue
            if key in fields:
                if value is not None or key.endswith("compression_ratio"):
                    kwargs[key] = tuple(value) if isinstance(value, list) else value
                continue
            unknown.append(key)
        if unknown:
            warnings.warn(f"LTX-2 VAE config: ignoring unknown key(s) {sorted(unknown)}", stacklevel=2)
        return cls(**kwargs)

    def to_diffusers_config(self) -> dict:
        """The equivalent diffusers ``AutoencoderKLLTX2Video`` keyword arguments (lists as tuples); the compression
        ratios are the block layout's (diffusers would otherwise infer them from the count of scaling blocks)."""
        return {**dataclasses.asdict(self), "spatial_compression_ratio": self.spatial_compression,
                "temporal_compression_ratio": self.temporal_compression}


# ----------------------------------------------------------------------------------------------------------
# Streaming state
# ----------------------------------------------------------------------------------------------------------


class _StreamState:
    """Temporal state of one streaming decoder pass: for every causal conv, the last ``k_t - 1`` frames of its
    (padded) input, keyed by the conv's module name; ``started`` is False until the first latent frame passed.
    The tails are allocated on the first call and updated in place afterwards (fixed size and address)."""

    def __init__(self, triton_norm: bool = False) -> None:
        self.started = False
        self.triton_norm = triton_norm  # the Triton glue around the convs where it can run (see the decoder's switch)
        self.tails: dict[str, torch.Tensor] = {}

    def pad(
        self, key: str, x: torch.Tensor, n: int, border: tuple[int, int] = (0, 0), mode: str = "zeros", pre=None
    ) -> torch.Tensor:
        """Left-pad ``x`` (B,C,T,H,W) with ``n`` frames of history (or copies of its first frame at the start)
        and remember the last ``n`` frames for the next call; ``border``/``mode``/``pre`` as in
        :func:`_padded_frames`. The result keeps ``x``'s memory format."""
        tail = self.tails.get(key)
        if self.started:
            return _padded_frames(x, n, 0, front=tail, tail=tail, border=border, mode=mode, pre=pre)
        want = (*x.shape[:2], n, *x.shape[3:])
        if tail is None or tail.shape != want or tail.dtype != x.dtype or tail.device != x.device:
            tail = self.tails[key] = torch.empty(want, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
        return _padded_frames(x, n, 0, tail=tail, border=border, mode=mode, pre=pre)


# ----------------------------------------------------------------------------------------------------------
# Building blocks (diffusers layout and parameter names)
# ----------------------------------------------------------------------------------------------------------


def _is_channels_last(x: torch.Tensor) -> bool:
    """True for a 5-D tensor whose channels are innermost (``torch.channels_last_3d`` storage, possibly a slice along
    time of one, e.g. an upsampler's output without its dropped first frames when B > 1)."""
    return x.dim() == 5 and x.shape[1] > 1 and x.stride(1) == 1


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if _is_channels_last(x) else torch.contiguous_format


def _cat_time(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts, dim=2)`` in the first part's memory format (``torch.cat`` may fall back to NCDHW)."""
    b, c, _, h, w = parts[0].shape
    out = torch.empty(
        (b, c, sum(p.shape[2] for p in parts), h, w), dtype=parts[0].dtype, device=parts[0].device,
        memory_format=_memory_format(parts[0]),
    )
    start = 0
    for p in parts:
        out[:, :, start : start + p.shape[2]].copy_(p)
        start += p.shape[2]
    return out


def _padded_frames(
    x: torch.Tensor, n_front: int, n_back: int, front: torch.Tensor | None = None, tail: torch.Tensor | None = None,
    border: tuple[int, int] = (0, 0), mode: str = "zeros", pre=None,
) -> torch.Tensor:
    """One new buffer (B, C, n_front+T+n_back, H+2ph, W+2pw) in ``x``'s memory format holding ``pre(x)`` (or ``x``)
    with ``n_front`` frames before it (``front``, the carried history, or copies of its first frame), ``n_back``
    copies of its last frame after it, and ``border`` = (ph, pw) rows/cols of spatial padding filled in ``mode``
    (reflect / replicate / circular, as ``F.pad``). ``pre(x, out)`` writes the transformed ``x`` into the buffer
    view ``out`` (a fused producer: no separate copy). With ``tail`` (n frames), the buffer's last n unpadded frames
    are copied into it afterwards, in place (``tail`` may be ``front``)."""
    b, c, t, h, w = x.shape
    ph, pw = border
    frames = n_front + t + n_back
    out = torch.empty(
        (b, c, frames, h + 2 * ph, w + 2 * pw), dtype=x.dtype, device=x.device, memory_format=_memory_format(x)
    )
    inner = out[:, :, :, ph : ph + h, pw : pw + w]
    main = inner[:, :, n_front : n_front + t]
    if pre is None:
        main.copy_(x)
    else:
        pre(x, main)
    if n_front:
        src = front if front is not None else main[:, :, :1].expand(-1, -1, n_front, -1, -1)
        inner[:, :, :n_front].copy_(src)
    if n_back:
        inner[:, :, n_front + t :].copy_(main[:, :, -1:].expand(-1, -1, n_back, -1, -1))
    if tail is not None:
        tail.copy_(inner[:, :, frames - tail.shape[2] :])
    # Separable border fill: columns of the inner rows first, then whole rows (corners as F.pad gives them).
    for dim, p, size in ((4, pw, w), (3, ph, h)):
        full = out.narrow(3, ph, h) if dim == 4 else out
        for i in range(1, p + 1):
            if mode == "reflect":
                lo, hi = p + i, p + size - 1 - i
            elif mode == "replicate":
                lo, hi = p, p + size - 1
            else:  # circular
                lo, hi = p + size - i, p + i - 1
            full.select(dim, p - i).copy_(full.select(dim, lo))
            full.select(dim, p + size - 1 + i).copy_(full.select(dim, hi))
    return out


def _rms_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-location RMS norm over channels (dim 1), no weights (diffusers ``PerChannelRMSNorm``). A channels-last
    input goes through the fused ``F.rms_norm`` on its (B,T,H,W,C) view (one pass; the output stays channels-last)."""
    if _is_channels_last(x):
        return F.rms_norm(x.permute(0, 2, 3, 4, 1), (x.shape[1],), eps=eps).permute(0, 4, 1, 2, 3)
    return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + eps)


def _dense(x: torch.Tensor) -> bool:
    """A channels-last 5-D tensor without gaps (its storage is the (B,T,H,W,C) array)."""
    return _is_channels_last(x) and x.is_contiguous(memory_format=torch.channels_last_3d)


def _per_channel(bias: torch.Tensor) -> torch.Tensor:
    return bias.view(1, -1, 1, 1, 1)


def _norm_silu_into(
    x: torch.Tensor, out: torch.Tensor, use_triton: bool = False, bias: torch.Tensor | None = None
) -> None:
    """``out <- SiLU(RMS norm of (x + bias) over channels)`` (x, out (B,C,T,H,W), bias (C,) or None; ``out`` may be
    a strided view, e.g. the inside of a padded conv buffer). The Triton kernel (one read of x, one write, fp32 math,
    one rounding) runs for a channels-last x and an ``out`` with unit channel stride when ``use_triton`` and Triton
    can run on them. ``bias``: the producing conv's bias, left out of that conv so that it costs no pass of its own."""
    if use_triton and _dense(x) and out.stride(1) == 1 and x.shape[1] <= 4096 and runnable_on(x, out):
        _norm_silu_triton(x, out, bias)
    else:
        torch.ops.aten.silu.out(_rms_norm(x if bias is None else x + _per_channel(bias)), out=out)


def _add_bias_residual_(h: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, use_triton: bool = False) -> torch.Tensor:
    """``h += bias + x`` in place (h, x (B,C,T,H,W), bias (C,): a conv output whose bias was left out, and the
    residual) and returns h: one pass (Triton, fp32 sum, one rounding) for dense channels-last h and x of one shape
    when ``use_triton``, else two adds."""
    if use_triton and _dense(h) and _dense(x) and h.shape == x.shape and runnable_on(h, x, bias):
        n = h.numel()
        _bias_residual_kernel[(triton.cdiv(n, _RESIDUAL_BLOCK),)](
            h, x, bias, n, h.shape[1], BLOCK=_RESIDUAL_BLOCK, num_warps=8
        )
        return h
    return h.add_(x).add_(_per_channel(bias))


_RESIDUAL_BLOCK = 4096

if HAS_TRITON:

    @triton.jit
    def _norm_silu_kernel(
        x_ptr, b_ptr, out_ptr, P, C, T, H, W, s_b, s_t, s_h, s_w, eps,
        HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Rows of a channels-last x (P positions x C channels, row stride C) plus the bias (C,) -> SiLU(y * rsqrt(
        mean(y^2) + eps)) with y = x + bias at out[b, :, t, h, w] (element strides s_* for b, t, h, w; channel stride
        1)."""
        rows = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows < P)[:, None] & (cols < C)[None, :]
        x = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = tl.where(mask, x + tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :], 0.0)
        y = x * tl.rsqrt(tl.sum(x * x, axis=1) / C + eps)[:, None]
        y = y * tl.sigmoid(y)
        w = rows % W
        q = rows // W
        h = q % H
        q = q // H
        dst = (q // T) * s_b + (q % T) * s_t + h * s_h + w * s_w
        tl.store(out_ptr + dst[:, None] + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bias_residual_kernel(h_ptr, x_ptr, b_ptr, n, C, BLOCK: tl.constexpr):
        """h[i] += x[i] + bias[i % C] over n elements of dense channels-last h and x (fp32 sum)."""
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        h = tl.load(h_ptr + i, mask=m).to(tl.float32)
        x = tl.load(x_ptr + i, mask=m).to(tl.float32)
        b = tl.load(b_ptr + i % C, mask=m).to(tl.float32)
        tl.store(h_ptr + i, (h + x + b).to(h_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _shuffle_kernel(
        y_ptr, b_ptr, r_ptr, out_ptr, P, T, H, W, C, CR, drop, so_b, so_t, so_h, so_w,
        ST: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, SI: tl.constexpr, SJ: tl.constexpr, SK: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Depth-to-space of dense channels-last y (P = B*T*H*W pixels x C*S channels, S = ST*SH*SW) plus its bias,
        plus the residual r (P x CR*S, output channel c reads r's channel group c % CR; CR a multiple of BLOCK_C):
        out[b, c, t*ST + i - drop, h*SH + j, w*SW + k] = y[p, c*S + s] + bias[c*S + s] + r[p, (c % CR)*S + s] with
        s = i*SI + j*SJ + k*SK; output frames before 0 (the causal first frame's dropped ones) are not written. One
        program: BLOCK_P pixels x BLOCK_C output channels with all their sub-pixels, read as contiguous row pieces and
        turned (pixel, channel, sub-pixel) -> (pixel, sub-pixel, channel) in registers, so that loads and stores are
        both contiguous."""
        S: tl.constexpr = ST * SH * SW
        p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
        c0 = tl.program_id(1) * BLOCK_C
        e = tl.arange(0, BLOCK_C * S)  # (channel, sub-pixel) within the program's row piece
        p_ok = p < P
        load_ok = p_ok[:, None] & (e < (C - c0) * S)[None, :]
        v = tl.load(y_ptr + p[:, None] * (C * S) + c0 * S + e[None, :], mask=load_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            v += tl.load(b_ptr + c0 * S + e, mask=e < (C - c0) * S, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            r_row = r_ptr + p[:, None] * (CR * S) + (c0 % CR) * S + e[None, :]
            v += tl.load(r_row, mask=load_ok, other=0.0).to(tl.float32)
        v = tl.permute(tl.reshape(v, (BLOCK_P, BLOCK_C, S)), (0, 2, 1))  # (pixel, sub-pixel, channel)
        sub = tl.arange(0, S)
        if ST > 1:
            i = (sub // SI) % ST
        else:
            i = sub * 0
        j = (sub // SJ) % SH
        k = (sub // SK) % SW
        w = p % W
        q = p // W
        h = q % H
        q = q // H
        t = q % T
        b = q // T
        t_out = t[:, None] * ST + i[None, :] - drop  # (pixel, sub-pixel)
        dst = b[:, None] * so_b + t_out * so_t
        dst += (h[:, None] * SH + j[None, :]) * so_h + (w[:, None] * SW + k[None, :]) * so_w
        c = c0 + tl.arange(0, BLOCK_C)
        ok = (p_ok[:, None] & (t_out >= 0))[:, :, None] & (c < C)[None, None, :]
        tl.store(out_ptr + dst[:, :, None] + c[None, None, :], v.to(out_ptr.dtype.element_ty), mask=ok)


def _shuffle_runs(y: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether :func:`_shuffle_triton` takes these tensors: dense channels-last y (and residual), a Triton device."""
    present = [o for o in others if o is not None]
    return _dense(y) and all(o.dim() != 5 or _dense(o) for o in present) and runnable_on(y, *present)


def _shuffle_triton(
    y: torch.Tensor, stride: tuple[int, int, int], sub: tuple[int, int, int], bias: torch.Tensor | None,
    residual: torch.Tensor | None, drop: int,
) -> torch.Tensor:
    """``y`` (B, C*S, T, H, W) -> (B, C, T*st - drop, H*sh, W*sw) channels-last (see ``_shuffle_kernel``; ``sub`` =
    (SI, SJ, SK) places sub-pixel (i, j, k) at channel offset i*SI + j*SJ + k*SK)."""
    st, sh, sw = stride
    b, cy, t, h, w = y.shape
    c = cy // (st * sh * sw)
    cr = c if residual is None else residual.shape[1] // (st * sh * sw)
    out = torch.empty((b, c, t * st - drop, h * sh, w * sw), dtype=y.dtype, device=y.device,
                      memory_format=torch.channels_last_3d)
    block_c = min(32, triton.next_power_of_2(c))
    if residual is not None:
        block_c = min(block_c, cr & -cr)  # a power of two dividing CR
    block_p = max(1, 4096 // (block_c * st * sh * sw))
    P = b * t * h * w
    _shuffle_kernel[(triton.cdiv(P, block_p), triton.cdiv(c, block_c))](
        y, y if bias is None else bias, y if residual is None else residual, out, P, t, h, w, c, cr, drop,
        out.stride(0), out.stride(2), out.stride(3), out.stride(4),
        ST=st, SH=sh, SW=sw, SI=sub[0], SJ=sub[1], SK=sub[2], HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
    )
    return out


def _norm_silu_triton(x: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 1e-8) -> None:
    b, c, t, h, w = x.shape
    rows = b * t * h * w
    block_c = triton.next_power_of_2(c)
    block_p = max(1, min(64, 4096 // block_c))
    _norm_silu_kernel[(triton.cdiv(rows, block_p),)](
        x, x if bias is None else bias, out, rows, c, t, h, w, out.stride(0), out.stride(2), out.stride(3),
        out.stride(4), eps, HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
    )


class LTX2VideoCausalConv3d(nn.Module):
    """3-D conv whose temporal padding is causal (``k_t - 1`` copies of the first frame, or the carried tail
    when streaming) or symmetric (``causal=False``). Non-zero spatial padding (reflect, ...) is written into the
    same buffer as the temporal padding (one copy, in the input's memory format); zeros padding is the conv's."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int, int] = 1,
        spatial_padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.time_pad = k[0] - 1
        self.stream_key = ""
        self.conv = nn.Conv3d(
            in_channels, out_channels, k, stride=stride, padding=(0, k[1] // 2, k[2] // 2),
            padding_mode=spatial_padding_mode,
        )

    def forward(
        self, x: torch.Tensor, causal: bool = True, state: _StreamState | None = None, pre=None, add_bias: bool = True
    ) -> torch.Tensor:
        """``pre(x, out)``: an elementwise producer (e.g. RMS norm + SiLU) applied to ``x`` while it is written into
        the padded buffer; ``add_bias=False``: the conv's bias is left out (the caller adds it in its next pass)."""
        n = self.time_pad
        conv = self.conv
        mode = conv.padding_mode
        border = (0, 0) if mode == "zeros" else tuple(conv.padding[1:])
        if n and state is not None:
            x = state.pad(self.stream_key, x, n, border, mode, pre)
        elif n or border != (0, 0) or pre is not None:
            front, back = (n, 0) if causal else (n // 2, n // 2)
            x = _padded_frames(x, front, back, border=border, mode=mode, pre=pre)
        padding = conv.padding if mode == "zeros" else 0
        # cuDNN answers a channels-last input in channels-last (no copy here); the CPU kernels answer NCDHW.
        bias = conv.bias if add_bias else None
        return F.conv3d(x, conv.weight, bias, conv.stride, padding).contiguous(memory_format=_memory_format(x))


class _TimestepMLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(256, dim)
        self.linear_2 = nn.Linear(dim, dim)


class LTX2TimestepEmbedder(nn.Module):
    """Sinusoidal(256, cos first) -> Linear -> SiLU -> Linear; the layout of diffusers
    ``PixArtAlphaCombinedTimestepSizeEmbeddings(dim, 0)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = _TimestepMLP(dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t (N,) -> (N, dim)."""
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(dtype)
        mlp = self.timestep_embedder
        return mlp.linear_2(F.silu(mlp.linear_1(emb)))


class LTX2VideoResnetBlock3d(nn.Module):
    """RMS norm -> (timestep scale/shift) -> SiLU -> causal conv, twice (optional spatial noise after each conv),
    plus a LayerNorm + 1x1x1 conv shortcut when the channel count changes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        eps: float = 1e-6,
        inject_noise: bool = False,
        timestep_conditioning: bool = False,
        spatial_padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.conv1 = LTX2VideoCausalConv3d(in_channels, out_channels, 3, spatial_padding_mode=spatial_padding_mode)
        self.conv2 = LTX2VideoCausalConv3d(out_channels, out_channels, 3, spatial_padding_mode=spatial_padding_mode)
        self.norm3 = self.conv_shortcut = None
        if in_channels != out_channels:
            self.norm3 = nn.LayerNorm(in_channels, eps=eps, elementwise_affine=True, bias=True)
            self.conv_shortcut = nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=1)
        self.per_channel_scale1 = self.per_channel_scale2 = None
        if inject_noise:
            self.per_channel_scale1 = nn.Parameter(torch.zeros(in_channels, 1, 1))
            self.per_channel_scale2 = nn.Parameter(torch.zeros(in_channels, 1, 1))
        self.scale_shift_table = None
        if timestep_conditioning:
            self.scale_shift_table = nn.Parameter(torch.randn(4, in_channels) / in_channels**0.5)

    @staticmethod
    def _noise(h: torch.Tensor, scale: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(h.shape[-2:], generator=generator, device=h.device, dtype=h.dtype)
        return h + (noise[None] * scale)[None, :, None]

    def forward(
        self,
        x: torch.Tensor,
        temb: torch.Tensor | None = None,
        causal: bool = True,
        state: _StreamState | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        # Without timestep modulation, norm + SiLU write straight into each conv's padded input buffer. With the
        # Triton glue (streaming, no noise), each conv's bias joins the next pass over its output instead of costing
        # one of its own (cuDNN adds a conv's bias as a separate kernel): conv1's in conv2's norm, conv2's in the
        # residual add.
        fold = (
            state is not None and state.triton_norm and self.per_channel_scale1 is None
            and self.per_channel_scale2 is None
        )
        if self.scale_shift_table is None:
            pre = functools.partial(_norm_silu_into, use_triton=state is not None and state.triton_norm)
            h = self.conv1(x, causal, state, pre, add_bias=not fold)
            if self.per_channel_scale1 is not None:
                h = self._noise(h, self.per_channel_scale1, generator)
            if fold:
                pre = functools.partial(pre, bias=self.conv1.conv.bias)
            h = self.conv2(h, causal, state, pre, add_bias=not fold)
        else:
            fold = False
            mod = temb.unflatten(1, (4, -1)) + self.scale_shift_table[None, ..., None, None, None]
            shift1, scale1, shift2, scale2 = mod.unbind(dim=1)
            h = F.silu(_rms_norm(x) * (1 + scale1) + shift1, inplace=True)
            h = self.conv1(h, causal, state)
            if self.per_channel_scale1 is not None:
                h = self._noise(h, self.per_channel_scale1, generator)
            h = F.silu(_rms_norm(h) * (1 + scale2) + shift2, inplace=True)
            h = self.conv2(h, causal, state)
        if self.per_channel_scale2 is not None:
            h = self._noise(h, self.per_channel_scale2, generator)
        if self.norm3 is not None:
            x = self.norm3(x.movedim(1, -1)).movedim(-1, 1)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return _add_bias_residual_(h, self.conv2.conv.bias, x, use_triton=True) if fold else h.add_(x)


def _space_to_depth(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """(B,C,T,H,W) -> (B, C*st*sh*sw, T/st, H/sh, W/sw), channel order (c, st, sh, sw)."""
    st, sh, sw = stride
    x = x.unflatten(4, (-1, sw)).unflatten(3, (-1, sh)).unflatten(2, (-1, st))
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(1, 4)


def _depth_to_space(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """(B, C*st*sh*sw, T, H, W) -> (B, C, T*st, H*sh, W*sw), channel order (c, st, sh, sw); one copy, the output in
    ``x``'s memory format."""
    st, sh, sw = stride
    b, c, t, h, w = x.shape
    out = torch.empty(
        (b, c // (st * sh * sw), t * st, h * sh, w * sw), dtype=x.dtype, device=x.device,
        memory_format=_memory_format(x),
    )
    src = x.unflatten(1, (-1, st, sh, sw)).permute(0, 1, 5, 2, 6, 3, 7, 4)  # (b, c, t, st, h, sh, w, sw)
    out.unflatten(4, (w, sw)).unflatten(3, (h, sh)).unflatten(2, (t, st)).copy_(src)
    return out


class LTX2VideoDownsampler3d(nn.Module):
    """Space/time-to-depth downsampler: causal conv then pixel-unshuffle, plus the unshuffled input averaged
    over channel groups; ``stride_t - 1`` copies of the first frame are prepended (causal first frame)."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int], spatial_padding_mode: str):
        super().__init__()
        self.stride = stride
        self.group_size = in_channels * math.prod(stride) // out_channels
        self.conv = LTX2VideoCausalConv3d(
            in_channels, out_channels // math.prod(stride), 3, spatial_padding_mode=spatial_padding_mode
        )

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        x = torch.cat([x[:, :, : self.stride[0] - 1], x], dim=2)
        residual = _space_to_depth(x, self.stride).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return _space_to_depth(self.conv(x, causal), self.stride) + residual


class LTX2VideoUpsampler3d(nn.Module):
    """Depth-to-space/time upsampler: causal conv then pixel-shuffle (optionally plus the shuffled input
    repeated over channels); the first ``stride_t - 1`` output frames of a clip are dropped (causal first
    frame) - when streaming only on the first call."""

    def __init__(
        self, in_channels: int, stride: tuple[int, int, int], residual: bool, upscale_factor: int,
        spatial_padding_mode: str,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.residual = residual
        self.upscale_factor = upscale_factor
        self.conv = LTX2VideoCausalConv3d(
            in_channels, in_channels * math.prod(stride) // upscale_factor, 3, spatial_padding_mode=spatial_padding_mode
        )

    def forward(self, x: torch.Tensor, causal: bool = True, state: _StreamState | None = None) -> torch.Tensor:
        drop = 0 if state is not None and state.started else self.stride[0] - 1
        if state is not None and state.triton_norm:
            y = self.conv(x, causal, state, add_bias=False)
            if _shuffle_runs(y, x if self.residual else None, self.conv.conv.bias):
                # one pass: the conv's bias, the shuffle and the residual (4 passes and a bias kernel otherwise)
                sh, sw = self.stride[1:]
                return _shuffle_triton(
                    y, self.stride, (sh * sw, sw, 1), self.conv.conv.bias, x if self.residual else None, drop
                )
            y = y.add_(_per_channel(self.conv.conv.bias))
        else:
            y = self.conv(x, causal, state)
        h = _depth_to_space(y, self.stride)[:, :, drop:]
        if self.residual:
            # The shuffled input repeated over channel groups, added group by group (no repeated copy).
            repeats = math.prod(self.stride) // self.upscale_factor
            h.unflatten(1, (repeats, -1)).add_(_depth_to_space(x, self.stride)[:, :, drop:].unsqueeze(1))
        return h


class LTX2VideoDownBlock3D(nn.Module):
    """Encoder block: ``num_layers`` resnets at ``in_channels`` then an optional downsampler to ``out_channels``."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, eps: float, spatio_temporal_scale: bool,
        downsample_type: str, spatial_padding_mode: str,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            LTX2VideoResnetBlock3d(in_channels, in_channels, eps, spatial_padding_mode=spatial_padding_mode)
            for _ in range(num_layers)
        )
        self.downsamplers = None
        if spatio_temporal_scale:
            stride = _DOWN_STRIDES[downsample_type]
            if downsample_type == "conv":
                down = LTX2VideoCausalConv3d(in_channels, in_channels, 3, stride, spatial_padding_mode)
            else:
                down = LTX2VideoDownsampler3d(in_channels, out_channels, stride, spatial_padding_mode)
            self.downsamplers = nn.ModuleList([down])

    def forward(self, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, causal=causal)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                x = down(x, causal)
        return x


class LTX2VideoMidBlock3d(nn.Module):
    """``num_layers`` resnets at constant width, with an optional timestep embedder feeding their scale/shift."""

    def __init__(
        self, in_channels: int, num_layers: int, eps: float, inject_noise: bool = False,
        timestep_conditioning: bool = False, spatial_padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.time_embedder = LTX2TimestepEmbedder(in_channels * 4) if timestep_conditioning else None
        self.resnets = nn.ModuleList(
            LTX2VideoResnetBlock3d(
                in_channels, in_channels, eps, inject_noise, timestep_conditioning, spatial_padding_mode
            )
            for _ in range(num_layers)
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None, causal: bool = True,
        state: _StreamState | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if self.time_embedder is not None:
            temb = self.time_embedder(temb.flatten(), x.dtype).view(x.shape[0], -1, 1, 1, 1)
        for resnet in self.resnets:
            x = resnet(x, temb, causal, state, generator)
        return x


class LTX2VideoUpBlock3d(nn.Module):
    """Decoder block: optional channel-changing resnet (``conv_in``), optional upsampler, then resnets."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, eps: float, spatio_temporal_scale: bool,
        upsample_type: str, inject_noise: bool, timestep_conditioning: bool, upsample_residual: bool,
        upscale_factor: int, spatial_padding_mode: str,
    ) -> None:
        super().__init__()
        self.time_embedder = LTX2TimestepEmbedder(in_channels * 4) if timestep_conditioning else None
        self.conv_in = None
        if in_channels != out_channels:
            self.conv_in = LTX2VideoResnetBlock3d(
                in_channels, out_channels, eps, inject_noise, timestep_conditioning, spatial_padding_mode
            )
        self.upsamplers = None
        if spatio_temporal_scale:
            self.upsamplers = nn.ModuleList([
                LTX2VideoUpsampler3d(
                    out_channels * upscale_factor, _UP_STRIDES[upsample_type], upsample_residual, upscale_factor,
                    spatial_padding_mode,
                )
            ])
        self.resnets = nn.ModuleList(
            LTX2VideoResnetBlock3d(
                out_channels, out_channels, eps, inject_noise, timestep_conditioning, spatial_padding_mode
            )
            for _ in range(num_layers)
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None, causal: bool = True,
        state: _StreamState | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if self.conv_in is not None:
            # diffusers feeds the raw (not yet embedded) timestep here.
            x = self.conv_in(x, temb, causal, state, generator)
        if self.time_embedder is not None:
            temb = self.time_embedder(temb.flatten(), x.dtype).view(x.shape[0], -1, 1, 1, 1)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                x = up(x, causal, state)
        for resnet in self.resnets:
            x = resnet(x, temb, causal, state, generator)
        return x


class LTX2VideoEncoder3d(nn.Module):
    """Patchify (4x4) -> conv_in -> down blocks -> mid block -> RMS norm, SiLU, conv_out (latent + 1 channels:
    the posterior means, then one shared log-variance channel)."""

    def __init__(self, cfg: LTX2VAEConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        pad = cfg.encoder_spatial_padding_mode
        width = cfg.latent_channels
        self.conv_in = LTX2VideoCausalConv3d(cfg.in_channels * cfg.patch_size**2, width, 3, spatial_padding_mode=pad)
        self.down_blocks = nn.ModuleList()
        for i, out in enumerate(cfg.block_out_channels):
            self.down_blocks.append(
                LTX2VideoDownBlock3D(
                    width, out, cfg.layers_per_block[i], cfg.resnet_norm_eps, cfg.spatio_temporal_scaling[i],
                    cfg.downsample_type[i], pad,
                )
            )
            width = out
        self.mid_block = LTX2VideoMidBlock3d(
            width, cfg.layers_per_block[-1], cfg.resnet_norm_eps, spatial_padding_mode=pad
        )
        self.conv_out = LTX2VideoCausalConv3d(width, cfg.latent_channels + 1, 3, spatial_padding_mode=pad)

    def forward(self, video: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """video (B,C,F,H,W) -> conv_out output (B, latent+1, T, H/32, W/32)."""
        p = self.patch_size
        b, c, f, h, w = video.shape
        x = video.reshape(b, c, f, 1, h // p, p, w // p, p).permute(0, 1, 3, 7, 5, 2, 4, 6).flatten(1, 4)
        x = self.conv_in(x, causal)
        for block in self.down_blocks:
            x = block(x, causal)
        x = self.mid_block(x, causal=causal)
        x = F.silu(_rms_norm(x), inplace=True)
        return self.conv_out(x, causal)


class LTX2VideoDecoder3d(nn.Module):
    """conv_in -> mid block -> up blocks (each x2 in t/h/w) -> RMS norm, (timestep scale/shift), SiLU, conv_out
    -> unpatchify (4x4) to pixels."""

    def __init__(self, cfg: LTX2VAEConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        pad = cfg.decoder_spatial_padding_mode
        eps = cfg.resnet_norm_eps
        widths = tuple(reversed(cfg.decoder_block_out_channels))
        layers = tuple(reversed(cfg.decoder_layers_per_block))
        noise = tuple(reversed(cfg.decoder_inject_noise))
        scaling = tuple(reversed(cfg.decoder_spatio_temporal_scaling))
        residual = tuple(reversed(cfg.upsample_residual))
        factor = tuple(reversed(cfg.upsample_factor))
        ts = cfg.timestep_conditioning
        width = widths[0]
        self.conv_in = LTX2VideoCausalConv3d(cfg.latent_channels, width, 3, spatial_padding_mode=pad)
        self.mid_block = LTX2VideoMidBlock3d(width, layers[0], eps, noise[0], ts, pad)
        self.up_blocks = nn.ModuleList()
        for i, block_width in enumerate(widths):
            in_width, width = width // factor[i], block_width // factor[i]
            self.up_blocks.append(
                LTX2VideoUpBlock3d(
                    in_width, width, layers[i + 1], eps, scaling[i], cfg.upsample_type[i], noise[i + 1], ts,
                    residual[i], factor[i], pad,
                )
            )
        self.conv_out = LTX2VideoCausalConv3d(width, cfg.out_channels * cfg.patch_size**2, 3, spatial_padding_mode=pad)
        self.timestep_scale_multiplier = self.time_embedder = self.scale_shift_table = None
        if ts:
            self.timestep_scale_multiplier = nn.Parameter(torch.tensor(1000.0, dtype=torch.float32))
            self.time_embedder = LTX2TimestepEmbedder(width * 2)
            self.scale_shift_table = nn.Parameter(torch.randn(2, width) / width**0.5)
        for name, module in self.named_modules():
            if isinstance(module, LTX2VideoCausalConv3d):
                module.stream_key = name

    def forward(
        self, z: torch.Tensor, temb: torch.Tensor | None = None, causal: bool = True,
        state: _StreamState | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """z (B,C,T,h,w) raw latents -> pixels (B,3,1+8(T-1),32h,32w); streaming (``state`` given, after the
        first call): (B,3,8T,32h,32w)."""
        x = self.conv_in(z, causal, state)
        if self.timestep_scale_multiplier is not None:
            temb = temb * self.timestep_scale_multiplier
        x = self.mid_block(x, temb, causal, state, generator)
        for block in self.up_blocks:
            x = block(x, temb, causal, state, generator)
        p = self.patch_size
        if self.time_embedder is None:
            fold = state is not None and state.triton_norm
            pre = functools.partial(_norm_silu_into, use_triton=fold)
            x = self.conv_out(x, causal, state, pre, add_bias=not fold)
            if fold and _shuffle_runs(x, self.conv_out.conv.bias):  # unpatchify + the conv's bias in one pass
                return _shuffle_triton(x, (1, p, p), (0, 1, p), self.conv_out.conv.bias, None, 0)
            if fold:
                x = x.add_(_per_channel(self.conv_out.conv.bias))
        else:
            mod = self.time_embedder(temb.flatten(), x.dtype).view(x.shape[0], 2, -1, 1, 1, 1)
            shift, scale = (mod + self.scale_shift_table[None, ..., None, None, None]).unbind(dim=1)
            x = F.silu(_rms_norm(x) * (1 + scale) + shift, inplace=True)
            x = self.conv_out(x, causal, state)
        # Unpatchify: channel (c, p_w, p_h) -> pixel (h * p + p_h, w * p + p_w); one copy in x's memory format.
        b, _, t, h, w = x.shape
        out = torch.empty((b, x.shape[1] // p**2, t, h * p, w * p), dtype=x.dtype, device=x.device,
                          memory_format=_memory_format(x))
        out.unflatten(4, (w, p)).unflatten(3, (h, p)).copy_(x.unflatten(1, (-1, p, p)).permute(0, 1, 4, 5, 3, 6, 2))
        return out


# ----------------------------------------------------------------------------------------------------------
# The autoencoder
# ----------------------------------------------------------------------------------------------------------


class LTX2VAE(nn.Module):
    """LTX-2 video VAE; ``state_dict()`` keys equal diffusers ``AutoencoderKLLTX2Video``'s.

    >>> vae = LTX2VAE(LTX2VAEConfig.preset("tiny"))
    >>> z = vae.encode(video)        # (B,3,1+8k,H,W) in [-1,1] -> normalised latents (B,C,1+k,H/32,W/32)
    >>> x = vae.decode(z)            # -> (B,3,1+8k,H,W)
    >>> dec = vae.streaming_decoder(); frames = dec.decode(z[:, :, :1])   # 1 frame, then 8 per latent frame
    """

    def __init__(self, config: LTX2VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = LTX2VideoEncoder3d(config)
        self.decoder = LTX2VideoDecoder3d(config)
        self.register_buffer("latents_mean", torch.zeros(config.latent_channels), persistent=True)
        self.register_buffer("latents_std", torch.ones(config.latent_channels), persistent=True)
        self.tile_size: int | None = None
        self.tile_stride: int | None = None
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.conv_in.conv.weight.device

    # -- latent normalisation ------------------------------------------------------------------------------

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        return self.latents_mean.view(shape).to(like), self.latents_std.view(shape).to(like)

    def normalize(self, z_raw: torch.Tensor) -> torch.Tensor:
        """Raw posterior latents -> the diffusion model's latents: ``(z - mean) * scaling_factor / std``."""
        mean, std = self._stats(z_raw)
        return (z_raw - mean) * self.config.scaling_factor / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: ``z / scaling_factor * std + mean``."""
        mean, std = self._stats(z)
        return z / self.config.scaling_factor * std + mean

    # -- encode / decode ------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor, causal: bool | None = None) -> torch.Tensor:
        """video (B,3,F,H,W) in [-1,1], F = 1 + 8k, H and W multiples of 32 -> normalised latents
        (B,C,1+k,H/32,W/32): the posterior mode, normalised. ``causal`` defaults to the config's
        ``encoder_causal``. Not tiled."""
        self._check_video(video)
        causal = self.config.encoder_causal if causal is None else causal
        moments = self.encoder(video.to(self.dtype), causal)
        return self.normalize(moments[:, : self.config.latent_channels])

    @torch.no_grad()
    def decode(
        self,
        z: torch.Tensor,
        temb: torch.Tensor | float | None = None,
        causal: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Normalised latents (B,C,T,h,w) -> pixels (B,3,1+8(T-1),32h,32w), nominally in [-1,1] (not clamped).

        ``causal`` defaults to the config's ``decoder_causal``. ``temb``: the decode timestep (B,) or a float,
        required exactly when the config has ``timestep_conditioning`` (SANA-WM's VAEs do not).
        ``generator`` seeds the decoder noise of configs with ``decoder_inject_noise``. Uses spatial tiles when
        :meth:`enable_tiling` was called and the latents are larger than one tile."""
        self._check_latents(z)
        temb = self._check_temb(temb, z.shape[0])
        causal = self.config.decoder_causal if causal is None else causal
        z = self.denormalize(z.to(self.dtype))
        return self._maybe_tiled(z, lambda tile, key: self.decoder(tile, temb, causal, None, generator))

    def streaming_decoder(self, **options) -> LTX2StreamingDecoder:
        """A stateful causal decoder that takes latent frames in order (see :class:`LTX2StreamingDecoder`);
        it keeps the tiling settings active now. ``options`` override :data:`STREAMING_DEFAULTS`."""
        return LTX2StreamingDecoder(self, **options)

    # -- tiling ---------------------------------------------------------------------------------------------

    def enable_tiling(self, tile: int = 512, stride: int = 448) -> None:
        """Decode in overlapping ``tile`` x ``tile`` pixel tiles placed every ``stride`` pixels, blended
        linearly over the ``tile - stride`` overlap (diffusers' ``tiled_decode``); both multiples of the
        spatial compression (32). Lowers peak decoder memory; off by default."""
        r = self.config.spatial_compression
        if not (isinstance(tile, int) and isinstance(stride, int)) or tile <= 0 or stride <= 0:
            raise ValueError(
                f"enable_tiling: tile and stride must be positive ints, got tile={tile!r} stride={stride!r}"
            )
        if tile % r or stride % r or stride > tile:
            raise ValueError(
                f"enable_tiling: tile ({tile}) and stride ({stride}) must be multiples of {r} with stride <= tile"
            )
        self.tile_size, self.tile_stride = tile, stride

    def disable_tiling(self) -> None:
        self.tile_size = self.tile_stride = None

    def _maybe_tiled(
        self,
        z: torch.Tensor,
        decode_tile: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
        tile_size: int | None = None,
        tile_stride: int | None = None,
    ) -> torch.Tensor:
        """Run ``decode_tile(z_tile, (row, col))`` on the whole latent or on overlapping tiles, blended."""
        tile_size = self.tile_size if tile_size is None else tile_size
        tile_stride = self.tile_stride if tile_stride is None else tile_stride
        h, w = z.shape[-2:]
        r = self.config.spatial_compression
        if tile_size is None or (h <= tile_size // r and w <= tile_size // r):
            return decode_tile(z, (0, 0))
        tl, sl, blend = tile_size // r, tile_stride // r, tile_size - tile_stride
        rows = [
            [decode_tile(z[..., i : i + tl, j : j + tl], (a, b)) for b, j in enumerate(range(0, w, sl))]
            for a, i in enumerate(range(0, h, sl))
        ]
        out_rows = []
        for a, row in enumerate(rows):
            for b, tile in enumerate(row):
                if a > 0:
                    _blend_into(rows[a - 1][b], tile, blend, dim=3)
                if b > 0:
                    _blend_into(row[b - 1], tile, blend, dim=4)
            out_rows.append(torch.cat([t[..., :tile_stride, :tile_stride] for t in row], dim=4))
        return torch.cat(out_rows, dim=3)[..., : h * r, : w * r]

    # -- input checks ---------------------------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != cfg.in_channels:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(
                f"vae.encode: video must be a (B,{cfg.in_channels},F,H,W) tensor, got {got} "
                "(for one image use image[:, :, None])"
            )
        f, h, w = video.shape[2:]
        rt, rs = cfg.temporal_compression, cfg.spatial_compression
        if (f - 1) % rt or h % rs or w % rs:
            raise ValueError(
                f"vae.encode: video of {f} frames of {h}x{w}; need F = 1 + {rt}k frames and H, W multiples of {rs}"
            )

    def _check_latents(self, z: torch.Tensor, where: str = "vae.decode") -> None:
        c = self.config.latent_channels
        if not isinstance(z, torch.Tensor) or z.ndim != 5 or z.shape[1] != c or z.shape[2] < 1:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{where}: latents must be a (B,{c},T>=1,h,w) tensor, got {got}")

    def _check_temb(self, temb: torch.Tensor | float | None, batch: int) -> torch.Tensor | None:
        if not self.config.timestep_conditioning:
            if temb is not None:
                raise ValueError("this VAE has no timestep conditioning; do not pass temb")
            return None
        if temb is None:
            raise ValueError("this VAE config has timestep_conditioning=True; pass the decode timestep temb")
        temb = torch.as_tensor(temb, dtype=self.dtype, device=self.device)
        if temb.ndim == 0:
            temb = temb.expand(batch)
        if temb.shape != (batch,):
            raise ValueError(f"temb must be a float or a ({batch},) tensor, got shape {tuple(temb.shape)}")
        return temb


def _blend_into(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> None:
    """Linearly cross-fade the last ``extent`` rows/cols of ``a`` into the first ones of ``b`` along ``dim``
    (3 = H, 4 = W), in place on ``b``."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return
    shape = [1] * b.ndim
    shape[dim] = extent
    wgt = (torch.arange(extent, device=b.device, dtype=torch.float64) / extent).to(b.dtype).view(shape)
    head = b.narrow(dim, 0, extent)
    head.copy_(a.narrow(dim, a.shape[dim] - extent, extent) * (1 - wgt) + head * wgt)


# ----------------------------------------------------------------------------------------------------------
# Streaming decoder
# ----------------------------------------------------------------------------------------------------------


# Speed switches of :class:`LTX2StreamingDecoder` (all give the same frames; ``bench/micro_vae.py`` times them).
# Defaults from H100 runs (bf16, 3 latent frames at 22 x 40, steady chunk): per frame NCDHW 107.9 ms, one pass
# 87.1, + channels-last 70.8, + Triton norm 57.6 (50.5 since the conv biases are folded), + CUDA graph 56.8. The
# graph saves little on a whole chunk but takes the host out of a session's decode parts (one latent frame each,
# host-bound when eager): key-to-frame 177 -> 157 ms (H100, bench/bench_session.py ABBA), memory unchanged.
STREAMING_DEFAULTS: dict = {
    "frames_per_pass": None, "channels_last": True, "triton_norm": True, "cuda_graph": True, "compile": False,
    "cudnn_benchmark": False,
}


@dataclass
class _DecodeGraph:
    graph: torch.cuda.CUDAGraph
    z: torch.Tensor  # static input (B,C,n,h,w) as the caller passes it
    out: torch.Tensor  # static output
    tails: tuple  # (data_ptr, stride) of every carried tail at capture: the graph reads and writes these


class LTX2StreamingDecoder:
    """Causal decoder driven latent frame by latent frame; output equals ``vae.decode(z, causal=True)`` of all
    latents fed since the last :meth:`reset`, split at latent-frame boundaries.

    State: for every causal conv of the decoder the last 2 frames of its input (allocated on the first call,
    then overwritten in place: :meth:`nbytes` and the tails' addresses do not change), whether the clip's first
    frame has passed (the depth-to-space upsamplers drop their first output frame only then), and the number of
    latent frames decoded. With tiling enabled on the VAE, one such state per spatial tile.

    Speed switches (defaults in :data:`STREAMING_DEFAULTS`; every combination gives the same frames):

    - ``frames_per_pass``: latent frames per decoder pass (``None``: all frames of a call in one pass; 1: one
      latent frame at a time, the lowest peak memory);
    - ``channels_last``: activations in ``torch.channels_last_3d`` (cuDNN's NDHWC kernels, fused RMS norm);
      converts the VAE decoder's conv weights to that memory format in place (values and names unchanged) and
      returns pixels in that memory format (NDHWC storage: a permute to (B,N,H,W,3) is then a view);
    - ``triton_norm``: with ``channels_last`` on CUDA, every RMS norm + SiLU before a conv is one Triton kernel that
      writes into the conv's padded input buffer (one read, one write; fp32 math, one rounding), and each conv's bias
      joins the next pass over its output (that norm, a bias + residual kernel, the upsamplers' depth-to-space +
      residual and the unpatchify: one Triton kernel each) instead of cuDNN's separate bias kernel;
    - ``cuda_graph``: on CUDA, calls after the clip's first one (``temb`` None) are CUDA-graph replays per input
      shape: the first such call of a shape runs eagerly (warm-up), the second captures, later ones replay.
      The carried tails are read and written in place by the graph; the returned pixels are a fresh copy.
      On the CPU this switch changes nothing;
    - ``compile``: calls after the clip's first one run through ``torch.compile`` (``dynamic=False``);
    - ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark`` on during each call (cuDNN times its algorithms on
      a shape's first call; restored afterwards).
    """

    def __init__(self, vae: LTX2VAE, **options) -> None:
        unknown = set(options) - set(STREAMING_DEFAULTS)
        if unknown:
            raise TypeError(
                f"LTX2StreamingDecoder: unknown option(s) {sorted(unknown)}; known: {sorted(STREAMING_DEFAULTS)}"
            )
        opts = {**STREAMING_DEFAULTS, **options}
        fpp = opts["frames_per_pass"]
        if fpp is not None and (not isinstance(fpp, int) or isinstance(fpp, bool) or fpp < 1):
            raise ValueError(f"frames_per_pass must be None or a positive int, got {fpp!r}")
        if any(vae.config.decoder_inject_noise):
            raise ValueError("streaming decode needs a deterministic decoder; this config has decoder_inject_noise")
        if not vae.config.decoder_causal:
            warnings.warn(
                "this VAE was configured with decoder_causal=False (e.g. SANA-WM's bidirectional vae/); the streaming "
                "decoder is causal, so it reproduces decode(z, causal=True), not decode(z). For streaming, load the "
                "streaming release's ltx2_causal_vae/.",
                stacklevel=3,
            )
        self.vae = vae
        self.frames_per_pass: int | None = fpp
        self.channels_last = bool(opts["channels_last"])
        self.cuda_graph = bool(opts["cuda_graph"])
        self.cudnn_benchmark = bool(opts["cudnn_benchmark"])
        self.triton_norm = bool(opts["triton_norm"])
        if self.channels_last:
            vae.decoder.to(memory_format=torch.channels_last_3d)
        # the class's function, not a bound method: an attribute holding ``self._run`` would put every decoder in a
        # reference cycle, and its state (0.55 GB at 704 x 1280) would outlive the session until a garbage collection
        self._compiled = torch.compile(type(self)._run, dynamic=False) if opts["compile"] else None
        self.tile_size, self.tile_stride = vae.tile_size, vae.tile_stride
        self._states: dict[tuple[int, int], _StreamState] = {}
        self._shape: tuple[int, ...] | None = None
        self._warm: set[tuple] = set()
        self._graphs: dict[tuple, _DecodeGraph] = {}
        self.num_latent_frames = 0

    def reset(self) -> None:
        """Start a new clip: the next latent frame is decoded as frame 0. Buffers (and graphs) are kept for reuse."""
        for state in self._states.values():
            state.started = False
        self._shape = None
        self.num_latent_frames = 0

    @torch.no_grad()
    def decode(self, z: torch.Tensor, temb: torch.Tensor | float | None = None) -> torch.Tensor:
        """Normalised latents (B,C,n,h,w), n >= 1, continuing the clip -> pixels (B,3,n_px,32h,32w) in
        nominal [-1,1], with ``n_px = 1 + 8(n-1)`` for the clip's first call and ``8n`` afterwards."""
        vae = self.vae
        vae._check_latents(z, "streaming decode")
        shape = (z.shape[0], z.shape[1], *z.shape[3:])
        if self._shape is not None and shape != self._shape:
            raise ValueError(
                f"streaming decode: latents of shape (B,C,h,w)={shape} do not continue the clip of shape "
                f"{self._shape}; call reset() to start a new clip"
            )
        temb = vae._check_temb(temb, z.shape[0])
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark or self.cudnn_benchmark
        try:
            if self._shape is None:
                out = self._run(z, temb)
            elif self.cuda_graph and z.is_cuda and temb is None:
                out = self._graphed(z)
            else:
                out = self._steady(z, temb)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        self._shape = shape
        self.num_latent_frames += z.shape[2]
        return out

    def _steady(self, z: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """A call after the clip's first: :meth:`_run`, through ``torch.compile`` with the ``compile`` option."""
        return self._run(z, temb) if self._compiled is None else self._compiled(self, z, temb)

    def _run(self, z: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """The decode itself: denormalise, then decoder passes of ``frames_per_pass`` latent frames (each over the
        spatial tiles) carrying the tails; marks the states started."""
        vae = self.vae
        z = vae.denormalize(z.to(vae.dtype))
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last_3d)
        step = z.shape[2] if self.frames_per_pass is None else self.frames_per_pass
        out = []
        for t in range(0, z.shape[2], step):
            piece = z[:, :, t : t + step]
            out.append(vae._maybe_tiled(piece, self._decode_tile(temb), self.tile_size, self.tile_stride))
            for key in self._keys(*piece.shape[-2:]):
                state = self._states[key]
                if not state.started:
                    state.started = True
        return out[0] if len(out) == 1 else _cat_time(out)

    def _tail_signature(self) -> tuple:
        return tuple((t.data_ptr(), t.stride()) for s in self._states.values() for t in s.tails.values())

    def _graphed(self, z: torch.Tensor) -> torch.Tensor:
        """A steady call on CUDA: eager the first time a shape comes (warm-up), captured the second, then replayed.
        A graph whose tails were replaced (e.g. a snapshot of another layout loaded) is captured again."""
        key = (tuple(z.shape), tuple(z.stride()), z.dtype, z.device)
        if key not in self._warm:
            self._warm.add(key)
            return self._steady(z, None)
        entry = self._graphs.get(key)
        if entry is None or entry.tails != self._tail_signature():
            self._graphs.pop(key, None)
            static = z.clone()
            graph = torch.cuda.CUDAGraph()
            with capture(graph):
                out = self._steady(static, None)
            entry = self._graphs[key] = _DecodeGraph(graph, static, out, self._tail_signature())
        entry.z.copy_(z)
        entry.graph.replay()
        return entry.out.clone(memory_format=torch.preserve_format)

    def _decode_tile(self, temb: torch.Tensor | None) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
        def run(tile: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _StreamState(self.triton_norm)
            return self.vae.decoder(tile, temb, True, state)

        return run

    def _keys(self, h: int, w: int) -> list[tuple[int, int]]:
        """(row, col) of the spatial tiles of an h x w latent (one tile when tiling is off or not needed)."""
        r = self.vae.config.spatial_compression
        if self.tile_size is None or (h <= self.tile_size // r and w <= self.tile_size // r):
            return [(0, 0)]
        sl = self.tile_stride // r
        return [(a, b) for a in range(len(range(0, h, sl))) for b in range(len(range(0, w, sl)))]

    def nbytes(self) -> int:
        """Bytes held by the carried temporal tails (constant after the first call of a clip)."""
        return sum(t.numel() * t.element_size() for s in self._states.values() for t in s.tails.values())

    def state_dict_snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of the decoder state: ``"num_latent_frames"`` (int64 scalar) and, once the clip started,
        ``"latent_shape"`` (int64 (4,): B,C,h,w) and one ``"tile{row}_{col}.{conv name}"`` tail per causal conv
        and tile."""
        snap = {"num_latent_frames": torch.tensor(self.num_latent_frames, dtype=torch.int64)}
        if self._shape is not None:
            snap["latent_shape"] = torch.tensor(self._shape, dtype=torch.int64)
            for a, b in self._keys(*self._shape[2:]):
                for name, tail in self._states[(a, b)].tails.items():
                    snap[f"tile{a}_{b}.{name}"] = tail.clone()
        return snap

    def load_snapshot(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict_snapshot` (tensors are copied; the snapshot stays usable)."""
        if "num_latent_frames" not in snapshot:
            raise ValueError("not a streaming-decoder snapshot: no 'num_latent_frames' entry")
        n = int(snapshot["num_latent_frames"])
        if n == 0:
            if len(snapshot) > 1:
                raise ValueError("streaming-decoder snapshot at frame 0 must hold nothing but 'num_latent_frames'")
            self.reset()
            return
        shape = tuple(int(v) for v in snapshot["latent_shape"])
        convs = self.vae.decoder.modules()
        names = [m.stream_key for m in convs if isinstance(m, LTX2VideoCausalConv3d) and m.time_pad]
        wanted = {f"tile{a}_{b}.{name}" for a, b in self._keys(*shape[2:]) for name in names}
        given = snapshot.keys() - {"num_latent_frames", "latent_shape"}
        if given != wanted:
            diff = sorted(given ^ wanted)
            raise ValueError(
                f"streaming-decoder snapshot does not match this decoder (tiling or model differ): "
                f"{len(diff)} key(s) differ, e.g. {diff[:3]}"
            )
        states: dict[tuple[int, int], _StreamState] = {}
        for a, b in self._keys(*shape[2:]):
            state = states[(a, b)] = self._states.get((a, b)) or _StreamState(self.triton_norm)
            for name in names:
                value, mine = snapshot[f"tile{a}_{b}.{name}"], state.tails.get(name)
                if mine is not None and mine.shape == value.shape and mine.dtype == value.dtype:
                    mine.copy_(value)
                else:
                    state.tails[name] = value.to(self.vae.device).clone()
            state.started = True
        self._states = states
        self._shape = shape
        self.num_latent_frames = n


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def load_vae(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> LTX2VAE:
    """Load a diffusers-layout LTX-2 VAE folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or a
    sharded ``*.safetensors.index.json``): SANA-WM's ``vae/`` (``AutoencoderKLLTX2Video``) or the streaming
    release's ``ltx2_causal_vae/`` (``AutoencoderKLCausalLTX2Video``, same weights layout, causal decoder).

    Keys and shapes are checked strictly (ValueError listing offenders); the module is built on the meta
    device and materialised from the (memory-mapped) file, so no second copy of the weights is held."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"no LTX-2 VAE folder at {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; load_vae expects a diffusers VAE folder holding config.json")
    config_path = folder / "config.json"
    if not config_path.is_file():
        subs = [p.name for p in sorted(folder.iterdir()) if (p / "config.json").is_file()]
        hint = f"; did you mean one of its subfolders {subs}?" if subs else ""
        raise FileNotFoundError(f"{folder} has no config.json (expected a diffusers LTX-2 VAE folder){hint}")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from e
    if raw.get("_class_name") is None:
        raise ValueError(f"{config_path} has no _class_name; expected one of {DIFFUSERS_CLASS_NAMES}")
    try:
        config = LTX2VAEConfig.from_diffusers_config(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: {e}") from e
    state = read_state_dict(folder)
    with torch.device("meta"):
        vae = LTX2VAE(config)
    load_into(vae, state, source=str(folder), device=device, dtype=dtype)
    return vae.eval()
