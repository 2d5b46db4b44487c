"""Shared helpers of the torch_triton tests."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[3] / "benchmarks"


def load_benchmark_script(relpath: str):
    """benchmarks/RELPATH imported as a module (skip, saying why, where the checkout lacks it)."""
    path = BENCHMARKS / relpath
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
