"""Causal depthwise conv1d kernels (cuda/conv1d.cu): forward, step and VJP.

Ops (signatures and math: mamba_core/ops/conv1d.py):
    causal_conv1d(x, weight, bias, initial_state, activation)          -> (y, final_state)
    causal_conv1d_step(x, conv_state, weight, bias, activation)        -> (y, new_state)
    causal_conv1d_vjp((dy, dfinal), x, weight, bias, initial_state, activation) -> dict

Kernels: blocks of 32 channels x 8 time chunks, a thread a channel over TC consecutive times
(loads of several times issued together; a warp reads 32 consecutive channels of one time).
Forward: one kernel writes y and the final state (x read once, y written once). Backward: one
kernel recomputes du = dy act'(pre) with a K-1 halo past its chunk, writes dx (and the initial
state's gradient, dfinal added) and its block's dw/db partials (B ceil(L / (8 TC)), K + 1, C);
conv1d_dw_sum adds them in a fixed order (deterministic, no atomics) into dw (C, K) and db (C).
TC: FWD_TIMES and BWD_TIMES below, or MAMBA_CUPY_CONV_TC="fwd,bwd" (tuning). Empty inputs run
the default composition. The step kernel (conv1d_step) is a thread per (row, channel).
K <= 8 (the kernels are instantiated for K = 1..8); wider kernels run the default composition.

Memory floors at B=8, L=2048, C=2304 float32 (151 MB an array, ~3.0 TB/s):
    forward           x in, y out                         2 x 151 MB: 0.10 ms
    backward          x, dy in, dx out                    3 x 151 MB: 0.15 ms
        forward + backward                                            0.25 ms
    Measured (H100, 2026-11-24, benchmarks/results/gpu-20261124-h100 run 7): 0.177 / 0.403 ms
    (torch_triton 0.176 / 0.644). The backward it replaced, in three kernels moving about
    9 x 151 MB, took 1.16 ms.
"""

from __future__ import annotations

import os

import numpy as np

from mamba_backend_cuda_cupy._compile import ctype, function
from mamba_backend_cuda_cupy.kernels._common import default, runs_here, wide

KMAX = 8
THREADS = 256
V2_BLOCK = (32, 8)  # (CONV2_TX channels, CONV2_TY time chunks) in conv1d.cu
FWD_TIMES = 16  # times a thread of the forward
BWD_TIMES = 32  # times a thread of the backward (its K - 1 halo is recomputed)


def times_per_thread() -> tuple[int, int]:
    """(forward, backward) times a thread takes: FWD_TIMES, BWD_TIMES, or MAMBA_CUPY_CONV_TC."""
    raw = os.environ.get("MAMBA_CUPY_CONV_TC", "").strip()
    if not raw:
        return FWD_TIMES, BWD_TIMES
    try:
        f, b = (int(v) for v in raw.split(","))
        if f >= 1 and b >= 1:
            return f, b
    except ValueError:
        pass
    raise ValueError(f"MAMBA_CUPY_CONV_TC={raw!r}: expected two positive integers 'fwd,bwd' "
                     f"(default {FWD_TIMES},{BWD_TIMES})")


def v2_grid(Bsz: int, L: int, C: int, tc: int) -> tuple[int, int]:
    """Grid of the sequence kernels: (B * ceil(L / (CONV2_TY tc)), ceil(C / CONV2_TX)); its first
    entry is also the number of dw/db partial rows of the backward."""
    tx, ty = V2_BLOCK
    return Bsz * -(-L // (ty * tc)), -(-C // tx)


def blocks(n: int, threads: int = THREADS) -> int:
    return max(1, -(-n // threads))


def _ptr(a):
    return a if a is not None else np.uint64(0)


def _act(activation) -> np.int32:
    return np.int32(1 if activation == "silu" else 0)


def _takes(x, weight, *arrays):
    return (runs_here(x, weight, *arrays) and type(x).__module__.startswith("cupy")
            and weight.shape[1] <= KMAX)


def _prep(cp, x, weight, bias, initial_state, wd):
    X = cp.ascontiguousarray(x, dtype=wd)
    W = cp.ascontiguousarray(weight, dtype=wd)
    Bi = None if bias is None else cp.ascontiguousarray(bias, dtype=wd)
    I = None if initial_state is None else cp.ascontiguousarray(initial_state, dtype=wd)
    return X, W, Bi, I


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """Causal depthwise conv1d. x: (B, L, C); weight: (C, K); state: (B, C, K)."""
    if not _takes(x, weight, bias, initial_state) or not x.size:  # empty: the composition
        return default("causal_conv1d")(x, weight, bias, initial_state, activation)
    import cupy as cp

    Bsz, L, C = x.shape
    K = weight.shape[1]
    wd = wide(cp, x.dtype)
    X, W, Bi, I = _prep(cp, x, weight, bias, initial_state, wd)
    Y = cp.empty((Bsz, L, C), wd)
    FIN = cp.empty((Bsz, C, K), wd)  # every slot written by the kernel
    tc = times_per_thread()[0]
    function("conv1d.cu", f"conv1d_fwd_v2<{ctype(wd)}, {K}>")(
        v2_grid(Bsz, L, C, tc), V2_BLOCK,
        (X, W, _ptr(Bi), _ptr(I), Y, FIN, np.int32(Bsz), np.int32(L), np.int32(C),
         _act(activation), np.int32(tc)))
    return Y.astype(x.dtype, copy=False), FIN.astype(x.dtype, copy=False)


def causal_conv1d_step(x, conv_state, weight, bias=None, activation=None):
    """One token. x: (B, C); conv_state: (B, C, K). Returns (y (B, C), new_state)."""
    if not _takes(x, weight, conv_state, bias):
        return default("causal_conv1d_step")(x, conv_state, weight, bias, activation)
    import cupy as cp

    Bsz, C = x.shape
    K = weight.shape[1]
    wd = wide(cp, x.dtype, conv_state.dtype)
    X = cp.ascontiguousarray(x, dtype=wd)
    S = cp.ascontiguousarray(conv_state, dtype=wd)
    W = cp.ascontiguousarray(weight, dtype=wd)
    Bi = None if bias is None else cp.ascontiguousarray(bias, dtype=wd)
    Y = cp.empty((Bsz, C), wd)
    NS = cp.empty((Bsz, C, K), wd)
    n = Bsz * C
    if n:
        function("conv1d.cu", f"conv1d_step<{ctype(wd)}>")(
            (blocks(n),), (THREADS,),
            (X, S, W, _ptr(Bi), Y, NS, np.int32(Bsz), np.int32(C), np.int32(K), _act(activation)))
    return Y.astype(x.dtype, copy=False), NS.astype(conv_state.dtype, copy=False)


def causal_conv1d_vjp(cotangent, x, weight, bias=None, initial_state=None, activation=None):
    """VJP of causal_conv1d; cotangent = (dy | None, dfinal_state | None)."""
    dy, dfin = cotangent
    if not _takes(x, weight, bias, initial_state, dy, dfin) or not x.size:
        return default("causal_conv1d_vjp")(cotangent, x, weight, bias, initial_state, activation)
    import cupy as cp

    Bsz, L, C = x.shape
    K = weight.shape[1]
    wd = wide(cp, x.dtype)
    X, W, Bi, I = _prep(cp, x, weight, bias, initial_state, wd)
    DY = None if dy is None else cp.ascontiguousarray(dy, dtype=wd)
    DF_in = None if dfin is None else cp.ascontiguousarray(dfin, dtype=wd)
    return _vjp(cp, X, W, Bi, I, DY, DF_in, activation, x, weight, bias, initial_state, wd)


def _vjp(cp, X, W, Bi, I, DY, DF_in, activation, x, weight, bias, initial_state, wd):
    """The backward: one pass over x and dy (conv1d_bwd_v2), then the dw/db partials' sum."""
    Bsz, L, C = X.shape
    K = W.shape[1]
    T = ctype(wd)
    tc = times_per_thread()[1]
    grid = v2_grid(Bsz, L, C, tc)
    DX = cp.empty((Bsz, L, C), wd)
    DI = None if I is None else cp.empty((Bsz, C, K), wd)
    P = cp.empty((grid[0], K + 1, C), wd)  # every entry written by the kernel
    function("conv1d.cu", f"conv1d_bwd_v2<{T}, {K}>")(
        grid, V2_BLOCK,
        (X, W, _ptr(Bi), _ptr(I), _ptr(DY), _ptr(DF_in), DX, _ptr(DI), P, np.int32(Bsz),
         np.int32(L), np.int32(C), _act(activation), np.int32(tc)))
    DW = cp.empty((C, K), wd)
    DB = None if Bi is None else cp.empty((C,), wd)
    function("conv1d.cu", f"conv1d_dw_sum<{T}>")(
        (blocks(C, 32), K + 1), (32, 8), (P, DW, _ptr(DB), np.int32(grid[0]), np.int32(C), np.int32(K)))
    grads = {"x": DX.astype(x.dtype, copy=False), "weight": DW.astype(weight.dtype, copy=False)}
    if bias is not None:
        grads["bias"] = DB.astype(bias.dtype, copy=False)
    if initial_state is not None:
        grads["initial_state"] = DI.astype(initial_state.dtype, copy=False)
    return grads


KERNELS = {"causal_conv1d": causal_conv1d, "causal_conv1d_step": causal_conv1d_step,
           "causal_conv1d_vjp": causal_conv1d_vjp}
