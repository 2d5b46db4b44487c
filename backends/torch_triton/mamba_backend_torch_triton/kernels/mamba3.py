"""Triton kernels of the Mamba-3 exponential-trapezoidal scan (SISO and MIMO): mamba3_scan,
mamba3_scan_vjp, mamba3_step, and mamba3_scan's saving form.

Fallback: float64 inputs, inputs on a device other than CUDA (or the CPU under
TRITON_INTERPRET=1), P or N above 256, or R above 16 run the core's default composition
(``mamba_core.ops.mamba3``) in torch -- the same math, visible in ``FALLBACKS``.

Design: the chunked form of mamba_core.ops.mamba3 (see its docstring), one program per
(batch, head[, P block]). A chunk of Qk tokens is laid out as Qk*R "rows" (t, r) (row = t R + r);
token quantities are loaded per row. The decay cumsum runs over rows with a_t placed on the r = 0
row only, so cum(row) = sum_{k<=t} a_k for every rank r of token t, and every exponent is a
difference of two short in-chunk sums of terms <= 0.
    w[(t,r),(s,r')] = exp(cum_t - cum_s) (gamma_t if t = s [the same-token correction, the whole
                      R x R block], scale_s = gamma_s + dt_{s+1}(1 - trap_{s+1}) if t > s, else 0)
    y    = ((C B^T) o w) v + exp(cum_t) C S'^T + D v              (v = x o mimo_x[:, r])
    S'  <- exp(cum_last) S' + (v o exp(cum_last - cum_s) scale_s)^T B
starting from S'_{-1} = initial_state + dt_0 (1 - trap_0) sum_r v_{-1,r} k_{-1,r}^T (formed in
torch). The backward (one program per (batch, head), chunks in reverse, entering states from
the forward kernel run with STORE_STATES, or every K-th of them with CONFIG["bwd"]["state_stride"]
= K, the rest recomputed per block into a scratch) writes per-row dv, dB, dC, dgamma, dscale and per-token
da; torch then folds ranks (dx, dmimo_x), shifts dscale into the owed term and forms ddt, dA,
dtrap and the initial k/v gradients (elementwise, O(B L H)). The backward and its state
recompute run at their own chunk (CONFIG["bwd"]: 16 tokens; at 64 its (QR, QR) tiles spill),
keep the entering states in 16 bits for 16-bit inputs, and store dB, dC (and dv when no ranks
are folded) in the output dtype. float32 inputs with IEEE dots (Triton lowers them to FMAs in
registers) launch under CONFIG["fwd_ieee"] / ["bwd_ieee"], whose "rows" cap keeps Qk R at 32
(forward) and 16 (backward) rows whatever R is.
Saving form (``SAVING``; mamba_core/ops/saving.py): ``mamba3_scan_saving`` keeps the states the
backward reads (SavedStates, every span tokens), formed by the plain forward's launch when its
chunk divides the span, else by the backward's state recompute writing y too;
``mamba3_scan_vjp_saved`` then launches the backward alone (CONFIG "save").
The "blocked" backward (CONFIG "bwd" "variant"): the dS recurrence alone first (_m3_dsb), kept at
block boundaries, then the blocks' backwards in parallel (_m3_bwd with BLOCKED).
The step kernel: one program per (batch, head, P block), the R rank outer products unrolled.

Floor (SISO, B=8, L=2048, H=32, P=64, N=128, bf16; B, C per head (B L R H N)): bytes x, y 2 x
67.1 MB, B, C 2 x 134 MB, dt/A/trap 3 MB, final state 8.4 MB -> ~414 MB / 3 TB/s = 138 us;
flops per (token, head) ~ C B^T Qk N 2 + y_diag Qk P 2 + 2 x (P N 2) -> 16.4k + 8.2k + 32.8k =
57k x 524k = 30 GFLOP / 790 TFLOP/s = 38 us: memory-bound, floor ~138 us. MIMO R: rows x R,
flops (Qk R)^2-ish per chunk: C B^T and y_diag grow by R (per token), state terms by R.
Measured (H100, run 32 of benchmarks/results/gpu-20261207-h100): bf16 forward 0.40 ms (2.9x
the floor), VJP 1.66 ms. In float32 with IEEE dots the same ~30 GFLOP run without tensor cores
(~60 TFLOP/s of FMAs: a 0.5 ms floor): forward 21.3 ms, VJP 12.9 ms. The float32 forward is
~40x its floor and slower than the backward; the cause has not been found on a GPU profile yet
(spills are not it: 16 and 32 rows time alike).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from mamba_core.ops.saving import SavingForm

from mamba_backend_torch_triton.kernels._scan_common import (
    c as _c, can_run, dot_dtype, dot_precision, fallback, launch_fitting, num_warps, pow2,
)

FALLBACKS = "mamba3_scan/mamba3_scan_vjp/mamba3_step: float64 inputs, non-CUDA devices (CPU " \
            "without TRITON_INTERPRET=1), P > 256, N > 256 or R > 16 -> the core's default composition"
_MAX_DIM = 256

#: The backward's launch, set by measurement (benchmarks/gpu/sweep_tt.py --parts m3):
#: "chunk" caps the chunk that the backward and its state recompute run at (None: the call's
#: chunk_size; the gradients are the same up to rounding, as any chunking of the scan is);
#: "num_warps"; "stages" the software-pipelining depth tried first (None: 3), before 1;
#: "states16": the recomputed entering states kept in the inputs' dtype when it is 16-bit
#: (half the bytes and registers; the backward's dots take them in that dtype anyway).
#: Run 22 (2026-12-07, H100, bf16, B=8 L=2048 H=32 P=64 N=128; benchmarks/results/
#: gpu-20261207-h100): the VJP at chunk 16, 8 warps, 2 stages takes 2.08 ms against 3.42 at
#: the call's chunk 64 (chunk 32: 2.62-2.94; 16 warps: 7-14 ms). At chunk 64 the (QR, QR)
#: tiles spill: compiled for sm_90, 9.6k SASS instructions a chunk with 1.6k spill loads and
#: stores, against 3.7k and ~120 at chunk 16. Run 23 (same shape, after the reordered loop and
#: 16-bit states): chunk 16 with 4 warps and 1 stage 1.66 ms, 4 warps / 2 stages 1.81, 8 warps
#: / 2 stages 2.09, chunk 32 / 8 warps / 1 stage 1.97.
#: "fwd": the same knobs for mamba3_scan's forward (None: the call's chunk, warps by tile size,
#: stages 3). Compiled for sm_90 (bf16, Qk R x N = 64 x 128, 8 warps) its chunk loop spills
#: 329 loads and stores at chunk 64, 32 at chunk 32 and none at 16; run 23 timed the default
#: (chunk 64) at 0.449 ms, chunk 32 / 8 warps 0.440, chunk 16 / 8 warps 0.610: kept.
#: "bp" (forward) and "recompute_bp" (the backward's state recompute): state rows a program
#: (None: min(P, 64)), so B H P / bp programs; at the SISO shape (B H = 256, P = 64) one
#: program a head leaves ~2 an SM (timed in run 29, below).
#: Compiled for sm_90 (bf16, Qk = 64, 8 warps) the forward's chunk loop spills 164 loads at
#: bp = 64 and 106 at bp = 32 (chunk 32, 4 warps, bp = 32: 55).
#: "state_stride" K (backward): the recompute keeps every K-th chunk's entering state (K times
#: fewer bytes: at chunk 16 the states are 537 MB at the SISO shape in bf16, written once and
#: read once) and the backward recomputes the others per block of K chunks into a per-program
#: scratch (B H K P N, L2-sized), ~(K - 1) / K more state updates. Run 29 (2026-12-07, H100,
#: bf16, SISO shape): no gain (1.88 ms at K = 4 against 1.67); kept at 1.
#: Run 29 also timed the forward: chunk 32 / 4 warps / bp 32 0.395 ms against the call's chunk
#: (64) / 8 warps / bp 64 0.449 (chunk 32 / 8 warps 0.428, bp 16 1.43); the recompute's
#: bp 32 1.652 ms against 1.666 (noise), bp 16 1.80: kept at None.
#: "rows" caps the chunk's rows Qk R (None: no cap beyond the layout's 128). The 16-bit forward
#: keeps MIMO at SISO's timed tile (32 rows: Qk = 8 at R = 4). Compiled for sm_90 (bf16, R = 4,
#: N = 128), it has 111 spill loads a chunk, against 1679 at 128 rows with 4 warps and 681 at
#: the earlier default (128 rows, 8 warps, bp 64). Run 33 (2026-12-07, H100, bf16, MIMO R = 4 at
#: the SISO shape) timed it: forward 8 tokens a chunk (32 rows) / 4 warps / bp 32 1.65 ms against
#: 3.42 at 16 tokens, 4.16 at 32 with 8 warps and bp 64, 7.07 at 32 with 4 warps; the VJP at 4
#: tokens (16 rows) / 4 warps / 1 stage 9.66 ms against 12.4 at 8, 13.2 at 16 (the earlier
#: default) and 12.6 at 4 with 8 warps: so the 16-bit backward caps rows at 16 too (SISO keeps
#: chunk 16). Static spill counts did not predict the float32 timings (run 32: 16 rows with 4
#: warps, 963 spill loads, took 273 ms; 8 warps, 2942 spill loads, took 43 ms).
#: "fwd_ieee" / "bwd_ieee": the same knobs for float32 inputs with IEEE dots (the float32 default,
#: MAMBA_TRITON_FP32_DOT unset; "states16" concerns 16-bit inputs only). Triton lowers those dots
#: to FMAs held in registers, and 16-bit launches spill there: compiled for sm_90, the forward at
#: the call's chunk (64 rows, 8 warps) keeps 9 KB of stack a thread with 8.6k spill loads a chunk,
#: the backward at chunk 16 / 4 warps 8.3 KB (MIMO R = 4, 64 rows: 64 KB), against ~230 / ~300
#: loads at 16 rows (forward 4 warps with bp 32 or 8 warps with bp 64; SISO backward 8 warps). Run
#: 28 timed the old float32 launch: SISO forward 28.4 ms, MIMO forward + backward 600 ms. Run 32
#: (H100, float32, B=8 L=2048 H=32 P=64 N=128; MIMO R=4): the backward at 16 rows / 8 warps 12.9 ms
#: SISO, 42.8 MIMO (4 warps 16.1 and 273.5; 16 warps 15.2 and 60.0); the forward at 32 rows / 8
#: warps / bp 32 21.3 ms SISO, 84.7 MIMO (16 rows: 24.0-35.8 and 96-124). The float32 forward stays
#: slow (cuda_cupy's: 4.2 ms SISO); spill counts do not explain it (16 and 32 rows time alike)
#: and it has not been profiled on a GPU yet.
#: "variant" (backward): "serial" (the default: one program per (batch, head) walks every chunk)
#: or "blocked" (session 14, not yet timed on a GPU): a serial pass (_m3_dsb, one program per
#: (batch, head, "dsb_bp" state rows, default 16), a (P, N) update a chunk) leaves the state
#: gradient where it enters each block of "block" chunks (default 4), then one program per
#: (batch, head, block) runs the backward of its block from there, its entering states kept at
#: the block stride (recomputed inside the block as under "state_stride"). At the SISO shape that
#: is 256 x 32 programs instead of 256 (~2 an SM), for an extra (B, blocks, H, P, N) read and
#: write in the states' dtype (134 MB at block 4) and the in-block state recompute. Compiled for
#: sm_90 (bf16, chunk 16, 4 warps): 1672 spill bytes at block 4, 1296 at block 2 (2168 and 1032
#: with "block_scratch"), against 1578 for "serial"; _m3_dsb 151 registers at 16 rows, no spills.
#: sweep_tt.py's m3 grid takes it.
#: Inside a block the entering states are stepped to from the block's first when needed (K (K-1)
#: / 2 state updates a block: 1 at K = 2, 6 at K = 4), or with "block_scratch" True computed once
#: into scratch rows ((B H blocks, K, P, N): as large as every chunk's states; K - 1 updates).
#: "save": the saving form (mamba_core/ops/saving.py; the mixers' forward_train runs it). With
#: "states" True it keeps the states the backward reads, every span = Qk x K tokens (the
#: backward's chunk Qk and state stride K, its block under "blocked"): (B, ceil(L/span), H, P, N)
#: in the states' dtype, 537 MB at the SISO benchmark shape in bf16 with the serial backward
#: (span 16), 134 MB with blocks of 4 (span 64), against x's 67 MB. The forward is the plain
#: forward's launch storing them when its chunk divides span (the blocked backward's case),
#: else the backward's state recompute writing y too; the VJP then runs no forward. False: no
#: residuals (the plain forward; the VJP recomputes). "state_stride" K (None: the backward's
#: own, 1) for the serial backward keeps every K-th chunk's state (K times less memory); the
#: VJP then recomputes the others per block of K chunks (not yet timed).
CONFIG = {"bwd": {"chunk": 16, "num_warps": 4, "stages": 1, "states16": True, "recompute_bp": None,
                  "state_stride": 1, "rows": 16},
          "save": {"states": True, "state_stride": None},
          "fwd": {"chunk": 32, "num_warps": 4, "stages": None, "bp": 32, "rows": 32},
          "bwd_ieee": {"chunk": None, "num_warps": 8, "stages": 1, "recompute_bp": 32, "state_stride": 1,
                       "rows": 16},
          "fwd_ieee": {"chunk": None, "num_warps": 8, "stages": None, "bp": 32, "rows": 32}}


def conf_key(kind: str, dtype) -> str:
    """The CONFIG entry that launches ``kind`` ("fwd" or "bwd") for inputs of ``dtype``:
    "<kind>_ieee" for float32 with IEEE dots, else ``kind``."""
    return f"{kind}_ieee" if dtype == torch.float32 and dot_precision(dtype) == "ieee" else kind


def _chunk_cap(conf, chunk_size: int, R: int) -> int:
    """The chunk a launch runs at: the call's, capped by conf's "chunk" and by its "rows" / R."""
    cap = int(chunk_size)
    if conf.get("chunk") is not None:
        cap = min(cap, int(conf["chunk"]))
    if conf.get("rows") is not None:
        cap = min(cap, max(1, int(conf["rows"]) // R))
    return cap


@triton.jit
def _rows(b, h, c, L, H, R: tl.constexpr, QK: tl.constexpr, BQR: tl.constexpr):
    rows = tl.arange(0, BQR)
    tk = rows // R
    rk = rows % R
    t = c * QK + tk
    rv = (rows < QK * R) & (t < L)
    return rows, tk, rk, t, rv


@triton.jit
def _chunk_coefs(dt_ptr, A_ptr, tr_ptr, b, h, t, rk, rv, L, H):
    tok = (b * L + t) * H + h
    dtv = tl.load(dt_ptr + tok, mask=rv, other=0.0).to(tl.float32)
    Av = tl.load(A_ptr + tok, mask=rv, other=0.0).to(tl.float32)
    trv = tl.load(tr_ptr + tok, mask=rv, other=0.0).to(tl.float32)
    a_row = tl.where(rv & (rk == 0), Av * dtv, 0.0)
    m1 = rv & (t + 1 < L)
    dt1 = tl.load(dt_ptr + tok + H, mask=m1, other=0.0).to(tl.float32)
    tr1 = tl.load(tr_ptr + tok + H, mask=m1, other=0.0).to(tl.float32)
    gamma = trv * dtv
    scale = gamma + (1.0 - tr1) * dt1
    return tok, a_row, gamma, scale


@triton.jit
def _chunk_start(x_ptr, dt_ptr, A_ptr, tr_ptr, mx_ptr, b, h, c, L, H, P, offs_p, pm,
                 R: tl.constexpr, QK: tl.constexpr, BQR: tl.constexpr, HAS_MX: tl.constexpr):
    # chunk c's rows, token coefficients, decay cumsums and v = x (o mimo_x) rows (QR, BP)
    rows, tk, rk, t, rv = _rows(b, h, c, L, H, R, QK, BQR)
    tok, a_row, gamma, scale = _chunk_coefs(dt_ptr, A_ptr, tr_ptr, b, h, t, rk, rv, L, H)
    cum = tl.cumsum(a_row, 0)
    cum_last = tl.sum(a_row, 0)
    vm = rv[:, None] & pm[None, :]
    v = tl.load(x_ptr + tok[:, None] * P + offs_p[None, :], mask=vm, other=0.0).to(tl.float32)
    if HAS_MX:
        v = v * tl.load(mx_ptr + (h * R + rk)[:, None] * P + offs_p[None, :], mask=vm, other=0.0).to(tl.float32)
    return rows, tk, rk, t, rv, tok, a_row, gamma, scale, cum, cum_last, vm, v


@triton.jit
def _state_next(S, cum, cum_last, scale, v, Bm, DT: tl.constexpr, PREC: tl.constexpr):
    # S' = exp(cum_last) S + (v o exp(cum_last - cum_s) scale_s)^T B: the state entering the next chunk
    f = tl.exp(cum_last - cum)
    return tl.exp(cum_last) * S + tl.dot(tl.trans((v * (f * scale)[:, None]).to(DT)), Bm, input_precision=PREC)


@triton.jit
def _dstate_prev(dS, total, dy, e, Cm, DT: tl.constexpr, PREC: tl.constexpr):
    # the state gradient entering a chunk from the one leaving it (the adjoint of _state_next's
    # readout path): dS <- exp(cum_last) dS + (dy o exp(cum))^T C
    return total * dS + tl.dot(tl.trans((dy * e[:, None]).to(DT)), Cm, input_precision=PREC)


@triton.jit
def _state_step(S, x_ptr, dt_ptr, A_ptr, tr_ptr, B_ptr, mx_ptr, b, h, c, L, H, P, N, offs_p, offs_n, pm, nm,
                R: tl.constexpr, QK: tl.constexpr, BQR: tl.constexpr, HAS_MX: tl.constexpr,
                DT: tl.constexpr, PREC: tl.constexpr):
    # the state entering chunk c + 1 from the one entering chunk c (as _m3_fwd forms it)
    rows, tk, rk, t, rv, tok, a_row, gamma, scale, cum, cum_last, vm, v = _chunk_start(
        x_ptr, dt_ptr, A_ptr, tr_ptr, mx_ptr, b, h, c, L, H, P, offs_p, pm, R, QK, BQR, HAS_MX)
    bc = (((b * L + t) * R + rk) * H + h)[:, None] * N + offs_n[None, :]
    Bm = tl.load(B_ptr + bc, mask=rv[:, None] & nm[None, :], other=0.0).to(DT)
    return _state_next(S, cum, cum_last, scale, v, Bm, DT, PREC)


@triton.jit
def _state_rows(H, P, N, BP: tl.constexpr, BN: tl.constexpr):
    # a program over (batch, head) (grid axis 0) and a block of BP state rows (axis 1): its
    # indices, masks and the offsets of its (BP, BN) rows of a (B, H, P, N) state
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    pn = pm[:, None] & nm[None, :]
    st_off = ((b * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
    return pid, b, h, offs_p, offs_n, pm, nm, pn, st_off


@triton.jit
def _m3_fwd(x_ptr, dt_ptr, A_ptr, tr_ptr, B_ptr, C_ptr, D_ptr, mx_ptr, s0_ptr,
            y_ptr, sfin_ptr, sin_ptr,
            L, H, P, N, nc,
            R: tl.constexpr, QK: tl.constexpr, BQR: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
            HAS_D: tl.constexpr, HAS_MX: tl.constexpr, WRITE_Y: tl.constexpr,
            STORE_STATES: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, SSTRIDE: tl.constexpr = 1):
    pid, b, h, offs_p, offs_n, pm, nm, pn, st_off = _state_rows(H, P, N, BP, BN)
    S = tl.load(s0_ptr + st_off, mask=pn, other=0.0).to(tl.float32)
    if HAS_D:
        Dh = tl.load(D_ptr + h).to(tl.float32)
    for c in range(0, nc):
        rows, tk, rk, t, rv, tok, a_row, gamma, scale, cum, cum_last, vm, v = _chunk_start(
            x_ptr, dt_ptr, A_ptr, tr_ptr, mx_ptr, b, h, c, L, H, P, offs_p, pm, R, QK, BQR, HAS_MX)
        bc = (((b * L + t) * R + rk) * H + h)[:, None] * N + offs_n[None, :]
        bm = rv[:, None] & nm[None, :]
        Bm = tl.load(B_ptr + bc, mask=bm, other=0.0).to(DT)
        if WRITE_Y:
            Cm = tl.load(C_ptr + bc, mask=bm, other=0.0).to(DT)
            ti = tk[:, None]
            tj = tk[None, :]
            low = ti >= tj
            ex = tl.where(low, tl.exp(tl.where(low, cum[:, None] - cum[None, :], 0.0)), 0.0)
            w = ex * tl.where(ti == tj, gamma[None, :], scale[None, :])
            CB = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
            y = tl.dot((CB * w).to(DT), v.to(DT), input_precision=PREC)
            y += tl.exp(cum)[:, None] * tl.dot(Cm, tl.trans(S.to(DT)), input_precision=PREC)
            if HAS_D:
                y += Dh * v
            yo = (((b * L + t) * R + rk) * H + h)[:, None] * P + offs_p[None, :]
            tl.store(y_ptr + yo, y.to(y_ptr.dtype.element_ty), mask=vm)
        if STORE_STATES:  # every SSTRIDE-th chunk's entering state, at index c // SSTRIDE
            ncs = (nc + SSTRIDE - 1) // SSTRIDE
            so = (((b * ncs + c // SSTRIDE) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
            if c % SSTRIDE == 0:
                tl.store(sin_ptr + so, S, mask=pn)
        S = _state_next(S, cum, cum_last, scale, v, Bm, DT, PREC)
    tl.store(sfin_ptr + st_off, S, mask=pn)


@triton.jit
def _m3_bwd(x_ptr, dt_ptr, A_ptr, tr_ptr, B_ptr, C_ptr, D_ptr, mx_ptr, sin_ptr, dy_ptr, dsl_ptr,
            dv_ptr, dB_ptr, dC_ptr, dg_ptr, dsc_ptr, da_ptr, dD_ptr, ds0_ptr, scr_ptr, dsb_ptr,
            L, H, P, N, nc,
            R: tl.constexpr, QK: tl.constexpr, BQR: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
            HAS_D: tl.constexpr, HAS_MX: tl.constexpr, HAS_DY: tl.constexpr, HAS_DSL: tl.constexpr,
            DT: tl.constexpr, PREC: tl.constexpr, SSTRIDE: tl.constexpr = 1,
            BLOCKED: tl.constexpr = False, SCRATCH: tl.constexpr = True):
    # SSTRIDE > 1: sin holds every SSTRIDE-th chunk's entering state; on entering a block of
    # SSTRIDE chunks (walking in reverse) the program recomputes the others forward from the
    # block's first, into its scratch rows scr (programs, SSTRIDE, P, N), and reads them there.
    # BLOCKED: one program per (batch, head, block of SSTRIDE chunks) (grid axis 1), starting
    # from the state gradient entering its block's end (dsb, (B, blocks, H, P, N), _m3_dsb's);
    # dD is then per program (B H blocks), dS0 written by the first block's program.
    # SCRATCH False (with SSTRIDE > 1): no scratch rows; chunk c's entering state is stepped
    # from its block's first when it is needed (0 + 1 + ... + (SSTRIDE - 1) steps a block
    # instead of SSTRIDE - 1; the same at SSTRIDE = 2).
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    pn = pm[:, None] & nm[None, :]
    st_off = ((b * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
    ncs = (nc + SSTRIDE - 1) // SSTRIDE
    if BLOCKED:
        blk = tl.program_id(1).to(tl.int64)
        c_end = tl.minimum(blk * SSTRIDE + SSTRIDE, nc)
        nwalk = c_end - blk * SSTRIDE
        srow = pid * ncs + blk  # this program's scratch rows
        dS = tl.load(dsb_ptr + (((b * ncs + blk) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :],
                     mask=pn, other=0.0).to(tl.float32)
    else:
        c_end = nc
        nwalk = nc
        srow = pid
        if HAS_DSL:
            dS = tl.load(dsl_ptr + st_off, mask=pn, other=0.0).to(tl.float32)
        else:
            dS = tl.zeros((BP, BN), dtype=tl.float32)
    Dh = 0.0
    if HAS_D:
        Dh = tl.load(D_ptr + h).to(tl.float32)
    dD_acc = tl.zeros((BQR,), dtype=tl.float32)
    for ci in range(0, nwalk):
        c = c_end - 1 - ci
        if (SSTRIDE > 1) & SCRATCH:
            jc = c % SSTRIDE
            if (jc == SSTRIDE - 1) | (ci == 0):  # the first chunk of its block in this walk
                c0 = c - jc
                so0 = (((b * ncs + c0 // SSTRIDE) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
                Sr = tl.load(sin_ptr + so0, mask=pn, other=0.0).to(tl.float32)
                for jj in range(1, jc + 1):
                    Sr = _state_step(Sr, x_ptr, dt_ptr, A_ptr, tr_ptr, B_ptr, mx_ptr, b, h, c0 + jj - 1, L, H,
                                     P, N, offs_p, offs_n, pm, nm, R, QK, BQR, HAS_MX, DT, PREC)
                    tl.store(scr_ptr + ((srow * SSTRIDE + jj) * P + offs_p[:, None]) * N + offs_n[None, :],
                             Sr.to(scr_ptr.dtype.element_ty), mask=pn)
                tl.debug_barrier()  # the scratch rows, written by other threads, are read below
        rows, tk, rk, t, rv, tok, a_row, gamma, scale, cum, cum_last, vm, v = _chunk_start(
            x_ptr, dt_ptr, A_ptr, tr_ptr, mx_ptr, b, h, c, L, H, P, offs_p, pm, R, QK, BQR, HAS_MX)
        row_tok = ((b * L + t) * R + rk) * H + h
        bc = row_tok[:, None] * N + offs_n[None, :]
        bm = rv[:, None] & nm[None, :]
        Bm = tl.load(B_ptr + bc, mask=bm, other=0.0).to(DT)
        Cm = tl.load(C_ptr + bc, mask=bm, other=0.0).to(DT)
        if SSTRIDE > 1:
            if (c % SSTRIDE == 0) | (not SCRATCH):  # (without scratch: the block's first, stepped below)
                so = (((b * ncs + c // SSTRIDE) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
                sptr = sin_ptr
            else:
                so = ((srow * SSTRIDE + c % SSTRIDE) * P + offs_p[:, None]) * N + offs_n[None, :]
                sptr = scr_ptr
        else:
            so = (((b * nc + c) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :]
            sptr = sin_ptr
        # masked cumulative sums (not differences of cum): the backward's sums cancel
        seg = tl.cumsum(tl.where(rows[:, None] > rows[None, :], a_row[:, None], 0.0), 0)
        e = tl.exp(cum)
        f = tl.exp(tl.sum(tl.where(rows[:, None] == BQR - 1, seg, 0.0), 0))
        total = tl.exp(cum_last)
        to_end = f * scale
        dSd = dS.to(DT)
        # In this order each (QR, N) result is stored before the next is formed, and the
        # entering state is loaded last, so fewer tiles are live at once (register spills).
        # (1) the in-chunk (QR, QR) terms: dv's share, dgamma, dscale's and da's shares
        dgam = tl.zeros((BQR,), dtype=tl.float32)
        dscale = tl.zeros((BQR,), dtype=tl.float32)
        da = tl.zeros((BQR,), dtype=tl.float32)
        dv = tl.zeros((BQR, BP), dtype=tl.float32)
        if HAS_DY:
            ti = tk[:, None]
            tj = tk[None, :]
            low = ti >= tj
            ex = tl.where(low, tl.exp(seg), 0.0)
            w = ex * tl.where(ti == tj, gamma[None, :], scale[None, :])
            CB = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
            W = CB * w
            yo = row_tok[:, None] * P + offs_p[None, :]
            dy = tl.load(dy_ptr + yo, mask=vm, other=0.0).to(tl.float32)
            dyD = dy.to(DT)
            dSc = tl.dot(dyD, tl.trans(v.to(DT)), input_precision=PREC)  # (QR, QR)
            dCB = (dSc * w).to(DT)
            dcoef = dSc * CB * ex
            dgam = tl.sum(tl.where(ti == tj, dcoef, 0.0), 0)
            dscale = tl.sum(tl.where(ti > tj, dcoef, 0.0), 0)
            # seg(i, j) = sum over rows j < m <= i of a_m: da_m = sum_{i >= m} sum_{j < m} dseg
            rect = tl.cumsum(dSc * W, 0, reverse=True)
            da = tl.sum(tl.where(rows[:, None] > rows[None, :], rect, 0.0), 1)
            dv = tl.dot(tl.trans(W.to(DT)), dyD, input_precision=PREC) + Dh * dy
            dD_acc += tl.sum(dy * v, 1)
        # (2) dB: through the state gradient, and the in-chunk share
        dB = to_end[:, None] * tl.dot(v.to(DT), dSd, input_precision=PREC)
        if HAS_DY:
            dB += tl.dot(tl.trans(dCB), Cm, input_precision=PREC)
        tl.store(dB_ptr + bc, dB, mask=bm)
        # (3) dv through the state gradient, and what the decays to the chunk's end owe
        BG = tl.dot(Bm, tl.trans(dSd), input_precision=PREC)  # (QR, P)
        dv += to_end[:, None] * BG
        tl.store(dv_ptr + row_tok[:, None] * P + offs_p[None, :], dv, mask=vm)
        dto_end = tl.sum(v * BG, 1)
        dscale += f * dto_end
        # cum_last - cum_s = sum over rows m > s of a_m: exclusive cumsum; the total feeds all
        da += tl.sum(tl.where(rows[:, None] > rows[None, :], (to_end * dto_end)[None, :], 0.0), 1)
        # (4) the terms through the entering state: dC, da's last shares
        Sin = tl.load(sptr + so, mask=pn, other=0.0).to(tl.float32)
        if (SSTRIDE > 1) & (not SCRATCH):
            for jj in range(0, c % SSTRIDE):
                Sin = _state_step(Sin, x_ptr, dt_ptr, A_ptr, tr_ptr, B_ptr, mx_ptr, b, h, c - c % SSTRIDE + jj,
                                  L, H, P, N, offs_p, offs_n, pm, nm, R, QK, BQR, HAS_MX, DT, PREC)
        da += total * tl.sum(tl.sum(dS * Sin, 1), 0)
        if HAS_DY:
            SinD = Sin.to(DT)
            dC = e[:, None] * tl.dot(dyD, SinD, input_precision=PREC)
            dC += tl.dot(dCB, Bm, input_precision=PREC)
            tl.store(dC_ptr + bc, dC, mask=bm)
            CS = tl.dot(Cm, tl.trans(SinD), input_precision=PREC)  # (QR, P)
            da += tl.cumsum(e * tl.sum(dy * CS, 1), 0, reverse=True)
            dS = _dstate_prev(dS, total, dy, e, Cm, DT, PREC)
        else:
            dS = total * dS
        tl.store(dg_ptr + row_tok, dgam, mask=rv)
        tl.store(dsc_ptr + row_tok, dscale, mask=rv)
        tl.store(da_ptr + tok, da, mask=rv & (rk == 0))
    if BLOCKED:
        if blk == 0:
            tl.store(ds0_ptr + st_off, dS, mask=pn)
        tl.store(dD_ptr + pid * ncs + blk, tl.sum(dD_acc, 0))
    else:
        tl.store(ds0_ptr + st_off, dS, mask=pn)
        tl.store(dD_ptr + pid, tl.sum(dD_acc, 0))


@triton.jit
def _m3_dsb(dt_ptr, A_ptr, tr_ptr, C_ptr, dy_ptr, dsl_ptr, dsb_ptr, L, H, P, N, nc,
            R: tl.constexpr, QK: tl.constexpr, BQR: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
            HAS_DY: tl.constexpr, HAS_DSL: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
            K: tl.constexpr):
    # The blocked backward's serial part: the state gradient walked back over the chunks
    # (_dstate_prev, as _m3_bwd carries it), stored where it
    # enters each block of K chunks from its end: dsb (B, blocks, H, P, N). One program per
    # (batch, head, block of BP state rows): the rows do not mix.
    pid, b, h, offs_p, offs_n, pm, nm, pn, st_off = _state_rows(H, P, N, BP, BN)
    if HAS_DSL:
        dS = tl.load(dsl_ptr + st_off, mask=pn, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros((BP, BN), dtype=tl.float32)
    nblk = (nc + K - 1) // K
    for ci in range(0, nc):
        c = nc - 1 - ci
        if (c % K == K - 1) | (ci == 0):  # the last chunk of its block: what enters the block's end
            tl.store(dsb_ptr + (((b * nblk + c // K) * H + h) * P + offs_p[:, None]) * N + offs_n[None, :],
                     dS.to(dsb_ptr.dtype.element_ty), mask=pn)
        rows, tk, rk, t, rv = _rows(b, h, c, L, H, R, QK, BQR)
        tok, a_row, gamma, scale = _chunk_coefs(dt_ptr, A_ptr, tr_ptr, b, h, t, rk, rv, L, H)
        total = tl.exp(tl.sum(a_row, 0))
        if HAS_DY:
            e = tl.exp(tl.cumsum(a_row, 0))
            row_tok = ((b * L + t) * R + rk) * H + h
            dy = tl.load(dy_ptr + row_tok[:, None] * P + offs_p[None, :], mask=rv[:, None] & pm[None, :],
                         other=0.0).to(tl.float32)
            Cm = tl.load(C_ptr + row_tok[:, None] * N + offs_n[None, :], mask=rv[:, None] & nm[None, :],
                         other=0.0).to(DT)
            dS = _dstate_prev(dS, total, dy, e, Cm, DT, PREC)
        else:
            dS = total * dS


@triton.jit
def _m3_step(x_ptr, dt_ptr, A_ptr, tr_ptr, B_ptr, C_ptr, s_ptr, k_ptr, v_ptr, D_ptr, mx_ptr,
             y_ptr, snew_ptr, H, P, N,
             R: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
             HAS_D: tl.constexpr, HAS_MX: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pm = offs_p < P
    nm = offs_n < N
    pn = pm[:, None] & nm[None, :]
    dtv = tl.load(dt_ptr + pid).to(tl.float32)
    Av = tl.load(A_ptr + pid).to(tl.float32)
    trv = tl.load(tr_ptr + pid).to(tl.float32)
    alpha = tl.exp(Av * dtv)
    beta = (1.0 - trv) * dtv * alpha
    gamma = trv * dtv
    st_off = (pid * P + offs_p[:, None]) * N + offs_n[None, :]
    S = alpha * tl.load(s_ptr + st_off, mask=pn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid * P + offs_p, mask=pm, other=0.0).to(tl.float32)
    xv = tl.load(v_ptr + pid * P + offs_p, mask=pm, other=0.0).to(tl.float32)
    for r in tl.static_range(R):
        mxr = 1.0
        if HAS_MX:
            mxr = tl.load(mx_ptr + (h * R + r) * P + offs_p, mask=pm, other=0.0).to(tl.float32)
        rn = ((b * R + r) * H + h) * N + offs_n
        kr = tl.load(k_ptr + rn, mask=nm, other=0.0).to(tl.float32)
        Br = tl.load(B_ptr + rn, mask=nm, other=0.0).to(tl.float32)
        S += beta * (xv * mxr)[:, None] * kr[None, :] + gamma * (x * mxr)[:, None] * Br[None, :]
    for r in tl.static_range(R):
        mxr = 1.0
        if HAS_MX:
            mxr = tl.load(mx_ptr + (h * R + r) * P + offs_p, mask=pm, other=0.0).to(tl.float32)
        rn = ((b * R + r) * H + h) * N + offs_n
        Cr = tl.load(C_ptr + rn, mask=nm, other=0.0).to(tl.float32)
        y = tl.sum(S * Cr[None, :], 1)
        if HAS_D:
            y += tl.load(D_ptr + h).to(tl.float32) * x * mxr
        tl.store(y_ptr + ((b * R + r) * H + h) * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=pm)
    tl.store(snew_ptr + st_off, S, mask=pn)


# ---- host glue -----------------------------------------------------------------------------
def _layout(chunk_size, R):
    """(Qk tokens per chunk, BQR rows block): Qk a power of two, Qk R <= 128 rows (>= 16)."""
    qk = min(pow2(int(chunk_size), 1), 64)
    while qk > 1 and qk * R > 128:
        qk //= 2
    while qk * R < 16 and qk < 64:
        qk *= 2
    return qk, pow2(qk * R)


def _supported(x, B, *others) -> bool:
    return (can_run(x, B, *others) and x.shape[-1] <= _MAX_DIM and B.shape[-1] <= _MAX_DIM
            and B.shape[-3] <= 16)


def _up(x, mimo_x):
    """x (B, H, P) -> v (B, R, H, P) in float32."""
    v = x.float().unsqueeze(1)
    return v if mimo_x is None else v * mimo_x.float().permute(1, 0, 2)


def _s_start(x, dt, trap, initial_state, initial_k, initial_v, mimo_x, Bsz, H, P, N):
    """S'_{-1} = initial_state + dt_0 (1 - trap_0) sum_r v0_r k0_r^T (float32), and u0."""
    S = torch.zeros((Bsz, H, P, N), dtype=torch.float32, device=x.device) if initial_state is None \
        else initial_state.float().clone()
    u0 = None
    if initial_k is not None and initial_v is not None:
        u0 = torch.einsum("brhp,brhn->bhpn", _up(initial_v, mimo_x), initial_k.float())
        owed0 = (1.0 - trap[:, 0].float()) * dt[:, 0].float()
        S = S + owed0[:, :, None, None] * u0
    return S.contiguous(), u0


def _fits(chunk_size, R, stages=3):
    """Launch candidates (chunk cap, num_stages) from the fastest down (see launch_fitting):
    the chunk halves down to the smallest layout, each with ``stages`` of software pipelining
    (Triton's default 3) and then none (1). float32 at N = 128 needs them: the backward at
    Qk = 64 asked for 299 KB of shared memory on an H100 (227 KB allowed)."""
    out, cap, seen = [], int(chunk_size), set()
    while True:
        qk = _layout(cap, R)[0]
        if qk not in seen:
            seen.add(qk)
            out += [(cap, stages), (cap, 1)] if stages != 1 else [(cap, 1)]
        if cap <= 1 or qk * R <= 16:
            return out
        cap = max(1, min(cap, qk) // 2)


def _key(kind, x, B, chunk_size, *flags):
    return ("m3", kind, x.dtype, x.shape[-1], B.shape[2], B.shape[4], int(chunk_size), flags)


def _run_fwd(x, dt, A, trap, B, C, D, mimo_x, chunk_size, S0, write_y, store_states, stages=3,
             warps=None, bp=None, sstride=1):
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    qk, bqr = _layout(chunk_size, R)
    nc = triton.cdiv(L, qk)
    x, dt, A, trap, B, C, D, mimo_x = (_c(t) for t in (x, dt, A, trap, B, C, D, mimo_x))
    BN = pow2(N)
    BP = min(pow2(P), 64 if bp is None else pow2(int(bp)))  # state rows a program: (B H, P / BP) programs
    dev = x.device
    y = torch.empty((Bsz, L, R, H, P), dtype=x.dtype, device=dev) if write_y else x
    sfin = torch.empty((Bsz, H, P, N), dtype=torch.float32, device=dev)
    # the entering states for the backward: in the inputs' dtype when it is 16-bit (the backward
    # feeds them to 16-bit dots anyway; only da's sum(dS * S) sees the rounding), else float32
    sdt = x.dtype if x.dtype in (torch.bfloat16, torch.float16) and CONFIG["bwd"].get("states16", True) \
        else torch.float32
    sin = torch.empty((Bsz, triton.cdiv(nc, sstride), H, P, N), dtype=sdt, device=dev) if store_states else sfin
    dummy = x
    _m3_fwd[(Bsz * H, triton.cdiv(P, BP))](
        x, dt, A, trap, B, C, D if D is not None else dummy, mimo_x if mimo_x is not None else dummy,
        S0, y, sfin, sin, L, H, P, N, nc,
        R=R, QK=qk, BQR=bqr, BP=BP, BN=BN, HAS_D=D is not None, HAS_MX=mimo_x is not None,
        WRITE_Y=write_y, STORE_STATES=store_states, DT=dot_dtype(x.dtype),
        PREC=dot_precision(x.dtype), num_warps=warps or num_warps(bqr, BN), num_stages=stages,
        SSTRIDE=sstride,
    )
    return y, sfin, sin, qk, bqr, nc


def mamba3_scan(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                initial_k=None, initial_v=None):
    """Fused chunked Mamba-3 scan (Triton). Same contract as mamba_core.ops.mamba3.mamba3_scan."""
    if not _supported(x, B, dt, A, trap, C, D, mimo_x, initial_state, initial_k, initial_v):
        return fallback("mamba3_scan")(x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state,
                                       initial_k, initial_v)
    Bsz, L, H, P = x.shape
    N = B.shape[4]
    S0, _ = _s_start(x, dt, trap, initial_state, initial_k, initial_v, mimo_x, Bsz, H, P, N)
    conf = CONFIG[conf_key("fwd", x.dtype)]
    chunk_f = _chunk_cap(conf, chunk_size, B.shape[2])
    warps, bp = conf.get("num_warps"), conf.get("bp")
    res, _ = launch_fitting(
        _key("fwd", x, B, chunk_f, D is not None, mimo_x is not None, warps, conf.get("stages"), bp),
        _fits(chunk_f, B.shape[2], conf.get("stages") or 3),
        lambda cfg: _run_fwd(x, dt, A, trap, B, C, D, mimo_x, cfg[0], S0, True, False, cfg[1], warps, bp))
    if res is None:
        return fallback("mamba3_scan")(x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state,
                                       initial_k, initial_v)
    y, sfin = res[0], res[1]
    return y, sfin, B[:, -1], x[:, -1]


@dataclasses.dataclass(frozen=True)
class SavedStates:
    """A saving forward's residuals: the states entering every ``span``-th token (0, span, 2 span,
    ...), (B, ceil(L / span), H, P, N) in the states' dtype. A backward whose chunk of Qk tokens
    divides ``span`` reads them as every (span / Qk)-th chunk's entering state."""

    states: torch.Tensor
    span: int


def _bwd_launch_conf(x, chunk_size, R):
    """The backward's CONFIG entry, its chunk cap and its state stride (the block under
    "blocked": "block" chunks, default 4)."""
    conf = CONFIG[conf_key("bwd", x.dtype)]
    if _blocked(conf):
        return conf, _chunk_cap(conf, chunk_size, R), max(1, int(conf.get("block") or 4))
    return conf, _chunk_cap(conf, chunk_size, R), max(1, int(conf.get("state_stride") or 1))


def _blocked(conf) -> bool:
    v = conf.get("variant") or "serial"
    if v not in ("serial", "blocked"):
        raise ValueError(f"mamba3 CONFIG backward variant {v!r}: expected 'serial' or 'blocked'")
    return v == "blocked"


def mamba3_scan_saving(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                       initial_k=None, initial_v=None):
    """mamba3_scan's saving form (CONFIG "save"): the outputs and SavedStates, or the plain
    forward's outputs and None when "states" is off or the scan falls back.

    The states are kept every ``span`` tokens, span = the backward's chunk x its state stride
    (its block under "blocked"). When the forward's own chunk divides span, this is the plain
    forward's launch storing every (span / its chunk)-th state; else the backward's state
    recompute run here, writing y too."""
    args = (x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state, initial_k, initial_v)
    save = CONFIG["save"]
    if not save.get("states") or not _supported(x, B, dt, A, trap, C, D, mimo_x, initial_state,
                                                 initial_k, initial_v):
        return mamba3_scan(*args), None
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    S0, _ = _s_start(x, dt, trap, initial_state, initial_k, initial_v, mimo_x, Bsz, H, P, N)
    conf, chunk_b, sstride = _bwd_launch_conf(x, chunk_size, R)
    if not _blocked(conf):  # (the blocked backward needs the states at its blocks' starts)
        sstride = max(1, int(save.get("state_stride") or sstride))
    span = _layout(chunk_b, R)[0] * sstride
    fconf = CONFIG[conf_key("fwd", x.dtype)]
    chunk_f = _chunk_cap(fconf, chunk_size, R)
    flags = (D is not None, mimo_x is not None, span, CONFIG["bwd"].get("states16", True))
    if span % _layout(chunk_f, R)[0] == 0:  # the forward's own launch (its fitted chunks divide too)
        warps, bp = fconf.get("num_warps"), fconf.get("bp")
        res, _ = launch_fitting(
            _key("save_fwd", x, B, chunk_f, warps, fconf.get("stages"), bp, *flags),
            _fits(chunk_f, R, fconf.get("stages") or 3),
            lambda cfg: _run_fwd(x, dt, A, trap, B, C, D, mimo_x, cfg[0], S0, True, True, cfg[1], warps,
                                 bp, span // _layout(cfg[0], R)[0]))
    else:  # the backward's state recompute, writing y too
        bp = conf.get("recompute_bp")
        res, _ = launch_fitting(
            _key("save", x, B, chunk_b, bp, *flags), _fits(chunk_b, R),
            lambda cfg: _run_fwd(x, dt, A, trap, B, C, D, mimo_x, cfg[0], S0, True, True, cfg[1], bp=bp,
                                 sstride=span // _layout(cfg[0], R)[0]))
    if res is None:
        return mamba3_scan(*args), None
    y, sfin, sin = res[:3]
    return (y, sfin, B[:, -1], x[:, -1]), SavedStates(sin, span)


def mamba3_scan_vjp_saved(residuals, cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None,
                          chunk_size=64, initial_state=None, initial_k=None, initial_v=None):
    """mamba3_scan_vjp reading the entering states of ``mamba3_scan_saving`` (SavedStates, or
    None: recomputed)."""
    return _scan_vjp(residuals, cotangent, x, dt, A, trap, B, C, D, mimo_x, chunk_size,
                     initial_state, initial_k, initial_v)


def mamba3_scan_vjp(cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64,
                    initial_state=None, initial_k=None, initial_v=None):
    """Mamba-3 backward (Triton): recompute the entering states, one reverse pass per head,
    then fold ranks and token coefficients in torch."""
    return _scan_vjp(None, cotangent, x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state,
                     initial_k, initial_v)


def _scan_vjp(saved, cotangent, x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state,
              initial_k, initial_v):
    """mamba3_scan_vjp, reading ``saved`` (a saving forward's SavedStates) instead of recomputing
    the entering states when the backward's chunk divides their span (the span then sets the
    state stride, or the block of the "blocked" backward)."""
    dy, dS_L, dk_L, dv_L = cotangent
    if not _supported(x, B, dt, A, trap, C, D, mimo_x, initial_state, initial_k, initial_v,
                      dy, dS_L, dk_L, dv_L):
        return fallback("mamba3_scan_vjp")(cotangent, x, dt, A, trap, B, C, D, mimo_x, chunk_size,
                                           initial_state, initial_k, initial_v)
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    S0, u0 = _s_start(x, dt, trap, initial_state, initial_k, initial_v, mimo_x, Bsz, H, P, N)
    xc, dtc, Ac, trc, Bc, Cc, Dc, mxc = (_c(t) for t in (x, dt, A, trap, B, C, D, mimo_x))
    dy, dS_L = _c(dy), _c(dS_L)
    dev, f32 = x.device, torch.float32
    # the kernel stores dB, dC (and dv when no ranks are folded) in the output dtype: one
    # rounding of the float32 accumulators either way, without a float32 copy and a cast pass
    # (at the benchmark shape, 16-bit inputs: 1.3 GB less traffic)
    siso = mimo_x is None and R == 1
    dv = torch.empty((Bsz, L, R, H, P), dtype=x.dtype if siso else f32, device=dev)
    dBr = torch.empty((Bsz, L, R, H, N), dtype=B.dtype, device=dev)
    dCr = torch.zeros((Bsz, L, R, H, N), dtype=C.dtype, device=dev) if dy is None else \
        torch.empty((Bsz, L, R, H, N), dtype=C.dtype, device=dev)
    dg = torch.empty((Bsz, L, R, H), dtype=f32, device=dev)
    dsc = torch.empty((Bsz, L, R, H), dtype=f32, device=dev)
    da = torch.empty((Bsz, L, H), dtype=f32, device=dev)
    dD = torch.empty((Bsz, H), dtype=f32, device=dev)
    dS0 = torch.empty((Bsz, H, P, N), dtype=f32, device=dev)
    dummy = dv
    conf, chunk_b, sstride0 = _bwd_launch_conf(x, chunk_size, R)
    blocked = _blocked(conf)
    warps = int(conf.get("num_warps") or 8)
    DT, PREC = dot_dtype(x.dtype), dot_precision(x.dtype)

    def launch(cfg):
        # the recompute runs at the backward's chunk: its entering states are per chunk (every
        # sstride-th kept); a saving forward's states every span tokens are every (span / Qk)-th
        cap, stages = cfg
        qk, bqr = _layout(cap, R)
        nc = triton.cdiv(L, qk)
        if saved is not None and saved.span % qk == 0:
            sin, sstride = saved.states, saved.span // qk
        else:
            sstride = sstride0
            sin = _run_fwd(x, dt, A, trap, B, C, D, mimo_x, cap, S0, False, True,
                           bp=conf.get("recompute_bp"), sstride=sstride)[2]
        nblk = triton.cdiv(nc, sstride) if blocked else 1
        # scratch rows per program, except for the blocked backward unless CONFIG asks for them
        # ("block_scratch": a block's K - 1 states stored once instead of stepped to when needed;
        # (B H blocks, K, P, N), as large as every chunk's states)
        scratch = sstride > 1 and (not blocked or bool(conf.get("block_scratch")))
        scr = torch.empty((Bsz * H * nblk, sstride, P, N), dtype=sin.dtype, device=dev) if scratch else sin
        dsb, dDp = sin, dD
        if blocked:  # the serial part first: the state gradient where it enters each block
            dDp = torch.empty((Bsz, H, nblk), dtype=f32, device=dev)  # dD per program
            dsb = torch.empty((Bsz, nblk, H, P, N), dtype=sin.dtype, device=dev)
            bpd = min(pow2(P), int(conf.get("dsb_bp") or 16))
            _m3_dsb[(Bsz * H, triton.cdiv(P, bpd))](
                dtc, Ac, trc, Cc, dy if dy is not None else dummy, dS_L if dS_L is not None else dummy, dsb,
                L, H, P, N, nc, R=R, QK=qk, BQR=bqr, BP=bpd, BN=pow2(N), HAS_DY=dy is not None,
                HAS_DSL=dS_L is not None, DT=DT, PREC=PREC, K=sstride,
                num_warps=int(conf.get("dsb_warps") or 4))
        _m3_bwd[(Bsz * H, nblk)](
            xc, dtc, Ac, trc, Bc, Cc, Dc if Dc is not None else dummy, mxc if mxc is not None else dummy,
            sin, dy if dy is not None else dummy, dS_L if dS_L is not None else dummy,
            dv, dBr, dCr, dg, dsc, da, dDp, dS0, scr, dsb, L, H, P, N, nc,
            R=R, QK=qk, BQR=bqr, BP=pow2(P), BN=pow2(N), HAS_D=D is not None,
            HAS_MX=mimo_x is not None, HAS_DY=dy is not None, HAS_DSL=dS_L is not None,
            DT=DT, PREC=PREC, num_warps=warps, num_stages=stages, SSTRIDE=sstride, BLOCKED=blocked,
            SCRATCH=scratch,
        )
        if blocked:
            dD.copy_(dDp.sum(-1))
        return True

    done, _ = launch_fitting(
        _key("bwd", x, B, chunk_b, D is not None, mimo_x is not None, dy is not None, dS_L is not None,
             warps, conf.get("stages"), conf.get("states16", True), conf.get("recompute_bp"), sstride0,
             blocked, bool(conf.get("block_scratch")), None if saved is None else saved.span),
        _fits(chunk_b, R, conf.get("stages") or 3), launch)
    if done is None:
        return fallback("mamba3_scan_vjp")(cotangent, x, dt, A, trap, B, C, D, mimo_x, chunk_size,
                                           initial_state, initial_k, initial_v)
    dtw, Aw, trw = dt.float(), A.float(), trap.float()
    dscale = dsc.sum(2)
    dgamma = dg.sum(2) + dscale
    dowed = torch.cat([torch.zeros_like(dscale[:, :1]), dscale[:, :-1]], dim=1)
    if u0 is not None:
        dowed[:, 0] += (dS0 * u0).sum((-2, -1))
    out = {}
    if mimo_x is None:
        dx = dv[:, :, 0]
        dmx = None
    else:
        mxr = mimo_x.float().permute(1, 0, 2)  # (R, H, P)
        dx = (dv * mxr).sum(2)
        dmx = (dv * x.float().unsqueeze(2)).sum((0, 1)).permute(1, 0, 2)
    if dv_L is not None:
        dx = dx.clone()
        dx[:, -1] += dv_L.float()
    dB = dBr
    if dk_L is not None:
        dB[:, -1] = (dB[:, -1].float() + dk_L.float()).to(dB.dtype)
    out["x"] = dx.to(x.dtype)
    out["dt"] = (da * Aw + dgamma * trw + dowed * (1.0 - trw)).to(dt.dtype)
    out["A"] = (da * dtw).to(A.dtype)
    out["trap"] = ((dgamma - dowed) * dtw).to(trap.dtype)
    out["B"] = dB.to(B.dtype)
    out["C"] = dCr.to(C.dtype)
    if D is not None:
        out["D"] = dD.sum(0).to(D.dtype)
    if mimo_x is not None:
        pass  # filled below (initial v may add to it)
    if initial_state is not None:
        out["initial_state"] = dS0.to(initial_state.dtype)
    if u0 is not None:
        owed0 = (1.0 - trw[:, 0]) * dtw[:, 0]
        du0 = owed0[:, :, None, None] * dS0  # (B, H, P, N)
        k0 = initial_k.float()
        v0 = _up(initial_v, mimo_x)  # (B, R, H, P)
        dv0 = torch.einsum("bhpn,brhn->brhp", du0, k0)
        out["initial_k"] = torch.einsum("bhpn,brhp->brhn", du0, v0).to(initial_k.dtype)
        if mimo_x is None:
            out["initial_v"] = dv0[:, 0].to(initial_v.dtype)
        else:
            out["initial_v"] = (dv0 * mimo_x.float().permute(1, 0, 2)).sum(1).to(initial_v.dtype)
            dmx = dmx + (dv0 * initial_v.float().unsqueeze(1)).sum(0).permute(1, 0, 2)
    else:
        if initial_k is not None:
            out["initial_k"] = torch.zeros_like(initial_k)
        if initial_v is not None:
            out["initial_v"] = torch.zeros_like(initial_v)
    if mimo_x is not None:
        out["mimo_x"] = dmx.to(mimo_x.dtype)
    order = ("x", "dt", "A", "trap", "B", "C", "D", "mimo_x", "initial_state", "initial_k", "initial_v")
    return {k: out[k] for k in order if k in out}


def mamba3_step(x, dt, A, trap, B, C, state, k_state, v_state, D=None, mimo_x=None):
    """One token of the Mamba-3 recurrence (Triton). Same contract as mamba_core's mamba3_step."""
    if not _supported(x, B, dt, A, trap, C, state, k_state, v_state, D, mimo_x):
        return fallback("mamba3_step")(x, dt, A, trap, B, C, state, k_state, v_state, D, mimo_x)
    Bsz, H, P = x.shape
    R, N = B.shape[1], B.shape[3]
    xc, dtc, Ac, trc, Bc, Cc, sc, kc, vc, Dc, mxc = (
        _c(t) for t in (x, dt, A, trap, B, C, state, k_state, v_state, D, mimo_x))
    y = torch.empty((Bsz, R, H, P), dtype=x.dtype, device=x.device)
    snew = torch.empty((Bsz, H, P, N), dtype=torch.float32, device=x.device)
    BN = pow2(N, 1)
    BP = min(pow2(P, 1), max(1, 4096 // BN))
    dummy = xc
    _m3_step[(Bsz * H, triton.cdiv(P, BP))](
        xc, dtc, Ac, trc, Bc, Cc, sc, kc, vc, Dc if Dc is not None else dummy,
        mxc if mxc is not None else dummy, y, snew, H, P, N,
        R=R, BP=BP, BN=BN, HAS_D=D is not None, HAS_MX=mimo_x is not None, num_warps=4,
    )
    return y, snew, B, x


KERNELS = {"mamba3_scan": mamba3_scan, "mamba3_scan_vjp": mamba3_scan_vjp, "mamba3_step": mamba3_step}
SAVING = {"mamba3_scan": SavingForm(mamba3_scan_saving, mamba3_scan_vjp_saved)}
