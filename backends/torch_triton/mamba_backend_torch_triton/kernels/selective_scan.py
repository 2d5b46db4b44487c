"""Triton kernels of the Mamba-1 selective scan: forward, VJP and the decode step.

Ops (signatures and math: mamba_core/ops/selective_scan.py):
    selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state) -> (y, h_L)
    selective_scan_step(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus)   -> (y, h)
    selective_scan_vjp((dy, dh_L), u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                       initial_state) -> {"u", "delta", "A", "B", "C", "D", "z", "delta_bias",
                                          "initial_state"} (the optional ones when given)

Design (B=8, L=2048, E=2048, N=16 on an H100): one program per (batch row b, block of BE
channels), all N states of its channels in registers (N padded to a power of two NP), walking
L in chunks of T tokens. Per chunk it loads (T, BE) tiles of u, delta, z and (T, NP) tiles of
B and C (BE divides E/G, so a block reads one group), forms the affine maps
h -> a h + b with a = exp(dt A) in (0, 1] and b = dt B u as (T, BE, NP) tiles, composes them with
``tl.associative_scan`` along T (log2 T rounds) and applies the carried state: the chunk's
loads do not depend on the carry, so they overlap the previous chunk's math. Only products of
decays in (0, 1] appear: strong decay underflows to exact zeros, nothing overflows.
The (T, BE, NP) exps are the floor (B*L*E*N of them); the scan adds ~3 log2(T) flops each.

Variants (CONFIG[...]["variant"], picked by measurement): "base" as above; "exp2" the same
with log2(e) folded into A once per program and exp2 per element (one multiply fewer per
(t, e, n); also in the backward); "seq" (forward only; the VJP's state-saving forward too) walks
the T tokens of a chunk one by one (unrolled, their loads independent of the state), h <- a h + b
in registers: no scan, no last-row extraction, ~5 flops + one exp2 per (t, e, n), at the price
of a dependent chain of L steps per program (latency hidden by the other resident programs).
These three keep n last in their tiles (A row-major, B/C n-contiguous), so Triton's layout
spreads the N states over lanes: y = sum_n h C, the last-row extraction and the scan along T
cost cross-lane shuffles every chunk.

"tr" (transposed; forward and VJP): every tile has the channels e last and contiguous, as
u, delta, z, y and their gradients are in memory: states [NP, BE], token tiles [T, BE]; A
travels as A^T ((N, E) float32, made by the glue per call), B_t and C_t as [NP] vectors that
every thread loads whole (vectorised; L1 broadcast along e). The default blocked layout then
puts lanes and warps along e and keeps n (and T) inside each thread when BE >= 32 num_warps
(one channel a thread at BE = 32 num_warps); all loads and stores carry max_contiguous 1 so
the coalescing pass does not re-spread n or T over lanes to vectorise along e (checked on the
sm_90 TTGIR: no shuffles, no shared memory in the forward; T=8, BE=32w: 80 registers). Per
chunk the T tokens are walked one by one, unrolled: h <- exp2(dt A log2 e) h + (dt u) B_t and
y_t = sum_n h C_t, all in-thread (~5 flops + one exp2 per (t, e, n)); the chunk's loads come
before any store and do not depend on h, so they issue ahead of the recurrence; y is stored as
one [T, BE] tile per chunk. Floor: the (t, e, n) exp2s, B*L*E*N = 537M at the benchmark
shape, on the MUFU unit (16/clk/SM). Parallelism: B*E threads (16384 at the benchmark shape,
~4 warps an SM): latency is hidden by the unrolled tokens and the N independent states, not by
occupancy. "tr_scan" (forward only; its VJP is "tr"'s): the chunk as [T, NP, BE] maps composed
by ``tl.associative_scan`` along T (in-thread, i.e. sequential), ~2 more flops per (t, e, n)
and ~2 T NP more registers; kept for the sweep to measure. "tr_fold" (forward only; its VJP is "tr"'s):
"tr_scan" with the carried state folded into the first token's offset (b_0 <- b_0 + a_0 h),
so the scan's offsets are the states themselves and its decay products are dead code (one
multiply and one FMA fewer per (t, e, n): 488 against 534 SASS instructions a chunk at T=8,
BE=8 on sm_90); the row selects fold per register (T lies inside each thread) and pick rows
with -0.0, the exact identity of the sum. The "tr" VJP recomputes the chunk's
states h_{t-1} into a [T, NP, BE] register tile (T NP registers a thread: T=4..8), walks the
tokens in reverse with the adjoint carried in registers (no shifted load, no reverse scan;
exp2 twice per (t, e, n)); the dB_t, dC_t shares sum over e, across lanes (5 shuffle rounds
per (t, n) at 32 lanes, per warp, plus a shared-memory round trip when num_warps > 1): the
backward's extra cost over the forward, unavoidable with n inside the thread.

"lanes" (VJP only; its state-saving forward is "seq"'s, and as a forward variant it runs
"seq"): [BE, NP] tiles with 4 n a thread over 4 lanes, per-token vector loads that need no layout
conversion, the chunk's values kept in registers between its forward and reverse walks
(kernels/selective_scan_lanes.py has the design and its compiled cost); CONFIG "maxnreg" caps
its registers. A sweep candidate, not yet timed on a GPU.

Saving form (``SAVING``; mamba_core/ops/saving.py), off unless CONFIG "save" asks: the forward
is the VJP's state-saving forward writing y too, and keeps its states for the VJP, which then
launches its kernel alone (memory: CONFIG's comment).

VJP (recompute): the forward kernel runs again keeping only the state entering each chunk
((B, L/T, E, NP) float32; "tr": (B, L/T, NP, E)); the backward kernel walks the chunks in reverse: recomputes the
chunk's states from the saved one, runs the adjoint g_t = C_t dy'_t + a_{t+1} g_{t+1} as a
reverse associative scan (a_{t+1} from a shifted load of delta), uses a_t h_{t-1} = h_t - b_t,
and carries a_s g_s into the previous chunk. dA, dD, d(delta_bias) accumulate in registers per
program; dB and dC (which sum over the channels of a group) are written per channel block and
summed by torch: deterministic, no atomics.

Where the default VJP's time goes (float32 "base", T=8 BE=32 4 warps; compiled for sm_90 on the
CPU with Triton 3.6, the device's version, 2026-12-07; benchmarks/sass_stats.py reproduces these
counts): 255 registers (2 programs, 8 warps an
SM), no spills, 3416 SASS instructions a chunk. That is ~107 a (t, e, n) element, so ~1.8G warp
instructions at the benchmark shape: ~1.9 ms of issue at one instruction a clock per scheduler,
against 5.2 ms for the whole float32 VJP (its state-saving forward included) and ~2.5 ms for the
official backward. 1062 of them are SHFL (31%). Most come from 19 layout conversions between the
token tiles (u, delta, dy, z, the shifted delta, du, ddelta, dz: lanes along e, as they lie in
memory) and the state tiles (lanes along n, from the B, C and A loads). The rest are the sums
over n (16 lanes) and over e. The "tr" VJP was meant to avoid the conversions but does not: at
T=4 it spills (T=4 BE=16 1 warp: 4568 instructions for the same 32 elements a thread), and at
T=2 BE=32 1 warp (no spills) it takes 3624, ~113 an element, with 46 layout conversions (Triton
spreads n over 16 lanes in some of its tiles) and ~51 float operations an element. So a faster
VJP needs one layout for both kinds of tile, with fewer instructions per element, not a new
launch shape.

A one-layout VJP was then written (session 12; the sweep variant "lanes",
kernels/selective_scan_lanes.py): [BE, NP] state tiles loaded n-contiguous (4 n a thread over 4
lanes, channels over the other 8), token values loaded a token at a time as [BE] vectors and
B_t, C_t as [NP] vectors (fewer elements than threads: Triton re-lays such loads out in the
tiles' slices, so they cost no conversion; [BE, T] token tiles are not re-laid and cost one a
token), the chunk's states, decays and token values kept as tuples. Chunk loops compared
(benchmarks/sass_stats.py, Triton 3.6, sm_90; instructions of the loop over elements a thread
handles a trip; the paragraph above counted the whole kernel under other specializations):

| kernel | launch | loop | an element | SHFL | registers |
| --- | --- | ---: | ---: | ---: | ---: |
| "base" (the default until run 38) | T=8 BE=32 4 warps | 3122 / 32 | ~98 | 1068 | 255 (252 B spilled) |
| "lanes" (float32 default since; bf16: BE=16) | T=4 BE=8 1 warp | 1075 / 16 | ~67 | 132 | 223 (160 capped: no spill) |
| "lanes" | T=2 BE=8 1 warp | 551 / 8 | ~69 | 66 | 143 |
| cuda_cupy ss_bwd (nvcc 13) | 4 lanes a channel, TS=16 | 3989 / 64 | ~62 | 208 | 168 |

"lanes" issues ~31% fewer instructions than "base" and within ~10% of cuda_cupy's CUDA kernel,
whose dB/dC sums are a reduce-scatter over the warp's channels (tl.sum compiles an all-reduce per
value: ~8 of "lanes"' 67). Whether that becomes time is for the GPU: "base"'s ~98 an element are
~1.8 ms of issue against ~4.6 ms for its backward kernel (5.2 ms for the VJP less its ~0.6 ms
state-saving forward), so it issues at ~40%: stalls (8 warps an SM at 255 registers, barriers,
shuffle and shared-memory latency) cost more than instructions; cuda_cupy's VJP, ~2.4 ms with
its forward (run 28: 3.04 ms forward+backward against a 0.61 ms forward), issues at about half
its floor. Run 38 (2026-12-07, H100, run_device.sh s12b) timed it: "lanes" 2.85 ms against
"base"'s 5.17 in float32 (capped at 128 registers; 3.03 uncapped, 3.21 at 160), and 2.82 ms on
bf16 inputs read directly, so it is the default for both (CONFIG above).

Precision: float32 registers and states whatever the input dtype (bf16/fp16 inputs welcome);
y and the input gradients in their argument's dtype; states float32. float64 inputs run the
core's default composition (documented fallback). softplus follows torch (threshold 20) with an
accurate log1p.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from mamba_core.ops.saving import SavingForm

from mamba_backend_torch_triton.kernels._glue import default, interpreting, last_contig, pow2, runs_here

#: launch shapes: chunk T, channels per program BE (capped; BE always divides E/G), warps, and
#: the forward kernel's variant (see the module docstring); read at every call, so a sweep
#: (benchmarks/gpu/sweep_tt.py) sets them in-process. "interpret": the CPU (interpreter).
#: Launch configs, picked by benchmarks/gpu/sweep_tt.py on an H100 at B=8, L=2048, E=2048,
#: N=16 (benchmarks/results/gpu-20261123-h100). "fwd": bf16/fp16 inputs; "fwd_f32" and
#: "bwd_f32": float32 inputs ("bwd" otherwise). Runs 10-11 (BE < 32: the [NP, BE] state tile
#: spreads n over 32/BE lanes, 4x the threads of BE = 32): forward "tr_scan" T=8 BE=8 1 warp
#: 0.711 ms in bf16 (T=16 BE=16 0.704, T=4 BE=32 1.26, "base" 1.60) and 0.536 ms in float32
#: ("base" 0.737); VJP "tr" T=4 BE=16 1 warp 7.79 ms in bf16 ("base" 8.24, "tr" T=4 BE=32
#: 8.56). The float32 VJP keeps "base" (5.17 ms; "tr" in float32: run 30 below).
#: Session 7 (benchmarks/results/gpu-20261207-h100, run 20): bf16 forward "tr_fold" T=16 BE=16
#: 0.624 ms (tr_scan T=8 BE=8 0.707); float32 keeps tr_scan (0.533, tr_fold 0.544). The bf16
#: VJP runs the float32 kernels on float32 copies ("upcast"): the same "base" kernel took 8.25 ms
#: on bf16 inputs and 5.16 on float32 ones, and the yardstick's forward+backward through float32
#: (casts included) took 6.34 ms against 8.45 for the bf16 kernels. "upcast": "outputs" reads the
#: 16-bit inputs directly under the float32 launch and writes float32 gradients, cast after
#: (no input copies: ~0.8 GB less traffic at the benchmark shape). Runs 29-30 (2026-12-07,
#: H100): "outputs" 9.18 ms forward+backward against 6.35 for the copies, so "upcast" stays
#: True; the float32 VJP grid keeps "base" T=8 BE=32 4 warps (5.17 ms; "tr" T=4 BE=16 1 warp
#: 6.19, T=4 BE=8 7.93, T=8 BE=32 11.3; "exp2" 5.38; "base" T=4 5.29, BE=16 7.11).
#: Run 38 (2026-12-07, H100): the "lanes" VJP, T=4 BE=8 1 warp capped at 128 registers, 2.85 ms
#: in float32 against "base"'s 5.17 (T=2 uncapped 2.82, T=4 uncapped 3.03, T=4 at 160 3.21, T=8
#: at 168 6.06, BE=32 4 warps 4.73-5.75), and 2.82 ms reading bf16 inputs directly (no float32
#: copies; the "upcast" path it replaces took ~5.8). Both dtypes now run it, bf16 without
#: "upcast" (which stays a CONFIG option: True or "outputs" as above). "save_BE" and
#: "save_warps" (optional, "bwd" entries): the state-saving forward's own launch (run 39's
#: kernel table: 0.66 ms of the 3.4 ms forward+backward; not yet swept). Run 39 (bf16): BE=16
#: (2 channels a thread, half the dB/dC partials) 2.52 ms against BE=8's 2.82 (T=2 3.32; 2 warps
#: 4.32-5.08), every gradient within 1.7e-3 of BE=8's (bf16 rounding; BE=8 T=2 differs as much),
#: so bf16 runs BE=16 T=4. Its certificate entries on a GPU wait for run_device.sh s14 (the
#: session's device time ran out); BE=8, certified in run 39, stays the float32 launch until
#: s14 times BE=16 in float32.
CONFIG = {
    "fwd": {"T": 16, "BE": 16, "num_warps": 1, "variant": "tr_fold"},
    "fwd_f32": {"T": 8, "BE": 8, "num_warps": 1, "variant": "tr_scan"},
    "bwd": {"T": 4, "BE": 16, "num_warps": 1, "variant": "lanes", "maxnreg": 255},
    "bwd_f32": {"T": 4, "BE": 8, "num_warps": 1, "variant": "lanes", "maxnreg": 128},
    "step": {"BE": 32, "num_warps": 4},
    # T capped by pow2(L); "lanes", the GPU's VJP, so CI's interpreter certificate covers it
    # (its forward then runs "seq"; the other variants have interpreter tests of their own)
    "interpret": {"T": 64, "BE": 8, "num_warps": 1, "variant": "lanes"},
    # "states16" (optional, "bwd" entries; not yet timed): the VJP's chunk states kept in the
    # 16-bit inputs' dtype (268 MB instead of 537 written and read at the benchmark shape; the
    # states are recomputed from them in float32, so only their rounding is added)
    # the saving form (mamba_core/ops/saving.py; the Mamba-1 mixer's forward_train runs it):
    # "states" True runs the forward as the VJP's state-saving forward writing y too, and keeps
    # the VJP's chunk-entry states, (B, ceil(L/T), E, NP) float32 at the VJP's T: 16 E NP / T
    # bytes a token, 537 MB a layer at the benchmark shape (T=4, N=16) against u's 67 MB in bf16,
    # more than the rest of the layer's saved activations. So it is off: the forward keeps nothing
    # and the VJP recomputes the states (0.66 ms of run 39's 3.4 ms forward+backward). Not yet
    # timed on a GPU (run_device.sh s14's Mamba-1 yardstick has the row).
    "save": {"states": False},
}


@triton.jit
def _affine(a1, b1, a2, b2):
    # compose h -> a1 h + b1 then h -> a2 h + b2 (element 1 earlier in scan order; the same
    # function composes the reverse scan, whose order is reversed)
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _exp_scale(Aw, EXP2: tl.constexpr):
    # EXP2: exp(dt A) = exp2(dt (A log2 e)); the factor folded into A once per program
    if EXP2:
        return Aw * 1.4426950408889634
    return Aw


@triton.jit
def _exp_of(v, EXP2: tl.constexpr):
    if EXP2:
        return tl.exp2(v)
    return tl.exp(v)


@triton.jit
def _softplus(x):
    y = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + y
    lp = tl.where(u == 1.0, y, tl.log(u) * y / (u - 1.0))  # log1p(y), accurate for small y
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _softplus_f(x, FAST: tl.constexpr):
    # _softplus; FAST (compiled kernels): the same formula with flush-to-zero ex2 / lg2 and the
    # approximate divide (CUDA's __expf, __logf, __fdividef), without the range fix-ups of the
    # IEEE-flavoured forms (x <= 20 here, 1 + y >= 1, u - 1 >= 2^-23 where it divides). The
    # interpreter has no such functions: it runs _softplus.
    if FAST:
        y = libdevice.fast_expf(tl.minimum(x, 20.0))
        u = 1.0 + y
        lp = tl.where(u == 1.0, y, libdevice.fast_logf(u) * libdevice.fast_dividef(y, u - 1.0))
        return tl.where(x > 20.0, x, lp)
    else:
        return _softplus(x)


@triton.jit
def _gate_f(y, z, FAST: tl.constexpr):
    # y * silu(z) = y z / (1 + exp(-z)); FAST as in _softplus_f (exp(-z) = inf gives -0)
    if FAST:
        return y * libdevice.fast_dividef(z, 1.0 + libdevice.fast_expf(-z))
    else:
        return y * z / (1.0 + tl.exp(-z))


@triton.jit
def _gate_vjp_f(dy, p, z):
    # out = p silu(z): (the cotangent of p, that of z) for out's cotangent dy; every VJP kernel's
    # gate (mamba_core/ops/selective_scan.py has the reference)
    sg = 1.0 / (1.0 + tl.exp(-z))
    return dy * z * sg, dy * p * sg * (1.0 + z * (1.0 - sg))


@triton.jit
def _softplus_grad(raw):
    # d softplus(raw) / d raw with torch's threshold 20: every VJP kernel's dt chain rule
    return tl.where(raw > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-raw)))


@triton.jit
def _dt_tile(DL, DB, b, t, e, tm, sdb, sdl, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    raw = tl.load(DL + b * sdb + t[:, None] * sdl + e[None, :], mask=tm[:, None], other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(DB + e).to(tl.float32)[None, :]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    dt = tl.where(tm[:, None], dt, 0.0)  # padded rows: the identity map
    return raw, dt


@triton.jit
def _ss_fwd_kernel(
    U, DL, A, BM, CM, DV, Z, DB, H0, Y, HF, HS,
    L, N, Eg, nchunks,
    sub, sul, sdb, sdl, sbb, sbl, sbg, scb, scl, scg, szb, szl, syb, syl,
    T: tl.constexpr, BE: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE: tl.constexpr, WRITE_Y: tl.constexpr, EXP2: tl.constexpr = False,
):
    b = tl.program_id(0).to(tl.int64)
    pe = tl.program_id(1)
    E = tl.num_programs(1) * BE
    e = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, NP)
    nm = n < N
    g = (pe * BE) // Eg
    rows = tl.arange(0, T)
    Aw = tl.load(A + e[:, None] * N + n[None, :], mask=nm[None, :], other=0.0).to(tl.float32)
    Ax = _exp_scale(Aw, EXP2)
    st_off = (b * E + e[:, None]) * N + n[None, :]
    if HAS_H0:
        h = tl.load(H0 + st_off, mask=nm[None, :], other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BE, NP], dtype=tl.float32)
    if HAS_D:
        Dw = tl.load(DV + e).to(tl.float32)
    for ci in range(0, nchunks):
        t = ci * T + rows
        tm = t < L
        u = tl.load(U + b * sub + t[:, None] * sul + e[None, :], mask=tm[:, None], other=0.0).to(tl.float32)
        raw, dt = _dt_tile(DL, DB, b, t, e, tm, sdb, sdl, HAS_BIAS, SOFTPLUS)
        bn_mask = tm[:, None] & nm[None, :]
        Bt = tl.load(BM + b * sbb + t[:, None] * sbl + g * sbg + n[None, :], mask=bn_mask, other=0.0).to(tl.float32)
        a = _exp_of(dt[:, :, None] * Ax[None, :, :], EXP2)
        bb = (dt * u)[:, :, None] * Bt[:, None, :]
        if SAVE:
            tl.store(HS + ((b * nchunks + ci) * E + e[:, None]) * NP + n[None, :], h)
        acc_a, acc_b = tl.associative_scan((a, bb), 0, _affine)
        hs = acc_a * h[None, :, :] + acc_b
        if WRITE_Y:
            Ct = tl.load(CM + b * scb + t[:, None] * scl + g * scg + n[None, :], mask=bn_mask, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[:, None, :], axis=2)
            if HAS_D:
                y += Dw[None, :] * u
            if HAS_Z:
                z = tl.load(Z + b * szb + t[:, None] * szl + e[None, :], mask=tm[:, None], other=0.0).to(tl.float32)
                y = _gate_f(y, z, False)
            tl.store(Y + b * syb + t[:, None] * syl + e[None, :], y.to(Y.dtype.element_ty), mask=tm[:, None])
        h = tl.sum(tl.where((rows == T - 1)[:, None, None], hs, 0.0), axis=0)
    if WRITE_Y:
        tl.store(HF + st_off, h, mask=nm[None, :])


@triton.jit
def _ss_fwd_seq_kernel(
    U, DL, A, BM, CM, DV, Z, DB, H0, Y, HF, HS,
    L, N, Eg, nchunks,
    sub, sul, sdb, sdl, sbb, sbl, sbg, scb, scl, scg, szb, szl, syb, syl,
    T: tl.constexpr, BE: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE: tl.constexpr, WRITE_Y: tl.constexpr, EXP2: tl.constexpr = True,
):
    # variant "seq": the recurrence token by token (T tokens unrolled per loop iteration, their
    # loads independent of the state), no scan: ~5 flops and one exp2 per (t, e, n)
    b = tl.program_id(0).to(tl.int64)
    pe = tl.program_id(1)
    E = tl.num_programs(1) * BE
    e = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, NP)
    nm = n < N
    g = (pe * BE) // Eg
    Aw = tl.load(A + e[:, None] * N + n[None, :], mask=nm[None, :], other=0.0).to(tl.float32)
    Ax = _exp_scale(Aw, EXP2)
    st_off = (b * E + e[:, None]) * N + n[None, :]
    if HAS_H0:
        h = tl.load(H0 + st_off, mask=nm[None, :], other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BE, NP], dtype=tl.float32)
    if HAS_D:
        Dw = tl.load(DV + e).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(DB + e).to(tl.float32)
    for ci in range(0, nchunks):
        if SAVE:
            tl.store(HS + ((b * nchunks + ci) * E + e[:, None]) * NP + n[None, :], h)
        for j in tl.static_range(T):
            t = ci * T + j
            tm = tl.full([BE], t, tl.int32) < L
            u = tl.load(U + b * sub + t * sul + e, mask=tm, other=0.0).to(tl.float32)
            dt = tl.load(DL + b * sdb + t * sdl + e, mask=tm, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(tm, dt, 0.0)  # past L: the identity map
            bnm = nm & (tl.full([NP], t, tl.int32) < L)
            Bt = tl.load(BM + b * sbb + t * sbl + g * sbg + n, mask=bnm, other=0.0).to(tl.float32)
            h = _exp_of(dt[:, None] * Ax, EXP2) * h + (dt * u)[:, None] * Bt[None, :]
            if WRITE_Y:
                Ct = tl.load(CM + b * scb + t * scl + g * scg + n, mask=bnm, other=0.0).to(tl.float32)
                y = tl.sum(h * Ct[None, :], axis=1)
                if HAS_D:
                    y += Dw * u
                if HAS_Z:
                    z = tl.load(Z + b * szb + t * szl + e, mask=tm, other=0.0).to(tl.float32)
                    y = _gate_f(y, z, False)
                tl.store(Y + b * syb + t * syl + e, y.to(Y.dtype.element_ty), mask=tm)
    if WRITE_Y:
        tl.store(HF + st_off, h, mask=nm[None, :])


@triton.jit
def _vjp_program(BE: tl.constexpr, NP: tl.constexpr, N, Eg):
    # a [BE, NP]-tile VJP kernel's program (batch row b, block pe of BE channels, inside group
    # g): (b, pe, nEb, E, e, n, nm, g)
    b = tl.program_id(0).to(tl.int64)
    pe = tl.program_id(1)
    nEb = tl.num_programs(1)
    e = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, NP)
    return b, pe, nEb, nEb * BE, e, n, n < N, (pe * BE) // Eg


@triton.jit
def _vjp_carry_in(DHF, st_off, nm, BE: tl.constexpr, NP: tl.constexpr, HAS_DHF: tl.constexpr):
    # the state cotangent entering the reverse walk: dh_L, or zeros
    if HAS_DHF:
        return tl.load(DHF + st_off, mask=nm[None, :], other=0.0).to(tl.float32)
    else:
        return tl.zeros([BE, NP], dtype=tl.float32)


@triton.jit
def _vjp_store_params(DH0, DAP, DDP, DBIASP, st_off, nm, b, E, e, carry, dA_acc, dD_acc, dbias_acc):
    # a [BE, NP]-tile VJP kernel's per-program outputs: dh_0, and its partials of dA, dD, dbias
    tl.store(DH0 + st_off, carry, mask=nm[None, :])
    tl.store(DAP + st_off, dA_acc, mask=nm[None, :])
    tl.store(DDP + b * E + e, dD_acc)
    tl.store(DBIASP + b * E + e, dbias_acc)


@triton.jit
def _ss_bwd_kernel(
    U, DL, A, BM, CM, DV, Z, DB, HS, DY, DHF,
    DU, DDL, DZ, DAP, DBP, DCP, DDP, DBIASP, DH0,
    L, N, Eg, nchunks,
    sub, sul, sdb, sdl, sbb, sbl, sbg, scb, scl, scg, szb, szl, sdyb, sdyl,
    T: tl.constexpr, BE: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DHF: tl.constexpr, EXP2: tl.constexpr = False,
):
    b, pe, nEb, E, e, n, nm, g = _vjp_program(BE, NP, N, Eg)
    rows = tl.arange(0, T)
    Aw = tl.load(A + e[:, None] * N + n[None, :], mask=nm[None, :], other=0.0).to(tl.float32)
    Ax = _exp_scale(Aw, EXP2)
    st_off = (b * E + e[:, None]) * N + n[None, :]
    carry = _vjp_carry_in(DHF, st_off, nm, BE, NP, HAS_DHF)
    if HAS_D:
        Dw = tl.load(DV + e).to(tl.float32)
    dA_acc = tl.zeros([BE, NP], dtype=tl.float32)
    dD_acc = tl.zeros([BE], dtype=tl.float32)
    dbias_acc = tl.zeros([BE], dtype=tl.float32)
    for i in range(0, nchunks):
        ci = nchunks - 1 - i
        t = ci * T + rows
        tm = t < L
        h0 = tl.load(HS + ((b * nchunks + ci) * E + e[:, None]) * NP + n[None, :]).to(tl.float32)
        u = tl.load(U + b * sub + t[:, None] * sul + e[None, :], mask=tm[:, None], other=0.0).to(tl.float32)
        raw, dt = _dt_tile(DL, DB, b, t, e, tm, sdb, sdl, HAS_BIAS, SOFTPLUS)
        bn_mask = tm[:, None] & nm[None, :]
        Bt = tl.load(BM + b * sbb + t[:, None] * sbl + g * sbg + n[None, :], mask=bn_mask, other=0.0).to(tl.float32)
        Ct = tl.load(CM + b * scb + t[:, None] * scl + g * scg + n[None, :], mask=bn_mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + b * sdyb + t[:, None] * sdyl + e[None, :], mask=tm[:, None], other=0.0).to(tl.float32)
        # states of the chunk, recomputed from the saved entering state
        a = _exp_of(dt[:, :, None] * Ax[None, :, :], EXP2)
        dtu = dt * u
        bb = dtu[:, :, None] * Bt[:, None, :]
        acc_a, acc_b = tl.associative_scan((a, bb), 0, _affine)
        hs = acc_a * h0[None, :, :] + acc_b
        # skip connection and gate
        if HAS_Z:
            z = tl.load(Z + b * szb + t[:, None] * szl + e[None, :], mask=tm[:, None], other=0.0).to(tl.float32)
            p = tl.sum(hs * Ct[:, None, :], axis=2)
            if HAS_D:
                p += Dw[None, :] * u
            dyp, dz = _gate_vjp_f(dy, p, z)
            tl.store(DZ + (b * L + t[:, None]) * E + e[None, :], dz.to(DZ.dtype.element_ty), mask=tm[:, None])
        else:
            dyp = dy
        # adjoint: g_t = C_t dy'_t + a_{t+1} g_{t+1}; a_{t+1} = 1 past the chunk (the carry holds it)
        tn = t + 1
        mn = (rows < T - 1) & (tn < L)
        _, dtn = _dt_tile(DL, DB, b, tn, e, mn, sdb, sdl, HAS_BIAS, SOFTPLUS)
        an = _exp_of(dtn[:, :, None] * Ax[None, :, :], EXP2)
        cc = Ct[:, None, :] * dyp[:, :, None]
        P, S = tl.associative_scan((an, cc), 0, _affine, reverse=True)
        gg = S + P * carry[None, :, :]
        gah = gg * (hs - bb)  # g_t a_t h_{t-1}
        gB = tl.sum(gg * Bt[:, None, :], axis=2)
        ddt = tl.sum(gah * Aw[None, :, :], axis=2) + gB * u
        du = gB * dt
        if HAS_D:
            du += Dw[None, :] * dyp
            dD_acc += tl.sum(dyp * u, axis=0)
        dA_acc += tl.sum(gah * dt[:, :, None], axis=0)
        dBp = tl.sum(gg * dtu[:, :, None], axis=1)  # (T, NP): this block's share of dB_t
        dCp = tl.sum(hs * dyp[:, :, None], axis=1)
        part = ((b * L + t[:, None]) * nEb + pe) * NP + n[None, :]
        tl.store(DBP + part, dBp, mask=tm[:, None])
        tl.store(DCP + part, dCp, mask=tm[:, None])
        if SOFTPLUS:
            ddt = ddt * _softplus_grad(raw)
        ddt = tl.where(tm[:, None], ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        out = (b * L + t[:, None]) * E + e[None, :]
        tl.store(DU + out, du.to(DU.dtype.element_ty), mask=tm[:, None])
        tl.store(DDL + out, ddt.to(DDL.dtype.element_ty), mask=tm[:, None])
        # into the previous chunk: dL/dh_{s-1} = a_s g_s
        g0 = tl.sum(tl.where((rows == 0)[:, None, None], gg, 0.0), axis=0)
        dt0 = tl.sum(tl.where((rows == 0)[:, None], dt, 0.0), axis=0)
        carry = _exp_of(dt0[:, None] * Ax, EXP2) * g0
    _vjp_store_params(DH0, DAP, DDP, DBIASP, st_off, nm, b, E, e, carry, dA_acc, dD_acc, dbias_acc)


# ---- variant "tr": channels last, the N states of a channel inside one thread ---------------
@triton.jit
def _tr_tok(U, DL, Z, DB, b, t, e, L, sub, sul, sdb, sdl, szb, szl,
            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, bias):
    # token t of the channels e ([BE] vectors, e contiguous): u, raw delta (+ bias), dt, z;
    # past L dt = 0 (the identity map) and u = z = 0
    # offsets declared non-contiguous (hints must sit on ops made here, not on arguments): no
    # vectorising, so channel e stays in the lane where the [*, BE] tiles hold it
    tm = tl.full(e.shape, t, tl.int32) < L
    u = tl.load(U + tl.max_contiguous(b * sub + t * sul + e, [1]), mask=tm, other=0.0).to(tl.float32)
    raw = tl.load(DL + tl.max_contiguous(b * sdb + t * sdl + e, [1]), mask=tm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    dt = tl.where(tm, dt, 0.0)
    z = u
    if HAS_Z:
        z = tl.load(Z + tl.max_contiguous(b * szb + t * szl + e, [1]), mask=tm, other=0.0).to(tl.float32)
    return tm, u, raw, dt, z


@triton.jit
def _tr_bc(P, b, t, g, n, nm, L, spb, spl, spg, EVEN_N: tl.constexpr):
    # B_t or C_t of group g as an [NP] vector (fewer elements than threads: every thread loads
    # all of them, from L1: the broadcast along e the [NP, BE] tiles need). EVEN_N (N = NP):
    # no mask along n, so the loads vectorise
    m = tl.full(n.shape, t, tl.int32) < L
    if not EVEN_N:
        m = m & nm
    return tl.load(P + b * spb + t * spl + g * spg + n, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _ld_opt(P, m, FULL: tl.constexpr):
    # a load masked by m, or unmasked when FULL (every lane in bounds)
    if FULL:
        return tl.load(P)
    else:
        return tl.load(P, mask=m, other=0.0)


@triton.jit
def _ss_fwd_tr_kernel(
    U, DL, AT, BM, CM, DV, Z, DB, H0, Y, HF, HS,
    L, N, Eg, nchunks,
    sub, sul, sdb, sdl, sbb, sbl, sbg, scb, scl, scg, szb, szl, syb, syl,
    T: tl.constexpr, BE: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE: tl.constexpr, WRITE_Y: tl.constexpr, SCAN: tl.constexpr = False,
    EVEN_N: tl.constexpr = False, FOLD: tl.constexpr = False, EVEN_L: tl.constexpr = False,
    FAST: tl.constexpr = False,
):
    # variant "tr" (SCAN=False) / "tr_scan" (SCAN=True) / "tr_fold" (SCAN and FOLD); AT = A^T,
    # (N, E) float32. Every tile
    # has the channels e last: [NP, BE] states, [T, BE] token tiles, so the default layout puts
    # threads (and warps, when BE >= 32 num_warps) along e and keeps n (and T) in each thread:
    # y = sum_n h C and the scan along T never leave the thread.
    b = tl.program_id(0).to(tl.int64)
    pe = tl.program_id(1)
    E = tl.num_programs(1) * BE
    e = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, NP)
    nm = n < N
    g = (pe * BE) // Eg
    rows = tl.arange(0, T)
    # [NP, BE] offsets are declared non-contiguous (max_contiguous 1): the coalescing pass then
    # keeps the default layout instead of vectorising along e at the price of spreading n over
    # lanes (which would bring back the shuffles); likewise every "tr" load and store below
    a_off = tl.max_contiguous(n[:, None] * E + e[None, :], [1, 1])
    Ax = tl.load(AT + a_off, mask=nm[:, None], other=0.0).to(tl.float32) * 1.4426950408889634
    st_off = tl.max_contiguous((b * E + e[None, :]) * N + n[:, None], [1, 1])  # (B, E, N) states
    if HAS_H0:
        h = tl.load(H0 + st_off, mask=nm[:, None], other=0.0).to(tl.float32)
    else:
        h = tl.zeros([NP, BE], dtype=tl.float32)
    Dw = tl.zeros([BE], dtype=tl.float32)
    if HAS_D:
        Dw = tl.load(DV + tl.max_contiguous(e, [1])).to(tl.float32)
    bias = tl.zeros([BE], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(DB + tl.max_contiguous(e, [1])).to(tl.float32)
    for ci in range(0, nchunks):
        h_in = h
        if SCAN:
            # the chunk as [T, NP, BE] affine maps composed by an associative scan along T
            t = ci * T + rows
            tm = t < L
            te = tl.max_contiguous(t[:, None] * 0 + e[None, :], [1, 1])  # [T, BE], not vectorised
            # EVEN_L (L a multiple of T): no token masks at all; EVEN_N: no state masks
            tmc = tm[:, None]
            u = _ld_opt(U + b * sub + t[:, None] * sul + te, tmc, EVEN_L).to(tl.float32)
            raw = _ld_opt(DL + b * sdb + t[:, None] * sdl + te, tmc, EVEN_L).to(tl.float32)
            if HAS_BIAS:
                raw += bias[None, :]
            dt = raw
            if SOFTPLUS:
                dt = _softplus_f(raw, FAST)
            if not EVEN_L:
                dt = tl.where(tmc, dt, 0.0)
            bn = tmc & nm[None, :]
            Bt = _ld_opt(BM + b * sbb + t[:, None] * sbl + g * sbg + n[None, :], bn, EVEN_L and EVEN_N).to(tl.float32)
            Ct = _ld_opt(CM + b * scb + t[:, None] * scl + g * scg + n[None, :], bn, EVEN_L and EVEN_N).to(tl.float32)
            a = tl.exp2(dt[:, None, :] * Ax[None, :, :])
            bb = Bt[:, :, None] * (dt * u)[:, None, :]
            if FOLD:
                # the carried state folded into the first token's offset (b_0 + a_0 h), so the
                # scan's offsets alone are the states: T in-thread, the scan runs sequentially
                # and its unused decay products are dead code. The row selects are constants
                # per register; -0.0 is the exact identity of the sums that pick a row.
                first = (rows == 0)[:, None, None]
                bb = bb + tl.where(first, a * h[None, :, :], -0.0)
                _, hs = tl.associative_scan((a, bb), 0, _affine)
            else:
                acc_a, acc_b = tl.associative_scan((a, bb), 0, _affine)
                hs = acc_a * h[None, :, :] + acc_b
            ys = tl.sum(hs * Ct[:, :, None], axis=1)
            h = tl.sum(tl.where((rows == T - 1)[:, None, None], hs, -0.0), axis=0)
            if HAS_D:
                ys += Dw[None, :] * u
            if HAS_Z:
                z = _ld_opt(Z + b * szb + t[:, None] * szl + te, tmc, EVEN_L).to(tl.float32)
                ys = _gate_f(ys, z, FAST)
        else:
            # token by token, unrolled: the loads of the chunk do not depend on h (and no store
            # comes between them), so they are issued ahead of the recurrence
            ys = tl.zeros([T, BE], dtype=tl.float32)
            for j in tl.static_range(T):
                t = ci * T + j
                tm, u, raw, dt, z = _tr_tok(U, DL, Z, DB, b, t, e, L, sub, sul, sdb, sdl, szb, szl,
                                            HAS_BIAS, SOFTPLUS, HAS_Z, bias)
                Bv = _tr_bc(BM, b, t, g, n, nm, L, sbb, sbl, sbg, EVEN_N)
                h = tl.exp2(dt[None, :] * Ax) * h + Bv[:, None] * (dt * u)[None, :]
                if WRITE_Y:
                    Cv = _tr_bc(CM, b, t, g, n, nm, L, scb, scl, scg, EVEN_N)
                    y = tl.sum(h * Cv[:, None], axis=0) + Dw * u
                    if HAS_Z:
                        y = _gate_f(y, z, False)
                    ys = tl.where((rows == j)[:, None], y[None, :], ys)
        if SAVE:  # (B, nchunks, NP, E): e contiguous
            hs_off = tl.max_contiguous(((b * nchunks + ci) * NP + n[:, None]) * E + e[None, :], [1, 1])
            tl.store(HS + hs_off, h_in)
        if WRITE_Y:
            t = ci * T + rows
            y_off = tl.max_contiguous(b * syb + t[:, None] * syl + e[None, :], [1, 1])
            if EVEN_L:
                tl.store(Y + y_off, ys.to(Y.dtype.element_ty))
            else:
                tl.store(Y + y_off, ys.to(Y.dtype.element_ty), mask=(t < L)[:, None])
    if WRITE_Y:
        tl.store(HF + st_off, h, mask=nm[:, None])


@triton.jit
def _ss_bwd_tr_kernel(
    U, DL, AT, BM, CM, DV, Z, DB, HS, DY, DHF,
    DU, DDL, DZ, DAP, DBP, DCP, DDP, DBIASP, DH0,
    L, N, Eg, nchunks,
    sub, sul, sdb, sdl, sbb, sbl, sbg, scb, scl, scg, szb, szl, sdyb, sdyl,
    T: tl.constexpr, BE: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DHF: tl.constexpr, EVEN_N: tl.constexpr = False,
):
    # variant "tr" of the VJP: [NP, BE] tiles (n in-thread), per chunk (in reverse) the states
    # h_{t-1} entering each token recomputed into a [T, NP, BE] register tile from the saved
    # chunk-entry state, then the tokens walked in reverse with the adjoint
    # g_t = C_t dy'_t + a_{t+1} g_{t+1} in registers (carry = a_{t+1} g_{t+1})
    b = tl.program_id(0).to(tl.int64)
    pe = tl.program_id(1)
    nEb = tl.num_programs(1)
    E = nEb * BE
    e = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, NP)
    nm = n < N
    g = (pe * BE) // Eg
    rows = tl.arange(0, T)
    a_off = tl.max_contiguous(n[:, None] * E + e[None, :], [1, 1])
    Ax = tl.load(AT + a_off, mask=nm[:, None], other=0.0).to(tl.float32) * 1.4426950408889634
    st_off = tl.max_contiguous((b * E + e[None, :]) * N + n[:, None], [1, 1])
    if HAS_DHF:
        carry = tl.load(DHF + st_off, mask=nm[:, None], other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([NP, BE], dtype=tl.float32)
    Dw = tl.zeros([BE], dtype=tl.float32)
    if HAS_D:
        Dw = tl.load(DV + tl.max_contiguous(e, [1])).to(tl.float32)
    bias = tl.zeros([BE], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(DB + tl.max_contiguous(e, [1])).to(tl.float32)
    dA_acc = tl.zeros([NP, BE], dtype=tl.float32)
    dD_acc = tl.zeros([BE], dtype=tl.float32)
    dbias_acc = tl.zeros([BE], dtype=tl.float32)
    for i in range(0, nchunks):
        ci = nchunks - 1 - i
        h = tl.load(HS + tl.max_contiguous(((b * nchunks + ci) * NP + n[:, None]) * E + e[None, :], [1, 1])).to(tl.float32)
        # forward over the chunk: Hs[j] = h_{t-1} for t = ci T + j; the token tiles the reverse
        # walk needs are loaded here too, ahead of its dB/dC stores (which loads could not pass)
        Hs = tl.zeros([T, NP, BE], dtype=tl.float32)
        uT = tl.zeros([T, BE], dtype=tl.float32)
        rawT = tl.zeros([T, BE], dtype=tl.float32)
        zT = tl.zeros([T, BE], dtype=tl.float32)
        dyT = tl.zeros([T, BE], dtype=tl.float32)
        for j in tl.static_range(T):
            t = ci * T + j
            tm, u, raw, dt, z = _tr_tok(U, DL, Z, DB, b, t, e, L, sub, sul, sdb, sdl, szb, szl,
                                        HAS_BIAS, SOFTPLUS, HAS_Z, bias)
            dy_off = tl.max_contiguous(b * sdyb + t * sdyl + e, [1])
            dy = tl.load(DY + dy_off, mask=tm, other=0.0).to(tl.float32)
            sel = (rows == j)[:, None]
            uT = tl.where(sel, u[None, :], uT)
            rawT = tl.where(sel, raw[None, :], rawT)
            zT = tl.where(sel, z[None, :], zT)
            dyT = tl.where(sel, dy[None, :], dyT)
            Bv = _tr_bc(BM, b, t, g, n, nm, L, sbb, sbl, sbg, EVEN_N)
            Hs = tl.where(sel[:, :, None], h[None, :, :], Hs)
            h = tl.exp2(dt[None, :] * Ax) * h + Bv[:, None] * (dt * u)[None, :]
        # reverse over the chunk
        du_t = tl.zeros([T, BE], dtype=tl.float32)
        ddt_t = tl.zeros([T, BE], dtype=tl.float32)
        dz_t = tl.zeros([T, BE], dtype=tl.float32)
        for jj in tl.static_range(T):
            j = T - 1 - jj
            t = ci * T + j
            tm = tl.full([BE], t, tl.int32) < L
            sel = (rows == j)[:, None]
            u = tl.sum(tl.where(sel, uT, 0.0), axis=0)
            raw = tl.sum(tl.where(sel, rawT, 0.0), axis=0)
            z = tl.sum(tl.where(sel, zT, 0.0), axis=0)
            dy = tl.sum(tl.where(sel, dyT, 0.0), axis=0)
            dt = raw
            if SOFTPLUS:
                dt = _softplus(raw)
            dt = tl.where(tm, dt, 0.0)
            Bv = _tr_bc(BM, b, t, g, n, nm, L, sbb, sbl, sbg, EVEN_N)
            Cv = _tr_bc(CM, b, t, g, n, nm, L, scb, scl, scg, EVEN_N)
            hp = tl.sum(tl.where((rows == j)[:, None, None], Hs, 0.0), axis=0)  # h_{t-1}
            a = tl.exp2(dt[None, :] * Ax)
            dtu = dt * u
            ht = a * hp + Bv[:, None] * dtu[None, :]
            if HAS_Z:
                p = tl.sum(ht * Cv[:, None], axis=0) + Dw * u
                dyp, dz = _gate_vjp_f(dy, p, z)
                dz_t = tl.where(sel, dz[None, :], dz_t)
            else:
                dyp = dy
            gg = Cv[:, None] * dyp[None, :] + carry
            gah = gg * (a * hp)  # g_t a_t h_{t-1}
            gB = tl.sum(gg * Bv[:, None], axis=0)
            ddt = tl.sum(gah * Ax, axis=0) * 0.6931471805599453 + gB * u  # A = Ax ln 2
            du = gB * dt + Dw * dyp
            dA_acc += gah * dt[None, :]
            dD_acc += dyp * u
            if SOFTPLUS:
                ddt = ddt * _softplus_grad(raw)
            ddt = tl.where(tm, ddt, 0.0)
            dbias_acc += ddt
            du_t = tl.where(sel, du[None, :], du_t)
            ddt_t = tl.where(sel, ddt[None, :], ddt_t)
            # this block's shares of dB_t and dC_t (sums over its channels: across threads)
            pm = nm & (tl.full([NP], t, tl.int32) < L)
            part = tl.max_contiguous(((b * L + t) * nEb + pe) * NP + n, [1])  # stored as reduced
            tl.store(DBP + part, tl.sum(gg * dtu[None, :], axis=1), mask=pm)
            tl.store(DCP + part, tl.sum(ht * dyp[None, :], axis=1), mask=pm)
            carry = a * gg  # dL/dh_{t-1}
        t = ci * T + rows
        out = tl.max_contiguous((b * L + t[:, None]) * E + e[None, :], [1, 1])
        om = (t < L)[:, None]
        tl.store(DU + out, du_t.to(DU.dtype.element_ty), mask=om)
        tl.store(DDL + out, ddt_t.to(DDL.dtype.element_ty), mask=om)
        if HAS_Z:
            tl.store(DZ + out, dz_t.to(DZ.dtype.element_ty), mask=om)
    tl.store(DH0 + st_off, carry, mask=nm[:, None])
    tl.store(DAP + st_off, dA_acc, mask=nm[:, None])
    tl.store(DDP + tl.max_contiguous(b * E + e, [1]), dD_acc)
    tl.store(DBIASP + tl.max_contiguous(b * E + e, [1]), dbias_acc)


@triton.jit
def _ss_step_kernel(
    U, DL, A, BM, CM, S, DV, Z, DB, Y, NS,
    N, Eg,
    sub, sdb, sbb, sbg, scb, scg, ssb, sse, szb,
    BE: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pe = tl.program_id(1)
    E = tl.num_programs(1) * BE
    e = pe * BE + tl.arange(0, BE)
    n = tl.arange(0, NP)
    nm = n < N
    g = (pe * BE) // Eg
    Aw = tl.load(A + e[:, None] * N + n[None, :], mask=nm[None, :], other=0.0).to(tl.float32)
    h = tl.load(S + b * ssb + e[:, None] * sse + n[None, :], mask=nm[None, :], other=0.0).to(tl.float32)
    u = tl.load(U + b * sub + e).to(tl.float32)
    dt = tl.load(DL + b * sdb + e).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(DB + e).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    Bv = tl.load(BM + b * sbb + g * sbg + n, mask=nm, other=0.0).to(tl.float32)
    Cv = tl.load(CM + b * scb + g * scg + n, mask=nm, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * Aw) * h + (dt * u)[:, None] * Bv[None, :]
    tl.store(NS + (b * E + e[:, None]) * N + n[None, :], h, mask=nm[None, :])
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(DV + e).to(tl.float32) * u
    if HAS_Z:
        z = tl.load(Z + b * szb + e).to(tl.float32)
        y = _gate_f(y, z, False)
    tl.store(Y + b * E + e, y.to(Y.dtype.element_ty))


# ---- torch glue ----------------------------------------------------------------------------
def _cfg(kind: str, dev, L: int = 1, dtype=None) -> dict:
    if dtype == torch.float32 and kind + "_f32" in CONFIG:
        kind += "_f32"
    cfg = dict(CONFIG["interpret"] if dev.type == "cpu" else CONFIG[kind])
    if dev.type == "cpu":  # the interpreter scans element by element: no padded rows
        cfg["T"] = min(cfg["T"], pow2(L, 2))
    return cfg


#: the kernel variants (module docstring); "seq" and "tr_scan" change the forward only (their
#: VJP is "exp2"'s and "tr"'s, after a state-saving forward of their own)
VARIANTS = ("base", "exp2", "seq", "tr", "tr_scan", "tr_fold", "lanes")
TRANSPOSED = ("tr", "tr_scan", "tr_fold")  # A^T, (B, L/T, NP, E) saved states, the "tr" VJP kernel


def _variant(cfg: dict) -> str:
    v = cfg.get("variant", "base")
    if v not in VARIANTS:
        raise ValueError(f"selective_scan CONFIG variant {v!r}: expected one of {VARIANTS}")
    return v


def _states_dtype(cfg: dict, dtype):
    """The VJP's chunk states: float32, or the inputs' 16-bit dtype under CONFIG "states16"
    (half the bytes written by the state-saving forward and read by the VJP kernel)."""
    return dtype if cfg.get("states16") and dtype in (torch.bfloat16, torch.float16) else torch.float32


def _block_e(Eg: int, cap: int) -> int:
    """The largest power of two <= cap dividing Eg (channels per program, inside one group)."""
    be = 1
    while be * 2 <= cap and Eg % (be * 2) == 0:
        be *= 2
    return be


def _scan_launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                 y, hf, hs, T, BE, num_warps, variant="base"):
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    nchunks = triton.cdiv(L, T)
    dummy = u
    if variant in TRANSPOSED:
        kernel = _ss_fwd_tr_kernel
        extra = dict(SCAN=variant != "tr", FOLD=variant == "tr_fold", EVEN_N=N == pow2(N),
                     EVEN_L=variant != "tr" and L % T == 0,
                     FAST=variant != "tr" and not interpreting())
        A = A.t().contiguous().float()  # A^T (N, E): the [NP, BE] tile loads e-contiguous
    else:
        kernel = _ss_fwd_seq_kernel if variant in ("seq", "lanes") else _ss_fwd_kernel
        extra = dict(EXP2=variant in ("exp2", "seq", "lanes"))
    kernel[(Bsz, E // BE)](
        u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
        dummy if delta_bias is None else delta_bias,
        dummy if initial_state is None else initial_state,
        dummy if y is None else y, dummy if hf is None else hf, dummy if hs is None else hs,
        L, N, E // G, nchunks,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        0 if z is None else z.stride(0), 0 if z is None else z.stride(1),
        0 if y is None else y.stride(0), 0 if y is None else y.stride(1),
        T=T, BE=BE, NP=pow2(N), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        HAS_H0=initial_state is not None, SAVE=hs is not None, WRITE_Y=y is not None,
        num_warps=num_warps, **extra,
    )


def _prep(u, delta, A, B, C, D, z, delta_bias, state):
    """Unit last strides; A, D, delta_bias, states contiguous float32-or-narrower views."""
    c = lambda t: None if t is None else t.contiguous()  # noqa: E731
    return (last_contig(u), last_contig(delta), A.contiguous(), last_contig(B), last_contig(C),
            c(D), last_contig(z), c(delta_bias), c(state))


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None):
    """Selective scan. u, delta, z: (B, L, E); A: (E, N); B, C: (B, L, G, N) -> (y, h_L)."""
    if not runs_here(u, delta, A, B, C, D, z, delta_bias, initial_state):
        return default("selective_scan")(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                         initial_state)
    u, delta, A, B, C, D, z, delta_bias, initial_state = _prep(
        u, delta, A, B, C, D, z, delta_bias, initial_state)
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    cfg = _cfg("fwd", u.device, L, u.dtype)
    BE = _block_e(E // G, cfg["BE"])
    y = torch.empty((Bsz, L, E), dtype=u.dtype, device=u.device)
    hf = torch.empty((Bsz, E, N), dtype=torch.float32, device=u.device)
    if L == 0:
        hf.copy_(torch.zeros_like(hf) if initial_state is None else initial_state)
        return y, hf
    _scan_launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                 y, hf, None, cfg["T"], BE, cfg["num_warps"], _variant(cfg))
    return y, hf


def selective_scan_step(u, delta, A, B, C, state, D=None, z=None, delta_bias=None,
                        delta_softplus=False):
    """One token. u, delta, z: (B, E); B, C: (B, G, N); state: (B, E, N) -> (y, new_state)."""
    if not runs_here(u, delta, A, B, C, state, D, z, delta_bias):
        return default("selective_scan_step")(u, delta, A, B, C, state, D, z, delta_bias,
                                              delta_softplus)
    u, delta, A, B, C, D, z, delta_bias, _ = _prep(u, delta, A, B, C, D, z, delta_bias, None)
    state = last_contig(state)
    Bsz, E = u.shape
    G, N = B.shape[1], B.shape[2]
    cfg = _cfg("step", u.device)
    BE = _block_e(E // G, cfg["BE"])
    y = torch.empty((Bsz, E), dtype=u.dtype, device=u.device)
    ns = torch.empty((Bsz, E, N), dtype=torch.float32, device=u.device)
    dummy = u
    _ss_step_kernel[(Bsz, E // BE)](
        u, delta, A, B, C, state, dummy if D is None else D, dummy if z is None else z,
        dummy if delta_bias is None else delta_bias, y, ns,
        N, E // G,
        u.stride(0), delta.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        state.stride(0), state.stride(1), 0 if z is None else z.stride(0),
        BE=BE, NP=pow2(N), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        num_warps=cfg["num_warps"],
    )
    return y, ns


@dataclasses.dataclass(frozen=True)
class SavedChunkStates:
    """The saving forward's residuals: the VJP's chunk-entry states, at its chunk T, in the
    transposed layout (B, nchunks, NP, E) or not (B, nchunks, E, NP)."""

    states: torch.Tensor
    T: int
    transposed: bool


def selective_scan_saving(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None):
    """selective_scan's saving form (CONFIG "save"): with "states", the VJP's state-saving
    forward writing y too, and its states (SavedChunkStates); else the plain forward and None."""
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    if not CONFIG["save"].get("states") or not runs_here(u, delta, A, B, C, D, z, delta_bias,
                                                          initial_state) or u.shape[1] == 0:
        return selective_scan(*args), None
    cfg = _cfg("bwd", u.device, u.shape[1], u.dtype)
    if u.dtype != torch.float32 and cfg.get("upcast"):  # the VJP runs on float32 launches
        return selective_scan(*args), None
    u, delta, A, B, C, D, z, delta_bias, initial_state = _prep(
        u, delta, A, B, C, D, z, delta_bias, initial_state)
    Bsz, L, E = u.shape
    N = B.shape[3]
    y = torch.empty((Bsz, L, E), dtype=u.dtype, device=u.device)
    hf = torch.empty((Bsz, E, N), dtype=torch.float32, device=u.device)
    hs = _save_states(cfg, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, y, hf)
    return (y, hf), SavedChunkStates(hs, cfg["T"], _variant(cfg) in TRANSPOSED)


def _save_states(cfg, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, y=None,
                 hf=None):
    """The VJP's state-saving forward (y and the final state too when given): the chunk-entry
    states at the VJP's chunk T, (B, ceil(L/T), E, NP) or transposed (B, ceil(L/T), NP, E), on
    the launch CONFIG names for it ("save_BE", "save_warps"; the layout does not depend on them),
    else the VJP's. Inputs already _prep'ed."""
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    variant, T, NP = _variant(cfg), cfg["T"], pow2(N)
    nchunks = triton.cdiv(L, T)
    hs = torch.empty((Bsz, nchunks, NP, E) if variant in TRANSPOSED else (Bsz, nchunks, E, NP),
                     device=u.device, dtype=_states_dtype(cfg, u.dtype))
    _scan_launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, y, hf, hs, T,
                 _block_e(E // G, cfg.get("save_BE", cfg["BE"])), cfg.get("save_warps", cfg["num_warps"]),
                 variant)
    return hs


def selective_scan_vjp_saved(residuals, cotangent, u, delta, A, B, C, D=None, z=None,
                             delta_bias=None, delta_softplus=False, initial_state=None):
    """selective_scan_vjp from ``selective_scan_saving``'s states (SavedChunkStates, or None:
    recomputed): the VJP kernel alone when they are at its chunk and layout."""
    return _vjp(residuals, cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                initial_state)


def selective_scan_vjp(cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None):
    """Selective scan VJP. cotangent = (dy (B, L, E) | None, dh_L (B, E, N) | None) -> dict.

    Extra memory: the chunk-entry states (B, ceil(L/T), E, NP) float32 and the per-block dB, dC
    partials (B, L, E/BE, NP) float32 (BE channels per program), besides the gradients; with
    16-bit inputs under CONFIG "bwd" "upcast": True (an option; not the default since run 38),
    float32 copies of u, delta, z, B, C, dy.
    """
    return _vjp(None, cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def _vjp(saved, cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    """selective_scan_vjp; ``saved``: a saving forward's SavedChunkStates, read instead of
    running the state-saving forward when they match the VJP's chunk and layout."""
    from mamba_core.ops.selective_scan import _split_cotangent

    dy, dhL = _split_cotangent(cotangent)
    if not runs_here(dy, dhL, u, delta, A, B, C, D, z, delta_bias, initial_state):
        return default("selective_scan_vjp")(cotangent, u, delta, A, B, C, D, z, delta_bias,
                                             delta_softplus, initial_state)
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                initial_state=initial_state)
    upcast = u.dtype != torch.float32 and _cfg("bwd", u.device, u.shape[1], u.dtype).get("upcast")
    if upcast and upcast != "outputs":
        # 16-bit inputs through the float32 kernels (CONFIG "bwd": {"upcast": True}): float32
        # copies of the 16-bit arrays (and dy), the float32 VJP, its gradients cast back
        wide = lambda t: t if t is None or t.dtype == torch.float32 else t.float()  # noqa: E731
        got = selective_scan_vjp((wide(dy), wide(dhL)), *(wide(args[k]) for k in (
            "u", "delta", "A", "B", "C", "D", "z", "delta_bias")), delta_softplus, wide(initial_state))
        return {k: v.to(args[k].dtype) for k, v in got.items()}
    u, delta, A, B, C, D, z, delta_bias, initial_state = _prep(
        u, delta, A, B, C, D, z, delta_bias, initial_state)
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    dev = u.device
    # "upcast": "outputs": the 16-bit inputs read as they are, under the float32 launch, and
    # du, ddelta, dz written in float32 then cast (no float32 input copies; separates the cost
    # of 16-bit loads from that of 16-bit stores in the 16-bit kernels' slowdown)
    cfg = _cfg("bwd", dev, L, torch.float32 if upcast else u.dtype)
    out_dt = torch.float32 if upcast else None
    variant = _variant(cfg)
    T = cfg["T"]
    BE = _block_e(E // G, cfg["BE"])
    NP = pow2(N)
    nchunks = triton.cdiv(L, T)
    nEb = E // BE
    f32 = dict(dtype=torch.float32, device=dev)
    dy = torch.zeros((Bsz, L, E), **f32) if dy is None else last_contig(dy)
    dhL = None if dhL is None else dhL.contiguous()
    tr = variant in TRANSPOSED
    if saved is not None and (saved.T, saved.transposed) == (T, tr):
        hs = saved.states
    elif L > 0:
        hs = _save_states(cfg, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    du = torch.empty((Bsz, L, E), dtype=out_dt or u.dtype, device=dev)
    ddl = torch.empty((Bsz, L, E), dtype=out_dt or delta.dtype, device=dev)
    dz = None if z is None else torch.empty((Bsz, L, E), dtype=out_dt or z.dtype, device=dev)
    dap = torch.empty((Bsz, E, N), **f32)
    dbp = torch.empty((Bsz, L, nEb, NP), **f32)
    dcp = torch.empty((Bsz, L, nEb, NP), **f32)
    ddp = torch.empty((Bsz, E), **f32)
    dbiasp = torch.empty((Bsz, E), **f32)
    dh0 = torch.empty((Bsz, E, N), **f32)
    dummy = u
    opts = {}
    if tr:
        kernel, extra, A = _ss_bwd_tr_kernel, dict(EVEN_N=N == NP), A.t().contiguous().float()
    elif variant == "lanes":
        from mamba_backend_torch_triton.kernels.selective_scan_lanes import _ss_bwd_lanes_kernel

        kernel = _ss_bwd_lanes_kernel
        extra = dict(EVEN_N=N == NP, EVEN_L=L % T == 0, FAST=not interpreting())
        if cfg.get("maxnreg") and not interpreting():
            opts["maxnreg"] = int(cfg["maxnreg"])  # registers a thread (ptxas caps; spills past)
    else:
        kernel, extra = _ss_bwd_kernel, dict(EXP2=variant != "base")
    if L > 0:
        kernel[(Bsz, nEb)](
            u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
            dummy if delta_bias is None else delta_bias, hs, dy, dummy if dhL is None else dhL,
            du, ddl, dummy if dz is None else dz, dap, dbp, dcp, ddp, dbiasp, dh0,
            L, N, E // G, nchunks,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1),
            B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
            0 if z is None else z.stride(0), 0 if z is None else z.stride(1),
            dy.stride(0), dy.stride(1),
            T=T, BE=BE, NP=NP, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
            HAS_DHF=dhL is not None, num_warps=cfg["num_warps"], **extra, **opts,
        )
    else:
        dap.zero_(), ddp.zero_(), dbiasp.zero_()
        dh0.copy_(torch.zeros_like(dh0) if dhL is None else dhL)
    per_group = nEb // G
    grads = {
        "u": du,
        "delta": ddl,
        "A": dap.sum(0),
        "B": dbp.view(Bsz, L, G, per_group, NP).sum(3)[..., :N],
        "C": dcp.view(Bsz, L, G, per_group, NP).sum(3)[..., :N],
    }
    if D is not None:
        grads["D"] = ddp.sum(0)
    if z is not None:
        grads["z"] = dz
    if delta_bias is not None:
        grads["delta_bias"] = dbiasp.sum(0)
    if initial_state is not None:
        grads["initial_state"] = dh0
    return {k: v.to(args[k].dtype) for k, v in grads.items()}


KERNELS = {
    "selective_scan": selective_scan,
    "selective_scan_step": selective_scan_step,
    "selective_scan_vjp": selective_scan_vjp,
}
SAVING = {"selective_scan": SavingForm(selective_scan_saving, selective_scan_vjp_saved)}
