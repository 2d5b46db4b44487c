"""Mamba-3's B/C prologue as one kernel for B and C: groups to heads, bias, rotation; and its VJP.

What mamba3_rope_scan composes before its scan (mamba_core/ops/mamba3_fused.py ``compose``):
    Bh[b, t, r, h] = rope(B[b, t, r, h // (H / G)] + B_bias[r, h], phi[b, t, h])   (and C)
written here as

    bc_heads_rope(B, C, phi, B_bias, C_bias, H, pairing) -> (Bh, Ch)        (B, L, R, H, N) each
    bc_heads_rope_vjp(dBh, dCh, B, C, phi, B_bias, C_bias, pairing)
        -> (dB (B, L, R, G, N), dC, dB_bias (R, H, N) | None, dC_bias | None, dphi (B, L, H, S))

One program per (batch, block of T tokens, block of HB heads of one group, rank) loads the
group's B and C rows once and walks its HB heads (by default all H / G of the group): per head it adds the bias, takes cos and sin of the head's
angles once for both B and C, and rotates (forward) or rotates back (VJP). The VJP sums the
heads' gradients into the group's in registers, writes each head's angle gradient (the B and
C shares added) and a per-program partial of the bias gradients (summed by torch:
deterministic). The N columns are three tiles, as in mamba3_fused's kernel: the pairs' first
components, their second components, the pass-through ones (``_pair_cols``, ``_pass_cols``,
shared with mamba3_fused's kernel, as are ``_cos_sin`` and ``_rot``).
The bias is added in float32 (the composition adds it in the inputs' dtype).

Against the composition this replaces, per direction: two bias adds in torch, two apply_rope
(and in the VJP two apply_rope_vjp, the head sums and the bias sums in torch). Floor (SISO
benchmark shape B=8, L=2048, H=32, N=128, S=32, bf16, G=1): the forward reads phi (67 MB,
float32) and writes Bh, Ch (2 x 134 MB): ~335 MB, ~0.11 ms at 3 TB/s; the VJP reads dBh, dCh
and phi and writes dphi: ~470 MB, ~0.16 ms.

Callers (mamba3_fused) check what the scan takes (``_supported``) and the pairing first; S = 0
and N = 2 S are constexpr flags here. Measured (run 24, H100, the shape above): forward 0.169
ms (1.5x its floor; the separate ops took ~0.58), VJP 0.556 ms (3.5x). Certified on the GPU
(runs 23-24) and in the interpreter; MAMBA_TRITON_BC_KERNEL=0 sends mamba3_rope_scan back to
the separate ops.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from mamba_backend_torch_triton.kernels._scan_common import c as _c, interpreting, pow2

#: tokens per program T, warps, and heads per program HB (None: all H / G heads of a group; else
#: the largest divisor of H / G not above it -- more programs, and in the VJP float32 partial
#: sums over head blocks that torch adds), per kernel, read at every call ("interpret": the
#: CPU). Registers compiled for sm_90 (bf16, N = 128, S = 32) scale with the elements a thread
#: holds, T N / (32 warps): 184 / 255 (forward / VJP) at T = 16 with 4 warps, 89 / 128 at T = 16
#: with 8 warps, 88 / 137 at T = 8 with 4 warps, 48 / 80 at T = 8 with 8 warps.
#: Run 24 (2026-12-07, H100, SISO shape, bf16; benchmarks/results/gpu-20261207-h100): forward
#: T=8 / 4 warps 0.169 ms (T=4 / 4 0.173, T=8 / 8 0.196, HB=4 or 8 0.20-0.21, T=16 0.60-0.62,
#: T=32 1.21: run 23's T=16 / 4 warps was 0.61); VJP T=8 / 4 warps 0.556 ms (T=4 0.572,
#: T=16 / 4 0.603, T=8 / 8 0.779, HB=8 0.80-0.84).
CONFIG = {"bc": {"T": 8, "num_warps": 4, "HB": None}, "bc_vjp": {"T": 8, "num_warps": 4, "HB": None},
          "interpret": {"T": 16, "num_warps": 1, "HB": None}}


@triton.jit
def _pair_cols(i, N, HALVES: tl.constexpr):
    # the original columns of pair i's two components
    if HALVES:
        return i, N // 2 + i
    else:
        return 2 * i, 2 * i + 1


@triton.jit
def _pass_cols(j, N, S, HALVES: tl.constexpr):
    # the original column of pass-through component j (j < N - 2 S): interleaved, 2 S + j; halves,
    # columns S .. N/2 - 1 then N/2 + S .. N - 1
    if HALVES:
        return tl.where(j < N // 2 - S, S + j, 2 * S + j)
    else:
        return 2 * S + j


@triton.jit
def _cols(N, S, BS: tl.constexpr, BQ: tl.constexpr, HALVES: tl.constexpr):
    # column indices of the three tiles: pairs' first and second components, pass-through
    i = tl.arange(0, BS)
    c1, c2 = _pair_cols(i, N, HALVES)
    j = tl.arange(0, BQ)
    return i, i < S, c1, c2, j, j < N - 2 * S, _pass_cols(j, N, S, HALVES)


@triton.jit
def _rot(a, z, cs, sn):
    # a pair (a, z) rotated by the angle whose cos and sin are cs, sn
    return a * cs - z * sn, z * cs + a * sn


@triton.jit
def _load3(ptr, base, tm, c1, c2, c3, im, qm, ROT: tl.constexpr, PASS: tl.constexpr):
    # a (T, N) row block as three float32 tiles (0.0 where a group is absent)
    x1 = 0.0
    x2 = 0.0
    x3 = 0.0
    if ROT:
        m = tm[:, None] & im[None, :]
        x1 = tl.load(ptr + base + c1[None, :], mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(ptr + base + c2[None, :], mask=m, other=0.0).to(tl.float32)
    if PASS:
        x3 = tl.load(ptr + base + c3[None, :], mask=tm[:, None] & qm[None, :], other=0.0).to(tl.float32)
    return x1, x2, x3


@triton.jit
def _bias3(ptr, off, c1, c2, c3, im, qm, HAS: tl.constexpr, ROT: tl.constexpr, PASS: tl.constexpr):
    # one bias row (N,) as three row vectors (float32; 0.0 where absent)
    b1 = 0.0
    b2 = 0.0
    b3 = 0.0
    if HAS:
        if ROT:
            b1 = tl.load(ptr + off + c1, mask=im, other=0.0).to(tl.float32)[None, :]
            b2 = tl.load(ptr + off + c2, mask=im, other=0.0).to(tl.float32)[None, :]
        if PASS:
            b3 = tl.load(ptr + off + c3, mask=qm, other=0.0).to(tl.float32)[None, :]
    return b1, b2, b3


@triton.jit
def _store3(ptr, base, tm, c1, c2, c3, im, qm, x1, x2, x3, ROT: tl.constexpr, PASS: tl.constexpr):
    if ROT:
        m = tm[:, None] & im[None, :]
        tl.store(ptr + base + c1[None, :], x1.to(ptr.dtype.element_ty), mask=m)
        tl.store(ptr + base + c2[None, :], x2.to(ptr.dtype.element_ty), mask=m)
    if PASS:
        tl.store(ptr + base + c3[None, :], x3.to(ptr.dtype.element_ty), mask=tm[:, None] & qm[None, :])


@triton.jit
def _cos_sin(phi_ptr, tok, i, tm, im, S, FAST: tl.constexpr):
    # the (T, BS) angles of the rows' head, reduced to [-pi, pi) for the hardware sin/cos
    ph = tl.load(phi_ptr + (tok * S)[:, None] + i[None, :], mask=tm[:, None] & im[None, :],
                 other=0.0).to(tl.float32)
    ph = ph - 6.283185307179586 * tl.floor(ph * 0.15915494309189535 + 0.5)
    if FAST:
        return libdevice.fast_cosf(ph), libdevice.fast_sinf(ph)
    return tl.cos(ph), tl.sin(ph)


@triton.jit
def _program(B_ptr, C_ptr, L, H, G, N, S, nT, R: tl.constexpr, T: tl.constexpr, HB: tl.constexpr,
             BS: tl.constexpr, BQ: tl.constexpr, ROT: tl.constexpr, PASS: tl.constexpr,
             HALVES: tl.constexpr):
    # this program's (batch, token block, block of HB heads of one group, rank), its columns, and
    # the group's B and C rows
    pid = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1).to(tl.int64)
    r = tl.program_id(2).to(tl.int64)
    g = (hb * HB) // (H // G)
    b = pid // nT
    t = (pid % nT) * T + tl.arange(0, T)
    tm = t < L
    i, im, c1, c2, j, qm, c3 = _cols(N, S, BS, BQ, HALVES)
    gbase = ((((b * L + t) * R + r) * G + g) * N)[:, None]
    B1, B2, B3 = _load3(B_ptr, gbase, tm, c1, c2, c3, im, qm, ROT, PASS)
    C1, C2, C3 = _load3(C_ptr, gbase, tm, c1, c2, c3, im, qm, ROT, PASS)
    return pid, hb, r, b, t, tm, i, im, c1, c2, qm, c3, gbase, B1, B2, B3, C1, C2, C3


@triton.jit
def _rotate_back(ptr, hbase, tm, c1, c2, c3, im, qm, x1, x2, bias_ptr, boff, cs, sn,
                 HAS: tl.constexpr, ROT: tl.constexpr, PASS: tl.constexpr):
    # one head's gradient rows of B (or C) rotated back: (dx1, dx2, dx3, its angle gradient)
    b1, b2, b3 = _bias3(bias_ptr, boff, c1, c2, c3, im, qm, HAS, ROT, PASS)
    d1, d2, d3 = _load3(ptr, hbase, tm, c1, c2, c3, im, qm, ROT, PASS)
    e1 = 0.0
    e2 = 0.0
    dphi = 0.0
    if ROT:
        y1, y2 = _rot(x1 + b1, x2 + b2, cs, sn)
        dphi = d2 * y1 - d1 * y2
        e1, e2 = _rot(d1, d2, cs, -sn)  # the inverse rotation
    return e1, e2, d3, dphi


@triton.jit
def _bias_share(ptr, po, c1, c2, c3, im, qm, e1, e2, e3, HAS: tl.constexpr, ROT: tl.constexpr,
                PASS: tl.constexpr):
    # this program's share of one bias row's gradient: its tokens summed
    if HAS:
        if ROT:
            tl.store(ptr + po + c1, tl.sum(e1, 0), mask=im)
            tl.store(ptr + po + c2, tl.sum(e2, 0), mask=im)
        if PASS:
            tl.store(ptr + po + c3, tl.sum(e3, 0), mask=qm)


@triton.jit
def _bc_fwd(B_ptr, C_ptr, phi_ptr, bb_ptr, cb_ptr, Bh_ptr, Ch_ptr, L, H, G, N, S, nT,
            R: tl.constexpr, T: tl.constexpr, HB: tl.constexpr, BS: tl.constexpr, BQ: tl.constexpr,
            ROT: tl.constexpr, PASS: tl.constexpr, HALVES: tl.constexpr, HAS_BB: tl.constexpr,
            HAS_CB: tl.constexpr, FAST: tl.constexpr):
    pid, hb, r, b, t, tm, i, im, c1, c2, qm, c3, gbase, B1, B2, B3, C1, C2, C3 = _program(
        B_ptr, C_ptr, L, H, G, N, S, nT, R, T, HB, BS, BQ, ROT, PASS, HALVES)
    for hh in range(0, HB):
        h = hb * HB + hh
        bb1, bb2, bb3 = _bias3(bb_ptr, (r * H + h) * N, c1, c2, c3, im, qm, HAS_BB, ROT, PASS)
        cb1, cb2, cb3 = _bias3(cb_ptr, (r * H + h) * N, c1, c2, c3, im, qm, HAS_CB, ROT, PASS)
        hbase = ((((b * L + t) * R + r) * H + h) * N)[:, None]
        cs = 1.0
        sn = 0.0
        if ROT:
            cs, sn = _cos_sin(phi_ptr, (b * L + t) * H + h, i, tm, im, S, FAST)
        y1, y2 = _rot(B1 + bb1, B2 + bb2, cs, sn)
        _store3(Bh_ptr, hbase, tm, c1, c2, c3, im, qm, y1, y2, B3 + bb3, ROT, PASS)
        y1, y2 = _rot(C1 + cb1, C2 + cb2, cs, sn)
        _store3(Ch_ptr, hbase, tm, c1, c2, c3, im, qm, y1, y2, C3 + cb3, ROT, PASS)


@triton.jit
def _bc_vjp(dBh_ptr, dCh_ptr, B_ptr, C_ptr, phi_ptr, bb_ptr, cb_ptr,
            dB_ptr, dC_ptr, dbb_ptr, dcb_ptr, dphi_ptr, L, H, G, N, S, nT, nO,
            R: tl.constexpr, T: tl.constexpr, HB: tl.constexpr, BS: tl.constexpr, BQ: tl.constexpr,
            ROT: tl.constexpr, PASS: tl.constexpr, HALVES: tl.constexpr, HAS_BB: tl.constexpr,
            HAS_CB: tl.constexpr, FAST: tl.constexpr):
    # y1 = a cos - z sin, y2 = z cos + a sin (a, z = the pair + bias): (da, dz) = (dy1, dy2)
    # rotated by -phi, dphi = dy2 y1 - dy1 y2; pass-through components: dx = dy. The HB heads'
    # gradients of the group rows are summed here and written as row block hb of dB, dC
    # (B, L, R, nO = H / HB, N): the group's rows when HB = H / G, else partials torch sums
    pid, hb, r, b, t, tm, i, im, c1, c2, qm, c3, gbase, B1, B2, B3, C1, C2, C3 = _program(
        B_ptr, C_ptr, L, H, G, N, S, nT, R, T, HB, BS, BQ, ROT, PASS, HALVES)
    gB1 = tl.zeros((T, BS), tl.float32)
    gB2 = tl.zeros((T, BS), tl.float32)
    gB3 = tl.zeros((T, BQ), tl.float32)
    gC1 = tl.zeros((T, BS), tl.float32)
    gC2 = tl.zeros((T, BS), tl.float32)
    gC3 = tl.zeros((T, BQ), tl.float32)
    for hh in range(0, HB):
        h = hb * HB + hh
        hbase = ((((b * L + t) * R + r) * H + h) * N)[:, None]
        tok = (b * L + t) * H + h
        boff = (r * H + h) * N
        po = ((pid * R + r) * H + h) * N  # this program's row of the bias partials
        cs = 1.0
        sn = 0.0
        if ROT:
            cs, sn = _cos_sin(phi_ptr, tok, i, tm, im, S, FAST)
        e1, e2, e3, dpb = _rotate_back(dBh_ptr, hbase, tm, c1, c2, c3, im, qm, B1, B2, bb_ptr, boff,
                                       cs, sn, HAS_BB, ROT, PASS)
        _bias_share(dbb_ptr, po, c1, c2, c3, im, qm, e1, e2, e3, HAS_BB, ROT, PASS)
        if ROT:
            gB1 += e1
            gB2 += e2
        if PASS:
            gB3 += e3
        e1, e2, e3, dpc = _rotate_back(dCh_ptr, hbase, tm, c1, c2, c3, im, qm, C1, C2, cb_ptr, boff,
                                       cs, sn, HAS_CB, ROT, PASS)
        _bias_share(dcb_ptr, po, c1, c2, c3, im, qm, e1, e2, e3, HAS_CB, ROT, PASS)
        if ROT:
            gC1 += e1
            gC2 += e2
            # (B, L, H, R, S): this rank's share of the head's angle gradient, B's and C's added
            tl.store(dphi_ptr + ((tok * R + r) * S)[:, None] + i[None, :], dpb + dpc,
                     mask=tm[:, None] & im[None, :])
        if PASS:
            gC3 += e3
    obase = ((((b * L + t) * R + r) * nO + hb) * N)[:, None]
    _store3(dB_ptr, obase, tm, c1, c2, c3, im, qm, gB1, gB2, gB3, ROT, PASS)
    _store3(dC_ptr, obase, tm, c1, c2, c3, im, qm, gC1, gC2, gC3, ROT, PASS)


def _meta(B, phi, H, which):
    Bsz, L, R, G, N = B.shape
    S = phi.shape[-1]
    cfg = CONFIG["interpret"] if B.device.type == "cpu" else CONFIG[which]
    T = min(int(cfg["T"]), pow2(L, 1))
    HG = H // G
    HB = HG if cfg.get("HB") is None else max(1, math.gcd(HG, int(cfg["HB"])))
    nT = triton.cdiv(L, T)
    meta = dict(R=R, T=T, HB=HB, BS=pow2(max(S, 1)), BQ=pow2(max(N - 2 * S, 1)), ROT=S > 0, PASS=N > 2 * S,
                FAST=not interpreting(), num_warps=int(cfg["num_warps"]))
    return (Bsz * nT, H // HB, R), nT, meta


def bc_heads_rope(B, C, phi, B_bias, C_bias, H: int, pairing: str = "interleaved"):
    """B, C (Bsz, L, R, G, N) per group; phi (Bsz, L, H, S); biases (R, H, N) or None ->
    (Bh, Ch) (Bsz, L, R, H, N) in B's and C's dtypes: each head's group rows + its bias, S pairs
    rotated by the head's angles (``pairing`` "interleaved" or "halves"), the rest copied."""
    Bsz, L, R, G, N = B.shape
    S = phi.shape[-1]
    B, C, phi, B_bias, C_bias = (_c(t) for t in (B, C, phi, B_bias, C_bias))
    Bh = torch.empty((Bsz, L, R, H, N), dtype=B.dtype, device=B.device)
    Ch = torch.empty((Bsz, L, R, H, N), dtype=C.dtype, device=C.device)
    if Bh.numel() == 0:
        return Bh, Ch
    grid, nT, meta = _meta(B, phi, H, "bc")
    _bc_fwd[grid](B, C, phi, B if B_bias is None else B_bias, C if C_bias is None else C_bias, Bh, Ch,
                  L, H, G, N, S, nT, HAS_BB=B_bias is not None, HAS_CB=C_bias is not None,
                  HALVES=pairing == "halves", **meta)
    return Bh, Ch


def bc_heads_rope_vjp(dBh, dCh, B, C, phi, B_bias, C_bias, pairing: str = "interleaved"):
    """The VJP of bc_heads_rope: dBh, dCh (Bsz, L, R, H, N) -> (dB, dC (Bsz, L, R, G, N) in B's
    and C's dtypes, dB_bias, dC_bias (R, H, N) in the biases' dtypes or None, dphi (Bsz, L, H, S)
    in phi's dtype; the B and C shares summed, and over the ranks)."""
    Bsz, L, R, G, N = B.shape
    H, S = phi.shape[2], phi.shape[-1]
    dBh, dCh, B, C, phi, B_bias, C_bias = (_c(t) for t in (dBh, dCh, B, C, phi, B_bias, C_bias))
    dev, f32 = B.device, torch.float32
    grid, nT, meta = _meta(B, phi, H, "bc_vjp")
    nO = grid[1]
    if nO == G:  # one program block per group: the sums are complete, written in the dtypes
        dB, dC = torch.empty_like(B), torch.empty_like(C)
    else:  # float32 partials over head blocks, summed below
        dB = torch.empty((Bsz, L, R, nO, N), dtype=f32, device=dev)
        dC = torch.empty((Bsz, L, R, nO, N), dtype=f32, device=dev)
    nb = Bsz * nT
    dbb = torch.empty((nb, R, H, N), dtype=f32, device=dev) if B_bias is not None else None
    dcb = torch.empty((nb, R, H, N), dtype=f32, device=dev) if C_bias is not None else None
    # one rank: written in phi's dtype; several: float32 shares, summed below
    dphi = torch.empty((Bsz, L, H, R, S), dtype=phi.dtype if R == 1 else f32, device=dev)
    if B.numel() > 0 and H > 0:
        _bc_vjp[grid](dBh, dCh, B, C, phi, B if B_bias is None else B_bias, C if C_bias is None else C_bias,
                      dB, dC, dB if dbb is None else dbb, dB if dcb is None else dcb, dphi,
                      L, H, G, N, S, nT, nO, HAS_BB=B_bias is not None, HAS_CB=C_bias is not None,
                      HALVES=pairing == "halves", **meta)
    if nO != G:
        dB = dB.view(Bsz, L, R, G, nO // G, N).sum(4).to(B.dtype)
        dC = dC.view(Bsz, L, R, G, nO // G, N).sum(4).to(C.dtype)
    dphi = dphi[:, :, :, 0] if R == 1 else dphi.sum(3)
    dB_bias = None if dbb is None else dbb.sum(0).to(B_bias.dtype)
    dC_bias = None if dcb is None else dcb.sum(0).to(C_bias.dtype)
    return dB, dC, dB_bias, dC_bias, dphi.to(phi.dtype)
