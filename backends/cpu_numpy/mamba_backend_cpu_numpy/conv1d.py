"""numba kernels of the depthwise causal conv1d: causal_conv1d, causal_conv1d_step, its VJP.

y_t[c] = act(b[c] + sum_k w[c, k] x_{t-K+1+k}[c]) with k ascending; loops run over channels
(contiguous, vectorised) inside: one (batch row, block of CBLOCK channels) per prange iteration
for the forward, one batch row at a time for the (serial) step, one channel block per iteration
for the VJP (whose weight/bias sums run over b and t in a fixed order: deterministic, no shared
accumulators).
"""

from __future__ import annotations

import numpy as np

from mamba_backend_cpu_numpy._nb import NJIT, NJIT_SERIAL, c, njit, prange

CBLOCK = 64


@njit(**NJIT)
def _fwd(x, wt, bias, has_bias, state, silu, y, final):
    Bsz, L, C = x.shape
    K = wt.shape[0]
    nblk = (C + CBLOCK - 1) // CBLOCK
    for task in prange(Bsz * nblk):  # (batch row, channel block): channels are the SIMD lanes
        b = task // nblk
        c0 = (task - b * nblk) * CBLOCK
        nc = min(c0 + CBLOCK, C) - c0
        acc = np.empty(nc, dtype=y.dtype)
        for t in range(L):
            acc[:] = 0.0
            for k in range(K):
                s = t - K + 1 + k  # input index; < 0 reads the initial state
                if s >= 0:
                    for j in range(nc):
                        acc[j] += wt[k, c0 + j] * x[b, s, c0 + j]
                else:
                    for j in range(nc):
                        acc[j] += wt[k, c0 + j] * state[b, c0 + j, K + s]
            for j in range(nc):
                v = acc[j]
                if has_bias:
                    v += bias[c0 + j]
                if silu:
                    v = v / (1.0 + np.exp(-v))
                y[b, t, c0 + j] = v
        for ch in range(c0, c0 + nc):
            for k in range(K):
                s = L - K + k
                final[b, ch, k] = x[b, s, ch] if s >= 0 else state[b, ch, K + s]


@njit(**NJIT_SERIAL)  # decode: too little work to pay for waking threads
def _step(x, state, w, bias, has_bias, silu, y, new):
    Bsz, C = x.shape
    K = w.shape[1]
    for b in prange(Bsz):
        for ch in range(C):
            acc = 0.0
            for k in range(K):
                v = state[b, ch, k + 1] if k < K - 1 else x[b, ch]
                new[b, ch, k] = v
                acc += w[ch, k] * v
            if has_bias:
                acc += bias[ch]
            if silu:
                acc = acc / (1.0 + np.exp(-acc))
            y[b, ch] = acc


@njit(**NJIT)
def _bwd(dy, dfin, x, wt, bias, has_bias, state, silu, dx, dw, db, dstate):
    Bsz, L, C = x.shape
    K = wt.shape[0]
    nblk = (C + CBLOCK - 1) // CBLOCK
    for blk in prange(nblk):
        c0 = blk * CBLOCK
        c1 = min(c0 + CBLOCK, C)
        for ch in range(c0, c1):
            for k in range(K):
                dw[ch, k] = 0.0
            db[ch] = 0.0
        for b in range(Bsz):
            for ch in range(c0, c1):
                for t in range(L):
                    dx[b, t, ch] = 0.0
                for k in range(K):
                    dstate[b, ch, k] = 0.0
            # dfinal: final[k] = input index L - K + k
            for ch in range(c0, c1):
                for k in range(K):
                    s = L - K + k
                    if s >= 0:
                        dx[b, s, ch] += dfin[b, ch, k]
                    else:
                        dstate[b, ch, K + s] += dfin[b, ch, k]
            for t in range(L - 1, -1, -1):
                for ch in range(c0, c1):
                    du = dy[b, t, ch]
                    if silu:
                        acc = 0.0
                        for k in range(K):
                            s = t - K + 1 + k
                            v = x[b, s, ch] if s >= 0 else state[b, ch, K + s]
                            acc += wt[k, ch] * v
                        if has_bias:
                            acc += bias[ch]
                        sg = 1.0 / (1.0 + np.exp(-acc))
                        du = du * sg * (1.0 + acc * (1.0 - sg))
                    db[ch] += du
                    for k in range(K):
                        s = t - K + 1 + k
                        if s >= 0:
                            dw[ch, k] += du * x[b, s, ch]
                            dx[b, s, ch] += du * wt[k, ch]
                        else:
                            dw[ch, k] += du * state[b, ch, K + s]
                            dstate[b, ch, K + s] += du * wt[k, ch]


def _wide(x):
    return np.float64 if x.dtype == np.float64 else np.float32


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """numba causal conv1d. x: (B, L, C); weight: (C, K); initial_state: (B, C, K)."""
    Bsz, L, C = x.shape
    K = weight.shape[1]
    wide = _wide(x)
    st = np.zeros((Bsz, C, K), wide) if initial_state is None else c(initial_state, wide)
    bw = c(bias, wide) if bias is not None else np.zeros(1, wide)
    y = np.empty((Bsz, L, C), wide)
    final = np.empty((Bsz, C, K), wide)
    _fwd(c(x, wide), c(np.asarray(weight).T, wide), bw, bias is not None, st, activation == "silu", y, final)
    return y.astype(x.dtype, copy=False), final.astype(x.dtype, copy=False)


def causal_conv1d_step(x, conv_state, weight, bias=None, activation=None):
    """numba conv step: shift-in, dot, bias, silu in one pass. x: (B, C); conv_state: (B, C, K)."""
    Bsz, C = x.shape
    K = weight.shape[1]
    wide = np.result_type(conv_state.dtype, np.float32)
    bw = c(bias, wide) if bias is not None else np.zeros(1, wide)
    y = np.empty((Bsz, C), wide)
    new = np.empty((Bsz, C, K), conv_state.dtype)
    _step(c(x, wide), c(conv_state, wide), c(weight, wide), bw, bias is not None, activation == "silu", y, new)
    return y.astype(x.dtype, copy=False), new


def causal_conv1d_vjp(cotangent, x, weight, bias=None, initial_state=None, activation=None):
    """numba conv VJP; keys x, weight, bias (given), initial_state (given)."""
    dy, dfinal = cotangent
    Bsz, L, C = x.shape
    K = weight.shape[1]
    wide = _wide(x)
    st = np.zeros((Bsz, C, K), wide) if initial_state is None else c(initial_state, wide)
    bw = c(bias, wide) if bias is not None else np.zeros(1, wide)
    dyw = np.zeros((Bsz, L, C), wide) if dy is None else c(dy, wide)
    dfw = np.zeros((Bsz, C, K), wide) if dfinal is None else c(dfinal, wide)
    dx = np.empty((Bsz, L, C), wide)
    dw = np.empty((C, K), wide)
    db = np.empty(C, wide)
    dst = np.empty((Bsz, C, K), wide)
    _bwd(dyw, dfw, c(x, wide), c(np.asarray(weight).T, wide), bw, bias is not None, st,
         activation == "silu", dx, dw, db, dst)
    grads = {"x": dx.astype(x.dtype, copy=False), "weight": dw.astype(weight.dtype, copy=False)}
    if bias is not None:
        grads["bias"] = db.astype(bias.dtype, copy=False)
    if initial_state is not None:
        grads["initial_state"] = dst.astype(initial_state.dtype, copy=False)
    return grads
