"""GDN gates from the per-token projections (``sana_wm.ops.gdn.gdn_gates``, ``gdn_gates_triton``).

- CPU: the reference equals the block's earlier expression (``gate_proj`` of the frame's mean token, ``sigmoid`` of
  ``beta_proj``) to fp32 rounding, and bad shapes are named;
- CPU through Triton's interpreter: the kernel vs the reference on strided column slices of a wider projection
  (B = 2, odd S and H), fp32 to rounding, bf16 logits within one bf16 rounding;
- ``gpu``: the streaming shape (B 1, T 3, S 880, H 20, slices of the 15,744-wide merged GEMM output) in bf16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sana_wm.ops import gdn as ref
from sana_wm.ops import kernels
from triton_interpreter import run_interpreted


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def gate_inputs(B: int, T: int, S: int, H: int, width: int, seed: int, dtype=torch.float32):
    """(beta logits, gate logits) as (B, N, H) column slices of one (B, N, width) projection, A_log, dt_bias."""
    gen = torch.Generator().manual_seed(seed)
    packed = (2 * torch.randn(B, T * S, width, generator=gen)).to(dtype)
    a_log = torch.log(torch.empty(H).uniform_(1.0, 16.0, generator=gen))
    dt_bias = torch.randn(H, generator=gen)
    return packed[..., 3 : 3 + H], packed[..., 3 + H : 3 + 2 * H], a_log, dt_bias


def test_reference_equals_projection_of_mean_token():
    B, T, S, C, H = 2, 3, 10, 24, 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T * S, C, generator=gen)
    beta_proj, gate_proj = torch.nn.Linear(C, H), torch.nn.Linear(C, H)
    a_log, dt_bias = torch.randn(H, generator=gen), torch.randn(H, generator=gen)
    with torch.no_grad():
        beta, g = ref.gdn_gates(beta_proj(x), gate_proj(x), a_log, dt_bias, T)
        # the block's expression before the gates moved into the merged projection
        want_beta = torch.sigmoid(beta_proj(x)).view(B, T, S, H).permute(0, 3, 1, 2)
        gate = gate_proj(x.view(B, T, S, C).mean(dim=2))
        want_g = torch.exp(-a_log.exp() * F.softplus(gate + dt_bias)).transpose(1, 2)
    assert torch.equal(beta, want_beta)
    assert g.shape == (B, H, T) and g.dtype == torch.float32
    assert rel(g, want_g) < 1e-6


def test_dispatch_uses_reference_on_cpu_and_names_bad_shapes():
    beta_l, gate_l, a_log, dt_bias = gate_inputs(1, 3, 5, 4, 16, seed=1)
    got = kernels.gdn_gates(beta_l, gate_l, a_log, dt_bias, 3)
    want = ref.gdn_gates(beta_l, gate_l, a_log, dt_bias, 3)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="beta_logits and gate_logits"):
        ref.gdn_gates(beta_l, gate_l[:, :, :3], a_log, dt_bias, 3)
    with pytest.raises(ValueError, match="divisible by frames=4"):
        ref.gdn_gates(beta_l, gate_l, a_log, dt_bias, 4)


_INTERPRETED = """
    from test_gdn_gates import gate_inputs, rel
    from sana_wm.ops import gdn as ref
    from sana_wm.ops.gdn_gates_triton import gdn_gates_triton

    worst = [0.0, 0.0]
    for B, T, S, H, seed in ((2, 3, 37, 5, 0), (1, 1, 300, 20, 1), (1, 4, 8, 3, 2)):
        for i, dtype in enumerate((torch.float32, torch.bfloat16)):
            beta_l, gate_l, a_log, dt_bias = gate_inputs(B, T, S, H, 2 * H + 9, seed, dtype)
            beta, g = gdn_gates_triton(beta_l, gate_l, a_log, dt_bias, T)
            want_beta, want_g = ref.gdn_gates(beta_l.float(), gate_l.float(), a_log, dt_bias, T)
            assert beta.shape == want_beta.shape and beta.dtype == dtype and g.dtype == torch.float32
            worst[i] = max(worst[i], rel(beta, want_beta), rel(g, want_g))
    print("WORST", *worst)
    """


def test_gates_kernel_in_triton_interpreter():
    pytest.importorskip("triton")
    f32, bf16 = run_interpreted(_INTERPRETED, timeout=300)
    assert f32 < 1e-6  # fp32: the kernel reproduces the reference to rounding
    assert bf16 < 4e-3  # bf16 beta: one output rounding (2^-9 relative); g stays fp32


@pytest.mark.gpu
def test_gates_kernel_matches_fp32_reference_at_full_size():
    from sana_wm.ops.gdn_gates_triton import gdn_gates_triton

    beta_l, gate_l, a_log, dt_bias = gate_inputs(1, 3, 880, 20, 15744, seed=0, dtype=torch.bfloat16)
    cuda = [t.cuda() for t in (beta_l, gate_l, a_log, dt_bias)]
    beta, g = gdn_gates_triton(*cuda, 3)
    want_beta, want_g = ref.gdn_gates(beta_l.float(), gate_l.float(), a_log, dt_bias, 3)
    assert beta.dtype == torch.bfloat16 and rel(beta, want_beta) < 2e-2 and rel(g, want_g) < 1e-4
    assert all(torch.equal(a, b) for a, b in zip(kernels.gdn_gates(*cuda, 3), (beta, g)))
