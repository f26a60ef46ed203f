"""Full-size presets on the meta device: parameter / buffer names and shapes equal diffusers' SanaWMTransformer3DModel,
and the config maps to and from diffusers' config.json."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.transformers.transformer_sana_wm import SanaWMTransformer3DModel

from sana_wm import SanaWMConfig, SanaWMTransformer


@pytest.fixture(scope="module")
def diffusers_full_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        ref = SanaWMTransformer3DModel()
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("preset", ["bidirectional-2.6b", "streaming-2.6b"])
def test_full_size_state_dict_matches_diffusers(preset, diffusers_full_shapes):
    cfg = SanaWMConfig.preset(preset)
    with torch.device("meta"):
        model = SanaWMTransformer(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(diffusers_full_shapes)
    assert ours == diffusers_full_shapes
    assert all(p.is_meta for p in model.parameters())
    n_params = sum(math.prod(s) for k, s in ours.items() if not k.endswith("recall_gate"))
    assert 2.6e9 < n_params < 2.7e9  # "2.6B"


def test_presets():
    bi, st = SanaWMConfig.preset("bidirectional-2.6b"), SanaWMConfig.preset("streaming-2.6b")
    for cfg in (bi, st):
        assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.head_dim) == (20, 2240, 20, 112)
        assert cfg.softmax_blocks == (3, 7, 11, 15, 19)
        assert (cfg.in_channels, cfg.caption_channels, cfg.mlp_ratio) == (128, 2304, 3.0)
        assert (cfg.t_kernel_size, cfg.conv_kernel_size, cfg.chunk_plucker_channels) == (3, 4, 48)
        assert (cfg.chunk_size, cfg.first_chunk_size, cfg.window_chunks) == (3, 4, 1)
        assert cfg.cam_softmax_scale == pytest.approx(128**-0.5)
    assert bi.post_ucpe_rms_downscale and bi.cam_conv_cross_chunk
    assert bi.softmax_scale == pytest.approx(112**-0.5)
    assert not st.post_ucpe_rms_downscale and not st.cam_conv_cross_chunk
    assert st.softmax_scale == pytest.approx(128**-0.5)
    tiny = SanaWMConfig.preset("tiny")
    assert (tiny.in_channels, tiny.hidden_size, tiny.num_heads, tiny.head_dim) == (16, 64, 2, 32)
    assert (tiny.num_layers, tiny.softmax_blocks, tiny.caption_channels, tiny.chunk_size) == (4, (3,), 64, 3)
    assert SanaWMConfig.preset("streaming-2.6b").chunk_bounds(31) == [(0, 4)] + [(s, s + 3) for s in range(4, 31, 3)]
    with pytest.raises(ValueError, match="preset"):
        SanaWMConfig.preset("huge")
    with pytest.raises(ValueError, match="variant"):
        SanaWMConfig.preset("tiny", variant="causal")


def test_diffusers_config_round_trip():
    with torch.device("meta"):
        ref = SanaWMTransformer3DModel()
    cfg = SanaWMConfig.from_diffusers_config(dict(ref.config), variant="streaming")
    assert cfg == SanaWMConfig.preset("streaming-2.6b")
    again = SanaWMConfig.from_diffusers_config(cfg.to_diffusers_config(), variant="streaming")
    assert again == cfg
    tiny = SanaWMConfig.preset("tiny")
    with torch.device("meta"):
        small = SanaWMTransformer3DModel(**tiny.to_diffusers_config())
    assert SanaWMConfig.from_diffusers_config(dict(small.config), variant="streaming") == tiny
    with pytest.raises(ValueError, match="ffn_type"):
        SanaWMConfig.from_diffusers_config({**dict(ref.config), "ffn_type": "mlp"})
    with pytest.raises(ValueError, match="no_such_field"):
        SanaWMConfig.from_diffusers_config({**dict(ref.config), "no_such_field": 1})
