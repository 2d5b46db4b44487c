"""Entry point of the example_numba backend (group ``mamba_core.backends``, see pyproject.toml)."""

from mamba_core.hookspecs import hookimpl


@hookimpl
def mamba_core_backends():
    # Import lazily and construct cheaply: a backend whose library or device is missing must
    # still load, and say why through available().
    from mamba_backend_example_numba.backend import ExampleNumbaBackend

    return [ExampleNumbaBackend()]
