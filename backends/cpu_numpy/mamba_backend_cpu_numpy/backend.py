"""The cpu_numpy backend object."""

from __future__ import annotations

import numpy as np

from mamba_core.backend import Availability, Backend, Capabilities
from mamba_backend_cpu_numpy import kernels


class CpuNumpyBackend(Backend):
    name = "cpu_numpy"
    priority = 10
    description = "NumPy on the CPU (float32/float64; bf16/f16 weights are widened to float32)"
    dtypes = ("float32", "float64")
    capabilities = Capabilities(cuda_graphs=False, batch_invariant=False, deterministic=True)
    kernels = kernels.KERNELS

    def available(self) -> Availability:
        return Availability.yes()

    @property
    def xp(self):
        return np
