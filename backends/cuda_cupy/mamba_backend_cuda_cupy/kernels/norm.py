"""RMSNorm kernels (cuda/norm.cu): gated, grouped, with the fused residual add; forward and VJP.

Ops (signatures and math: mamba_core/ops/norm.py):
    rmsnorm(x, weight, eps, z, group_size, norm_before_gate)               -> y
    add_rmsnorm(x, residual, weight, eps, residual_in_fp32)                -> (y, residual_out)
    rmsnorm_vjp(dy, x, weight, eps, z, group_size, norm_before_gate)       -> {"x", "weight", "z"}
    add_rmsnorm_vjp((dy, dres), x, residual, weight, eps, residual_in_fp32) -> {"x", "weight", "residual"}

x (..., E) is viewed as M rows of E channels (copied to a contiguous array in the wide dtype when
it is not one already). Forward: one block per (row, group), 8 channels a thread held in
registers (x, z, the residual read once). Backward: blocks walk rows, x, z and dy read once a row
into registers for its three passes, and write weight-gradient partials (row blocks, E) that
CuPy sums. Floor at (8, 2048, 2048) float32 (134 MB an array, ~3 TB/s): gated forward (x, z in,
y out) 0.13 ms, its backward (x, z, dy in, dx, dz out) 0.22 ms. residual_out is in the wide dtype
(float32 for float32, float64 for float64), as the default composition gives for those dtypes.
"""

from __future__ import annotations

import numpy as np

from mamba_backend_cuda_cupy._compile import ctype, function
from mamba_backend_cuda_cupy.kernels._common import default, runs_here, wide

BWD_COLS_PER_THREAD = 8  # NORM_CPT in norm.cu
MAX_BWD_ROW_BLOCKS = 1024


def _pow2(n):
    p = 1
    while p < n:
        p *= 2
    return p


def bwd_threads(gs: int) -> int | None:
    """Threads per block (forward and backward: NORM_CPT channels a thread, held in registers),
    or None when a group is too wide (> 8192 channels)."""
    t = max(32, _pow2(-(-gs // BWD_COLS_PER_THREAD)))
    return t if t <= 1024 else None


fwd_threads = bwd_threads  # the forward keeps its channels in registers too (norm.cu)


def _rows(cp, a, wd, E):
    return None if a is None else cp.ascontiguousarray(a, dtype=wd).reshape(-1, E)


def _ptr(a):
    return a if a is not None else np.uint64(0)


def _fwd(x, residual, z, weight, eps, gs, nbg):
    import cupy as cp

    E = x.shape[-1]
    wd = wide(cp, x.dtype, *(a.dtype for a in (residual, z) if a is not None))
    X, R, Z = _rows(cp, x, wd, E), _rows(cp, residual, wd, E), _rows(cp, z, wd, E)
    W = cp.ascontiguousarray(weight, dtype=wd)
    M = X.shape[0]
    Y = cp.empty((M, E), wd)
    RO = cp.empty((M, E), wd) if R is not None else None
    if M:
        fn = function("norm.cu", f"rmsnorm_fwd<{ctype(wd)}>")
        sc = np.dtype(wd).type
        fn((M, E // gs), (fwd_threads(gs),),
           (X, _ptr(R), _ptr(Z), W, Y, _ptr(RO), np.int32(E), np.int32(gs), sc(eps), np.int32(nbg)))
    return Y, RO, X


def _bwd(dy, x, z, weight, eps, gs, nbg):
    import cupy as cp

    E = x.shape[-1]
    wd = wide(cp, x.dtype, *(a.dtype for a in (z,) if a is not None))
    X, Z = _rows(cp, x, wd, E), _rows(cp, z, wd, E)
    M = X.shape[0]
    DY = cp.zeros((M, E), wd) if dy is None else _rows(cp, dy, wd, E)
    W = cp.ascontiguousarray(weight, dtype=wd)
    DX = cp.empty((M, E), wd)
    DZ = cp.empty((M, E), wd) if Z is not None else None
    nrb = max(1, min(M, MAX_BWD_ROW_BLOCKS))
    DWP = cp.zeros((nrb, E), wd)
    if M:
        fn = function("norm.cu", f"rmsnorm_bwd<{ctype(wd)}>")
        sc = np.dtype(wd).type
        fn((nrb, E // gs), (bwd_threads(gs),),
           (X, _ptr(Z), W, DY, DX, _ptr(DZ), DWP, np.int64(M), np.int32(E), np.int32(gs), sc(eps),
            np.int32(nbg)))
    return DX, DZ, cp.sum(DWP, axis=0)


def _takes(x, gs, *arrays):
    return runs_here(x, *arrays) and bwd_threads(gs) is not None and type(x).__module__.startswith("cupy")


def rmsnorm(x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """Gated, grouped RMSNorm. x, z: (..., E); weight: (E,)."""
    gs = group_size or x.shape[-1]
    if not _takes(x, gs, weight, z):
        return default("rmsnorm")(x, weight, eps, z, group_size, norm_before_gate)
    Y, _, _ = _fwd(x, None, z, weight, eps, gs, bool(norm_before_gate))
    return Y.reshape(x.shape).astype(x.dtype, copy=False)


def add_rmsnorm(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """(rmsnorm(residual + x) * w, residual + x). x, residual: (..., D); weight: (D,)."""
    D = x.shape[-1]
    if not _takes(x, D, residual, weight):
        return default("add_rmsnorm")(x, residual, weight, eps, residual_in_fp32)
    Y, RO, X = _fwd(x, residual, None, weight, eps, D, False)
    res = RO if RO is not None else X.copy()  # X may alias the caller's x: never return it
    return Y.reshape(x.shape).astype(x.dtype, copy=False), res.reshape(x.shape)


def rmsnorm_vjp(dy, x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """VJP of rmsnorm -> {"x", "weight", "z" (when given)}."""
    gs = group_size or x.shape[-1]
    if not _takes(x, gs, dy, weight, z):
        return default("rmsnorm_vjp")(dy, x, weight, eps, z, group_size, norm_before_gate)
    DX, DZ, DW = _bwd(dy, x, z, weight, eps, gs, bool(norm_before_gate))
    out = {"x": DX.reshape(x.shape).astype(x.dtype, copy=False),
           "weight": DW.astype(weight.dtype, copy=False)}
    if z is not None:
        out["z"] = DZ.reshape(z.shape).astype(z.dtype, copy=False)
    return out


def add_rmsnorm_vjp(cotangent, x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """VJP of add_rmsnorm; cotangent = (dy, dresidual_out), either None."""
    dy, dres_out = cotangent
    D = x.shape[-1]
    if not _takes(x, D, residual, weight, dy, dres_out):
        return default("add_rmsnorm_vjp")(cotangent, x, residual, weight, eps, residual_in_fp32)
    import cupy as cp

    wd = wide(cp, x.dtype, *(a.dtype for a in (residual,) if a is not None))
    xw = x.astype(wd, copy=False)
    res = xw if residual is None else residual.astype(wd, copy=False) + xw
    DX, _, DW = _bwd(dy, res, None, weight, eps, D, False)
    dres = DX.reshape(x.shape)
    if dres_out is not None:
        dres += dres_out.astype(wd, copy=False)  # DX is this call's own array
    grads = {"x": dres.astype(x.dtype, copy=False), "weight": DW.astype(weight.dtype, copy=False)}
    if residual is not None:
        grads["residual"] = dres.astype(residual.dtype)
    return grads


KERNELS = {"rmsnorm": rmsnorm, "add_rmsnorm": add_rmsnorm, "rmsnorm_vjp": rmsnorm_vjp,
           "add_rmsnorm_vjp": add_rmsnorm_vjp}
