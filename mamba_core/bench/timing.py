"""Timing and memory on the bench's side: no change to the Backend class is needed.

The array type a backend produces decides the clock: NumPy (and torch on the CPU) are timed with
``time.perf_counter`` around the call; torch CUDA tensors with ``torch.cuda.Event`` pairs; CuPy
arrays with ``cupy.cuda.Event`` pairs. ``synchronize(result)`` waits for whatever device the
result lives on. Memory: the tracemalloc peak for NumPy (NumPy reports its buffers to
tracemalloc), ``torch.cuda.max_memory_allocated`` above the baseline on CUDA; None elsewhere.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from typing import Any, Callable

import numpy as np


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    elif obj is not None:
        yield obj


def array_kind(a) -> str:
    """'numpy', 'torch-cpu', 'torch-cuda', 'cupy' or 'other' for one array."""
    mod = type(a).__module__.split(".")[0]
    if isinstance(a, np.ndarray) or mod == "numpy":
        return "numpy"
    if mod == "torch":
        return "torch-cuda" if getattr(a, "is_cuda", False) else "torch-cpu"
    if mod == "cupy":
        return "cupy"
    return "other"


def backend_kind(be) -> str:
    """The array kind of a backend, probed with a one-element array."""
    return array_kind(be.asarray(np.ones(1, np.float32)))


def synchronize(result: Any = None, kind: str | None = None) -> None:
    """Wait until the device work behind ``result`` (or of ``kind``) is done."""
    kinds = {kind} if kind else {array_kind(a) for a in _leaves(result)}
    if "torch-cuda" in kinds:
        import torch

        torch.cuda.synchronize()
    if "cupy" in kinds:
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def time_call(fn: Callable[[], Any], kind: str, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        synchronize(fn(), kind)
    times = []
    if kind == "torch-cuda":
        import torch

        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    elif kind == "cupy":
        import cupy

        for _ in range(repeats):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            synchronize(fn(), kind)
            times.append(time.perf_counter() - t0)
    return times


def median(times: list[float]) -> float:
    return float(statistics.median(times))


def peak_memory(fn: Callable[[], Any], kind: str) -> int | None:
    """Peak bytes allocated while ``fn`` runs once (above what was live before), or None."""
    if kind == "numpy":
        was = tracemalloc.is_tracing()
        if not was:
            tracemalloc.start()
        tracemalloc.clear_traces()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        try:
            fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            if not was:
                tracemalloc.stop()
        return max(int(peak - base), 0)
    if kind == "torch-cuda":
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    if kind == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        base = pool.total_bytes()
        fn()
        cupy.cuda.get_current_stream().synchronize()
        return int(pool.total_bytes() - base)  # pool growth: a lower bound of the peak
    return None
