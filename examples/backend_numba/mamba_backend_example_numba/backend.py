"""The example_numba backend object: what mamba-core needs to know about it."""

from __future__ import annotations

import functools

from mamba_core.backend import Availability, Backend, Capabilities

from mamba_backend_example_numba import kernels


@functools.cache
def _numba_status() -> Availability:
    try:
        import numba  # noqa: F401 - importing is the check (numba refuses NumPy versions it does not support)
    except ImportError as exc:
        return Availability.no(f"numba is not importable ({exc}): pip install numba")
    return Availability.yes()


class ExampleNumbaBackend(Backend):
    name = "example_numba"
    #: higher wins when nobody names a backend (cpu_numpy has 10, reference -100); an example
    #: should never be picked by default
    priority = -10
    description = "example: NumPy arrays, numba kernel for the selective scan (CPU)"
    #: the dtypes it computes in; conformance certifies each one that has a tolerance
    dtypes = ("float32", "float64")
    capabilities = Capabilities(cuda_graphs=False, batch_invariant=False, deterministic=True)
    #: op name -> native kernel; every other op runs the core's default composition on xp
    kernels = kernels.KERNELS

    def available(self) -> Availability:
        return _numba_status()

    @property
    def xp(self):
        """The array-API namespace the default compositions run on."""
        return kernels.xp

    # asarray(a, dtype=None) and to_numpy(a) are inherited: they go through xp.asarray and
    # numpy.asarray, which is all a NumPy backend needs.
