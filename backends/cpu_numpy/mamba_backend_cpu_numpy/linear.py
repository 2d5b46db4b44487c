"""Batch-invariant linear layer: y = x W^T + b with a fixed reduction order per output.

BLAS (OpenBLAS here) gives a row results that depend on the other rows of the call: the number
of rows picks gemv or gemm, and inside gemm a row's position in the register tile picks the
micro-kernel (measured: up to 1e-4 relative differences in float32). This kernel computes every
output y[m, n] = b[n] + sum_k x[m, k] W[n, k] with k ascending, in a loop whose order depends
only on (K, N), never on M or the other rows: bit-identical results whatever the batch.

Layout: the weight is used transposed, WT (K_in, K_out) C-contiguous (cached per weight array),
so the inner loop is an axpy over a strip of output columns (vectorised across columns: lanes
are independent outputs, no reassociation needed). Work is split over (row tile, column strip)
pairs with prange.
"""

from __future__ import annotations

import numpy as np

from mamba_backend_cpu_numpy._nb import NJIT, NJIT_SERIAL, njit, prange

#: rows per tile and output columns per strip (a 4 x 64 float32 tile is 1 KiB: lives in L1)
ROWS = 4
COLS = 32

_WT_CACHE: dict = {}


def _gemm_bt_py(x, wt, bias, has_bias, out):
    M, K = x.shape
    N = wt.shape[1]
    n_rt = (M + ROWS - 1) // ROWS
    n_cs = (N + COLS - 1) // COLS
    for task in prange(n_rt * n_cs):
        rt = task // n_cs
        cs = task - rt * n_cs
        m0 = rt * ROWS
        m1 = min(m0 + ROWS, M)
        n0 = cs * COLS
        n1 = min(n0 + COLS, N)
        acc = np.zeros((ROWS, COLS), dtype=out.dtype)
        if n1 - n0 == COLS and m1 - m0 == ROWS:  # full tile: constant trip counts vectorise
            for k in range(K):
                w = wt[k, n0:n1]
                for i in range(ROWS):
                    xv = x[m0 + i, k]
                    for j in range(COLS):
                        acc[i, j] += xv * w[j]
        elif n1 - n0 == COLS:  # fewer rows (decode): still a constant-width column strip
            for k in range(K):
                w = wt[k, n0:n1]
                for i in range(m1 - m0):
                    xv = x[m0 + i, k]
                    for j in range(COLS):
                        acc[i, j] += xv * w[j]
        else:  # edge strip: the same order of operations, variable bounds
            for k in range(K):
                for i in range(m1 - m0):
                    xv = x[m0 + i, k]
                    for j in range(n1 - n0):
                        acc[i, j] += xv * wt[k, n0 + j]
        for i in range(m1 - m0):
            for j in range(n1 - n0):
                v = acc[i, j]
                if has_bias:
                    v += bias[n0 + j]
                out[m0 + i, n0 + j] = v


_gemm_bt = njit(**NJIT)(_gemm_bt_py)
_gemm_bt_serial = njit(**NJIT_SERIAL)(_gemm_bt_py)
#: below this many multiply-adds one thread is faster than waking the pool (decode-sized calls);
#: the result is the same bit for bit either way (same per-element order)
PARALLEL_MIN = 1 << 23


def transposed(weight: np.ndarray) -> np.ndarray:
    """W^T as a C-contiguous array, computed once per weight array (keyed by identity)."""
    key = id(weight)
    hit = _WT_CACHE.get(key)
    if hit is not None and hit[0] is weight:
        return hit[1]
    wt = np.ascontiguousarray(weight.T)
    if len(_WT_CACHE) > 4096:
        _WT_CACHE.clear()
    _WT_CACHE[key] = (weight, wt)
    return wt


def linear_into(x2, weight, bias, out):
    """out (M, K_out) <- x2 (M, K_in) W^T + b, all of one dtype; allocates nothing."""
    wt = transposed(weight)
    b = bias if bias is not None else wt[0]
    M, K = x2.shape
    fn = _gemm_bt if M * K * wt.shape[1] >= PARALLEL_MIN else _gemm_bt_serial
    fn(x2, wt, b, bias is not None, out)
    return out


def linear(x, weight, bias=None):
    """y = x W^T + b, batch-invariant. x: (..., K_in); weight: (K_out, K_in); bias: (K_out,)."""
    dtype = np.result_type(x.dtype, weight.dtype)
    K_out, K_in = weight.shape
    x2 = np.ascontiguousarray(x.reshape(-1, K_in), dtype=dtype)
    w = np.ascontiguousarray(weight, dtype=dtype)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    out = np.empty((x2.shape[0], K_out), dtype=dtype)
    linear_into(x2, w, b, out)
    return out.reshape(tuple(x.shape[:-1]) + (K_out,))


def blas_linear(x, weight, bias=None):
    """y = x W^T + b through NumPy's BLAS (cpu_numpy's projections; not batch-invariant)."""
    y = np.matmul(x, weight.T)
    if bias is not None:
        y = y + bias
    return y
