"""Shared glue of the SSD and Mamba-3 Triton kernels (private).

- ``can_run(x, *others)``: whether the Triton kernels take this call. They do for torch tensors
  in float32 / bfloat16 / float16 on a CUDA device (or on the CPU under TRITON_INTERPRET=1). They
  do NOT for float64 (fp64 tensor-core dots are slow or absent: the default composition is used),
  nor for other devices; ``fallback(op)`` then runs the core's default composition in the
  backend's ``xp``, which is the same math.
- ``dot_precision(dtype)``: what ``tl.dot`` uses for float32 operands: "ieee" by default (exact
  float32 FMAs, no tensor cores; meets conformance's 2e-4). MAMBA_TRITON_FP32_DOT=tf32x3 opts in
  to three tf32 tensor-core products of hi/lo halves (float32-level error): on an H100 it made
  the float32 Mamba-3 forward at the benchmark shape 8.8x faster (3.26 vs 28.6 ms) and passed
  the float32 op certificate, but under Triton 3.6 the Mamba-3 backward kernel compiled with it
  faults (illegal address) at N = 4, P = 4, Qk = 64 (mixer:mamba3 chunk>L), so it is not the
  default (benchmarks/results/gpu-20261123-h100, runs 7-8). "tf32" (one product, ~1e-3
  relative; MAMBA_TRITON_TF32=1 is its older spelling) fails float32 conformance. bf16/fp16
  operands always use the tensor cores.
- ``launch_fitting(key, candidates, launch)``: run ``launch(cfg)`` with the first launch config
  whose compiled kernel fits the GPU (shared memory, registers-per-block), remembering the
  choice per ``key``. The chunked scans' shared memory grows with the chunk length Qk, N, P and
  the software-pipelining depth (num_stages), and differs between Triton releases (Triton 3.9,
  sm_90: the SSD forward at Qk = 64, N = 128 needs 61 KB in bf16 but 233 KB in float32 with 3
  stages, 98 KB with 1; the H100 allows 227 KB), so the host glue lists configs from the fastest
  down and lets the first launch find the one that fits, instead of trusting a formula.
"""

from __future__ import annotations

import os

import torch
import triton.language as tl

from mamba_backend_torch_triton.kernels._glue import default, interpreting  # noqa: F401 (re-exported)

_FAST = (torch.float32, torch.bfloat16, torch.float16)


def can_run(x, *others) -> bool:
    if not isinstance(x, torch.Tensor) or x.dtype not in _FAST:
        return False
    if x.device.type == "cuda":
        ok_dev = True
    else:
        ok_dev = x.device.type == "cpu" and interpreting()
    if not ok_dev:
        return False
    for o in others:
        if o is not None and isinstance(o, torch.Tensor) and o.is_floating_point() and o.dtype == torch.float64:
            return False
    return True


try:  # raised by a launch whose compiled kernel needs more than the device has
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - older triton
    from triton.runtime.autotuner import OutOfResources

_FITTED: dict = {}


def launch_fitting(key, candidates, launch):
    """``launch(cfg)`` for the first ``cfg`` in ``candidates`` whose kernel fits the device.

    A config that raises OutOfResources (Triton checks shared memory and threads when it loads
    the compiled kernel, before anything runs) is skipped; the first that launches is remembered
    for ``key`` (a hashable naming everything that changes the kernel's size: dtypes, tile
    sizes, constexpr flags). Returns ``(launch(cfg), cfg)``, or ``(None, None)`` when no
    candidate fits (the caller then runs the default composition). The interpreter never
    raises, so there the first candidate runs.
    """
    cfg = _FITTED.get(key)
    if cfg is not None:
        return launch(cfg), cfg
    for cfg in candidates:
        try:
            out = launch(cfg)
        except OutOfResources:
            continue
        _FITTED[key] = cfg
        return out, cfg
    return None, None


#: the core's default composition of an op on the tensors' device (one helper: _glue.default)
fallback = default


def pow2(n: int, lo: int = 16) -> int:
    p = 1
    while p < n:
        p *= 2
    return max(p, lo)


def dot_dtype(dtype):
    """The tl dtype that tl.dot operands are cast to for inputs of ``dtype``.

    Under TRITON_INTERPRET=1 always float32: the Triton 3.9 interpreter's tl.dot on bf16
    operands returns garbage (raw 16-bit patterns multiplied), so the interpreter checks the
    bf16 loads/stores and float32 accumulation, and the GPU check (gpu_check.py) the bf16 dots.
    """
    if interpreting():
        return tl.float32
    if dtype == torch.bfloat16:
        return tl.bfloat16
    if dtype == torch.float16:
        return tl.float16
    return tl.float32


FP32_DOTS = ("ieee", "tf32x3", "tf32")


def dot_precision(dtype) -> str:
    if dtype != torch.float32:
        return "ieee"  # unused: 16-bit operands take the tensor cores whatever it says
    if os.environ.get("MAMBA_TRITON_TF32") == "1":
        return "tf32"
    choice = os.environ.get("MAMBA_TRITON_FP32_DOT", "ieee")
    if choice not in FP32_DOTS:
        raise ValueError(f"MAMBA_TRITON_FP32_DOT={choice!r}: expected one of {FP32_DOTS}")
    return choice


def c(t):
    """Contiguous, or None."""
    return None if t is None else t.contiguous()


def num_warps(rows: int, width: int) -> int:
    return 4 if rows * width <= 64 * 64 else 8
