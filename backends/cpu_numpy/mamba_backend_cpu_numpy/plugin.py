"""Entry point of the cpu_numpy backend (group ``mamba_core.backends``)."""

from mamba_core.hookspecs import hookimpl


@hookimpl
def mamba_core_backends():
    from mamba_backend_cpu_numpy.backend import CpuNumpyBackend, CpuNumpyInvariantBackend

    return [CpuNumpyBackend(), CpuNumpyInvariantBackend()]
