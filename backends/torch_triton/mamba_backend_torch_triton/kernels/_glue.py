"""Shared torch glue of the Mamba-1 scan, norm and conv1d Triton kernels (private).

``runs_here(*tensors)``: whether the Triton kernels take a call. They do when every floating
tensor given is float32, bfloat16 or float16 and lives on a CUDA device (or on the CPU under
TRITON_INTERPRET=1). They do NOT for float64: Triton's fp64 path is slow and the project
certifies float64 on the default composition, so ``default(op)`` runs the core's default
composition in array_api_compat.torch instead (the same math; documented fallback, not an
error). Kernels accumulate and carry states in float32 and write outputs in the input dtype.
"""

from __future__ import annotations

import functools
import os

import torch
import triton.language as tl

FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def runs_here(*tensors) -> bool:
    """True when the Triton kernels can take these tensors (None entries are ignored)."""
    seen = False
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            return False
        if t.is_floating_point() and t.dtype not in FAST_DTYPES:
            return False
        if t.device.type == "cuda":
            pass
        elif not (t.device.type == "cpu" and interpreting()):
            return False
        seen = True
    return seen


@functools.lru_cache(maxsize=None)
def default(op: str):
    """The core's default composition of ``op`` over array_api_compat.torch, creating arrays on
    the device of the call's first tensor argument (the plain namespace would create them on
    the CPU: a fallback on CUDA tensors that builds e.g. zeros would then mix devices)."""
    from mamba_core.ops import REGISTRY

    fn = REGISTRY[op].default

    def call(*args, **kwargs):
        dev = _first_device(args) or _first_device(kwargs.values())
        return fn(_namespace(dev), *args, **kwargs)

    return call


@functools.lru_cache(maxsize=None)
def _namespace(dev):
    import array_api_compat.torch as xp

    from mamba_backend_torch_triton.namespace import DeviceNamespace

    return xp if dev is None or dev.type == "cpu" else DeviceNamespace(xp, dev)


def _first_device(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.device
        if isinstance(v, (tuple, list)):
            d = _first_device(v)
            if d is not None:
                return d
    return None


def pow2(n: int, lo: int = 1) -> int:
    """The smallest power of two >= max(n, lo)."""
    p = 1
    while p < max(n, lo):
        p *= 2
    return p


def last_contig(t):
    """``t`` with a unit stride on its last axis (copying only when needed), or None."""
    if t is None:
        return None
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def tl_dtype(dtype):
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]
