"""Triton q / k / v preparation: same contract as :mod:`sana_wm.ops.qk_prep`.

Per branch and block type two launches: ``_prep_kernel_rms`` reduces the full-channel sums of squares of q and k
into per-token inverse RMS values (fp32, (2, B, N)); ``_prep_kernel`` then runs one program per (head, block of
``_BLOCK_N`` tokens, batch entry), loads each input tile once and writes contiguous (BLOCK_N, D) tiles of every
output, computing in fp32: normalise x weight, ReLU, key scale, RoPE from the complex table (channel pairs split out
of the tile by a reshape, no second gather), the UCPE 4x4 mix (the four channels of every group split out the same
way, the token's matrix loaded once), the post-UCPE RMS down-scale and the key-norm inflation. A third small kernel
turns the per-token inflation into the discounted beta (one program per frame and head: a deterministic reduction,
no atomics). ``_ucpe_decode_kernel`` decodes the camera branch's attention output with the same tile code.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, last_dim_contiguous, tl, triton

__all__ = ["prep_camera_triton", "prep_gdn_qk_triton", "prep_softmax_qk_triton", "ucpe_decode_triton"]

# kernel modes
_MAIN, _CAMERA = 0, 1
# tokens per program: a 704x1280 chunk (2,640 tokens, 20 heads) gives 165 x 20 = 3,300 programs of 4 warps. sm_90a
# registers per thread as the streaming launch specialises the kernels (tests/test_qk_prep_speedup.py): 56 (GDN main
# branch), 48 (softmax main), 72 (camera: q, k, v tiles in flight), 56 (decode), no spills; 16 tokens beat 8 and 32
# in bench/micro_prep.py's sweep on an H100.
_BLOCK_N = 16
# row statistics: 4 tokens x 512 channels per step, 660 programs for 2,640 tokens
_RMS_BLOCK_N, _RMS_BLOCK_C = 4, 512


def _block_d(head_dim: int) -> int:
    """Channel tile of one head: the next power of two (at least 16; 112 -> 128, masked)."""
    return max(16, triton.next_power_of_2(head_dim))


if HAS_TRITON:

    @triton.jit
    def _prep_kernel_rms(
        q_ptr,
        q_sb,
        q_sn,
        k_ptr,
        k_sb,
        k_sn,
        inv_ptr,
        N,
        C,
        eps,
        BLOCK_N: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        """Row statistics of the full-channel RMSNorm: inv_ptr (2, B, N) fp32 = ``rsqrt(mean_c x^2 + eps)`` of q
        (row 0) and k (row 1) for BLOCK_N tokens of one batch entry (grid: token blocks x B)."""
        b = tl.program_id(1)
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < N
        acc_q = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc_k = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + tl.arange(0, BLOCK_C)
            mask = mn[:, None] & (rc < C)[None, :]
            x = tl.load(
                q_ptr + b * q_sb + rn[:, None] * q_sn + rc[None, :],
                mask=mask,
                other=0.0,
            ).to(tl.float32)
            acc_q += tl.sum(x * x, axis=1)
            x = tl.load(
                k_ptr + b * k_sb + rn[:, None] * k_sn + rc[None, :],
                mask=mask,
                other=0.0,
            ).to(tl.float32)
            acc_k += tl.sum(x * x, axis=1)
        B = tl.num_programs(1)
        tl.store(inv_ptr + b * N + rn, tl.rsqrt(acc_q / C + eps), mask=mn)
        tl.store(inv_ptr + (B + b) * N + rn, tl.rsqrt(acc_k / C + eps), mask=mn)

    @triton.jit
    def _load_tile(base, sn, rn, rd, mask):
        """(BLOCK_N, BLOCK_D) fp32 tile ``base[rn * sn + rd]`` (zeros outside ``mask``)."""
        return tl.load(base + rn[:, None] * sn + rd[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _rope_tables(
        rope_ptr,
        rn,
        mn,
        first_pair,
        ROPE_PAIRS,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """(cos, sin), each (BLOCK_N, BLOCK_D / 2): channel pair p of the head takes entry ``p - first_pair`` of the
        (N, ROPE_PAIRS, 2) table; zeros for pairs outside it."""
        p = tl.arange(0, BLOCK_D // 2) - first_pair
        mp = (p >= 0) & (p < ROPE_PAIRS)
        offs = (rn[:, None, None] * ROPE_PAIRS + p[None, :, None]) * 2 + tl.arange(0, 2)[None, None, :]
        cs = tl.load(rope_ptr + offs, mask=mn[:, None, None] & mp[None, :, None], other=0.0)
        return tl.split(cs)

    @triton.jit
    def _rope(x, cos, sin, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """Interleaved channel pairs of x (BLOCK_N, BLOCK_D) times ``cos + i sin``."""
        xe, xo = tl.split(tl.reshape(x, (BLOCK_N, BLOCK_D // 2, 2)))
        return tl.reshape(tl.join(xe * cos - xo * sin, xe * sin + xo * cos), (BLOCK_N, BLOCK_D))

    @triton.jit
    def _mat_row(m_base, r: tl.constexpr, mn, x0, x1, x2, x3):
        """Row r of every token's 4x4 matrix applied to the channel groups (x0..x3: channel j of each group)."""
        out = tl.load(m_base + r * 4, mask=mn, other=0.0)[:, None] * x0
        out += tl.load(m_base + r * 4 + 1, mask=mn, other=0.0)[:, None] * x1
        out += tl.load(m_base + r * 4 + 2, mask=mn, other=0.0)[:, None] * x2
        out += tl.load(m_base + r * 4 + 3, mask=mn, other=0.0)[:, None] * x3
        return out

    @triton.jit
    def _encode(
        x,
        cos,
        sin,
        mat_ptr,
        rn,
        mn,
        rd,
        D,
        MODE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """x (BLOCK_N, BLOCK_D) fp32 -> RoPE over the whole head (MODE 0) or UCPE (MODE 1: the tokens' 4x4 ``mat``
        (N, 4, 4) on each 4-channel group of the first half, RoPE on the second half)."""
        rotated = _rope(x, cos, sin, BLOCK_N, BLOCK_D)
        if MODE == 0:
            return rotated
        else:
            even, odd = tl.split(tl.reshape(x, (BLOCK_N, BLOCK_D // 4, 2, 2)))
            x0, x2 = tl.split(even)
            x1, x3 = tl.split(odd)
            m_base = mat_ptr + rn * 16
            o0 = _mat_row(m_base, 0, mn, x0, x1, x2, x3)
            o1 = _mat_row(m_base, 1, mn, x0, x1, x2, x3)
            o2 = _mat_row(m_base, 2, mn, x0, x1, x2, x3)
            o3 = _mat_row(m_base, 3, mn, x0, x1, x2, x3)
            mixed = tl.reshape(tl.join(tl.join(o0, o2), tl.join(o1, o3)), (BLOCK_N, BLOCK_D))
            return tl.where((rd < D // 2)[None, :], mixed, rotated)

    @triton.jit
    def _out_offsets(contiguous, b, h, rn, rd, sb, sh, sn, STRIDED: tl.constexpr):
        """Offsets of a (BLOCK_N, BLOCK_D) output tile: at strides (sb, sh, sn) if STRIDED, else ``contiguous``
        (the general form costs ~20 registers in the GDN main variant, which never needs it)."""
        offs = contiguous
        if STRIDED:
            offs = b * sb + h * sh + rn[:, None] * sn + rd[None, :]
        return offs

    @triton.jit
    def _downscale(ref, x, D):
        """x * min(1, rms(ref) / max(rms(x), 1e-6)) per token (rms = sqrt(mean + 1e-6))."""
        ref_rms = tl.sqrt(tl.sum(ref * ref, axis=1) / D + 1e-6)
        x_rms = tl.sqrt(tl.sum(x * x, axis=1) / D + 1e-6)
        return x * tl.minimum(ref_rms / tl.maximum(x_rms, 1e-6), 1.0)[:, None]

    @triton.jit
    def _prep_kernel(
        q_ptr,
        q_sb,
        q_sn,
        k_ptr,
        k_sb,
        k_sn,
        v_ptr,
        v_sb,
        v_sn,
        wq_ptr,
        wk_ptr,
        inv_ptr,
        rope_ptr,
        mq_ptr,
        mkv_ptr,
        q_out,
        k_out,
        v_out,
        q_plain_out,
        k_plain_out,
        infl_out,
        qo_sb,
        qo_sh,
        qo_sn,
        ko_sb,
        ko_sh,
        ko_sn,
        vo_sb,
        vo_sh,
        vo_sn,
        N,
        H,
        D,
        ROPE_PAIRS,
        key_scale,
        MODE: tl.constexpr,
        RELU: tl.constexpr,
        PLAIN: tl.constexpr,
        DOWNSCALE: tl.constexpr,
        INFLATION: tl.constexpr,
        COPY_V: tl.constexpr,
        OUT_STRIDES: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One (head, BLOCK_N tokens, batch entry) tile (grid: H x token blocks x B), inv-RMS from
        :func:`_prep_kernel_rms`. Outputs (B, H, N, D): q_out encoded q, k_out encoded k and MODE 1's v_out (UCPE'd
        raw v) at strides ``qo_*`` / ``ko_*`` / ``vo_*`` when OUT_STRIDES (e.g. a slot of the K/V cache, half of a
        two-branch query buffer), else contiguous; COPY_V (MODE 0): raw v copied to v_out; PLAIN: q_plain_out /
        k_plain_out the normalised q, k before RoPE (contiguous); INFLATION: infl_out (B, H, N) fp32 (|k_u| / |k|)^2
        with both norms clamped at 1e-6."""
        h = tl.program_id(0)
        b = tl.program_id(2)
        B = tl.num_programs(2)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < N
        rd = tl.arange(0, BLOCK_D)
        md = rd < D
        mask = mn[:, None] & md[None, :]
        out_offs = ((b * H + h) * N + rn[:, None]) * D + rd[None, :]
        if MODE == 0:
            cos, sin = _rope_tables(rope_ptr, rn, mn, 0, ROPE_PAIRS, BLOCK_N, BLOCK_D)
        else:
            cos, sin = _rope_tables(rope_ptr, rn, mn, D // 4, ROPE_PAIRS, BLOCK_N, BLOCK_D)

        inv = tl.load(inv_ptr + b * N + rn, mask=mn, other=0.0)
        w = tl.load(wq_ptr + h * D + rd, mask=md, other=0.0).to(tl.float32)
        q = _load_tile(q_ptr + b * q_sb + h * D, q_sn, rn, rd, mask) * inv[:, None] * w[None, :]
        if RELU:
            q = tl.maximum(q, 0.0)
        q_enc = _encode(q, cos, sin, mq_ptr + b * N * 16, rn, mn, rd, D, MODE, BLOCK_N, BLOCK_D)
        if DOWNSCALE:
            q_enc = _downscale(q, q_enc, D)
        q_offs = _out_offsets(out_offs, b, h, rn, rd, qo_sb, qo_sh, qo_sn, OUT_STRIDES)
        tl.store(q_out + q_offs, q_enc.to(q_out.dtype.element_ty), mask=mask)
        if PLAIN:
            tl.store(q_plain_out + out_offs, q.to(q_plain_out.dtype.element_ty), mask=mask)

        inv = tl.load(inv_ptr + (B + b) * N + rn, mask=mn, other=0.0)
        w = tl.load(wk_ptr + h * D + rd, mask=md, other=0.0).to(tl.float32)
        k = _load_tile(k_ptr + b * k_sb + h * D, k_sn, rn, rd, mask) * inv[:, None] * w[None, :]
        if RELU:
            k = tl.maximum(k, 0.0)
        k = k * key_scale
        k_enc = _encode(k, cos, sin, mkv_ptr + b * N * 16, rn, mn, rd, D, MODE, BLOCK_N, BLOCK_D)
        if DOWNSCALE:
            k_enc = _downscale(k, k_enc, D)
        tl.store(
            k_out + _out_offsets(out_offs, b, h, rn, rd, ko_sb, ko_sh, ko_sn, OUT_STRIDES),
            k_enc.to(k_out.dtype.element_ty),
            mask=mask,
        )
        if PLAIN:
            tl.store(k_plain_out + out_offs, k.to(k_plain_out.dtype.element_ty), mask=mask)
        if INFLATION:
            pre = tl.maximum(tl.sqrt(tl.sum(k * k, axis=1)), 1e-6)
            post = tl.maximum(tl.sqrt(tl.sum(k_enc * k_enc, axis=1)), 1e-6)
            ratio = post / pre
            tl.store(infl_out + (b * H + h) * N + rn, ratio * ratio, mask=mn)

        if MODE == 1:
            v = _load_tile(v_ptr + b * v_sb + h * D, v_sn, rn, rd, mask)
            v_enc = _encode(v, cos, sin, mkv_ptr + b * N * 16, rn, mn, rd, D, MODE, BLOCK_N, BLOCK_D)
            if DOWNSCALE:
                v_enc = _downscale(v, v_enc, D)
            v_offs = _out_offsets(out_offs, b, h, rn, rd, vo_sb, vo_sh, vo_sn, OUT_STRIDES)
            tl.store(v_out + v_offs, v_enc.to(v_out.dtype.element_ty), mask=mask)
        elif COPY_V:
            v = tl.load(v_ptr + b * v_sb + h * D + rn[:, None] * v_sn + rd[None, :], mask=mask, other=0.0)
            v_offs = _out_offsets(out_offs, b, h, rn, rd, vo_sb, vo_sh, vo_sn, OUT_STRIDES)
            tl.store(v_out + v_offs, v.to(v_out.dtype.element_ty), mask=mask)

    @triton.jit
    def _ucpe_decode_kernel(
        x_ptr,
        x_sb,
        x_sh,
        x_sn,
        rope_ptr,
        mat_ptr,
        out_ptr,
        N,
        H,
        D,
        ROPE_PAIRS,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One (head, BLOCK_N tokens, batch entry) tile of x (B, H, N, D) (grid: H x token blocks x B): UCPE with
        ``mat`` (B, N, 4, 4) fp32 and the conjugate of the RoPE table (the inverse rotation), written token-major
        into out (B, N, H*D) (programs next in launch order write the neighbouring heads of the same rows)."""
        h = tl.program_id(0)
        b = tl.program_id(2)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < N
        rd = tl.arange(0, BLOCK_D)
        mask = mn[:, None] & (rd < D)[None, :]
        cos, sin = _rope_tables(rope_ptr, rn, mn, D // 4, ROPE_PAIRS, BLOCK_N, BLOCK_D)
        x = _load_tile(x_ptr + b * x_sb + h * x_sh, x_sn, rn, rd, mask)
        enc = _encode(x, cos, -sin, mat_ptr + b * N * 16, rn, mn, rd, D, 1, BLOCK_N, BLOCK_D)
        offs = (b * N + rn[:, None]) * (H * D) + h * D + rd[None, :]
        tl.store(out_ptr + offs, enc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _beta_discount_kernel(
        beta_ptr,
        be_sb,
        be_sh,
        be_st,
        be_ss,
        infl_ptr,
        out_ptr,
        H,
        T,
        S,
        BLOCK_S: tl.constexpr,
    ):
        """out (B, H, T, S) contiguous = beta / max(1, mean_s inflation) for one (b, h, t)."""
        pid = tl.program_id(0)
        t = pid % T
        h = (pid // T) % H
        b = pid // (T * H)
        infl = infl_ptr + ((b * H + h) * T + t) * S
        acc = tl.zeros((BLOCK_S,), dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            acc += tl.load(infl + rs, mask=rs < S, other=0.0)
        discount = tl.maximum(tl.sum(acc, axis=0) / S, 1.0)
        for s0 in range(0, S, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            ms = rs < S
            beta = tl.load(beta_ptr + b * be_sb + h * be_sh + t * be_st + rs * be_ss, mask=ms, other=0.0)
            tl.store(out_ptr + pid * S + rs, (beta.to(tl.float32) / discount).to(out_ptr.dtype.element_ty), mask=ms)


def _check_proj(name: str, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.shape != like.shape or x.dtype != like.dtype:
        raise ValueError(
            f"{name} must match q: shape {tuple(like.shape)} dtype {like.dtype}, got {tuple(x.shape)} {x.dtype}."
        )
    return last_dim_contiguous(x)


def _check_out(name: str, out: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An ``out=`` tensor: ``shape`` (B, H, N, D), q's dtype and device, channels contiguous (other strides free)."""
    if tuple(out.shape) != shape or out.dtype != like.dtype or out.device != like.device or out.stride(-1) != 1:
        raise ValueError(
            f"{name} must have shape {shape}, dtype {like.dtype}, device {like.device} and a contiguous last dim, "
            f"got {tuple(out.shape)} {out.dtype} {out.device} strides {out.stride()}."
        )
    return out


def _launch(
    mode,
    q,
    k,
    v,
    q_weight,
    k_weight,
    table,
    mat_q,
    mat_kv,
    heads,
    key_scale,
    relu,
    plain,
    downscale,
    inflation,
    eps,
    *,
    q_out=None,
    k_out=None,
    v_out=None,
    copy_v=False,
):
    """Both launches; ``q_out`` / ``k_out`` / ``v_out``: (B, H, N, D) tensors (any token / head / batch strides)
    that receive the encoded q / k / v instead of new ones; ``copy_v`` (main mode): raw v copied into ``v_out`` by
    the same tiles."""
    B, N, C = q.shape
    if C % heads:
        raise ValueError(f"channels ({C}) must be a multiple of heads ({heads}).")
    D = C // heads
    if tuple(table.shape[:1]) != (N,):
        raise ValueError(f"RoPE table must have {N} rows (one per token), got shape {tuple(table.shape)}.")
    shape = (B, heads, N, D)

    def new() -> torch.Tensor:
        return torch.empty(shape, dtype=q.dtype, device=q.device)

    strided = q_out is not None or k_out is not None or v_out is not None
    q_out = new() if q_out is None else _check_out("q_out", q_out, shape, q)
    k_out = new() if k_out is None else _check_out("k_out", k_out, shape, q)
    if mode == _CAMERA or copy_v:
        v_out = new() if v_out is None else _check_out("v_out", v_out, shape, q)
    outs = [q_out, k_out, *([v_out] if mode == _CAMERA else []), *([new(), new()] if plain else [])]
    infl = torch.empty(B, heads, N, dtype=torch.float32, device=q.device) if inflation else q_out
    v_out = v_out if (mode == _CAMERA or copy_v) else q_out
    q_plain, k_plain = (outs[-2], outs[-1]) if plain else (q_out, q_out)
    inv = torch.empty(2, B, N, dtype=torch.float32, device=q.device)
    rms_args = (q, q.stride(0), q.stride(1), k, k.stride(0), k.stride(1), inv, N, C, float(eps))
    _prep_kernel_rms[(triton.cdiv(N, _RMS_BLOCK_N), B)](
        *rms_args, BLOCK_N=_RMS_BLOCK_N, BLOCK_C=_RMS_BLOCK_C, num_warps=4
    )
    _prep_kernel[(heads, triton.cdiv(N, _BLOCK_N), B)](
        q,
        q.stride(0),
        q.stride(1),
        k,
        k.stride(0),
        k.stride(1),
        v,
        v.stride(0),
        v.stride(1),
        q_weight,
        k_weight,
        inv,
        table,
        mat_q,
        mat_kv,
        q_out,
        k_out,
        v_out,
        q_plain,
        k_plain,
        infl,
        *q_out.stride()[:3],
        *k_out.stride()[:3],
        *v_out.stride()[:3],
        N,
        heads,
        D,
        table.shape[1],
        float(key_scale),
        MODE=mode,
        RELU=relu,
        PLAIN=plain,
        DOWNSCALE=downscale,
        INFLATION=inflation,
        COPY_V=copy_v,
        OUT_STRIDES=strided,
        BLOCK_N=_BLOCK_N,
        BLOCK_D=_block_d(D),
        num_warps=4,
    )
    return outs, infl


def _rope_table(freqs: torch.Tensor) -> torch.Tensor:
    """(N, P) complex64 -> (N, P, 2) float32 [cos, sin] (a view when already contiguous)."""
    return torch.view_as_real(freqs.to(torch.complex64).contiguous())


def prep_gdn_qk_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    rope: torch.Tensor,
    *,
    heads: int,
    key_scale: float,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton :func:`sana_wm.ops.qk_prep.prep_gdn_qk` (returns ``(q, k, q_rot, k_rot)``)."""
    k = _check_proj("k", k, q)
    q = last_dim_contiguous(q)
    (q_rot, k_rot, q_plain, k_plain), _ = _launch(
        _MAIN,
        q,
        k,
        q,
        q_weight,
        k_weight,
        _rope_table(rope),
        q_weight,
        q_weight,
        heads,
        key_scale,
        relu=True,
        plain=True,
        downscale=False,
        inflation=False,
        eps=eps,
    )
    return q_plain, k_plain, q_rot, k_rot


def prep_softmax_qk_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    rope: torch.Tensor,
    *,
    heads: int,
    eps: float = 1e-5,
    q_out: torch.Tensor | None = None,
    k_out: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    v_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton :func:`sana_wm.ops.qk_prep.prep_softmax_qk`.

    ``q_out`` / ``k_out``: (B, H, N, D) tensors (e.g. half of a two-branch query buffer, the pass's slot of the K/V
    cache; any token / head / batch strides) that receive the rotated q / k and are returned as them; ``v``
    (B, N, C) with ``v_out`` (B, H, N, D): the raw v per head copied into ``v_out`` by the same launch (the cache's v
    slot: no separate copy kernel)."""
    k = _check_proj("k", k, q)
    if (v is None) != (v_out is None):
        raise ValueError("prep_softmax_qk_triton: give v and v_out together (or neither).")
    if v is not None:
        v = _check_proj("v", v, q)
    q = last_dim_contiguous(q)
    (q_rot, k_rot), _ = _launch(
        _MAIN,
        q,
        k,
        q if v is None else v,
        q_weight,
        k_weight,
        _rope_table(rope),
        q_weight,
        q_weight,
        heads,
        1.0,
        relu=False,
        plain=False,
        downscale=False,
        inflation=False,
        eps=eps,
        q_out=q_out,
        k_out=k_out,
        v_out=v_out,
        copy_v=v is not None,
    )
    return q_rot, k_rot


def prep_camera_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    ray_q: torch.Tensor,
    ray_kv: torch.Tensor,
    rope_cam: torch.Tensor,
    *,
    heads: int,
    key_scale: float | None = None,
    beta: torch.Tensor | None = None,
    rms_downscale: bool = False,
    eps: float = 1e-5,
    q_out: torch.Tensor | None = None,
    k_out: torch.Tensor | None = None,
    v_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Triton :func:`sana_wm.ops.qk_prep.prep_camera` (same arguments and returns); ``q_out`` / ``k_out`` /
    ``v_out``: (B, H, N, D) tensors (any token / head / batch strides, e.g. the camera half of a two-branch query
    buffer and of the cache's K/V slot) that receive q_u / k_u / v_u and are returned as them."""
    k = _check_proj("k", k, q)
    v = _check_proj("v", v, q)
    q = last_dim_contiguous(q)
    B, N, _ = q.shape
    for name, mat in (("ray_q", ray_q), ("ray_kv", ray_kv)):
        if tuple(mat.shape) != (B, N, 4, 4):
            raise ValueError(f"{name} must have shape {(B, N, 4, 4)}, got {tuple(mat.shape)}.")
    gdn = key_scale is not None
    if gdn != (beta is not None):
        raise ValueError("prep_camera: give key_scale and beta together (GDN block) or neither (softmax block).")
    mat_q = ray_q.to(torch.float32).contiguous()
    mat_kv = ray_kv.to(torch.float32).contiguous()
    (q_u, k_u, v_u), infl = _launch(
        _CAMERA,
        q,
        k,
        v,
        q_weight,
        k_weight,
        _rope_table(rope_cam),
        mat_q,
        mat_kv,
        heads,
        1.0 if key_scale is None else key_scale,
        relu=gdn,
        plain=False,
        downscale=rms_downscale,
        inflation=gdn,
        eps=eps,
        q_out=q_out,
        k_out=k_out,
        v_out=v_out,
    )
    if not gdn:
        return q_u, k_u, v_u, None
    Bb, H, T, S = beta.shape
    if (Bb, H, T * S) != (B, heads, N):
        raise ValueError(f"beta must have shape (B, H, T, S) with T*S = {N}, got {tuple(beta.shape)}.")
    out = torch.empty(B, H, T, S, dtype=beta.dtype, device=beta.device)
    _beta_discount_kernel[(B * H * T,)](
        beta,
        *beta.stride(),
        infl,
        out,
        H,
        T,
        S,
        BLOCK_S=min(1024, triton.next_power_of_2(S)),
    )
    return q_u, k_u, v_u, out


def ucpe_decode_triton(x: torch.Tensor, ray_out: torch.Tensor, rope_cam: torch.Tensor) -> torch.Tensor:
    """Triton :func:`sana_wm.ops.qk_prep.ucpe_decode` (one pass; no fp32 copies, no transpose copy)."""
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, H, N, D), got {tuple(x.shape)}.")
    B, H, N, D = x.shape
    if tuple(ray_out.shape) != (B, N, 4, 4):
        raise ValueError(f"ray_out must have shape {(B, N, 4, 4)}, got {tuple(ray_out.shape)}.")
    if tuple(rope_cam.shape) != (N, D // 4):
        raise ValueError(f"rope_cam must have shape {(N, D // 4)}, got {tuple(rope_cam.shape)}.")
    x = last_dim_contiguous(x)
    mat = ray_out.to(torch.float32).contiguous()
    table = _rope_table(rope_cam)
    out = torch.empty(B, N, H * D, dtype=x.dtype, device=x.device)
    _ucpe_decode_kernel[(H, triton.cdiv(N, _BLOCK_N), B)](
        x,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        table,
        mat,
        out,
        N,
        H,
        D,
        table.shape[1],
        BLOCK_N=_BLOCK_N,
        BLOCK_D=_block_d(D),
        num_warps=4,
    )
    return out
