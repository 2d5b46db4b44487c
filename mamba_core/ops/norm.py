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

VJPs (cotangent first, then exactly the forward's arguments; gradients keyed by argument name):
rmsnorm_vjp(dy, x, weight, eps, z, group_size, norm_before_gate) -> {"x", "weight", "z" (given)}
    Per group, with r = 1/sqrt(mean(v^2) + eps) and n = v r (v the normalised input):
    dv = r (dn - n mean(dn n)); then through the gate: dz = dgate * silu'(z).
add_rmsnorm_vjp((dy, dresidual_out), x, residual, weight, eps, residual_in_fp32)
    -> {"x", "weight", "residual" (given)}; dx = dresidual = rmsnorm's dx + dresidual_out.
    Either cotangent entry may be None (zero).
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims, check_divides
from mamba_core.ops.activations import silu, silu_grad, silu_grad_ref, silu_ref
from mamba_core.ops.spec import OpSpec, register
from mamba_core.ops._dtypes import wide as _wide


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




# ---- VJP references ----------------------------------------------------------------------
def _rms_groups_vjp_ref(dn, v, group_size, eps):
    """Gradient wrt v of n = v / sqrt(mean(v^2 over each group) + eps), given dn."""
    shape = v.shape
    G = group_size
    v = v.reshape(-1, G)
    dn = dn.reshape(-1, G)
    dv = np.empty_like(v)
    for i in range(v.shape[0]):  # one normalisation group at a time
        r = 1.0 / np.sqrt(np.mean(v[i] * v[i]) + eps)
        n = v[i] * r
        dv[i] = r * (dn[i] - n * np.mean(dn[i] * n))
    return dv.reshape(shape)


def rmsnorm_vjp_ref(dy, x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """VJP of rmsnorm in float64: {"x", "weight", and "z" when a gate is given}."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    E = x.shape[-1]
    gs = group_size or E
    lead = tuple(range(x.ndim - 1))
    dy = np.zeros(x.shape) if dy is None else np.asarray(dy, np.float64)
    if z is None:
        n = _rms_groups_ref(x, gs, eps)
        return {"x": _rms_groups_vjp_ref(dy * w, x, gs, eps), "weight": (dy * n).sum(axis=lead)}
    z = np.asarray(z, np.float64)
    gate = silu_ref(z)
    if norm_before_gate:
        # y = n(x) * w * gate
        n = _rms_groups_ref(x, gs, eps)
        dx = _rms_groups_vjp_ref(dy * w * gate, x, gs, eps)
        dw = (dy * n * gate).sum(axis=lead)
        dgate = dy * n * w
    else:
        # y = n(x * gate) * w
        v = x * gate
        n = _rms_groups_ref(v, gs, eps)
        dv = _rms_groups_vjp_ref(dy * w, v, gs, eps)
        dx = dv * gate
        dw = (dy * n).sum(axis=lead)
        dgate = dv * x
    return {"x": dx, "weight": dw, "z": dgate * silu_grad_ref(z)}


def add_rmsnorm_vjp_ref(cotangent, x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """VJP of add_rmsnorm in float64: cotangent = (dy, dresidual_out), either may be None."""
    dy, dres_out = cotangent
    x = np.asarray(x, np.float64)
    res = x if residual is None else np.asarray(residual, np.float64) + x
    g = rmsnorm_vjp_ref(dy, res, weight, eps)
    dres = g["x"] if dres_out is None else g["x"] + np.asarray(dres_out, np.float64)
    grads = {"x": dres, "weight": g["weight"]}
    if residual is not None:
        grads["residual"] = dres.copy()
    return grads


# ---- VJP default compositions -------------------------------------------------------------
def _rms_groups_vjp(xp, dn, v, group_size, eps):
    shape = tuple(v.shape)
    gshape = shape[:-1] + (shape[-1] // group_size, group_size)
    g = xp.reshape(v, gshape)
    dg = xp.reshape(dn, gshape)
    r = 1.0 / xp.sqrt(xp.mean(g * g, axis=-1, keepdims=True) + eps)
    n = g * r
    dv = r * (dg - n * xp.mean(dg * n, axis=-1, keepdims=True))
    return xp.reshape(dv, shape)


def _sum_lead(xp, a):
    """Sum over every axis but the last: (..., E) -> (E,)."""
    return xp.sum(xp.reshape(a, (-1, a.shape[-1])), axis=0)


def rmsnorm_vjp(xp, dy, x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """VJP of rmsnorm. dy, x, z: (..., E); weight: (E,). Computes in >= float32.

    Returns {"x", "weight", "z" (when given)}, each in its argument's dtype.
    """
    wide = _wide(xp, x.dtype)
    v = xp.astype(x, wide)
    w = xp.astype(weight, wide)
    gs = group_size or x.shape[-1]
    d = xp.zeros_like(v) if dy is None else xp.astype(dy, wide)
    if z is None:
        n = _rms_groups(xp, v, gs, eps)
        dx = _rms_groups_vjp(xp, d * w, v, gs, eps)
        return {"x": xp.astype(dx, x.dtype), "weight": xp.astype(_sum_lead(xp, d * n), weight.dtype)}
    zw = xp.astype(z, wide)
    gate = silu(xp, zw)
    if norm_before_gate:
        n = _rms_groups(xp, v, gs, eps)
        dx = _rms_groups_vjp(xp, d * w * gate, v, gs, eps)
        dw = _sum_lead(xp, d * n * gate)
        dgate = d * n * w
    else:
        vg = v * gate
        n = _rms_groups(xp, vg, gs, eps)
        dvg = _rms_groups_vjp(xp, d * w, vg, gs, eps)
        dx = dvg * gate
        dw = _sum_lead(xp, d * n)
        dgate = dvg * v
    return {
        "x": xp.astype(dx, x.dtype),
        "weight": xp.astype(dw, weight.dtype),
        "z": xp.astype(dgate * silu_grad(xp, zw), z.dtype),
    }


def add_rmsnorm_vjp(xp, cotangent, x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """VJP of add_rmsnorm. cotangent = (dy, dresidual_out), either None for zero.

    x, residual: (..., D); weight: (D,). Returns {"x", "weight", "residual" (when given)}.
    """
    dy, dres_out = cotangent
    wide = _wide(xp, x.dtype)
    res = xp.astype(x, wide) if residual is None else xp.astype(residual, wide) + xp.astype(x, wide)
    g = rmsnorm_vjp(xp, dy, res, weight, eps)
    dres = g["x"] if dres_out is None else g["x"] + xp.astype(dres_out, wide)
    grads = {"x": xp.astype(dres, x.dtype), "weight": g["weight"]}
    if residual is not None:
        grads["residual"] = xp.astype(dres, residual.dtype)
    return grads


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
register(OpSpec("rmsnorm_vjp", "norm", rmsnorm_vjp_ref, rmsnorm_vjp, vjp_of="rmsnorm"))
register(OpSpec("add_rmsnorm_vjp", "norm", add_rmsnorm_vjp_ref, add_rmsnorm_vjp, vjp_of="add_rmsnorm"))
