"""One import point for the ops that have a Triton kernel: the Triton version where it can run, else the PyTorch
reference (same signatures, same results within the kernels' tolerance).

    from sana_wm.ops.kernels import gdn_main, gdn_cam, gdn_gates, prep_gdn_qk, prep_softmax_qk, prep_camera, ucpe_decode
    from sana_wm.ops.kernels import glu_dwconv
    from sana_wm.ops.kernels import layernorm_modulate, residual_layernorm_modulate, gated_residual, gated_output
    from sana_wm.ops.kernels import short_conv_k

Triton runs for CUDA tensors when Triton imports (or CPU tensors under ``TRITON_INTERPRET=1``) and kernels are
enabled: ``use_triton(False)`` (a context manager, or ``set_triton(False)``) forces the references, e.g. to measure
the difference or to bisect a numerical question. Under ``torch.compile`` every op here runs eagerly (a graph
break): compiled blocks with the Triton kernels inside crashed with an illegal memory access on the H100.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from . import ffn as _ffn_ref
from . import gdn as _gdn_ref
from . import modulation as _mod_ref
from . import qk_prep as _prep_ref
from . import temporal_conv as _conv_ref
from ._triton import HAS_TRITON, runnable_on

__all__ = [
    "gdn_main",
    "gdn_cam",
    "gdn_gates",
    "prep_gdn_qk",
    "prep_softmax_qk",
    "prep_camera",
    "ucpe_decode",
    "glu_dwconv",
    "layernorm_modulate",
    "residual_layernorm_modulate",
    "gated_residual",
    "gated_output",
    "short_conv_k",
    "set_triton",
    "use_triton",
    "triton_enabled",
]

_ENABLED = True


def set_triton(enabled: bool) -> None:
    """Enable (default) or disable the Triton kernels process-wide."""
    global _ENABLED
    _ENABLED = bool(enabled)


def triton_enabled() -> bool:
    """Whether the kernels are enabled (they still need Triton and CUDA tensors to run)."""
    return _ENABLED and HAS_TRITON


@contextmanager
def use_triton(enabled: bool) -> Iterator[None]:
    """Temporarily enable / disable the Triton kernels."""
    before = _ENABLED
    set_triton(enabled)
    try:
        yield
    finally:
        set_triton(before)


def _triton_for(*tensors) -> bool:
    return _ENABLED and runnable_on(*tensors)


@torch.compiler.disable
def gdn_main(q, k, q_rot, k_rot, v, beta, g, *, token_major: bool = False, **kwargs):
    """:func:`sana_wm.ops.gdn.gdn_main`, on Triton when possible. ``token_major``: the output as (B, T*S, H*D)
    (the Triton kernel writes it so directly) instead of (B, H, T, S, D)."""
    if _triton_for(v):
        from .gdn_triton import gdn_main_triton

        return gdn_main_triton(q, k, q_rot, k_rot, v, beta, g, token_major=token_major, **kwargs)
    out, state_kv, state_z = _gdn_ref.gdn_main(q, k, q_rot, k_rot, v, beta, g, **kwargs)
    if token_major:
        B, H, T, S, D = out.shape
        out = out.permute(0, 2, 3, 1, 4).reshape(B, T * S, H * D)
    return out, state_kv, state_z


@torch.compiler.disable
def gdn_cam(q, k, v, beta, g, **kwargs):
    """:func:`sana_wm.ops.gdn.gdn_cam`, on Triton when possible."""
    if _triton_for(v):
        from .gdn_triton import gdn_cam_triton

        return gdn_cam_triton(q, k, v, beta, g, **kwargs)
    return _gdn_ref.gdn_cam(q, k, v, beta, g, **kwargs)


@torch.compiler.disable
def gdn_gates(beta_logits, gate_logits, A_log, dt_bias, frames: int):
    """:func:`sana_wm.ops.gdn.gdn_gates`, on Triton when possible."""
    if _triton_for(beta_logits):
        from .gdn_gates_triton import gdn_gates_triton

        return gdn_gates_triton(beta_logits, gate_logits, A_log, dt_bias, frames)
    return _gdn_ref.gdn_gates(beta_logits, gate_logits, A_log, dt_bias, frames)


@torch.compiler.disable
def prep_gdn_qk(q, k, q_weight, k_weight, rope, **kwargs):
    """:func:`sana_wm.ops.qk_prep.prep_gdn_qk`, on Triton when possible."""
    if _triton_for(q):
        from .qk_prep_triton import prep_gdn_qk_triton

        return prep_gdn_qk_triton(q, k, q_weight, k_weight, rope, **kwargs)
    return _prep_ref.prep_gdn_qk(q, k, q_weight, k_weight, rope, **kwargs)


def _into(out, x):
    """``x`` stored into ``out`` (returned as it), or ``x`` itself when there is no ``out``."""
    return x if out is None else out.copy_(x)


@torch.compiler.disable
def prep_softmax_qk(q, k, q_weight, k_weight, rope, *, q_out=None, k_out=None, v=None, v_out=None, **kwargs):
    """:func:`sana_wm.ops.qk_prep.prep_softmax_qk`, on Triton when possible. ``q_out`` / ``k_out``: (B, H, N, D)
    that receive the rotated q / k (e.g. half of a two-branch query buffer, the pass's K/V cache slot) and are
    returned as them; ``v`` (B, N, C) with ``v_out``: the raw v per head stored there too (the Triton kernel writes
    them all in its launch, the reference path copies)."""
    if _triton_for(q):
        from .qk_prep_triton import prep_softmax_qk_triton

        return prep_softmax_qk_triton(
            q, k, q_weight, k_weight, rope, q_out=q_out, k_out=k_out, v=v, v_out=v_out, **kwargs
        )
    q_rot, k_rot = _prep_ref.prep_softmax_qk(q, k, q_weight, k_weight, rope, **kwargs)
    if v_out is not None:
        B, N, C = v.shape
        v_out.copy_(v.reshape(B, N, v_out.shape[1], C // v_out.shape[1]).transpose(1, 2))
    return _into(q_out, q_rot), _into(k_out, k_rot)


@torch.compiler.disable
def prep_camera(
    q, k, v, q_weight, k_weight, ray_q, ray_kv, rope_cam, *, q_out=None, k_out=None, v_out=None, **kwargs
):
    """:func:`sana_wm.ops.qk_prep.prep_camera`, on Triton when possible; ``q_out`` / ``k_out`` / ``v_out``:
    (B, H, N, D) that receive q_u / k_u / v_u and are returned as them (the Triton kernel writes them, the reference
    path copies)."""
    if _triton_for(q):
        from .qk_prep_triton import prep_camera_triton

        return prep_camera_triton(
            q, k, v, q_weight, k_weight, ray_q, ray_kv, rope_cam, q_out=q_out, k_out=k_out, v_out=v_out, **kwargs
        )
    q_u, k_u, v_u, beta = _prep_ref.prep_camera(q, k, v, q_weight, k_weight, ray_q, ray_kv, rope_cam, **kwargs)
    return _into(q_out, q_u), _into(k_out, k_u), _into(v_out, v_u), beta


@torch.compiler.disable
def ucpe_decode(x, ray_out, rope_cam):
    """:func:`sana_wm.ops.qk_prep.ucpe_decode`, on Triton when possible."""
    if _triton_for(x):
        from .qk_prep_triton import ucpe_decode_triton

        return ucpe_decode_triton(x, ray_out, rope_cam)
    return _prep_ref.ucpe_decode(x, ray_out, rope_cam)


@torch.compiler.disable
def layernorm_modulate(x, shift, scale):
    """:func:`sana_wm.ops.modulation.layernorm_modulate`, on Triton when possible."""
    if _triton_for(x):
        from .modulation_triton import layernorm_modulate_triton

        return layernorm_modulate_triton(x, shift, scale)
    return _mod_ref.layernorm_modulate(x, shift, scale)


@torch.compiler.disable
def residual_layernorm_modulate(x, y, shift, scale, gate=None, skip=None, first=None):
    """:func:`sana_wm.ops.modulation.residual_layernorm_modulate`, on Triton when possible."""
    if _triton_for(x):
        from .modulation_triton import residual_layernorm_modulate_triton

        return residual_layernorm_modulate_triton(x, y, shift, scale, gate, skip, first)
    return _mod_ref.residual_layernorm_modulate(x, y, shift, scale, gate, skip, first)


@torch.compiler.disable
def gated_residual(x, gate, y, extra=None):
    """:func:`sana_wm.ops.modulation.gated_residual`, on Triton when possible and ``extra`` is given (without it the
    reference is already one ``addcmul`` pass)."""
    if extra is not None and _triton_for(x):
        from .modulation_triton import gated_residual_triton

        return gated_residual_triton(x, gate, y, extra)
    return _mod_ref.gated_residual(x, gate, y, extra)


@torch.compiler.disable
def gated_output(main, cam, gate):
    """:func:`sana_wm.ops.modulation.gated_output`, on Triton when possible."""
    if _triton_for(main):
        from .modulation_triton import gated_output_triton

        return gated_output_triton(main, cam, gate)
    return _mod_ref.gated_output(main, cam, gate)


@torch.compiler.disable
def short_conv_k(x, weight, *, chunk_starts=None, history=None, cross_chunk=True):
    """:func:`sana_wm.ops.temporal_conv.short_conv_k`, on Triton when possible for one segment (streamed chunks,
    bidirectional clips); several segments (chunk-causal oracle) always take the reference."""
    one_segment = len(_gdn_ref.chunk_segments(x.shape[1], chunk_starts)) == 1
    if one_segment and (cross_chunk or history is None) and _triton_for(x):
        from .short_conv_triton import short_conv_k_triton

        return short_conv_k_triton(x, weight, history=history)
    return _conv_ref.short_conv_k(x, weight, chunk_starts=chunk_starts, history=history, cross_chunk=cross_chunk)


@torch.compiler.disable
def glu_dwconv(h, weight, bias, *, height, width):
    """:func:`sana_wm.ops.ffn.glu_dwconv`, on Triton when possible."""
    if _triton_for(h):
        from .ffn_triton import glu_dwconv_triton

        return glu_dwconv_triton(h, weight, bias, height=height, width=width)
    return _ffn_ref.glu_dwconv(h, weight, bias, height=height, width=width)
