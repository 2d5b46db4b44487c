"""numba kernels of RMSNorm: rmsnorm (plain, grouped, gated) and add_rmsnorm.

One row per prange iteration (parallel only when there are enough rows to pay for the threads);
per group, the sum of squares runs over the group's channels in ascending order, so a row's result
depends only on that row: batch-invariant and deterministic. The VJPs are the core's defaults.
"""

from __future__ import annotations

import numpy as np

from mamba_backend_cpu_numpy._nb import NJIT, NJIT_SERIAL, c, njit, prange

#: rows below which one thread does the work (decode-sized calls)
PARALLEL_ROWS = 64


def _rms_py(x, w, z, has_z, gs, norm_before_gate, eps, out):
    M, E = x.shape
    for m in prange(M):
        for g in range(E // gs):
            ss = 0.0
            for i in range(g * gs, (g + 1) * gs):
                v = x[m, i]
                if has_z and not norm_before_gate:
                    v = v * (z[m, i] / (1.0 + np.exp(-z[m, i])))
                out[m, i] = v
                ss += v * v
            r = 1.0 / np.sqrt(ss / gs + eps)
            for i in range(g * gs, (g + 1) * gs):
                v = out[m, i] * r * w[i]
                if has_z and norm_before_gate:
                    v = v * (z[m, i] / (1.0 + np.exp(-z[m, i])))
                out[m, i] = v


_rms = njit(**NJIT)(_rms_py)
_rms_serial = njit(**NJIT_SERIAL)(_rms_py)


def _wide(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def rmsnorm(x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """numba gated, grouped RMSNorm (see mamba_core.ops.norm). x, z: (..., E); weight: (E,)."""
    E = x.shape[-1]
    wide = _wide(x.dtype)
    x2 = c(x.reshape(-1, E), wide)
    z2 = c(z.reshape(-1, E), wide) if z is not None else x2
    out = np.empty(x2.shape, wide)
    fn = _rms if x2.shape[0] >= PARALLEL_ROWS else _rms_serial
    fn(x2, c(weight, wide), z2, z is not None, int(group_size or E), bool(norm_before_gate),
       float(eps), out)
    return out.reshape(x.shape).astype(x.dtype, copy=False)


def add_rmsnorm(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """(rmsnorm(residual + x) * w in x's dtype, residual + x (>= float32 when residual_in_fp32))."""
    res = x if residual is None else residual + x
    if residual_in_fp32:
        res = res.astype(_wide(res.dtype), copy=False)
    return rmsnorm(res, weight, eps).astype(x.dtype, copy=False), res
