"""numba kernels of the Mamba-3 exponential-trapezoidal scan: mamba3_scan, mamba3_step.

The recurrence as written in ``mamba3_scan_ref`` (SISO and MIMO), one (batch, head) pair per
prange iteration, the state S (N x P, P contiguous) local; sums over n and over ranks r run in
ascending order. Batch-invariant and deterministic. The VJP uses the core's default composition.
"""

from __future__ import annotations

import numpy as np

from mamba_backend_cpu_numpy._nb import NJIT, NJIT_SERIAL, c, njit, prange


def _fwd_py(x, dt, A, trap, Bm, Cm, D, mx, S0, k0, v0, y, S_out):
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


def _wide(x):
    return np.float64 if x.dtype == np.float64 else np.float32


def mamba3_scan(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                initial_k=None, initial_v=None):
    """numba Mamba-3 scan (see mamba_core.ops.mamba3); chunk_size does not change the result."""
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
    (_fwd_serial if L == 1 else _fwd)(c(x, wide), c(dt, wide), c(A, wide), c(trap, wide), c(B, wide), c(C, wide), Dw, mx,
         S0, k0, v0, y, S)
    return y.astype(x.dtype, copy=False), S, B[:, -1], x[:, -1]


def mamba3_step(x, dt, A, trap, B, C, state, k_state, v_state, D=None, mimo_x=None):
    """numba Mamba-3 step: the scan kernel on one token (no temporaries besides the outputs)."""
    y, S, _, _ = mamba3_scan(x[:, None], dt[:, None], A[:, None], trap[:, None], B[:, None],
                             C[:, None], D=D, mimo_x=mimo_x, initial_state=state,
                             initial_k=k_state, initial_v=v_state)
    return y[:, 0], S, B, x
