"""Bidirectional parity of sana_wm.SanaWMTransformer with diffusers 0.42.1 SanaWMTransformer3DModel (CPU, fp32).

Both models hold the same randomised state dict (every parameter, including the ones diffusers zero-initialises, so
the Plücker injection and the camera branch are exercised). Camera inputs come from diffusers' own
``pipelines/sana_wm/cam_utils.prepare_camera`` on random rotations + translations.

diffusers casts fp32 q/k/v to bf16 right before its softmax SDPA calls (a FlashAttention workaround; a no-op for
bf16 inference). To compare in fp32 the reference runs with ``Tensor.bfloat16`` made an identity for the duration of
its forward; nothing else of the reference is touched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_sana_wm import SanaWMRotaryPosEmbed, SanaWMTransformer3DModel
from diffusers.pipelines.sana_wm.cam_utils import prepare_camera

from sana_wm import SanaWMConfig, SanaWMTransformer
from sana_wm.ops.rope import rope_frequencies

REL_TOL = 1e-5


def randomize_weights(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with moderate random values (norm weights around 1, stable GDN decay rates)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("A_log"):
                p.copy_(0.5 * noise - 1.0)
            elif p.ndim == 1 or name.endswith("scale_shift_table"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * (0.5 / p[0].numel() ** 0.5))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


def camera_inputs(batch: int, frames: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """raymap (B, T, 20), plucker (B, 48, T, H, W) from random c2w trajectories via diffusers' cam_utils."""
    rng = np.random.default_rng(seed)
    pixel_frames = 1 + 8 * (frames - 1)
    raymaps, pluckers = [], []
    for _ in range(batch):
        poses = np.tile(np.eye(4), (pixel_frames, 1, 1))
        for i in range(pixel_frames):
            poses[i, :3, :3] = random_rotation(rng)
            poses[i, :3, 3] = rng.normal(size=3)
        fx, fy = rng.uniform(0.6, 1.4, size=2) * 32 * width
        intr = np.tile([fx, fy, 16 * width + rng.normal(), 16 * height + rng.normal()], (pixel_frames, 1))
        cam = prepare_camera(
            poses, intr.astype(np.float32), target_size=(32 * height, 32 * width), vae_stride=(8, 32, 32)
        )
        raymaps.append(cam["raymap"])
        pluckers.append(cam["chunk_plucker"])
    return torch.stack(raymaps), torch.stack(pluckers)


def _run_reference(ref, latents, timestep, text, mask, raymap, plucker, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "bfloat16", lambda self, *args, **kwargs: self)
        return ref(
            latents,
            timestep[:, None, :],
            text,
            encoder_attention_mask=mask,
            camera_conditions=raymap,
            chunk_plucker=plucker,
        ).sample


CASES = [
    # (config overrides, B, T, H, W, text length, seed)
    ({}, 2, 5, 3, 5, 7, 0),  # the tiny preset: 2 heads x 32, block 3 softmax
    (
        {
            "in_channels": 8,
            "num_layers": 3,
            "hidden_size": 96,
            "num_attention_heads": 4,
            "linear_head_dim": 48,  # not a FlashAttention size: camera softmax uses the padded 1/sqrt(128) scale
            "softmax_every_n": 2,
            "caption_channels": 40,
            "mlp_ratio": 2.0,
            "conv_kernel_size": 3,
            "chunk_plucker_post_attn_blocks": 2,  # block 2 has no plucker_proj
        },
        1,
        7,
        2,
        3,
        5,
        1,
    ),
    (
        {
            "in_channels": 12,
            "num_layers": 6,
            "hidden_size": 128,
            "num_attention_heads": 8,
            "linear_head_dim": 32,
            "softmax_every_n": 3,
            "caption_channels": 24,
        },
        2,
        9,
        3,
        3,
        6,
        2,
    ),
]


@pytest.mark.parametrize("overrides,B,T,H,W,L,seed", CASES)
def test_bidirectional_matches_diffusers(overrides, B, T, H, W, L, seed, monkeypatch):
    torch.manual_seed(seed)
    cfg = SanaWMConfig.preset("tiny", variant="bidirectional", **overrides)
    ref = SanaWMTransformer3DModel(**cfg.to_diffusers_config()).eval()
    randomize_weights(ref, seed)
    model = SanaWMTransformer(cfg).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(model.state_dict(), strict=True)

    gen = torch.Generator().manual_seed(100 + seed)
    latents = torch.randn(B, cfg.in_channels, T, H, W, generator=gen)
    timestep = torch.rand(B, T, generator=gen) * 1000  # fractional: both truncate with .long()
    timestep[:, 0] = 0.0
    text = torch.randn(B, L, cfg.caption_channels, generator=gen)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[-1, L // 2 :] = False  # padded prompt
    raymap, plucker = camera_inputs(B, T, H, W, seed)

    with torch.no_grad():
        expected = _run_reference(ref, latents, timestep, text, mask, raymap, plucker, monkeypatch)
        got = model(latents, timestep, text, mask, raymap, plucker)
        other_camera = model(latents, timestep, text, mask, *camera_inputs(B, T, H, W, seed + 7))

    assert got.shape == latents.shape
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel <= REL_TOL, f"relative L2 error {rel:.3e} > {REL_TOL}"
    # the camera path is live (not a trivially-zero branch)
    assert ((other_camera - got).norm() / got.norm()).item() > 1e-3


def test_bad_inputs_raise_clear_errors():
    cfg = SanaWMConfig.preset("tiny", variant="bidirectional")
    model = SanaWMTransformer(cfg)
    B, T, H, W = 1, 4, 2, 3
    args = [
        torch.randn(B, 16, T, H, W),
        torch.zeros(B, T),
        torch.randn(B, 5, 64),
        torch.ones(B, 5, dtype=torch.bool),
        torch.randn(B, T, 20),
        torch.randn(B, 48, T, H, W),
    ]
    bad = {
        0: (torch.randn(B, 8, T, H, W), "latents"),
        1: (torch.zeros(B, T + 1), "timestep"),
        2: (torch.randn(B, 5, 32), "text"),
        3: (torch.ones(B, 4), "text_mask"),
        4: (torch.randn(B, T, 16), "raymap"),
        5: (torch.randn(B, 48, T, H, W + 1), "plucker"),
    }
    for index, (value, name) in bad.items():
        call = list(args)
        call[index] = value
        with pytest.raises(ValueError, match=name):
            model(*call)


def test_rope_positions_match_diffusers_table_and_extend_past_1024():
    """Temporal RoPE from absolute frame indices: bit-identical to diffusers' 1024-row table below 1024 and to the
    same construction with a longer table beyond it (sessions are not capped at 1024 latent frames)."""
    for head_dim in (112, 32, 48):
        H, W = 2, 3
        table = SanaWMRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=1024)((1024, H, W))[0, 0].view(1024, H * W, -1)
        frames = torch.tensor([0, 1, 5, 700, 1023])
        assert torch.equal(rope_frequencies(head_dim, frames, H, W).view(5, H * W, -1), table[frames])
        long_table = SanaWMRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=4096)((4096, H, W))[0, 0]
        frames = torch.arange(1020, 1030)
        expected = long_table.view(4096, H * W, -1)[frames]
        assert torch.equal(rope_frequencies(head_dim, frames, H, W).view(10, H * W, -1), expected)
