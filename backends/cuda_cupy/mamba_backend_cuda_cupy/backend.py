"""The cuda_cupy backend object.

Arrays are CuPy arrays on the current device. Ops with a CUDA C kernel (``kernels/``, sources in
``cuda/``, compiled by NVRTC) run it; every other op runs the core's default composition with
``xp = cupy``. ``MAMBA_CUPY_DISABLE=op1,op2`` sends chosen ops back to the default composition.
Decoding can be captured as a CUDA graph: ``mamba_backend_cuda_cupy.graphs.GraphDecoder``.
``mixer_steps``: the fused Mamba-2 decode step (kernels/mixer_steps.py); ``MAMBA_CUPY_FUSED_STEP=0``
(read at each step) leaves the table empty, so decoding runs the op composition.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from mamba_core.backend import Availability, Backend, Capabilities

from mamba_backend_cuda_cupy import kernels as _kernels
from mamba_backend_cuda_cupy.kernels import mixer_steps as _mixer_steps


class CudaCupyBackend(Backend):
    name = "cuda_cupy"
    priority = 20
    description = "CuPy arrays on CUDA; CUDA C kernels via NVRTC, default compositions elsewhere"
    dtypes = ("float32", "float64")
    capabilities = Capabilities(cuda_graphs=True, batch_invariant=False, deterministic=True)

    @property
    def kernels(self):
        if not hasattr(self, "_kernel_table"):
            self._kernel_table = _kernels.collect()
        return self._kernel_table

    @property
    def mixer_steps(self):
        """family -> fused step (``mamba2``); empty under ``MAMBA_CUPY_FUSED_STEP=0``."""
        if not _mixer_steps.enabled():
            return {}
        return self.__dict__.get("_mixer_steps_table", _mixer_steps.MIXER_STEPS)

    @mixer_steps.setter
    def mixer_steps(self, table):
        self.__dict__["_mixer_steps_table"] = dict(table)

    def available(self) -> Availability:
        if importlib.util.find_spec("cupy") is None:
            return Availability.no(
                "cupy is not installed: pip install -e 'backends/cuda_cupy[cuda12]' (or [cuda13])"
            )
        try:
            import cupy
        except Exception as exc:  # installed but broken (e.g. a CUDA library missing)
            return Availability.no(f"cupy is installed but does not import ({type(exc).__name__}: {exc})")
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # cupy raises its own CUDARuntimeError without a driver
            return Availability.no(f"no CUDA device visible ({type(exc).__name__}: {exc})")
        if n == 0:
            return Availability.no("no CUDA device visible")
        if importlib.util.find_spec("array_api_compat") is None:
            return Availability.no("array-api-compat is not installed: pip install array-api-compat")
        return Availability.yes()

    @property
    def xp(self):
        # CuPy's own namespace is NumPy-1-like (clip(a, a_min, a_max), no astype function...);
        # the default compositions are written against the array API, which array_api_compat's
        # wrapper provides over the same cupy.ndarray objects.
        import array_api_compat.cupy

        return array_api_compat.cupy

    def asarray(self, a, dtype=None):
        if isinstance(a, np.ndarray) and a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        return super().asarray(a, dtype)

    def to_numpy(self, a) -> np.ndarray:
        import cupy

        return cupy.asnumpy(a)
