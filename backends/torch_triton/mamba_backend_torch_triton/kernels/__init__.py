"""Triton kernels of the torch_triton backend, one module per op family.

Each public module here exports ``KERNELS: dict[op name -> callable]`` with the op's public
signature (mamba_core.ops); they are merged into the backend's kernel table. Some also export
``SAVING: dict[op name -> SavingForm]`` (mamba_core/ops/saving.py), merged into the backend's
saving forms. A module whose
import fails (no triton installed) contributes nothing, and ``mamba-core backends`` shows the
backend running the default compositions for those ops.
"""

from __future__ import annotations

import sys

from mamba_core.backend import collect_kernels

IMPORT_ERRORS: dict[str, str] = {}


def collect(table_name: str = "KERNELS") -> dict:
    return collect_kernels(sys.modules[__name__], "torch_triton", IMPORT_ERRORS, table_name)
