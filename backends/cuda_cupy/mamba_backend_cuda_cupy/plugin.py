"""Entry point of the cuda_cupy backend (group ``mamba_core.backends``)."""

from mamba_core.hookspecs import hookimpl


@hookimpl
def mamba_core_backends():
    from mamba_backend_cuda_cupy.backend import CudaCupyBackend

    return [CudaCupyBackend()]
