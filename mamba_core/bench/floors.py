"""The two ceilings of a device, measured at the start of a run, and the floor of a figure.

bandwidth: bytes/s of a large copy, counting bytes read plus bytes written (NumPy ``copyto`` on
    the CPU, for NumPy and torch-on-CPU backends alike; ``Tensor.copy_`` for torch on CUDA; ``cupy.copyto`` for CuPy), over arrays far larger than
    the caches.
peak:      float32 flops/s of a large matrix product (2 n^3 flops) through the backend's library
    (NumPy's BLAS on the CPU, torch/cuBLAS on CUDA, CuPy/cuBLAS).
Both are the best of a few repeats (a ceiling is what the device can reach).

floor time = max(bytes / bandwidth, flops / peak): no implementation runs much faster. A figure
printed against its floor reads as "x times the floor" (1.0 = at the physical limit).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from mamba_core.bench.timing import synchronize


@dataclasses.dataclass
class Ceilings:
    device: str  # "cpu", "cuda:0 (NVIDIA H100 ...)", ...
    bandwidth: float  # bytes/s
    peak: float  # flops/s (float32)
    copy_bytes: int
    matmul_n: int

    def floor(self, bytes_: float, flops: float) -> float:
        """Seconds: the larger of the memory time and the arithmetic time."""
        return max(bytes_ / self.bandwidth, flops / self.peak)

    def bound(self, bytes_: float, flops: float) -> str:
        """Which ceiling sets the floor: 'memory' or 'compute'."""
        return "memory" if bytes_ / self.bandwidth >= flops / self.peak else "compute"


def _best(fn, sync, repeats):
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(kind: str, quick: bool = False) -> Ceilings:
    """Ceilings of the device that arrays of ``kind`` (see timing.array_kind) live on."""
    n_copy = (1 << 23) if quick else (1 << 25)  # float32 elements: 32 MiB / 128 MiB per buffer
    n_mm = 1024 if quick else 2048
    repeats = 3 if quick else 5
    if kind in ("numpy", "other", "torch-cpu"):  # one CPU: measured once, through NumPy
        src = np.random.default_rng(0).random(n_copy, dtype=np.float32) + 0.5
        dst = np.empty_like(src)
        t_copy = _best(lambda: np.copyto(dst, src), lambda: None, repeats)
        a = np.random.default_rng(1).standard_normal((n_mm, n_mm), dtype=np.float32)
        b = np.random.default_rng(2).standard_normal((n_mm, n_mm), dtype=np.float32)
        t_mm = _best(lambda: a @ b, lambda: None, repeats)
        device = "cpu"
    elif kind == "torch-cuda":
        import torch

        dev = "cuda"
        n_copy, n_mm = (1 << 28), 8192  # 1 GiB per buffer; float32 matmul (TF32 left as set)
        g = torch.Generator(device=dev).manual_seed(0)
        src = torch.randn(n_copy, device=dev, generator=g)
        dst = torch.empty_like(src)
        sync = lambda: synchronize(kind="torch-cuda")  # noqa: E731
        t_copy = _best(lambda: dst.copy_(src), sync, repeats)
        a = torch.randn(n_mm, n_mm, device=dev, generator=g)
        b = torch.randn(n_mm, n_mm, device=dev, generator=g)
        t_mm = _best(lambda: a @ b, sync, repeats)
        device = f"cuda:0 ({torch.cuda.get_device_name(0)})"
    elif kind == "cupy":
        import cupy

        n_copy, n_mm = (1 << 28), 8192
        src = cupy.random.standard_normal(n_copy, dtype=cupy.float32)
        dst = cupy.empty_like(src)
        sync = lambda: synchronize(kind="cupy")  # noqa: E731
        t_copy = _best(lambda: cupy.copyto(dst, src), sync, repeats)
        a = cupy.random.standard_normal((n_mm, n_mm), dtype=cupy.float32)
        b = cupy.random.standard_normal((n_mm, n_mm), dtype=cupy.float32)
        t_mm = _best(lambda: a @ b, sync, repeats)
        props = cupy.cuda.runtime.getDeviceProperties(0)
        device = f"cuda:0 ({props['name'].decode() if isinstance(props['name'], bytes) else props['name']})"
    else:  # pragma: no cover
        raise ValueError(f"no ceilings for array kind {kind!r}")
    return Ceilings(device=device, bandwidth=2 * 4 * n_copy / t_copy, peak=2 * n_mm**3 / t_mm,
                    copy_bytes=2 * 4 * n_copy, matmul_n=n_mm)
