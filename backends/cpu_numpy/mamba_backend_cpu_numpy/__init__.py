"""mamba-core's CPU backend: NumPy arrays, float32 or float64 compute."""

from mamba_backend_cpu_numpy.backend import CpuNumpyBackend

__all__ = ["CpuNumpyBackend"]
