"""Shared plumbing of the Triton kernels in ``sana_wm.ops``: availability, interpreter mode, dot precision.

Triton is optional (the CUDA build of torch ships it; CPU installs usually do not). ``HAS_TRITON`` says whether it
imported. With ``TRITON_INTERPRET=1`` set before import, the kernels run on CPU tensors through Triton's
interpreter (used by the CPU tests); the interpreter mis-computes ``tl.dot`` on bfloat16 operands, so kernels take
a ``DOT_F32`` flag that upcasts dot operands there.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

__all__ = ["HAS_TRITON", "triton", "tl", "interpreting", "runnable_on", "dot_in_f32", "last_dim_contiguous"]

HAS_TRITON = triton is not None


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runnable_on(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on these tensors: CUDA tensors, or CPU tensors in interpreter mode."""
    if not HAS_TRITON:
        return False
    if interpreting():
        return all(t.device.type == "cpu" for t in tensors)
    return all(t.is_cuda for t in tensors)


def dot_in_f32(dtype: torch.dtype) -> bool:
    """Dots in IEEE fp32 (fp32 inputs, or the interpreter) instead of bf16/fp16 tensor-core dots with fp32
    accumulation."""
    return dtype == torch.float32 or interpreting()


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its last dim has stride 1 (kernels take the other strides as arguments), else a copy."""
    return x if x.stride(-1) == 1 else x.contiguous()
