"""torch_triton's mamba3_rope_scan: the Mamba-3 scan with its B/C prologue in the scan kernel.

Ops (contract: mamba_core/ops/mamba3_fused.py):
    mamba3_rope_scan(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size,
                     initial_state, initial_k, initial_v, pairing) -> (y, S_L, k_L, v_L)
    mamba3_rope_scan_vjp(cotangent, <the same>) -> dict

Forward: ``_rope_scan_fwd``, mamba3.py's ``_m3_fwd`` chunk math with the B and C tiles built in
the kernel. Each chunk loads the B and C rows of the head's group (B, L, R, G, N: shared by
H / G heads, so mostly L2 hits), adds the head's bias (loaded once per program when R = 1) and
rotates the pairs by phi in registers. The N columns are kept as three tiles: the pairs' first
components, their second components (so a rotation is elementwise between two tiles of the same
shape, with one cos/sin tile of width S), and the pass-through components; every N-wide product
of the scan is the sum of three, and the state is carried as three tiles. Against the separate
ops this skips writing and reading the per-head copies: at the Mamba-3 SISO benchmark shape
(B=8, L=2048, H=32, N=128, S=32, bf16, G=1) the bias adds and the two rotations write
2 x 134 MB and the scan reads them back, against 2 x 4 MB of B, C and 67 MB of (float32) phi
read here.
k_L (the last token's rotated B) comes from apply_rope on that token alone.

Switches (read at every call): MAMBA_TRITON_FUSED_ROPE_SCAN=1 runs the fused kernel; the
default (0) writes the per-head B and C with mamba3_bc's one kernel for both (groups to heads,
bias, rotation), then runs mamba3_scan. MAMBA_TRITON_BC_KERNEL=0 replaces mamba3_bc's kernels
(forward and VJP) by the separate ops they fuse (bias adds in torch, apply_rope, apply_rope_vjp,
the sums in torch). On an H100 (bf16, the benchmark shape) the fused kernel took 1.069 ms
against 1.002 for the composition of run 22 (bias in torch, apply_rope twice, mamba3_scan), and
1.061 against 0.603 for the default of run 25 (mamba3_bc's kernel, then mamba3_scan), so it
stays off. Compiled for sm_90 (Triton 3.9, bf16, N = 128, S = 32, Qk = 64, 8 warps) its
chunk loop is 3.2k SASS instructions with 141 spill loads, against 2.7k and 94 for
mamba3_scan's: the prologue's registers cost the scan more than the bytes it saves.

VJP: the per-head B and C recomputed by mamba3_bc's forward kernel, mamba3_scan_vjp, then
mamba3_bc's VJP kernel (rotations back, the heads' sums into their group, the bias partials,
the angle gradients of B and C added). Pairings other than "interleaved" / "halves" and what
mamba3_scan does not take go through the core's composition.

Saving form (mamba_core/ops/saving.py; the Mamba-3 mixer's forward_train runs it): on the default
path the forward keeps the per-head B and C it made and mamba3_scan's saving-form residuals (the
chunk states, kernels/mamba3.py CONFIG "save"), so the VJP runs neither the B/C kernel nor the
state recompute before the scan's backward. Elsewhere (the fused kernel, the separate ops, the
fallbacks) it is the plain op with no residuals.

Fallback: what mamba3_scan falls back on (float64, non-CUDA devices, P, N > 256, R > 16), and
phi in float64, run the core's default composition.
"""

from __future__ import annotations

import os

import array_api_compat.torch as xpt
import torch
import triton
import triton.language as tl

from mamba_core.ops import mamba3_fused as core
from mamba_core.ops.saving import SavingForm

from mamba_backend_torch_triton.kernels._scan_common import (
    c as _c, dot_dtype, dot_precision, fallback, interpreting, launch_fitting, num_warps, pow2,
)
from mamba_backend_torch_triton.kernels.mamba3 import (
    _chunk_start, _fits, _key, _layout, _s_start, _supported, mamba3_scan, mamba3_scan_saving,
    mamba3_scan_vjp, mamba3_scan_vjp_saved,
)
from mamba_backend_torch_triton.kernels.mamba3_bc import (
    _cos_sin, _pair_cols, _pass_cols, _rot, bc_heads_rope, bc_heads_rope_vjp,
)
from mamba_backend_torch_triton.kernels.rope import apply_rope, apply_rope_vjp

FALLBACKS = "mamba3_rope_scan/mamba3_rope_scan_vjp: as mamba3_scan (float64, non-CUDA devices, " \
            "P > 256, N > 256 or R > 16) -> the core's default composition"


_PAIRINGS = ("interleaved", "halves")


def _switch(name: str, default: str) -> bool:
    v = os.environ.get(name, default)
    if v not in ("0", "1"):
        raise ValueError(f"{name}={v!r}: expected 0 or 1")
    return v == "1"


def fused_enabled() -> bool:
    """MAMBA_TRITON_FUSED_ROPE_SCAN=1: the fused kernel (default 0: the composition)."""
    return _switch("MAMBA_TRITON_FUSED_ROPE_SCAN", "0")


def bc_enabled() -> bool:
    """MAMBA_TRITON_BC_KERNEL=0: the composition's B/C prologue and its VJP as separate ops (bias
    adds in torch, apply_rope and apply_rope_vjp twice, head and bias sums in torch) instead of
    mamba3_bc's two kernels (default 1)."""
    return _switch("MAMBA_TRITON_BC_KERNEL", "1")


@triton.jit
def _bias_rows(ptr, rk, h, H, N, c1, c2, c3, im, qm, HAS: tl.constexpr, ROT: tl.constexpr,
               PASS: tl.constexpr):
    # the head's bias (R, H, N) at rank rk (a row vector per rank) in the three column groups;
    # 0.0 where absent
    b1 = 0.0
    b2 = 0.0
    b3 = 0.0
    if HAS:
        o = ((rk * H + h) * N)[:, None]
        if ROT:
            b1 = tl.load(ptr + o + c1[None, :], mask=im[None, :], other=0.0).to(tl.float32)
            b2 = tl.load(ptr + o + c2[None, :], mask=im[None, :], other=0.0).to(tl.float32)
        if PASS:
            b3 = tl.load(ptr + o + c3[None, :], mask=qm[None, :], other=0.0).to(tl.float32)
    return b1, b2, b3


@triton.jit
def _group_tiles(ptr, base, rv, c1, c2, c3, im, qm, b1, b2, b3, cs, sn, DT: tl.constexpr,
                 ROT: tl.constexpr, PASS: tl.constexpr):
    # rows (t, r) of the group's B or C + the head's bias: the pairs' first and second components
    # rotated by the rows' angles (cos cs, sin sn), and the pass-through components, cast to DT
    x1 = 0.0
    x2 = 0.0
    x3 = 0.0
    if ROT:
        m = rv[:, None] & im[None, :]
        a = tl.load(ptr + base + c1[None, :], mask=m, other=0.0).to(tl.float32) + b1
        z = tl.load(ptr + base + c2[None, :], mask=m, other=0.0).to(tl.float32) + b2
        y1, y2 = _rot(a, z, cs, sn)
        x1 = y1.to(DT)
        x2 = y2.to(DT)
    if PASS:
        m3 = rv[:, None] & qm[None, :]
        x3 = (tl.load(ptr + base + c3[None, :], mask=m3, other=0.0).to(tl.float32) + b3).to(DT)
    return x1, x2, x3


@triton.jit
def _rope_scan_fwd(x_ptr, dt_ptr, A_ptr, tr_ptr, B_ptr, C_ptr, D_ptr, mx_ptr, s0_ptr, phi_ptr,
                   bb_ptr, cb_ptr, y_ptr, sfin_ptr,
                   L, H, P, N, G, S, nc,
                   R: tl.constexpr, QK: tl.constexpr, BQR: tl.constexpr, BP: tl.constexpr,
                   BS: tl.constexpr, BQ: tl.constexpr, ROT: tl.constexpr, PASS: tl.constexpr,
                   HALVES: tl.constexpr, HAS_BB: tl.constexpr, HAS_CB: tl.constexpr,
                   HAS_D: tl.constexpr, HAS_MX: tl.constexpr, DT: tl.constexpr,
                   PREC: tl.constexpr, FAST: tl.constexpr):
    # One program per (batch, head, P block), chunks in order (mamba3.py's _m3_fwd with its B/C
    # tiles built here). The N columns are split in three groups, each its own tile: the pairs'
    # first components (BS wide), their second components (BS), the pass-through ones (BQ);
    # every N-wide product of _m3_fwd is the sum of three, and the state is three tiles.
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    grp = h // (H // G)
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    pm = offs_p < P
    i = tl.arange(0, BS)
    im = i < S
    c1, c2 = _pair_cols(i, N, HALVES)
    j = tl.arange(0, BQ)
    qm = j < N - 2 * S
    c3 = _pass_cols(j, N, S, HALVES)
    st = ((b * H + h) * P + offs_p[:, None]) * N
    S1 = tl.load(s0_ptr + st + c1[None, :], mask=pm[:, None] & im[None, :], other=0.0)
    S2 = tl.load(s0_ptr + st + c2[None, :], mask=pm[:, None] & im[None, :], other=0.0)
    S3 = tl.load(s0_ptr + st + c3[None, :], mask=pm[:, None] & qm[None, :], other=0.0)
    if HAS_D:
        Dh = tl.load(D_ptr + h).to(tl.float32)
    if R == 1:  # one bias row per head: loaded once
        r0 = tl.zeros((1,), tl.int64)
        hb1, hb2, hb3 = _bias_rows(bb_ptr, r0, h, H, N, c1, c2, c3, im, qm, HAS_BB, ROT, PASS)
        hc1, hc2, hc3 = _bias_rows(cb_ptr, r0, h, H, N, c1, c2, c3, im, qm, HAS_CB, ROT, PASS)
    for c in range(0, nc):
        rows, tk, rk, t, rv, tok, a_row, gamma, scale, cum, cum_last, vm, v = _chunk_start(
            x_ptr, dt_ptr, A_ptr, tr_ptr, mx_ptr, b, h, c, L, H, P, offs_p, pm, R, QK, BQR, HAS_MX)
        cs = 0.0
        sn = 0.0
        if ROT:  # phi (B, L, H, S) -> cos and sin of the rows' angles
            cs, sn = _cos_sin(phi_ptr, tok, i, rv, im, S, FAST)
        if R == 1:
            bb1, bb2, bb3 = hb1, hb2, hb3
            cb1, cb2, cb3 = hc1, hc2, hc3
        else:
            bb1, bb2, bb3 = _bias_rows(bb_ptr, rk, h, H, N, c1, c2, c3, im, qm, HAS_BB, ROT, PASS)
            cb1, cb2, cb3 = _bias_rows(cb_ptr, rk, h, H, N, c1, c2, c3, im, qm, HAS_CB, ROT, PASS)
        base = ((((b * L + t) * R + rk) * G + grp) * N)[:, None]
        B1, B2, B3 = _group_tiles(B_ptr, base, rv, c1, c2, c3, im, qm, bb1, bb2, bb3, cs, sn, DT,
                                  ROT, PASS)
        C1, C2, C3 = _group_tiles(C_ptr, base, rv, c1, c2, c3, im, qm, cb1, cb2, cb3, cs, sn, DT,
                                  ROT, PASS)
        ti = tk[:, None]
        tj = tk[None, :]
        low = ti >= tj
        ex = tl.where(low, tl.exp(tl.where(low, cum[:, None] - cum[None, :], 0.0)), 0.0)
        w = ex * tl.where(ti == tj, gamma[None, :], scale[None, :])
        CB = tl.zeros((BQR, BQR), tl.float32)
        CS = tl.zeros((BQR, BP), tl.float32)
        if ROT:
            CB = tl.dot(C1, tl.trans(B1), CB, input_precision=PREC)
            CB = tl.dot(C2, tl.trans(B2), CB, input_precision=PREC)
            CS = tl.dot(C1, tl.trans(S1.to(DT)), CS, input_precision=PREC)
            CS = tl.dot(C2, tl.trans(S2.to(DT)), CS, input_precision=PREC)
        if PASS:
            CB = tl.dot(C3, tl.trans(B3), CB, input_precision=PREC)
            CS = tl.dot(C3, tl.trans(S3.to(DT)), CS, input_precision=PREC)
        y = tl.dot((CB * w).to(DT), v.to(DT), input_precision=PREC) + tl.exp(cum)[:, None] * CS
        if HAS_D:
            y += Dh * v
        yo = (((b * L + t) * R + rk) * H + h)[:, None] * P + offs_p[None, :]
        tl.store(y_ptr + yo, y.to(y_ptr.dtype.element_ty), mask=vm)
        u = tl.trans((v * (tl.exp(cum_last - cum) * scale)[:, None]).to(DT))
        decay = tl.exp(cum_last)
        if ROT:
            S1 = decay * S1 + tl.dot(u, B1, input_precision=PREC)
            S2 = decay * S2 + tl.dot(u, B2, input_precision=PREC)
        if PASS:
            S3 = decay * S3 + tl.dot(u, B3, input_precision=PREC)
    tl.store(sfin_ptr + st + c1[None, :], S1, mask=pm[:, None] & im[None, :])
    tl.store(sfin_ptr + st + c2[None, :], S2, mask=pm[:, None] & im[None, :])
    tl.store(sfin_ptr + st + c3[None, :], S3, mask=pm[:, None] & qm[None, :])


def _run_fused(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, pairing, chunk_size, S0,
               stages):
    """Launch _rope_scan_fwd; returns (y (B, L, R, H, P), final state (B, H, P, N) float32)."""
    Bsz, L, H, P = x.shape
    R, G, N = B.shape[2], B.shape[3], B.shape[4]
    S = phi.shape[-1]
    qk, bqr = _layout(chunk_size, R)
    x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x = (
        _c(t) for t in (x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x))
    BP = min(pow2(P), 64)
    y = torch.empty((Bsz, L, R, H, P), dtype=x.dtype, device=x.device)
    sfin = torch.empty((Bsz, H, P, N), dtype=torch.float32, device=x.device)
    dummy = x
    _rope_scan_fwd[(Bsz * H, triton.cdiv(P, BP))](
        x, dt, A, trap, B, C, dummy if D is None else D, dummy if mimo_x is None else mimo_x, S0, phi,
        dummy if B_bias is None else B_bias, dummy if C_bias is None else C_bias, y, sfin,
        L, H, P, N, G, S, triton.cdiv(L, qk),
        R=R, QK=qk, BQR=bqr, BP=BP, BS=pow2(S), BQ=pow2(N - 2 * S), ROT=S > 0, PASS=N > 2 * S,
        HALVES=pairing == "halves", HAS_BB=B_bias is not None, HAS_CB=C_bias is not None,
        HAS_D=D is not None, HAS_MX=mimo_x is not None, DT=dot_dtype(x.dtype),
        PREC=dot_precision(x.dtype), FAST=not interpreting(), num_warps=num_warps(bqr, pow2(N)),
        num_stages=stages,
    )
    return y, sfin


def mamba3_rope_scan(x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None, mimo_x=None,
                     chunk_size=64, initial_state=None, initial_k=None, initial_v=None,
                     pairing="interleaved"):
    """The Mamba-3 scan with groups -> heads, bias and rotation in its kernel (Triton)."""
    args = (x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state,
            initial_k, initial_v, pairing)
    if not _supported(x, B, dt, A, trap, C, phi, B_bias, C_bias, D, mimo_x, initial_state,
                      initial_k, initial_v):
        return fallback("mamba3_rope_scan")(*args)
    if pairing not in _PAIRINGS or not (fused_enabled() or bc_enabled()):
        return core.compose(xpt, apply_rope, mamba3_scan, *args)
    if not fused_enabled():
        Bh, Ch = bc_heads_rope(B, C, phi, B_bias, C_bias, x.shape[2], pairing)
        return mamba3_scan(x, dt, A, trap, Bh, Ch, D, mimo_x, chunk_size, initial_state, initial_k,
                           initial_v)
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    S0, _ = _s_start(x, dt, trap, initial_state, initial_k, initial_v, mimo_x, Bsz, H, P, N)
    res, _ = launch_fitting(
        _key("rope_fwd", x, B, chunk_size, D is not None, mimo_x is not None, pairing,
             B_bias is not None, C_bias is not None, B.shape[3], phi.shape[-1]),
        _fits(chunk_size, R),
        lambda cfg: _run_fused(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, pairing, cfg[0],
                               S0, cfg[1]))
    if res is None:
        return fallback("mamba3_rope_scan")(*args)
    k_last = apply_rope(core.heads(xpt, B[:, -1], H, B_bias), phi[:, -1, None], pairing)
    return res[0], res[1], k_last, x[:, -1]


def mamba3_rope_scan_vjp(cotangent, x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None,
                         mimo_x=None, chunk_size=64, initial_state=None, initial_k=None,
                         initial_v=None, pairing="interleaved"):
    """mamba3_rope_scan's VJP: the per-head B and C recomputed (bc_heads_rope), mamba3_scan_vjp,
    then bc_heads_rope_vjp (the rotations, head sums and bias sums in one kernel)."""
    if pairing not in _PAIRINGS or not bc_enabled() or not _supported(
            x, B, dt, A, trap, C, phi, B_bias, C_bias, D, mimo_x, initial_state, initial_k, initial_v):
        return core.compose_vjp(xpt, apply_rope, apply_rope_vjp, mamba3_scan_vjp, cotangent, x, dt, A,
                                trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state,
                                initial_k, initial_v, pairing)
    Bh, Ch = bc_heads_rope(B, C, phi, B_bias, C_bias, x.shape[2], pairing)
    return _vjp_from_heads(Bh, Ch, cotangent, x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x,
                           chunk_size, initial_state, initial_k, initial_v, pairing)


def _vjp_from_heads(Bh, Ch, cotangent, x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x,
                    chunk_size, initial_state, initial_k, initial_v, pairing, scan_res=None):
    """The VJP's scan backward (from a saving forward's states when given) and B/C VJP, on the
    per-head Bh, Ch."""
    gs = mamba3_scan_vjp_saved(scan_res, cotangent, x, dt, A, trap, Bh, Ch, D=D, mimo_x=mimo_x,
                               chunk_size=chunk_size, initial_state=initial_state, initial_k=initial_k,
                               initial_v=initial_v)
    dB, dC, dBb, dCb, dphi = bc_heads_rope_vjp(gs.pop("B"), gs.pop("C"), B, C, phi, B_bias, C_bias,
                                               pairing)
    out = dict(gs)
    out["B"], out["C"], out["phi"] = dB, dC, dphi
    if B_bias is not None:
        out["B_bias"] = dBb
    if C_bias is not None:
        out["C_bias"] = dCb
    return out


def _bc_path(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, initial_state, initial_k,
             initial_v, pairing) -> bool:
    """Whether the op and its VJP run the default path: mamba3_bc's kernels around mamba3_scan."""
    return (pairing in _PAIRINGS and bc_enabled() and not fused_enabled() and _supported(
        x, B, dt, A, trap, C, phi, B_bias, C_bias, D, mimo_x, initial_state, initial_k, initial_v))


def mamba3_rope_scan_saving(x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None,
                            mimo_x=None, chunk_size=64, initial_state=None, initial_k=None,
                            initial_v=None, pairing="interleaved"):
    """mamba3_rope_scan's saving form: on the default path, the per-head B and C (bc_heads_rope's,
    2 x B L R H N in B's dtype: 268 MB at the SISO benchmark shape in bf16) and mamba3_scan's
    saving form's residuals (kernels/mamba3.py CONFIG "save"); elsewhere the plain op and None."""
    args = (x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state,
            initial_k, initial_v, pairing)
    if not _bc_path(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, initial_state, initial_k,
                    initial_v, pairing):
        return mamba3_rope_scan(*args), None
    Bh, Ch = bc_heads_rope(B, C, phi, B_bias, C_bias, x.shape[2], pairing)
    out, scan_res = mamba3_scan_saving(x, dt, A, trap, Bh, Ch, D, mimo_x, chunk_size, initial_state,
                                       initial_k, initial_v)
    return out, (Bh, Ch, scan_res)


def mamba3_rope_scan_vjp_saved(residuals, cotangent, x, dt, A, trap, B, C, phi, B_bias=None,
                               C_bias=None, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                               initial_k=None, initial_v=None, pairing="interleaved"):
    """mamba3_rope_scan_vjp from ``mamba3_rope_scan_saving``'s residuals: no B/C kernel and no
    state recompute before the scan's backward."""
    Bh, Ch, scan_res = residuals
    return _vjp_from_heads(Bh, Ch, cotangent, x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x,
                           chunk_size, initial_state, initial_k, initial_v, pairing, scan_res)


KERNELS = {"mamba3_rope_scan": mamba3_rope_scan, "mamba3_rope_scan_vjp": mamba3_rope_scan_vjp}
SAVING = {"mamba3_rope_scan": SavingForm(mamba3_rope_scan_saving, mamba3_rope_scan_vjp_saved)}
