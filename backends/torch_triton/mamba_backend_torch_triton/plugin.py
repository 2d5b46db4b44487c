"""Entry point of the torch_triton backend (group ``mamba_core.backends``)."""

from mamba_core.hookspecs import hookimpl


@hookimpl
def mamba_core_backends():
    from mamba_backend_torch_triton.backend import TorchTritonBackend

    return [TorchTritonBackend()]
