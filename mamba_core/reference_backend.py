"""The ``reference`` backend: every op is its float64 NumPy reference.

It is the ground truth that conformance compares every backend against, for ops and, through the
model graphs, for whole models. Slow on purpose (scans are loops over time); never picked by
default when any other backend is available.
"""

from __future__ import annotations

import numpy as np

from mamba_core.backend import Backend, Capabilities
from mamba_core.hookspecs import hookimpl


class _ReferenceKernels(dict):
    """op name -> reference function, read from the op registry when first asked."""

    def _fill(self):
        if not dict.__len__(self):
            from mamba_core.ops import REGISTRY

            for name, spec in REGISTRY.items():
                self[name] = spec.reference

    def get(self, key, default=None):
        self._fill()
        return dict.get(self, key, default)

    def __iter__(self):
        self._fill()
        return dict.__iter__(self)

    def __len__(self):
        self._fill()
        return dict.__len__(self)

    def __contains__(self, key):
        self._fill()
        return dict.__contains__(self, key)


class ReferenceBackend(Backend):
    name = "reference"
    priority = -100
    description = "float64 NumPy reference implementations (ground truth; slow)"
    dtypes = ("float64",)
    capabilities = Capabilities(batch_invariant=True, deterministic=True)

    def __init__(self):
        self.kernels = _ReferenceKernels()

    @property
    def xp(self):
        return np

    def asarray(self, a, dtype=None):
        if getattr(a, "dtype", None) is not None and np.asarray(a).dtype.kind in "iub":
            return np.asarray(a)
        return np.asarray(a, dtype=np.float64)


REFERENCE = ReferenceBackend()


@hookimpl
def mamba_core_backends():
    return [REFERENCE]
