"""CUDA C kernels (NVRTC through cupy.RawModule) of the cuda_cupy backend, one module per op family.

Each public module here exports ``KERNELS: dict[op name -> callable]`` with the op's public
signature (mamba_core.ops); they are merged into the backend's kernel table. A module whose
import fails (no cupy installed) contributes nothing, and ``mamba-core backends`` shows the
backend running the default compositions for those ops.

``MAMBA_CUPY_DISABLE=op1,op2`` (read when the table is first built) leaves those ops out, so they
run the default composition: a switch to certify the rest if one kernel misbehaves on a device.
"""

from __future__ import annotations

import sys

from mamba_core.backend import collect_kernels

IMPORT_ERRORS: dict[str, str] = {}


def collect() -> dict:
    table = collect_kernels(sys.modules[__name__], "cuda_cupy", IMPORT_ERRORS)
    from mamba_backend_cuda_cupy._compile import disabled_ops

    for name in disabled_ops():
        table.pop(name, None)
    return table
