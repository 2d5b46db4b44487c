"""numba settings shared by every kernel of the backend.

- ``parallel=True``: kernels split their work with ``prange`` over independent rows (batch x
  heads, or batch x channel blocks); no two iterations write the same element, so results do not
  depend on the thread count or the scheduling (deterministic, no atomics).
- ``fastmath=False``: no reassociation, so every reduction runs in the order the loop states.
  That order depends only on the row's own data, which is what makes the kernels batch-invariant.
- ``cache=True``: compiled code is written next to the module (``__pycache__``), so only the first
  run on a machine pays the compile time.
"""

from __future__ import annotations

import numba
import numpy as np

NJIT = dict(parallel=True, cache=True, fastmath=False, nogil=True)
NJIT_SERIAL = dict(cache=True, fastmath=False, nogil=True)

njit = numba.njit
prange = numba.prange


def wide_dtype(*arrays) -> np.dtype:
    """float64 when any array is float64, else float32 (the scans' compute dtype)."""
    for a in arrays:
        if a is not None and np.asarray(a).dtype == np.float64:
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def c(a, dtype) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=dtype)
