"""Triton frame-wise Gated DeltaNet: same contract as :mod:`sana_wm.ops.gdn` (``gdn_main`` / ``gdn_cam``).

Three kernels per call (NVlabs' "chunkwise" split, written anew):

- **gram** (grid products x 64 x 64 output tiles, frames): per frame the D x D products ``P = K^T diag(beta) K`` and
  ``A = K^T diag(beta) V`` (and for the main branch's normaliser ``P^z`` and ``b^z = K^T beta`` on the unrotated
  keys), each output tile one program's fp32 sum over the frame's S tokens (bf16/fp16 tensor-core dots, IEEE fp32
  for fp32 inputs): 720 programs at the streaming shape, deterministic, no second pass;
- **scan** (grid ``B*H`` x (16-wide value-column tiles + the normaliser vector) x 2 directions): the fp32 recurrence
  ``M_t = g_t (M_{t-1} - P_t M_{t-1}) + A_t`` forward over all frames from the seed state, and, in separate
  programs running at the same time, the exclusive reverse recurrence inside each segment;
- **out** (grid frames x groups of token blocks): ``num = Q_hat (M_t + R_t)``, ``den = Q (z_t + r_t)``,
  ``num / (den + eps)`` (camera: ``num`` only); ``(B, H, T, S, D)`` or token-major ``(B, T*S, H*D)``.

Inputs may be strided views (last dim contiguous); ``beta`` / ``g`` any strides. States are float32
``(B, H, D, D)`` indexed [key, value] and ``(B, H, D)`` like the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ._triton import HAS_TRITON, dot_in_f32, last_dim_contiguous, tl, triton
from .gdn import chunk_segments

__all__ = ["gdn_cam_triton", "gdn_main_triton"]

if HAS_TRITON:

    @triton.jit
    def _tile_gram(
        x_base,
        x_ss,
        y_base,
        y_ss,
        be_base,
        be_ss,
        r0,
        c0,
        S,
        D,
        BLOCK_S: tl.constexpr,
        BT: tl.constexpr,
        DOT_F32: tl.constexpr,
        SUM_MODE: tl.constexpr,
    ):
        """Tile [r0, r0+BT) x [c0, c0+BT) of sum_s x_s^T beta_s y_s over the frame's tokens (fp32), and sum_s beta_s
        x_s on the rows [r0, r0+BT): SUM_MODE 1 as a reduction per step; 2 from the dot itself, with y's padding
        column D (D < BLOCK_D) taken as ones (in the tile that holds it; zeros elsewhere); 0 none. beta scales the y
        operand, so x feeds the dot straight from memory (transposed)."""
        rr = r0 + tl.arange(0, BT)
        rc = c0 + tl.arange(0, BT)
        mr = rr < D
        mc = rc < D
        acc = tl.zeros((BT, BT), dtype=tl.float32)
        colsum = tl.zeros((BT,), dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            ms = rs < S
            x = tl.load(
                x_base + rs[:, None] * x_ss + rr[None, :],
                mask=ms[:, None] & mr[None, :],
                other=0.0,
            )
            y = tl.load(
                y_base + rs[:, None] * y_ss + rc[None, :],
                mask=ms[:, None] & mc[None, :],
                other=0.0,
            )
            beta = tl.load(be_base + rs * be_ss, mask=ms, other=0.0).to(tl.float32)
            yb = y.to(tl.float32) * beta[:, None]
            if SUM_MODE == 1:
                colsum += tl.sum(x.to(tl.float32) * beta[:, None], axis=0)
            if SUM_MODE == 2:
                yb = tl.where(rc[None, :] == D, beta[:, None], yb)
            if DOT_F32:
                acc = tl.dot(tl.trans(x.to(tl.float32)), yb, acc, input_precision="tf32x3")
            else:
                acc = tl.dot(tl.trans(x), yb.to(x.dtype), acc)
        if SUM_MODE == 2:
            colsum = tl.sum(tl.where(rc[None, :] == D, acc, 0.0), axis=1)
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
        ONES_COL: tl.constexpr,
    ):
        """gram (B*H*T, NJOBS, D, D) fp32: job 0 P, job 1 A, job 2 P^z; bsum (B*H*T, D) = b^z (job 2: the product's
        padding column D taken as ones when ONES_COL, i.e. D < BLOCK_D; else summed per step in the c0 = 0 tiles).

        Grid (NJOBS * NT * NT, frames): one program per frame, product and BT x BT output tile (BT <= 64), so a
        frame's programs are adjacent (its keys are read from L2 after the first) and a 112-wide head gives 4 tiles
        per product. Every output element is one program's sum over the frame's tokens: no atomics, deterministic."""
        NT: tl.constexpr = (BLOCK_D + 63) // 64
        BT: tl.constexpr = BLOCK_D // NT
        part = tl.program_id(0)
        pid = tl.program_id(1)
        job = part // (NT * NT)
        r0 = ((part // NT) % NT) * BT
        c0 = (part % NT) * BT
        t = pid % T
        h = (pid // T) % H
        b = pid // (T * H)
        be_base = be_ptr + b * be_sb + h * be_sh + t * be_st
        ka_base = ka_ptr + b * ka_sb + h * ka_sh + t * ka_st
        if job == 0:
            acc, colsum = _tile_gram(
                ka_base,
                ka_ss,
                ka_base,
                ka_ss,
                be_base,
                be_ss,
                r0,
                c0,
                S,
                D,
                BLOCK_S,
                BT,
                DOT_F32,
                0,
            )
        elif job == 1:
            v_base = v_ptr + b * v_sb + h * v_sh + t * v_st
            acc, colsum = _tile_gram(
                ka_base,
                ka_ss,
                v_base,
                v_ss,
                be_base,
                be_ss,
                r0,
                c0,
                S,
                D,
                BLOCK_S,
                BT,
                DOT_F32,
                0,
            )
        else:
            kz_base = kz_ptr + b * kz_sb + h * kz_sh + t * kz_st
            acc, colsum = _tile_gram(
                kz_base,
                kz_ss,
                kz_base,
                kz_ss,
                be_base,
                be_ss,
                r0,
                c0,
                S,
                D,
                BLOCK_S,
                BT,
                DOT_F32,
                2 if ONES_COL else 1,
            )
        rr = r0 + tl.arange(0, BT)
        rc = c0 + tl.arange(0, BT)
        mr = rr < D
        out = gram_ptr + (pid * NJOBS + job) * D * D + rr[:, None] * D + rc[None, :]
        tl.store(out, acc, mask=mr[:, None] & (rc < D)[None, :])
        if job == 2 and ((c0 <= D and D < c0 + BT) if ONES_COL else c0 == 0):
            tl.store(bsum_ptr + pid * D + rr, colsum, mask=mr)

    @triton.jit
    def _state_step(
        p_base,
        a_base,
        prev_base,
        g,
        cols,
        D,
        BLOCK_D: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """g (X - P X) + A on value columns ``cols`` for X = the state at ``prev_base``; P's K dim in BLOCK_K slices
        against X read back from memory (no D x D tile lives in registers)."""
        rk = tl.arange(0, BLOCK_D)
        mk = rk < D
        mc = cols < D
        acc = tl.zeros((BLOCK_D, BLOCK_V), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            rc = k0 + tl.arange(0, BLOCK_K)
            mrc = rc < D
            p = tl.load(
                p_base + rk[:, None] * D + rc[None, :],
                mask=mk[:, None] & mrc[None, :],
                other=0.0,
            )
            x = tl.load(
                prev_base + rc[:, None] * D + cols[None, :],
                mask=mrc[:, None] & mc[None, :],
                other=0.0,
            )
            acc = tl.dot(p, x, acc, input_precision="tf32x3")
        m2 = mk[:, None] & mc[None, :]
        prev = tl.load(prev_base + rk[:, None] * D + cols[None, :], mask=m2, other=0.0)
        a = tl.load(a_base + rk[:, None] * D + cols[None, :], mask=m2, other=0.0)
        return g * (prev - acc) + a

    @triton.jit
    def _norm_step(pz_base, bz_base, prev_base, g, D, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
        """The normaliser vector's step g (z - P^z z) + b^z for z at ``prev_base`` (BLOCK_K column slices of P^z)."""
        rk = tl.arange(0, BLOCK_D)
        mk = rk < D
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            rc = k0 + tl.arange(0, BLOCK_K)
            mrc = rc < D
            p = tl.load(
                pz_base + rk[:, None] * D + rc[None, :],
                mask=mk[:, None] & mrc[None, :],
                other=0.0,
            )
            x = tl.load(prev_base + rc, mask=mrc, other=0.0)
            acc += tl.sum(p * x[None, :], axis=1)
        prev = tl.load(prev_base + rk, mask=mk, other=0.0)
        bz = tl.load(bz_base + rk, mask=mk, other=0.0)
        return g * (prev - acc) + bz

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
        H,
        T,
        D,
        NJOBS: tl.constexpr,
        HAS_Z: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """One (b, h), one direction, one value-column tile [j*BLOCK_V, (j+1)*BLOCK_V) (j == cdiv(D, BLOCK_V): the
        normaliser vector instead). Grid (B*H, cdiv(D, BLOCK_V) + HAS_Z, 2).

        work (B*H, 2T+1, D, D): slot 0 <- the seed, slot t+1 <- M_t (direction 0: forward, inclusive), slot T+1+t
        <- R_t (direction 1: reverse, exclusive inside each segment, 0 where ``seg_last`` marks a segment end);
        work_z (B*H, 2T+1, D) likewise. The two directions are independent programs (the output kernel adds
        M_t + R_t); each program only touches its own columns, so a barrier between steps orders its reads and
        writes."""
        bh = tl.program_id(0)
        j = tl.program_id(1)
        rev = tl.program_id(2)
        b = bh // H
        h = bh % H
        rk = tl.arange(0, BLOCK_D)
        mk = rk < D
        g_base = g_ptr + b * g_sb + h * g_sh
        frames = gram_ptr + bh * T * NJOBS * D * D
        if HAS_Z and j == tl.cdiv(D, BLOCK_V):
            work_z = work_z_ptr + bh * (2 * T + 1) * D
            if rev == 0:
                tl.store(
                    work_z + rk,
                    tl.load(init_z_ptr + bh * D + rk, mask=mk, other=0.0),
                    mask=mk,
                )
                tl.debug_barrier()
                for t in range(T):
                    g = tl.load(g_base + t * g_st).to(tl.float32)
                    z = _norm_step(
                        frames + (t * NJOBS + 2) * D * D,
                        bsum_ptr + (bh * T + t) * D,
                        work_z + t * D,
                        g,
                        D,
                        BLOCK_D,
                        BLOCK_K,
                    )
                    tl.store(work_z + (t + 1) * D + rk, z, mask=mk)
                    tl.debug_barrier()
            else:
                rev_z = work_z + (T + 1) * D
                tl.store(
                    rev_z + (T - 1) * D + rk,
                    tl.zeros((BLOCK_D,), dtype=tl.float32),
                    mask=mk,
                )
                tl.debug_barrier()
                for i in range(1, T):
                    t = T - 1 - i
                    g = tl.load(g_base + (t + 1) * g_st).to(tl.float32)
                    z = _norm_step(
                        frames + ((t + 1) * NJOBS + 2) * D * D,
                        bsum_ptr + (bh * T + t + 1) * D,
                        rev_z + (t + 1) * D,
                        g,
                        D,
                        BLOCK_D,
                        BLOCK_K,
                    )
                    keep = tl.load(seg_last_ptr + t) == 0
                    tl.store(rev_z + t * D + rk, tl.where(keep, z, 0.0), mask=mk)
                    tl.debug_barrier()
        else:
            cols = j * BLOCK_V + tl.arange(0, BLOCK_V)
            m2 = mk[:, None] & (cols < D)[None, :]
            tile = rk[:, None] * D + cols[None, :]
            work = work_ptr + bh * (2 * T + 1) * D * D
            if rev == 0:
                tl.store(
                    work + tile,
                    tl.load(init_kv_ptr + bh * D * D + tile, mask=m2, other=0.0),
                    mask=m2,
                )
                tl.debug_barrier()
                for t in range(T):
                    g = tl.load(g_base + t * g_st).to(tl.float32)
                    state = _state_step(
                        frames + t * NJOBS * D * D,
                        frames + (t * NJOBS + 1) * D * D,
                        work + t * D * D,
                        g,
                        cols,
                        D,
                        BLOCK_D,
                        BLOCK_V,
                        BLOCK_K,
                    )
                    tl.store(work + (t + 1) * D * D + tile, state, mask=m2)
                    tl.debug_barrier()
            else:
                rev_kv = work + (T + 1) * D * D
                tl.store(
                    rev_kv + (T - 1) * D * D + tile,
                    tl.zeros((BLOCK_D, BLOCK_V), dtype=tl.float32),
                    mask=m2,
                )
                tl.debug_barrier()
                for i in range(1, T):
                    t = T - 1 - i
                    g = tl.load(g_base + (t + 1) * g_st).to(tl.float32)
                    state = _state_step(
                        frames + (t + 1) * NJOBS * D * D,
                        frames + ((t + 1) * NJOBS + 1) * D * D,
                        rev_kv + (t + 1) * D * D,
                        g,
                        cols,
                        D,
                        BLOCK_D,
                        BLOCK_V,
                        BLOCK_K,
                    )
                    keep = tl.load(seg_last_ptr + t) == 0
                    tl.store(rev_kv + t * D * D + tile, tl.where(keep, state, 0.0), mask=m2)
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
        o_sb,
        o_sh,
        o_st,
        o_ss,  # output strides: (B, H, T, S, D) contiguous, or token-major (B, T, S, H, D)
        H,
        T,
        S,
        D,
        blocks_per_program,
        eps,
        HAS_Z: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_F32: tl.constexpr,
    ):
        """out = Q_hat (M + R) [/ (Q (z + r) + eps)] for one frame and ``blocks_per_program`` token blocks: the
        frame's state M_t + R_t is read and summed once per program."""
        frame = tl.program_id(0)
        sblk = tl.program_id(1)
        t = frame % T
        h = (frame // T) % H
        b = frame // (T * H)
        rd = tl.arange(0, BLOCK_D)
        md = rd < D
        fwd = (frame // T) * (2 * T + 1) + t + 1  # work slot t+1 of (b, h); its R_t sits T slots further
        tile = rd[:, None] * D + rd[None, :]
        m2d = md[:, None] & md[None, :]
        m = tl.load(work_ptr + fwd * D * D + tile, mask=m2d, other=0.0)
        m += tl.load(work_ptr + (fwd + T) * D * D + tile, mask=m2d, other=0.0)
        if not DOT_F32:
            m = m.to(qr_ptr.dtype.element_ty)
        if HAS_Z:
            z = tl.load(work_z_ptr + fwd * D + rd, mask=md, other=0.0)
            z += tl.load(work_z_ptr + (fwd + T) * D + rd, mask=md, other=0.0)
        qr_base = qr_ptr + b * qr_sb + h * qr_sh + t * qr_st
        q_base = q_ptr + b * q_sb + h * q_sh + t * q_st
        o_base = out_ptr + b * o_sb + h * o_sh + t * o_st
        for i in range(blocks_per_program):
            rs = (sblk * blocks_per_program + i) * BLOCK_S + tl.arange(0, BLOCK_S)
            ms = rs < S
            m2 = ms[:, None] & md[None, :]
            qr = tl.load(qr_base + rs[:, None] * qr_ss + rd[None, :], mask=m2, other=0.0)
            if DOT_F32:
                num = tl.dot(qr.to(tl.float32), m, input_precision="tf32x3")
            else:
                num = tl.dot(qr, m)
            if HAS_Z:
                q = tl.load(q_base + rs[:, None] * q_ss + rd[None, :], mask=m2, other=0.0)
                den = tl.sum(q.to(tl.float32) * z[None, :], axis=1)
                num = num / (den + eps)[:, None]
            tl.store(
                o_base + rs[:, None] * o_ss + rd[None, :],
                num.to(out_ptr.dtype.element_ty),
                mask=m2,
            )


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


# Launch tuning (sm_90; register and shared-memory use from cuobjdump of compiles specialised as the streaming launch
# is, tests/test_gdn_speed.py; bench/micro_gdn.py times alternatives by setting these):
# - gram: 4 warps x 64-token steps of a 64 x 64 tile, its loads pipelined in 3 stages (100-118 registers, 48 KB of
#   shared memory: 4 programs per SM) (H100, streaming main branch: 57 us per call; 32-token steps 74.8 us, 16-token
#   steps 137 us, 64-token steps at 8 warps 78 us);
# - scan at BLOCK_D 128 (head dim 112): the 8-warp program is capped at 80 registers, so three programs fit an SM and
#   the B*H*(cdiv(D, 16) + 1)*2 = 320 programs of the streaming shape run in one wave (SCAN_BLOCK_K: P's K dimension
#   per dot; 7 dependent dots per step at 16);
# - out: token blocks per program chosen for about OUT_WAVES x (SM count) programs, two of which fit an SM (96 KB of
#   shared memory) (H100, main branch: OUT_WAVES 1 24.1 us, 2 21.0 us, 4 23.8 us). The camera branch's UCPE decode in
#   this kernel's epilogue (32-token tiles to stay spill-free) measured 53 us against 13 + 11 us for the output
#   kernel and the separate decode kernel, so the decode stays separate.
GRAM_LAUNCH = {"BLOCK_S": 64, "num_warps": 4}
SCAN_MAXNREG = 80
SCAN_BLOCK_K = 16  # K slice of P per dot in the scan's steps
OUT_WAVES = 2


def _scan_launch(block_d: int) -> dict:
    """Launch options of the scan kernel for this BLOCK_D (see the tuning notes above)."""
    if block_d < 128:
        return {"num_warps": 4, "num_stages": 1}
    cap = {"maxnreg": SCAN_MAXNREG} if block_d == 128 and SCAN_MAXNREG else {}
    return {"num_warps": 8, "num_stages": 1, **cap}


@functools.cache
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (132 on an H100 SXM; also the interpreter's stand-in)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


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
    token_major: bool,
):
    B, H, T, S, D = values.shape
    device = values.device
    has_z = keys_z is not None
    njobs = 3 if has_z else 2
    block_d = max(16, triton.next_power_of_2(D))
    tiles = (block_d + 63) // 64  # output tiles per side of a gram product (BLOCK_D // tiles <= 64 wide)
    block_v = 16
    dot_f32 = dot_in_f32(values.dtype)
    f32 = torch.float32
    frames = B * H * T
    gram = torch.empty(frames, njobs, D, D, dtype=f32, device=device)
    bsum = torch.empty(frames, D, dtype=f32, device=device) if has_z else gram
    kz = keys_z if has_z else keys
    _gdn_gram_kernel[(njobs * tiles * tiles, frames)](
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
        BLOCK_D=block_d,
        DOT_F32=dot_f32,
        ONES_COL=D < block_d,
        **GRAM_LAUNCH,
    )
    work = torch.empty(B * H, 2 * T + 1, D, D, dtype=f32, device=device)
    work_z = torch.empty(B * H, 2 * T + 1, D, dtype=f32, device=device) if has_z else work
    _gdn_scan_kernel[(B * H, triton.cdiv(D, block_v) + int(has_z), 2)](
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
        H,
        T,
        D,
        NJOBS=njobs,
        HAS_Z=has_z,
        BLOCK_D=block_d,
        BLOCK_V=block_v,
        BLOCK_K=SCAN_BLOCK_K,
        **_scan_launch(block_d),
    )
    if token_major:
        out = torch.empty(B, T, S, H, D, dtype=values.dtype, device=device)
        o_strides = (out.stride(0), out.stride(3), out.stride(1), out.stride(2))
    else:
        out = torch.empty(B, H, T, S, D, dtype=values.dtype, device=device)
        o_strides = _strides4(out)
    qz = queries_z if has_z else queries
    block_s = 64
    blocks = triton.cdiv(S, block_s)
    # token blocks per program: the frame's D x D state is read once for all of them
    per_program = triton.cdiv(blocks, max(1, min(blocks, OUT_WAVES * _sm_count(device) // frames)))
    _gdn_out_kernel[(frames, triton.cdiv(blocks, per_program))](
        queries,
        *_strides4(queries),
        qz,
        *_strides4(qz),
        work,
        work_z,
        out,
        *o_strides,
        H,
        T,
        S,
        D,
        per_program,
        eps,
        HAS_Z=has_z,
        BLOCK_S=block_s,
        BLOCK_D=block_d,
        DOT_F32=dot_f32,
        num_warps=8 if block_d >= 128 else 4,
    )
    if token_major:
        out = out.view(B, T * S, H * D)
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
    token_major: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton :func:`sana_wm.ops.gdn.gdn_main` (same arguments and returns; CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``). ``token_major=True`` writes the output as (B, T*S, H*D) (token n = t*S + s, channel
    h*D + d), i.e. ``out.permute(0, 2, 3, 1, 4).reshape(B, T*S, H*D)`` of the default layout, without the copy."""
    B, H, T, S, D = v.shape
    named = {"q": q, "k": k, "q_rot": q_rot, "k_rot": k_rot, "v": v}
    _check_shapes(B, H, T, S, D, named, beta, g)
    q, k, q_rot, k_rot, v = (last_dim_contiguous(x) for x in (q, k, q_rot, k_rot, v))
    seed_kv = _seed(state_kv, (B, H, D, D), "state_kv", v)
    seed_z = _seed(state_z, (B, H, D), "state_z", v)
    out, final_kv, final_z = _run(k_rot, k, v, q_rot, q, beta, g, chunk_starts, seed_kv, seed_z, eps, token_major)
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
    out, final_kv, _ = _run(k, None, v, q, None, beta, g, chunk_starts, seed_kv, None, 0.0, False)
    return out, final_kv
