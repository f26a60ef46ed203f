"""Streaming (forward_chunk + StreamingCache) == chunk-causal full-sequence forward, and the cache's contract.

The sampler's protocol per chunk: 4 read-only denoising passes (noisy chunk, clean history), then one cache-writing
pass on the clean chunk at t = 0. Each read-only velocity is compared with ``model(..., causal=True)`` on the prefix
(earlier chunks clean at t = 0, the current chunk noisy), CPU fp32.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_sana_wm import flip_and_shift, torch_chunk_sana_gdn
from test_transformer_parity import camera_inputs, randomize_weights

from sana_wm import SanaWMConfig, SanaWMTransformer, StreamingCache
from sana_wm.ops.gdn import gdn_main

REL_TOL = 1e-5
SCHEDULE = (1000, 960, 889, 727)
B, H, W, L = 1, 3, 4, 6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _model(seed: int = 0, **overrides) -> SanaWMTransformer:
    torch.manual_seed(seed)
    model = SanaWMTransformer(SanaWMConfig.preset("tiny", **overrides)).eval()
    randomize_weights(model, seed)
    return model


def _inputs(cfg: SanaWMConfig, num_chunks: int, seed: int = 0):
    T = cfg.first_chunk_size + cfg.chunk_size * (num_chunks - 1)
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randn(B, cfg.in_channels, T, H, W, generator=gen)
    noise = torch.randn(B, cfg.in_channels, T, H, W, generator=gen)
    text = torch.randn(B, L, cfg.caption_channels, generator=gen)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, L - 2 :] = False
    raymap, plucker = camera_inputs(B, T, H, W, seed)
    return clean, noise, text, mask, raymap, plucker


def _noisy(clean, noise, s, e, t):
    """History clean at t = 0, chunk [s, e) at timestep t (frame 0, the image latent, always clean)."""
    x = clean[:, :, :e].clone()
    sigma = t / 1000.0
    x[:, :, s:e] = (1 - sigma) * clean[:, :, s:e] + sigma * noise[:, :, s:e]
    timestep = torch.zeros(B, e)
    timestep[:, s:e] = t
    x[:, :, 0] = clean[:, :, 0]
    timestep[:, 0] = 0.0
    return x, timestep


def _chunk(model, cache, x, timestep, cond, s, e, write_cache=False):
    """``forward_chunk`` on frames [s, e) of whole-clip tensors; cond = (text, mask, raymap, plucker)."""
    text, mask, raymap, plucker = cond
    return model.forward_chunk(
        x[:, :, s:e],
        timestep[:, s:e],
        text,
        mask,
        raymap[:, s:e],
        plucker[:, :, s:e],
        cache=cache,
        start_frame=s,
        write_cache=write_cache,
    )


def _write(model, cache, clean, cond, s, e):
    """The cache-writing pass: the clean chunk [s, e) at t = 0."""
    _chunk(model, cache, clean, torch.zeros(B, clean.shape[2]), cond, s, e, write_cache=True)


def _stream_and_compare(model, num_chunks, schedule=SCHEDULE, seed=0):
    """Runs the sampler protocol; returns (max rel error over all read-only passes, nbytes after each chunk)."""
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, num_chunks, seed)
    cache = model.new_cache(B, height=H, width=W)
    worst, sizes = 0.0, []
    n = len(schedule)
    with torch.no_grad():
        for s, e in cfg.chunk_bounds(clean.shape[2]):
            xs, timesteps = zip(*(_noisy(clean, noise, s, e, t) for t in schedule))
            # the oracle: one chunk-causal forward over the prefix, the schedule's noise levels batched
            v_causal = model(
                torch.cat(xs),
                torch.cat(timesteps),
                text.expand(n, -1, -1),
                mask.expand(n, -1),
                raymap[:, :e].expand(n, -1, -1),
                plucker[:, :, :e].expand(n, -1, -1, -1, -1),
                causal=True,
            )
            for i, (x, timestep) in enumerate(zip(xs, timesteps)):
                v_stream = _chunk(model, cache, x, timestep, (text, mask, raymap, plucker), s, e)
                worst = max(worst, _rel(v_stream, v_causal[i : i + 1, :, s:e]))
            _write(model, cache, clean, (text, mask, raymap, plucker), s, e)
            sizes.append(cache.nbytes())
    return worst, sizes


def test_streaming_matches_chunk_causal_forward():
    model = _model(0)  # tiny preset: streaming variant, window_chunks=1 (sink + previous chunk)
    assert model.config.variant == "streaming" and model.config.window_chunks == 1
    worst, sizes = _stream_and_compare(model, num_chunks=6)
    assert worst <= REL_TOL, f"worst relative error {worst:.3e}"
    assert sizes[2] == sizes[5], "cache size grew between chunk 3 and chunk 6"
    assert len(set(sizes)) == 1


def test_streaming_window_two_chunks():
    model = _model(1, window_chunks=2)
    worst, sizes = _stream_and_compare(model, num_chunks=6, schedule=(1000, 727))
    assert worst <= REL_TOL, f"worst relative error {worst:.3e}"
    assert sizes[2] == sizes[5]


def test_streaming_window_zero_attends_sink_and_chunk_only():
    """window_chunks=0: softmax blocks keep only the sink; every later chunk attends [sink | itself]."""
    model = _model(8, window_chunks=0)
    worst, sizes = _stream_and_compare(model, num_chunks=4, schedule=(889,))
    assert worst <= REL_TOL, f"worst relative error {worst:.3e}"
    assert len(set(sizes)) == 1


def test_streaming_bidirectional_variant_with_camera_conv_tail():
    """The bidirectional variant keeps a cross-chunk camera K tail and the post-UCPE RMS downscale."""
    model = _model(2, variant="bidirectional")
    assert model.config.cam_conv_cross_chunk and model.config.post_ucpe_rms_downscale
    worst, _ = _stream_and_compare(model, num_chunks=4, schedule=(889,))
    assert worst <= REL_TOL, f"worst relative error {worst:.3e}"


@pytest.mark.parametrize("variant", ["streaming", "bidirectional"])
def test_short_read_only_chunk_matches_causal_forward_with_a_short_last_chunk(variant):
    """A read-only forward_chunk of fewer frames than a chunk (one latent frame for a still) == the chunk-causal
    forward over [history, those frames] whose last chunk is that short (the chunk is bidirectional inside, so it
    is not the first frames of a full chunk)."""
    model = _model(7, variant=variant)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 3, seed=7)
    cond = (text, mask, raymap, plucker)
    bounds = cfg.chunk_bounds(clean.shape[2])
    cache = model.new_cache(B, height=H, width=W)
    worst = 0.0
    with torch.no_grad():
        for c, (s, e) in enumerate(bounds):
            starts = [b[0] for b in bounds[: c + 1]]
            for n in range(1, e - s):
                x, timestep = _noisy(clean, noise, s, s + n, 889)
                v_causal = model(
                    x, timestep, text, mask, raymap[:, : s + n], plucker[:, :, : s + n], causal=True,
                    chunk_starts=starts,
                )
                v_stream = _chunk(model, cache, x, timestep, cond, s, s + n)
                assert v_stream.shape[2] == n
                worst = max(worst, _rel(v_stream, v_causal[:, :, s:]))
            _write(model, cache, clean, cond, s, e)
    assert worst <= REL_TOL, f"worst relative error {worst:.3e}"
    with pytest.raises(ValueError, match="causal=True"):
        model(x, timestep, text, mask, raymap[:, : x.shape[2]], plucker[:, :, : x.shape[2]], chunk_starts=[0])


def test_window_eviction_changes_late_chunks():
    """The softmax window is live: late chunks differ between window 1 and an unbounded window, early ones don't."""
    cfg = SanaWMConfig.preset("tiny")
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 5, seed=3)
    x, timestep = _noisy(clean, noise, 13, 16, 960)
    outs = []
    for window in (1, 10):
        model = _model(3, window_chunks=window)
        with torch.no_grad():
            outs.append(model(x, timestep, text, mask, raymap, plucker, causal=True))
    assert _rel(outs[0][:, :, :10], outs[1][:, :, :10]) < 1e-6  # chunks 0..2 see everything either way
    assert _rel(outs[0][:, :, 10:], outs[1][:, :, 10:]) > 1e-4


def test_causal_forward_ignores_the_future():
    model = _model(4)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 4, seed=4)
    x, timestep = _noisy(clean, noise, 7, 13, 500)
    with torch.no_grad():
        full = model(x, timestep, text, mask, raymap, plucker, causal=True)
        prefix = model(x[:, :, :10], timestep[:, :10], text, mask, raymap[:, :10], plucker[:, :, :10], causal=True)
        bidir = model(x, timestep, text, mask, raymap, plucker)
    assert _rel(prefix, full[:, :, :10]) < 1e-6
    assert _rel(bidir[:, :, :10], full[:, :, :10]) > 1e-3


def test_gdn_chunk_causal_matches_diffusers_scans():
    """gdn_main with chunk_starts == diffusers' forward scan over all frames + its reverse scan run per chunk."""
    gen = torch.Generator().manual_seed(5)
    b, h, T, S, D = 2, 2, 7, 5, 8
    q, k, q_rot, k_rot = (torch.rand(b, h, T, S, D, generator=gen) for _ in range(4))
    v = torch.randn(b, h, T, S, D, generator=gen)
    beta = torch.rand(b, h, T, S, generator=gen)
    g = 0.5 + 0.5 * torch.rand(b, h, T, generator=gen)
    starts = [0, 4]

    def flat(x):  # (b, h, T', S, D) -> diffusers (b, h, D, T'*S)
        return x.permute(0, 1, 4, 2, 3).reshape(b, h, D, -1)

    def scan(q, k, v, q_rot, k_rot, beta, g):
        return torch_chunk_sana_gdn(
            flat(q), flat(k), flat(v), flat(q_rot), flat(k_rot), beta, g, chunk_size=64, return_components=True
        )

    num_f, den_f = scan(q, k, v, q_rot, k_rot, beta, g)
    nums, dens = [], []
    for s, e in zip(starts, [*starts[1:], T]):

        def sl(x, s=s, e=e):
            return x[:, :, s:e]

        shifted = [flip_and_shift(sl(x), dim=2) for x in (k, v, k_rot)]
        n, d = scan(
            sl(q).flip(2),
            shifted[0],
            shifted[1],
            sl(q_rot).flip(2),
            shifted[2],
            flip_and_shift(sl(beta), dim=2),
            flip_and_shift(sl(g), dim=2, shift_val=1.0),
        )
        nums.append(n.view(b, h, D, e - s, S).flip(3))
        dens.append(d.view(b, h, 1, e - s, S).flip(3))
    num = num_f.view(b, h, D, T, S) + torch.cat(nums, dim=3)
    den = den_f.view(b, h, 1, T, S) + torch.cat(dens, dim=3)
    expected = (num / (den + 1e-8)).permute(0, 1, 3, 4, 2)

    got, _, _ = gdn_main(q, k, q_rot, k_rot, v, beta, g, chunk_starts=starts)
    assert _rel(got, expected) < 1e-5


def test_cache_snapshot_restore_reset_and_errors():
    model = _model(6)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 4, seed=6)
    cond = (text, mask, raymap, plucker)
    cache = model.new_cache(B, height=H, width=W)
    bounds = cfg.chunk_bounds(clean.shape[2])

    def write(c):
        _write(model, cache, clean, cond, *bounds[c])

    def read(c, target):
        s, e = bounds[c]
        return _chunk(model, target, *_noisy(clean, noise, s, e, 960), cond, s, e)

    with torch.no_grad():
        write(0)
        write(1)
        snap = cache.clone()
        assert snap.frames_written == 7 and snap.chunks_written == 2
        v2 = read(2, cache)
        assert torch.equal(read(2, cache), v2)  # read-only passes leave the cache untouched
        write(2)
        assert cache.frames_written == 10
        v3 = read(3, cache)
        assert torch.equal(read(2, snap), v2)  # the snapshot was not aliased
        cache.copy_(snap)
        write(2)
        assert torch.equal(read(3, cache), v3)

        with pytest.raises(ValueError, match="start_frame"):
            read(2, cache)
        for n, write_cache in ((2, True), (4, False)):  # writes take whole chunks; reads at most a chunk
            with pytest.raises(ValueError, match="latent frames"):
                model.forward_chunk(
                    clean[:, :, -n:],
                    torch.zeros(B, n),
                    text,
                    mask,
                    raymap[:, -n:],
                    plucker[:, :, -n:],
                    cache=cache,
                    start_frame=10,
                    write_cache=write_cache,
                )
        with pytest.raises(ValueError, match="does not match"):
            read(3, model.new_cache(B, height=H + 1, width=W))

        nbytes = cache.nbytes()
        cache.reset()
        assert cache.frames_written == 0 and cache.nbytes() == nbytes
        assert not cache.kv_valid.any()
        assert all(t.abs().sum() == 0 for entry in cache.blocks for t in entry.values())
        assert isinstance(cache, StreamingCache)


def test_valid_text_prefix_without_mask_equals_masked_padding():
    """A session feeds the valid prompt tokens with no mask (``engine.world.valid_text``): the same velocities as
    the padded prompt with its mask, streamed chunk by chunk (masked keys weigh exactly zero)."""
    from engine.world import valid_text

    model = _model(8)
    cfg = model.config
    clean, noise, text, mask, raymap, plucker = _inputs(cfg, 3, seed=8)
    short, none = valid_text(text, mask)
    assert none is None and short.shape[1] == L - 2
    padded, trimmed = (model.new_cache(B, height=H, width=W) for _ in range(2))
    with torch.no_grad():
        for s, e in cfg.chunk_bounds(clean.shape[2]):
            x, t = _noisy(clean, noise, s, e, 727)
            want = _chunk(model, padded, x, t, (text, mask, raymap, plucker), s, e)
            got = _chunk(model, trimmed, x, t, (short, None, raymap, plucker), s, e)
            assert _rel(got, want) < REL_TOL
            _write(model, padded, clean, (text, mask, raymap, plucker), s, e)
            _write(model, trimmed, clean, (short, None, raymap, plucker), s, e)


def test_valid_text_keeps_what_it_cannot_trim():
    from engine.world import valid_text

    text = torch.randn(2, 5, 8)
    holes = torch.tensor([[True, False, True, False, False]])
    batch = torch.ones(2, 5, dtype=torch.bool)
    for t, m in ((text[:1], holes), (text, batch), (text[:1], torch.zeros(1, 5, dtype=torch.bool))):
        got_text, got_mask = valid_text(t, m)
        assert got_text is t and got_mask is m
    got_text, got_mask = valid_text(text[:1], torch.ones(1, 5, dtype=torch.bool))
    assert got_mask is None and torch.equal(got_text, text[:1])
