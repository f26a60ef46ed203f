"""sana_wm.checkpoint: all three checkpoint layouts round-trip, NVlabs <-> diffusers names, shape inference, errors."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from sana_wm.checkpoint import (
    UNUSED_NVLABS_KEYS,
    diffusers_to_nvlabs_name,
    infer_config,
    load_transformer,
    nvlabs_to_diffusers_name,
    save_transformer,
)
from sana_wm.config import SanaWMConfig
from sana_wm.transformer import SanaWMTransformer

TINY_ALL_PLUCKER = dict(chunk_plucker_post_attn_blocks=4)  # "all 4 blocks", as inferred from shapes


def _diffusers_meta(cfg: SanaWMConfig):
    from diffusers import SanaWMTransformer3DModel

    with torch.device("meta"):
        return SanaWMTransformer3DModel(**cfg.to_diffusers_config())


def _random_tiny(variant: str = "bidirectional", seed: int = 0) -> SanaWMTransformer:
    torch.manual_seed(seed)
    model = SanaWMTransformer(SanaWMConfig.preset("tiny", variant=variant, **TINY_ALL_PLUCKER))
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised branches: every tensor must matter
            p.normal_(0, 0.2)
    return model.eval()


def _inputs(T: int = 4, H: int = 2, W: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).expand(T, 4, 4).clone()
    c2w[:, 2, 3] = torch.linspace(0, 0.3, T)
    raymap = torch.cat([c2w.reshape(T, 16), torch.tensor([2.0, 2.0, 1.5, 1.0]).expand(T, 4)], 1)[None]
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[:, 5:] = False
    return (
        torch.randn(1, 16, T, H, W, generator=g),
        torch.tensor([[0.0, 700.0, 700.0, 700.0]]),
        torch.randn(1, 8, 64, generator=g),
        mask,
        raymap,
        torch.randn(1, 48, T, H, W, generator=g),
    )


def _assert_same_model(loaded: SanaWMTransformer, ref: SanaWMTransformer):
    assert loaded.config == ref.config
    a, b = loaded.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    with torch.no_grad():
        x = _inputs()
        assert torch.equal(loaded(*x), ref(*x))


def _nvlabs_state(model: SanaWMTransformer) -> dict[str, torch.Tensor]:
    state = {diffusers_to_nvlabs_name(k): v.clone() for k, v in model.state_dict().items()}
    state["pos_embed"] = torch.zeros(1, 16, 64)  # present in released files, unused
    state["y_embedder.y_embedding"] = torch.randn(300, 64)
    return state


# ------------------------------------------------------------------------------------------------ names / configs
def _spec_nvlabs_keys(cfg: SanaWMConfig) -> set[str]:
    """The NVlabs key list of spec section 6, expanded for ``cfg``."""
    wb = lambda *names: {f"{n}.{s}" for n in names for s in ("weight", "bias")}
    keys = wb("x_embedder.proj", "t_embedder.mlp.0", "t_embedder.mlp.2", "t_block.1", "y_embedder.y_proj.fc1")
    keys |= wb("y_embedder.y_proj.fc2", "plucker_embedder.proj", "raymap_embedder.proj", "final_layer.linear")
    keys |= {"attention_y_norm.weight", "final_layer.scale_shift_table"}
    for i in range(cfg.num_layers):
        b = f"blocks.{i}"
        keys |= {f"{b}.scale_shift_table", f"{b}.attn.qkv.weight", f"{b}.attn.A_log", f"{b}.attn.dt_bias"}
        keys |= {f"{b}.attn.recall_gate", f"{b}.mlp.point_conv.conv.weight", f"{b}.mlp.t_conv.weight"}
        keys |= wb(f"{b}.plucker_proj", f"{b}.attn.proj", f"{b}.attn.beta_proj", f"{b}.attn.gate_proj")
        keys |= wb(*(f"{b}.attn.{n}" for n in ("output_gate", "q_proj_cam", "k_proj_cam", "v_proj_cam", "out_proj_cam")))
        keys |= {f"{b}.attn.{n}.weight" for n in ("q_norm", "k_norm", "q_norm_cam", "k_norm_cam")}
        keys |= wb(f"{b}.cross_attn.q_linear", f"{b}.cross_attn.kv_linear", f"{b}.cross_attn.proj")
        keys |= {f"{b}.cross_attn.q_norm.weight", f"{b}.cross_attn.k_norm.weight"}
        keys |= wb(f"{b}.mlp.inverted_conv.conv", f"{b}.mlp.depth_conv.conv")
        if not cfg.is_softmax_block(i):
            keys |= {f"{b}.attn.conv_k.weight", f"{b}.attn.conv_k_cam.weight"}
    return keys


def test_nvlabs_names_map_one_to_one_onto_full_size_diffusers_names():
    cfg = SanaWMConfig.preset("bidirectional-2.6b")
    names = list(_diffusers_meta(cfg).state_dict())
    assert len(names) == 870
    nvlabs = [diffusers_to_nvlabs_name(n) for n in names]
    assert len(set(nvlabs)) == len(names)  # injective, hence a bijection onto its image
    assert [nvlabs_to_diffusers_name(n) for n in nvlabs] == names
    assert set(nvlabs) == _spec_nvlabs_keys(cfg)
    renamed = {n: m for n, m in zip(names, nvlabs) if n != m}
    assert renamed == {
        "t_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
        "t_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
        "t_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
        "t_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
    }
    assert not set(UNUSED_NVLABS_KEYS) & set(names)


@pytest.mark.parametrize("preset", ["bidirectional-2.6b", "streaming-2.6b"])
def test_our_full_size_model_has_diffusers_names_and_shapes(preset):
    cfg = SanaWMConfig.preset(preset)
    with torch.device("meta"):
        ours = SanaWMTransformer(cfg).state_dict()
    ref = _diffusers_meta(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


@pytest.mark.parametrize(
    "preset, overrides",
    [("bidirectional-2.6b", {}), ("streaming-2.6b", {}), ("tiny", TINY_ALL_PLUCKER)],
)
def test_shape_inference_recovers_the_configs(preset, overrides):
    cfg = SanaWMConfig.preset(preset, **overrides)
    state = _diffusers_meta(cfg).state_dict()  # meta tensors: shapes only, no memory
    assert infer_config(state, variant=cfg.variant) == cfg
    tweaked = dataclasses.replace(
        cfg, num_layers=6, softmax_every_n=3, caption_channels=32, mlp_ratio=2.0, chunk_plucker_post_attn_blocks=3
    )
    assert infer_config(_diffusers_meta(tweaked).state_dict(), variant=cfg.variant) == tweaked


def test_shape_inference_rejects_irregular_softmax_layout():
    state = dict(_diffusers_meta(SanaWMConfig.preset("tiny")).state_dict())
    del state["blocks.0.attn.conv_k.weight"]
    with pytest.raises(ValueError, match=r"softmax blocks .*\[0, 3\] are not every n-th block"):
        infer_config(state, variant="streaming", source="odd.safetensors")


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("shard", [None, 60_000], ids=["single", "sharded"])
def test_diffusers_folder_roundtrip(tmp_path, shard):
    model = _random_tiny("streaming")
    save_transformer(model, tmp_path / "transformer", max_shard_bytes=shard)
    if shard:
        assert len(list((tmp_path / "transformer").glob("*-of-*.safetensors"))) > 1
    _assert_same_model(load_transformer(tmp_path / "transformer"), model)  # variant recorded in config.json
    assert load_transformer(tmp_path / "transformer", variant="bidirectional").config.variant == "bidirectional"
    _assert_same_model(load_transformer(tmp_path), model)  # a pipeline folder with transformer/ inside


def test_diffusers_reads_our_folder_and_we_read_diffusers(tmp_path):
    from diffusers import SanaWMTransformer3DModel

    model = _random_tiny("bidirectional")
    save_transformer(model, tmp_path / "ours")
    theirs = SanaWMTransformer3DModel.from_pretrained(tmp_path / "ours")
    ref = model.state_dict()
    assert theirs.state_dict().keys() == ref.keys()
    assert all(torch.equal(v, ref[k]) for k, v in theirs.state_dict().items())
    theirs.save_pretrained(tmp_path / "theirs")
    _assert_same_model(load_transformer(tmp_path / "theirs"), model)


def test_nvlabs_safetensors_roundtrip(tmp_path):
    model = _random_tiny("bidirectional")
    (tmp_path / "dit").mkdir()
    save_file(_nvlabs_state(model), tmp_path / "dit" / "sana_wm_1600m_720p.safetensors")
    loaded = load_transformer(tmp_path / "dit" / "sana_wm_1600m_720p.safetensors")
    assert loaded.config.variant == "bidirectional"
    _assert_same_model(loaded, model)
    _assert_same_model(load_transformer(tmp_path), model)  # repository root with dit/ inside


def test_nvlabs_streaming_pt_roundtrip(tmp_path):
    model = _random_tiny("streaming")
    generator = {f"model.{k}": v for k, v in _nvlabs_state(model).items()}
    checkpoint = {"generator": generator, "critic": {"model.x": torch.ones(3)}, "optimizer": {"step": 10}, "step": 10}
    (tmp_path / "sana_dit").mkdir()
    torch.save(checkpoint, tmp_path / "sana_dit" / "model.pt")
    loaded = load_transformer(tmp_path / "sana_dit" / "model.pt")
    assert loaded.config.variant == "streaming"
    _assert_same_model(loaded, model)
    _assert_same_model(load_transformer(tmp_path), model)  # repository root with sana_dit/model.pt inside

    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a plain state dict is accepted too
    _assert_same_model(load_transformer(tmp_path / "plain.pt"), model)


def test_dtype_and_meta_free_loading(tmp_path):
    model = _random_tiny()
    save_transformer(model, tmp_path)
    loaded = load_transformer(tmp_path, dtype=torch.bfloat16)
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert all(not t.is_meta for t in tensors)
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.bfloat16}
    assert not loaded.training


# ------------------------------------------------------------------------------------------------ errors
def test_missing_extra_and_wrongly_shaped_keys_are_named(tmp_path):
    state = _nvlabs_state(_random_tiny())
    del state["blocks.2.attn.qkv.weight"]
    state["blocks.0.attn.bogus"] = torch.ones(2)
    state["blocks.1.cross_attn.proj.weight"] = torch.ones(64, 32)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as info:
        load_transformer(tmp_path / "bad.safetensors")
    msg = str(info.value)
    assert "bad.safetensors" in msg
    assert "1 missing key(s): blocks.2.attn.qkv.weight" in msg
    assert "1 unexpected key(s): blocks.0.attn.bogus" in msg
    assert "blocks.1.cross_attn.proj.weight: file (64, 32) vs model (64, 64)" in msg


def test_config_json_that_disagrees_with_the_weights(tmp_path):
    save_transformer(_random_tiny(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "caption_channels": 32}))
    with pytest.raises(ValueError, match=r"y_embedder.y_proj.fc1.weight: file \(64, 64\) vs model \(64, 32\)"):
        load_transformer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKLLTX2Video"}))
    with pytest.raises(ValueError, match="config.json is not a SanaWMTransformer3DModel config"):
        load_transformer(tmp_path)


def test_truncated_and_hostile_files(tmp_path):
    model = _random_tiny()
    save_file(_nvlabs_state(model), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"cut\.safetensors.*truncated"):
        load_transformer(tmp_path / "cut.safetensors")

    torch.save({"generator": model.state_dict()}, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.pt.*truncated"):
        load_transformer(tmp_path / "cut.pt")

    torch.save({"generator": model.state_dict(), "config": dataclasses.replace(model.config)}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj\.pt holds objects other than tensors.*SanaWMConfig"):
        load_transformer(tmp_path / "obj.pt")
    torch.save({"generator": model.state_dict(), "hook": print}, tmp_path / "fn.pt")
    with pytest.raises(ValueError, match=r"fn\.pt holds objects other than tensors.*print"):
        load_transformer(tmp_path / "fn.pt")

    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_transformer(tmp_path / "nowhere.safetensors")


def test_mixed_naming_is_an_error(tmp_path):
    state = {k: v for k, v in _random_tiny().state_dict().items()}
    state["t_embedder.mlp.0.weight"] = state["t_embedder.linear_1.weight"].clone()
    save_file(state, tmp_path / "mixed.safetensors")
    with pytest.raises(ValueError, match=r"mixed\.safetensors mixes NVlabs names"):
        load_transformer(tmp_path / "mixed.safetensors")
