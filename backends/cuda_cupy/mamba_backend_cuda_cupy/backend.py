"""The cuda_cupy backend object.

Arrays are CuPy arrays on the current device. Ops with a CUDA C kernel (``kernels/``, compiled
by NVRTC) run it; every other op runs the core's default composition with ``xp = cupy``.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from mamba_core.backend import Availability, Backend, Capabilities

from mamba_backend_cuda_cupy import kernels as _kernels


class CudaCupyBackend(Backend):
    name = "cuda_cupy"
    priority = 20
    description = "CuPy arrays on CUDA; CUDA C kernels via NVRTC, default compositions elsewhere"
    dtypes = ("float32", "float64")
    capabilities = Capabilities(cuda_graphs=False, batch_invariant=False, deterministic=True)

    @property
    def kernels(self):
        if not hasattr(self, "_kernel_table"):
            self._kernel_table = _kernels.collect()
        return self._kernel_table

    def available(self) -> Availability:
        if importlib.util.find_spec("cupy") is None:
            return Availability.no(
                "cupy is not installed: pip install -e 'backends/cuda_cupy[cuda12]' (or [cuda13])"
            )
        try:
            import cupy

            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # cupy raises its own CUDARuntimeError without a driver
            return Availability.no(f"no CUDA device visible ({type(exc).__name__}: {exc})")
        if n == 0:
            return Availability.no("no CUDA device visible")
        return Availability.yes()

    @property
    def xp(self):
        import cupy

        return cupy

    def asarray(self, a, dtype=None):
        if isinstance(a, np.ndarray) and a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        return super().asarray(a, dtype)

    def to_numpy(self, a) -> np.ndarray:
        import cupy

        return cupy.asnumpy(a)
