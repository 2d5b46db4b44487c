"""Triton kernels of the Mamba-2 SSD chunked scan: ssd_scan, ssd_scan_vjp, ssd_step.

Fallback: float64 inputs, inputs on a device other than CUDA (or the CPU under
TRITON_INTERPRET=1), and P or N above 256 run the core's default composition
(``mamba_core.ops.ssd``) in torch -- the same math, visible in ``FALLBACKS``.

Design (one program per (batch, head[, P block]), time cut into chunks of Qk tokens; the result
does not depend on Qk, so the kernels' chunk is NOT the op's chunk_size, only started from it):

Chunk cap. Qk starts at chunk_size rounded up to a power of two, capped at 128 (forward) and 64
(backward: ~8 Qk x Qk float32 tiles in registers), so chunk_size = 256 runs as sub-chunks of
128 / 64. Shared memory grows with Qk, N, P, the dtype and the pipelining depth, and differs
between Triton releases (Triton 3.9, sm_90, N = 128, P = 64: forward Qk = 64 bf16 61 KB,
float32 233 KB with 3 stages / 98 KB with 1; backward Qk = 64 bf16 148 KB, float32 365 KB /
164 KB; the H100 has 227 KB per block). So the host glue tries (Qk, 3 stages), (Qk, 1 stage),
(Qk/2, ...), ... down to 16 and keeps the first whose kernel loads (``launch_fitting``;
remembered per shape class); when none fits (e.g. the backward at P = N = 256 in float32) the
op runs the default composition.

forward ``_ssd_fwd``: the state S (P x N, float32) lives in registers; for each chunk in order
    a = dt A, cum = inclusive cumsum of a in the chunk (short sums: every exponent below is a
    difference of two sums of at most Qk terms <= 0 of the same chunk),
    y  = ((C B^T) o exp(cum_i - cum_j) o [i >= j, same seq]) (dt o x)      two tl.dot
       + exp(cum_i) [seq_i = seq entering] C S^T                            one tl.dot
       + D x,  then * silu(z)
    S <- exp(cum_last) [seq passes] S + ((dt o x) o exp(cum_last - cum_j) [seq_j = seq_last])^T B
    Nothing but y and the final state touch memory: the intra-chunk part, the chunk states, the
    state passing and the output are one fused pass. With STORE_STATES the state entering
    every chunk is written too (the backward's recompute).
backward ``_ssd_bwd``: one program per (batch, head), chunks in reverse, the adjoint dS of the
    state leaving the chunk in registers; the entering states come from the forward kernel run
    with STORE_STATES (recompute, nothing saved by the forward op). Per chunk it forms y0 (for
    the z gate), d(dt x) = W^T dy + f (B dS^T), dC = (dy (dt x)^T o M) B + e (dy S_in),
    dB = (..)^T C + f ((dt x) dS), the decay gradient as row minus column sums of
    dW o W plus the e / f / chunk-total terms, reverse-cumulated into da; then
    dS <- exp(cum_last) dS + (e o dy)^T C. dB and dC are written per head (float32) and summed
    over the heads of a group in torch; dA, dD, dt_bias likewise reduced in torch.
step ``_ssd_step``: one program per (batch, head, P block); S = exp(dt A) S + dt x B^T,
    y = S C + D x, * silu(z).

Floor at the benchmark shape (B=8, L=2048, H=32, P=64, N=128, G=1, bf16, chunk 64):
    bytes: x and y 2 x 67.1 MB, dt 1.0 MB (fp32 in), B and C 2 x 4.2 MB, final state (fp32)
    8.4 MB -> ~152 MB / 3 TB/s = 51 us (with z: +67 MB -> 73 us);
    flops per (token, head): C B^T (Qk N 2 / Hg, causal half counted fully) 16.4k + y_diag
    Qk P 2 = 8.2k + y_off P N 2 = 16.4k + chunk state P N 2 = 16.4k -> ~57k x 524k
    (token, head) pairs = 30 GFLOP / 790 TFLOP/s = 38 us. Floor ~51 us (memory-bound); the
    fused forward moves exactly the floor bytes (no chunk-state round trip).
    Backward: reads x, dt, B, C, dy (+z), the entering states (B nc H P N fp32 = 268 MB written
    by the recompute and read back at Qk = 64), writes dx, ddt, per-head dB/dC (fp32, 2 x 268 MB
    before the group sum): ~1.2 GB -> ~0.4 ms; flops ~3x the forward. Floor of an ideal backward
    (inputs + gradients once): ~300 MB -> 0.1 ms.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mamba_backend_torch_triton.kernels._scan_common import (
    OutOfResources, c as _c, can_run, dot_dtype, dot_precision, fallback, launch_fitting,
    num_warps, pow2,
)

NO_LIMIT = (0.0, float("inf"))
FALLBACKS = "ssd_scan/ssd_scan_vjp/ssd_step: float64 inputs, non-CUDA devices (CPU without " \
            "TRITON_INTERPRET=1), P > 256 or N > 256 -> the core's default composition"
_MAX_DIM = 256


def _limited(dt_limit) -> bool:
    return tuple(float(v) for v in dt_limit) != NO_LIMIT


# ---- device helpers -----------------------------------------------------------------------
@triton.jit
def _softplus(u):
    # log(1 + e^u) with an accurate log1p (Kahan's trick); u itself above 20 (as torch)
    w = tl.exp(tl.minimum(u, 20.0))
    one_p = 1.0 + w
    lp = tl.where(one_p == 1.0, w, tl.log(one_p) * w / (one_p - 1.0))
    return tl.where(u > 20.0, u, lp)


@triton.jit
def _dt_fwd(dt_ptr, dtb_ptr, offs, h, mask, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr,
            LIMIT: tl.constexpr, lo, hi):
    """Processed dt and d(processed)/d(raw) at ``offs`` (0 where masked)."""
    u = tl.load(dt_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DTB:
        u = u + tl.load(dtb_ptr + h).to(tl.float32)
    fac = tl.full(u.shape, 1.0, tl.float32)
    s = u
    if SOFTPLUS:
        s = _softplus(u)
        fac = tl.where(u > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-u)))
    if LIMIT:
        fac = tl.where((s > lo) & (s < hi), fac, 0.0)
        s = tl.minimum(tl.maximum(s, lo), hi)
    s = tl.where(mask, s, 0.0)
    return s, fac


@triton.jit
def _seq_masks(seq_ptr, b, L, t0, offs_t, valid, Q: tl.constexpr):
    """seq ids of the chunk (padding continues the last token), of its last valid token and of
    the token before the chunk (the first token for chunk 0)."""
    t_last = tl.minimum(t0 + Q - 1, L - 1)
    sq_last = tl.load(seq_ptr + b * L + t_last)
    sq_prev = tl.load(seq_ptr + b * L + tl.maximum(t0 - 1, 0))
    sq = tl.load(seq_ptr + b * L + offs_t, mask=valid, other=0)
    sq = tl.where(valid, sq, sq_last)
    return sq, sq_last, sq_prev


# ---- forward (and the states entering every chunk, for the backward) ----------------------
@triton.jit
def _ssd_fwd(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, s0_ptr, seq_ptr,
             y_ptr, sfin_ptr, sin_ptr,
             L, H, P, N, G, nc, lo, hi,
             Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
             HAS_D: tl.constexpr, D_HP: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
             SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr, HAS_S0: tl.constexpr,
             HAS_SEQ: tl.constexpr, WRITE_Y: tl.constexpr, STORE_STATES: tl.constexpr,
             DT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    g = h // (H // G)
    offs_q = tl.arange(0, Q)
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    pn = pm[:, None] & nm[None, :]
    st_off = ((b * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
    if HAS_S0:
        S = tl.load(s0_ptr + st_off, mask=pn, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BP, BN), dtype=tl.float32)
    A_h = tl.load(A_ptr + h).to(tl.float32)
    if HAS_D:
        if D_HP:
            Dv = tl.load(D_ptr + h * P + offs_p, mask=pm, other=0.0).to(tl.float32)
        else:
            Dv = tl.load(D_ptr + h).to(tl.float32)
    causal = offs_q[:, None] >= offs_q[None, :]
    for c in range(0, nc):
        t0 = c * Q
        offs_t = t0 + offs_q
        valid = offs_t < L
        dtv, _ = _dt_fwd(dt_ptr, dtb_ptr, (b * L + offs_t) * H + h, h, valid, HAS_DTB, SOFTPLUS, LIMIT, lo, hi)
        a = dtv * A_h
        cum = tl.cumsum(a, 0)
        cum_last = tl.sum(a, 0)
        tok = (b * L + offs_t) * H + h
        xp_off = tok[:, None] * P + offs_p[None, :]
        xm = valid[:, None] & pm[None, :]
        x = tl.load(x_ptr + xp_off, mask=xm, other=0.0).to(tl.float32)
        bc_off = ((b * L + offs_t) * G + g)[:, None] * N + offs_n[None, :]
        bm = valid[:, None] & nm[None, :]
        Bm = tl.load(B_ptr + bc_off, mask=bm, other=0.0).to(DT)
        keep = causal
        e = tl.exp(cum)
        f = tl.exp(cum_last - cum)
        total = tl.exp(cum_last)
        if HAS_SEQ:
            sq, sq_last, sq_prev = _seq_masks(seq_ptr, b, L, t0, offs_t, valid, Q)
            keep = keep & (sq[:, None] == sq[None, :])
            e = tl.where(sq == sq_prev, e, 0.0)
            f = tl.where(sq == sq_last, f, 0.0)
            total = tl.where(sq_last == sq_prev, total, 0.0)
        dx = x * dtv[:, None]
        if WRITE_Y:
            Cm = tl.load(C_ptr + bc_off, mask=bm, other=0.0).to(DT)
            M = tl.where(keep, tl.exp(tl.where(keep, cum[:, None] - cum[None, :], 0.0)), 0.0)
            CB = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
            y = tl.dot((CB * M).to(DT), dx.to(DT), input_precision=PREC)
            y += e[:, None] * tl.dot(Cm, tl.trans(S.to(DT)), input_precision=PREC)
            if HAS_D:
                if D_HP:
                    y += Dv[None, :] * x
                else:
                    y += Dv * x
            if HAS_Z:
                zz = tl.load(z_ptr + xp_off, mask=xm, other=0.0).to(tl.float32)
                y = y * zz / (1.0 + tl.exp(-zz))
            tl.store(y_ptr + xp_off, y.to(y_ptr.dtype.element_ty), mask=xm)
        if STORE_STATES:
            so = (((b * nc + c) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
            tl.store(sin_ptr + so, S, mask=pn)
        S = total * S + tl.dot(tl.trans((dx * f[:, None]).to(DT)), Bm, input_precision=PREC)
    tl.store(sfin_ptr + st_off, S, mask=pn)


# ---- backward ------------------------------------------------------------------------------
@triton.jit
def _ssd_bwd(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, seq_ptr, sin_ptr,
             dy_ptr, dsl_ptr,
             dx_ptr, ddt_ptr, dBh_ptr, dCh_ptr, dz_ptr, dA_ptr, dD_ptr, ds0_ptr,
             L, H, P, N, G, nc, lo, hi,
             Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
             HAS_D: tl.constexpr, D_HP: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
             SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr,
             HAS_DY: tl.constexpr, HAS_DSL: tl.constexpr,
             DT: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    g = h // (H // G)
    offs_q = tl.arange(0, Q)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    pn = pm[:, None] & nm[None, :]
    st_off = ((b * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
    if HAS_DSL:
        dS = tl.load(dsl_ptr + st_off, mask=pn, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros((BP, BN), dtype=tl.float32)
    A_h = tl.load(A_ptr + h).to(tl.float32)
    if HAS_D:
        if D_HP:
            Dv = tl.load(D_ptr + h * P + offs_p, mask=pm, other=0.0).to(tl.float32)
        else:
            Dv = tl.load(D_ptr + h).to(tl.float32)
    dD_acc = tl.zeros((BP,), dtype=tl.float32)
    dA_acc = tl.zeros((Q,), dtype=tl.float32)
    causal = offs_q[:, None] >= offs_q[None, :]
    for ci in range(0, nc):
        c = nc - 1 - ci
        t0 = c * Q
        offs_t = t0 + offs_q
        valid = offs_t < L
        dtv, fac = _dt_fwd(dt_ptr, dtb_ptr, (b * L + offs_t) * H + h, h, valid, HAS_DTB, SOFTPLUS, LIMIT, lo, hi)
        a = dtv * A_h
        cum = tl.cumsum(a, 0)
        cum_last = tl.sum(a, 0)
        tok = (b * L + offs_t) * H + h
        xp_off = tok[:, None] * P + offs_p[None, :]
        xm = valid[:, None] & pm[None, :]
        x = tl.load(x_ptr + xp_off, mask=xm, other=0.0).to(tl.float32)
        bc_off = ((b * L + offs_t) * G + g)[:, None] * N + offs_n[None, :]
        bm = valid[:, None] & nm[None, :]
        Bm = tl.load(B_ptr + bc_off, mask=bm, other=0.0).to(DT)
        Cm = tl.load(C_ptr + bc_off, mask=bm, other=0.0).to(DT)
        so = (((b * nc + c) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
        Sin = tl.load(sin_ptr + so, mask=pn, other=0.0)
        keep = causal
        # the backward sums many decayed terms that cancel: form seg[i, j] = sum_{j<k<=i} a_k as
        # a masked cumulative sum (not cum_i - cum_j, whose rounding grows with |cum|)
        seg = tl.cumsum(tl.where(offs_q[:, None] > offs_q[None, :], a[:, None], 0.0), 0)
        e = tl.exp(cum)
        f = tl.exp(tl.sum(tl.where(offs_q[:, None] == Q - 1, seg, 0.0), 0))
        total = tl.exp(cum_last)
        if HAS_SEQ:
            sq, sq_last, sq_prev = _seq_masks(seq_ptr, b, L, t0, offs_t, valid, Q)
            keep = keep & (sq[:, None] == sq[None, :])
            e = tl.where(sq == sq_prev, e, 0.0)
            f = tl.where(sq == sq_last, f, 0.0)
            total = tl.where(sq_last == sq_prev, total, 0.0)
        M = tl.where(keep, tl.exp(seg), 0.0)
        CB = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
        W = CB * M
        dx = x * dtv[:, None]
        # the adjoint of the chunk's contribution to the state leaving it
        BdS = tl.dot(Bm, tl.trans(dS.to(DT)), input_precision=PREC)  # (Q, P)
        d_dx = f[:, None] * BdS
        dB = f[:, None] * tl.dot(dx.to(DT), dS.to(DT), input_precision=PREC)  # (Q, N)
        dend = f * tl.sum(dx * BdS, 1)
        # seg(Q-1, j) = sum_{k > j} a_k: a_k collects the j < k (exclusive cumsum); the chunk
        # total feeds every k. No sums-then-differences: each piece is summed where it belongs.
        da = tl.sum(tl.where(offs_q[:, None] > offs_q[None, :], dend[None, :], 0.0), 1)
        da += total * tl.sum(tl.sum(dS * Sin, 1), 0)
        dxo = tl.zeros((Q, BP), dtype=tl.float32)
        if HAS_DY:
            dy = tl.load(dy_ptr + xp_off, mask=xm, other=0.0).to(tl.float32)
            CS = tl.dot(Cm, tl.trans(Sin.to(DT)), input_precision=PREC)  # (Q, P)
            if HAS_Z:
                zz = tl.load(z_ptr + xp_off, mask=xm, other=0.0).to(tl.float32)
                y1 = tl.dot(W.to(DT), dx.to(DT), input_precision=PREC) + e[:, None] * CS
                if HAS_D:
                    if D_HP:
                        y1 += Dv[None, :] * x
                    else:
                        y1 += Dv * x
                sz = 1.0 / (1.0 + tl.exp(-zz))
                dzv = dy * y1 * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + xp_off, dzv, mask=xm)
                dy = dy * zz * sz
            if HAS_D:
                dD_acc += tl.sum(dy * x, 0)
                if D_HP:
                    dxo = Dv[None, :] * dy
                else:
                    dxo = Dv * dy
            dyD = dy.to(DT)
            d_dx += tl.dot(tl.trans(W.to(DT)), dyD, input_precision=PREC)
            dW = tl.dot(dyD, tl.trans(dx.to(DT)), input_precision=PREC)  # (Q, Q)
            dCB = dW * M
            dC = tl.dot(dCB.to(DT), Bm, input_precision=PREC)
            dC += e[:, None] * tl.dot(dyD, Sin.to(DT), input_precision=PREC)
            dB += tl.dot(tl.trans(dCB.to(DT)), Cm, input_precision=PREC)
            # seg(i, j) = sum_{j < k <= i} a_k: da_k = sum_{i >= k} sum_{j < k} dseg[i, j]
            dseg = dW * W
            # (a reverse cumsum down the columns, then the j < k part of row k: no subtraction)
            rect = tl.cumsum(dseg, 0, reverse=True)
            da += tl.sum(tl.where(offs_q[:, None] > offs_q[None, :], rect, 0.0), 1)
            # e_i = exp(sum_{k <= i} a_k): a_k collects the i >= k (reverse cumsum)
            da += tl.cumsum(e * tl.sum(dy * CS, 1), 0, reverse=True)
            tl.store(dCh_ptr + tok[:, None] * N + offs_n[None, :], dC, mask=bm)
            dS_new = total * dS + tl.dot(tl.trans((dy * e[:, None]).to(DT)), Cm, input_precision=PREC)
        else:
            dS_new = total * dS
        ddt = tl.sum(d_dx * x, 1) + A_h * da
        dA_acc += dtv * da
        dxo += dtv[:, None] * d_dx
        tl.store(dx_ptr + xp_off, dxo, mask=xm)
        tl.store(ddt_ptr + tok, ddt * fac, mask=valid)
        tl.store(dBh_ptr + tok[:, None] * N + offs_n[None, :], dB, mask=bm)
        dS = dS_new
    tl.store(ds0_ptr + st_off, dS, mask=pn)
    tl.store(dA_ptr + pid, tl.sum(dA_acc, 0))
    if HAS_D:
        tl.store(dD_ptr + pid * P + offs_p, dD_acc, mask=pm)


# ---- step ----------------------------------------------------------------------------------
@triton.jit
def _ssd_step(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, s_ptr, D_ptr, z_ptr, dtb_ptr,
              y_ptr, snew_ptr, H, P, N, G, lo, hi,
              BP: tl.constexpr, BN: tl.constexpr,
              HAS_D: tl.constexpr, D_HP: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
              SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    g = h // (H // G)
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    pn = pm[:, None] & nm[None, :]
    one = tl.arange(0, 1)
    dtv, _ = _dt_fwd(dt_ptr, dtb_ptr, pid + one, h, one < 1, HAS_DTB, SOFTPLUS, LIMIT, lo, hi)
    A_h = tl.load(A_ptr + h).to(tl.float32)
    decay = tl.exp(dtv * A_h)  # (1,)
    x = tl.load(x_ptr + pid * P + offs_p, mask=pm, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + (b * G + g) * N + offs_n, mask=nm, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + (b * G + g) * N + offs_n, mask=nm, other=0.0).to(tl.float32)
    st_off = (pid * P + offs_p[:, None]) * N + offs_n[None, :]
    S = tl.load(s_ptr + st_off, mask=pn, other=0.0).to(tl.float32)
    S = decay[:, None] * S + (dtv[:, None] * x[:, None]) * Bv[None, :]
    y = tl.sum(S * Cv[None, :], 1)
    if HAS_D:
        if D_HP:
            y += tl.load(D_ptr + h * P + offs_p, mask=pm, other=0.0).to(tl.float32) * x
        else:
            y += tl.load(D_ptr + h).to(tl.float32) * x
    if HAS_Z:
        zz = tl.load(z_ptr + pid * P + offs_p, mask=pm, other=0.0).to(tl.float32)
        y = y * zz / (1.0 + tl.exp(-zz))
    tl.store(y_ptr + pid * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=pm)
    tl.store(snew_ptr + st_off, S, mask=pn)


# ---- host glue -----------------------------------------------------------------------------
def _chunk(chunk_size) -> int:
    """The chunk the forward starts from: chunk_size rounded up to a power of two in [16, 128]."""
    return min(pow2(int(chunk_size), 16), 128)


def _supported(x, B, *others) -> bool:
    return can_run(x, B, *others) and x.shape[-1] <= _MAX_DIM and B.shape[-1] <= _MAX_DIM


def _limits(dt_limit):
    lim = _limited(dt_limit)
    lo, hi = (float(dt_limit[0]), float(dt_limit[1])) if lim else (0.0, 0.0)
    if math.isinf(hi):
        hi = 3.0e38
    if math.isinf(lo):
        lo = -3.0e38
    return lim, lo, hi


def _configs(q0: int):
    """Launch configs (Qk, num_stages) from the fastest down: Qk = q0, q0/2, ..., 16, each with
    Triton's default pipelining (3 stages) and then none (1 stage: about a third of the shared
    memory in float32)."""
    out, q = [], q0
    while q >= 16:
        out += [(q, 3), (q, 1)]
        q //= 2
    return out


def _flags(D, z, dt_bias, dt_softplus, dt_limit, s0, seq):
    return dict(HAS_D=D is not None, D_HP=D is not None and D.ndim == 2, HAS_Z=z is not None,
                HAS_DTB=dt_bias is not None, SOFTPLUS=bool(dt_softplus), LIMIT=_limited(dt_limit),
                HAS_S0=s0 is not None, HAS_SEQ=seq is not None)


def _run_fwd(x, dt, A, B, C, configs, D, z, dt_bias, dt_softplus, dt_limit, initial_state,
             seq_idx, write_y, store_states):
    """The forward kernel with the first of ``configs`` that fits (see launch_fitting).

    Returns (y, final state, entering states, Qk, number of chunks), or None when none fits.
    """
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    x, dt, A, B, C, D, z, dt_bias, s0 = (_c(t) for t in (x, dt, A, B, C, D, z, dt_bias, initial_state))
    seq = None if seq_idx is None else seq_idx.to(device=x.device, dtype=torch.int64).contiguous()
    BN = pow2(N)
    BP = min(pow2(P), 64)
    dev = x.device
    lim, lo, hi = _limits(dt_limit)
    flags = _flags(D, z, dt_bias, dt_softplus, dt_limit, s0, seq)
    dummy = x

    def launch(cfg):
        Q, stages = cfg
        nc = triton.cdiv(L, Q)
        y = torch.empty((Bsz, L, H, P), dtype=x.dtype, device=dev) if write_y else x
        sfin = torch.empty((Bsz, H, P, N), dtype=torch.float32, device=dev)
        sin = torch.empty((Bsz, nc, H, P, N), dtype=torch.float32, device=dev) if store_states else sfin
        _ssd_fwd[(Bsz * H, triton.cdiv(P, BP))](
            x, dt, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            dt_bias if dt_bias is not None else dummy, s0 if s0 is not None else dummy,
            seq if seq is not None else dummy, y, sfin, sin,
            L, H, P, N, G, nc, lo, hi,
            Q=Q, BP=BP, BN=BN, WRITE_Y=write_y, STORE_STATES=store_states,
            DT=dot_dtype(x.dtype), PREC=dot_precision(x.dtype), num_warps=num_warps(Q, BN),
            num_stages=stages, **flags,
        )
        return y, sfin, sin, Q, nc

    key = ("ssd_fwd", x.dtype, BP, BN, tuple(configs), write_y, store_states, tuple(flags.items()))
    out, _ = launch_fitting(key, configs, launch)
    return out


def ssd_scan(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """Fused chunked SSD scan (Triton). Same contract as mamba_core.ops.ssd.ssd_scan."""
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, seq_idx)
    if not _supported(x, B, dt, A, C, D, z, dt_bias, initial_state) or x.shape[1] == 0:
        return fallback("ssd_scan")(*args)
    out = _run_fwd(x, dt, A, B, C, _configs(_chunk(chunk_size)), D, z, dt_bias, dt_softplus,
                   dt_limit, initial_state, seq_idx, True, False)
    if out is None:  # no chunk length fits this GPU at these N, P: the composition
        return fallback("ssd_scan")(*args)
    return out[0], out[1]


def ssd_scan_vjp(cotangent, x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None,
                 dt_softplus=False, dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """SSD backward (Triton): recompute the entering states, then one reverse pass per head.

    The backward holds ~8 (Qk x Qk) float32 tiles: its chunk starts at min(chunk, 64) (128
    would spill registers on an H100) and shrinks while its kernel does not fit (see
    launch_fitting); the forward recompute runs at the same Qk (its entering states are per
    chunk). The result does not depend on the chunk.
    """
    dy, dS_L = cotangent
    args = (cotangent, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit,
            initial_state, seq_idx)
    if not _supported(x, B, dt, A, C, D, z, dt_bias, initial_state, dy, dS_L) or x.shape[1] == 0:
        return fallback("ssd_scan_vjp")(*args)
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    xc, dtc, Ac, Bc, Cc, Dc, zc, dtbc = (_c(t) for t in (x, dt, A, B, C, D, z, dt_bias))
    dy, dS_L = _c(dy), _c(dS_L)
    seq = None if seq_idx is None else seq_idx.to(device=x.device, dtype=torch.int64).contiguous()
    dev, f32 = x.device, torch.float32
    has_z = z is not None and dy is not None
    lim, lo, hi = _limits(dt_limit)
    BN, BP = pow2(N), pow2(P)
    flags = _flags(D, z, dt_bias, dt_softplus, dt_limit, None, seq)
    flags.pop("HAS_S0")
    flags["HAS_Z"] = has_z
    states = {}  # Qk -> the forward recompute at that chunk (shared by the stage variants)

    def launch(cfg):
        Q, stages = cfg
        if Q not in states:
            states[Q] = _run_fwd(x, dt, A, B, C, [(Q, 3), (Q, 1)], D, z, dt_bias, dt_softplus,
                                 dt_limit, initial_state, seq_idx, False, True)
        if states[Q] is None:  # the forward does not fit at this Qk either: a smaller one
            raise OutOfResources(0, 0, "shared memory")
        _, _, sin, _, nc = states[Q]
        dx = torch.empty((Bsz, L, H, P), dtype=f32, device=dev)
        ddt = torch.empty((Bsz, L, H), dtype=f32, device=dev)
        dBh = torch.empty((Bsz, L, H, N), dtype=f32, device=dev)
        dCh = torch.zeros((Bsz, L, H, N), dtype=f32, device=dev) if dy is None else \
            torch.empty((Bsz, L, H, N), dtype=f32, device=dev)
        dz = torch.empty((Bsz, L, H, P), dtype=f32, device=dev) if has_z else dx
        dA = torch.empty((Bsz, H), dtype=f32, device=dev)
        dD = torch.zeros((Bsz, H, P), dtype=f32, device=dev)
        ds0 = torch.empty((Bsz, H, P, N), dtype=f32, device=dev)
        dummy = dx
        _ssd_bwd[(Bsz * H,)](
            xc, dtc, Ac, Bc, Cc, Dc if Dc is not None else dummy, zc if zc is not None else dummy,
            dtbc if dtbc is not None else dummy, seq if seq is not None else dummy, sin,
            dy if dy is not None else dummy, dS_L if dS_L is not None else dummy,
            dx, ddt, dBh, dCh, dz, dA, dD, ds0,
            L, H, P, N, G, nc, lo, hi,
            Q=Q, BP=BP, BN=BN, HAS_DY=dy is not None, HAS_DSL=dS_L is not None,
            DT=dot_dtype(x.dtype), PREC=dot_precision(x.dtype), num_warps=8, num_stages=stages,
            **flags,
        )
        return dx, ddt, dBh, dCh, dz, dA, dD, ds0

    configs = _configs(min(_chunk(chunk_size), 64))
    key = ("ssd_bwd", x.dtype, BP, BN, tuple(configs), dy is not None, dS_L is not None,
           initial_state is not None, tuple(flags.items()))
    res, _ = launch_fitting(key, configs, launch)
    if res is None:  # no chunk length fits this GPU at these N, P: the composition
        return fallback("ssd_scan_vjp")(*args)
    dx, ddt, dBh, dCh, dz, dA, dD, ds0 = res
    out = {
        "x": dx.to(x.dtype),
        "dt": ddt.to(dt.dtype),
        "A": dA.sum(0).to(A.dtype),
        "B": dBh.view(Bsz, L, G, H // G, N).sum(3).to(B.dtype),
        "C": dCh.view(Bsz, L, G, H // G, N).sum(3).to(C.dtype),
    }
    if D is not None:
        dDs = dD.sum(0)
        out["D"] = (dDs if D.ndim == 2 else dDs.sum(-1)).to(D.dtype)
    if z is not None:
        out["z"] = dz.to(z.dtype) if has_z else torch.zeros_like(z)
    if dt_bias is not None:
        out["dt_bias"] = ddt.sum((0, 1)).to(dt_bias.dtype)
    if initial_state is not None:
        out["initial_state"] = ds0.to(initial_state.dtype)
    return out


def ssd_step(x, dt, A, B, C, state, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=NO_LIMIT):
    """One token of the SSD recurrence (Triton). Same contract as mamba_core.ops.ssd.ssd_step."""
    if not _supported(x, B, dt, A, C, state, D, z, dt_bias):
        return fallback("ssd_step")(x, dt, A, B, C, state, D, z, dt_bias, dt_softplus, dt_limit)
    Bsz, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    x, dt, A, B, C, state, D, z, dt_bias = (_c(t) for t in (x, dt, A, B, C, state, D, z, dt_bias))
    y = torch.empty((Bsz, H, P), dtype=x.dtype, device=x.device)
    snew = torch.empty((Bsz, H, P, N), dtype=torch.float32, device=x.device)
    lim, lo, hi = _limits(dt_limit)
    BN = pow2(N, 1)
    BP = min(pow2(P, 1), max(1, 4096 // BN))
    dummy = x
    _ssd_step[(Bsz * H, triton.cdiv(P, BP))](
        x, dt, A, B, C, state, D if D is not None else dummy, z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy, y, snew, H, P, N, G, lo, hi,
        BP=BP, BN=BN, HAS_D=D is not None, D_HP=D is not None and D.ndim == 2, HAS_Z=z is not None,
        HAS_DTB=dt_bias is not None, SOFTPLUS=bool(dt_softplus), LIMIT=lim, num_warps=4,
    )
    return y, snew


KERNELS = {"ssd_scan": ssd_scan, "ssd_scan_vjp": ssd_scan_vjp, "ssd_step": ssd_step}
