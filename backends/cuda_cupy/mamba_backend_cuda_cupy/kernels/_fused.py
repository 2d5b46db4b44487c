"""Elementwise glue of the SSD wrapper (kernels/ssd.py) fused into single CuPy kernels.

At the benchmark shape every (B, L, H, P) array is 134 MB in float32, and the array-API
compositions of the skip, the gate and their backward make a pass over memory (and a temporary)
per operation: ~3 ms of the SSD forward's 4.9 ms and ~6 ms of its backward around the scan
kernels (H100, run 10). Each function below is one pass: an ``ElementwiseKernel`` (NVRTC, like
the .cu sources; compiled once per flag combination and dtype), the same formulas as the core's
compositions (mamba_core/ops/ssd.py ``_skip_gate``, activations.sigmoid: the overflow-free
form). With NumPy arrays (the CPU tests of the glue) they run those compositions.

    skip_gate(xp, y0, x, D, z)           -> (y0 + D x) silu(z)                  (forward)
    gate_cotangent(xp, dy, z)            -> dy silu(z)                          (dL/dy0)
    skip_gate_grads(xp, dt, GB, x, dy0, D, y0, dy, z)
                                         -> (dx = dt GB + D dy0,
                                             dz = dy (y0 + D x) silu'(z) or None)

Shapes: y0, x, z, dy, dy0, GB (B, L, H, P); dt (B, L, H, P) (a broadcast view is fine); D (H,) or
(H, P) or None. Everything is computed and returned in the dtype of x (float32 or float64).
"""

from __future__ import annotations

import numpy as np

from mamba_backend_cuda_cupy.kernels._common import api, dsilu, silu

# the core's overflow-free sigmoid, as CUDA C (T: the kernel's dtype)
_SIG = "T _e = exp(-fabs({v})); T {s} = {v} >= (T)0 ? (T)1 / ((T)1 + _e) : _e / ((T)1 + _e);"

_KERNELS: dict = {}


def _kernel(xp, name: str, params: str, outs: str, body: str):
    k = _KERNELS.get(name)
    if k is None:
        k = _KERNELS[name] = xp.ElementwiseKernel(params, outs, body, "mamba_cupy_" + name)
    return k


def _dcol(D, wd):
    """D as an (H, 1) or (H, P) array that broadcasts against (..., H, P)."""
    Dw = D.astype(wd, copy=False)
    return Dw[:, None] if D.ndim == 1 else Dw


def skip_gate(xp, y0, x, D, z):
    """(y0 + D x) * silu(z), in x's dtype; D and z optional."""
    wd = x.dtype
    if xp is np:
        from mamba_core.ops import ssd as _ops

        return _ops._skip_gate(api(np), y0, x, D, z, wd).astype(wd, copy=False)
    if D is None and z is None:
        return y0.astype(wd)
    body = "T v = y0;"
    args, params = [y0.astype(wd, copy=False)], ["T y0"]
    if D is not None:
        body += " v += d * x;"
        args += [_dcol(D, wd), x]
        params += ["T d", "T x"]
    if z is not None:
        body += " " + _SIG.format(v="z", s="s") + " v *= z * s;"
        args.append(z.astype(wd, copy=False))
        params.append("T z")
    name = f"skip_gate_{int(D is not None)}{int(z is not None)}"
    return _kernel(xp, name, ", ".join(params), "T y", body + " y = v;")(*args)


def gate_cotangent(xp, dy, z):
    """dy * silu(z) (dy when z is None), in dy's dtype."""
    if z is None:
        return dy
    if xp is np:
        return dy * silu(np, z.astype(dy.dtype, copy=False))
    body = _SIG.format(v="z", s="s") + " g = dy * (z * s);"
    return _kernel(xp, "gate_cot", "T dy, T z", "T g", body)(dy, z.astype(dy.dtype, copy=False))


def skip_gate_grads(xp, dt, GB, x, dy0, D, y0, dy, z):
    """(dx, dz): dx = dt GB + D dy0 (the scan's input gradient plus the skip's);
    dz = dy (y0 + D x) silu'(z), None without z."""
    wd = x.dtype
    if xp is np:
        dx = dt * GB
        Dx = None if D is None else _dcol(D, wd)
        if Dx is not None:
            dx = dx + Dx * dy0
        dz = None
        if z is not None:
            pre = y0 if Dx is None else y0 + Dx * x
            dz = dy * pre * dsilu(np, z.astype(wd, copy=False))
        return dx, dz
    hd, hz = D is not None, z is not None
    params, args = ["T dt", "T gb"], [dt, GB]
    body = "T v = dt * gb;"
    if hd:
        params += ["T d", "T dy0"]
        args += [_dcol(D, wd), dy0]
        body += " v += d * dy0;"
    body += " dx = v;"
    outs = "T dx"
    if hz:
        params += ["T x", "T y0", "T dy", "T z"]
        args += [x, y0, dy, z.astype(wd, copy=False)]
        pre = "y0 + d * x" if hd else "y0"
        body += (" " + _SIG.format(v="z", s="s")
                 + f" dz = dy * ({pre}) * (s * ((T)1 + z * ((T)1 - s)));")
        outs += ", T dz"
    name = f"skip_gate_grads_{int(hd)}{int(hz)}"
    out = _kernel(xp, name, ", ".join(params), outs, body)(*args)
    return (out[0], out[1]) if hz else (out, None)
