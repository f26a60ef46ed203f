"""engine.Session on the tiny demo world (CPU, fp32): chunks, streaming, constant memory, parity with the
chunk-causal full-sequence forward, snapshots / forks, seeds, long sessions."""

import gc
import os
import weakref

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")  # the demo world's prompt encoder; skip cleanly on a box without it

import controllers
from engine import Chunk, Snapshot, World
from engine.sampler import DEFAULT_STEPS, chunk_noise

H, W = 64, 64
PROMPT = "a harbour at dusk"


@pytest.fixture(scope="module")
def world():
    return World.demo(height=H, width=W, seed=0)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)


def test_chunk_fields_and_numbering(world, image):
    session = world.start(image, prompt=PROMPT, seed=0)
    assert session.frames_per_chunk == 24 and (session.height, session.width) == (H, W)
    assert session.first_frame.shape == (H, W, 3) and session.first_frame.dtype == np.uint8
    c0 = session.step("w-24")
    assert isinstance(c0, Chunk)
    assert c0.frames.shape == (24, H, W, 3) and c0.frames.dtype == np.uint8
    assert c0.poses.shape == (24, 4, 4) and c0.intrinsics.shape == (4,)
    assert c0.index == 0 and c0.frame_indices.tolist() == list(range(1, 25))
    assert c0.latents.shape == (1, 16, 4, 2, 2) and c0.latent_start == 0
    assert {"camera", "denoise", "cache_write", "decode", "total"} <= set(c0.timings)
    np.testing.assert_array_equal(c0.poses, controllers.LiveController("sana-wm-v2").poses_for_actions("w-24"))
    c1 = session.step("dw-24")
    assert c1.index == 1 and c1.frame_indices.tolist() == list(range(25, 49))
    assert c1.latents.shape == (1, 16, 3, 2, 2) and c1.latent_start == 4
    np.testing.assert_array_equal(session.pose, c1.poses[-1])
    assert session.chunk_index == 2 and session.frame_index == 49


def test_stream_equals_step_and_early_close_keeps_state(world, image):
    a = world.start(image, prompt=PROMPT, seed=1)
    a.step("w-24")
    b = a.fork()
    parts = list(a.stream("aw-24"))
    assert [len(p.frames) for p in parts] == [8, 8, 8]
    ref = b.step("aw-24")
    np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), ref.frames)
    np.testing.assert_array_equal(np.concatenate([p.frame_indices for p in parts]), ref.frame_indices)
    np.testing.assert_array_equal(np.concatenate([p.poses for p in parts]), ref.poses)
    # a stream abandoned after its first part still finishes the chunk: both continue identically
    stream = a.stream("w-24")
    next(stream)
    stream.close()
    b.step("w-24")
    np.testing.assert_array_equal(a.step("none-24").frames, b.step("none-24").frames)
    # a stream never started changes nothing; one made before the session moved on refuses to run
    stale = a.stream("w-24")
    assert a.chunk_index == 4
    a.step("w-24")
    with pytest.raises(RuntimeError, match="made for chunk 4"):
        next(stale)


def test_inputs_actions_keys_poses_agree(world, image):
    s = world.start(image, prompt=PROMPT, seed=2)
    t, u = s.fork(), s.fork()
    c = s.step("wd-12,none-12")
    k = t.step(keys=[{"w", "d"}] * 12 + [set()] * 12)
    p = u.step(poses=c.poses)
    np.testing.assert_array_equal(c.frames, k.frames)
    np.testing.assert_array_equal(c.frames, p.frames)
    np.testing.assert_array_equal(u.pose, c.poses[-1])
    with pytest.raises(ValueError, match="exactly 24"):
        s.step("w-23")
    with pytest.raises(ValueError, match="at most one of"):
        s.step("w-24", poses=c.poses)
    with pytest.raises(ValueError, match="poses"):
        s.step(poses=np.zeros((24, 4, 4)))
    assert s.chunk_index == 1  # rejected inputs change nothing


def test_live_control_through_the_session_controller(world, image):
    """No camera argument: the poses come from the key / mouse events given to session.controller."""
    s = world.start(image, prompt=PROMPT, seed=2)
    ref = s.fork()
    s.controller.key_down("w", 0.0)
    s.controller.key_up("w", 0.75)  # held for 12 of the chunk's 24 frames (16 fps)
    live = s.step()
    expected = controllers.LiveController("sana-wm-v2")
    expected.key_down("w", 0.0)
    expected.key_up("w", 0.75)
    np.testing.assert_array_equal(live.poses, expected.poses_for_next(24))
    np.testing.assert_array_equal(live.frames, ref.step(poses=live.poses).frames)
    assert s.controller.state_dict() == expected.state_dict()  # velocity and events carried on, not reset


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_constant_memory_over_40_chunks(world, image):
    session = world.start(image, prompt=PROMPT, seed=3)
    actions = ["w-24", "dw-24", "none-24", "ai-12,k-12"]
    for i in range(40):
        session.step(actions[i % 4])
        if i + 1 == 3:
            state_bytes, snap_bytes = session.state.nbytes(), session.snapshot().nbytes()
        if i + 1 == 10:
            gc.collect()
            rss10 = _rss_bytes()
    gc.collect()
    assert session.state.nbytes() == state_bytes
    assert session.snapshot().nbytes() == snap_bytes
    growth = _rss_bytes() - rss10
    assert growth < 4 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB between chunk 10 and chunk 40"


def test_close_frees_the_state_at_once(world, image):
    """``close`` releases the session's cache and streaming decoder at once (no reference cycle holds them until a
    garbage collection: the decoder's tails are 0.55 GB per session at 704 x 1280)."""
    session = world.start(image, prompt=PROMPT, seed=5)
    session.step("w-24")
    state = session.state
    refs = [weakref.ref(x) for x in (state, state.cache, state.decoder)]
    del state
    gc.disable()
    try:
        session.close()
        assert [r() is None for r in refs] == [True, True, True]
    finally:
        gc.enable()


def _euler_sigmas():
    s = torch.tensor(DEFAULT_STEPS, dtype=torch.float32) / 1000
    return list(zip(DEFAULT_STEPS[:-1], (s[:-1] - s[1:]).tolist()))


def test_streaming_equals_chunk_causal_full_forward(world, image):
    """The last chunk's latents, rebuilt with model(..., causal=True) over the whole sequence: the previous chunks'
    clean latents at t=0 and the last chunk's noise, Euler-stepped with the same step list."""
    session = world.start(image, prompt=PROMPT, seed=4)
    chunks = [session.step(a) for a in ("w-24", "aw-24", "l-24", "ik-12,none-12")]  # 4 chunks: window slides
    model = world.transformer
    prev = torch.cat([c.latents for c in chunks[:-1]], dim=2)
    last = chunks[-1]
    n_prev, n_last = prev.shape[2], last.latents.shape[2]
    c2w = np.concatenate([np.eye(4)[None], *[c.poses for c in chunks]])
    raymap, plucker = controllers.camera_conditioning(c2w, session.intrinsics, (H, W), 0, n_prev + n_last)
    text, mask = world.encode_prompt(PROMPT)
    x = chunk_noise(4, last.index, last.latents.shape)
    with torch.no_grad():
        for t, dt in _euler_sigmas():
            timestep = torch.zeros(1, n_prev + n_last)
            timestep[:, n_prev:] = t
            v = model(torch.cat([prev, x], dim=2), timestep, text, mask, raymap[None], plucker[None], causal=True)
            x = x - dt * v[:, :, n_prev:]
    err = ((x - last.latents).norm() / last.latents.norm()).item()
    assert err <= 1e-5, err


def test_fork_restore_and_divergence(world, image):
    parent = world.start(image, prompt=PROMPT, seed=5)
    parent.step("w-24")
    snap = parent.snapshot()
    assert isinstance(snap, Snapshot) and snap.chunk_index == 1
    child = parent.fork()
    a, b = parent.step("d-24"), child.step("d-24")
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.poses, b.poses)
    c = child.step("a-24")
    d = parent.step("kd-24")
    assert not np.array_equal(c.frames, d.frames)
    parent.restore(snap)
    assert parent.chunk_index == 1
    np.testing.assert_array_equal(parent.step("d-24").frames, a.frames)
    parent.restore(snap)  # a snapshot can be restored again
    np.testing.assert_array_equal(parent.step("d-24").frames, a.frames)
    child.restore(snap)  # and into a fork
    np.testing.assert_array_equal(child.step("d-24").frames, a.frames)


def test_same_seed_same_frames_other_seed_other_frames(world, image):
    def run(seed):
        s = world.start(image, prompt=PROMPT, seed=seed)
        return np.concatenate([s.step("w-24").frames, s.step("dw-24").frames])

    first = run(7)
    np.testing.assert_array_equal(first, run(7))
    assert not np.array_equal(first, run(8))


def test_session_render_image_does_not_advance(world, image):
    s = world.start(image, prompt=PROMPT, seed=9)
    still0 = s.render_image()  # before the first chunk: frame 8 of a rollout holding the identity pose
    assert still0.shape == (H, W, 3) and still0.dtype == np.uint8
    s.step("w-24")
    ref = s.fork()
    pose = s.pose.copy()
    pose[:3, 3] += [0.1, 0.0, 0.2]
    still = s.render_image(pose)
    assert still.shape == (H, W, 3) and still.dtype == np.uint8
    assert s.chunk_index == 1
    np.testing.assert_array_equal(s.step("w-24").frames, ref.step("w-24").frames)


def test_session_render_image_runs_one_new_latent_frame(world, image, monkeypatch):
    s = world.start(image, prompt=PROMPT, seed=9)
    frames_seen = []
    forward_chunk = world.transformer.forward_chunk

    def spy(latents, *args, **kwargs):
        frames_seen.append((latents.shape[2], kwargs["start_frame"], kwargs["write_cache"]))
        return forward_chunk(latents, *args, **kwargs)

    monkeypatch.setattr(world.transformer, "forward_chunk", spy)
    s.render_image()  # chunk 0: the pinned image latent + one new frame
    assert set(frames_seen) == {(2, 0, False)}
    s.step("w-24")
    frames_seen.clear()
    s.render_image()
    assert set(frames_seen) == {(1, 4, False)}


def test_positions_past_latent_frame_1024(world, image):
    """Cheap trick: after chunk 0 the counters are moved to chunk 400 (latent frame 1201) on a snapshot, as if
    the session had run for 20 minutes; positions come from absolute frame indices, so nothing caps them."""
    s = world.start(image, prompt=PROMPT, seed=10)
    s.step("w-24")
    snap = s.snapshot()
    cache = snap.cache
    cache.frames_written = 3 * 400 + 1
    cache.chunks_written = 400
    s.restore(Snapshot(cache=cache, decoder=snap.decoder, controller=snap.controller, chunk_index=400,
                       setup=snap.setup))
    for expected in (400, 401, 402):
        chunk = s.step("w-24")
        assert chunk.index == expected and chunk.latent_start == 3 * expected + 1 > 1024
        assert chunk.frame_indices[0] == 24 * expected + 1
        assert np.isfinite(chunk.latents.numpy()).all()


@pytest.mark.gpu
def test_cuda_bf16_repeatable_and_constant_memory(image):
    world = World.demo(height=H, width=W, seed=0, device="cuda", dtype=torch.bfloat16)

    def run():
        s = world.start(image, prompt=PROMPT, seed=11)
        frames = []
        for i in range(8):
            frames.append(s.step(("w-24", "dw-24")[i % 2]).frames)
            if i == 2:
                allocated, state_bytes = torch.cuda.memory_allocated(), s.state.nbytes()
        assert torch.cuda.memory_allocated() == allocated and s.state.nbytes() == state_bytes
        s.close()
        return np.concatenate(frames)

    np.testing.assert_array_equal(run(), run())


@pytest.mark.gpu
def test_cuda_decoder_graphs_give_the_eager_frames(image):
    """Sessions decode through CUDA-graph replays of the VAE decoder by default (``cuda_graph`` in
    ``sana_wm.vae.STREAMING_DEFAULTS``): frames bitwise equal to the eager decoder's, through ``step``, ``stream``,
    ``pipeline``, a fork (a new decoder: its own graphs) and a restored snapshot."""
    world = World.demo(height=H, width=W, seed=0, device="cuda", dtype=torch.bfloat16)

    def run(options):
        world.decoder_options = options
        s = world.start(image, prompt=PROMPT, seed=5)
        frames = [s.step("w-24").frames, s.step("dw-24").frames]
        frames += [np.concatenate([p.frames for p in s.stream("a-24")])]
        snap = s.snapshot()
        frames += [c.frames for c in s.pipeline(["w-24", "jw-24", "d-24"])]
        fork = s.fork()
        frames += [fork.step("w-24").frames, fork.step("w-24").frames]
        s.restore(snap)
        frames += [s.step("d-24").frames, s.step("w-24").frames]
        fork.close()
        s.close()
        return np.concatenate(frames)

    np.testing.assert_array_equal(run({"cuda_graph": True}), run({"cuda_graph": False}))


def test_next_chunk_noise_is_drawn_ahead(world, image):
    """A launched chunk draws the next chunk's noise while the device runs (``Session._chunk_noise`` then takes it):
    the same tensor ``chunk_noise`` gives; a restore to another chunk draws afresh, with the same frames."""
    s = world.start(image, prompt=PROMPT, seed=3)
    s.step("w-24")
    (c, shape), noise = s._noise_ahead
    assert c == 1 and torch.equal(noise, chunk_noise(3, 1, shape))
    snap = s.snapshot()
    first = s.step("dw-24").frames
    s.step("w-24")
    s.restore(snap)
    np.testing.assert_array_equal(s.step("dw-24").frames, first)
    s.close()
    assert s._noise_ahead is None


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_prompt_inputs_once_per_session_and_across_restores(world, image, device, monkeypatch):
    """A session derives its prompt's ``TextInputs`` (every block's cross-attention K/V) once, at start, not per
    chunk. A snapshot of a session with another prompt restores with that prompt: the frames equal that session's,
    and the first prompt's inputs (shared with forks and snapshots) are left as they were, although on CUDA the same
    chunk graphs, whose static copy of the prompt inputs is rewritten, run both."""
    if device == "cuda":
        world = World.demo(height=H, width=W, seed=0, device="cuda", dtype=torch.bfloat16)
    a = world.start(image, prompt=PROMPT, seed=2)
    b = world.start(image, prompt="a forest in fog", seed=2)
    setup_a = a.state.setup
    kv_a = setup_a.text_inputs.kv.clone()
    calls = []
    model = type(world.transformer)
    original = model.text_inputs
    monkeypatch.setattr(model, "text_inputs", lambda self, *args: calls.append(1) or original(self, *args))
    for _ in range(3):  # chunk 0 eager; chunks 1 and 2 capture their graphs on CUDA
        a.step("w-24")
    b.step("w-24")
    b.step("w-24")
    snap = b.snapshot()
    expected = np.concatenate([b.step("dw-24").frames, b.step("w-24").frames])
    a.restore(snap)
    got = np.concatenate([a.step("dw-24").frames, a.step("w-24").frames])
    np.testing.assert_array_equal(got, expected)
    assert calls == []
    assert torch.equal(setup_a.text_inputs.kv, kv_a)
    assert not torch.equal(snap.setup.text_inputs.kv, kv_a)
    a.close()
    b.close()
