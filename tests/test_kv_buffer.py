"""The softmax blocks' K/V buffer ``[sink | ring slots | current]`` (sana_wm/cache.py): layout and offsets per chunk,
no concatenation in the streamed attention, read-only passes that never touch committed data, constant size.
Streaming == chunk-causal numerics are in test_transformer_streaming.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_transformer_streaming import B, H, W, _chunk, _inputs, _model, _noisy, _write
from torch.utils._python_dispatch import TorchDispatchMode

from sana_wm import transformer
from sana_wm.transformer import SanaWMAttention



class _CountCats(TorchDispatchMode):
    """Counts ``aten.cat`` calls, except while ``paused`` (the reference q/k preparation's own RoPE / UCPE ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.cats = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.cats += func.overloadpacket is torch.ops.aten.cat and not self.paused
        return func(*args, **(kwargs or {}))

    def pausing(self, fn):
        def run(*args, **kwargs):
            self.paused = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.paused = False

        return run


def _outside_the_pass(cache) -> list[torch.Tensor]:
    """Every cache tensor, the softmax K/V without the tokens that the next chunk's passes may write (cloned): its
    own slot while the window fills, else the scratch slot after the ring. What a read-only pass must leave alone
    (all committed data, and unwritten slots)."""
    c, w = cache.chunks_written, cache.config.window_chunks
    a = 0 if c == 0 else cache.sink_tokens + (c - 1) * cache.slot_tokens if c <= w else cache.current_offset
    b = a + cache.expected_chunk_frames() * cache.tokens_per_frame
    out = []
    for entry in cache.blocks:
        for key, t in entry.items():  # "kv": (2, B, 2H, tokens, D)
            out += [t[..., :a, :].clone(), t[..., b:, :].clone()] if key == "kv" else [t.clone()]
    return out + [cache.kv_valid.clone()]


def test_layout_offsets_per_chunk():
    model = _model(0, window_chunks=2)
    cfg = model.config
    cache = model.new_cache(B, height=H, width=W)
    S = H * W
    sink, slot = cfg.first_chunk_size * S, cfg.chunk_size * S
    current = sink + 2 * slot
    assert (cache.sink_tokens, cache.slot_tokens, cache.current_offset) == (sink, slot, current)
    kv = cache.blocks[next(i for i in range(cfg.num_layers) if cfg.is_softmax_block(i))]["kv"]
    assert kv.shape == (2, B, 2 * cfg.num_heads, sink + 3 * slot, cfg.head_dim)  # sink | 2 ring slots | current

    clean, _, text, mask, raymap, plucker = _inputs(cfg, 5)
    expected = [  # (kv_offset, ring range the write pass copies `current` into) before each chunk
        (0, None),  # chunk 0 in place in the sink
        (sink, None),  # chunks 1, 2: in place in ring slots 1, 2 (the window fills)
        (sink + slot, None),
        (current, (sink, sink + slot)),  # from chunk 3 on: `current`, then into the oldest slot
        (current, (sink + slot, sink + 2 * slot)),
    ]
    with torch.no_grad():
        for (s, e), (offset, write_range) in zip(cfg.chunk_bounds(clean.shape[2]), expected, strict=True):
            assert cache.kv_offset() == offset and cache.write_token_range() == write_range
            _write(model, cache, clean, (text, mask, raymap, plucker), s, e)
    assert cache.kv_valid.all()


def test_window_zero_keeps_only_the_sink():
    model = _model(0, window_chunks=0)
    cache = model.new_cache(B, height=H, width=W)
    assert cache.kv_offset() == 0 and cache.write_token_range() is None
    cache.commit_chunk(cache.expected_chunk_frames())
    assert cache.kv_offset() == cache.current_offset == cache.sink_tokens
    assert cache.write_token_range() is None


def test_stream_softmax_attention_does_not_concatenate(monkeypatch):
    model = _model(3)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 3, seed=3)
    cond = (text, mask, raymap, plucker)
    counter, calls = _CountCats(), []
    stream = SanaWMAttention._softmax_stream

    def counted(self, *args, **kwargs):
        calls.append(args[6].mode)
        with counter:
            return stream(self, *args, **kwargs)

    monkeypatch.setattr(SanaWMAttention, "_softmax_stream", counted)
    for name in ("prep_softmax_qk", "prep_camera"):  # K/V concatenation is the question, not the references' RoPE
        monkeypatch.setattr(transformer, name, counter.pausing(getattr(transformer, name)))
    cache = model.new_cache(B, height=H, width=W)
    with torch.no_grad():
        for s, e in cfg.chunk_bounds(clean.shape[2]):
            _chunk(model, cache, *_noisy(clean, noise, s, e, 889), cond, s, e)
            _write(model, cache, clean, cond, s, e)
    softmax_blocks = sum(cfg.is_softmax_block(i) for i in range(cfg.num_layers))
    assert calls == ["stream"] * (softmax_blocks * 2 * 3)  # both branches at once, read + write pass, 3 chunks
    assert counter.cats == 0


@pytest.mark.parametrize("window_chunks", [1, 2])
def test_read_only_passes_write_only_their_own_tokens(window_chunks):
    model = _model(4, window_chunks=window_chunks)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 4, seed=4)
    cond = (text, mask, raymap, plucker)
    cache = model.new_cache(B, height=H, width=W)
    nbytes = cache.nbytes()
    with torch.no_grad():
        for s, e in cfg.chunk_bounds(clean.shape[2]):
            before = _outside_the_pass(cache)
            x, t = _noisy(clean, noise, s, e, 960)
            full = _chunk(model, cache, x, t, cond, s, e)
            _chunk(model, cache, x, t, cond, s, s + 1)  # a short read-only pass
            assert all(torch.equal(a, b) for a, b in zip(before, _outside_the_pass(cache), strict=True))
            assert torch.equal(_chunk(model, cache, x, t, cond, s, e), full)
            _write(model, cache, clean, cond, s, e)
            assert cache.nbytes() == nbytes


def test_clone_copy_and_reset_keep_the_layout():
    model = _model(5)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 3, seed=5)
    cond = (text, mask, raymap, plucker)
    cache = model.new_cache(B, height=H, width=W)
    nbytes = cache.nbytes()
    with torch.no_grad():
        bounds = cfg.chunk_bounds(clean.shape[2])
        for s, e in bounds[:2]:
            _write(model, cache, clean, cond, s, e)
        snap = cache.clone()
        s, e = bounds[2]
        v = _chunk(model, cache, *_noisy(clean, noise, s, e, 727), cond, s, e)
        _write(model, cache, clean, cond, s, e)
        cache.copy_(snap)
        assert torch.equal(_chunk(model, cache, *_noisy(clean, noise, s, e, 727), cond, s, e), v)
        assert (snap.nbytes(), cache.nbytes(), cache.reset().nbytes()) == (nbytes,) * 3
        assert cache.kv_offset() == 0


@pytest.mark.gpu
def test_micro_kv_buffer_matches_concatenation_and_takes_the_flash_path():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import micro_kv

    result = micro_kv.run("cuda", reps=3)
    assert result["max_abs_diff"] == 0 and result["filling_rel_err"] < 2e-2
    assert "new_flash_only_ms" in result, result.get("new_flash_only_error")


def test_graph_passes_with_precomputed_conditioning_equal_the_sampler():
    """``ChunkGraphs``' passes read every step's timestep conditioning computed once per chunk shape; the eager
    sampler embeds the timesteps in every pass. On the CPU, run the graph bodies directly: the same clean latents and
    the same cache as ``StreamingSampler`` for every chunk, bit for bit."""
    from engine.graphs import ChunkGraphs

    model = _model(7)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 3, seed=7)
    graphs = ChunkGraphs(model, (1000, 727, 0))
    cache, mirror = model.new_cache(B, height=H, width=W), model.new_cache(B, height=H, width=W)
    with torch.no_grad():
        for s, e in cfg.chunk_bounds(clean.shape[2]):
            cond = {"text": text, "text_mask": mask, "raymap": raymap[:, s:e], "plucker": plucker[:, :, s:e]}
            want = graphs.sampler.denoise(noise[:, :, s:e], pinned=None, cache=cache, start_frame=s, **cond)
            graphs.sampler.write_cache(want, cache=cache, start_frame=s, **cond)
            inputs = graphs._inputs(raymap[:, s:e], plucker[:, :, s:e], s, model.text_inputs(text, mask), mirror)
            graphs._conditionings(B, e - s, clean.device)
            out = torch.empty_like(want)
            frames = graphs._denoise_body(noise[:, :, s:e], inputs, mirror, out, s)
            assert torch.equal(out, want)
            graphs._write_body(out, frames, mirror, s)
            mirror.commit_chunk(e - s)
            assert all(torch.equal(a, b) for a, b in zip(cache._tensors(), mirror._tensors(), strict=True))
    assert sorted(graphs._conds) == sorted((t, B, T) for T in (3, 4) for t in (0, 727, 1000))
    timestep = torch.zeros(B, 2)
    with pytest.raises(ValueError, match="conditioning is for"):
        model.run_blocks(clean[:, :, :3], model.conditioning(timestep), frames, None, False)


def test_graph_runner_inputs_drive_the_blocks_like_forward_chunk():
    """``ChunkGraphs`` copies each chunk's camera, frame positions and prompt into static inputs (with the K/V offset
    and write range), computes the transformer's per-chunk inputs from them inside its denoise graph and replays
    ``run_blocks`` on those; on the CPU, run the same code directly: == ``forward_chunk`` for every chunk, read-only
    and cache-writing, while the window fills and after."""
    from engine.graphs import ChunkGraphs

    model = _model(6, window_chunks=2)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 4, seed=6)
    graphs = ChunkGraphs(model, (1000, 0))
    cache, mirror = model.new_cache(B, height=H, width=W), model.new_cache(B, height=H, width=W)
    with torch.no_grad():
        for s, e in cfg.chunk_bounds(clean.shape[2]):
            prompt = model.text_inputs(text, mask)
            frames = graphs._frames(graphs._inputs(raymap[:, s:e], plucker[:, :, s:e], s, prompt, mirror))
            x, t = _noisy(clean, noise, s, e, 727)
            want = _chunk(model, cache, x, t, (text, mask, raymap, plucker), s, e)
            assert torch.equal(model.run_blocks(x[:, :, s:e], t[:, s:e], frames, mirror, False), want)
            _write(model, cache, clean, (text, mask, raymap, plucker), s, e)
            model.run_blocks(clean[:, :, s:e], torch.zeros(B, e - s), frames, mirror, True)
            mirror.commit_chunk(e - s)
            assert all(torch.equal(a, b) for a, b in zip(cache._tensors(), mirror._tensors(), strict=True))


def test_graph_static_inputs_take_each_chunk_and_copy_a_prompt_once():
    """``ChunkGraphs``' static inputs own their tensors; ``update`` copies a chunk's camera and positions every
    time and the prompt's inputs only when the prompt changes (a session's are copied once, at the capture)."""
    from engine.graphs import ChunkGraphs

    model = _model(8)
    _, _, text, mask, raymap, plucker = _inputs(model.config, 3, seed=8)
    first, second = model.text_inputs(text, mask), model.text_inputs(2 * text, mask)
    graphs, cache = ChunkGraphs(model), model.new_cache(B, height=H, width=W)
    inputs = graphs._inputs(raymap[:, 4:7], plucker[:, :, 4:7], 4, first, cache)
    assert inputs.prompt.kv is not first.kv and torch.equal(inputs.prompt.kv, first.kv)
    assert inputs.positions.tolist() == [4, 5, 6] and torch.equal(inputs.raymap, raymap[:, 4:7])
    assert (inputs.kv_offset, inputs.write_tokens) == (cache.kv_offset(), cache.write_token_range())
    inputs.update(raymap[:, 7:10], plucker[:, :, 7:10], 7, second)
    assert inputs.positions.tolist() == [7, 8, 9] and torch.equal(inputs.plucker, plucker[:, :, 7:10])
    assert torch.equal(inputs.prompt.kv, second.kv) and torch.equal(inputs.prompt.y_mask, second.y_mask)
    inputs.prompt.kv.zero_()
    inputs.update(raymap[:, 4:7], plucker[:, :, 4:7], 4, second)  # the same prompt: not copied again
    assert not inputs.prompt.kv.any() and inputs.positions.tolist() == [4, 5, 6]
    inputs.update(raymap[:, 4:7], plucker[:, :, 4:7], 4, first)
    assert torch.equal(inputs.prompt.kv, first.kv)
