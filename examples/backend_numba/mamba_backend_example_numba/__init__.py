"""mamba-core backend example_numba."""

from mamba_backend_example_numba.backend import ExampleNumbaBackend

__all__ = ["ExampleNumbaBackend"]
