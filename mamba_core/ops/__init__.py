"""The math of the Mamba family as abstract ops.

Each module holds one op family: its contract (shapes and dtypes in the docstring), a float64
NumPy reference, and a default composition in array-API terms that every backend inherits.
``REGISTRY`` maps op names to their ``OpSpec``; ``backend.ops.<name>`` calls an op on a backend.
Every public module of this package is imported here, which registers its ops.
"""

import importlib
import pkgutil

from mamba_core.ops.spec import REGISTRY, OpSpec, register

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_") and _m.name != "spec":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["REGISTRY", "OpSpec", "register"]
