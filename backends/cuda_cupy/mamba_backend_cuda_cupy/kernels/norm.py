"""RMSNorm kernels (cuda/norm.cu): gated, grouped, with the fused residual add; forward and VJP.

Ops (signatures and math: mamba_core/ops/norm.py):
    rmsnorm(x, weight, eps, z, group_size, norm_before_gate)               -> y
    add_rmsnorm(x, residual, weight, eps, residual_in_fp32)                -> (y, residual_out)
    rmsnorm_vjp(dy, x, weight, eps, z, group_size, norm_before_gate)       -> {"x", "weight", "z"}
    add_rmsnorm_vjp((dy, dres), x, residual, weight, eps, residual_in_fp32) -> {"x", "weight", "residual"}

x (..., E) is viewed as M rows of E channels (copied to a contiguous array in the wide dtype when
it is not one already). Forward: one block per (row, group), 8 channels a thread held in
registers (x, z, the residual read once). Backward: blocks walk rows, x, z and dy read once a row
into registers, and write weight-gradient partials (row blocks, E) summed in a fixed order
(deterministic). residual_out is in the wide dtype (float32 for float32, float64 for float64),
as the default composition gives for those dtypes.

Kernels: 16-byte vector loads (float4 / double2) where sizes and addresses allow, scalar
otherwise; one paired block reduction a row in the backward; add_rmsnorm's VJP fused into that
one kernel (x + residual, dy, dresidual_out in; dx and the residual's gradient out); partials
summed by a small kernel (rmsnorm_dw_sum), row blocks sized to one wave of the device.

Memory floors at the benchmark shape (B=8, L=2048, E=2048, float32: 134 MB an array, ~3.0 TB/s):
    gated rmsnorm forward      x, z in; y out                                3 x 134 MB: 0.13 ms
    gated rmsnorm backward     x, z, dy in; dx, dz out                       5 x 134 MB: 0.22 ms
        forward + backward                                                               0.36 ms
    add_rmsnorm forward        x, residual in; y, residual_out out           4 x 134 MB: 0.18 ms
    add_rmsnorm backward       x, residual, dy, dresidual_out in;
                               dx, dresidual out (two arrays)                6 x 134 MB: 0.27 ms
        forward + backward                                                               0.45 ms
    Measured (H100, 2026-11-24, benchmarks/results/gpu-20261124-h100 run 7), fwd / fwd+bwd:
    gated 0.200 / 0.452 ms, add_rmsnorm 0.255 / 0.568 ms (torch_triton 0.237 / 0.621 and
    0.276 / 0.627). The backward these replaced moved 11 x 134 MB for add_rmsnorm: 1.02 ms.
"""

from __future__ import annotations

import functools

import numpy as np

from mamba_backend_cuda_cupy._compile import ctype, function
from mamba_backend_cuda_cupy._launch import launch
from mamba_backend_cuda_cupy.kernels._common import default, runs_here, wide

BWD_COLS_PER_THREAD = 8  # NORM_CPT in norm.cu
VEC_BYTES = 16  # the kernels' vector loads (float4, double2)
SM_THREADS, SM_REGS, SM_BLOCKS = 2048, 65536, 32  # per multiprocessor, sm_80 / sm_90


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


def vec_width(itemsize: int, gs: int, E: int, addresses) -> int:
    """Channels a thread loads at once: 16 bytes' worth when the group size and the row length
    are multiples of it and every array starts on a 16-byte boundary, else 1."""
    v = VEC_BYTES // itemsize
    if v <= 1 or gs % v or E % v or any(a % VEC_BYTES for a in addresses):
        return 1
    return v


def resident_blocks(regs: int, threads: int) -> int:
    """Blocks of ``threads`` threads using ``regs`` registers each that one multiprocessor holds
    (registers are allocated 256 a warp)."""
    warps = -(-threads // 32)
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    return max(1, min(SM_BLOCKS, SM_THREADS // (warps * 32), SM_REGS // (per_warp * warps)))


def bwd_row_blocks(M: int, groups: int, sms: int, per_sm: int) -> int:
    """Row blocks of the backward: one wave of the device (sms x per_sm blocks over the row
    blocks x groups grid), at most one a row."""
    return max(1, min(M, (sms * per_sm) // max(1, groups)))


@functools.lru_cache(maxsize=None)
def _sms(device: int) -> int:
    import cupy

    try:
        return int(cupy.cuda.runtime.getDeviceProperties(device)["multiProcessorCount"])
    except Exception:  # the count only sizes the grid
        return 132


@functools.lru_cache(maxsize=None)
def _bwd_kernel(T: str, V: int, threads: int):
    """The backward instance and the blocks of it one multiprocessor holds."""
    fn = function("norm.cu", f"rmsnorm_bwd_v2<{T}, {V}>")
    try:
        regs = int(fn.num_regs)
    except Exception:
        regs = 64  # the launch bound's cap
    return fn, resident_blocks(regs, threads)


def _rows(cp, a, wd, E):
    return None if a is None else cp.ascontiguousarray(a, dtype=wd).reshape(-1, E)


def _ptr(a):
    return a if a is not None else np.uint64(0)


def _addrs(*arrays):
    return [a.data.ptr for a in arrays if a is not None]


def _fwd(x, residual, z, weight, eps, gs, nbg):
    import cupy as cp

    E = x.shape[-1]
    wd = wide(cp, x.dtype, *(a.dtype for a in (residual, z) if a is not None))
    X, R, Z = _rows(cp, x, wd, E), _rows(cp, residual, wd, E), _rows(cp, z, wd, E)
    W = cp.ascontiguousarray(weight, dtype=wd)
    M = X.shape[0]
    Y = cp.empty((M, E), wd)
    RO = cp.empty((M, E), wd) if R is not None else None
    if M and E:
        T, sc = ctype(wd), np.dtype(wd).type
        V = vec_width(np.dtype(wd).itemsize, gs, E, _addrs(X, R, Z, W, Y, RO))
        fn = function("norm.cu", f"rmsnorm_fwd_v2<{T}, {V}>")
        launch(fn, (M, E // gs), (fwd_threads(gs),),
               (X, _ptr(R), _ptr(Z), W, Y, _ptr(RO), np.int32(E), np.int32(gs), sc(eps), np.int32(nbg)))
    return Y, RO, X


def _bwd(dy, x, residual, z, dres_out, weight, eps, gs, nbg, wd):
    """The backward in one kernel (+ the partials' sum): DX, DR (residual given), DZ (z given), DW.

    v = x (+ residual); DX = d v (+ dres_out); DR: a second array holding DX."""
    import cupy as cp

    E = x.shape[-1]
    X, R, Z = _rows(cp, x, wd, E), _rows(cp, residual, wd, E), _rows(cp, z, wd, E)
    DY, DRO = _rows(cp, dy, wd, E), _rows(cp, dres_out, wd, E)
    W = cp.ascontiguousarray(weight, dtype=wd)
    M = X.shape[0]
    DX = cp.empty((M, E), wd)
    DR = cp.empty((M, E), wd) if R is not None else None
    DZ = cp.empty((M, E), wd) if Z is not None else None
    if not (M and E):
        return DX, DR, DZ, cp.zeros((E,), wd)
    T, sc = ctype(wd), np.dtype(wd).type
    threads = bwd_threads(gs)
    V = vec_width(np.dtype(wd).itemsize, gs, E, _addrs(X, R, Z, W, DY, DRO, DX, DR, DZ))
    fn, per_sm = _bwd_kernel(T, V, threads)
    nrb = bwd_row_blocks(M, E // gs, _sms(cp.cuda.runtime.getDevice()), per_sm)
    DWP = cp.empty((nrb, E), wd)  # every entry written (each block covers its group's columns)
    fn((nrb, E // gs), (threads,),
       (X, _ptr(R), _ptr(Z), W, _ptr(DY), _ptr(DRO), DX, _ptr(DR), _ptr(DZ), DWP, np.int64(M),
        np.int32(E), np.int32(gs), sc(eps), np.int32(nbg)))
    DW = cp.empty((E,), wd)
    function("norm.cu", f"rmsnorm_dw_sum<{T}>")((-(-E // 32),), (32, 8),
                                                 (DWP, DW, np.int32(nrb), np.int32(E)))
    return DX, DR, DZ, DW


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
    import cupy as cp

    wd = wide(cp, x.dtype, *(a.dtype for a in (z,) if a is not None))
    DX, _, DZ, DW = _bwd(dy, x, None, z, None, weight, eps, gs, bool(norm_before_gate), wd)
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
    DX, DR, _, DW = _bwd(dy, x, residual, None, dres_out, weight, eps, D, False, wd)
    grads = {"x": DX.reshape(x.shape).astype(x.dtype, copy=False),
             "weight": DW.astype(weight.dtype, copy=False)}
    if residual is not None:  # its own array (DR), as the default composition gives
        grads["residual"] = DR.reshape(x.shape).astype(residual.dtype, copy=False)
    return grads


KERNELS = {"rmsnorm": rmsnorm, "add_rmsnorm": add_rmsnorm, "rmsnorm_vjp": rmsnorm_vjp,
           "add_rmsnorm_vjp": add_rmsnorm_vjp}
