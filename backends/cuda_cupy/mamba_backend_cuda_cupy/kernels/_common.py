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


def runs_here(*arrays) -> bool:
    kinds = set()
    for a in arrays:
        if a is None:
            continue
        mod = type(a).__module__.split(".")[0]
        if mod not in ("cupy", "numpy"):
            return False
        kinds.add(mod)
        name = getattr(a.dtype, "name", "")
        if name.startswith(("float", "bfloat")) and name not in KERNEL_DTYPES:
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
