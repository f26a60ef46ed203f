"""LTX-2 VAE: parity with diffusers AutoencoderKLLTX2Video, streaming causal decode, loading, full-size layout."""

import contextlib
import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video
from safetensors.torch import load_file, save_file

from sana_wm.vae import LTX2VAE, LTX2VAEConfig, LTX2VideoCausalConv3d, load_vae

# Second config: timestep conditioning, non-causal decoder config, zero spatial padding, mixed residual upsamplers.
CONFIG_B = {
    "latent_channels": 8, "block_out_channels": (8, 16, 32, 32), "layers_per_block": (1, 2, 1, 1, 1),
    "decoder_block_out_channels": (8, 16, 32), "decoder_layers_per_block": (1, 1, 2, 1),
    "timestep_conditioning": True, "upsample_residual": (True, False, True), "decoder_causal": False,
    "decoder_spatial_padding_mode": "zeros", "scaling_factor": 0.7,
}
# Third config: patch 2, strided-conv downsampler, non-causal reflect-padded encoder, 4 decoder blocks with mixed
# upsample types, a channel-changing up-block resnet (upsample_factor 1) and decoder noise injection.
CONFIG_C = {
    "latent_channels": 16, "patch_size": 2, "block_out_channels": (16, 32, 32, 32),
    "downsample_type": ("conv", "spatial", "spatiotemporal", "spatiotemporal"), "layers_per_block": (1,) * 5,
    "encoder_causal": False, "encoder_spatial_padding_mode": "reflect", "decoder_spatio_temporal_scaling": True,
    "decoder_block_out_channels": (16, 32, 32, 32), "upsample_factor": (2, 2, 1, 2),
    "decoder_layers_per_block": (1,) * 5,
    "upsample_type": ("spatial", "spatiotemporal", "spatiotemporal", "spatiotemporal"),
    "upsample_residual": (True, False, True, True), "decoder_inject_noise": (True, False, False, True, True),
}
CONFIGS = {"tiny": LTX2VAEConfig.preset("tiny"), "B": LTX2VAEConfig(**CONFIG_B), "C": LTX2VAEConfig(**CONFIG_C)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_pair(cfg: LTX2VAEConfig, seed: int = 0) -> tuple[AutoencoderKLLTX2Video, LTX2VAE]:
    """The diffusers reference and our VAE holding the same random weights (incl. latent stats and noise scales)."""
    torch.manual_seed(seed)
    ref = AutoencoderKLLTX2Video(**cfg.to_diffusers_config()).eval()
    state = ref.state_dict()
    state["latents_mean"] = 0.3 * torch.randn_like(state["latents_mean"])
    state["latents_std"] = 0.5 + torch.rand_like(state["latents_std"])
    for key in state:
        if "per_channel_scale" in key:
            state[key] = 0.1 * torch.randn_like(state[key])
    ref.load_state_dict(state)
    vae = LTX2VAE(cfg)
    vae.load_state_dict(state, strict=True)
    return ref, vae


@pytest.fixture(scope="module")
def pairs():
    return {name: make_pair(cfg) for name, cfg in CONFIGS.items()}


def ref_normalize(ref, z_raw):
    mean, std = ref.latents_mean.view(1, -1, 1, 1, 1), ref.latents_std.view(1, -1, 1, 1, 1)
    return (z_raw - mean) * ref.config.scaling_factor / std


def ref_denormalize(ref, z):
    mean, std = ref.latents_mean.view(1, -1, 1, 1, 1), ref.latents_std.view(1, -1, 1, 1, 1)
    return z / ref.config.scaling_factor * std + mean


def temb_for(cfg, batch):
    return torch.linspace(0.05, 0.4, batch) if cfg.timestep_conditioning else None


@pytest.mark.parametrize("name", sorted(CONFIGS))
@torch.no_grad()
def test_encode_decode_match_diffusers(pairs, name):
    ref, vae = pairs[name]
    cfg = CONFIGS[name]
    batch, frames = (2, 9) if cfg.timestep_conditioning else (1, 17)
    video = torch.rand(batch, 3, frames, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = vae.encode(video)
    z_ref = ref_normalize(ref, ref.encode(video).latent_dist.mode())
    assert z.shape == (batch, cfg.latent_channels, 1 + frames // 8, 2, 3)
    assert rel_err(z, z_ref) <= 1e-5
    temb = temb_for(cfg, batch)
    torch.manual_seed(7)
    x = vae.decode(z, temb=temb)
    torch.manual_seed(7)
    x_ref = ref.decode(ref_denormalize(ref, z), temb=temb).sample
    assert x.shape == (batch, 3, frames, 64, 96)
    assert rel_err(x, x_ref) <= 1e-5


@torch.no_grad()
def test_explicit_causal_decode_of_noncausal_config_matches_diffusers(pairs):
    ref, vae = pairs["B"]
    z = torch.randn(1, 8, 3, 2, 2)
    temb = torch.tensor([0.1])
    x_ref = ref.decode(ref_denormalize(ref, z), temb=temb, causal=True).sample
    assert rel_err(vae.decode(z, temb=temb, causal=True), x_ref) <= 1e-5
    assert rel_err(vae.decode(z, temb=temb), x_ref) > 1e-3  # the config's default (bidirectional) really differs


@torch.no_grad()
def test_tiled_decode_matches_diffusers(pairs):
    ref, vae = pairs["tiny"]
    z = torch.randn(1, 16, 2, 4, 4)
    ref.enable_tiling(
        tile_sample_min_height=96, tile_sample_min_width=96, tile_sample_stride_height=64, tile_sample_stride_width=64
    )
    vae.enable_tiling(tile=96, stride=64)
    try:
        x_ref = ref.decode(ref_denormalize(ref, z)).sample
        x = vae.decode(z)
        streamed = vae.streaming_decoder()
        pieces = [streamed.decode(z[:, :, t : t + 1]) for t in range(2)]
    finally:
        ref.disable_tiling()
        vae.disable_tiling()
    assert x.shape == (1, 3, 9, 128, 128)
    assert rel_err(x, x_ref) <= 1e-5
    assert rel_err(torch.cat(pieces, dim=2), x_ref) <= 1e-5
    with pytest.raises(ValueError, match="multiples of 32"):
        vae.enable_tiling(tile=100, stride=64)


@torch.no_grad()
def test_streaming_one_frame_per_call_equals_full_causal_decode(pairs):
    _, vae = pairs["tiny"]
    T = 12
    z = torch.randn(1, 16, T, 2, 2, generator=torch.Generator().manual_seed(3))
    full = vae.decode(z, causal=True)
    assert full.shape[2] == 1 + 8 * (T - 1)
    dec = vae.streaming_decoder()
    sizes, start = [], 0
    for t in range(T):
        frames = dec.decode(z[:, :, t : t + 1])
        n = 1 if t == 0 else 8
        assert frames.shape == (1, 3, n, 64, 64)
        assert rel_err(frames, full[:, :, start : start + n]) <= 1e-5, f"latent frame {t}"
        start += n
        sizes.append(dec.nbytes())
    assert sizes[0] > 0 and len(set(sizes)) == 1, "streaming state must not grow with T"
    assert dec.num_latent_frames == T


@torch.no_grad()
def test_streaming_multi_frame_calls_and_reset(pairs):
    _, vae = pairs["tiny"]
    z = torch.randn(1, 16, 7, 2, 3)
    full = vae.decode(z, causal=True)
    dec = vae.streaming_decoder()
    parts = [dec.decode(z[:, :, a:b]) for a, b in ((0, 3), (3, 4), (4, 7))]
    assert [p.shape[2] for p in parts] == [17, 8, 24]
    assert rel_err(torch.cat(parts, dim=2), full) <= 1e-5
    dec.reset()
    assert dec.num_latent_frames == 0
    again = dec.decode(z[:, :, :2])
    assert rel_err(again, full[:, :, :9]) <= 1e-5
    with pytest.raises(ValueError, match="reset"):
        dec.decode(torch.randn(1, 16, 1, 3, 3))


@torch.no_grad()
def test_streaming_noncausal_config_warns_and_matches_causal_decode(pairs):
    _, vae = pairs["B"]
    z = torch.randn(1, 8, 3, 2, 2)
    temb = torch.tensor([0.2])
    with pytest.warns(UserWarning, match="decoder_causal=False"):
        dec = vae.streaming_decoder()
    parts = [dec.decode(z[:, :, t : t + 1], temb=temb) for t in range(3)]
    assert rel_err(torch.cat(parts, dim=2), vae.decode(z, temb=temb, causal=True)) <= 1e-5


def test_streaming_refuses_noise_injection(pairs):
    with pytest.raises(ValueError, match="inject_noise"):
        pairs["C"][1].streaming_decoder()


@torch.no_grad()
def test_streaming_snapshot_restore_continues_identically(pairs):
    _, vae = pairs["tiny"]
    z = torch.randn(1, 16, 6, 2, 2, generator=torch.Generator().manual_seed(4))
    dec = vae.streaming_decoder()
    empty = dec.state_dict_snapshot()
    assert set(empty) == {"num_latent_frames"}
    for t in range(3):
        dec.decode(z[:, :, t : t + 1])
    snap = dec.state_dict_snapshot()
    assert int(snap["num_latent_frames"]) == 3
    assert sum(v.numel() * v.element_size() for k, v in snap.items() if "." in k) == dec.nbytes()
    first = torch.cat([dec.decode(z[:, :, t : t + 1]) for t in range(3, 6)], dim=2)
    dec.load_snapshot(snap)
    second = torch.cat([dec.decode(z[:, :, t : t + 1]) for t in range(3, 6)], dim=2)
    assert torch.equal(first, second)
    fresh = vae.streaming_decoder()
    fresh.load_snapshot(snap)
    assert torch.equal(torch.cat([fresh.decode(z[:, :, t : t + 1]) for t in range(3, 6)], dim=2), first)
    fresh.load_snapshot(empty)
    assert fresh.num_latent_frames == 0 and fresh.decode(z[:, :, :1]).shape[2] == 1
    bad = dict(snap)
    bad.pop(next(k for k in snap if "." in k))
    with pytest.raises(ValueError, match="does not match"):
        fresh.load_snapshot(bad)
    with pytest.raises(ValueError, match="num_latent_frames"):
        fresh.load_snapshot({})


def test_full_size_names_and_shapes_match_diffusers_default():
    with torch.device("meta"):
        ref = AutoencoderKLLTX2Video()
        ours = LTX2VAE(LTX2VAEConfig.preset("ltx2"))
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == ref_shapes
    assert LTX2VAEConfig.from_diffusers_config(dict(ref.config)) == LTX2VAEConfig.preset("ltx2")
    cfg = ours.config
    assert (cfg.latent_channels, cfg.spatial_compression, cfg.temporal_compression) == (128, 32, 8)


def test_tiny_preset_shapes():
    cfg = LTX2VAEConfig.preset("tiny")
    assert (cfg.latent_channels, cfg.spatial_compression, cfg.temporal_compression) == (16, 32, 8)
    vae = LTX2VAE(cfg)
    assert vae.encode(torch.zeros(1, 3, 9, 64, 128)).shape == (1, 16, 2, 2, 4)
    with pytest.raises(ValueError, match="unknown LTX-2 VAE preset"):
        LTX2VAEConfig.preset("huge")


def test_config_from_nvlabs_causal_json_and_errors():
    base = {"_class_name": "AutoencoderKLCausalLTX2Video", "_diffusers_version": "0.36.0", **CONFIG_B}
    nv = {**CONFIG_C, "gradient_checkpointing": False, "_class_name": "AutoencoderKLCausalLTX2Video"}
    nv.pop("upsample_type")
    nv["decoder_upsample_type"] = ["spatiotemporal", "spatiotemporal", "spatiotemporal", "spatial"]
    assert LTX2VAEConfig.from_diffusers_config(nv) == CONFIGS["C"]  # NVlabs lists them innermost-out
    with pytest.warns(UserWarning, match="mystery_key"):
        LTX2VAEConfig.from_diffusers_config({**base, "mystery_key": 1})
    with pytest.raises(ValueError, match="AutoencoderKLWan"):
        LTX2VAEConfig.from_diffusers_config({**base, "_class_name": "AutoencoderKLWan"})
    with pytest.raises(ValueError, match="spatial_compression_ratio=64 disagrees"):
        LTX2VAEConfig.from_diffusers_config({**base, "spatial_compression_ratio": 64})
    with pytest.raises(ValueError, match="downsample_type"):
        LTX2VAEConfig(downsample_type=("spatial", "bogus", "temporal", "spatiotemporal"))


def test_input_errors(pairs):
    cfg_b, vae = CONFIGS["B"], pairs["B"][1]
    with pytest.raises(ValueError, match=r"F = 1 \+ 8k"):
        vae.encode(torch.zeros(1, 3, 8, 64, 64))
    with pytest.raises(ValueError, match=r"image\[:, :, None\]"):
        vae.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B,8,T>=1,h,w\)"):
        vae.decode(torch.zeros(1, 16, 2, 2, 2), temb=0.1)
    with pytest.raises(ValueError, match="pass the decode timestep"):
        vae.decode(torch.zeros(1, cfg_b.latent_channels, 2, 2, 2))
    with pytest.raises(ValueError, match="no timestep conditioning"):
        pairs["tiny"][1].decode(torch.zeros(1, 16, 1, 2, 2), temb=0.1)


def _save_reference(tmp_path, ref, **kwargs):
    folder = tmp_path / "vae"
    ref.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


@torch.no_grad()
def test_load_vae_from_diffusers_folders(tmp_path, pairs):
    ref, _ = pairs["tiny"]
    z = torch.randn(1, 16, 2, 2, 2)
    expected = ref.decode(ref_denormalize(ref, z)).sample

    folder = _save_reference(tmp_path / "single", ref)
    loaded = load_vae(folder)
    assert rel_err(loaded.decode(z), expected) <= 1e-5

    sharded = _save_reference(tmp_path / "sharded", ref, max_shard_size="1MB")
    assert any(p.name.endswith(".safetensors.index.json") for p in sharded.iterdir())
    assert rel_err(load_vae(sharded).decode(z), expected) <= 1e-5

    # The streaming release's ltx2_causal_vae/ names NVlabs' class and carries its training flag.
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(_class_name="AutoencoderKLCausalLTX2Video", gradient_checkpointing=False)
    (folder / "config.json").write_text(json.dumps(cfg))
    causal = load_vae(folder, dtype=torch.bfloat16)
    assert causal.dtype == torch.bfloat16 and causal.latents_mean.dtype == torch.bfloat16
    dec = causal.streaming_decoder()
    assert dec.decode(z[:, :, :1].bfloat16()).shape == (1, 3, 1, 64, 64)


def test_load_vae_errors(tmp_path, pairs):
    ref, _ = pairs["tiny"]
    folder = _save_reference(tmp_path, ref)
    with pytest.raises(FileNotFoundError, match=r"subfolders \['vae'\]"):
        load_vae(tmp_path)
    with pytest.raises(FileNotFoundError, match="no LTX-2 VAE folder"):
        load_vae(tmp_path / "nowhere")
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("decoder.conv_out.conv.bias")
    state["decoder.conv_in.conv.weight"] = state["decoder.conv_in.conv.weight"][:1]
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"decoder\.conv_out\.conv\.bias") as err:
        load_vae(folder)
    assert "decoder.conv_in.conv.weight" in str(err.value)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ValueError, match="not an LTX-2 video VAE"):
        load_vae(folder)


def fresh_copy(vae: LTX2VAE) -> LTX2VAE:
    """A second VAE with the same weights (the channels_last switch converts a VAE's decoder weights in place)."""
    other = LTX2VAE(vae.config)
    other.load_state_dict(vae.state_dict(), strict=True)
    return other


SWITCHES = [
    {"frames_per_pass": None},
    {"frames_per_pass": 2, "channels_last": True},
    {"frames_per_pass": None, "channels_last": True, "cuda_graph": True},  # graphs: CUDA only, eager on the CPU
]


@pytest.mark.parametrize("options", SWITCHES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@torch.no_grad()
def test_streaming_switches_equal_per_frame_and_full_decode(pairs, options):
    vae = fresh_copy(pairs["tiny"][1])
    z = torch.randn(1, 16, 10, 2, 3, generator=torch.Generator().manual_seed(5))
    full = vae.decode(z, causal=True)
    per_frame = vae.streaming_decoder(frames_per_pass=1)
    fast = vae.streaming_decoder(**options)
    sizes, start = [], 0
    for a, b in ((0, 4), (4, 7), (7, 10)):  # the engine's chunks: 4 latent frames first, then 3
        x = fast.decode(z[:, :, a:b])
        ref = torch.cat([per_frame.decode(z[:, :, t : t + 1]) for t in range(a, b)], dim=2)
        assert x.shape == ref.shape
        assert rel_err(x, ref) <= 1e-5
        assert rel_err(x, full[:, :, start : start + x.shape[2]]) <= 1e-5
        assert x.is_contiguous(memory_format=torch.channels_last_3d) == fast.channels_last
        start += x.shape[2]
        sizes.append(fast.nbytes())
    assert len(set(sizes)) == 1 and sizes[0] == per_frame.nbytes()
    assert fast.num_latent_frames == 10


@torch.no_grad()
def test_channels_last_keeps_every_conv_input_channels_last(pairs):
    for name in ("tiny", "B"):
        vae = fresh_copy(pairs[name][1])
        temb = temb_for(vae.config, 2)
        z = torch.randn(2, vae.config.latent_channels, 3, 2, 2)  # B 2: the first call's frame drop is a strided slice
        expected = vae.decode(z, temb=temb, causal=True)
        with pytest.warns(UserWarning) if name == "B" else contextlib.nullcontext():
            dec = vae.streaming_decoder(frames_per_pass=None, channels_last=True)
        seen = []
        hooks = [
            m.register_forward_pre_hook(
                lambda mod, args, seen=seen: seen.append(args[0].stride(1) == 1)  # channels innermost
            )
            for m in vae.decoder.modules()
            if isinstance(m, (LTX2VideoCausalConv3d, torch.nn.Conv3d))
        ]
        try:
            x = torch.cat([dec.decode(z[:, :, :2], temb=temb), dec.decode(z[:, :, 2:], temb=temb)], dim=2)
        finally:
            for h in hooks:
                h.remove()
        assert seen and all(seen), f"{name}: {seen.count(False)} of {len(seen)} conv inputs left channels-last"
        assert all(
            p.is_contiguous(memory_format=torch.channels_last_3d) for p in vae.decoder.parameters() if p.ndim == 5
        )
        assert rel_err(x, expected) <= 1e-5
        assert rel_err(vae.decode(z, temb=temb, causal=True), expected) <= 1e-5  # full decode unaffected


@torch.no_grad()
def test_one_pass_channels_last_snapshot_restore_bitwise(pairs):
    vae = fresh_copy(pairs["tiny"][1])
    z = torch.randn(1, 16, 7, 2, 2, generator=torch.Generator().manual_seed(6))
    dec = vae.streaming_decoder(frames_per_pass=None, channels_last=True)
    dec.decode(z[:, :, :4])
    snap = dec.state_dict_snapshot()
    first = dec.decode(z[:, :, 4:7])
    dec.load_snapshot(snap)
    assert torch.equal(dec.decode(z[:, :, 4:7]), first)
    # a snapshot moves between switch settings
    plain = vae.streaming_decoder(frames_per_pass=1, channels_last=False, triton_norm=False)
    plain.load_snapshot(snap)
    assert rel_err(plain.decode(z[:, :, 4:7]), first) <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("options", [{}, {"compile": True}], ids=["eager", "compile"])
def test_streaming_decoder_is_freed_with_its_last_reference(pairs, options):
    """No reference cycle keeps a decoder (and its tails: 0.55 GB at 704 x 1280) alive after its last reference goes:
    a closed session's decoder memory comes back at once, not at the next garbage collection."""
    vae = pairs["tiny"][1]
    dec = vae.streaming_decoder(**options)
    if not options:
        dec.decode(torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0)))
        assert dec.nbytes() > 0
    ref = weakref.ref(dec)
    gc.disable()
    try:
        del dec
        assert ref() is None
    finally:
        gc.enable()


def test_streaming_switch_errors(pairs):
    vae = pairs["tiny"][1]
    with pytest.raises(TypeError, match="unknown option"):
        vae.streaming_decoder(framez=3)
    with pytest.raises(ValueError, match="frames_per_pass"):
        vae.streaming_decoder(frames_per_pass=0)


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_graph_replay_equals_eager_on_gpu(pairs):
    vae = fresh_copy(pairs["tiny"][1]).cuda()
    z = torch.randn(1, 16, 13, 2, 3, generator=torch.Generator().manual_seed(8)).cuda()
    eager = vae.streaming_decoder(frames_per_pass=None, channels_last=True, cuda_graph=False)
    graphed = vae.streaming_decoder(frames_per_pass=None, channels_last=True, cuda_graph=True)
    for a, b in ((0, 4), (4, 7), (7, 10), (10, 13)):  # first, warm-up, capture + replay, replay
        x, ref = graphed.decode(z[:, :, a:b]), eager.decode(z[:, :, a:b])
        assert rel_err(x, ref) <= 1e-5, (a, b)
    assert len(graphed._graphs) == 1
    snap = graphed.state_dict_snapshot()
    again = graphed.decode(z[:, :, 10:13])
    graphed.load_snapshot(snap)
    assert torch.equal(graphed.decode(z[:, :, 10:13]), again)


_INTERPRETED = r"""
import torch
from sana_wm.vae import (
    LTX2VAE, LTX2VAEConfig, _add_bias_residual_, _depth_to_space, _norm_silu_into, _rms_norm, _shuffle_triton,
)

torch.manual_seed(0)
worst = 0.0
cl = torch.channels_last_3d
for b, c, t, h, w in ((2, 16, 3, 4, 5), (1, 48, 2, 3, 3)):
    x = torch.randn(b, c, t, h, w).contiguous(memory_format=cl)
    for bias in (None, torch.randn(c)):
        buf = torch.full((b, c, t + 2, h + 2, w + 2), float("nan")).contiguous(memory_format=cl)
        inner = buf[:, :, 2:, 1:-1, 1:-1]
        _norm_silu_into(x, inner, use_triton=True, bias=bias)
        y = x.contiguous() if bias is None else x.contiguous() + bias.view(1, -1, 1, 1, 1)
        ref = torch.nn.functional.silu(_rms_norm(y))
        worst = max(worst, float(((inner - ref).norm() / ref.norm())))
        rest = buf.clone()
        rest[:, :, 2:, 1:-1, 1:-1] = 0
        assert torch.isnan(rest).sum() == rest.numel() - inner.numel(), "wrote outside the view"
    hh, res, bias = torch.randn(b, c, t, h, w).contiguous(memory_format=cl), torch.randn_like(x), torch.randn(c)
    ref = hh + res + bias.view(1, -1, 1, 1, 1)
    out = _add_bias_residual_(hh, bias, res, use_triton=True)
    assert out.data_ptr() == hh.data_ptr(), "not in place"
    worst = max(worst, float(((out - ref).norm() / ref.norm())))
for b, c, drop, res in ((2, 8, 1, True), (1, 3, 0, False), (1, 16, 0, True)):  # upsampler: bias, shuffle, residual
    y, bias = torch.randn(b, c * 8, 3, 2, 3).contiguous(memory_format=cl), torch.randn(c * 8)
    r = torch.randn(b, c * 4, 3, 2, 3).contiguous(memory_format=cl) if res else None  # 2 repeats of c / 2 channels
    ref = _depth_to_space(y + bias.view(1, -1, 1, 1, 1), (2, 2, 2))
    if res:
        ref.unflatten(1, (2, -1)).add_(_depth_to_space(r, (2, 2, 2)).unsqueeze(1))
    out = _shuffle_triton(y, (2, 2, 2), (4, 2, 1), bias, r, drop)
    worst = max(worst, float(((out - ref[:, :, drop:]).norm() / ref.norm())))
y, bias, p = torch.randn(1, 3 * 16, 2, 2, 3).contiguous(memory_format=cl), torch.randn(3 * 16), 4  # unpatchify
x = y + bias.view(1, -1, 1, 1, 1)
ref = x.unflatten(1, (-1, p, p)).permute(0, 1, 4, 5, 3, 6, 2).reshape(1, 3, 2, 2 * p, 3 * p)
out = _shuffle_triton(y, (1, p, p), (0, 1, p), bias, None, 0)
worst = max(worst, float(((out - ref).norm() / ref.norm())))
vae = LTX2VAE(LTX2VAEConfig.preset("tiny"))
z = torch.randn(1, 16, 3, 2, 2)
plain = vae.streaming_decoder(frames_per_pass=1, channels_last=False, triton_norm=False)
ref = torch.cat([plain.decode(z[:, :, :2]), plain.decode(z[:, :, 2:])], dim=2)
fused = vae.streaming_decoder(frames_per_pass=None, channels_last=True, triton_norm=True)
out = torch.cat([fused.decode(z[:, :, :2]), fused.decode(z[:, :, 2:])], dim=2)
worst = max(worst, float(((out - ref).norm() / ref.norm())))
print("WORST", worst)
"""


@pytest.mark.slow
def test_triton_norm_silu_in_interpreter():
    """The fused RMS norm + SiLU kernel (channels-last, written into a padded buffer view, with and without a folded
    conv bias), the bias + residual kernel, the shuffle kernel (upsampler: bias + depth-to-space + residual, dropped
    first frames; unpatchify + bias), and a tiny streaming decode through them (conv biases folded), in Triton's
    interpreter, against the torch path."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _INTERPRETED]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.split("WORST")[-1]) <= 1e-5


@pytest.mark.gpu
@torch.no_grad()
def test_triton_norm_full_width_on_gpu():
    """bf16 on CUDA at the full-size widths: the fused kernels (RMS norm + SiLU with and without a folded bias, bias +
    residual) against the fp32 torch path on the same bf16 inputs (one bf16 rounding apart)."""
    from sana_wm.vae import _add_bias_residual_, _norm_silu_into

    cl = torch.channels_last_3d
    for c in (128, 256, 512, 1024):
        x = torch.randn(1, c, 3, 22, 40, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl)
        for bias in (None, torch.randn(c, device="cuda", dtype=torch.bfloat16)):
            buf = torch.zeros(1, c, 5, 24, 42, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl)
            _norm_silu_into(x, buf[:, :, 2:, 1:-1, 1:-1], use_triton=True, bias=bias)
            ref = torch.empty_like(x, dtype=torch.float32)
            _norm_silu_into(x.float(), ref, use_triton=False, bias=None if bias is None else bias.float())
            assert rel_err(buf[:, :, 2:, 1:-1, 1:-1], ref) <= 4e-3  # bf16 output rounding: ~1.1e-3
            assert buf[:, :, :2].abs().max() == 0 and buf[:, :, :, 0].abs().max() == 0
        h, bias = torch.randn_like(x), torch.randn(c, device="cuda", dtype=torch.bfloat16)
        ref = h.float() + x.float() + bias.float().view(1, -1, 1, 1, 1)
        assert rel_err(_add_bias_residual_(h, bias, x, use_triton=True), ref) <= 4e-3


@pytest.mark.gpu
@torch.no_grad()
def test_triton_shuffle_full_size_on_gpu():
    """bf16 on CUDA at the full-size decoder's shapes: the upsamplers' bias + depth-to-space + residual (steady and
    first chunk, which drops a frame) and conv_out's unpatchify + bias, against fp32 torch on the same bf16 inputs."""
    from sana_wm.vae import _depth_to_space, _shuffle_triton

    cl = torch.channels_last_3d
    for c_in, t, h, w in ((1024, 3, 22, 40), (512, 6, 44, 80), (256, 12, 88, 160)):
        y = torch.randn(1, c_in * 4, t, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl)
        x = torch.randn(1, c_in, t, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl)
        bias = torch.randn(c_in * 4, device="cuda", dtype=torch.bfloat16)
        ref = _depth_to_space(y.float() + bias.float().view(1, -1, 1, 1, 1), (2, 2, 2))
        ref.unflatten(1, (4, -1)).add_(_depth_to_space(x.float(), (2, 2, 2)).unsqueeze(1))
        for drop in (0, 1):
            out = _shuffle_triton(y, (2, 2, 2), (4, 2, 1), bias, x, drop)
            assert out.is_contiguous(memory_format=cl)
            assert rel_err(out, ref[:, :, drop:]) <= 4e-3  # bf16 output rounding: ~1.1e-3
    y = torch.randn(1, 48, 24, 176, 320, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl)
    bias = torch.randn(48, device="cuda", dtype=torch.bfloat16)
    ref = (y.float() + bias.float().view(1, -1, 1, 1, 1)).unflatten(1, (-1, 4, 4)).permute(0, 1, 4, 5, 3, 6, 2)
    assert rel_err(_shuffle_triton(y, (1, 4, 4), (0, 1, 4), bias, None, 0), ref.reshape(1, 3, 24, 704, 1280)) <= 4e-3
