"""FFN glue between the two 1x1 convs of ``GLUMBConvTemp``: SiLU -> depthwise 3x3 (+ bias) -> GLU, token-major.

Plain PyTorch reference of :func:`sana_wm.ops.ffn_triton.glu_dwconv_triton` (one fused pass on CUDA); the ops are
the ones the transformer used before the kernel existed, so the diffusers parity of the references is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_glu_dwconv_args", "glu_dwconv"]


def check_glu_dwconv_args(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, height: int, width: int
) -> tuple[int, int]:
    """Validate :func:`glu_dwconv` arguments; returns (frames B*T, half width M)."""
    if not isinstance(h, torch.Tensor) or h.ndim != 2:
        raise ValueError(f"h must be a 2-D tensor (B*T*H*W, 2M), got {getattr(h, 'shape', type(h).__name__)}.")
    if not h.is_floating_point():
        raise TypeError(f"h must be a floating-point tensor, got {h.dtype}.")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}.")
    N, C2 = h.shape
    if C2 == 0 or C2 % 2:
        raise ValueError(f"h must have an even, non-zero channel count 2M, got {C2}.")
    if N == 0 or N % (height * width):
        raise ValueError(
            f"h has {N} rows, expected a non-zero multiple of height * width = {height} * {width} = {height * width}."
        )
    if tuple(weight.shape) != (C2, 1, 3, 3):
        raise ValueError(f"weight must have shape {(C2, 1, 3, 3)} (depthwise 3x3), got {tuple(weight.shape)}.")
    if tuple(bias.shape) != (C2,):
        raise ValueError(f"bias must have shape {(C2,)}, got {tuple(bias.shape)}.")
    if weight.device != h.device or bias.device != h.device:
        raise ValueError(f"h, weight and bias must share a device, got {h.device}, {weight.device}, {bias.device}.")
    return N // (height * width), C2 // 2


def glu_dwconv(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    height: int,
    width: int,
) -> torch.Tensor:
    """h (B*T*H*W, 2M) inverted-conv output before its SiLU, rows ordered (frame, y, x); weight (2M, 1, 3, 3);
    bias (2M,) -> (B*T*H*W, M) = value * silu(gate), where [value | gate] = depthwise3x3(silu(h)) + bias with zero
    padding 1 per frame. Dtype of h."""
    frames, _ = check_glu_dwconv_args(h, weight, bias, height, width)
    a = F.silu(h).view(frames, height, width, -1).permute(0, 3, 1, 2)  # channels-last (B*T, 2M, H, W)
    d = F.conv2d(a, weight, bias, padding=1, groups=weight.shape[0])
    value, gate = d.permute(0, 2, 3, 1).reshape(h.shape[0], -1).chunk(2, dim=-1)
    return value * F.silu(gate)
