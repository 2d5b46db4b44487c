"""Glue shared by the kernel wrappers (private): dtype rules and the default-composition fallback.

``runs_here(*arrays)``: whether the CUDA kernels take a call -- every array given is a CuPy array
(or, for the CPU tests of the glue, every one is a NumPy array) in float32 or float64. Anything
else (float16/bfloat16 storage, foreign arrays) runs the core's default composition with
``xp = cupy`` through ``default(op)``: the same math, a documented fallback, not an error.
Kernels compute in the wide dtype: float32 for float32 inputs, float64 for float64 inputs.
"""

from __future__ import annotations

import functools

import numpy as np

KERNEL_DTYPES = ("float32", "float64")


def xp_of(a):
    """cupy for CuPy arrays, numpy for NumPy arrays (the glue runs on both)."""
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


@functools.lru_cache(maxsize=64)
def _refused(dtype) -> bool:
    """Whether a float dtype other than the kernels' (float16, bfloat16...) sends a call to the
    default composition. Cached per dtype: NumPy computes ``dtype.name`` in Python, and this
    runs for every array of every call (run 33's host profile of the norm forward)."""
    name = getattr(dtype, "name", "")
    return name.startswith(("float", "bfloat")) and name not in KERNEL_DTYPES


def runs_here(*arrays) -> bool:
    kinds = set()
    for a in arrays:
        if a is None:
            continue
        mod = type(a).__module__.split(".")[0]
        if mod not in ("cupy", "numpy"):
            return False
        kinds.add(mod)
        if _refused(a.dtype):
            return False
    return len(kinds) == 1


def wide(xp, *dtypes):
    """float64 when any dtype is float64, else float32."""
    return xp.float64 if any(np.dtype(d) == np.float64 for d in dtypes) else xp.float32


@functools.lru_cache(maxsize=None)
def default(op: str):
    """The core's default composition of ``op`` bound to cupy."""
    import cupy

    from mamba_core.ops import REGISTRY

    return functools.partial(REGISTRY[op].default, cupy)


def api(xp):
    """The array-API namespace over xp's arrays, for the core's private helpers (ops._dt and the
    like), which are written against the array API (astype(x, dtype), clip(x, min=, max=)):
    array_api_compat's wrapper of numpy or cupy. The wrappers here use plain xp otherwise."""
    if xp is np:
        import array_api_compat.numpy as m
    else:
        import array_api_compat.cupy as m
    return m


def sigmoid(xp, x):
    return 1.0 / (1.0 + xp.exp(-x))


def silu(xp, x):
    return x * sigmoid(xp, x)


def dsilu(xp, x):
    s = sigmoid(xp, x)
    return s * (1.0 + x * (1.0 - s))


_DT_KERNEL = None


def dt_transform(xp, dt, dt_bias, dt_softplus, dt_limit, wd):
    """The scans' dt = clip(softplus(dt + dt_bias), *dt_limit) in wd (mamba_core/ops/ssd.py _dt).

    NumPy: the core's composition itself. CuPy: one elementwise kernel of the same formula
    (softplus with torch's threshold 20; clip only when dt_limit is not (0, inf), NaN kept). The
    array-API clip assigns through a boolean mask, which reads the mask's count back to the host:
    not allowed while a CUDA graph is being captured (graphs.GraphDecoder)."""
    from mamba_core.ops import ssd as _ops

    if xp is np:
        return _ops._dt(api(xp), dt, dt_bias, dt_softplus, dt_limit, wd)
    global _DT_KERNEL
    if _DT_KERNEL is None:
        _DT_KERNEL = xp.ElementwiseKernel(
            "T d, T b, int32 sp, int32 lim, T lo, T hi", "T y",
            "T v = d + b;"
            " if (sp) v = v > (T)20 ? v : log1p(exp(v));"
            " if (lim) { if (v < lo) v = lo; if (v > hi) v = hi; }"
            " y = v;",
            "mamba_cupy_dt_transform")
    d = dt.astype(wd, copy=False)
    b = dt_bias.astype(wd, copy=False) if dt_bias is not None else wd(0)
    lo, hi = (float(v) for v in dt_limit)
    lim = _ops._limited(dt_limit)
    return _DT_KERNEL(d, b, np.int32(bool(dt_softplus)), np.int32(lim), wd(lo), wd(hi))
