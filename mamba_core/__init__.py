"""mamba-core: the Mamba family of state space models with pluggable backends.

    from mamba_core import get_backend
    be = get_backend()                       # or get_backend("cpu_numpy"), or $MAMBA_BACKEND
    y, state = be.ops.ssd_scan(x, dt, A, B, C, chunk_size=64)
"""

__version__ = "0.1.0"

from mamba_core.backend import Availability, Backend, Capabilities  # noqa: E402
from mamba_core.errors import (  # noqa: E402
    BackendUnavailableError,
    ConfigError,
    MambaError,
    OpNotSupportedError,
    ShapeError,
    UnknownBackendError,
)
from mamba_core.registry import get_backend, installed  # noqa: E402

__all__ = [
    "Availability", "Backend", "Capabilities", "get_backend", "installed", "MambaError",
    "BackendUnavailableError", "ConfigError", "OpNotSupportedError", "ShapeError",
    "UnknownBackendError", "__version__",
]
