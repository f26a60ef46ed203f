"""SANA-WM transformer (hybrid Gated-DeltaNet + softmax DiT with UCPE camera control) in plain PyTorch.

One parameter set, three forwards:

- ``model(latents, timestep, text, text_mask, raymap, plucker)``: bidirectional over the whole clip (== diffusers
  ``SanaWMTransformer3DModel`` for the bidirectional variant);
- ``model(..., causal=True)``: chunk-causal over the whole clip (the training-time attention pattern and the oracle
  for streaming): chunks of ``chunk_size`` latent frames (the first ``chunk_size + 1``); GDN forward scans run across
  chunks, reverse scans reset per chunk; softmax queries of chunk c see chunk 0 (sink), chunks
  ``c - window_chunks .. c - 1`` and chunk c; the FFN temporal conv sees the previous chunk's last frame on the left
  and zeros on the right; the main K short conv is causal across chunks and anti-causal within the chunk;
- ``model.forward_chunk(..., cache=cache, start_frame=s, write_cache=False)``: one chunk against a
  :class:`~sana_wm.cache.StreamingCache` (equal to the chunk-causal forward when earlier chunks were written clean).

Parameter names and shapes equal diffusers' ``SanaWMTransformer3DModel`` (the ``pos_embed`` buffer of NVlabs
checkpoints is dropped). ``raymap_embedder`` exists for checkpoint compatibility only: with the chunk-Plücker
post-attention injection (all released checkpoints) it is unused, like in diffusers and NVlabs.

RoPE positions are absolute latent-frame indices computed on the fly (``sana_wm.ops.rope``): identical to the
1024-entry table below frame 1024, and sessions are not capped there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import StreamingCache
from .config import SanaWMConfig
from .cuda_graph import fork_stream
from .ops.gdn import chunk_segments
from .ops.kernels import (
    gated_output,
    gated_residual,
    gdn_cam,
    gdn_gates,
    gdn_main,
    glu_dwconv,
    layernorm_modulate,
    prep_camera,
    prep_gdn_qk,
    prep_softmax_qk,
    residual_layernorm_modulate,
    short_conv_k,
    ucpe_decode,
)
from .ops.rope import rope_frequencies, slice_rope_for_camera
from .ops.temporal_conv import ffn_temporal_conv_tokens, past_tap, tap_major
from .ops.ucpe import RAYMAP_CHANNELS, invert_se3, ray_matrices

__all__ = ["Conditioning", "SanaWMTransformer", "TextInputs"]

_TIMESTEP_CHANNELS = 256


# ----------------------------------------------------------------------------------------------------------------
# Small modules (names follow diffusers so state dicts load strictly)
# ----------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm over the last dim (statistics in float32), learnable ``weight``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype == self.weight.dtype:  # one fused kernel; statistics and product in fp32
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


class PatchEmbed(nn.Module):
    """1x1x1 Conv3d patch embedding (B, C, T, H, W) -> tokens (B, T*H*W, D) (``proj``)."""

    def __init__(self, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        # token-major copy of the (small) latents: the GEMM then adds the bias in its epilogue (on the strided view
        # cuBLAS ran the product transposed and torch added the bias in a separate 16 us pass over the output)
        tokens = x.to(w.dtype).permute(0, 2, 3, 4, 1).flatten(1, 3).contiguous()
        return F.linear(tokens, w.flatten(1), self.proj.bias)


class TimestepEmbedder(nn.Module):
    """diffusers ``TimestepEmbedding``: Linear(256, D) -> SiLU -> Linear(D, D)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(_TIMESTEP_CHANNELS, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(t)))


def timestep_sinusoid(timesteps: torch.Tensor) -> torch.Tensor:
    """(N,) float -> (N, 256) ``[cos, sin]`` embedding (diffusers ``Timesteps(256, flip_sin_to_cos=True, 0)``)."""
    half = _TIMESTEP_CHANNELS // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class CaptionMlp(nn.Module):
    """``fc1`` -> GELU(tanh) -> ``fc2``."""

    def __init__(self, in_features: int, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    def __init__(self, caption_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.y_proj = CaptionMlp(caption_channels, hidden_size)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.y_proj(text)


class ShortConv(nn.Module):
    """Depthwise temporal short-conv weight (C, 1, K) (FLA ``ShortConvolution`` layout); applied by
    :func:`sana_wm.ops.temporal_conv.short_conv_k`."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        nn.init.normal_(self.weight, std=kernel_size**-0.5)


class ConvLayer(nn.Module):
    """Holds ``conv`` (keeps the checkpoint names ``mlp.*_conv.conv.*``)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv


class GLUMBConvTemp(nn.Module):
    """FFN: per frame 1x1 conv (SiLU) -> depthwise 3x3 -> GLU (value * SiLU(gate)) -> 1x1 conv, then the residual
    temporal conv ``h + t_conv(h)`` over frames."""

    def __init__(self, hidden_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.inverted_conv = ConvLayer(nn.Conv2d(hidden_size, 2 * mlp_hidden, 1, bias=True))
        self.depth_conv = ConvLayer(nn.Conv2d(2 * mlp_hidden, 2 * mlp_hidden, 3, padding=1, groups=2 * mlp_hidden))
        self.point_conv = ConvLayer(nn.Conv2d(mlp_hidden, hidden_size, 1, bias=False))
        self.t_conv = nn.Conv2d(hidden_size, hidden_size, kernel_size=(3, 1), padding=(1, 0), bias=False)

    def spatial(self, x: torch.Tensor, frames: _Frames) -> torch.Tensor:
        """(B, N, C) -> (B, T, S, C) point-conv output, token-major throughout: the 1x1 convs run as linears on
        their (out, in) weight views (bias fused into the GEMM); SiLU, depthwise 3x3 + bias and GLU in between are
        one :func:`~sana_wm.ops.kernels.glu_dwconv` pass (Triton on CUDA)."""
        B, N, C = x.shape
        inverted, depth, point = self.inverted_conv.conv, self.depth_conv.conv, self.point_conv.conv
        h = F.linear(x.reshape(B * N, C), inverted.weight.flatten(1), inverted.bias)  # (B*N, 2M), before SiLU
        h = glu_dwconv(h, depth.weight, depth.bias, height=frames.H, width=frames.W)  # (B*N, M)
        h = F.linear(h, point.weight.flatten(1))
        return h.view(B, frames.T, frames.H * frames.W, C)

    def forward(
        self, x: torch.Tensor, frames: _Frames, cache: dict | None, write: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (B, N, C) -> (conv(h), h, past): the FFN output is conv(h) + h (the temporal conv's residual) plus, on
        the first frame's rows, ``past`` (B, 1, S, C) (the cached past tap of the previous chunk's last frame; None
        without a cache), which the caller adds in its next pass over the tokens."""
        B, N, C = x.shape
        h = self.spatial(x, frames)
        weight = self.t_conv.weight
        past = None if cache is None else cache["ffn_past"]
        out = ffn_temporal_conv_tokens(h, weight, chunk_starts=frames.chunk_starts, residual=False)
        if write:  # the cache gets this chunk's tap; this pass still adds the previous one
            previous = past.clone()
            past.copy_(past_tap(h[:, -1:], weight))
            past = previous
        return out.view(B, N, C), h.view(B, N, C), past


class CrossAttention(nn.Module):
    """Text cross-attention: RMSNorm'd q (tokens) and k (text) over the full width, padding mask on the text."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.heads = num_heads
        self.q_linear = nn.Linear(hidden_size, hidden_size)
        self.kv_linear = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.q_norm = RMSNorm(hidden_size, eps=1e-6)
        self.k_norm = RMSNorm(hidden_size, eps=1e-6)

    def text_kv(self, y: torch.Tensor) -> torch.Tensor:
        """Embedded text y (B, L, C) -> stacked keys / values (2, B, H, L, D) (once per chunk, not per pass)."""
        B, L, C = y.shape
        k, v = self.kv_linear(y).view(B, L, 2, C).unbind(2)
        k = self.k_norm(k).view(B, L, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, L, self.heads, C // self.heads).transpose(1, 2)
        return torch.stack([k, v])

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, N, C), kv (2, B, H, L, D) from :meth:`text_kv`, mask (B, 1, 1, L) additive (or bool; None: every
        text token valid) -> (B, N, C)."""
        B, N, C = x.shape
        q = self.q_norm(self.q_linear(x)).view(B, N, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, C).type_as(q))


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) bool / 0-1 padding mask -> (B, 1, 1, L) additive attention mask (0 where valid, -inf where padded)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask.bool(), float("-inf"))[
        :, None, None
    ]


_Pending = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]  # gate, y, skip, first


def _add_pending(
    x: torch.Tensor, pending: _Pending, shift: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's pending FFN residual added to x (B, N, C) in the pass of the next modulated LayerNorm: (x + gate *
    (y + skip + first on frame 0), LayerNorm(that) * (1 + scale) + shift) (:meth:`SanaWMBlock.forward`)."""
    gate, y, skip, first = pending
    return residual_layernorm_modulate(x, y, shift, scale, gate=gate, skip=skip, first=first)


class FinalLayer(nn.Module):
    """LayerNorm (no affine) + per-frame shift/scale from ``t`` + table, then Linear(D, C_out)."""

    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def modulation(self, t: torch.Tensor) -> torch.Tensor:
        """t (B, T, D) embedded timesteps -> (B, T, 2, D) per-frame shift and scale."""
        return self.scale_shift_table[None, None] + t[:, :, None]

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, pending: _Pending | None = None) -> torch.Tensor:
        """x (B, N, D), modulation (B, T, 2, D) from :meth:`modulation` -> (B, N, C_out); ``pending``: the last
        block's FFN residual, added to x in the LayerNorm's pass (:meth:`SanaWMBlock.forward`)."""
        shift, scale = modulation.unsqueeze(3).unbind(2)  # (B, T, 1, D)
        if pending is None:
            h = layernorm_modulate(x, shift, scale)
        else:
            h = _add_pending(x, pending, shift, scale)[1]
        return self.linear(h)


# ----------------------------------------------------------------------------------------------------------------
# Per-forward geometry / conditioning shared by all blocks
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """The timestep conditioning of one forward, a function of the (B, T) timesteps alone
    (:meth:`SanaWMTransformer.conditioning`): ``blocks`` (num_layers, B, T, 6, C) every block's adaLN table plus the
    timestep's projection, ``final`` (B, T, 2, C) the final layer's shift and scale. A sampler whose steps repeat
    computes it once per step and reuses it (``engine.graphs.ChunkGraphs``), outside the per-pass work."""

    blocks: torch.Tensor
    final: torch.Tensor


@dataclass(frozen=True)
class TextInputs:
    """What every forward derives from the prompt alone (:meth:`SanaWMTransformer.text_inputs`): ``y`` (B, L, C)
    the embedded text, ``y_mask`` (B, 1, 1, L) its padding as an additive mask (None: no padding) and ``kv``
    (num_layers, 2, B, H, L, D) every block's cross-attention keys / values. A session computes it once (its prompt
    is fixed) instead of once per chunk."""

    y: torch.Tensor
    y_mask: torch.Tensor | None
    kv: torch.Tensor


@dataclass
class _Frames:
    """Everything of one forward that does not depend on the latents or the timestep: token geometry, camera
    encodings, text and Plücker embeddings and what every block derives from them alone (cross-attention text K/V,
    Plücker projections). Built once per chunk, it serves all of the chunk's passes.

    ``mode``: ``"full"`` (bidirectional), ``"causal"`` (chunk-causal, ``chunk_starts`` set) or ``"stream"`` (one chunk
    against a cache). ``rope`` (N, hd/2) / ``rope_cam`` (N, hd/4) complex; ``ray_q`` / ``ray_kv`` / ``ray_out``
    (B, N, 4, 4) UCPE matrices for queries (P^T), keys/values (P^-1) and the output (P); ``prompt`` the prompt's
    :class:`TextInputs` (its padding mask additive, 0 / -inf in the activation dtype: SDPA takes it as is, a boolean
    mask costs a conversion per call); ``plucker_add`` (P, B, N, C) the ``plucker_proj`` outputs of the P
    blocks that have one, row ``plucker_rows[i]`` for block i (None: no projection).
    """

    mode: str
    T: int
    H: int
    W: int
    chunk_starts: list[int] | None
    rope: torch.Tensor
    rope_cam: torch.Tensor
    ray_q: torch.Tensor
    ray_kv: torch.Tensor
    ray_out: torch.Tensor
    window_chunks: int
    prompt: TextInputs
    plucker_add: torch.Tensor | None
    plucker_rows: tuple[int | None, ...]
    kv_offset: int | None = None  # stream: token offset of this pass's K/V in the buffer (cache.kv_offset())
    write_tokens: tuple[int, int] | None = None  # stream + write: ring range the chunk is committed to (None: none)

    @property
    def S(self) -> int:
        return self.H * self.W


# ----------------------------------------------------------------------------------------------------------------
# Attention (GDN or softmax main branch + UCPE camera branch, shared gates / output gate / proj)
# ----------------------------------------------------------------------------------------------------------------


def _side_by_side(
    first: Callable[[], object], second: Callable[[], object], enabled: bool = True
) -> tuple[object, object]:
    """``(first(), second())``, with ``second``'s kernels on the current CUDA device's fork stream
    (``sana_wm.cuda_graph.fork_stream``) when ``enabled``, so that the two run concurrently (the GDN branches are small,
    latency-bound kernels that leave most of the GPU idle alone). Forked from and joined back into the current stream,
    so it also works inside CUDA-graph capture. Tensors cross streams safely without ``record_stream``: the caller's
    inputs stay referenced until the join, and every side-stream region starts by waiting for the current stream, so
    memory the side stream hands back is only reused after the current stream's uses of it. Under ``torch.compile`` both
    run on the current stream (the compiled path was measured that way; see ``sana_wm.ops.kernels`` for why its ops run
    eagerly there)."""
    if not enabled or torch.compiler.is_compiling():
        return first(), second()
    current = torch.cuda.current_stream()
    side = fork_stream(current.device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        b = second()
    a = first()
    current.wait_stream(side)
    return a, b


_MERGED_ROW_ALIGN = 64  # merged projection rows padded to this: 16-byte aligned output rows, whole GEMM tiles


def _remerge_after_load(module: SanaWMAttention, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: a load that assigned new tensors (``assign=True``) re-merges the projections."""
    if module._merged is not None and not module._merged_intact():
        module.merge_input_projections()


class SanaWMAttention(nn.Module):
    """Dual-branch self-attention of one block. ``softmax=False``: bidirectional / chunk-causal Gated DeltaNet with
    K short convs; ``softmax=True``: SDPA (no short convs; the GDN gate parameters exist but are unused).

    :meth:`merge_input_projections` (``SanaWMTransformer.prepare_inference``) stores the linears that read the block
    input (qkv, camera q / k / v, output gate and, in GDN blocks, beta) as one weight / bias so that the forward runs
    one GEMM; the parameters become views into it (state dict unchanged)."""

    def __init__(self, cfg: SanaWMConfig, softmax: bool) -> None:
        super().__init__()
        C, H = cfg.hidden_size, cfg.num_heads
        self.cfg = cfg
        self.softmax = softmax
        self.heads = H
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C)
        self.q_norm = RMSNorm(C, eps=1e-5)
        self.k_norm = RMSNorm(C, eps=1e-5)
        self.beta_proj = nn.Linear(C, H)
        self.gate_proj = nn.Linear(C, H)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.register_buffer("recall_gate", torch.zeros(1))  # unused; kept for checkpoint compatibility
        self.output_gate = nn.Linear(C, C)
        if not softmax:
            self.conv_k = ShortConv(C, cfg.conv_kernel_size)
        self.q_proj_cam = nn.Linear(C, C)
        self.k_proj_cam = nn.Linear(C, C)
        self.v_proj_cam = nn.Linear(C, C)
        self.out_proj_cam = nn.Linear(C, C)
        self.q_norm_cam = RMSNorm(C, eps=1e-5)
        self.k_norm_cam = RMSNorm(C, eps=1e-5)
        if not softmax:
            self.conv_k_cam = ShortConv(C, cfg.conv_kernel_size)
        self._merged: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, C) weight, (rows,) bias
        self.register_load_state_dict_post_hook(_remerge_after_load)

    # -- merged input projection -----------------------------------------------------------------------------------
    def _input_linears(self) -> tuple[nn.Linear, ...]:
        """The linears of the block input in merged row order (beta and the decay gate only where they are used: GDN
        blocks)."""
        linears = (self.qkv, self.q_proj_cam, self.k_proj_cam, self.v_proj_cam, self.output_gate)
        return linears if self.softmax else (*linears, self.beta_proj, self.gate_proj)

    @torch.no_grad()
    def merge_input_projections(self) -> None:
        """Lay the input linears out as one ``(rows, C)`` weight and ``(rows,)`` bias (qkv's bias rows zero, rows
        padded to a multiple of 64 with zeros) and make every weight / bias a view of its rows: no second copy,
        state-dict names, shapes and values unchanged, ``load_state_dict`` copies into the views (a load with
        ``assign=True``, ``.to()`` and a repeated call re-merge)."""
        linears = self._input_linears()
        weight0 = self.qkv.weight
        rows = sum(lin.out_features for lin in linears)
        padded = -(-rows // _MERGED_ROW_ALIGN) * _MERGED_ROW_ALIGN
        weight = weight0.new_zeros(padded, weight0.shape[1])
        bias = weight0.new_zeros(padded)
        a = 0
        for lin in linears:
            b = a + lin.out_features
            weight[a:b] = lin.weight
            lin.weight.data = weight[a:b]
            if lin.bias is not None:
                bias[a:b] = lin.bias
                lin.bias.data = bias[a:b]
            a = b
        self._merged = (weight, bias)

    def _merged_intact(self) -> bool:
        """Whether every merged weight / bias still is a view of the merged tensors (same storage)."""
        weight, bias = self._merged
        return all(
            t.device == ref.device and t.untyped_storage().data_ptr() == ref.untyped_storage().data_ptr()
            for lin in self._input_linears()
            for t, ref in ((lin.weight, weight), (lin.bias, bias))
            if t is not None
        )

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._merged is not None and not self._merged_intact():  # .to(dtype / device) made separate tensors
            self.merge_input_projections()
        return self

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, N, C) -> q, k, v, q_cam, k_cam, v_cam, output-gate (B, N, C), beta and decay-gate logits (B, N, H)
        (None in softmax blocks): with the merged layout one GEMM and strided row views of its output, else one
        linear each."""
        B, N, C = x.shape
        H = self.heads
        if self._merged is not None:
            out = F.linear(x, *self._merged)
            gates = (None, None) if self.softmax else (out[..., 7 * C : 7 * C + H], out[..., 7 * C + H : 7 * C + 2 * H])
            return (*out[..., : 7 * C].view(B, N, 7, C).unbind(2), *gates)
        q, k, v = self.qkv(x).view(B, N, 3, C).unbind(2)
        cam = (self.q_proj_cam(x), self.k_proj_cam(x), self.v_proj_cam(x))
        gates = (None, None) if self.softmax else (self.beta_proj(x), self.gate_proj(x))
        return q, k, v, *cam, self.output_gate(x), *gates

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, H, N, D)."""
        B, N, _ = x.shape
        return x.reshape(B, N, self.heads, self.head_dim).transpose(1, 2)

    def _frames5(self, x: torch.Tensor, frames: _Frames) -> torch.Tensor:
        """(B, H, N, D) -> (B, H, T, S, D)."""
        B, H, _, D = x.shape
        return x.reshape(B, H, frames.T, frames.S, D)

    def _key_scale(self, frames: _Frames) -> float:
        """GDN key scale ``(head_dim * S)^-1/2``."""
        return self.head_dim**-0.5 * frames.S**-0.5

    def _short_conv(
        self,
        k: torch.Tensor,
        conv: ShortConv,
        frames: _Frames,
        cache: dict | None,
        tail_key: str,
        cross_chunk: bool,
        write: bool,
    ) -> torch.Tensor:
        """Raw K (B, N, C) -> short-conv'd K; updates the cache tail on write."""
        B, N, C = k.shape
        k4 = k.reshape(B, frames.T, frames.S, C)
        history = cache[tail_key] if (cache is not None and cross_chunk) else None
        out = short_conv_k(
            k4,
            conv.weight,
            chunk_starts=frames.chunk_starts,
            history=history,
            cross_chunk=cross_chunk or frames.mode == "full",
        )
        if write and history is not None:
            keep = history.shape[1]
            history.copy_(torch.cat([history, k4], dim=1)[:, -keep:])
        return out.reshape(B, N, C)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: _Frames, scale: float) -> torch.Tensor:
        """Softmax attention (B, H, N, D) of a forward without a cache (full / chunk-causal); streamed passes attend in
        :meth:`_softmax_stream`."""
        if frames.mode == "full":
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        S = frames.S
        segments = chunk_segments(frames.T, frames.chunk_starts)
        outs = []
        for c, (s, e) in enumerate(segments):
            visible = sorted({0, *range(max(1, c - frames.window_chunks), c + 1)})
            idx = torch.cat([torch.arange(segments[j][0] * S, segments[j][1] * S) for j in visible]).to(q.device)
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, :, s * S : e * S], k.index_select(2, idx), v.index_select(2, idx), scale=scale
                )
            )
        return torch.cat(outs, dim=2)

    def _softmax_stream(self, q, k, v, q_cam, k_cam, v_cam, frames, cache, write) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches of a softmax block against the cache: (B, N, C) projections -> main and camera outputs per
        head (B, H, N, D) (the camera's before the UCPE decode; ``gated_output`` reads the main one in place).

        The q/k preparation writes both branches' queries into one (B, 2H, N, D) buffer and their K/V into this
        pass's slot ``[a, a + N)`` of ``cache["kv"]`` (a = ``frames.kv_offset``); one unmasked SDPA over 2H heads
        and the contiguous prefix [committed sink + ring | this pass] follows (both branches share the scale in the
        streaming models; two calls otherwise): no concatenation, no mask, the flash / cuDNN path. The
        cache-writing pass then commits ``current`` to its ring slot (``frames.write_tokens``)."""
        if frames.kv_offset is None:
            raise ValueError("a stream forward needs frames.kv_offset = cache.kv_offset() (see forward_chunk).")
        B, N, _ = q.shape
        H = self.heads
        kv = cache["kv"]
        a, end = frames.kv_offset, frames.kv_offset + N
        slot = kv[:, :, :, a:end]
        queries = q.new_empty(B, 2 * H, N, self.head_dim)
        main_out = {"q_out": queries[:, :H], "k_out": slot[0, :, :H], "v": v, "v_out": slot[1, :, :H]}
        cam_out = {"q_out": queries[:, H:], "k_out": slot[0, :, H:], "v_out": slot[1, :, H:]}
        _side_by_side(  # into disjoint halves of one buffer: two streams on CUDA
            lambda: prep_softmax_qk(q, k, self.q_norm.weight, self.k_norm.weight, frames.rope, heads=H, **main_out),
            lambda: prep_camera(
                q_cam,
                k_cam,
                v_cam,
                self.q_norm_cam.weight,
                self.k_norm_cam.weight,
                frames.ray_q,
                frames.ray_kv,
                frames.rope_cam,
                heads=H,
                rms_downscale=self.cfg.post_ucpe_rms_downscale,
                **cam_out,
            ),
            enabled=q.is_cuda,
        )
        keys, values = kv[0, :, :, :end], kv[1, :, :, :end]
        scale, cam_scale = self.cfg.softmax_scale, self.cfg.cam_softmax_scale
        if scale == cam_scale:
            out = F.scaled_dot_product_attention(queries, keys, values, scale=scale)
            main, cam = out[:, :H], out[:, H:]
        else:
            main, cam = (
                F.scaled_dot_product_attention(queries[:, h], keys[:, h], values[:, h], scale=sc)
                for h, sc in ((slice(None, H), scale), (slice(H, None), cam_scale))
            )
        if write and frames.write_tokens is not None:  # commit the chunk from `current` to its ring slot
            lo, hi = frames.write_tokens
            kv[:, :, :, lo:hi].copy_(slot)
        return main, cam

    # -- branches --------------------------------------------------------------------------------------------------
    def _main(self, q, k, v, frames, beta, g, cache, write) -> torch.Tensor:
        B, N, C = q.shape
        if self.softmax:
            q, k = prep_softmax_qk(q, k, self.q_norm.weight, self.k_norm.weight, frames.rope, heads=self.heads)
            out = self._sdpa(q, k, self._split(v), frames, self.cfg.softmax_scale)
            return out.transpose(1, 2).reshape(B, N, C)
        k = self._short_conv(k, self.conv_k, frames, cache, "k_tail", True, write)
        key_scale = self._key_scale(frames)
        q, k, q_rot, k_rot = prep_gdn_qk(
            q, k, self.q_norm.weight, self.k_norm.weight, frames.rope, heads=self.heads, key_scale=key_scale
        )
        out, state_kv, state_z = gdn_main(
            *(self._frames5(t, frames) for t in (q, k, q_rot, k_rot, self._split(v))),
            beta,
            g,
            chunk_starts=frames.chunk_starts,
            state_kv=None if cache is None else cache["state_kv"],
            state_z=None if cache is None else cache["state_z"],
            eps=1e-8,
            token_major=True,
        )
        if write:
            cache["state_kv"].copy_(state_kv)
            cache["state_z"].copy_(state_z)
        return out

    def _camera(self, q, k, v, frames, beta, g, cache, write) -> torch.Tensor:
        """Camera branch, UCPE-decoded: (B, N, C)."""
        if not self.softmax:
            k = self._short_conv(k, self.conv_k_cam, frames, cache, "cam_k_tail", self.cfg.cam_conv_cross_chunk, write)
        q_u, k_u, v_u, beta = prep_camera(
            q,
            k,
            v,
            self.q_norm_cam.weight,
            self.k_norm_cam.weight,
            frames.ray_q,
            frames.ray_kv,
            frames.rope_cam,
            heads=self.heads,
            key_scale=None if self.softmax else self._key_scale(frames),
            beta=beta,
            rms_downscale=self.cfg.post_ucpe_rms_downscale,
        )
        if self.softmax:
            out = self._sdpa(q_u, k_u, v_u, frames, self.cfg.cam_softmax_scale)
            return ucpe_decode(out, frames.ray_out, frames.rope_cam)
        out5, state = gdn_cam(
            *(self._frames5(t, frames) for t in (q_u, k_u, v_u)),
            beta,
            g,
            chunk_starts=frames.chunk_starts,
            state_kv=None if cache is None else cache["cam_state_kv"],
        )
        if write:
            cache["cam_state_kv"].copy_(state)
        return ucpe_decode(out5.flatten(2, 3), frames.ray_out, frames.rope_cam)

    def forward(self, x: torch.Tensor, frames: _Frames, cache: dict | None = None, write: bool = False) -> torch.Tensor:
        """x (B, N, C) modulated tokens -> (B, N, C)."""
        q, k, v, q_cam, k_cam, v_cam, gate, beta_logits, decay_logits = self._project(x)
        if self.softmax and frames.mode == "stream":
            main, cam = self._softmax_stream(q, k, v, q_cam, k_cam, v_cam, frames, cache, write)
            cam = self.out_proj_cam(ucpe_decode(cam, frames.ray_out, frames.rope_cam))
        else:
            beta, g = (None, None)
            if not self.softmax:  # beta (B, H, T, S) per token, decay g (B, H, T) per frame
                beta, g = gdn_gates(beta_logits, decay_logits, self.A_log, self.dt_bias, frames.T)
            main, cam = _side_by_side(  # GDN blocks: two streams on CUDA (the branches are independent)
                lambda: self._main(q, k, v, frames, beta, g, cache, write),
                lambda: self.out_proj_cam(self._camera(q_cam, k_cam, v_cam, frames, beta, g, cache, write)),
                enabled=x.is_cuda and not self.softmax,
            )
        return self.proj(gated_output(main, cam, gate))


# ----------------------------------------------------------------------------------------------------------------
# Block and model
# ----------------------------------------------------------------------------------------------------------------


class SanaWMBlock(nn.Module):
    """adaLN block: self-attn (per-frame modulation, gated) -> + plucker_proj(plucker) -> + cross-attn -> FFN."""

    def __init__(self, cfg: SanaWMConfig, index: int) -> None:
        super().__init__()
        C = cfg.hidden_size
        if cfg.has_plucker_proj(index):
            self.plucker_proj = nn.Linear(C, C)
        self.attn = SanaWMAttention(cfg, softmax=cfg.is_softmax_block(index))
        self.cross_attn = CrossAttention(C, cfg.num_attention_heads)
        self.mlp = GLUMBConvTemp(C, int(C * cfg.mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, C) / C**0.5)

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        frames: _Frames,
        cache: dict | None = None,
        write: bool = False,
        index: int = 0,
        pending: _Pending | None = None,
    ) -> tuple[torch.Tensor, _Pending]:
        """One block, its FFN residual left pending (the next block adds it in the pass of its first LayerNorm).

        Args:
            x: (B, N, C) tokens, before ``pending`` is added.
            modulation: (B, T, 6, C) per-frame ``scale_shift_table + t0``.
            pending: the previous block's FFN residual (gate (B, T, 1, C), y, skip (B, N, C), first (B, 1, S, C) or
                None): the block input is ``x + gate * (y + skip + first on frame 0)``; None: x is the input.
            index: this block's position.

        Returns:
            (x, pending): the block output is x plus its pending FFN residual.
        """
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.unsqueeze(3).unbind(2)
        if pending is None:  # each per-frame parameter (B, T, 1, C)
            h = layernorm_modulate(x, shift_msa, scale_msa)
        else:
            x, h = _add_pending(x, pending, shift_msa, scale_msa)
        attn = self.attn(h, frames, cache, write)
        row = frames.plucker_rows[index]
        x = gated_residual(x, gate_msa, attn, None if row is None else frames.plucker_add[row])
        cross = self.cross_attn(x, frames.prompt.kv[index], frames.prompt.y_mask)
        x, h = residual_layernorm_modulate(x, cross, shift_mlp, scale_mlp)
        return x, (gate_mlp, *self.mlp(h, frames, cache, write))


class SanaWMTransformer(nn.Module):
    """The SANA-WM DiT. ``SanaWMTransformer(SanaWMConfig.preset("streaming-2.6b"))``."""

    def __init__(self, cfg: SanaWMConfig) -> None:
        super().__init__()
        if not isinstance(cfg, SanaWMConfig):
            raise TypeError(f"SanaWMTransformer expects a SanaWMConfig, got {type(cfg).__name__}.")
        self.config = cfg
        C = cfg.hidden_size
        self.t_embedder = TimestepEmbedder(C)
        self.attention_y_norm = RMSNorm(C, eps=1e-5)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.x_embedder = PatchEmbed(cfg.in_channels, C)
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C)
        self.plucker_embedder = PatchEmbed(cfg.chunk_plucker_channels, C)
        self.raymap_embedder = PatchEmbed(3, C)
        self.blocks = nn.ModuleList(SanaWMBlock(cfg, i) for i in range(cfg.num_layers))
        self.final_layer = FinalLayer(C, cfg.in_channels)

    # -- input checks ----------------------------------------------------------------------------------------------
    def _check_inputs(self, latents, timestep, text, text_mask, raymap, plucker) -> torch.Tensor:
        cfg = self.config
        if latents.ndim != 5 or latents.shape[1] != cfg.in_channels:
            raise ValueError(f"latents must have shape (B, {cfg.in_channels}, T, H, W), got {tuple(latents.shape)}.")
        B, _, T, H, W = latents.shape
        if timestep.ndim == 1 and timestep.shape[0] == B:
            timestep = timestep[:, None].expand(B, T)
        if tuple(timestep.shape) != (B, T):
            raise ValueError(f"timestep must have shape (B, T) = {(B, T)} or (B,), got {tuple(timestep.shape)}.")
        if text.ndim != 3 or text.shape[0] != B or text.shape[2] != cfg.caption_channels:
            raise ValueError(f"text must have shape (B={B}, L, {cfg.caption_channels}), got {tuple(text.shape)}.")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ValueError(
                f"text_mask must have shape {tuple(text.shape[:2])} (or be None: every token valid), got "
                f"{tuple(text_mask.shape)}."
            )
        if tuple(raymap.shape) != (B, T, RAYMAP_CHANNELS):
            raise ValueError(f"raymap must have shape {(B, T, RAYMAP_CHANNELS)}, got {tuple(raymap.shape)}.")
        expected = (B, cfg.chunk_plucker_channels, T, H, W)
        if tuple(plucker.shape) != expected:
            raise ValueError(f"plucker must have shape {expected}, got {tuple(plucker.shape)}.")
        return timestep

    # -- shared pre/post -------------------------------------------------------------------------------------------
    def chunk_inputs(
        self,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        raymap: torch.Tensor,
        plucker: torch.Tensor,
        start_frame: int | torch.Tensor,
        mode: str,
        chunk_starts: list[int] | None,
        prompt: TextInputs | None = None,
    ) -> _Frames:
        """The timestep-independent inputs of a forward over frames ``[start_frame, start_frame + T)``
        (``start_frame`` may be those frames' (T,) int64 indices on the device: no host value then, as inside a
        CUDA graph); ``prompt``: ``text_inputs(text, text_mask)`` computed before (text and text_mask are then not
        read)."""
        hd = self.config.head_dim
        _, _, T, H, W = plucker.shape
        if isinstance(start_frame, torch.Tensor):
            positions = start_frame
        else:
            positions = torch.arange(start_frame, start_frame + T, device=raymap.device)
        rope = rope_frequencies(hd, positions, H, W, theta=self.config.rope_theta)
        ray = ray_matrices(raymap, H, W)
        if prompt is None:
            prompt = self.text_inputs(text, text_mask)
        plucker_emb = self.plucker_embedder(plucker)
        projections = [b.plucker_proj(plucker_emb) for b in self.blocks if hasattr(b, "plucker_proj")]
        rows, n = [], 0
        for b in self.blocks:
            rows.append(n if hasattr(b, "plucker_proj") else None)
            n += hasattr(b, "plucker_proj")
        return _Frames(
            mode=mode,
            T=T,
            H=H,
            W=W,
            chunk_starts=chunk_starts,
            rope=rope,
            rope_cam=slice_rope_for_camera(rope, hd),
            ray_q=ray.transpose(-1, -2).contiguous(),
            ray_kv=invert_se3(ray).contiguous(),
            ray_out=ray,
            window_chunks=self.config.window_chunks,
            prompt=prompt,
            plucker_add=torch.stack(projections) if projections else None,
            plucker_rows=tuple(rows),
        )

    def text_inputs(self, text: torch.Tensor, text_mask: torch.Tensor | None) -> TextInputs:
        """text (B, L, caption_channels) prompt embeddings and its (B, L) padding mask (None: every token valid) ->
        their :class:`TextInputs`."""
        y = self.attention_y_norm(self.y_embedder(text.to(self.x_embedder.proj.weight.dtype)))
        y_mask = None if text_mask is None else additive_mask(text_mask, y.dtype)
        return TextInputs(y, y_mask, torch.stack([b.cross_attn.text_kv(y) for b in self.blocks]))

    def conditioning(self, timestep: torch.Tensor) -> Conditioning:
        """(B, T) timesteps on the 0..1000 scale (truncated with ``.long()``) -> their :class:`Conditioning`."""
        B, T = timestep.shape
        dtype = self.x_embedder.proj.weight.dtype
        t = self.t_embedder(timestep_sinusoid(timestep.long().to(torch.float32).flatten()).to(dtype))
        t0 = self.t_block(t).view(B, T, 6, -1)
        tables = torch.stack([block.scale_shift_table for block in self.blocks])
        blocks = tables[:, None, None] + t0  # (num_layers, B, T, 6, C): one add for all blocks
        return Conditioning(blocks=blocks, final=self.final_layer.modulation(t.view(B, T, -1)))

    def run_blocks(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | Conditioning,
        frames: _Frames,
        cache: StreamingCache | None,
        write: bool,
    ) -> torch.Tensor:
        """The network on (B, C, T, H, W) latents given the per-forward inputs: ``timestep`` (B, T) or its
        precomputed :meth:`conditioning`, ``frames`` from :meth:`chunk_inputs` -> (B, C, T, H, W) velocity."""
        B, _, T, H, W = latents.shape
        cond = timestep if isinstance(timestep, Conditioning) else self.conditioning(timestep)
        if tuple(cond.final.shape[:2]) != (B, T):
            raise ValueError(f"conditioning is for (B, T) = {tuple(cond.final.shape[:2])}, latents have {(B, T)}.")
        x = self.x_embedder(latents)
        pending = None
        for i, block in enumerate(self.blocks):
            x, pending = block(x, cond.blocks[i], frames, None if cache is None else cache.blocks[i], write, i, pending)
        out = self.final_layer(x, cond.final, pending)
        return out.view(B, T, H, W, -1).permute(0, 4, 1, 2, 3)

    # -- public forwards -------------------------------------------------------------------------------------------
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        raymap: torch.Tensor,
        plucker: torch.Tensor,
        causal: bool = False,
        chunk_starts: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Velocity for a whole clip.

        Args:
            latents: (B, C, T, H, W) normalised latents.
            timestep: (B, T) per-frame timesteps on the 0..1000 scale (or (B,) for all frames); truncated with
                ``.long()`` like diffusers.
            text: (B, L, caption_channels) prompt embeddings; text_mask: (B, L) bool / 0-1 padding mask, or None
                when every token is valid (e.g. the padding dropped: the cross-attention then runs unmasked).
            raymap: (B, T, 20) flattened relative c2w (16) + fx, fy, cx, cy in latent-grid pixels.
            plucker: (B, 48, T, H, W) chunk Plücker maps.
            causal: False = bidirectional; True = chunk-causal (chunks of ``chunk_size``, first ``chunk_size + 1``).
            chunk_starts: with ``causal=True``, the first latent frame of every chunk instead of that layout, e.g.
                ``[0, 4, 7]`` for 8 frames whose last chunk is one frame long (the oracle of a short read-only
                :meth:`forward_chunk`).

        Returns:
            (B, C, T, H, W) flow velocity ``noise - x0``.
        """
        timestep = self._check_inputs(latents, timestep, text, text_mask, raymap, plucker)
        T = latents.shape[2]
        if chunk_starts is not None and not causal:
            raise ValueError("chunk_starts needs causal=True (a bidirectional forward has no chunks).")
        if causal and chunk_starts is None:
            chunk_starts = [s for s, _ in self.config.chunk_bounds(T)]
        frames = self.chunk_inputs(text, text_mask, raymap, plucker, 0, "causal" if causal else "full", chunk_starts)
        return self.run_blocks(latents, timestep, frames, None, False)

    def forward_chunk(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        raymap: torch.Tensor,
        plucker: torch.Tensor,
        *,
        cache: StreamingCache,
        start_frame: int,
        write_cache: bool = False,
        prompt: TextInputs | None = None,
    ) -> torch.Tensor:
        """Velocity for one chunk at absolute latent frames ``[start_frame, start_frame + T_chunk)``.

        Shapes as in :meth:`forward` with T = T_chunk (``chunk_size + 1`` for the chunk at frame 0, else
        ``chunk_size``); ``raymap`` / ``plucker`` hold only this chunk's frames. Reads ``cache`` (which must hold all
        frames before ``start_frame``); writes this chunk's states / tails / K/V into it only if ``write_cache``
        (call that once per chunk, on the clean latents at t = 0). A read-only call may take fewer frames, 1 to
        T_chunk (e.g. one latent frame for a still): it equals the chunk-causal forward whose last chunk is that
        short (``forward(..., causal=True, chunk_starts=...)``), not the first frames of a full chunk. ``prompt``:
        :meth:`text_inputs` of ``text`` and ``text_mask`` if computed before (a session's are).
        """
        if not isinstance(cache, StreamingCache):
            raise TypeError(f"cache must be a StreamingCache (model.new_cache(...)), got {type(cache).__name__}.")
        timestep = self._check_inputs(latents, timestep, text, text_mask, raymap, plucker)
        B, _, T, H, W = latents.shape
        cache.check_chunk(batch_size=B, height=H, width=W, start_frame=start_frame, num_frames=T, write=write_cache)
        frames = self.chunk_inputs(text, text_mask, raymap, plucker, start_frame, "stream", None, prompt)
        frames.kv_offset = cache.kv_offset()
        frames.write_tokens = cache.write_token_range() if write_cache else None
        out = self.run_blocks(latents, timestep, frames, cache, write_cache)
        if write_cache:
            cache.commit_chunk(T)
        return out

    @torch.no_grad()
    def prepare_inference(self) -> SanaWMTransformer:
        """Lay weights out for fast inference (values and state-dict names unchanged, no second copy; idempotent):
        the FFN temporal-conv weights are stored tap-major (each tap a contiguous GEMM operand) and every block's
        input projections (qkv, camera q / k / v, output gate, beta) become views of one merged weight / bias, run
        as one GEMM (:meth:`SanaWMAttention.merge_input_projections`).

        Call after loading. ``load_state_dict`` afterwards copies into the views (``assign=True``, ``.to()`` and a
        repeated call re-merge); anything that replaces parameters another way (e.g. ``weights.load_into`` with a
        dtype / device change) needs another ``prepare_inference()``. The merged parameters share one storage per
        block: ``safetensors`` refuses to save such a state dict (save before this call, or save
        ``{k: v.contiguous()}``)."""
        for block in self.blocks:
            block.mlp.t_conv.weight.data = tap_major(block.mlp.t_conv.weight.data)
            block.attn.merge_input_projections()
        return self

    def new_cache(
        self,
        batch_size: int = 1,
        *,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamingCache:
        """A zeroed :class:`StreamingCache` for a latent grid of ``height`` x ``width`` (defaults: the model's
        device and parameter dtype)."""
        weight = self.x_embedder.proj.weight
        return StreamingCache(
            self.config,
            batch_size=batch_size,
            height=height,
            width=width,
            device=weight.device if device is None else device,
            dtype=weight.dtype if dtype is None else dtype,
        )
