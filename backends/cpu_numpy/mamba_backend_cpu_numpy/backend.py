"""The cpu_numpy backend objects.

``cpu_numpy`` is the fast one: numba kernels for the scans and conv, NumPy's BLAS for the
projections. ``cpu_numpy_invariant`` promises batch invariance (a prompt's logits are
bit-identical whatever else is in the batch) by replacing BLAS with a fixed-order ``linear``
kernel, which costs about 4x on the projections; pick it when reproducibility across batch
compositions matters more than speed.
"""

from __future__ import annotations

import numpy as np

from mamba_core.backend import Availability, Backend, Capabilities
from mamba_backend_cpu_numpy import decode, kernels


class CpuNumpyBackend(Backend):
    name = "cpu_numpy"
    priority = 10
    description = "NumPy on the CPU (float32/float64; bf16/f16 weights are widened to float32)"
    dtypes = ("float32", "float64")
    capabilities = Capabilities(cuda_graphs=False, batch_invariant=False, deterministic=True)
    saving = kernels.SAVING  # (before the class attribute ``kernels`` hides the module)
    kernels = kernels.KERNELS
    #: fused one-token decode steps (in_proj, one numba kernel, out_proj); see decode.py
    mixer_steps = decode.MIXER_STEPS

    def available(self) -> Availability:
        return Availability.yes()

    def static_decoder(self, params: dict, cfg, dtype: str = "float32"):
        """A StaticDecoder (static_decoder.py: lm.step over preallocated buffers, bit-identical
        to it), or None when the model's mixer has no fused step here or fused steps are turned
        off (MAMBA_NO_FUSED_STEP=1: lm.step then runs the op composition, which the decoder does
        not mirror)."""
        from mamba_core.models.mixer import fused_step
        from mamba_backend_cpu_numpy.static_decoder import StaticDecoder

        if fused_step(self, cfg.mixer.LAYER.lower()) is None:
            return None
        return StaticDecoder(self, params, cfg, dtype)

    @property
    def xp(self):
        return np


class CpuNumpyInvariantBackend(CpuNumpyBackend):
    name = "cpu_numpy_invariant"
    priority = 5
    description = "cpu_numpy with a fixed-order linear: batch-invariant results (slower projections)"
    capabilities = Capabilities(cuda_graphs=False, batch_invariant=True, deterministic=True)
    kernels = kernels.INVARIANT_KERNELS
