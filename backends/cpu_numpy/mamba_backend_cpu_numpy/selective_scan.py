"""numba kernels of the Mamba-1 selective scan: selective_scan, selective_scan_step, its VJP.

One (batch, channel) pair per prange iteration, the state h (N) local; the readout sum over n
runs in ascending n. Outputs depend only on their own row in a fixed order: batch-invariant and
deterministic. The VJP recomputes from states saved every ``CKPT`` tokens (the adjoint recurrence
of ``selective_scan_vjp_ref``, run backwards block by block); the saving form (``SAVING``;
mamba_core/ops/saving.py) has the forward keep those states, so its VJP skips that first pass. dt preprocessing and its backward,
and the group sums of dB, dC, are NumPy.
"""

from __future__ import annotations

import numpy as np

from mamba_core.ops import selective_scan as _ops
from mamba_core.ops.activations import SOFTPLUS_THRESHOLD
from mamba_core.ops.saving import SavingForm
from mamba_backend_cpu_numpy._nb import NJIT, NJIT_SERIAL, c, checkpoints, njit, prange

CKPT = 64


@njit(**NJIT)
def _fwd(u, dt, A, Bm, Cm, D, z, has_z, h0, y, hL, ck, save):
    Bsz, L, E = u.shape
    G, N = Bm.shape[2], Bm.shape[3]
    Eg = E // G
    for be in prange(Bsz * E):
        b = be // E
        e = be - b * E
        g = e // Eg
        h = h0[b, e].copy()
        for t in range(L):
            if save and t % CKPT == 0:  # the saving form: the state entering every block
                ck[b, e, t // CKPT] = h
            d = dt[b, t, e]
            du = d * u[b, t, e]
            acc = 0.0
            for n in range(N):
                s = np.exp(d * A[e, n]) * h[n] + du * Bm[b, t, g, n]
                h[n] = s
                acc += s * Cm[b, t, g, n]
            v = acc + D[e] * u[b, t, e]
            if has_z:
                zz = z[b, t, e]
                v = v * (zz / (1.0 + np.exp(-zz)))
            y[b, t, e] = v
        hL[b, e] = h


@njit(**NJIT_SERIAL)  # decode: too little work to pay for waking threads
def _step(u, dt, A, Bm, Cm, D, z, has_z, h0, y, hL):
    Bsz, E = u.shape
    G, N = Bm.shape[1], Bm.shape[2]
    Eg = E // G
    for be in prange(Bsz * E):
        b = be // E
        e = be - b * E
        g = e // Eg
        d = dt[b, e]
        du = d * u[b, e]
        acc = 0.0
        for n in range(N):
            s = np.exp(d * A[e, n]) * h0[b, e, n] + du * Bm[b, g, n]
            hL[b, e, n] = s
            acc += s * Cm[b, g, n]
        v = acc + D[e] * u[b, e]
        if has_z:
            zz = z[b, e]
            v = v * (zz / (1.0 + np.exp(-zz)))
        y[b, e] = v


@njit(**NJIT)
def _bwd(dy, dhL, u, dt, A, Bm, Cm, D, z, has_z, h0, du_out, ddt, dA_part, dBh, dCh, dD_part, dz, dh0,
         ck, have_ck):
    Bsz, L, E = u.shape
    G, N = Bm.shape[2], Bm.shape[3]
    Eg = E // G
    nblk = (L + CKPT - 1) // CKPT
    for be in prange(Bsz * E):
        b = be // E
        e = be - b * E
        g = e // Eg
        if have_ck:  # the saving form's forward kept the states entering every block
            saved = ck[b, e]
        else:
            saved = np.empty((nblk, N), dtype=dh0.dtype)
            h = h0[b, e].copy()
            for t in range(L):
                if t % CKPT == 0:
                    saved[t // CKPT] = h
                d = dt[b, t, e]
                for n in range(N):
                    h[n] = np.exp(d * A[e, n]) * h[n] + d * u[b, t, e] * Bm[b, t, g, n]
        buf = np.empty((CKPT + 1, N), dtype=dh0.dtype)
        gs = dhL[b, e].copy()
        dA_acc = np.zeros(N, dtype=dh0.dtype)
        dD_acc = 0.0
        for blk in range(nblk - 1, -1, -1):
            t0 = blk * CKPT
            t1 = min(t0 + CKPT, L)
            buf[0] = saved[blk]
            for t in range(t0, t1):
                i = t - t0
                d = dt[b, t, e]
                for n in range(N):
                    buf[i + 1, n] = np.exp(d * A[e, n]) * buf[i, n] + d * u[b, t, e] * Bm[b, t, g, n]
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                d = dt[b, t, e]
                ut = u[b, t, e]
                gy = dy[b, t, e]
                if has_z:
                    acc = 0.0
                    for n in range(N):
                        acc += buf[i + 1, n] * Cm[b, t, g, n]
                    p = acc + D[e] * ut
                    zz = z[b, t, e]
                    sz = 1.0 / (1.0 + np.exp(-zz))
                    dz[b, t, e] = gy * p * sz * (1.0 + zz * (1.0 - sz))
                    gy = gy * zz * sz
                dD_acc += gy * ut
                dut = D[e] * gy
                ddt_acc = 0.0
                for n in range(N):
                    gn = gs[n] + Cm[b, t, g, n] * gy
                    dCh[b, t, e, n] = gy * buf[i + 1, n]
                    a = np.exp(d * A[e, n])
                    gah = gn * a * buf[i, n]
                    ddt_acc += gah * A[e, n] + gn * Bm[b, t, g, n] * ut
                    dA_acc[n] += gah * d
                    dBh[b, t, e, n] = gn * d * ut
                    dut += gn * d * Bm[b, t, g, n]
                    gs[n] = gn * a
                ddt[b, t, e] = ddt_acc
                du_out[b, t, e] = dut
        dA_part[b, e] = dA_acc
        dD_part[b, e] = dD_acc
        dh0[b, e] = gs


def _prep(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    wide = np.float64 if u.dtype == np.float64 else np.float32
    E = u.shape[-1]
    dt = c(_ops._dt(np, delta, delta_bias, delta_softplus, wide), wide)
    Dw = np.zeros(E, wide) if D is None else c(D, wide)
    zw = c(z, wide) if z is not None else np.zeros((1,) * u.ndim, wide)
    return wide, dt, c(A, wide), c(B, wide), c(C, wide), Dw, zw


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None):
    """numba selective scan (see mamba_core.ops.selective_scan)."""
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, False)[0]


def selective_scan_saving(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None):
    """selective_scan's saving form: the same outputs, and the states entering every CKPT tokens
    (B E ceil(L / CKPT) N in the compute dtype: 1 / CKPT of a per-token state) that the VJP's
    first pass would recompute."""
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, True)


def selective_scan_vjp_saved(residuals, cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, initial_state=None):
    """selective_scan_vjp from the saving form's checkpoints: its second pass only."""
    return _vjp(cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, residuals)


def _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save):
    Bsz, L, E = u.shape
    N = A.shape[1]
    wide, dt, Aw, Bw, Cw, Dw, zw = _prep(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    h0 = np.zeros((Bsz, E, N), wide) if initial_state is None else c(initial_state, wide)
    y = np.empty((Bsz, L, E), wide)
    hL = np.empty((Bsz, E, N), wide)
    ck = checkpoints((Bsz, E), L, CKPT, (N,), wide, save)
    _fwd(c(u, wide), dt, Aw, Bw, Cw, Dw, zw, z is not None, h0, y, hL, ck, save)
    return (y.astype(u.dtype, copy=False), hL), (ck if save else None)


def selective_scan_step(u, delta, A, B, C, state, D=None, z=None, delta_bias=None,
                        delta_softplus=False):
    """numba selective-scan step: decay, update, readout, skip and gate fused in one pass."""
    Bsz, E = u.shape
    N = A.shape[1]
    wide, dt, Aw, Bw, Cw, Dw, zw = _prep(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    y = np.empty((Bsz, E), wide)
    hL = np.empty((Bsz, E, N), wide)
    _step(c(u, wide), dt, Aw, Bw, Cw, Dw, zw, z is not None, c(state, wide), y, hL)
    return y.astype(u.dtype, copy=False), hL


def selective_scan_vjp(cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None):
    """numba selective-scan backward (recompute from block checkpoints)."""
    return _vjp(cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, None)


def _vjp(cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, ck):
    dy, dhL = _ops._split_cotangent(cotangent)
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    wide, dt, Aw, Bw, Cw, Dw, zw = _prep(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    h0 = np.zeros((Bsz, E, N), wide) if initial_state is None else c(initial_state, wide)
    dyw = np.zeros((Bsz, L, E), wide) if dy is None else c(dy, wide)
    dhLw = np.zeros((Bsz, E, N), wide) if dhL is None else c(dhL, wide)
    du = np.empty((Bsz, L, E), wide)
    ddt = np.empty((Bsz, L, E), wide)
    dA_part = np.empty((Bsz, E, N), wide)
    dBh = np.empty((Bsz, L, E, N), wide)
    dCh = np.empty((Bsz, L, E, N), wide)
    dD_part = np.empty((Bsz, E), wide)
    dz = np.empty((Bsz, L, E), wide) if z is not None else np.zeros((1, 1, 1), wide)
    dh0 = np.empty((Bsz, E, N), wide)
    _bwd(dyw, dhLw, c(u, wide), dt, Aw, Bw, Cw, Dw, zw, z is not None, h0, du, ddt, dA_part, dBh,
         dCh, dD_part, dz, dh0, checkpoints((Bsz, E), L, CKPT, (N,), wide, False) if ck is None else ck,
         ck is not None)
    if delta_softplus:
        raw = np.asarray(delta, wide) + (0 if delta_bias is None else np.asarray(delta_bias, wide))
        ddt = ddt * np.where(raw > SOFTPLUS_THRESHOLD, 1.0, 1.0 / (1.0 + np.exp(-raw))).astype(wide)
    grads = {}
    if z is not None:
        grads["z"] = dz.astype(z.dtype, copy=False)
    if D is not None:
        grads["D"] = dD_part.sum(0).astype(D.dtype, copy=False)
    grads.update(
        u=du.astype(u.dtype, copy=False), delta=ddt.astype(delta.dtype, copy=False),
        A=dA_part.sum(0).astype(A.dtype, copy=False),
        B=dBh.reshape(Bsz, L, G, E // G, N).sum(3).astype(B.dtype, copy=False),
        C=dCh.reshape(Bsz, L, G, E // G, N).sum(3).astype(C.dtype, copy=False),
    )
    if delta_bias is not None:
        grads["delta_bias"] = ddt.sum(axis=(0, 1)).astype(delta_bias.dtype, copy=False)
    if initial_state is not None:
        grads["initial_state"] = dh0.astype(initial_state.dtype, copy=False)
    return grads


SAVING = {"selective_scan": SavingForm(selective_scan_saving, selective_scan_vjp_saved)}
