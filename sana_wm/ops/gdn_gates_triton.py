"""Triton GDN gates: :func:`sana_wm.ops.gdn.gdn_gates` in one launch (one program per frame and head).

Each program reads its frame's S beta and gate logits of one head (strided columns of the merged input projection,
all loads of a program in flight at once), stores ``sigmoid(beta)`` and reduces the gate logits over the frame's
tokens in float32 for the decay ``g``. It
replaces a strided mean over the whole (S, C) activations, a small GEMM and a dozen elementwise launches.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, tl, triton

__all__ = ["gdn_gates_triton"]

if HAS_TRITON:

    @triton.jit
    def _gdn_gates_kernel(
        beta_ptr,
        beta_sb,
        beta_sn,
        gate_ptr,
        gate_sb,
        gate_sn,
        a_log_ptr,
        dt_bias_ptr,
        beta_out,
        g_out,
        T,
        S,
        H,
        BLOCK_S: tl.constexpr,
    ):
        """One (b, t, head) program: beta_out (B, N, H) contiguous = sigmoid(beta logits) over the frame's S tokens,
        g_out (B, H, T) float32 from the mean of the gate logits (summed in a fixed order: deterministic)."""
        pid = tl.program_id(0)
        h = tl.program_id(1)
        b = pid // T
        t = pid % T
        acc = tl.zeros((BLOCK_S,), dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            ms = rs < S
            n = (t * S + rs).to(tl.int64)
            logits = tl.load(beta_ptr + b * beta_sb + n * beta_sn + h, mask=ms, other=0.0).to(tl.float32)
            beta = 1.0 / (1.0 + tl.exp(-logits))
            tl.store(beta_out + (b * T * S + n) * H + h, beta.to(beta_out.dtype.element_ty), mask=ms)
            acc += tl.load(gate_ptr + b * gate_sb + n * gate_sn + h, mask=ms, other=0.0).to(tl.float32)
        x = tl.sum(acc, axis=0) / S + tl.load(dt_bias_ptr + h).to(tl.float32)
        softplus = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
        rate = tl.exp(tl.load(a_log_ptr + h).to(tl.float32))
        tl.store(g_out + (b * H + h) * T + t, tl.exp(-rate * softplus))


def gdn_gates_triton(
    beta_logits: torch.Tensor, gate_logits: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton :func:`sana_wm.ops.gdn.gdn_gates` (same arguments and returns; logits with a contiguous last dim)."""
    B, N, H = beta_logits.shape
    if tuple(gate_logits.shape) != (B, N, H) or N % frames:
        raise ValueError(
            f"beta_logits and gate_logits must both be (B, N, H) with N divisible by frames={frames}, got "
            f"{tuple(beta_logits.shape)} and {tuple(gate_logits.shape)}."
        )
    if beta_logits.stride(-1) != 1 or gate_logits.stride(-1) != 1:
        beta_logits, gate_logits = beta_logits.contiguous(), gate_logits.contiguous()
    S = N // frames
    beta = torch.empty(B, N, H, dtype=beta_logits.dtype, device=beta_logits.device)
    g = torch.empty(B, H, frames, dtype=torch.float32, device=beta_logits.device)
    _gdn_gates_kernel[(B * frames, H)](
        beta_logits,
        beta_logits.stride(0),
        beta_logits.stride(1),
        gate_logits,
        gate_logits.stride(0),
        gate_logits.stride(1),
        A_log,
        dt_bias,
        beta,
        g,
        frames,
        S,
        H,
        BLOCK_S=min(1024, triton.next_power_of_2(S)),
        num_warps=4,
    )
    return beta.view(B, frames, S, H).permute(0, 3, 1, 2), g
