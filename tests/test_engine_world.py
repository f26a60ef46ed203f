"""engine.World on tiny random networks (CPU, fp32): stills, offline paths (streaming and bidirectional),
loading release folders, bad inputs."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import controllers
from engine import World
from sana_wm.checkpoint import diffusers_to_nvlabs_name

H, W = 64, 64
PROMPT = "a red lighthouse on a cliff"


@pytest.fixture(scope="module")
def world():
    return World.demo(height=H, width=W, seed=0)


@pytest.fixture(scope="module")
def bidi():
    return World.demo(height=H, width=W, seed=0, variant="bidirectional")


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).integers(0, 256, (72, 90, 3), dtype=np.uint8)


def test_render_image_from_prompt(world, bidi):
    still = world.render_image(PROMPT, seed=0)
    assert still.shape == (H, W, 3) and still.dtype == np.uint8
    np.testing.assert_array_equal(still, world.render_image(PROMPT, seed=0))
    assert not np.array_equal(still, world.render_image(PROMPT, seed=1))
    assert world.render_image(PROMPT, seed=0, height=96, width=64).shape == (96, 64, 3)
    assert bidi.render_image(PROMPT, seed=0, num_steps=3).shape == (H, W, 3)


def test_render_image_at_a_pose_equals_a_fresh_session(world, bidi, image):
    pose = controllers.actions_to_poses("dw-8", mapping="sana-wm-v2")[-1]
    still = world.render_image(PROMPT, seed=3, image=image, pose=pose)
    assert still.shape == (H, W, 3) and still.dtype == np.uint8
    np.testing.assert_array_equal(still, world.start(image, PROMPT, seed=3).render_image(pose))
    assert bidi.render_image(PROMPT, seed=3, image=image, pose=pose, num_steps=3).shape == (H, W, 3)


def test_render_path_streaming_equals_session_steps(world, image):
    c2w = controllers.actions_to_poses("w-30,d-18", mapping="sana-wm-v2")  # 49 poses = frame 0 + 2 chunks
    frames = world.render_path(image, PROMPT, c2w, seed=2, progress=False)
    assert frames.shape == (48, H, W, 3) and frames.dtype == np.uint8
    session = world.start(image, PROMPT, seed=2)
    ref = np.concatenate([session.step(poses=c2w[1:25]).frames, session.step(poses=c2w[25:49]).frames])
    np.testing.assert_array_equal(frames, ref)
    # a path of 31 poses: the last chunk is filled by holding the last pose; 30 frames come back
    short = world.render_path(image, PROMPT, c2w[:31], seed=2, progress=False)
    assert short.shape == (30, H, W, 3)
    np.testing.assert_array_equal(short[:24], frames[:24])
    session = world.start(image, PROMPT, seed=2)
    session.step(poses=c2w[1:25])
    held = np.concatenate([c2w[25:31], np.broadcast_to(c2w[30], (18, 4, 4))])
    np.testing.assert_array_equal(short[24:], session.step(poses=held).frames[:6])
    # the path is made relative to its first pose
    shifted = c2w.copy()
    shifted[:, :3, 3] += [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(world.render_path(image, PROMPT, shifted, seed=2, progress=False), frames)


def test_render_path_bidirectional(bidi, image, capsys):
    c2w = controllers.actions_to_poses("w-12,a-8", mapping="sana-wm-v1")  # 21 poses -> 3 latent frames + hold
    frames = bidi.render_path(image, PROMPT, c2w, seed=0, num_steps=4, guidance_scale=3.0,
                              negative_prompt="blurry", progress=True)
    assert frames.shape == (20, H, W, 3) and frames.dtype == np.uint8
    assert "4/4" in capsys.readouterr().err  # the tqdm bar
    again = bidi.render_path(image, PROMPT, c2w, seed=0, num_steps=4, guidance_scale=3.0,
                             negative_prompt="blurry", progress=False)
    np.testing.assert_array_equal(frames, again)
    no_cfg = bidi.render_path(image, PROMPT, c2w, seed=0, num_steps=4, guidance_scale=1.0, progress=False)
    assert not np.array_equal(frames, no_cfg)


def test_frame_intrinsics_are_the_sessions(world, image):
    for kw in ({}, {"fov_deg": 70.0}, {"intrinsics": [60.0, 62.0, 45.0, 36.0]}):
        with world.start(image, PROMPT, **kw) as session:
            np.testing.assert_array_equal(world.frame_intrinsics(image, **kw), session.intrinsics)
    with world.start(image, PROMPT, height=96, width=64) as session:
        np.testing.assert_array_equal(world.frame_intrinsics(image, height=96, width=64), session.intrinsics)
    assert world.frame_intrinsics(image).dtype == np.float64


def test_variant_mismatch(world, bidi, image):
    with pytest.raises(ValueError, match="streaming checkpoint"):
        bidi.start(image, PROMPT)
    with pytest.raises(ValueError, match="bidirectional checkpoint"):
        world.render_path(image, PROMPT, np.stack([np.eye(4)] * 9), sampler="bidirectional")
    with pytest.raises(ValueError, match="sampler"):
        world.render_path(image, PROMPT, np.stack([np.eye(4)] * 9), sampler="euler")


def test_bad_inputs_name_the_input(world, image):
    with pytest.raises(ValueError, match="image bytes"):
        world.start(b"definitely not a png", PROMPT)
    with pytest.raises((ValueError, TypeError), match="image"):
        world.start(np.zeros((8, 8), np.uint8), PROMPT)
    with pytest.raises(ValueError, match="intrinsics"):
        world.start(image, PROMPT, intrinsics=[500.0, 500.0, 32.0])
    with pytest.raises(ValueError, match="intrinsics or fov_deg"):
        world.start(image, PROMPT, intrinsics=[50.0, 50.0, 45.0, 36.0], fov_deg=60)
    with pytest.raises(ValueError, match="prompt"):
        world.start(image, "  ")
    with pytest.raises(ValueError, match="prompt"):
        world.render_image("")
    with pytest.raises(TypeError, match="seed"):
        world.start(image, PROMPT, seed="0")
    with pytest.raises(ValueError, match="height"):
        world.start(image, PROMPT, height=70)
    with pytest.raises(ValueError, match="steps"):
        world.start(image, PROMPT, steps=[1000, 500])
    with pytest.raises(ValueError, match="mapping"):
        world.start(image, PROMPT, mapping="qwerty")
    with pytest.raises(ValueError, match="c2w"):
        world.render_path(image, PROMPT, np.zeros((5, 4, 4)))
    with pytest.raises(ValueError, match="pose needs an image"):
        world.render_image(PROMPT, pose=np.eye(4))
    session = world.start(image, PROMPT)
    with pytest.raises(TypeError, match="Snapshot"):
        session.restore({"cache": None})
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.step("w-24")


def test_load_folder_missing_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        World.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no transformer weights: expected sana_dit/model.pt"):
        World.load(tmp_path, device="cpu")
    (tmp_path / "sana_dit").mkdir()
    (tmp_path / "sana_dit" / "model.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no VAE folder ltx2_causal_vae/"):
        World.load(tmp_path, device="cpu")
    (tmp_path / "ltx2_causal_vae").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}.*gemma-2-2b-it/ or text_encoder/"):
        World.load(tmp_path, device="cpu")
    with pytest.raises(FileNotFoundError, match="text_encoder folder"):
        World.load(tmp_path, device="cpu", text_encoder=tmp_path / "gemma")


def _write_streaming_release(world: World, folder):
    """The streaming release's layout from the demo world's tiny networks: NVlabs names in a training pickle,
    a diffusers VAE folder, a Gemma-2 folder."""
    state = {f"model.{diffusers_to_nvlabs_name(k)}": v
             for k, v in world.transformer.state_dict().items()}
    (folder / "sana_dit").mkdir(parents=True)
    torch.save({"generator": state}, folder / "sana_dit" / "model.pt")
    vae_dir = folder / "ltx2_causal_vae"
    vae_dir.mkdir()
    config = {"_class_name": "AutoencoderKLCausalLTX2Video", **world.vae.config.to_diffusers_config()}
    (vae_dir / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in world.vae.state_dict().items()},
              vae_dir / "diffusion_pytorch_model.safetensors")
    world.prompt_encoder.model.save_pretrained(folder / "gemma-2-2b-it")
    world.prompt_encoder.tokenizer.save_pretrained(folder / "gemma-2-2b-it")


def test_load_streaming_release_folder(world, image, tmp_path):
    _write_streaming_release(world, tmp_path)
    loaded = World.load(tmp_path, device="cpu", height=H, width=W)
    assert loaded.variant == "streaming" and loaded.dtype == torch.float32
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    a = loaded.start(png.getvalue(), PROMPT, seed=0).step("w-24")
    b = world.start(image, PROMPT, seed=0).step("w-24")
    np.testing.assert_array_equal(a.frames, b.frames)
