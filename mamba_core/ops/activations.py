"""Activations: silu, softplus (torch's threshold-20 form), sigmoid, their gradients, and the SiLU
gate silu_gate(x, z) = x * silu(z) with its VJP.

All elementwise, any shape, output shape and dtype = input's. The default compositions are also
the helpers the other ops' compositions call, so each formula lives here once.

Derivatives (``*_grad(xp, x)`` and ``*_grad_ref(x)``, for other ops' VJPs to reuse):
    sigmoid'(x)  = s (1 - s),               s = sigmoid(x)
    silu'(x)     = s (1 + x (1 - s))
    softplus'(x) = sigmoid(x), and exactly 1 above the threshold 20 (torch's rule)
VJPs (``<op>_vjp(xp, dy, x) -> {"x": dy * <op>'(x)}``; dy None means zero).
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import check_floating
from mamba_core.ops.spec import OpSpec, register

SOFTPLUS_THRESHOLD = 20.0


# ---- references (float64 NumPy) ----------------------------------------------------------
def sigmoid_ref(x):
    """sigmoid(x) = 1 / (1 + exp(-x))."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu_ref(x):
    """silu(x) = x * sigmoid(x)."""
    x = np.asarray(x, dtype=np.float64)
    return x * sigmoid_ref(x)


def softplus_ref(x):
    """softplus(x) = log(1 + exp(x)), and x itself above 20 (as torch computes it)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > SOFTPLUS_THRESHOLD, x, np.log1p(np.exp(np.minimum(x, SOFTPLUS_THRESHOLD))))


def inverse_softplus_ref(y):
    """The x with softplus(x) = y, for y > 0: y + log(-expm1(-y))."""
    y = np.asarray(y, dtype=np.float64)
    return y + np.log(-np.expm1(-y))


# ---- default compositions (array API) -----------------------------------------------------
def sigmoid(xp, x):
    """sigmoid(x), overflow-free for any x. x: any shape."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu(xp, x):
    """silu(x) = x * sigmoid(x). x: any shape."""
    return x * sigmoid(xp, x)


def softplus(xp, x):
    """softplus(x) with torch's threshold of 20. x: any shape.

    Below the threshold as max(x, 0) + log1p(exp(-|x|)), which never overflows and creates no
    scalar array (a host-to-device copy, which a CUDA-graph capture must not contain).
    """
    a = xp.abs(x)
    return xp.where(x > SOFTPLUS_THRESHOLD, x, (x + a) / 2 + xp.log1p(xp.exp(-a)))


# ---- derivatives and VJPs: references (float64 NumPy) --------------------------------------
def sigmoid_grad_ref(x):
    """d sigmoid / dx = s (1 - s), with 1 - s as sigmoid(-x): no cancellation in the tails (by
    subtraction, 1 - s keeps no digits past |x| ~ 37 even in float64)."""
    x = np.asarray(x, dtype=np.float64)
    return sigmoid_ref(x) * sigmoid_ref(-x)


def silu_grad_ref(x):
    """d silu / dx = s (1 + x (1 - s)), with 1 - s as sigmoid(-x) (see sigmoid_grad_ref)."""
    x = np.asarray(x, dtype=np.float64)
    return sigmoid_ref(x) * (1.0 + x * sigmoid_ref(-x))


def softplus_grad_ref(x):
    """d softplus / dx = sigmoid(x), and 1 above the threshold (where softplus(x) = x)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > SOFTPLUS_THRESHOLD, 1.0, sigmoid_ref(x))


def _elementwise_vjp_ref(grad_ref, dy, x):
    x = np.asarray(x, dtype=np.float64)
    if dy is None:
        return {"x": np.zeros(x.shape)}
    return {"x": np.asarray(dy, np.float64) * grad_ref(x)}


def sigmoid_vjp_ref(dy, x):
    """{"x": dy * sigmoid'(x)} in float64."""
    return _elementwise_vjp_ref(sigmoid_grad_ref, dy, x)


def silu_vjp_ref(dy, x):
    """{"x": dy * silu'(x)} in float64."""
    return _elementwise_vjp_ref(silu_grad_ref, dy, x)


def softplus_vjp_ref(dy, x):
    """{"x": dy * softplus'(x)} in float64 (gradient 1 above the threshold)."""
    return _elementwise_vjp_ref(softplus_grad_ref, dy, x)


# ---- derivatives and VJPs: default compositions ------------------------------------------
def sigmoid_grad(xp, x):
    """sigmoid'(x) = s (1 - s). x: any shape."""
    s = sigmoid(xp, x)
    return s * (1.0 - s)


def silu_grad(xp, x):
    """silu'(x) = s (1 + x (1 - s)). x: any shape."""
    s = sigmoid(xp, x)
    return s * (1.0 + x * (1.0 - s))


def softplus_grad(xp, x):
    """softplus'(x): sigmoid(x), and 1 above the threshold 20. x: any shape."""
    return xp.where(x > SOFTPLUS_THRESHOLD, xp.ones_like(x), sigmoid(xp, x))


def _elementwise_vjp(xp, grad, dy, x):
    if dy is None:
        return {"x": xp.zeros_like(x)}
    wide = xp.float64 if x.dtype == xp.float64 else xp.float32
    dx = xp.astype(dy, wide) * grad(xp, xp.astype(x, wide))
    return {"x": xp.astype(dx, x.dtype)}


def sigmoid_vjp(xp, dy, x):
    """VJP of sigmoid: {"x": dy * s (1 - s)}. dy, x: same shape; computes in >= float32."""
    return _elementwise_vjp(xp, sigmoid_grad, dy, x)


def silu_vjp(xp, dy, x):
    """VJP of silu: {"x": dy * silu'(x)}. dy, x: same shape; computes in >= float32."""
    return _elementwise_vjp(xp, silu_grad, dy, x)


def softplus_vjp(xp, dy, x):
    """VJP of softplus: {"x": dy * softplus'(x)} (1 above the threshold). Computes in >= float32."""
    return _elementwise_vjp(xp, softplus_grad, dy, x)


# ---- the SiLU gate x * silu(z) ------------------------------------------------------------
# Mamba-3's output gate, the gated MLP's a * silu(g) and Mamba-2's MLP slice: one op (and one
# VJP), so a backend can run each as one pass over memory instead of silu, a product, and in the
# backward two products and silu_vjp.
def silu_gate_ref(x, z):
    """x * silu(z) in float64."""
    return np.asarray(x, dtype=np.float64) * silu_ref(z)


def silu_gate_vjp_ref(dy, x, z):
    """{"x": dy silu(z), "z": dy x silu'(z)} in float64 (zeros for dy None)."""
    x, z = np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
    if dy is None:
        return {"x": np.zeros(x.shape), "z": np.zeros(z.shape)}
    dy = np.asarray(dy, dtype=np.float64)
    return {"x": dy * silu_ref(z), "z": dy * x * silu_grad_ref(z)}


def silu_gate(xp, x, z):
    """x * silu(z), the SiLU gate. x, z: the same shape."""
    return x * silu(xp, z)


def silu_gate_vjp(xp, dy, x, z):
    """VJP of silu_gate: {"x": dy silu(z), "z": dy x silu'(z)}. dy, x, z: same shape; >= float32.

    Each gradient comes back in its argument's dtype; dy None gives zeros."""
    if dy is None:
        return {"x": xp.zeros_like(x), "z": xp.zeros_like(z)}
    wide = xp.float64 if xp.float64 in (x.dtype, z.dtype) else xp.float32
    d, zw = xp.astype(dy, wide), xp.astype(z, wide)
    return {"x": xp.astype(d * silu(xp, zw), x.dtype),
            "z": xp.astype(d * xp.astype(x, wide) * silu_grad(xp, zw), z.dtype)}


def validate_silu_gate(x, z):
    for name, arr in (("x", x), ("z", z)):
        if arr is None:
            raise ShapeError(f"silu_gate: argument {name!r} is required, got None")
        check_floating("silu_gate", name, arr)
    if tuple(x.shape) != tuple(z.shape):
        raise ShapeError(f"silu_gate: 'x' and 'z' must have the same shape, got x {tuple(x.shape)} "
                         f"and z {tuple(z.shape)}")


def validate_silu_gate_vjp(dy, x, z):
    validate_silu_gate(x, z)
    if dy is not None:
        check_floating("silu_gate_vjp", "dy", dy)
        if tuple(dy.shape) != tuple(x.shape):
            raise ShapeError(f"silu_gate_vjp: 'dy' must have the shape of x and z {tuple(x.shape)}, "
                             f"got {tuple(dy.shape)}")


register(OpSpec("sigmoid", "activations", sigmoid_ref, sigmoid))
register(OpSpec("silu", "activations", silu_ref, silu))
register(OpSpec("softplus", "activations", softplus_ref, softplus))
register(OpSpec("sigmoid_vjp", "activations", sigmoid_vjp_ref, sigmoid_vjp, vjp_of="sigmoid"))
register(OpSpec("silu_vjp", "activations", silu_vjp_ref, silu_vjp, vjp_of="silu"))
register(OpSpec("softplus_vjp", "activations", softplus_vjp_ref, softplus_vjp, vjp_of="softplus"))
register(OpSpec("silu_gate", "activations", silu_gate_ref, silu_gate, validate=validate_silu_gate))
register(OpSpec("silu_gate_vjp", "activations", silu_gate_vjp_ref, silu_gate_vjp,
                validate=validate_silu_gate_vjp, vjp_of="silu_gate"))
