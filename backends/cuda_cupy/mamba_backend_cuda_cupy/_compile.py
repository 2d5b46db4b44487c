"""Loading the CUDA C sources shipped in ``cuda/`` and compiling them with NVRTC (cupy.RawModule).

``source(file)`` is the text NVRTC sees: the ``.cu`` file with ``#include "common.cuh"`` replaced
by the header itself (NVRTC compiles from a string and has no directory to search; pasting also
makes CuPy's on-disk cache key cover the header). ``function(file, name_expr)`` compiles a module
for one template instance (``"row_scan<float, 4, false>"``) and caches it for the process; CuPy
caches the compiled binary on disk too (``~/.cupy/kernel_cache``). Options: ``-std=c++17`` and
nothing that relaxes IEEE arithmetic (no ``--use_fast_math``), so results match the reference
to rounding.

Everything here is importable without CuPy; only ``function`` imports it.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
NVRTC_OPTIONS = ("-std=c++17",)
_INCLUDE = re.compile(r'^\s*#include\s+"([A-Za-z0-9_.]+)"\s*$', re.M)


def cu_files() -> list[Path]:
    """Every ``.cu`` source shipped with the package."""
    return sorted(CUDA_DIR.glob("*.cu"))


def source(file: str) -> str:
    """The source NVRTC compiles: ``file`` with its local includes pasted in."""
    text = (CUDA_DIR / file).read_text()

    def paste(m):
        return (CUDA_DIR / m.group(1)).read_text()

    return _INCLUDE.sub(paste, text)


@functools.lru_cache(maxsize=64)
def ctype(dtype) -> str:
    """The C type of a NumPy/CuPy dtype the kernels take (cached: called at every launch)."""
    try:  # a dtype, a scalar type (numpy.float32, as result_type-like helpers return) or a name
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name == "float32":
        return "float"
    if name == "float64":
        return "double"
    raise TypeError(f"cuda_cupy kernels compute in float32 or float64, got {name}")


@functools.lru_cache(maxsize=None)
def function(file: str, name_expr: str):
    """The compiled kernel ``name_expr`` (a template instance) of ``cuda/<file>``, cached."""
    import cupy

    mod = cupy.RawModule(code=source(file), options=NVRTC_OPTIONS, name_expressions=(name_expr,))
    return mod.get_function(name_expr)


def disabled_ops() -> set[str]:
    """Op names listed in ``MAMBA_CUPY_DISABLE`` (comma-separated): they run the default composition."""
    raw = os.environ.get("MAMBA_CUPY_DISABLE", "")
    return {s.strip() for s in raw.split(",") if s.strip()}
