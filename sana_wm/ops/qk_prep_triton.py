"""Triton q / k / v preparation: same contract as :mod:`sana_wm.ops.qk_prep`.

One kernel (``_prep_kernel``) per branch and block type, one program per ``BLOCK_N`` tokens: pass 1 reduces the
full-channel sums of squares of q and k, pass 2 walks the heads and writes every output once, computing in fp32
(normalise x weight, ReLU, key scale, RoPE from the complex tables via the partner channel ``d ^ 1``, the UCPE
4x4 mix from the four channels of each group, the post-UCPE RMS down-scale, the key-norm inflation). A second
small kernel turns the per-token inflation into the discounted beta (one program per frame and head: a
deterministic reduction, no atomics). The tensors never take an intermediate trip through memory.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, last_dim_contiguous, tl, triton

__all__ = ["prep_gdn_qk_triton", "prep_softmax_qk_triton", "prep_camera_triton", "ucpe_decode_triton"]

# kernel modes
_MAIN, _CAMERA = 0, 1

if HAS_TRITON:

    @triton.jit
    def _sum_squares(x_base, x_sn, rn, mn, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            rc = c0 + tl.arange(0, BLOCK_C)
            x = tl.load(x_base + rn[:, None] * x_sn + rc[None, :], mask=mn[:, None] & (rc < C)[None, :], other=0.0)
            x = x.to(tl.float32)
            acc += tl.sum(x * x, axis=1)
        return acc

    @triton.jit
    def _normed(x_base, x_sn, w_ptr, rn, cols, mask, inv, scale, NORM: tl.constexpr, RELU: tl.constexpr):
        """Channels ``cols`` (BLOCK_N x BLOCK_D) of tokens ``rn``: x * inv_rms * weight [ReLU] * scale, fp32."""
        x = tl.load(x_base + rn[:, None] * x_sn + cols, mask=mask, other=0.0).to(tl.float32)
        if NORM:
            w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            x = x * inv[:, None] * w
        if RELU:
            x = tl.maximum(x, 0.0)
        return x * scale

    @triton.jit
    def _encode(
        x_base,
        x_sn,
        w_ptr,
        rn,
        mn,
        h,
        inv,
        scale,
        rope_ptr,
        mat_ptr,
        mat_base,
        D,
        ROPE_PAIRS,
        MODE: tl.constexpr,
        NORM: tl.constexpr,
        RELU: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """(plain, encoded) values of one head for tokens rn: plain = normalised input; encoded = RoPE over the
        whole head (MODE 0) or UCPE (MODE 1: 4x4 ``mat`` on each channel group of the first half, RoPE on the
        second half)."""
        rd = tl.arange(0, BLOCK_D)
        md = rd < D
        mask = mn[:, None] & md[None, :]
        col = h * D + rd[None, :]
        plain = _normed(x_base, x_sn, w_ptr, rn, col, mask, inv, scale, NORM, RELU)
        partner = _normed(x_base, x_sn, w_ptr, rn, h * D + (rd ^ 1)[None, :], mask, inv, scale, NORM, RELU)
        sign = tl.where(rd % 2 == 0, -1.0, 1.0)
        if MODE == 0:
            pair = rd // 2
        else:
            half = D // 2
            pair = (rd - half) // 2
        rmask = mask & (pair >= 0)[None, :]
        cos = tl.load(rope_ptr + (rn[:, None] * ROPE_PAIRS + pair[None, :]) * 2, mask=rmask, other=1.0)
        sin = tl.load(rope_ptr + (rn[:, None] * ROPE_PAIRS + pair[None, :]) * 2 + 1, mask=rmask, other=0.0)
        rotated = plain * cos + sign[None, :] * partner * sin
        if MODE == 0:
            encoded = rotated
        else:
            first = rd < D // 2
            row = rd % 4
            base = rd - row
            gmask = mask & first[None, :]
            mixed = tl.zeros_like(plain)
            for j in tl.static_range(4):
                xj = _normed(x_base, x_sn, w_ptr, rn, h * D + (base + j)[None, :], gmask, inv, scale, NORM, RELU)
                mij = tl.load(mat_ptr + mat_base + rn[:, None] * 16 + (row * 4 + j)[None, :], mask=gmask, other=0.0)
                mixed += mij * xj
            encoded = tl.where(first[None, :], mixed, rotated)
        return plain, encoded

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
        rope_ptr,
        mq_ptr,
        mkv_ptr,
        q_out,
        k_out,
        v_out,
        q_plain_out,
        k_plain_out,
        infl_out,
        N,
        C,
        H,
        D,
        ROPE_PAIRS,
        key_scale,
        eps,
        MODE: tl.constexpr,
        RELU: tl.constexpr,
        PLAIN: tl.constexpr,
        DOWNSCALE: tl.constexpr,
        INFLATION: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Outputs (B, H, N, D) contiguous: q_out / k_out encoded q, k; MODE 1 also v_out (UCPE'd raw v);
        PLAIN: q_plain_out / k_plain_out the normalised q, k before RoPE; INFLATION: infl_out (B, H, N) fp32
        (|k_u| / |k|)^2 with both norms clamped at 1e-6."""
        nblocks = tl.cdiv(N, BLOCK_N)
        b = tl.program_id(0) // nblocks
        rn = (tl.program_id(0) % nblocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < N
        q_base = q_ptr + b * q_sb
        k_base = k_ptr + b * k_sb
        v_base = v_ptr + b * v_sb
        inv_q = tl.rsqrt(_sum_squares(q_base, q_sn, rn, mn, C, BLOCK_N, BLOCK_C) / C + eps)
        inv_k = tl.rsqrt(_sum_squares(k_base, k_sn, rn, mn, C, BLOCK_N, BLOCK_C) / C + eps)
        rope_base = rope_ptr
        mat_base = b * N * 16
        rd = tl.arange(0, BLOCK_D)
        mask = mn[:, None] & (rd < D)[None, :]
        for h in range(H):
            out_offs = ((b * H + h) * N + rn[:, None]) * D + rd[None, :]
            q_plain, q_enc = _encode(
                q_base,
                q_sn,
                wq_ptr,
                rn,
                mn,
                h,
                inv_q,
                1.0,
                rope_base,
                mq_ptr,
                mat_base,
                D,
                ROPE_PAIRS,
                MODE,
                True,
                RELU,
                BLOCK_D,
            )
            if DOWNSCALE:
                q_enc = _downscale(q_plain, q_enc, D)
            tl.store(q_out + out_offs, q_enc.to(q_out.dtype.element_ty), mask=mask)
            if PLAIN:
                tl.store(q_plain_out + out_offs, q_plain.to(q_plain_out.dtype.element_ty), mask=mask)
            k_plain, k_enc = _encode(
                k_base,
                k_sn,
                wk_ptr,
                rn,
                mn,
                h,
                inv_k,
                key_scale,
                rope_base,
                mkv_ptr,
                mat_base,
                D,
                ROPE_PAIRS,
                MODE,
                True,
                RELU,
                BLOCK_D,
            )
            if DOWNSCALE:
                k_enc = _downscale(k_plain, k_enc, D)
            tl.store(k_out + out_offs, k_enc.to(k_out.dtype.element_ty), mask=mask)
            if PLAIN:
                tl.store(k_plain_out + out_offs, k_plain.to(k_plain_out.dtype.element_ty), mask=mask)
            if INFLATION:
                pre = tl.maximum(tl.sqrt(tl.sum(k_plain * k_plain, axis=1)), 1e-6)
                post = tl.maximum(tl.sqrt(tl.sum(k_enc * k_enc, axis=1)), 1e-6)
                ratio = post / pre
                tl.store(infl_out + (b * H + h) * N + rn, ratio * ratio, mask=mn)
            if MODE == 1:
                v_plain, v_enc = _encode(
                    v_base,
                    v_sn,
                    wq_ptr,
                    rn,
                    mn,
                    h,
                    inv_q,
                    1.0,
                    rope_base,
                    mkv_ptr,
                    mat_base,
                    D,
                    ROPE_PAIRS,
                    MODE,
                    False,
                    False,
                    BLOCK_D,
                )
                if DOWNSCALE:
                    v_enc = _downscale(v_plain, v_enc, D)
                tl.store(v_out + out_offs, v_enc.to(v_out.dtype.element_ty), mask=mask)

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
        """One (batch, head, BLOCK_N tokens) tile of x (B, H, N, D): UCPE with ``mat`` (B, N, 4, 4) fp32 and the
        (already conjugated) RoPE table, written token-major into out (B, N, H*D)."""
        nblocks = tl.cdiv(N, BLOCK_N)
        bh = tl.program_id(0) // nblocks
        b = bh // H
        h = bh % H
        rn = (tl.program_id(0) % nblocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < N
        rd = tl.arange(0, BLOCK_D)
        mask = mn[:, None] & (rd < D)[None, :]
        _, enc = _encode(
            x_ptr + b * x_sb + h * x_sh,
            x_sn,
            x_ptr,
            rn,
            mn,
            0,
            1.0,
            1.0,
            rope_ptr,
            mat_ptr,
            b * N * 16,
            D,
            ROPE_PAIRS,
            1,
            False,
            False,
            BLOCK_D,
        )
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


def _launch(
    mode, q, k, v, q_weight, k_weight, table, mat_q, mat_kv, heads, key_scale, relu, plain, downscale, inflation, eps
):
    B, N, C = q.shape
    if C % heads:
        raise ValueError(f"channels ({C}) must be a multiple of heads ({heads}).")
    D = C // heads
    if tuple(table.shape[:1]) != (N,):
        raise ValueError(f"RoPE table must have {N} rows (one per token), got shape {tuple(table.shape)}.")
    count = 2 + (mode == _CAMERA) + 2 * plain  # encoded q, k [, v] [, plain q, k]
    outs = [torch.empty(B, heads, N, D, dtype=q.dtype, device=q.device) for _ in range(count)]
    infl = torch.empty(B, heads, N, dtype=torch.float32, device=q.device) if inflation else outs[0]
    v_out = outs[2] if mode == _CAMERA else outs[0]
    q_plain, k_plain = (outs[-2], outs[-1]) if plain else (outs[0], outs[0])
    # large inputs: 4 tokens per program (a 704x1280 chunk, 2,640 tokens: 660 programs, ~5 per H100 SM) to hide
    # the latency of the serial walk over the heads; 16 tokens gave 165 programs and ran at ~5 % of the memory
    # bandwidth. Small inputs (tests, the interpreter) keep 16.
    block_n = 4 if B * N >= 2048 else 16
    block_d = max(16, triton.next_power_of_2(D))
    _prep_kernel[(B * triton.cdiv(N, block_n),)](
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
        table,
        mat_q,
        mat_kv,
        outs[0],
        outs[1],
        v_out,
        q_plain,
        k_plain,
        infl,
        N,
        C,
        heads,
        D,
        table.shape[1],
        float(key_scale),
        float(eps),
        MODE=mode,
        RELU=relu,
        PLAIN=plain,
        DOWNSCALE=downscale,
        INFLATION=inflation,
        BLOCK_N=block_n,
        BLOCK_C=128,
        BLOCK_D=block_d,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton :func:`sana_wm.ops.qk_prep.prep_softmax_qk`."""
    k = _check_proj("k", k, q)
    q = last_dim_contiguous(q)
    (q_rot, k_rot), _ = _launch(
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
        1.0,
        relu=False,
        plain=False,
        downscale=False,
        inflation=False,
        eps=eps,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Triton :func:`sana_wm.ops.qk_prep.prep_camera` (same arguments and returns)."""
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
    table = torch.view_as_real(rope_cam.to(torch.complex64).conj().resolve_conj().contiguous())
    out = torch.empty(B, N, H * D, dtype=x.dtype, device=x.device)
    block_n = 32
    _ucpe_decode_kernel[(B * H * triton.cdiv(N, block_n),)](
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
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        num_warps=4,
    )
    return out
