"""Triton kernels of Mamba-3's data-dependent rotary embedding: the angle scan and the rotation.

Ops (signatures and math: mamba_core/ops/mamba3.py "Angles", mamba_core/ops/rope.py):
    mamba3_angles(angles, dt, initial_angle)                       -> (phi, final_angle)
    mamba3_angles_vjp((dphi, dfinal), angles, dt, initial_angle)   -> {"angles", "dt", "initial_angle"}
    apply_rope(x, phi, pairing)                                    -> y
    apply_rope_vjp(dy, x, phi, pairing)                            -> {"x", "phi"}

Fallback: float64 inputs, inputs on a device other than CUDA (or the CPU under
TRITON_INTERPRET=1) and degenerate shapes (S = 0, N = 0, S > 1024) run the core's default
composition in torch -- the same math, visible in ``FALLBACKS``.

Angles. One program per (batch, block of HB heads, segment of L) holds a (T, HB, SB) tile
(SB = pow2(S)) and walks its segment in chunks of T tokens: increments tanh(angles) pi dt are reduced into [0, 2 pi), an
inclusive tl.associative_scan along T adds them mod 2 pi (inputs in [0, 2 pi): one conditional
subtract), then the phi carried from the previous chunk (initially the initial angle reduced by
the exact 2 pi, plus the totals of the segments before this one, which a first kernel sums per
segment) is added and wrapped. pi and 2 pi are the float32-rounded constants, as in the
default composition (``_wrap``), so the wrap adds no drift with the number of turns.
Backward: the same tile, chunks in reverse; g = dfinal + reverse cumsum of dphi (a plain sum: the
mod has gradient 1; a segment starts from dfinal plus the dphi totals of the segments after it), ddt = pi sum_s g tanh (complete in the tile: all of S is held) and dangles =
pi sech^2 sum_h g dt, partial per head block (a (B, H/HB, L, S) float32 buffer that torch sums,
deterministic; written straight in angles' dtype when one block holds every head).

Forward variant "seq" (CONFIG["angles_fwd"]["variant"]; the default since run 38): the same
programs and segments, but a program's (HB, SB) angles walk their tokens one at a time in
registers (carry <- carry + increment mod 2 pi, stored as that token's phi), T tokens unrolled a
loop trip, and the segment totals are summed the same way. No (T, HB, SB) tile, no scan across
threads, no shared memory. Compiled for sm_90 on the CPU (Triton 3.6, benchmarks/sass_stats.py;
instructions a (token, head, angle) element, the forward's loop plus the totals pass's):
"scan" T=32 HB=2 ~117 + ~40 at 230 and 111 registers; "seq" T=8 HB=4 ~61 + ~55, HB=8 ~46 + ~38,
HB=16 ~37 + ~30, at 29-64 registers. The sums run in another order (sequential, not a tree),
within the same tolerance of the reference. Run 38 (H100) timed it at 0.105 ms against 0.118
for "scan" at the SISO benchmark shape (sweep_tt.py's ANGLES rows).

Rotation. The leading dims of x (..., N), phi (..., S) (and dy) are broadcast, size-1 dims
dropped and mergeable dims merged (broadcast axes get stride 0); at most 4 dims remain (else the
operands are materialised). One program rotates BM rows: cos and sin once per (row, pair) on a
(BM, SB) tile, pairs loaded as (a, b) = (x[2i], x[2i+1]) ("interleaved", split from one
contiguous (BM, 2 SB) load) or (x[i], x[i + N/2]) ("halves"), pass-through components copied by
a second (BM, N - 2S) tile. Output rows are contiguous (lead, N). The VJP writes dx and dphi per
row, in the argument's dtype, or in float32 when the argument was broadcast: torch then sums
over the broadcast axes (deterministic) and casts.

Floor (SISO, B=8, L=2048, H=32, S=32, N=128, bf16): angles writes phi (B L H S) float32 67 MB
-> ~22 us at 3 TB/s; one rotation reads x and writes y, 2 x 67 MB bf16 -> ~45 us (twice per
forward: B and C), plus 33.5M cos/sin pairs (compute, overlapped). Backward: the angles VJP
reads dphi 67 MB (+ the dangles partials), each rope VJP reads dy and x and writes dx and dphi.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

import array_api_compat.torch as xpt

from mamba_core.ops.mamba3 import _TWO_PI_HI, _TWO_PI_LO
from mamba_core.ops.rope import _lead_shape, _sum_to

from mamba_backend_torch_triton.kernels._glue import default, last_contig, pow2, runs_here

FALLBACKS = "mamba3_angles/mamba3_angles_vjp/apply_rope/apply_rope_vjp: float64 inputs, non-CUDA " \
            "devices (CPU without TRITON_INTERPRET=1), S = 0, N = 0 or S > 1024 -> the core's " \
            "default composition"

#: launch shapes, read at every call: angles chunk T, heads per program HB and L segments
#: (fwd, bwd): L is split into at most "segments" runs of whole chunks of at least "min_seg"
#: tokens, one program row each, after a first pass that sums each segment (the increments mod
#: 2 pi forward, dphi backward); rope rows per program as a budget of elements per tile
#: (BM = budget // pow2(N), in [1, 128]). "interpret": the CPU (interpreter): big tiles, few
#: programs, and segments of 16 tokens so the tests cover the split. One segment (the layout
#: before 2026-12-07's fourth session) gave B H / HB programs, each walking all of L: 256 and 64
#: at the SISO benchmark shape (B=8, H=32), 0.119 ms forward and 0.245 ms VJP in run 23
#: (H100), 5-8x their floors (writing phi, reading dphi: 67 MB float32 each, ~0.022 ms).
#: Run 24 (H100, same shape; min_seg 128, so every split ran as 16 segments of 128 tokens):
#: forward HB=2, T=32 0.106 ms (one segment 0.174, T=64 HB=1 0.149); VJP HB=4, T=32 0.113 ms
#: (one segment 0.223, T=64 0.127). Both still ~5x their floors: the rest is each program's
#: serial walk of its chunks and the tanh / associative scans on (T, HB, S) tiles.
#: "variant" (angles_fwd only): "scan" or "seq" (the module docstring). Run 38 (2026-12-07,
#: H100, same shape): "seq" HB=8 T=8 0.105 ms against "scan" HB=2 T=32 0.118 (seq HB=16 0.130,
#: HB=4 0.134; 32 segments 0.107), so the forward runs "seq" since.
CONFIG = {
    "angles_fwd": {"T": 8, "HB": 8, "num_warps": 4, "segments": 16, "min_seg": 128,
                   "variant": "seq"},
    "angles_bwd": {"T": 32, "HB": 4, "num_warps": 4, "segments": 16, "min_seg": 128},
    "rope": {"elems": 4096, "num_warps": 4},
    "interpret": {"T": 16, "HB": 64, "elems": 1 << 16, "num_warps": 1, "segments": 4, "min_seg": 16},
}
_MAX_S = 1024

#: pi and 2 pi rounded to float32, as the default composition rounds them (x * math.pi in float32)
PI_F32 = float(np.float32(math.pi))
TWO_PI_F32 = float(np.float32(2.0 * math.pi))
assert 2.0 * PI_F32 == TWO_PI_F32 == 6.2831854820251465  # the literal in _add_mod


# ---- angles -------------------------------------------------------------------------------
@triton.jit
def _add_mod(a, b):
    # addition mod 2 pi of two angles in [0, 2 pi): the sum is in [0, 4 pi), one subtract (exact)
    r = a + b
    return tl.where(r >= 6.2831854820251465, r - 6.2831854820251465, r)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _wrap(a, TWO_PI):
    # a mod 2 pi in [0, 2 pi), 2 pi the float32-rounded constant (the default's _wrap)
    r = a - TWO_PI * tl.floor(a / TWO_PI)
    r = tl.where(r < 0, r + TWO_PI, r)
    return tl.where(r >= TWO_PI, r - TWO_PI, r)


@triton.jit
def _tanh_sech2(a):
    # tanh(a) and 1 - tanh(a)^2 = 4e / (1 + e)^2 with e = exp(-2|a|): no overflow, no cancellation
    e = tl.exp(-2.0 * tl.abs(a))
    th = (1.0 - e) / (1.0 + e)
    th = tl.where(a < 0, -th, th)
    return th, 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _tile(b, c, L, H, S, hb, T: tl.constexpr, HB: tl.constexpr, SB: tl.constexpr):
    t = c * T + tl.arange(0, T)
    h = hb * HB + tl.arange(0, HB)
    s = tl.arange(0, SB)
    tm, hm, sm = t < L, h < H, s < S
    t3 = t[:, None, None]
    h3 = h[None, :, None]
    s3 = s[None, None, :]
    m3 = tm[:, None, None] & hm[None, :, None] & sm[None, None, :]
    off3 = ((b * L + t3) * H + h3) * S + s3  # into a contiguous (B, L, H, S)
    return t, h, s, tm, hm, sm, m3, off3


@triton.jit
def _rate(a, PI):
    # the angle rate tanh(angles) pi (computed once per (token, angle), before any broadcast)
    th, _ = _tanh_sech2(a)
    return th * PI


@triton.jit
def _inc_of(rate, d, TWO_PI):
    # an increment rate dt reduced into [0, 2 pi) (rate and d broadcast by the caller)
    return _wrap(rate * d, TWO_PI)


@triton.jit
def _increments(ANG, DT, b, t, h, s, tm, hm, sm, m3, sab, sat, sas, sdb, sdt, sdh, PI, TWO_PI):
    # the chunk's increments tanh(angles) pi dt reduced into [0, 2 pi): (T, HB, SB), 0 where padded
    a = tl.load(ANG + b * sab + t[:, None] * sat + s[None, :] * sas,
                mask=tm[:, None] & sm[None, :], other=0.0).to(tl.float32)  # (T, SB)
    d = tl.load(DT + b * sdb + t[:, None] * sdt + h[None, :] * sdh,
                mask=tm[:, None] & hm[None, :], other=0.0).to(tl.float32)  # (T, HB)
    inc = _inc_of(_rate(a, PI)[:, None, :], d[:, :, None], TWO_PI)
    return tl.where(m3, inc, 0.0)


@triton.jit
def _seg_row(TOT, b, j, nseg, hb, H, S, HB: tl.constexpr, SB: tl.constexpr):
    # pointers and mask of segment j's (HB, SB) row block in TOT (B, NSEG, H, S) float32
    h = hb * HB + tl.arange(0, HB)
    s = tl.arange(0, SB)
    return TOT + ((b * nseg + j) * H + h[:, None]) * S + s[None, :], (h < H)[:, None] & (s < S)[None, :]


# Forward variant "seq" (SEQ; CONFIG "angles_fwd" "variant"): a program's (HB, SB) angles walk
# their tokens one by one, in registers, instead of composing (T, HB, SB) chunk tiles by an
# associative scan across threads (whose shared-memory rounds are most of the "scan" variant's
# ~117 instructions an element, benchmarks/sass_stats.py; the module docstring has both counts)
@triton.jit
def _inc_token(ANG, DT, b, t, h, s, hm, sm, L, sab, sat, sas, sdb, sdt, sdh, PI, TWO_PI):
    # token t's increments tanh(angles) pi dt reduced into [0, 2 pi): (HB, SB), 0 past L or S
    sm = sm & ((s * 0 + t) < L)  # past L: no load, a zero increment
    hm = hm & ((h * 0 + t) < L)
    a = tl.load(ANG + b * sab + t * sat + s * sas, mask=sm, other=0.0).to(tl.float32)
    d = tl.load(DT + b * sdb + t * sdt + h * sdh, mask=hm, other=0.0).to(tl.float32)
    inc = _inc_of(_rate(a, PI)[None, :], d[:, None], TWO_PI)
    return tl.where(hm[:, None] & sm[None, :], inc, 0.0)


@triton.jit
def _angles_total_kernel(
    ANG, DT, TOT,
    L, H, S, CPS,
    sab, sat, sas, sdb, sdt, sdh,
    PI, TWO_PI,
    T: tl.constexpr, HB: tl.constexpr, SB: tl.constexpr, SEQ: tl.constexpr = False,
):
    # one L segment's summed increments mod 2 pi -> TOT (B, NSEG, H, S) float32 (the forward's
    # first pass when L is split; the segments' carries are their predecessors' totals)
    b = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    seg = tl.program_id(2)
    nseg = tl.num_programs(2)
    tot = tl.zeros([HB, SB], dtype=tl.float32)
    if SEQ:
        h = hb * HB + tl.arange(0, HB)
        s = tl.arange(0, SB)
        hm, sm = h < H, s < S
        for cc in range(0, CPS):
            for j in tl.static_range(T):
                t = (seg * CPS + cc) * T + j
                tot = _add_mod(tot, _inc_token(ANG, DT, b, t, h, s, hm, sm, L, sab, sat, sas, sdb,
                                               sdt, sdh, PI, TWO_PI))
    else:
        for cc in range(0, CPS):
            t, h, s, tm, hm, sm, m3, off3 = _tile(b, seg * CPS + cc, L, H, S, hb, T, HB, SB)
            inc = _increments(ANG, DT, b, t, h, s, tm, hm, sm, m3, sab, sat, sas, sdb, sdt, sdh, PI, TWO_PI)
            tot = _add_mod(tot, tl.reduce(inc, 0, _add_mod))
    ptrs, mask = _seg_row(TOT, b, seg, nseg, hb, H, S, HB, SB)
    tl.store(ptrs, tot, mask=mask)


@triton.jit
def _angles_fwd_kernel(
    ANG, DT, INIT, PHI, TOT,
    L, H, S, CPS,
    sab, sat, sas, sdb, sdt, sdh, sib, sih, sis,
    PI, TWO_PI, TWO_PI_HI, TWO_PI_LO,
    T: tl.constexpr, HB: tl.constexpr, SB: tl.constexpr, HAS_INIT: tl.constexpr,
    SEQ: tl.constexpr = False,
):
    # program (b, head block, segment of CPS chunks); its carry: the initial angle plus the
    # totals of the segments before it (TOT; one segment: none)
    b = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    seg = tl.program_id(2)
    nseg = tl.num_programs(2)
    h = hb * HB + tl.arange(0, HB)
    s = tl.arange(0, SB)
    lane = (h < H)[:, None] & (s < S)[None, :]  # (HB, SB)
    if HAS_INIT:
        a0 = tl.load(INIT + b * sib + h[:, None] * sih + s[None, :] * sis, mask=lane, other=0.0)
        a0 = a0.to(tl.float32)
        k = tl.floor(a0 / TWO_PI)
        carry = _wrap((a0 - k * TWO_PI_HI) - k * TWO_PI_LO, TWO_PI)  # mod the exact 2 pi
    else:
        carry = tl.zeros([HB, SB], dtype=tl.float32)
    for sj in range(0, seg):
        ptrs, mask = _seg_row(TOT, b, sj, nseg, hb, H, S, HB, SB)
        carry = _add_mod(carry, tl.load(ptrs, mask=mask, other=0.0))
    if SEQ:
        # token by token: the carry takes each increment mod 2 pi and is that token's phi
        hm, sm = h < H, s < S
        off = h[:, None] * S + s[None, :]  # into a contiguous (B, L, H, S)
        for cc in range(0, CPS):
            for j in tl.static_range(T):
                t = (seg * CPS + cc) * T + j
                carry = _add_mod(carry, _inc_token(ANG, DT, b, t, h, s, hm, sm, L, sab, sat, sas,
                                                   sdb, sdt, sdh, PI, TWO_PI))
                tl.store(PHI + (b * L + t) * H * S + off, carry, mask=lane & ((off * 0 + t) < L))
    else:
        last = (tl.arange(0, T) == T - 1)[:, None, None]
        for cc in range(0, CPS):
            t, h, s, tm, hm, sm, m3, off3 = _tile(b, seg * CPS + cc, L, H, S, hb, T, HB, SB)
            inc = _increments(ANG, DT, b, t, h, s, tm, hm, sm, m3, sab, sat, sas, sdb, sdt, sdh, PI, TWO_PI)
            p = tl.associative_scan(inc, 0, _add_mod)  # padded tokens add 0: the last row is the carry
            p = _add_mod(p, carry[None, :, :])
            tl.store(PHI + off3, p, mask=m3)
            carry = tl.sum(tl.where(last, p, 0.0), axis=0)


@triton.jit
def _dphi_total_kernel(
    DPHI, TOT,
    L, H, S, CPS,
    spb, spt, sph, sps,
    T: tl.constexpr, HB: tl.constexpr, SB: tl.constexpr,
):
    # one L segment's sum of dphi -> TOT (B, NSEG, H, S) float32 (the VJP's first pass when L is
    # split: a segment's adjoint enters as dfinal plus the totals of the segments after it)
    b = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    seg = tl.program_id(2)
    nseg = tl.num_programs(2)
    tot = tl.zeros([HB, SB], dtype=tl.float32)
    for cc in range(0, CPS):
        t, h, s, tm, hm, sm, m3, off3 = _tile(b, seg * CPS + cc, L, H, S, hb, T, HB, SB)
        dp = tl.load(DPHI + b * spb + t[:, None, None] * spt + h[None, :, None] * sph
                     + s[None, None, :] * sps, mask=m3, other=0.0).to(tl.float32)
        tot += tl.sum(dp, axis=0)
    ptrs, mask = _seg_row(TOT, b, seg, nseg, hb, H, S, HB, SB)
    tl.store(ptrs, tot, mask=mask)


@triton.jit
def _angles_bwd_kernel(
    ANG, DT, DPHI, DFIN, DANG, DDT, DINIT, TOT,
    L, H, S, CPS,
    sab, sat, sas, sdb, sdt, sdh, spb, spt, sph, sps, sfb, sfh, sfs,
    PI,
    T: tl.constexpr, HB: tl.constexpr, SB: tl.constexpr,
    HAS_DPHI: tl.constexpr, HAS_DFIN: tl.constexpr, HAS_INIT: tl.constexpr,
):
    # program (b, head block, segment of CPS chunks), chunks in reverse; its adjoint enters as
    # dfinal plus the dphi totals of the segments after it (TOT; one segment: none)
    b = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    seg = tl.program_id(2)
    nhb = tl.num_programs(1)
    nseg = tl.num_programs(2)
    h = hb * HB + tl.arange(0, HB)
    s = tl.arange(0, SB)
    lane = (h < H)[:, None] & (s < S)[None, :]
    if HAS_DFIN:
        g = tl.load(DFIN + b * sfb + h[:, None] * sfh + s[None, :] * sfs, mask=lane, other=0.0)
        g = g.to(tl.float32)
    else:
        g = tl.zeros([HB, SB], dtype=tl.float32)
    if HAS_DPHI:
        for j in range(seg + 1, nseg):
            ptrs, mask = _seg_row(TOT, b, j, nseg, hb, H, S, HB, SB)
            g += tl.load(ptrs, mask=mask, other=0.0)
    first = (tl.arange(0, T) == 0)[:, None, None]
    for cc in range(0, CPS):
        c = seg * CPS + CPS - 1 - cc
        t, h, s, tm, hm, sm, m3, off3 = _tile(b, c, L, H, S, hb, T, HB, SB)
        if HAS_DPHI:
            dp = tl.load(DPHI + b * spb + t[:, None, None] * spt + h[None, :, None] * sph
                         + s[None, None, :] * sps, mask=m3, other=0.0).to(tl.float32)
            gt = tl.associative_scan(dp, 0, _add, reverse=True) + g[None, :, :]  # (T, HB, SB)
            g = tl.sum(tl.where(first, gt, 0.0), axis=0)
        else:
            gt = tl.zeros([T, HB, SB], dtype=tl.float32) + g[None, :, :]
        gt = tl.where(m3, gt, 0.0)
        a = tl.load(ANG + b * sab + t[:, None] * sat + s[None, :] * sas,
                    mask=tm[:, None] & sm[None, :], other=0.0).to(tl.float32)  # (T, SB)
        d = tl.load(DT + b * sdb + t[:, None] * sdt + h[None, :] * sdh,
                    mask=tm[:, None] & hm[None, :], other=0.0).to(tl.float32)  # (T, HB)
        th, sech2 = _tanh_sech2(a)
        ddt = tl.sum(gt * th[:, None, :], axis=2) * PI  # (T, HB)
        tl.store(DDT + (b * L + t[:, None]) * H + h[None, :], ddt.to(DDT.dtype.element_ty),
                 mask=tm[:, None] & hm[None, :])
        dang = tl.sum(gt * d[:, :, None], axis=1) * PI * sech2  # (T, SB), this block's heads
        tl.store(DANG + ((b * nhb + hb) * L + t[:, None]) * S + s[None, :],
                 dang.to(DANG.dtype.element_ty), mask=tm[:, None] & sm[None, :])
    if HAS_INIT:
        if seg == 0:  # the first segment's entering adjoint is the whole sum
            tl.store(DINIT + (b * H + h[:, None]) * S + s[None, :], g.to(DINIT.dtype.element_ty),
                     mask=lane)


ANGLE_VARIANTS = ("scan", "seq")


def _angles_variant(cfg: dict) -> str:
    v = cfg.get("variant", "scan")
    if v not in ANGLE_VARIANTS:
        raise ValueError(f"rope CONFIG angles variant {v!r}: expected one of {ANGLE_VARIANTS}")
    return v


def _angles_cfg(device, which):
    if device.type == "cpu":
        return CONFIG["interpret"]
    return CONFIG[which]


def _angles_shape(angles, dt, cfg, S, H):
    """(T, HB, SB, chunks per segment, segments): L split into at most cfg["segments"] runs of
    whole chunks (at least cfg["min_seg"] tokens each), one program row per segment."""
    L = angles.shape[1]
    SB = pow2(S)
    HB = min(pow2(H), pow2(int(cfg["HB"])))
    T = max(min(int(cfg["T"]), pow2(L, 1)), 1)
    nc = triton.cdiv(L, T)
    want = max(1, min(int(cfg.get("segments", 1)), L // max(int(cfg.get("min_seg", 1)), 1)))
    cps = triton.cdiv(nc, want)
    return T, HB, SB, cps, triton.cdiv(nc, cps)


def mamba3_angles(angles, dt, initial_angle=None):
    """Cumulative rotary angles mod 2 pi. angles: (B, L, S); dt: (B, L, H); initial_angle:
    (B, H, S) or None -> (phi (B, L, H, S), final_angle (B, H, S)), float32, in [0, 2 pi)."""
    Bsz, L, S = angles.shape
    H = dt.shape[2]
    if not runs_here(angles, dt, initial_angle) or not 0 < S <= _MAX_S or H == 0 or Bsz == 0:
        return default("mamba3_angles")(angles, dt, initial_angle)
    cfg = _angles_cfg(angles.device, "angles_fwd")
    T, HB, SB, cps, nseg = _angles_shape(angles, dt, cfg, S, H)
    phi = torch.empty((Bsz, L, H, S), dtype=torch.float32, device=angles.device)
    grid = (Bsz, triton.cdiv(H, HB), nseg)
    seq = _angles_variant(cfg) == "seq"
    tot = phi
    if nseg > 1:
        tot = torch.empty((Bsz, nseg, H, S), dtype=torch.float32, device=angles.device)
        _angles_total_kernel[grid](angles, dt, tot, L, H, S, cps, *angles.stride(), *dt.stride(),
                                   PI_F32, TWO_PI_F32, T=T, HB=HB, SB=SB, SEQ=seq,
                                   num_warps=cfg["num_warps"])
    ini = initial_angle
    si = (0, 0, 0) if ini is None else ini.stride()
    _angles_fwd_kernel[grid](
        angles, dt, angles if ini is None else ini, phi, tot,
        L, H, S, cps, *angles.stride(), *dt.stride(), *si,
        PI_F32, TWO_PI_F32, _TWO_PI_HI, _TWO_PI_LO,
        T=T, HB=HB, SB=SB, HAS_INIT=ini is not None, SEQ=seq, num_warps=cfg["num_warps"],
    )
    return phi, phi[:, -1]


def mamba3_angles_vjp(cotangent, angles, dt, initial_angle=None):
    """VJP of mamba3_angles; cotangent = (dphi (B, L, H, S), dfinal_angle (B, H, S)), either
    None (zero) -> {"angles", "dt", "initial_angle" (when given)}, each in its argument's dtype."""
    dphi, dfin = cotangent
    Bsz, L, S = angles.shape
    H = dt.shape[2]
    if (not runs_here(angles, dt, initial_angle, dphi, dfin) or not 0 < S <= _MAX_S or H == 0
            or Bsz == 0):
        return default("mamba3_angles_vjp")(cotangent, angles, dt, initial_angle)
    dev = angles.device
    cfg = _angles_cfg(dev, "angles_bwd")
    T, HB, SB, cps, nseg = _angles_shape(angles, dt, cfg, S, H)
    nhb = triton.cdiv(H, HB)
    dang = torch.empty((Bsz, nhb, L, S), dtype=angles.dtype if nhb == 1 else torch.float32, device=dev)
    ddt = torch.empty((Bsz, L, H), dtype=dt.dtype, device=dev)
    dini = None if initial_angle is None else torch.empty((Bsz, H, S), dtype=initial_angle.dtype,
                                                          device=dev)
    sp = (0, 0, 0, 0) if dphi is None else dphi.stride()
    sf = (0, 0, 0) if dfin is None else dfin.stride()
    grid = (Bsz, nhb, nseg)
    tot = ddt
    if nseg > 1 and dphi is not None:
        tot = torch.empty((Bsz, nseg, H, S), dtype=torch.float32, device=dev)
        _dphi_total_kernel[grid](dphi, tot, L, H, S, cps, *sp, T=T, HB=HB, SB=SB, num_warps=cfg["num_warps"])
    _angles_bwd_kernel[grid](
        angles, dt, angles if dphi is None else dphi, angles if dfin is None else dfin, dang, ddt,
        ddt if dini is None else dini, tot,
        L, H, S, cps, *angles.stride(), *dt.stride(), *sp, *sf,
        PI_F32,
        T=T, HB=HB, SB=SB, HAS_DPHI=dphi is not None, HAS_DFIN=dfin is not None,
        HAS_INIT=dini is not None, num_warps=cfg["num_warps"],
    )
    dang = dang[:, 0] if nhb == 1 else dang.sum(1).to(angles.dtype)
    out = {"angles": dang, "dt": ddt}
    if dini is not None:
        out["initial_angle"] = dini
    return out


# ---- rotation -----------------------------------------------------------------------------
@triton.jit
def _rope_rows(pid, M, D1, D2, D3, BM: tl.constexpr):
    rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
    r = rows
    i3 = r % D3
    r = r // D3
    i2 = r % D2
    r = r // D2
    i1 = r % D1
    i0 = r // D1
    return rows, rows < M, i0, i1, i2, i3


@triton.jit
def _pair_load(P, off, i, m2, HALF, HALVES: tl.constexpr, BM: tl.constexpr, SB: tl.constexpr):
    # the (a, b) components of the S pairs of BM rows, float32 (BM, SB) each
    if HALVES:
        a = tl.load(P + off[:, None] + i[None, :], mask=m2, other=0.0).to(tl.float32)
        b = tl.load(P + off[:, None] + HALF + i[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        j = tl.arange(0, 2 * SB)
        m = tl.reshape(tl.join(m2, m2), (BM, 2 * SB))
        v = tl.load(P + off[:, None] + j[None, :], mask=m, other=0.0).to(tl.float32)
        a, b = tl.split(tl.reshape(v, (BM, SB, 2)))
    return a, b


@triton.jit
def _pair_store(P, off, i, m2, a, b, HALF, HALVES: tl.constexpr, BM: tl.constexpr, SB: tl.constexpr):
    a = a.to(P.dtype.element_ty)
    b = b.to(P.dtype.element_ty)
    if HALVES:
        tl.store(P + off[:, None] + i[None, :], a, mask=m2)
        tl.store(P + off[:, None] + HALF + i[None, :], b, mask=m2)
    else:
        j = tl.arange(0, 2 * SB)
        m = tl.reshape(tl.join(m2, m2), (BM, 2 * SB))
        tl.store(P + off[:, None] + j[None, :], tl.reshape(tl.join(a, b), (BM, 2 * SB)), mask=m)


@triton.jit
def _pass_cols(S, HALF, NP, HALVES: tl.constexpr, PB: tl.constexpr):
    # the N - 2S unrotated components: [2S, N) (interleaved), [S, N/2) and [N/2 + S, N) (halves)
    k = tl.arange(0, PB)
    if HALVES:
        n = tl.where(k < HALF - S, S + k, 2 * S + k)
    else:
        n = 2 * S + k
    return n, k < NP


@triton.jit
def _rope_fwd_kernel(
    X, PHI, Y,
    M, D1, D2, D3,
    sx0, sx1, sx2, sx3, sp0, sp1, sp2, sp3,
    N, S, HALF, NP,
    BM: tl.constexpr, SB: tl.constexpr, PB: tl.constexpr, HALVES: tl.constexpr,
    HAS_PASS: tl.constexpr,
):
    rows, rm, i0, i1, i2, i3 = _rope_rows(tl.program_id(0), M, D1, D2, D3, BM)
    xo = i0 * sx0 + i1 * sx1 + i2 * sx2 + i3 * sx3
    po = i0 * sp0 + i1 * sp1 + i2 * sp2 + i3 * sp3
    yo = rows * N
    i = tl.arange(0, SB)
    m2 = rm[:, None] & (i < S)[None, :]
    ph = tl.load(PHI + po[:, None] + i[None, :], mask=m2, other=0.0).to(tl.float32)
    c = tl.cos(ph)
    s = tl.sin(ph)
    a, b = _pair_load(X, xo, i, m2, HALF, HALVES, BM, SB)
    _pair_store(Y, yo, i, m2, a * c - b * s, a * s + b * c, HALF, HALVES, BM, SB)
    if HAS_PASS:
        n, km = _pass_cols(S, HALF, NP, HALVES, PB)
        mp = rm[:, None] & km[None, :]
        v = tl.load(X + xo[:, None] + n[None, :], mask=mp, other=0.0)
        tl.store(Y + yo[:, None] + n[None, :], v.to(Y.dtype.element_ty), mask=mp)


@triton.jit
def _rope_bwd_kernel(
    DY, X, PHI, DX, DPHI,
    M, D1, D2, D3,
    sy0, sy1, sy2, sy3, sx0, sx1, sx2, sx3, sp0, sp1, sp2, sp3,
    N, S, HALF, NP,
    BM: tl.constexpr, SB: tl.constexpr, PB: tl.constexpr, HALVES: tl.constexpr,
    HAS_PASS: tl.constexpr,
):
    rows, rm, i0, i1, i2, i3 = _rope_rows(tl.program_id(0), M, D1, D2, D3, BM)
    yo = i0 * sy0 + i1 * sy1 + i2 * sy2 + i3 * sy3
    xo = i0 * sx0 + i1 * sx1 + i2 * sx2 + i3 * sx3
    po = i0 * sp0 + i1 * sp1 + i2 * sp2 + i3 * sp3
    i = tl.arange(0, SB)
    m2 = rm[:, None] & (i < S)[None, :]
    ph = tl.load(PHI + po[:, None] + i[None, :], mask=m2, other=0.0).to(tl.float32)
    c = tl.cos(ph)
    s = tl.sin(ph)
    a, b = _pair_load(X, xo, i, m2, HALF, HALVES, BM, SB)
    da, db = _pair_load(DY, yo, i, m2, HALF, HALVES, BM, SB)
    ya = a * c - b * s
    yb = a * s + b * c
    _pair_store(DX, rows * N, i, m2, da * c + db * s, db * c - da * s, HALF, HALVES, BM, SB)
    tl.store(DPHI + rows[:, None] * S + i[None, :], (ya * db - yb * da).to(DPHI.dtype.element_ty),
             mask=m2)
    if HAS_PASS:
        n, km = _pass_cols(S, HALF, NP, HALVES, PB)
        mp = rm[:, None] & km[None, :]
        v = tl.load(DY + yo[:, None] + n[None, :], mask=mp, other=0.0)
        tl.store(DX + rows[:, None] * N + n[None, :], v.to(DX.dtype.element_ty), mask=mp)


def _collapse(lead: tuple, strides: list) -> list | None:
    """Leading dims as at most 4 (size, [stride per tensor]) pairs, outermost first: size-1 dims
    dropped, neighbours merged where every tensor steps through them as one dim. None if > 4."""
    dims = []
    for k, n in enumerate(lead):
        if n == 1:
            continue
        st = [s[k] for s in strides]
        if dims and all(ps == q * n for ps, q in zip(dims[-1][1], st)):
            dims[-1] = (dims[-1][0] * n, st)
        else:
            dims.append((n, st))
    if len(dims) > 4:
        return None
    return [(1, [0] * len(strides))] * (4 - len(dims)) + dims


def _rope_launch(x, phi, dy, pairing):
    """Shared glue: (lead, row layout args, tile constexprs, operands possibly materialised)."""
    N, S = x.shape[-1], phi.shape[-1]
    lead = _lead_shape(tuple(x.shape[:-1]), tuple(phi.shape[:-1]))
    ops = [last_contig(t) for t in ((x, phi) if dy is None else (dy, x, phi))]
    widths = [t.shape[-1] for t in ops]
    views = [t.expand(lead + (w,)) for t, w in zip(ops, widths)]
    dims = _collapse(lead, [v.stride()[:-1] for v in views])
    if dims is None:  # more than 4 irreducible leading dims: materialise the broadcast
        views = [v.contiguous() for v in views]
        dims = _collapse(lead, [v.stride()[:-1] for v in views])
    M = math.prod(lead)
    strides = [d[1][j] for j in range(len(views)) for d in dims]
    sizes = [d[0] for d in dims[1:]]  # D1, D2, D3 (D0 is implied by M)
    SB = pow2(S)
    NP = N - 2 * S
    cfg = CONFIG["interpret"] if x.device.type == "cpu" else CONFIG["rope"]
    BM = max(1, min(128, int(cfg["elems"]) // pow2(N)))
    meta = dict(BM=BM, SB=SB, PB=pow2(max(NP, 1)), HALVES=pairing == "halves", HAS_PASS=NP > 0,
                num_warps=cfg["num_warps"])
    return lead, M, views, [M, *sizes, *strides, N, S, N // 2, NP], meta


def _rope_unsupported(x, phi):
    return x.shape[-1] == 0 or not 0 < phi.shape[-1] <= _MAX_S


def apply_rope(x, phi, pairing="interleaved"):
    """Rotate S component pairs of x (..., N) by phi (..., S) -> (broadcast lead, N) in x's dtype."""
    if not runs_here(x, phi) or _rope_unsupported(x, phi) or pairing not in ("interleaved", "halves"):
        return default("apply_rope")(x, phi, pairing)
    lead, M, (xv, pv), args, meta = _rope_launch(x, phi, None, pairing)
    N = x.shape[-1]
    y = torch.empty(lead + (N,), dtype=x.dtype, device=x.device)
    if M > 0:
        _rope_fwd_kernel[(triton.cdiv(M, meta["BM"]),)](xv, pv, y, *args, **meta)
    return y


def apply_rope_vjp(dy, x, phi, pairing="interleaved"):
    """VJP of apply_rope: dy (lead, N) -> {"x": dx (x's shape and dtype), "phi": (phi's)}."""
    if (not runs_here(dy, x, phi) or _rope_unsupported(x, phi)
            or pairing not in ("interleaved", "halves")):
        return default("apply_rope_vjp")(dy, x, phi, pairing)
    lead, M, (dyv, xv, pv), args, meta = _rope_launch(x, phi, dy, pairing)
    N, S = x.shape[-1], phi.shape[-1]
    x_full = tuple(x.shape[:-1]) == lead
    p_full = tuple(phi.shape[:-1]) == lead
    dev = x.device
    dx = torch.empty(lead + (N,), dtype=x.dtype if x_full else torch.float32, device=dev)
    dphi = torch.empty(lead + (S,), dtype=phi.dtype if p_full else torch.float32, device=dev)
    if M > 0:
        _rope_bwd_kernel[(triton.cdiv(M, meta["BM"]),)](dyv, xv, pv, dx, dphi, *args, **meta)
    if not x_full:
        dx = _sum_to(xpt, dx, x.shape).to(x.dtype)
    if not p_full:
        dphi = _sum_to(xpt, dphi, phi.shape).to(phi.dtype)
    return {"x": dx, "phi": dphi}


KERNELS = {
    "mamba3_angles": mamba3_angles,
    "mamba3_angles_vjp": mamba3_angles_vjp,
    "apply_rope": apply_rope,
    "apply_rope_vjp": apply_rope_vjp,
}
