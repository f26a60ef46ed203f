"""``SanaWMTransformer.prepare_inference`` merges each block's input projections (qkv | q/k/v_cam | output_gate |
beta) into one GEMM with the parameters as views, and the Triton prep kernels write softmax K/V straight into the
K/V cache slot (``k_out`` / ``v_out``, raw main-branch v through ``COPY_V``).

CPU fp32: merged == separate linears, state dict unchanged, loading after the merge, streaming == chunk-causal with
the merged layout; the kernels' new outputs through Triton's interpreter (tiny shapes); CUDA (``gpu``): full size
bf16 merged vs separate, with the projection GEMM timings printed (``pytest -s -m gpu``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_transformer_streaming import REL_TOL, _inputs, _model, _rel, _stream_and_compare

from sana_wm import SanaWMTransformer
from triton_interpreter import run_interpreted

ROOT = Path(__file__).resolve().parents[1]
MERGE_TOL = 1e-6  # fp32: the merged GEMM only changes how the columns are grouped


def _forwards(model: SanaWMTransformer, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(bidirectional, chunk-causal) velocities of a 7-frame clip."""
    clean, noise, text, mask, raymap, plucker = _inputs(model.config, 2, seed)
    timestep = torch.full((1, clean.shape[2]), 640.0)
    x = 0.4 * clean + 0.6 * noise
    with torch.no_grad():
        return (
            model(x, timestep, text, mask, raymap, plucker),
            model(x, timestep, text, mask, raymap, plucker, causal=True),
        )


def _storage_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind the parameters (views of one merged tensor count once)."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def _assert_merged(model: SanaWMTransformer) -> None:
    for block in model.blocks:
        attn = block.attn
        weight, bias = attn._merged
        assert attn._merged_intact()
        assert weight.shape[0] % 64 == 0 and weight.dtype == attn.qkv.weight.dtype
        a = 0
        for lin in attn._input_linears():
            assert lin.weight.data_ptr() == weight[a].data_ptr()
            if lin.bias is not None:
                assert lin.bias.data_ptr() == bias[a:].data_ptr()
            a += lin.out_features


@pytest.mark.parametrize("variant", ["streaming", "bidirectional"])
def test_merged_forward_equals_separate_linears(variant):
    model = _model(0, variant=variant)
    want = _forwards(model)
    model.prepare_inference()
    _assert_merged(model)
    got = _forwards(model)
    for a, b in zip(got, want):
        assert _rel(a, b) <= MERGE_TOL


def test_prepare_inference_keeps_the_state_dict_and_holds_no_second_copy():
    model = _model(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bytes_before = _storage_bytes(model)
    model.prepare_inference().prepare_inference()  # idempotent
    _assert_merged(model)
    after = model.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        assert after[name].shape == value.shape and after[name].dtype == value.dtype, name
        assert torch.equal(after[name], value), name
    # only the zero rows are new: qkv's bias rows and the padding to 64 rows
    extra = 0
    for block in model.blocks:
        weight, bias = block.attn._merged
        linears = block.attn._input_linears()
        rows = sum(lin.out_features for lin in linears)
        assert weight.shape[0] - rows < 64
        extra += weight.numel() + bias.numel() - sum(p.numel() for lin in linears for p in lin.parameters())
    assert _storage_bytes(model) == bytes_before + extra * 4


def test_load_state_dict_after_prepare_inference():
    """Loading copies into the views (the merged GEMM sees the new weights); ``assign=True`` and ``.to()`` re-merge."""
    model = _model(2).prepare_inference()
    other = _model(3)
    want = _forwards(other)
    state = other.state_dict()
    model.load_state_dict(state)
    _assert_merged(model)
    for a, b in zip(_forwards(model), want):
        assert _rel(a, b) <= MERGE_TOL

    model = _model(2).prepare_inference()
    model.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    _assert_merged(model)
    for a, b in zip(_forwards(model), want):
        assert _rel(a, b) <= MERGE_TOL

    model = model.to(torch.float64)
    _assert_merged(model)
    assert model.blocks[0].attn._merged[0].dtype == torch.float64
    clean, noise, text, mask, raymap, plucker = _inputs(model.config, 2, 0)
    timestep = torch.full((1, clean.shape[2]), 640.0)
    with torch.no_grad():
        got = model(
            (0.4 * clean + 0.6 * noise).double(), timestep, text.double(), mask, raymap.double(), plucker.double()
        )
    assert _rel(got.float(), want[0]) <= MERGE_TOL


@pytest.mark.parametrize("window", [1, 2])
def test_streaming_matches_chunk_causal_with_merged_layout(window):
    model = _model(4, window_chunks=window).prepare_inference()
    worst, sizes = _stream_and_compare(model, num_chunks=4, schedule=(1000, 727))
    assert worst <= REL_TOL, f"worst relative error {worst:.3e}"
    assert len(set(sizes)) == 1


# ----------------------------------------------------------------------------------------------------------------
# Triton interpreter: the prep kernels' cache-slot outputs
# ----------------------------------------------------------------------------------------------------------------

_INTERPRETED = """

    from test_kernels_gpu import prep_inputs, rel
    from sana_wm.ops import qk_prep as ref
    from sana_wm.ops.qk_prep_triton import prep_camera_triton, prep_softmax_qk_triton

    torch.set_num_threads(1)
    worst, B, H, D = 0.0, 2, 2, 24
    (q, k, v, wq, wk), rope, rope_cam, ray_q, ray_kv, _ = prep_inputs(B, 2, 3, 3, H, D, seed=5)
    N, C = q.shape[1], H * D
    # strided row views of one packed projection, as the merged GEMM produces them (row stride 7C + pad)
    packed = torch.randn(B, N, 7 * C + 16)
    packed[..., :C], packed[..., 2 * C : 3 * C], packed[..., 5 * C : 6 * C] = q, k, v
    q, k, v = packed[..., :C], packed[..., 2 * C : 3 * C], packed[..., 5 * C : 6 * C]
    a, L = 7, 7 + N + 5  # the pass's slot [a, a + N) inside a (B, H, L, D) buffer

    def buffers():
        return torch.full((B, H, L, D), 7.0), torch.full((B, H, L, D), 7.0)

    def check(buf, want):
        assert torch.all(buf[:, :, :a] == 7.0) and torch.all(buf[:, :, a + N :] == 7.0)  # nothing outside the slot
        return rel(buf[:, :, a : a + N], want)

    kb, vb = buffers()
    k_slot, v_slot = kb[:, :, a : a + N], vb[:, :, a : a + N]
    q_got, k_got = prep_softmax_qk_triton(q, k, wq, wk, rope, heads=H, k_out=k_slot, v=v, v_out=v_slot)
    q_want, k_want = ref.prep_softmax_qk(q, k, wq, wk, rope, heads=H)
    assert k_got is k_slot
    worst = max(worst, rel(q_got, q_want), check(kb, k_want), check(vb, v.view(B, N, H, D).transpose(1, 2)))
    # k_out alone: v not copied
    kb, vb = buffers()
    q_got, _ = prep_softmax_qk_triton(q, k, wq, wk, rope, heads=H, k_out=kb[:, :, a : a + N])
    worst = max(worst, rel(q_got, q_want), check(kb, k_want))
    assert torch.all(vb == 7.0)

    for downscale in (False, True):
        kb, vb = buffers()
        k_slot, v_slot = kb[:, :, a : a + N], vb[:, :, a : a + N]
        got = prep_camera_triton(
            q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, rms_downscale=downscale, k_out=k_slot, v_out=v_slot
        )
        want = ref.prep_camera(q, k, v, wq, wk, ray_q, ray_kv, rope_cam, heads=H, rms_downscale=downscale)
        assert got[1] is k_slot and got[2] is v_slot and got[3] is None
        worst = max(worst, rel(got[0], want[0]), check(kb, want[1]), check(vb, want[2]))
    try:
        prep_softmax_qk_triton(q, k, wq, wk, rope, heads=H, k_out=torch.empty(B, H, N + 1, D))
    except ValueError as err:
        assert "k_out must have shape" in str(err)
    else:
        raise AssertionError("a wrongly shaped k_out was accepted")

    print("WORST", worst)
    """


def test_prep_kernels_write_cache_slots_in_triton_interpreter():
    pytest.importorskip("triton")
    numbers = run_interpreted(_INTERPRETED, timeout=600)
    worst = numbers[0]
    assert worst < 1e-5  # fp32: the kernels reproduce the references to rounding
    # (a merged tiny model streamed through all kernels: test_kernels_gpu.py::test_kernels_in_triton_interpreter)


def test_copy_v_variant_compiles_for_sm90_without_spills():
    """The new main-branch variant (softmax prep + raw v copied into the cache slot) compiles for sm_90a; where
    Triton ships cuobjdump, without local memory."""
    pytest.importorskip("triton")
    from sm90 import compile_sm90, resource_usage
    from test_qk_prep_speedup import PREP_POINTERS

    from sana_wm.ops import qk_prep_triton as Q

    constexprs = {
        "MODE": 0,
        "RELU": False,
        "PLAIN": False,
        "DOWNSCALE": False,
        "INFLATION": False,
        "COPY_V": True,
        "OUT_STRIDES": True,
    }
    constexprs |= {"BLOCK_N": Q._BLOCK_N, "BLOCK_D": 128}
    usage = resource_usage(compile_sm90(Q._prep_kernel, PREP_POINTERS, constexprs, floats=("key_scale",)))
    assert usage is None or (usage["LOCAL"] == 0 and usage["STACK"] == 0), usage


# ----------------------------------------------------------------------------------------------------------------
# CUDA, full size
# ----------------------------------------------------------------------------------------------------------------


def _stream_full(model: SanaWMTransformer, scene) -> list[torch.Tensor]:
    """Chunks 0-2 (read + write pass: sink, filling ring slot, `current` committed to the ring) and chunk 3 (read) of
    a ``server.bench.Scene``: the read velocities + the softmax blocks' K/V buffers."""
    cfg = model.config
    cache = model.new_cache(1, height=scene.h, width=scene.w)
    outs = []
    with torch.no_grad():
        for c in range(4):
            raymap, plucker, start = scene.camera(c)
            lat = scene.noise(c).to(scene.dtype)
            t = torch.full((1, lat.shape[2]), 700.0, device=scene.device)
            args = (lat, t, scene.text, scene.text_mask, raymap, plucker)
            outs.append(model.forward_chunk(*args, cache=cache, start_frame=start))
            if c < 3:
                model.forward_chunk(lat, 0 * t, *args[2:], cache=cache, start_frame=start, write_cache=True)
    kv = [t for i, e in enumerate(cache.blocks) if cfg.is_softmax_block(i) for k, t in e.items() if k != "ffn_past"]
    return outs + kv


def _time_us(fn, reps: int = 20) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


@pytest.mark.gpu
def test_merged_projections_full_size_bf16():
    """streaming-2.6b, random weights, bf16, 704 x 1280: merged == separate projections; streamed chunks (softmax
    K/V written by the prep kernels into the cache) == the separate-linears path with the reference copies."""
    from server import bench

    dev, bf = torch.device("cuda"), torch.bfloat16
    model = bench.build_transformer("streaming-2.6b", dev, bf, seed=0)
    scene = bench.Scene(model, 704, 1280, 1, dev, bf, seed=0)
    cfg = model.config
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 3 * 880, cfg.hidden_size, device=dev, dtype=bf, generator=gen)
    attn = model.blocks[0].attn
    with torch.no_grad():
        separate = attn._project(x)
        t_separate = _time_us(lambda: attn._project(x))
        want = _stream_full(model, scene)
        allocated = torch.cuda.memory_allocated()
        model.prepare_inference()
        assert torch.cuda.memory_allocated() - allocated < 16 * 2**20  # padding rows only: no second weight copy
        merged = attn._project(x)
        t_merged = _time_us(lambda: attn._project(x))
        got = _stream_full(model, scene)
    print(f"\ninput projections of one block at M=2640: separate {t_separate:.1f} us, merged {t_merged:.1f} us")
    for a, b in zip(merged, separate):
        if b is not None:
            assert _rel(a.float(), b.float()) <= 4e-3  # one bf16 rounding of the same GEMM outputs
    for a, b in zip(got, want):
        assert _rel(a.float(), b.float()) <= 1e-2
