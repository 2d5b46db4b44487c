"""numba kernels of the Mamba-3 exponential-trapezoidal scan: mamba3_scan, mamba3_step,
mamba3_scan_vjp.

The recurrence as written in ``mamba3_scan_ref`` (SISO and MIMO), one (batch, head) pair per
prange iteration, the state S (N x P, P contiguous) local; sums over n and over ranks r run in
ascending order. Batch-invariant and deterministic.

The VJP is the reverse-time loop of ``mamba3_scan_vjp_ref`` with block checkpoints (as the SSD
one): pass 1 saves the state entering every block of ``CKPT`` tokens, pass 2 walks the blocks
backwards, recomputes the block's states from the saved one and runs the adjoint recurrence.
The saving form (``SAVING``; mamba_core/ops/saving.py) has the forward keep those checkpoints,
so its VJP runs pass 2 only.
Saved per (batch, head): ceil(L / CKPT) states of N x P, one (CKPT + 1, N, P) buffer, the adjoint
dS and the ``carry`` beta_{t+1} dS_{t+1} (the part of du_t that token t + 1 owes).
"""

from __future__ import annotations

import numpy as np

from mamba_core.ops import mamba3 as _ops
from mamba_core.ops.saving import SavingForm
from mamba_backend_cpu_numpy._nb import NJIT, NJIT_SERIAL, c, checkpoints, njit, prange

CKPT = 64


def _fwd_py(x, dt, A, trap, Bm, Cm, D, mx, S0, k0, v0, y, S_out, ck, save):
    Bsz, L, H, P = x.shape
    R, N = Bm.shape[2], Bm.shape[4]
    for bh in prange(Bsz * H):
        b = bh // H
        h = bh - b * H
        S = np.empty((N, P), dtype=S_out.dtype)
        for n in range(N):
            for p in range(P):
                S[n, p] = S0[b, h, p, n]
        vp = np.empty((R, P), dtype=S_out.dtype)  # v_{r,t-1}
        kp = np.empty((R, N), dtype=S_out.dtype)  # B_{r,t-1}
        vc = np.empty((R, P), dtype=S_out.dtype)
        for r in range(R):
            for p in range(P):
                vp[r, p] = v0[b, h, p] * mx[h, r, p]
            for n in range(N):
                kp[r, n] = k0[b, r, h, n]
        acc = np.empty(P, dtype=S_out.dtype)
        for t in range(L):
            if save and t % CKPT == 0:  # the saving form: the state entering every block
                ck[b, h, t // CKPT] = S
            d = dt[b, t, h]
            alpha = np.exp(A[b, t, h] * d)
            beta = (1.0 - trap[b, t, h]) * d * alpha
            gamma = trap[b, t, h] * d
            for r in range(R):
                for p in range(P):
                    vc[r, p] = x[b, t, h, p] * mx[h, r, p]
            for n in range(N):
                for p in range(P):
                    up = 0.0
                    uc = 0.0
                    for r in range(R):
                        up += vp[r, p] * kp[r, n]
                        uc += vc[r, p] * Bm[b, t, r, h, n]
                    S[n, p] = alpha * S[n, p] + beta * up + gamma * uc
            for r in range(R):
                for p in range(P):
                    acc[p] = 0.0
                for n in range(N):
                    cn = Cm[b, t, r, h, n]
                    for p in range(P):
                        acc[p] += S[n, p] * cn
                for p in range(P):
                    y[b, t, r, h, p] = acc[p] + D[h] * vc[r, p]
            for r in range(R):
                for p in range(P):
                    vp[r, p] = vc[r, p]
                for n in range(N):
                    kp[r, n] = Bm[b, t, r, h, n]
        for n in range(N):
            for p in range(P):
                S_out[b, h, p, n] = S[n, p]


_fwd = njit(**NJIT)(_fwd_py)
_fwd_serial = njit(**NJIT_SERIAL)(_fwd_py)  # the step: one token, no threads


@njit(**NJIT_SERIAL)
def _load(x, Bm, mx, v0, k0, b, h, t, v, k):
    """v[r, p] = v_{r,t}, k[r, n] = B_{r,t} of (b, h); t = -1 reads the cached (initial) ones."""
    R, P = v.shape
    N = k.shape[1]
    for r in range(R):
        for p in range(P):
            v[r, p] = (x[b, t, h, p] if t >= 0 else v0[b, h, p]) * mx[h, r, p]
        for n in range(N):
            k[r, n] = Bm[b, t, r, h, n] if t >= 0 else k0[b, r, h, n]


@njit(**NJIT_SERIAL)
def _advance(S_in, S_out, alpha, beta, gamma, vp, kp, vc, kc):
    """S_out = alpha S_in + beta sum_r vp_r kp_r^T + gamma sum_r vc_r kc_r^T (S: N x P)."""
    R, P = vc.shape
    N = kc.shape[1]
    for n in range(N):
        for p in range(P):
            up = 0.0
            uc = 0.0
            for r in range(R):
                up += vp[r, p] * kp[r, n]
                uc += vc[r, p] * kc[r, n]
            S_out[n, p] = alpha * S_in[n, p] + beta * up + gamma * uc


@njit(**NJIT)
def _bwd(dy, dSL, dkL, dvL, x, dt, A, trap, Bm, Cm, D, mx, S0, k0, v0,
         dx, ddt, dA, dtrap, dB, dC, dD_part, dmx_part, dS0, dk0, dv0, ck, have_ck):
    Bsz, L, H, P = x.shape
    R, N = Bm.shape[2], Bm.shape[4]
    nblk = (L + CKPT - 1) // CKPT
    for bh in prange(Bsz * H):
        b = bh // H
        h = bh - b * H
        f = dS0.dtype
        vp = np.empty((R, P), dtype=f)  # v_{r,t-1}
        kp = np.empty((R, N), dtype=f)  # B_{r,t-1}
        vc = np.empty((R, P), dtype=f)  # v_{r,t}
        kc = np.empty((R, N), dtype=f)  # B_{r,t}
        # pass 1: the state entering every block (the saving form's forward kept them: ck)
        if have_ck:
            saved = ck[b, h]
        else:
            saved = np.empty((nblk, N, P), dtype=f)
            S = np.empty((N, P), dtype=f)
            for n in range(N):
                for p in range(P):
                    S[n, p] = S0[b, h, p, n]
            _load(x, Bm, mx, v0, k0, b, h, -1, vp, kp)
            for t in range(L):
                if t % CKPT == 0:
                    saved[t // CKPT] = S
                d = dt[b, t, h]
                al = np.exp(A[b, t, h] * d)
                _load(x, Bm, mx, v0, k0, b, h, t, vc, kc)
                _advance(S, S, al, (1.0 - trap[b, t, h]) * d * al, trap[b, t, h] * d, vp, kp, vc, kc)
                vp[:, :] = vc
                kp[:, :] = kc
        # pass 2: blocks in reverse; dS = adjoint of S_t, carry = beta_{t+1} dS_{t+1}
        buf = np.empty((CKPT + 1, N, P), dtype=f)  # buf[i] = S_{t0 + i - 1}
        dS = np.empty((N, P), dtype=f)
        for n in range(N):
            for p in range(P):
                dS[n, p] = dSL[b, h, p, n]
        carry = np.zeros((N, P), dtype=f)
        dV = np.empty((R, P), dtype=f)
        tk = np.empty(P, dtype=f)
        dD_acc = 0.0
        dmx = np.zeros((R, P), dtype=f)
        for blk in range(nblk - 1, -1, -1):
            t0 = blk * CKPT
            t1 = min(t0 + CKPT, L)
            buf[0] = saved[blk]
            _load(x, Bm, mx, v0, k0, b, h, t0 - 1, vp, kp)
            for t in range(t0, t1):
                d = dt[b, t, h]
                al = np.exp(A[b, t, h] * d)
                _load(x, Bm, mx, v0, k0, b, h, t, vc, kc)
                _advance(buf[t - t0], buf[t - t0 + 1], al, (1.0 - trap[b, t, h]) * d * al,
                         trap[b, t, h] * d, vp, kp, vc, kc)
                vp[:, :] = vc
                kp[:, :] = kc
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                d = dt[b, t, h]
                tr = trap[b, t, h]
                al = np.exp(A[b, t, h] * d)
                bt = (1.0 - tr) * d * al
                gm = tr * d
                _load(x, Bm, mx, v0, k0, b, h, t, vc, kc)
                _load(x, Bm, mx, v0, k0, b, h, t - 1, vp, kp)
                # dS += sum_r C_r dy_r^T;  dC_r = S_t dy_r
                for r in range(R):
                    for n in range(N):
                        cn = Cm[b, t, r, h, n]
                        acc = 0.0
                        for p in range(P):
                            g = dy[b, t, r, h, p]
                            dS[n, p] += cn * g
                            acc += g * buf[i + 1, n, p]
                        dC[b, t, r, h, n] = acc
                # dalpha = <dS, S_{t-1}>
                dal = 0.0
                for n in range(N):
                    for p in range(P):
                        dal += dS[n, p] * buf[i, n, p]
                # dbeta = <dS, u_{t-1}>, dgamma = <dS, u_t> (sum over n first: P lanes)
                dbe = 0.0
                dga = 0.0
                for r in range(R):
                    tk[:] = 0.0
                    for n in range(N):
                        kn = kp[r, n]
                        for p in range(P):
                            tk[p] += dS[n, p] * kn
                    for p in range(P):
                        dbe += tk[p] * vp[r, p]
                    tk[:] = 0.0
                    for n in range(N):
                        kn = kc[r, n]
                        for p in range(P):
                            tk[p] += dS[n, p] * kn
                    for p in range(P):
                        dga += tk[p] * vc[r, p]
                # du_t = gamma_t dS + carry -> dv_r = du_t B_r, dB_r = du_t^T v_r
                for n in range(N):
                    for p in range(P):
                        carry[n, p] += gm * dS[n, p]
                for r in range(R):
                    for p in range(P):
                        dV[r, p] = D[h] * dy[b, t, r, h, p]
                    for n in range(N):
                        kn = kc[r, n]
                        acc = 0.0
                        for p in range(P):
                            dV[r, p] += carry[n, p] * kn
                            acc += carry[n, p] * vc[r, p]
                        dB[b, t, r, h, n] = acc + (dkL[b, r, h, n] if t == L - 1 else 0.0)
                    for p in range(P):
                        dD_acc += dy[b, t, r, h, p] * vc[r, p]
                for p in range(P):
                    acc = 0.0
                    xv = x[b, t, h, p]
                    for r in range(R):
                        acc += dV[r, p] * mx[h, r, p]
                        dmx[r, p] += dV[r, p] * xv
                    dx[b, t, h, p] = acc + (dvL[b, h, p] if t == L - 1 else 0.0)
                da = al * (dal + (1.0 - tr) * d * dbe)
                dA[b, t, h] = d * da
                ddt[b, t, h] = A[b, t, h] * da + (1.0 - tr) * al * dbe + tr * dga
                dtrap[b, t, h] = d * (dga - al * dbe)
                for n in range(N):
                    for p in range(P):
                        carry[n, p] = bt * dS[n, p]
                        dS[n, p] *= al
        # the cached k/v: du_{-1} = carry
        _load(x, Bm, mx, v0, k0, b, h, -1, vp, kp)
        for r in range(R):
            for p in range(P):
                dV[r, p] = 0.0
            for n in range(N):
                kn = kp[r, n]
                acc = 0.0
                for p in range(P):
                    dV[r, p] += carry[n, p] * kn
                    acc += carry[n, p] * vp[r, p]
                dk0[b, r, h, n] = acc
        for p in range(P):
            acc = 0.0
            for r in range(R):
                acc += dV[r, p] * mx[h, r, p]
                dmx[r, p] += dV[r, p] * v0[b, h, p]
            dv0[b, h, p] = acc
        dD_part[b, h] = dD_acc
        for r in range(R):
            for p in range(P):
                dmx_part[b, h, r, p] = dmx[r, p]
        for n in range(N):
            for p in range(P):
                dS0[b, h, p, n] = dS[n, p]


def _wide(x):
    return np.float64 if x.dtype == np.float64 else np.float32


def mamba3_scan(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                initial_k=None, initial_v=None):
    """numba Mamba-3 scan (see mamba_core.ops.mamba3); chunk_size does not change the result."""
    return _scan(x, dt, A, trap, B, C, D, mimo_x, initial_state, initial_k, initial_v, False)[0]


def mamba3_scan_saving(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                       initial_k=None, initial_v=None):
    """mamba3_scan's saving form: the same outputs, and the states entering every CKPT tokens
    (B H ceil(L / CKPT) N P in the compute dtype: 1 / CKPT of a per-token state) that the VJP's
    first pass would recompute."""
    return _scan(x, dt, A, trap, B, C, D, mimo_x, initial_state, initial_k, initial_v, True)


def mamba3_scan_vjp_saved(residuals, cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None,
                          chunk_size=64, initial_state=None, initial_k=None, initial_v=None):
    """mamba3_scan_vjp from the saving form's checkpoints: its second pass only."""
    return _vjp(cotangent, x, dt, A, trap, B, C, D, mimo_x, initial_state, initial_k, initial_v,
                residuals)


def _scan(x, dt, A, trap, B, C, D, mimo_x, initial_state, initial_k, initial_v, save):
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    wide = _wide(x)
    mx = np.ones((H, R, P), wide) if mimo_x is None else c(mimo_x, wide)
    Dw = np.zeros(H, wide) if D is None else c(D, wide)
    S0 = np.zeros((Bsz, H, P, N), wide) if initial_state is None else c(initial_state, wide)
    k0 = np.zeros((Bsz, R, H, N), wide) if initial_k is None else c(initial_k, wide)
    v0 = np.zeros((Bsz, H, P), wide) if initial_v is None else c(initial_v, wide)
    y = np.empty((Bsz, L, R, H, P), wide)
    S = np.empty((Bsz, H, P, N), wide)
    ck = checkpoints((Bsz, H), L, CKPT, (N, P), wide, save)
    (_fwd_serial if L == 1 else _fwd)(c(x, wide), c(dt, wide), c(A, wide), c(trap, wide), c(B, wide), c(C, wide), Dw, mx,
         S0, k0, v0, y, S, ck, save)
    return (y.astype(x.dtype, copy=False), S, B[:, -1], x[:, -1]), (ck if save else None)


def mamba3_step(x, dt, A, trap, B, C, state, k_state, v_state, D=None, mimo_x=None):
    """numba Mamba-3 step: the scan kernel on one token (no temporaries besides the outputs)."""
    y, S, _, _ = mamba3_scan(x[:, None], dt[:, None], A[:, None], trap[:, None], B[:, None],
                             C[:, None], D=D, mimo_x=mimo_x, initial_state=state,
                             initial_k=k_state, initial_v=v_state)
    return y[:, 0], S, B, x


def mamba3_scan_vjp(cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64,
                    initial_state=None, initial_k=None, initial_v=None):
    """numba Mamba-3 backward (recompute with block checkpoints); keys as mamba3_scan_vjp_ref.

    cotangent = (dy (B, L, R, H, P), dfinal_state (B, H, P, N), dfinal_k (B, R, H, N),
    dfinal_v (B, H, P)), any entry None (zero). Gradients come back in their argument's dtype;
    dD and dmimo_x are summed over the batch after the kernel (per-row partials, fixed order).
    """
    return _vjp(cotangent, x, dt, A, trap, B, C, D, mimo_x, initial_state, initial_k, initial_v, None)


def _vjp(cotangent, x, dt, A, trap, B, C, D, mimo_x, initial_state, initial_k, initial_v, ck):
    dy, dSL, dkL, dvL = _ops._unpack_scan_cotangent(cotangent)
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    wide = _wide(x)
    mx = np.ones((H, R, P), wide) if mimo_x is None else c(mimo_x, wide)
    Dw = np.zeros(H, wide) if D is None else c(D, wide)
    S0 = np.zeros((Bsz, H, P, N), wide) if initial_state is None else c(initial_state, wide)
    has_u0 = initial_k is not None and initial_v is not None  # else u_{-1} = 0 (as the reference)
    k0 = c(initial_k, wide) if has_u0 else np.zeros((Bsz, R, H, N), wide)
    v0 = c(initial_v, wide) if has_u0 else np.zeros((Bsz, H, P), wide)

    def cot(a, shape):
        return np.zeros(shape, wide) if a is None else c(a, wide)

    dyw = cot(dy, (Bsz, L, R, H, P))
    dSLw, dkLw, dvLw = cot(dSL, (Bsz, H, P, N)), cot(dkL, (Bsz, R, H, N)), cot(dvL, (Bsz, H, P))
    dx = np.empty((Bsz, L, H, P), wide)
    ddt, dA, dtrap = (np.empty((Bsz, L, H), wide) for _ in range(3))
    dB = np.empty((Bsz, L, R, H, N), wide)
    dC = np.empty((Bsz, L, R, H, N), wide)
    dD_part = np.empty((Bsz, H), wide)
    dmx_part = np.empty((Bsz, H, R, P), wide)
    dS0 = np.empty((Bsz, H, P, N), wide)
    dk0 = np.empty((Bsz, R, H, N), wide)
    dv0 = np.empty((Bsz, H, P), wide)
    _bwd(dyw, dSLw, dkLw, dvLw, c(x, wide), c(dt, wide), c(A, wide), c(trap, wide), c(B, wide),
         c(C, wide), Dw, mx, S0, k0, v0, dx, ddt, dA, dtrap, dB, dC, dD_part, dmx_part, dS0, dk0, dv0,
         checkpoints((Bsz, H), L, CKPT, (N, P), wide, False) if ck is None else ck, ck is not None)
    out = {"x": dx.astype(x.dtype, copy=False), "dt": ddt.astype(dt.dtype, copy=False),
           "A": dA.astype(A.dtype, copy=False), "trap": dtrap.astype(trap.dtype, copy=False),
           "B": dB.astype(B.dtype, copy=False), "C": dC.astype(C.dtype, copy=False)}
    if D is not None:
        out["D"] = dD_part.sum(0).astype(D.dtype, copy=False)
    if mimo_x is not None:
        out["mimo_x"] = dmx_part.sum(0).astype(mimo_x.dtype, copy=False)
    if initial_state is not None:
        out["initial_state"] = dS0.astype(initial_state.dtype, copy=False)
    if initial_k is not None:
        out["initial_k"] = dk0.astype(initial_k.dtype, copy=False)
    if initial_v is not None:
        out["initial_v"] = dv0.astype(initial_v.dtype, copy=False)
    return out


SAVING = {"mamba3_scan": SavingForm(mamba3_scan_saving, mamba3_scan_vjp_saved)}
