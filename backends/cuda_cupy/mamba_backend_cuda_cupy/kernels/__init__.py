"""CUDA C kernels (NVRTC through cupy.RawModule) of the cuda_cupy backend, one module per op family.

Each public module here exports ``KERNELS: dict[op name -> callable]`` with the op's public
signature (mamba_core.ops); they are merged into the backend's kernel table. A module whose
import fails (no cupy installed) contributes nothing, and ``mamba-core backends`` shows the
backend running the default compositions for those ops.

``MAMBA_CUPY_DISABLE=op1,op2`` (read when the table is first built) leaves those ops out, so they
run the default composition: a switch to certify the rest if one kernel misbehaves on a device.
"""

from __future__ import annotations

import importlib
import pkgutil

IMPORT_ERRORS: dict[str, str] = {}


def collect() -> dict:
    table: dict = {}
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{__name__}.{m.name}")
        except ImportError as exc:  # cupy missing: fall back to default compositions
            IMPORT_ERRORS[m.name] = f"{type(exc).__name__}: {exc}"
            continue
        for name, fn in getattr(mod, "KERNELS", {}).items():
            if name in table:
                raise RuntimeError(f"cuda_cupy: op {name!r} has kernels in two modules")
            table[name] = fn
    from mamba_backend_cuda_cupy._compile import disabled_ops

    for name in disabled_ops():
        table.pop(name, None)
    return table
