"""Triton frame-wise Gated DeltaNet: same contract as :mod:`sana_wm.ops.gdn` (``gdn_main`` / ``gdn_cam``).

Three kernels per call (NVlabs' "chunkwise" split, written anew):

- **gram** (grid ``B*H*T`` frames x jobs): per frame the D x D products ``P = K^T diag(beta) K`` and
  ``A = K^T diag(beta) V`` (and for the main branch's normaliser ``P^z`` and ``b^z = K^T beta`` on the unrotated
  keys), reduced over the frame's S tokens in fp32 (bf16/fp16 tensor-core dots, IEEE fp32 for fp32 inputs);
- **scan** (grid ``B*H`` x value-column tiles): the fp32 recurrence ``M_t = g_t (M_{t-1} - P_t M_{t-1}) + A_t``
  forward over all frames from the seed state, then the exclusive reverse recurrence inside each segment, added
  in place, so that each frame holds ``M_t + R_t``; the normaliser vector rides along in column tile 0;
- **out** (grid frames x token blocks): ``num = Q_hat (M + R)``, ``den = Q (z + r)``, ``num / (den + eps)``
  (camera: ``num`` only).

Inputs may be strided views (last dim contiguous); ``beta`` / ``g`` any strides. States are float32
``(B, H, D, D)`` indexed [key, value] and ``(B, H, D)`` like the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._triton import HAS_TRITON, dot_in_f32, last_dim_contiguous, tl, triton
from .gdn import chunk_segments

__all__ = ["gdn_main_triton", "gdn_cam_triton"]

if HAS_TRITON:

    @triton.jit
    def _frame_gram(
        x_base,
        x_ss,
        y_base,
        y_ss,
        be_base,
        be_ss,
        S,
        D,
        BLOCK_S: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_F32: tl.constexpr,
    ):
        """sum over the frame's tokens of x_s^T beta_s y_s (D x D) and of x_s beta_s (D,), fp32."""
        rd = tl.arange(0, BLOCK_D)
        md = rd < D
        acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
        colsum = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            ms = rs < S
            m2 = ms[:, None] & md[None, :]
            x = tl.load(x_base + rs[:, None] * x_ss + rd[None, :], mask=m2, other=0.0)
            y = tl.load(y_base + rs[:, None] * y_ss + rd[None, :], mask=m2, other=0.0)
            beta = tl.load(be_base + rs * be_ss, mask=ms, other=0.0).to(tl.float32)
            xb = x.to(tl.float32) * beta[:, None]
            colsum += tl.sum(xb, axis=0)
            if DOT_F32:
                acc = tl.dot(tl.trans(xb), y.to(tl.float32), acc, input_precision="tf32x3")
            else:
                acc = tl.dot(tl.trans(xb.to(y.dtype)), y, acc)
        return acc, colsum

    @triton.jit
    def _gdn_gram_kernel(
        ka_ptr,
        ka_sb,
        ka_sh,
        ka_st,
        ka_ss,  # keys of the state stream (rotated keys / camera keys)
        kz_ptr,
        kz_sb,
        kz_sh,
        kz_st,
        kz_ss,  # keys of the normaliser stream (unrotated keys; job 2 only)
        v_ptr,
        v_sb,
        v_sh,
        v_st,
        v_ss,
        be_ptr,
        be_sb,
        be_sh,
        be_st,
        be_ss,
        gram_ptr,
        bsum_ptr,
        H,
        T,
        S,
        D,
        NJOBS: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_F32: tl.constexpr,
    ):
        """gram (B*H*T, NJOBS, D, D) fp32: job 0 P, job 1 A, job 2 P^z; bsum (B*H*T, D) = b^z (job 2)."""
        pid = tl.program_id(0)
        job = tl.program_id(1)
        t = pid % T
        h = (pid // T) % H
        b = pid // (T * H)
        be_base = be_ptr + b * be_sb + h * be_sh + t * be_st
        ka_base = ka_ptr + b * ka_sb + h * ka_sh + t * ka_st
        if job == 0:
            acc, colsum = _frame_gram(ka_base, ka_ss, ka_base, ka_ss, be_base, be_ss, S, D, BLOCK_S, BLOCK_D, DOT_F32)
        elif job == 1:
            v_base = v_ptr + b * v_sb + h * v_sh + t * v_st
            acc, colsum = _frame_gram(ka_base, ka_ss, v_base, v_ss, be_base, be_ss, S, D, BLOCK_S, BLOCK_D, DOT_F32)
        else:
            kz_base = kz_ptr + b * kz_sb + h * kz_sh + t * kz_st
            acc, colsum = _frame_gram(kz_base, kz_ss, kz_base, kz_ss, be_base, be_ss, S, D, BLOCK_S, BLOCK_D, DOT_F32)
        rd = tl.arange(0, BLOCK_D)
        md = rd < D
        out = gram_ptr + (pid * NJOBS + job) * D * D + rd[:, None] * D + rd[None, :]
        tl.store(out, acc, mask=md[:, None] & md[None, :])
        if job == 2:
            tl.store(bsum_ptr + pid * D + rd, colsum, mask=md)

    @triton.jit
    def _state_step(
        p_base,
        a_base,
        prev_base,
        g,
        keep,
        cols,
        D,
        BLOCK_D: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """g (X - P X) + A for X = keep * (prev state) on value columns ``cols``; P's K dim in BLOCK_K slices
        against the previous state read back from memory (no D x D tile lives in registers)."""
        rk = tl.arange(0, BLOCK_D)
        mk = rk < D
        mc = cols < D
        acc = tl.zeros((BLOCK_D, BLOCK_V), dtype=tl.float32)
        for k0 in range(0, BLOCK_D, BLOCK_K):
            rc = k0 + tl.arange(0, BLOCK_K)
            mrc = rc < D
            p = tl.load(p_base + rk[:, None] * D + rc[None, :], mask=mk[:, None] & mrc[None, :], other=0.0)
            x = tl.load(prev_base + rc[:, None] * D + cols[None, :], mask=mrc[:, None] & mc[None, :], other=0.0)
            acc = tl.dot(p, x, acc, input_precision="tf32x3")
        m2 = mk[:, None] & mc[None, :]
        prev = tl.load(prev_base + rk[:, None] * D + cols[None, :], mask=m2, other=0.0)
        a = tl.load(a_base + rk[:, None] * D + cols[None, :], mask=m2, other=0.0)
        return tl.where(keep > 0, g * (prev - acc), 0.0) + a, tl.where(keep > 0, prev, 0.0)

    @triton.jit
    def _norm_step(pz_base, bz_base, prev_base, g, keep, D, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
        """The normaliser vector's step g (z - P^z z) + b^z for z = keep * prev (BLOCK_K column slices of P^z)."""
        rk = tl.arange(0, BLOCK_D)
        mk = rk < D
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for k0 in range(0, BLOCK_D, BLOCK_K):
            rc = k0 + tl.arange(0, BLOCK_K)
            mrc = rc < D
            p = tl.load(pz_base + rk[:, None] * D + rc[None, :], mask=mk[:, None] & mrc[None, :], other=0.0)
            x = tl.load(prev_base + rc, mask=mrc, other=0.0)
            acc += tl.sum(p * x[None, :], axis=1)
        prev = tl.load(prev_base + rk, mask=mk, other=0.0)
        bz = tl.load(bz_base + rk, mask=mk, other=0.0)
        return tl.where(keep > 0, g * (prev - acc), 0.0) + bz, tl.where(keep > 0, prev, 0.0)

    @triton.jit
    def _gdn_scan_kernel(
        gram_ptr,
        bsum_ptr,
        g_ptr,
        g_sb,
        g_sh,
        g_st,
        seg_last_ptr,
        init_kv_ptr,
        init_z_ptr,
        work_ptr,
        work_z_ptr,
        rev_ptr,
        rev_z_ptr,
        H,
        T,
        D,
        NJOBS: tl.constexpr,
        HAS_Z: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """Scan of one (b, h) on value columns [j*BLOCK_V, (j+1)*BLOCK_V) (column tile 0 also scans the normaliser).

        work (B*H, T+1, D, D): slot 0 <- the seed, slot t+1 <- M_t (forward, inclusive), then += R_t (reverse,
        exclusive inside each segment; ``seg_last`` marks segment ends). rev (B*H, 2, D, D) ping-pongs R.
        Each program only touches its own columns, so a barrier between steps orders its reads and writes."""
        bh = tl.program_id(0)
        j = tl.program_id(1)
        b = bh // H
        h = bh % H
        rk = tl.arange(0, BLOCK_D)
        mk = rk < D
        cols = j * BLOCK_V + tl.arange(0, BLOCK_V)
        m2 = mk[:, None] & (cols < D)[None, :]
        tile = rk[:, None] * D + cols[None, :]
        with_z = HAS_Z and j == 0
        work = work_ptr + bh * (T + 1) * D * D
        work_z = work_z_ptr + bh * (T + 1) * D

        tl.store(work + tile, tl.load(init_kv_ptr + bh * D * D + tile, mask=m2, other=0.0), mask=m2)
        if with_z:
            tl.store(work_z + rk, tl.load(init_z_ptr + bh * D + rk, mask=mk, other=0.0), mask=mk)
        tl.debug_barrier()
        for t in range(T):
            frame = bh * T + t
            g = tl.load(g_ptr + b * g_sb + h * g_sh + t * g_st).to(tl.float32)
            state, seed_unused = _state_step(
                gram_ptr + frame * NJOBS * D * D,
                gram_ptr + (frame * NJOBS + 1) * D * D,
                work + t * D * D,
                g,
                1.0,
                cols,
                D,
                BLOCK_D,
                BLOCK_V,
                BLOCK_K,
            )
            tl.store(work + (t + 1) * D * D + tile, state, mask=m2)
            if with_z:
                z, zseed_unused = _norm_step(
                    gram_ptr + (frame * NJOBS + 2) * D * D,
                    bsum_ptr + frame * D,
                    work_z + t * D,
                    g,
                    1.0,
                    D,
                    BLOCK_D,
                    BLOCK_K,
                )
                tl.store(work_z + (t + 1) * D + rk, z, mask=mk)
            tl.debug_barrier()

        rev = rev_ptr + bh * 2 * D * D
        rev_z = rev_z_ptr + bh * 2 * D
        for i in range(T):
            t = T - 1 - i
            frame = bh * T + t
            cur = i % 2
            keep = 1 - tl.load(seg_last_ptr + t)
            g = tl.load(g_ptr + b * g_sb + h * g_sh + t * g_st).to(tl.float32)
            nxt, r = _state_step(
                gram_ptr + frame * NJOBS * D * D,
                gram_ptr + (frame * NJOBS + 1) * D * D,
                rev + cur * D * D,
                g,
                keep,
                cols,
                D,
                BLOCK_D,
                BLOCK_V,
                BLOCK_K,
            )
            out = work + (t + 1) * D * D + tile
            tl.store(out, tl.load(out, mask=m2, other=0.0) + r, mask=m2)
            tl.store(rev + (1 - cur) * D * D + tile, nxt, mask=m2)
            if with_z:
                nz, rz = _norm_step(
                    gram_ptr + (frame * NJOBS + 2) * D * D,
                    bsum_ptr + frame * D,
                    rev_z + cur * D,
                    g,
                    keep,
                    D,
                    BLOCK_D,
                    BLOCK_K,
                )
                out_z = work_z + (t + 1) * D + rk
                tl.store(out_z, tl.load(out_z, mask=mk, other=0.0) + rz, mask=mk)
                tl.store(rev_z + (1 - cur) * D + rk, nz, mask=mk)
            tl.debug_barrier()

    @triton.jit
    def _gdn_out_kernel(
        qr_ptr,
        qr_sb,
        qr_sh,
        qr_st,
        qr_ss,  # queries of the state stream (rotated / camera)
        q_ptr,
        q_sb,
        q_sh,
        q_st,
        q_ss,  # unrotated queries (normaliser; HAS_Z only)
        work_ptr,
        work_z_ptr,
        out_ptr,
        H,
        T,
        S,
        D,
        eps,
        HAS_Z: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_F32: tl.constexpr,
    ):
        """out (B, H, T, S, D) contiguous = Q_hat (M + R) [/ (Q (z + r) + eps)] for one frame and token block."""
        frame = tl.program_id(0)
        sblk = tl.program_id(1)
        t = frame % T
        h = (frame // T) % H
        b = frame // (T * H)
        rd = tl.arange(0, BLOCK_D)
        md = rd < D
        rs = sblk * BLOCK_S + tl.arange(0, BLOCK_S)
        ms = rs < S
        m2 = ms[:, None] & md[None, :]
        qr = tl.load(qr_ptr + b * qr_sb + h * qr_sh + t * qr_st + rs[:, None] * qr_ss + rd[None, :], mask=m2, other=0.0)
        slot = frame + frame // T + 1  # work slot t+1 of (b, h): (b*H + h) * (T+1) + t + 1
        m = tl.load(work_ptr + slot * D * D + rd[:, None] * D + rd[None, :], mask=md[:, None] & md[None, :], other=0.0)
        if DOT_F32:
            num = tl.dot(qr.to(tl.float32), m, input_precision="tf32x3")
        else:
            num = tl.dot(qr, m.to(qr.dtype))
        if HAS_Z:
            q = tl.load(q_ptr + b * q_sb + h * q_sh + t * q_st + rs[:, None] * q_ss + rd[None, :], mask=m2, other=0.0)
            z = tl.load(work_z_ptr + slot * D + rd, mask=md, other=0.0)
            den = tl.sum(q.to(tl.float32) * z[None, :], axis=1)
            num = num / (den + eps)[:, None]
        tl.store(out_ptr + frame * S * D + rs[:, None] * D + rd[None, :], num.to(out_ptr.dtype.element_ty), mask=m2)


_SEG_TABLES: dict[tuple, torch.Tensor] = {}


def _segment_ends(num_frames: int, chunk_starts: Sequence[int] | None, device: torch.device) -> torch.Tensor:
    """(T,) int32 with 1 at the last frame of every reverse segment. Cached per layout and device, so repeated
    calls (and CUDA-graph captures after a warm-up call) do no host-to-device copy."""
    segments = chunk_segments(num_frames, chunk_starts)
    key = (tuple(segments), str(device))
    table = _SEG_TABLES.get(key)
    if table is None:
        flags = [0] * num_frames
        for _, end in segments:
            flags[end - 1] = 1
        table = _SEG_TABLES[key] = torch.tensor(flags, dtype=torch.int32, device=device)
    return table


def _strides4(x: torch.Tensor) -> tuple[int, int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _check_shapes(B, H, T, S, D, named: dict[str, torch.Tensor], beta: torch.Tensor, g: torch.Tensor) -> None:
    for name, x in named.items():
        if tuple(x.shape) != (B, H, T, S, D):
            raise ValueError(f"{name} must have shape {(B, H, T, S, D)}, got {tuple(x.shape)}.")
        if x.dtype != named["v"].dtype:
            raise ValueError(f"{name} must have the dtype of v ({named['v'].dtype}), got {x.dtype}.")
    if tuple(beta.shape) != (B, H, T, S):
        raise ValueError(f"beta must have shape {(B, H, T, S)}, got {tuple(beta.shape)}.")
    if tuple(g.shape) != (B, H, T):
        raise ValueError(f"g must have shape {(B, H, T)}, got {tuple(g.shape)}.")


def _seed(state: torch.Tensor | None, shape: tuple[int, ...], name: str, like: torch.Tensor) -> torch.Tensor:
    if state is None:
        return torch.zeros(shape, dtype=torch.float32, device=like.device)
    if tuple(state.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(state.shape)}.")
    return state.to(torch.float32).contiguous()


def _run(
    keys: torch.Tensor,
    keys_z: torch.Tensor | None,
    values: torch.Tensor,
    queries: torch.Tensor,
    queries_z: torch.Tensor | None,
    beta: torch.Tensor,
    g: torch.Tensor,
    chunk_starts: Sequence[int] | None,
    state_kv: torch.Tensor,
    state_z: torch.Tensor | None,
    eps: float,
):
    B, H, T, S, D = values.shape
    device = values.device
    has_z = keys_z is not None
    njobs = 3 if has_z else 2
    block_d = max(16, triton.next_power_of_2(D))
    block_v = min(32, block_d)
    dot_f32 = dot_in_f32(values.dtype)
    f32 = torch.float32
    frames = B * H * T
    gram = torch.empty(frames, njobs, D, D, dtype=f32, device=device)
    bsum = torch.empty(frames, D, dtype=f32, device=device) if has_z else gram
    kz = keys_z if has_z else keys
    _gdn_gram_kernel[(frames, njobs)](
        keys,
        *_strides4(keys),
        kz,
        *_strides4(kz),
        values,
        *_strides4(values),
        beta,
        *_strides4(beta),
        gram,
        bsum,
        H,
        T,
        S,
        D,
        NJOBS=njobs,
        BLOCK_S=64,
        BLOCK_D=block_d,
        DOT_F32=dot_f32,
        num_warps=8 if block_d >= 128 else 4,
    )
    work = torch.empty(B * H, T + 1, D, D, dtype=f32, device=device)
    rev = torch.empty(B * H, 2, D, D, dtype=f32, device=device)
    work_z = torch.empty(B * H, T + 1, D, dtype=f32, device=device) if has_z else work
    rev_z = torch.empty(B * H, 2, D, dtype=f32, device=device) if has_z else rev
    _gdn_scan_kernel[(B * H, triton.cdiv(D, block_v))](
        gram,
        bsum,
        g,
        g.stride(0),
        g.stride(1),
        g.stride(2),
        _segment_ends(T, chunk_starts, device),
        state_kv,
        state_z if has_z else state_kv,
        work,
        work_z,
        rev,
        rev_z,
        H,
        T,
        D,
        NJOBS=njobs,
        HAS_Z=has_z,
        BLOCK_D=block_d,
        BLOCK_V=block_v,
        BLOCK_K=min(32, block_d),
        num_warps=8 if block_d >= 128 else 4,
    )
    out = torch.empty(B, H, T, S, D, dtype=values.dtype, device=device)
    qz = queries_z if has_z else queries
    block_s = 64
    _gdn_out_kernel[(frames, triton.cdiv(S, block_s))](
        queries,
        *_strides4(queries),
        qz,
        *_strides4(qz),
        work,
        work_z,
        out,
        H,
        T,
        S,
        D,
        eps,
        HAS_Z=has_z,
        BLOCK_S=block_s,
        BLOCK_D=block_d,
        DOT_F32=dot_f32,
        num_warps=8 if block_d >= 128 else 4,
    )
    final_kv = work[:, T].view(B, H, D, D)
    return out, final_kv, (work_z[:, T].view(B, H, D) if has_z else None)


def gdn_main_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rot: torch.Tensor,
    k_rot: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    *,
    chunk_starts: Sequence[int] | None = None,
    state_kv: torch.Tensor | None = None,
    state_z: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton :func:`sana_wm.ops.gdn.gdn_main` (same arguments and returns; CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``)."""
    B, H, T, S, D = v.shape
    named = {"q": q, "k": k, "q_rot": q_rot, "k_rot": k_rot, "v": v}
    _check_shapes(B, H, T, S, D, named, beta, g)
    q, k, q_rot, k_rot, v = (last_dim_contiguous(x) for x in (q, k, q_rot, k_rot, v))
    seed_kv = _seed(state_kv, (B, H, D, D), "state_kv", v)
    seed_z = _seed(state_z, (B, H, D), "state_z", v)
    out, final_kv, final_z = _run(k_rot, k, v, q_rot, q, beta, g, chunk_starts, seed_kv, seed_z, eps)
    return out, final_kv, final_z


def gdn_cam_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    *,
    chunk_starts: Sequence[int] | None = None,
    state_kv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton :func:`sana_wm.ops.gdn.gdn_cam` (numerator-only camera branch; same arguments and returns)."""
    B, H, T, S, D = v.shape
    _check_shapes(B, H, T, S, D, {"q": q, "k": k, "v": v}, beta, g)
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    seed_kv = _seed(state_kv, (B, H, D, D), "state_kv", v)
    out, final_kv, _ = _run(k, None, v, q, None, beta, g, chunk_starts, seed_kv, None, 0.0)
    return out, final_kv
