"""numba kernels of the Mamba-2 SSD scan: ssd_scan, ssd_step, ssd_scan_vjp.

The recurrence is run as written (S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t),
one (batch, head) pair per prange iteration, the state S (N x P, P contiguous) in a local array.
The inner loops run over P (independent lanes: vectorised without reassociation); the sum over N
runs in ascending n. Every output depends only on its own (batch, head) row, in a fixed order:
batch-invariant and deterministic. Only decays exp(dt A) <= 1 are formed: exact under strong
decay over long sequences.

The VJP recomputes: pass 1 saves the state entering every block of ``CKPT`` tokens; pass 2
walks the blocks backwards, recomputes the block's states from the saved one (rounded as the
forward forms them) and runs the adjoint recurrence of ``ssd_scan_vjp_ref``. The saving form
(``SAVING``; mamba_core/ops/saving.py) has the forward keep those states: its VJP runs pass 2 only. Extra memory: B*H*ceil(L/CKPT)*P*N saved states plus
one (CKPT+1, N, P) buffer per thread.

dt preprocessing (bias, softplus, clamp) and its backward are elementwise NumPy (mamba_core's
own functions with xp = numpy), as is the group sum of dB, dC over the heads of a group.
"""

from __future__ import annotations

import numpy as np

from mamba_core.ops import ssd as _ops
from mamba_core.ops.saving import SavingForm
from mamba_backend_cpu_numpy._nb import NJIT, NJIT_SERIAL, c, checkpoints, njit, prange

CKPT = 64


@njit(**NJIT)
def _fwd(x, dt, A, Bm, Cm, D, z, has_z, S0, seq, has_seq, y, S_out, ck, save):
    Bsz, L, H, P = x.shape
    G, N = Bm.shape[2], Bm.shape[3]
    Hg = H // G
    for bh in prange(Bsz * H):
        b = bh // H
        h = bh - b * H
        g = h // Hg
        S = np.empty((N, P), dtype=S_out.dtype)
        for n in range(N):
            for p in range(P):
                S[n, p] = S0[b, h, p, n]
        acc = np.empty(P, dtype=S_out.dtype)
        dx = np.empty(P, dtype=S_out.dtype)
        for t in range(L):
            if save and t % CKPT == 0:  # the saving form: the state entering every block
                ck[b, h, t // CKPT] = S
            if has_seq and t > 0 and seq[b, t] != seq[b, t - 1]:
                S[:, :] = 0.0
            d = dt[b, t, h]
            da = np.exp(d * A[h])
            for p in range(P):
                dx[p] = d * x[b, t, h, p]
                acc[p] = 0.0
            for n in range(N):
                bn = Bm[b, t, g, n]
                cn = Cm[b, t, g, n]
                for p in range(P):
                    s = da * S[n, p] + dx[p] * bn
                    S[n, p] = s
                    acc[p] += s * cn
            for p in range(P):
                v = acc[p] + D[h, p] * x[b, t, h, p]
                if has_z:
                    zz = z[b, t, h, p]
                    v = v * (zz / (1.0 + np.exp(-zz)))
                y[b, t, h, p] = v
        for n in range(N):
            for p in range(P):
                S_out[b, h, p, n] = S[n, p]


@njit(**NJIT_SERIAL)  # decode: too little work to pay for waking threads
def _step(x, dt, A, Bm, Cm, D, z, has_z, S0, y, S_out):
    Bsz, H, P = x.shape
    G, N = Bm.shape[1], Bm.shape[2]
    Hg = H // G
    for bh in prange(Bsz * H):
        b = bh // H
        h = bh - b * H
        g = h // Hg
        d = dt[b, h]
        da = np.exp(d * A[h])
        for p in range(P):
            dxp = d * x[b, h, p]
            acc = 0.0
            for n in range(N):
                s = da * S0[b, h, p, n] + dxp * Bm[b, g, n]
                S_out[b, h, p, n] = s
                acc += s * Cm[b, g, n]
            v = acc + D[h, p] * x[b, h, p]
            if has_z:
                zz = z[b, h, p]
                v = v * (zz / (1.0 + np.exp(-zz)))
            y[b, h, p] = v


@njit(**NJIT)
def _bwd(dy, dSL, x, dt, A, Bm, Cm, D, z, has_z, S0, seq, has_seq,
         dx, ddt, dA_part, dBh, dCh, dD_part, dz, dS0, ck, have_ck):
    Bsz, L, H, P = x.shape
    G, N = Bm.shape[2], Bm.shape[3]
    Hg = H // G
    nblk = (L + CKPT - 1) // CKPT
    for bh in prange(Bsz * H):
        b = bh // H
        h = bh - b * H
        g = h // Hg
        # pass 1: the state entering every block (the saving form's forward kept them: ck)
        if have_ck:
            saved = ck[b, h]
        else:
            saved = np.empty((nblk, N, P), dtype=dS0.dtype)
            S = np.empty((N, P), dtype=dS0.dtype)
            for n in range(N):
                for p in range(P):
                    S[n, p] = S0[b, h, p, n]
            for t in range(L):
                if t % CKPT == 0:
                    saved[t // CKPT] = S
                if has_seq and t > 0 and seq[b, t] != seq[b, t - 1]:
                    S[:, :] = 0.0
                d = dt[b, t, h]
                da = np.exp(d * A[h])
                for n in range(N):  # rounded as the forward: (dt x) B
                    bn = Bm[b, t, g, n]
                    for p in range(P):
                        S[n, p] = da * S[n, p] + (d * x[b, t, h, p]) * bn
        # pass 2: blocks in reverse
        buf = np.empty((CKPT + 1, N, P), dtype=dS0.dtype)  # buf[i] = state before token t0+i
        dS = np.empty((N, P), dtype=dS0.dtype)
        for n in range(N):
            for p in range(P):
                dS[n, p] = dSL[b, h, p, n]
        dy0 = np.empty(P, dtype=dS0.dtype)
        tmp = np.empty(N, dtype=dS0.dtype)
        dA_acc = 0.0
        dD_acc = np.zeros(P, dtype=dS0.dtype)
        for blk in range(nblk - 1, -1, -1):
            t0 = blk * CKPT
            t1 = min(t0 + CKPT, L)
            buf[0] = saved[blk]
            for t in range(t0, t1):
                i = t - t0
                # buf[i + 1] = S_t; a reset before t makes S_{t-1} read as 0 (buf[i] is kept:
                # it is S_{t-1} of the previous sequence, read by that token's own gradients)
                keep = 0.0 if (has_seq and t > 0 and seq[b, t] != seq[b, t - 1]) else 1.0
                d = dt[b, t, h]
                da = np.exp(d * A[h]) * keep
                for n in range(N):  # rounded as the forward: (dt x) B
                    bn = Bm[b, t, g, n]
                    for p in range(P):
                        buf[i + 1, n, p] = da * buf[i, n, p] + (d * x[b, t, h, p]) * bn
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                d = dt[b, t, h]
                da = np.exp(d * A[h])
                # output: skip and gate
                for p in range(P):
                    gy = dy[b, t, h, p]
                    if has_z:
                        acc = 0.0
                        for n in range(N):
                            acc += buf[i + 1, n, p] * Cm[b, t, g, n]
                        y1 = acc + D[h, p] * x[b, t, h, p]
                        zz = z[b, t, h, p]
                        sz = 1.0 / (1.0 + np.exp(-zz))
                        dz[b, t, h, p] = gy * y1 * sz * (1.0 + zz * (1.0 - sz))
                        gy = gy * zz * sz
                    dy0[p] = gy
                    dD_acc[p] += gy * x[b, t, h, p]
                    dx[b, t, h, p] = D[h, p] * gy
                # dS += dy0 C^T; dC = dy0^T S_t
                for n in range(N):
                    cn = Cm[b, t, g, n]
                    acc = 0.0
                    for p in range(P):
                        dS[n, p] += dy0[p] * cn
                        acc += dy0[p] * buf[i + 1, n, p]
                    dCh[b, t, h, n] = acc
                # dx, dB, ddt, da
                ddt_acc = 0.0
                dda = 0.0
                for n in range(N):
                    acc = 0.0
                    acc2 = 0.0
                    for p in range(P):
                        acc += dS[n, p] * x[b, t, h, p]
                        acc2 += dS[n, p] * buf[i, n, p]
                    tmp[n] = acc
                    dBh[b, t, h, n] = d * acc
                    ddt_acc += acc * Bm[b, t, g, n]
                    dda += acc2
                for p in range(P):
                    acc = 0.0
                    for n in range(N):
                        acc += dS[n, p] * Bm[b, t, g, n]
                    dx[b, t, h, p] += d * acc
                if has_seq and t > 0 and seq[b, t] != seq[b, t - 1]:
                    dda = 0.0  # S_{t-1} was reset to 0: no gradient through the decay
                dav = da * dda
                ddt[b, t, h] = ddt_acc + A[h] * dav
                dA_acc += d * dav
                for n in range(N):
                    for p in range(P):
                        dS[n, p] *= da
                if has_seq and t > 0 and seq[b, t] != seq[b, t - 1]:
                    dS[:, :] = 0.0
        dA_part[b, h] = dA_acc
        for p in range(P):
            dD_part[b, h, p] = dD_acc[p]
        for n in range(N):
            for p in range(P):
                dS0[b, h, p, n] = dS[n, p]


def _prep(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, state_shape):
    wide = np.float64 if x.dtype == np.float64 else np.float32
    H, P = x.shape[-2], x.shape[-1]
    dtw = c(_ops._dt(np, dt, dt_bias, dt_softplus, dt_limit, wide), wide)
    Dw = np.zeros((H, P), wide) if D is None else np.broadcast_to(
        np.asarray(D, wide).reshape(H, -1), (H, P))
    zw = c(z, wide) if z is not None else np.zeros((1,) * x.ndim, wide)
    return wide, dtw, c(A, wide), c(B, wide), c(C, wide), c(Dw, wide), zw


def ssd_scan(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=_ops.NO_LIMIT, initial_state=None, seq_idx=None):
    """numba SSD scan (see mamba_core.ops.ssd). chunk_size does not change the result."""
    return _scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state, seq_idx, False)[0]


def ssd_scan_saving(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                    dt_limit=_ops.NO_LIMIT, initial_state=None, seq_idx=None):
    """ssd_scan's saving form: the same outputs, and the states entering every CKPT tokens
    (B H ceil(L / CKPT) N P in the compute dtype: 1 / CKPT of a per-token state) that the VJP's
    first pass would recompute."""
    return _scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state, seq_idx, True)


def ssd_scan_vjp_saved(residuals, cotangent, x, dt, A, B, C, chunk_size=256, D=None, z=None,
                       dt_bias=None, dt_softplus=False, dt_limit=_ops.NO_LIMIT, initial_state=None,
                       seq_idx=None):
    """ssd_scan_vjp from the saving form's checkpoints: its second pass only."""
    return _vjp(cotangent, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state,
                seq_idx, residuals)


def _scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state, seq_idx, save):
    Bsz, L, H, P = x.shape
    N = B.shape[3]
    wide, dtw, Aw, Bw, Cw, Dw, zw = _prep(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, None)
    S0 = np.zeros((Bsz, H, P, N), wide) if initial_state is None else c(initial_state, wide)
    seq = np.zeros((1, 1), np.int64) if seq_idx is None else c(seq_idx, np.int64)
    y = np.empty((Bsz, L, H, P), wide)
    S = np.empty((Bsz, H, P, N), wide)
    ck = checkpoints((Bsz, H), L, CKPT, (N, P), wide, save)
    _fwd(c(x, wide), dtw, Aw, Bw, Cw, Dw, zw, z is not None, S0, seq, seq_idx is not None, y, S, ck, save)
    return (y.astype(x.dtype, copy=False), S), (ck if save else None)


def ssd_step(x, dt, A, B, C, state, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=_ops.NO_LIMIT):
    """numba SSD step: one token, fused (decay, update, readout, skip, gate in one pass)."""
    Bsz, H, P = x.shape
    N = B.shape[2]
    wide, dtw, Aw, Bw, Cw, Dw, zw = _prep(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, None)
    y = np.empty((Bsz, H, P), wide)
    S = np.empty((Bsz, H, P, N), wide)
    _step(c(x, wide), dtw, Aw, Bw, Cw, Dw, zw, z is not None, c(state, wide), y, S)
    return y.astype(x.dtype, copy=False), S


def ssd_scan_vjp(cotangent, x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None,
                 dt_softplus=False, dt_limit=_ops.NO_LIMIT, initial_state=None, seq_idx=None):
    """numba SSD backward (recompute with block checkpoints); keys as ssd_scan_vjp_ref."""
    return _vjp(cotangent, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state,
                seq_idx, None)


def _vjp(cotangent, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state, seq_idx, ck):
    dy, dSL = _ops._unpack_cotangent(cotangent)
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    wide, dtw, Aw, Bw, Cw, Dw, zw = _prep(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, None)
    S0 = np.zeros((Bsz, H, P, N), wide) if initial_state is None else c(initial_state, wide)
    seq = np.zeros((1, 1), np.int64) if seq_idx is None else c(seq_idx, np.int64)
    dyw = np.zeros((Bsz, L, H, P), wide) if dy is None else c(dy, wide)
    dSLw = np.zeros((Bsz, H, P, N), wide) if dSL is None else c(dSL, wide)
    dx = np.empty((Bsz, L, H, P), wide)
    ddt = np.empty((Bsz, L, H), wide)
    dA_part = np.empty((Bsz, H), wide)
    dBh = np.empty((Bsz, L, H, N), wide)
    dCh = np.empty((Bsz, L, H, N), wide)
    dD_part = np.empty((Bsz, H, P), wide)
    dz = np.empty((Bsz, L, H, P), wide) if z is not None else np.zeros((1, 1, 1, 1), wide)
    dS0 = np.empty((Bsz, H, P, N), wide)
    _bwd(dyw, dSLw, c(x, wide), dtw, Aw, Bw, Cw, Dw, zw, z is not None, S0, seq,
         seq_idx is not None, dx, ddt, dA_part, dBh, dCh, dD_part, dz, dS0,
         checkpoints((Bsz, H), L, CKPT, (N, P), wide, False) if ck is None else ck, ck is not None)
    ddt = _ops._dt_vjp(np, ddt, dt, dt_bias, dt_softplus, dt_limit, wide)
    out = {
        "x": dx.astype(x.dtype, copy=False),
        "dt": ddt.astype(dt.dtype, copy=False),
        "A": dA_part.sum(0).astype(A.dtype, copy=False),
        "B": dBh.reshape(Bsz, L, G, H // G, N).sum(3).astype(B.dtype, copy=False),
        "C": dCh.reshape(Bsz, L, G, H // G, N).sum(3).astype(C.dtype, copy=False),
    }
    if D is not None:
        dD = dD_part.sum(0)
        out["D"] = (dD.sum(-1) if np.ndim(D) == 1 else dD).astype(D.dtype, copy=False)
    if z is not None:
        out["z"] = dz.astype(z.dtype, copy=False)
    if dt_bias is not None:
        out["dt_bias"] = ddt.sum(axis=(0, 1)).astype(dt_bias.dtype, copy=False)
    if initial_state is not None:
        out["initial_state"] = dS0.astype(initial_state.dtype, copy=False)
    return out


SAVING = {"ssd_scan": SavingForm(ssd_scan_saving, ssd_scan_vjp_saved)}
