"""Triton kernels of ``sana_wm.ops`` against their PyTorch references.

- ``gpu`` tests: every kernel on CUDA vs the CPU fp32 reference on fresh random inputs (bf16 within 2e-2, fp32
  within 1e-4), the dispatching import point, one graphed chunk == the eager sampler, the side-stream decode.
- CPU tests (need Triton installed, skipped otherwise): the kernels run through Triton's interpreter on small shapes
  that exercise the masked tiles (head dims 24, 48, 112), and compile for sm_90a offline (no GPU needed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sana_wm.ops import gdn as gdn_ref
from sana_wm.ops import qk_prep as prep_ref
from sana_wm.ops.rope import rope_frequencies, slice_rope_for_camera
from sana_wm.ops.ucpe import invert_se3, ray_matrices
from triton_interpreter import run_interpreted

ROOT = Path(__file__).resolve().parents[1]
TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def gdn_inputs(B, H, T, h, w, D, seed):
    """Realistic GDN inputs on the CPU in fp32 (made by the reference preparation)."""
    gen = torch.Generator().manual_seed(seed)
    S, C = h * w, H * D
    q, k, v = (torch.randn(B, T * S, C, generator=gen) for _ in range(3))
    wq, wk = 1 + 0.1 * torch.randn(C, generator=gen), 1 + 0.1 * torch.randn(C, generator=gen)
    rope = rope_frequencies(D, torch.arange(4, 4 + T), h, w)
    q, k, q_rot, k_rot = prep_ref.prep_gdn_qk(q, k, wq, wk, rope, heads=H, key_scale=(D * S) ** -0.5)
    v = v.view(B, T * S, H, D).transpose(1, 2)
    five = [x.reshape(B, H, T, S, D) for x in (q, k, q_rot, k_rot, v)]
    beta = torch.sigmoid(torch.randn(B, H, T, S, generator=gen))
    g = 0.6 + 0.39 * torch.rand(B, H, T, generator=gen)
    return five, beta, g, 0.05 * torch.randn(B, H, D, D, generator=gen), 0.1 * torch.rand(B, H, D, generator=gen)


def prep_inputs(B, T, h, w, H, D, seed):
    gen = torch.Generator().manual_seed(seed)
    C = H * D
    q, k, v = (torch.randn(B, T * h * w, C, generator=gen) for _ in range(3))
    wq, wk = 1 + 0.1 * torch.randn(C, generator=gen), 1 + 0.1 * torch.randn(C, generator=gen)
    rope = rope_frequencies(D, torch.arange(4, 4 + T), h, w)
    rot, tr = torch.linalg.qr(torch.randn(B, T, 3, 3, generator=gen))
    c2w = torch.zeros(B, T, 4, 4)
    c2w[..., :3, :3] = rot * torch.sign(torch.diagonal(tr, dim1=-2, dim2=-1)).unsqueeze(-2)
    c2w[..., :3, 3] = torch.randn(B, T, 3, generator=gen)
    c2w[..., 3, 3] = 1
    raymap = torch.cat([c2w.reshape(B, T, 16), torch.tensor([0.8 * w, 0.8 * w, w / 2, h / 2]).expand(B, T, 4)], -1)
    ray = ray_matrices(raymap, h, w)
    beta = torch.sigmoid(torch.randn(B, T, h * w, H, generator=gen)).permute(0, 3, 1, 2)
    return (q, k, v, wq, wk), rope, slice_rope_for_camera(rope, D), ray.transpose(-1, -2), invert_se3(ray), beta


# ----------------------------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("B,H,T,h,w,starts", [(1, 20, 3, 22, 40, None), (2, 3, 7, 5, 9, [0, 4])])
def test_gdn_kernels_match_reference(dtype, B, H, T, h, w, starts):
    from sana_wm.ops.gdn_triton import gdn_cam_triton, gdn_main_triton

    (q, k, qr, kr, v), beta, g, skv, sz = gdn_inputs(B, H, T, h, w, 112, seed=T)
    want = gdn_ref.gdn_main(q, k, qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv, state_z=sz)
    got = gdn_main_triton(
        *(x.cuda().to(dtype) for x in (q, k, qr, kr, v)),
        beta.cuda().to(dtype),
        g.cuda(),
        chunk_starts=starts,
        state_kv=skv.cuda(),
        state_z=sz.cuda(),
    )
    for a, b in zip(got, want, strict=True):
        assert rel(a, b) <= TOL[dtype]
    want = gdn_ref.gdn_cam(qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv)
    got = gdn_cam_triton(
        *(x.cuda().to(dtype) for x in (qr, kr, v)),
        beta.cuda().to(dtype),
        g.cuda(),
        chunk_starts=starts,
        state_kv=skv.cuda(),
    )
    for a, b in zip(got, want, strict=True):
        assert rel(a, b) <= TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("downscale", [False, True])
def test_prep_kernels_match_reference(dtype, downscale):
    from sana_wm.ops.qk_prep_triton import (
        prep_camera_triton,
        prep_gdn_qk_triton,
        prep_softmax_qk_triton,
        ucpe_decode_triton,
    )

    H, D, h, w = 20, 112, 22, 40
    (q, k, v, wq, wk), rope, rope_cam, ray_q, ray_kv, beta = prep_inputs(1, 3, h, w, H, D, seed=1)
    ks = (D * h * w) ** -0.5
    cu = [x.cuda().to(dtype) for x in (q, k, v, wq, wk)]
    rc, rcc, rqc, rkc = rope.cuda(), rope_cam.cuda(), ray_q.cuda(), ray_kv.cuda()
    pairs = [
        (
            prep_gdn_qk_triton(cu[0], cu[1], cu[3], cu[4], rc, heads=H, key_scale=ks),
            prep_ref.prep_gdn_qk(q, k, wq, wk, rope, heads=H, key_scale=ks),
        ),
        (
            prep_softmax_qk_triton(cu[0], cu[1], cu[3], cu[4], rc, heads=H),
            prep_ref.prep_softmax_qk(q, k, wq, wk, rope, heads=H),
        ),
        (
            prep_camera_triton(
                *cu, rqc, rkc, rcc, heads=H, key_scale=ks, beta=beta.cuda().to(dtype), rms_downscale=downscale
            ),
            prep_ref.prep_camera(
                q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=beta, rms_downscale=downscale
            ),
        ),
        (
            prep_camera_triton(*cu, rqc, rkc, rcc, heads=H, rms_downscale=downscale)[:3],
            prep_ref.prep_camera(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, rms_downscale=downscale)[:3],
        ),
        (
            (ucpe_decode_triton(cu[2].unflatten(-1, (H, D)).transpose(1, 2), rqc, rcc),),
            (prep_ref.ucpe_decode(v.unflatten(-1, (H, D)).transpose(1, 2), ray_q, rope_cam),),
        ),
    ]
    for got, want in pairs:
        for a, b in zip(got, want, strict=True):
            assert rel(a, b) <= TOL[dtype]


def _temporal_conv_case(C: int, S: int, seed: int):
    """Channel-first h (1, C, 3, S), the frame before it (1, C, 1, S), a weight, ``h + conv([hist | h | 0])``."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(1, 3, C, S, generator=gen).permute(0, 2, 1, 3)
    hist = torch.randn(1, C, 1, S, generator=gen)
    w = torch.randn(C, C, 3, 1, generator=gen) / C**0.5
    want = h + torch.nn.functional.conv2d(torch.cat([hist, h, torch.zeros_like(hist)], 2), w)
    return h, hist, w, want


def _with_history(h: torch.Tensor, hist: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The GEMM temporal conv of channel-first h with the frame before it: its past tap (what the streaming cache
    keeps) added to the first frame, as the transformer does."""
    from sana_wm.ops.temporal_conv import ffn_temporal_conv, past_tap

    out = ffn_temporal_conv(h, w)
    out[:, :, :1] += past_tap(hist.permute(0, 2, 3, 1), w).permute(0, 3, 1, 2)
    return out


def test_temporal_conv_with_past_tap_matches_conv():
    """CPU fp32: the GEMM temporal conv plus the preceding frame's past tap equals the padded convolution."""
    from sana_wm.ops.temporal_conv import tap_major

    h, hist, w, want = _temporal_conv_case(48, 20, seed=1)
    assert rel(_with_history(h, hist, tap_major(w)), want) < 1e-6


@pytest.mark.gpu
def test_temporal_conv_gemm_matches_conv():
    from sana_wm.ops.temporal_conv import tap_major

    h, hist, w, want = _temporal_conv_case(2240, 880, seed=0)
    got = _with_history(h.cuda().bfloat16(), hist.cuda().bfloat16(), tap_major(w.cuda().bfloat16()))
    assert rel(got, want) <= 2e-2


@pytest.mark.gpu
def test_dispatch_uses_triton_on_cuda_and_reference_when_disabled():
    from sana_wm.ops import kernels as K

    (q, k, qr, kr, v), beta, g, skv, sz = gdn_inputs(1, 2, 3, 4, 6, 112, seed=3)
    args = [x.cuda() for x in (q, k, qr, kr, v, beta, g)]
    fast = K.gdn_main(*args, state_kv=skv.cuda(), state_z=sz.cuda())
    with K.use_triton(False):
        slow = K.gdn_main(*args, state_kv=skv.cuda(), state_z=sz.cuda())
    assert rel(fast[0], slow[0]) <= 1e-4 and not torch.equal(fast[0], slow[0])


@pytest.mark.gpu
def test_gdn_branches_side_by_side_equal_one_stream(monkeypatch):
    """The GDN blocks' main and camera branches (and the softmax blocks' two q/k preparations) on two streams give
    the bits of the same kernels on one stream, velocities and cache alike (inside CUDA graphs:
    test_chunk_graph_replays_equal_eager_chunks)."""
    from sana_wm import transformer
    from server import bench

    model = bench.build_transformer("tiny", "cuda", torch.bfloat16, seed=1)
    scene = bench.Scene(model, 64, 96, 1, torch.device("cuda"), torch.bfloat16, seed=1)

    def run():
        cache = model.new_cache(1, height=scene.h, width=scene.w)
        outs = []
        for c in range(3):
            raymap, plucker, start = scene.camera(c)
            latents = scene.noise(c).to(torch.bfloat16)
            t = torch.full((1, latents.shape[2]), 727.0, device="cuda")
            cond = (scene.text, scene.text_mask, raymap, plucker)
            outs.append(model.forward_chunk(latents, t, *cond, cache=cache, start_frame=start))
            model.forward_chunk(latents, t * 0, *cond, cache=cache, start_frame=start, write_cache=True)
        torch.cuda.synchronize()
        return outs + cache._tensors()

    with torch.no_grad():
        together = run()
        monkeypatch.setattr(transformer, "_side_by_side", lambda first, second, enabled=True: (first(), second()))
        apart = run()
    assert all(torch.equal(a, b) for a, b in zip(together, apart, strict=True))


@pytest.mark.gpu
def test_chunk_graph_replays_equal_eager_chunks():
    """Chunks 1..3 through ChunkGraphs == the eager sampler on a copy of the cache.

    Two captures: chunk 1 writes its K/V into its own ring slot (the window is filling), chunks 2 and 3 write the
    'current' slot and replay one graph.
    """
    from engine.graphs import ChunkGraphs
    from server import bench

    model = bench.build_transformer("tiny", "cuda", torch.float32, seed=0)
    scene = bench.Scene(model, 64, 96, 1, torch.device("cuda"), torch.float32, seed=0)
    graphs, eager = ChunkGraphs(model), ChunkGraphs(model, enabled=False)
    caches = [model.new_cache(1, height=scene.h, width=scene.w) for _ in range(2)]
    first = torch.randn(1, 16, 1, scene.h, scene.w, device="cuda")
    for c in range(4):
        raymap, plucker, start = scene.camera(c)
        outs = []
        for runner, cache in zip((graphs, eager), caches, strict=True):
            outs.append(
                runner.step(
                    scene.noise(c),
                    pinned=first if c == 0 else None,
                    text=scene.text,
                    text_mask=scene.text_mask,
                    raymap=raymap,
                    plucker=plucker,
                    cache=cache,
                    start_frame=start,
                ).clone()
            )
        assert rel(outs[0], outs[1]) <= 1e-5
    assert graphs.captures == 2 and caches[0].frames_written == caches[1].frames_written == 13


@pytest.mark.gpu
def test_frame_pipe_matches_inline_decode():
    from engine.graphs import FramePipe, frames_uint8
    from server import bench

    vae = bench.build_vae("tiny", "cuda", torch.float32)
    z = torch.randn(1, 16, 4, 2, 3, device="cuda")
    pipe = FramePipe(lambda dec, x: dec.decode(x), "cuda")
    ticket = pipe.submit(vae.streaming_decoder(), z, drop_first=True)
    want = frames_uint8(vae.streaming_decoder().decode(z)[:, :, 1:]).cpu().numpy()
    got = pipe.frames(ticket)
    assert got.shape == (1, 24, 64, 96, 3) and (got == want).all()


# ----------------------------------------------------------------------------------------------------------------
# CPU: Triton's interpreter and offline compilation
# ----------------------------------------------------------------------------------------------------------------

_INTERPRETED = """

    from test_kernels_gpu import gdn_inputs, prep_inputs, rel
    from sana_wm.ops import gdn as gdn_ref, qk_prep as prep_ref
    from sana_wm.ops.gdn_triton import gdn_cam_triton, gdn_main_triton
    from sana_wm.ops.qk_prep_triton import (
        prep_camera_triton, prep_gdn_qk_triton, prep_softmax_qk_triton, ucpe_decode_triton)

    torch.set_num_threads(1)
    worst = 0.0
    for B, H, T, h, w, D, starts in [(1, 2, 3, 3, 5, 112, None), (2, 1, 7, 2, 4, 48, [0, 4])]:
        (q, k, qr, kr, v), beta, g, skv, sz = gdn_inputs(B, H, T, h, w, D, seed=D)
        if D == 112:  # main branch, one segment, seeded states
            got = gdn_main_triton(q, k, qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv, state_z=sz)
            want = gdn_ref.gdn_main(q, k, qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv, state_z=sz)
        else:  # camera branch, two reverse segments, a strided v
            vs = v.transpose(3, 4).contiguous().transpose(3, 4)
            got = gdn_cam_triton(qr, kr, vs, beta, g, chunk_starts=starts, state_kv=skv)
            want = gdn_ref.gdn_cam(qr, kr, v, beta, g, chunk_starts=starts, state_kv=skv)
        worst = max(worst, *(rel(a, b) for a, b in zip(got, want)))
    H = 2
    for D in (112, 24):
        (q, k, v, wq, wk), rope, rope_cam, ray_q, ray_kv, beta = prep_inputs(2, 2, 3, 4, H, D, seed=D)
        ks = (D * 12) ** -0.5
        if D == 112:
            pairs = [(prep_gdn_qk_triton(q, k, wq, wk, rope, heads=H, key_scale=ks),
                      prep_ref.prep_gdn_qk(q, k, wq, wk, rope, heads=H, key_scale=ks)),
                     (prep_camera_triton(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=beta),
                      prep_ref.prep_camera(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks,
                                           beta=beta))]
        else:
            pairs = [(prep_softmax_qk_triton(q, k, wq, wk, rope, heads=H),
                      prep_ref.prep_softmax_qk(q, k, wq, wk, rope, heads=H)),
                     (prep_camera_triton(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks, beta=beta,
                                         rms_downscale=True),
                      prep_ref.prep_camera(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, key_scale=ks,
                                           beta=beta, rms_downscale=True)),
                     (prep_camera_triton(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H)[:3],
                      prep_ref.prep_camera(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H)[:3])]
        x = q.unflatten(-1, (H, D)).transpose(1, 2)  # (B, H, N, D), strided
        pairs.append(((ucpe_decode_triton(x, ray_q, rope_cam),), (prep_ref.ucpe_decode(x, ray_q, rope_cam),)))
        for got, want in pairs:
            worst = max(worst, *(rel(a, b) for a, b in zip(got, want)))

    # the whole tiny transformer, three streamed chunks (reads + cache writes): Triton kernels vs references
    import sana_wm
    from sana_wm.ops.kernels import use_triton

    torch.manual_seed(0)
    cfg = sana_wm.SanaWMConfig.preset("tiny")
    model = sana_wm.SanaWMTransformer(cfg).eval().prepare_inference()
    text, mask = torch.randn(1, 7, cfg.caption_channels), torch.arange(7)[None] < 5

    def stream(enabled):
        cache, start, outs = model.new_cache(1, height=2, width=3), 0, []
        with use_triton(enabled), torch.no_grad():
            for c in range(3):
                T = cache.expected_chunk_frames()
                gen = torch.Generator().manual_seed(c)
                lat = torch.randn(1, cfg.in_channels, T, 2, 3, generator=gen)
                c2w = torch.eye(4).repeat(1, T, 1, 1)
                c2w[..., :3, 3] = torch.randn(1, T, 3, generator=gen)
                raymap = torch.cat([c2w.reshape(1, T, 16), torch.tensor([2.0, 2.0, 1.5, 1.0]).expand(1, T, 4)], -1)
                plucker = torch.randn(1, cfg.chunk_plucker_channels, T, 2, 3, generator=gen)
                args = (text, mask, raymap, plucker)
                outs.append(model.forward_chunk(lat, torch.full((1, T), 500.0), *args, cache=cache, start_frame=start))
                model.forward_chunk(lat, torch.zeros(1, T), *args, cache=cache, start_frame=start, write_cache=True)
                start += T
        return outs

    worst = max(worst, *(rel(a, b) for a, b in zip(stream(True), stream(False))))
    print("WORST", worst)
    """


def test_kernels_in_triton_interpreter():
    pytest.importorskip("triton")
    numbers = run_interpreted(_INTERPRETED, timeout=600)
    worst = numbers[0]
    assert worst < 1e-5  # fp32 inputs: the kernels reproduce the references to rounding


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The GDN kernels and the beta discount compile to sm_90a cubins (no GPU needed); the q/k preparation and UCPE
    decode kernels: tests/test_qk_prep_speedup.py (with a spill check)."""
    pytest.importorskip("triton")
    from sm90 import compile_sm90

    from sana_wm.ops import gdn_triton as G
    from sana_wm.ops import qk_prep_triton as Q

    def compile_(fn, ptrs: dict, floats=(), num_warps=8, **constexprs):
        return compile_sm90(fn, ptrs, constexprs, floats=floats, options={"num_warps": num_warps})

    bf = "*bf16"
    f32 = "*fp32"
    gram_ptrs = {"ka_ptr": bf, "kz_ptr": bf, "v_ptr": bf, "be_ptr": bf, "gram_ptr": f32, "bsum_ptr": f32}
    compile_(G._gdn_gram_kernel, gram_ptrs, NJOBS=3, BLOCK_S=64, BLOCK_D=128, DOT_F32=False, ONES_COL=True)
    scan_ptrs = {
        n: f32
        for n in (
            "gram_ptr",
            "bsum_ptr",
            "g_ptr",
            "init_kv_ptr",
            "init_z_ptr",
            "work_ptr",
            "work_z_ptr",
            "rev_ptr",
            "rev_z_ptr",
        )
    } | {"seg_last_ptr": "*i32"}
    compile_(G._gdn_scan_kernel, scan_ptrs, NJOBS=3, HAS_Z=True, BLOCK_D=128, BLOCK_V=32, BLOCK_K=32)
    out_ptrs = {"qr_ptr": bf, "q_ptr": bf, "work_ptr": f32, "work_z_ptr": f32, "out_ptr": bf}
    compile_(G._gdn_out_kernel, out_ptrs, floats=("eps",), HAS_Z=True, BLOCK_S=64, BLOCK_D=128, DOT_F32=False)
    compile_(Q._beta_discount_kernel, {"beta_ptr": bf, "infl_ptr": f32, "out_ptr": bf}, num_warps=4, BLOCK_S=1024)
