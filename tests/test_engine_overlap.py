"""Decode overlap: the chunk split into denoise + cache write, decode parts, ``Session.pipeline``; CPU (sequential,
the same frames as ``step``) and CUDA (side-stream decode == inline decode, bitwise)."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")  # the demo world's prompt encoder

import controllers
from engine import World
from engine.graphs import ChunkGraphs
from engine.session import decode_parts

H, W = 64, 64
PROMPT = "a harbour at dusk"
INPUTS = ("w-24", "dw-12,none-12", "a-24", "jw-24")  # CUDA: chunk 0 eager, chunk 1 its own graphs, 2-3 replay a pair


@pytest.fixture(scope="module")
def world():
    return World.demo(height=H, width=W, seed=0)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)


def test_decode_parts():
    assert decode_parts(0, 4) == [(0, 2, True), (2, 3, False), (3, 4, False)]
    assert decode_parts(5, 3) == [(0, 1, False), (1, 2, False), (2, 3, False)]
    assert decode_parts(0, 4, per_part=3) == [(0, 4, True)]
    assert decode_parts(2, 3, per_part=3) == [(0, 3, False)]


def test_denoise_and_write_are_paired(world):
    graphs = ChunkGraphs(world.transformer, enabled=False)
    cache = world.transformer.new_cache(1, height=2, width=2)
    with pytest.raises(RuntimeError, match="no denoised chunk"):
        graphs.write_cache(torch.zeros(1, 16, 4, 2, 2), cache)
    raymap, plucker = controllers.camera_conditioning(np.repeat(np.eye(4)[None], 25, 0), [50.0, 50, 32, 32],
                                                      (H, W), 0, 4)
    text, mask = world.encode_prompt(PROMPT)
    cond = {"text": text, "text_mask": mask, "raymap": raymap[None], "plucker": plucker[None], "cache": cache,
            "start_frame": 0}
    noise = torch.randn(1, 16, 4, 2, 2)
    latents = graphs.denoise(noise, pinned=None, **cond)
    with pytest.raises(RuntimeError, match="was not written"):
        graphs.denoise(noise, pinned=None, **cond)
    graphs.write_cache(latents, cache)
    assert cache.frames_written == 4


def test_pipeline_equals_steps_and_timings_cpu(world, image):
    a, b = world.start(image, PROMPT, seed=4), world.start(image, PROMPT, seed=4)
    poses = controllers.LiveController("sana-wm-v2").poses_for_actions("d-24")
    items = ["w-24", {"keys": [{"w", "a"}] * 24}, poses]
    got = list(a.pipeline(items))
    want = [b.step("w-24"), b.step(keys=[{"w", "a"}] * 24), b.step(poses=poses)]
    for x, y in zip(got, want, strict=True):
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.poses, y.poses)
        np.testing.assert_array_equal(x.frame_indices, y.frame_indices)
        assert x.index == y.index and torch.equal(x.latents, y.latents)
        assert {"camera", "denoise", "cache_write", "decode", "first_part", "total"} <= set(x.timings)
    # a pipeline closed early leaves the session consistent (every launched chunk fully decoded)
    stream = a.pipeline(iter(["none-24", "w-24"]))
    next(stream)
    stream.close()
    b.step("none-24")
    np.testing.assert_array_equal(a.step("w-24").frames, b.step("w-24").frames)
    # streamed parts: 8 frames each, stage timings so far (the decode precedes the cache write: parts leave it out)
    parts = list(a.stream("d-24"))
    assert [len(p.frames) for p in parts] == [8, 8, 8]
    assert all(p.timings["total"] >= p.timings["first_part"] > 0 for p in parts)
    assert parts[0].timings["first_part"] == parts[0].timings["total"]
    assert not any("cache_write" in p.timings for p in parts)


def _cuda_world():
    return World.demo(height=H, width=W, seed=0, device="cuda", dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("decoder_options", [{"cuda_graph": False}, {}], ids=["eager-decoder", "graphed-decoder"])
def test_cuda_overlapped_session_equals_sequential(image, decoder_options):
    """Side-stream decode (while the cache-writing pass runs) == inline decode after it, bitwise; streamed parts of
    an overlapped chunk do not wait for the cache write; an abandoned stream leaves the state consistent. With the
    decoder eager and with its own CUDA graphs (the default: captured and replayed on the side stream)."""
    world = _cuda_world()
    world.decoder_options = decoder_options

    def run(overlap: bool):
        world.overlap_decode = overlap
        s = world.start(image, PROMPT, seed=5)
        parts = []
        for actions in INPUTS:
            streamed = list(s.stream(actions))
            assert [len(p.frames) for p in streamed] == [8, 8, 8]
            assert "cache_write" not in streamed[0].timings  # queued after the first part's decode
            parts += [p.frames for p in streamed]
        stream = s.stream("w-24")
        next(stream)
        stream.close()  # abandoned after its first part
        snap = s.snapshot()
        last = s.step("d-24")
        assert {"camera", "denoise", "cache_write", "decode", "first_part", "total"} <= set(last.timings)
        s.restore(snap)
        np.testing.assert_array_equal(s.step("d-24").frames, last.frames)
        assert s._frame_pipe().overlapped == overlap
        s.close()
        return np.concatenate(parts + [last.frames])

    sequential = run(False)
    overlapped = run(True)
    np.testing.assert_array_equal(overlapped, sequential)


@pytest.mark.gpu
def test_cuda_render_path_pipelined_equals_sequential(image):
    """render_path queues chunk N+1 before chunk N's frames are collected; frames == a sequential session's."""
    world = _cuda_world()
    c2w = controllers.actions_to_poses("w-30,d-30,a-10", mapping="sana-wm-v2")  # 71 poses: 3 chunks, last padded
    world.overlap_decode = True
    frames = world.render_path(image, PROMPT, c2w, seed=2, progress=False)
    world.overlap_decode = False
    assert np.array_equal(world.render_path(image, PROMPT, c2w, seed=2, progress=False), frames)
    session = world.start(image, PROMPT, seed=2)
    padded = np.concatenate([c2w[1:], np.broadcast_to(c2w[-1], (2, 4, 4))])
    ref = np.concatenate([session.step(poses=padded[i : i + 24]).frames for i in (0, 24, 48)])
    np.testing.assert_array_equal(frames, ref[:70])
    world.overlap_decode = True
    s = world.start(image, PROMPT, seed=2)
    got = list(s.pipeline(padded[i : i + 24] for i in (0, 24, 48)))  # the pipeline's chunks carry their timings
    assert [c.index for c in got] == [0, 1, 2] and all(c.timings["total"] > 0 for c in got)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in got]), ref)


@pytest.mark.gpu
def test_cuda_chunk_has_no_host_synchronisation(image):
    """A steady chunk's transformer work (chunk inputs, denoise graph, cache-write graph, cache bookkeeping) and the
    queuing of its first decode part never block the host (CUDA's sync debug mode raises on a synchronising call)."""
    world = _cuda_world()
    s = world.start(image, PROMPT, seed=3)
    for actions in INPUTS:  # chunk 0 eager, then the graphs are captured and replayed
        s.step(actions)
    new_poses, after = s._next_poses("w-24", None, None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        launched = s._launch(new_poses, after)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    chunk = s._drain(launched)
    assert chunk.frames.shape == (24, H, W, 3)
    s.close()
