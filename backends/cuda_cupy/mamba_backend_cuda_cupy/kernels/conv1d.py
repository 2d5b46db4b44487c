"""Causal depthwise conv1d kernels (cuda/conv1d.cu): forward, step and VJP.

Ops (signatures and math: mamba_core/ops/conv1d.py):
    causal_conv1d(x, weight, bias, initial_state, activation)          -> (y, final_state)
    causal_conv1d_step(x, conv_state, weight, bias, activation)        -> (y, new_state)
    causal_conv1d_vjp((dy, dfinal), x, weight, bias, initial_state, activation) -> dict

Forward: a thread per channel and tile of CONV_TT (16) times, the K-1 earlier inputs in a
register window (K a template argument): each input read once, no per-element division. The
backward runs three kernels: du = dy act'(pre) (pre recomputed, the forward's tiles), the
gradient of every input position (x and the initial state, with dfinal added; a block per
(batch, position) row), and dw/db reduced per channel by blocks of 32 channels x 8 row lanes,
the rows split over up to 64 block rows whose partials CuPy sums (fixed order: deterministic).
K <= 8 (the dw kernel's register array); wider kernels run the default composition.
Floor at B=8, L=2048, C=2304 float32 (151 MB an array): forward x in, y out, 0.10 ms at 3 TB/s;
the evening's one-thread-an-output kernel took 0.68 ms (three 64-bit divisions an element).
"""

from __future__ import annotations

import numpy as np

from mamba_backend_cuda_cupy._compile import ctype, function
from mamba_backend_cuda_cupy.kernels._common import default, runs_here, wide

KMAX = 8
THREADS = 256
CONV_TT = 16  # times per thread of the forward and du kernels (CONV_TT in conv1d.cu)
DW_ROWS_PER_LANE = 64
DW_MAX_ROW_BLOCKS = 64


def blocks(n: int, threads: int = THREADS) -> int:
    return max(1, -(-n // threads))


def dw_row_blocks(rows: int) -> int:
    """Row blocks of the dw/db reduction: ~DW_ROWS_PER_LANE rows per lane of 8, at most 64."""
    return max(1, min(DW_MAX_ROW_BLOCKS, -(-rows // (8 * DW_ROWS_PER_LANE))))


def _ptr(a):
    return a if a is not None else np.uint64(0)


def _act(activation) -> np.int32:
    return np.int32(1 if activation == "silu" else 0)


def _takes(x, weight, *arrays):
    return (runs_here(x, weight, *arrays) and type(x).__module__.startswith("cupy")
            and weight.shape[1] <= KMAX)


def _prep(cp, x, weight, bias, initial_state, wd):
    X = cp.ascontiguousarray(x, dtype=wd)
    W = cp.ascontiguousarray(weight, dtype=wd)
    Bi = None if bias is None else cp.ascontiguousarray(bias, dtype=wd)
    I = None if initial_state is None else cp.ascontiguousarray(initial_state, dtype=wd)
    return X, W, Bi, I


def _final_state(cp, X, I, K, wd):
    """The last K inputs, oldest first: (B, C, K) (only the last K rows of x are copied)."""
    Bsz, L, C = X.shape
    tail = X[:, max(0, L - K):]
    if L < K:  # the rest from the initial state (zeros without one)
        head = cp.zeros((Bsz, K, C), wd) if I is None else cp.transpose(I, (0, 2, 1))
        tail = cp.concatenate([head[:, L:], tail], axis=1)
    return cp.ascontiguousarray(cp.transpose(tail, (0, 2, 1)))


def _tile_grid(Bsz, L, C):
    """Grid of the forward and du kernels: (B * ceil(L / CONV_TT), ceil(C / THREADS))."""
    return (Bsz * -(-L // CONV_TT), blocks(C))


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """Causal depthwise conv1d. x: (B, L, C); weight: (C, K); state: (B, C, K)."""
    if not _takes(x, weight, bias, initial_state):
        return default("causal_conv1d")(x, weight, bias, initial_state, activation)
    import cupy as cp

    Bsz, L, C = x.shape
    K = weight.shape[1]
    wd = wide(cp, x.dtype)
    X, W, Bi, I = _prep(cp, x, weight, bias, initial_state, wd)
    Y = cp.empty((Bsz, L, C), wd)
    if Bsz * L * C:
        function("conv1d.cu", f"conv1d_fwd<{ctype(wd)}, {K}>")(
            _tile_grid(Bsz, L, C), (THREADS,),
            (X, W, _ptr(Bi), _ptr(I), Y, np.int32(Bsz), np.int32(L), np.int32(C),
             _act(activation)))
    fin = _final_state(cp, X, I, K, wd).astype(x.dtype, copy=False)
    return Y.astype(x.dtype, copy=False), fin


def causal_conv1d_step(x, conv_state, weight, bias=None, activation=None):
    """One token. x: (B, C); conv_state: (B, C, K). Returns (y (B, C), new_state)."""
    if not _takes(x, weight, conv_state, bias):
        return default("causal_conv1d_step")(x, conv_state, weight, bias, activation)
    import cupy as cp

    Bsz, C = x.shape
    K = weight.shape[1]
    wd = wide(cp, x.dtype, conv_state.dtype)
    X = cp.ascontiguousarray(x, dtype=wd)
    S = cp.ascontiguousarray(conv_state, dtype=wd)
    W = cp.ascontiguousarray(weight, dtype=wd)
    Bi = None if bias is None else cp.ascontiguousarray(bias, dtype=wd)
    Y = cp.empty((Bsz, C), wd)
    NS = cp.empty((Bsz, C, K), wd)
    n = Bsz * C
    if n:
        function("conv1d.cu", f"conv1d_step<{ctype(wd)}>")(
            (blocks(n),), (THREADS,),
            (X, S, W, _ptr(Bi), Y, NS, np.int32(Bsz), np.int32(C), np.int32(K), _act(activation)))
    return Y.astype(x.dtype, copy=False), NS.astype(conv_state.dtype, copy=False)


def causal_conv1d_vjp(cotangent, x, weight, bias=None, initial_state=None, activation=None):
    """VJP of causal_conv1d; cotangent = (dy | None, dfinal_state | None)."""
    dy, dfin = cotangent
    if not _takes(x, weight, bias, initial_state, dy, dfin):
        return default("causal_conv1d_vjp")(cotangent, x, weight, bias, initial_state, activation)
    import cupy as cp

    Bsz, L, C = x.shape
    K = weight.shape[1]
    wd = wide(cp, x.dtype)
    X, W, Bi, I = _prep(cp, x, weight, bias, initial_state, wd)
    DY = None if dy is None else cp.ascontiguousarray(dy, dtype=wd)
    DF_in = None if dfin is None else cp.ascontiguousarray(dfin, dtype=wd)
    T = ctype(wd)
    DU = cp.empty((Bsz, L, C), wd)
    if Bsz * L * C:
        function("conv1d.cu", f"conv1d_bwd_du<{T}, {K}>")(
            _tile_grid(Bsz, L, C), (THREADS,),
            (X, W, _ptr(Bi), _ptr(I), _ptr(DY), DU, np.int32(Bsz), np.int32(L), np.int32(C),
             _act(activation)))
    DFULL = cp.empty((Bsz, L + K, C), wd)
    if Bsz * (L + K) * C:
        function("conv1d.cu", f"conv1d_bwd_dx<{T}>")(
            (Bsz * (L + K), blocks(C)), (THREADS,),
            (DU, W, _ptr(DF_in), DFULL, np.int32(Bsz), np.int32(L), np.int32(C), np.int32(K)))
    rb = dw_row_blocks(Bsz * L)
    DWP = cp.zeros((rb, C, K + 1), wd)
    if C:
        function("conv1d.cu", f"conv1d_bwd_dw<{T}>")(
            (blocks(C, 32), rb), (32, 8),
            (X, _ptr(I), DU, DWP, np.int32(Bsz), np.int32(L), np.int32(C), np.int32(K)))
    DWB = cp.sum(DWP, axis=0)
    DW, DB = DWB[:, :K], DWB[:, K]
    grads = {"x": cp.ascontiguousarray(DFULL[:, K:]).astype(x.dtype, copy=False),
             "weight": DW.astype(weight.dtype)}
    if bias is not None:
        grads["bias"] = DB.astype(bias.dtype)
    if initial_state is not None:
        grads["initial_state"] = cp.ascontiguousarray(
            cp.transpose(DFULL[:, :K], (0, 2, 1))).astype(initial_state.dtype, copy=False)
    return grads


KERNELS = {"causal_conv1d": causal_conv1d, "causal_conv1d_step": causal_conv1d_step,
           "causal_conv1d_vjp": causal_conv1d_vjp}
