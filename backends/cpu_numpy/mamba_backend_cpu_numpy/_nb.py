"""numba settings shared by every kernel of the backend.

- ``parallel=True``: kernels split their work with ``prange`` over independent rows (batch x
  heads, or batch x channel blocks); no two iterations write the same element, so results do not
  depend on the thread count or the scheduling (deterministic, no atomics).
- ``fastmath=False``: no reassociation, so every reduction runs in the order the loop states.
  That order depends only on the row's own data, which is what makes the kernels batch-invariant.
- ``cache=True``: compiled code is written next to the module (``__pycache__``), so only the first
  run on a machine pays the compile time.
- ``parallel`` is ``PARALLEL``: ``MAMBA_CPU_PARALLEL=1``/``0`` chooses; by default the kernels
  are serial on machines of 1-2 cores and parallel otherwise. Why: OpenBLAS's threads and
  numba's both spin-wait between parallel regions, and on two cores they starve each other. A
  ~130M Mamba-2 prefill (1 x 512) alternating between BLAS projections and parallel numba
  kernels took 1.97 s; with serial kernels 1.57 s, every kernel and the projections themselves
  faster (2026-11-23, PERF.md). Setting numba's thread count per call does not help: its pool,
  once started, keeps spinning. Results do not depend on it (prange rows are independent). With
  the variable set, compiled code is not cached on disk (numba's cache ignores ``parallel``).
"""

from __future__ import annotations

import os

import numba
import numpy as np

def _parallel() -> bool:
    env = os.environ.get("MAMBA_CPU_PARALLEL", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    if env:
        raise ValueError(f"MAMBA_CPU_PARALLEL={env!r}: expected 1 or 0")
    return (os.cpu_count() or 1) > 2


#: whether the kernels split their rows over numba's threads (see the module doc)
PARALLEL = _parallel()

#: numba's on-disk cache does not key on ``parallel``: an override compiles afresh each process
#: rather than load code cached in the other mode
_CACHE = not os.environ.get("MAMBA_CPU_PARALLEL", "").strip()

NJIT = dict(parallel=PARALLEL, cache=_CACHE, fastmath=False, nogil=True)
NJIT_SERIAL = dict(cache=_CACHE, fastmath=False, nogil=True)

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



def checkpoints(rows: tuple, L: int, ckpt: int, state: tuple, dtype, save: bool = True):
    """A scan's block checkpoints, rows + (ceil(L / ckpt),) + state, for its saving form (the
    states entering every ``ckpt`` tokens), or, unless ``save``, a placeholder of the same rank
    that the kernels never index (numba types the argument by its rank)."""
    shape = rows + (-(-L // ckpt),) + state if save else (1,) * (len(rows) + 1 + len(state))
    return np.empty(shape, dtype)
