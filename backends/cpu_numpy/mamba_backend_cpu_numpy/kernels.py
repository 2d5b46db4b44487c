"""The kernel table of the cpu_numpy backend: op name -> numba/NumPy implementation.

Ops not listed here run the core's default compositions with ``xp = numpy``. Every kernel has
the op's public signature (see ``mamba_core.ops``); the modules are one per op family.
"""

from __future__ import annotations

from mamba_backend_cpu_numpy import conv1d as _conv
from mamba_backend_cpu_numpy import linear as _linear
from mamba_backend_cpu_numpy import mamba3 as _m3
from mamba_backend_cpu_numpy import norm as _norm
from mamba_backend_cpu_numpy import selective_scan as _ss
from mamba_backend_cpu_numpy import ssd as _ssd


def embedding(ids, weight):
    """weight[ids] with NumPy fancy indexing (one gather, no reshape round trip)."""
    return weight[ids]


#: the kernels of ``cpu_numpy``: projections go to NumPy's BLAS (fast, not batch-invariant)
KERNELS = {
    "embedding": embedding,
    "rmsnorm": _norm.rmsnorm,
    "add_rmsnorm": _norm.add_rmsnorm,
    "causal_conv1d": _conv.causal_conv1d,
    "causal_conv1d_step": _conv.causal_conv1d_step,
    "causal_conv1d_vjp": _conv.causal_conv1d_vjp,
    "selective_scan": _ss.selective_scan,
    "selective_scan_step": _ss.selective_scan_step,
    "selective_scan_vjp": _ss.selective_scan_vjp,
    "ssd_scan": _ssd.ssd_scan,
    "ssd_step": _ssd.ssd_step,
    "ssd_scan_vjp": _ssd.ssd_scan_vjp,
    "mamba3_scan": _m3.mamba3_scan,
    "mamba3_step": _m3.mamba3_step,
    "mamba3_scan_vjp": _m3.mamba3_scan_vjp,
}

#: saving forms (mamba_core/ops/saving.py): the scans' forwards keep the block checkpoints that
#: their VJPs' first pass would recompute (1 / CKPT of a per-token state)
SAVING = {**_ss.SAVING, **_ssd.SAVING, **_m3.SAVING}

#: the kernels of ``cpu_numpy_invariant``: the same, with a fixed-order ``linear`` so a row's
#: result never depends on the other rows (OpenBLAS changes a row's bits with the row count)
INVARIANT_KERNELS = {**KERNELS, "linear": _linear.linear}
