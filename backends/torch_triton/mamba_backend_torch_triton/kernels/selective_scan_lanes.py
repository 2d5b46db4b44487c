"""The "lanes" VJP kernel of the Mamba-1 selective scan (VJP variant "lanes", chosen by CONFIG;
glue, the other variants and the state-saving forward: kernels/selective_scan.py; math:
mamba_core/ops/selective_scan.py). The default VJP since run 38 (2026-12-07, H100): 2.85 ms in
float32 and 2.82 on bf16 inputs read directly, against "base"'s 5.17 ms (the whole VJP at the
benchmark shape, benchmarks/results/gpu-20261207-h100).

Why another layout. The default float32 VJP ("base") compiles (sm_90, Triton 3.6) to ~98 SASS
instructions a (t, e, n) element in its chunk loop, a third of them shuffles, mostly from 19
layout conversions a chunk between token tiles (lanes along e) and state tiles (lanes along n); "tr" ([NP, BE] tiles) lets Triton
spread n over 16 lanes and converts 92 times a chunk (T=4, BE=8: ~180 an element). Here one
layout carries the math: the state tiles [BE, NP] are loaded n-contiguous (A, the saved states),
so Triton's coalescing gives them 4 n a thread (16-byte vectors) over 4 lanes and the channels
over the other 8 lanes and the warps (NP = 16; the layout of cuda_cupy's ss_bwd at this shape).
Every per-token load is a [BE] vector (u, delta, z, dy) or an [NP] vector (B_t, C_t): fewer
elements than threads, so Triton re-lays each load out in the state tiles' row or column slice
and none costs a conversion ([BE, T] token tiles are not re-laid, and cost one a token). The
chunk's forward walk keeps, as tuples of registers, each token's values, B_t, C_t, decay a_t and
entering state h_{t-1}; the reverse walk reads them back, so no load waits behind its stores.

Cost (benchmarks/sass_stats.py, Triton 3.6, sm_90; selective_scan.py's docstring compares the
kernels): T=4, BE=8, 1 warp: a chunk loop of 1075 instructions for 16 elements a thread, ~67 an
element (base ~98, cuda_cupy's ss_bwd ~62), 132 SHFL (the sums over n for the gate, g.B and
sum g a h A: 2 rounds over the 4 lanes of a channel; the dB/dC sums over e: 3 rounds over the 8
channel lanes, an all-reduce per value as tl.sum compiles it), 223 registers (160 with
``maxnreg`` 160, no spills); T=2: ~69 an element at 143 registers. The state-saving forward is
"seq" (selective_scan.py). A cost outside the kernel: dB and dC leave it as per-block partials,
(B, L, E / BE, NP) float32, summed by torch; at BE = 8 that is 268 MB each at the benchmark shape
(4x "base"'s at BE = 32), ~0.3 ms of traffic written and read back, inside the sweep's times.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mamba_backend_torch_triton.kernels.selective_scan import (
    _gate_vjp_f, _softplus_f, _softplus_grad, _vjp_carry_in, _vjp_program, _vjp_store_params,
)

@triton.jit
def _ss_bwd_lanes_kernel(
    U, DL, A, BM, CM, DV, Z, DB, HS, DY, DHF,
    DU, DDL, DZ, DAP, DBP, DCP, DDP, DBIASP, DH0,
    L, N, Eg, nchunks,
    sub, sul, sdb, sdl, sbb, sbl, sbg, scb, scl, scg, szb, szl, sdyb, sdyl,
    T: tl.constexpr, BE: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DHF: tl.constexpr, EVEN_N: tl.constexpr = False, EVEN_L: tl.constexpr = False,
    FAST: tl.constexpr = False,
):
    # program (b, block of BE channels): the chunks in reverse; per chunk its states h_{t-1}
    # recomputed from the saved chunk-entry state (forward walk), then the tokens in reverse
    # with the adjoint g_t = C_t dy'_t + a_{t+1} g_{t+1} carried in registers
    b, pe, nEb, E, e, n, nm, g = _vjp_program(BE, NP, N, Eg)
    Ax = tl.load(A + e[:, None] * N + n[None, :], mask=nm[None, :], other=0.0).to(tl.float32)
    Ax = Ax * 1.4426950408889634  # log2(e): exp(dt A) = exp2(dt Ax)
    st_off = (b * E + e[:, None]) * N + n[None, :]
    carry = _vjp_carry_in(DHF, st_off, nm, BE, NP, HAS_DHF)
    Dw = tl.zeros([BE], dtype=tl.float32)
    if HAS_D:
        Dw = tl.load(DV + e).to(tl.float32)
    bias = tl.zeros([BE], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(DB + e).to(tl.float32)
    dA_acc = tl.zeros([BE, NP], dtype=tl.float32)
    dD_acc = tl.zeros([BE], dtype=tl.float32)
    dbias_acc = tl.zeros([BE], dtype=tl.float32)
    # per-row base pointers (64-bit once); per token only 32-bit offsets
    Ub = U + b * sub
    DLb = DL + b * sdb
    Zb = Z + b * szb
    DYb = DY + b * sdyb
    Bb = BM + b * sbb + g * sbg
    Cb = CM + b * scb + g * scg
    DUb = DU + b * L * E
    DDLb = DDL + b * L * E
    DZb = DZ + b * L * E
    DBPb = DBP + (b * L * nEb + pe) * NP
    DCPb = DCP + (b * L * nEb + pe) * NP
    for i in range(0, nchunks):
        ci = nchunks - 1 - i
        t0 = ci * T
        # forward walk: the chunk's token values, B_t, C_t, decays a_t and states h_{t-1}, kept
        # in registers for the reverse walk
        h = tl.load(HS + ((b * nchunks + ci) * E + e[:, None]) * NP + n[None, :]).to(tl.float32)
        hs = ()
        tok = ()
        bs = ()
        cs = ()
        for j in tl.static_range(T):
            t = t0 + j
            if EVEN_L:
                u = tl.load(Ub + t * sul + e).to(tl.float32)
                raw = tl.load(DLb + t * sdl + e).to(tl.float32)
                dy = tl.load(DYb + t * sdyl + e).to(tl.float32)
                z = u
                if HAS_Z:
                    z = tl.load(Zb + t * szl + e).to(tl.float32)
                Bv = tl.load(Bb + t * sbl + n, mask=nm, other=0.0).to(tl.float32)
                Cv = tl.load(Cb + t * scl + n, mask=nm, other=0.0).to(tl.float32)
            else:
                tm = tl.full([BE], t, tl.int32) < L
                u = tl.load(Ub + t * sul + e, mask=tm, other=0.0).to(tl.float32)
                raw = tl.load(DLb + t * sdl + e, mask=tm, other=0.0).to(tl.float32)
                dy = tl.load(DYb + t * sdyl + e, mask=tm, other=0.0).to(tl.float32)
                z = u
                if HAS_Z:
                    z = tl.load(Zb + t * szl + e, mask=tm, other=0.0).to(tl.float32)
                bm = nm & (tl.full([NP], t, tl.int32) < L)
                Bv = tl.load(Bb + t * sbl + n, mask=bm, other=0.0).to(tl.float32)
                Cv = tl.load(Cb + t * scl + n, mask=bm, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw += bias
            dt = raw
            if SOFTPLUS:
                dt = _softplus_f(raw, FAST)
            if not EVEN_L:
                dt = tl.where(tm, dt, 0.0)  # past L: the identity map
            a = tl.exp2(dt[:, None] * Ax)
            hs = hs + ((h, a),)
            tok = tok + ((u, raw, dt, z, dy),)
            bs = bs + (Bv,)
            cs = cs + (Cv,)
            h = a * h + Bv[None, :] * (dt * u)[:, None]
        # reverse walk
        for jj in tl.static_range(T):
            t = t0 + (T - 1 - jj)
            u, raw, dt, z, dy = tok[T - 1 - jj]
            hp, a = hs[T - 1 - jj]
            Bv = bs[T - 1 - jj]
            Cv = cs[T - 1 - jj]
            dtu = dt * u
            ah = a * hp  # a_t h_{t-1}
            ht = ah + Bv[None, :] * dtu[:, None]
            if EVEN_L:
                tm = None
            else:
                tm = tl.full([BE], t, tl.int32) < L
            if HAS_Z:
                p = tl.sum(ht * Cv[None, :], axis=1) + Dw * u
                dyp, dz = _gate_vjp_f(dy, p, z)
                tl.store(DZb + t * E + e, dz.to(DZ.dtype.element_ty), mask=tm)
            else:
                dyp = dy
            gg = Cv[None, :] * dyp[:, None] + carry
            gah = gg * ah
            gB = tl.sum(gg * Bv[None, :], axis=1)
            ddt = tl.sum(gah * Ax, axis=1) * 0.6931471805599453 + gB * u  # A = Ax ln 2
            tl.store(DUb + t * E + e, (gB * dt + Dw * dyp).to(DU.dtype.element_ty), mask=tm)
            dA_acc += gah * dt[:, None]
            dD_acc += dyp * u
            if SOFTPLUS:
                ddt = ddt * _softplus_grad(raw)
            if not EVEN_L:
                ddt = tl.where(tm, ddt, 0.0)
            dbias_acc += ddt
            tl.store(DDLb + t * E + e, ddt.to(DDL.dtype.element_ty), mask=tm)
            # this block's shares of dB_t and dC_t (sums over its channels)
            if EVEN_L:
                pm = nm
            else:
                pm = nm & (tl.full([NP], t, tl.int32) < L)
            tl.store(DBPb + t * nEb * NP + n, tl.sum(gg * dtu[:, None], axis=0), mask=pm)
            tl.store(DCPb + t * nEb * NP + n, tl.sum(ht * dyp[:, None], axis=0), mask=pm)
            carry = a * gg  # dL/dh_{t-1}
    _vjp_store_params(DH0, DAP, DDP, DBIASP, st_off, nm, b, E, e, carry, dA_acc, dD_acc, dbias_acc)
