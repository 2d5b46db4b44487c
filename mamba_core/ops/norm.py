"""RMSNorm: plain, gated (Mamba-2/3 output norm) and fused with the residual add.

rmsnorm(x, weight, eps, z=None, group_size=None, norm_before_gate=False)
    x: (..., E), weight: (E,), z: (..., E) or None. Normalisation runs over groups of
    ``group_size`` channels (default: all E). With a gate z:
      norm_before_gate=False: y = rmsnorm(x * silu(z)) * w   (the Mamba-2 default)
      norm_before_gate=True:  y = rmsnorm(x) * w * silu(z)
    rmsnorm(v) = v / sqrt(mean(v^2 over the group) + eps).

add_rmsnorm(x, residual, weight, eps, residual_in_fp32=True)
    x: (..., D), residual: (..., D) or None. residual_out = residual + x (x alone when None),
    kept in float32 at least when residual_in_fp32; y = rmsnorm(residual_out) * w in x's dtype.
    Returns (y, residual_out).
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims, check_divides
from mamba_core.ops.activations import silu, silu_ref
from mamba_core.ops.spec import OpSpec, register


# ---- references ---------------------------------------------------------------------------
def _rms_groups_ref(v, group_size, eps):
    E = v.shape[-1]
    g = v.reshape(v.shape[:-1] + (E // group_size, group_size))
    g = g / np.sqrt(np.mean(g * g, axis=-1, keepdims=True) + eps)
    return g.reshape(v.shape)


def rmsnorm_ref(x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """Gated, grouped RMSNorm in float64 (see the module docstring)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    gs = group_size or x.shape[-1]
    if z is None:
        return _rms_groups_ref(x, gs, eps) * w
    gate = silu_ref(z)
    if norm_before_gate:
        return _rms_groups_ref(x, gs, eps) * w * gate
    return _rms_groups_ref(x * gate, gs, eps) * w


def add_rmsnorm_ref(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """(rmsnorm(residual + x) * w, residual + x) in float64."""
    x = np.asarray(x, np.float64)
    res = x if residual is None else np.asarray(residual, np.float64) + x
    return rmsnorm_ref(res, weight, eps), res


# ---- default compositions -----------------------------------------------------------------
def _rms_groups(xp, v, group_size, eps):
    E = v.shape[-1]
    g = xp.reshape(v, tuple(v.shape[:-1]) + (E // group_size, group_size))
    g = g / xp.sqrt(xp.mean(g * g, axis=-1, keepdims=True) + eps)
    return xp.reshape(g, tuple(v.shape))


def rmsnorm(xp, x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """Gated, grouped RMSNorm. x, z: (..., E); weight: (E,). Computes in >= float32."""
    dtype = x.dtype
    wide = _wide(xp, dtype)
    v = xp.astype(x, wide)
    gs = group_size or x.shape[-1]
    w = xp.astype(weight, wide)
    if z is None:
        y = _rms_groups(xp, v, gs, eps) * w
    else:
        gate = silu(xp, xp.astype(z, wide))
        if norm_before_gate:
            y = _rms_groups(xp, v, gs, eps) * w * gate
        else:
            y = _rms_groups(xp, v * gate, gs, eps) * w
    return xp.astype(y, dtype)


def add_rmsnorm(xp, x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """(rmsnorm(residual + x) * w, residual + x). x, residual: (..., D); weight: (D,)."""
    res = x if residual is None else residual + x
    if residual_in_fp32:
        res = xp.astype(res, _wide(xp, res.dtype))
    y = rmsnorm(xp, res, weight, eps)
    return xp.astype(y, x.dtype), res


def _wide(xp, dtype):
    """float64 stays float64; everything narrower computes in float32."""
    return xp.float64 if dtype == xp.float64 else xp.float32


# ---- validation ---------------------------------------------------------------------------
def validate_rmsnorm(x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    d = Dims("rmsnorm")
    d.check("weight", weight, ("E",))
    d.check("x", x, tuple([None] * (x.ndim - 1)) + ("E",))
    if z is not None and tuple(z.shape) != tuple(x.shape):
        raise ShapeError(f"rmsnorm: gate 'z' must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if group_size is not None:
        check_divides("rmsnorm", "E (channels) by group_size", d["E"], group_size)


def validate_add_rmsnorm(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    d = Dims("add_rmsnorm")
    d.check("weight", weight, ("D",))
    d.check("x", x, tuple([None] * (x.ndim - 1)) + ("D",))
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ShapeError(
            f"add_rmsnorm: 'residual' must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
        )


register(OpSpec("rmsnorm", "norm", rmsnorm_ref, rmsnorm, validate_rmsnorm))
register(OpSpec("add_rmsnorm", "norm", add_rmsnorm_ref, add_rmsnorm, validate_add_rmsnorm))
