"""Linear layer (gemm): y = x W^T + b.

x: (..., K_in), weight: (K_out, K_in) (the torch/checkpoint layout), bias: (K_out,) or None.
Returns (..., K_out) in x's dtype.

linear_vjp(dy, x, weight, bias=None) -> {"x", "weight", "bias" (when given)}, with M = the
flattened leading dims of x:
    dx = dy W                      (..., K_in)
    dW = dy^T x  summed over M     (K_out, K_in)
    db = dy      summed over M     (K_out,)
"""

from __future__ import annotations

import numpy as np

from mamba_core.ops._checks import Dims
from mamba_core.ops.spec import OpSpec, register


def linear_ref(x, weight, bias=None):
    """y = x W^T + b in float64."""
    y = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def linear(xp, x, weight, bias=None):
    """y = x W^T + b. x: (..., K_in), weight: (K_out, K_in), bias: (K_out,)."""
    y = xp.matmul(x, xp.matrix_transpose(weight))
    if bias is not None:
        y = y + bias
    return y


def linear_vjp_ref(dy, x, weight, bias=None):
    """VJP of linear in float64: dx = dy W, dW = sum_m dy_m^T x_m, db = sum_m dy_m."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    K_out, K_in = w.shape
    dy = np.zeros(x.shape[:-1] + (K_out,)) if dy is None else np.asarray(dy, np.float64)
    x2, dy2 = x.reshape(-1, K_in), dy.reshape(-1, K_out)
    dw = np.zeros((K_out, K_in))
    for m in range(x2.shape[0]):  # one outer product per row: the sum over M stated plainly
        dw += np.outer(dy2[m], x2[m])
    grads = {"x": dy @ w, "weight": dw}
    if bias is not None:
        grads["bias"] = dy2.sum(axis=0)
    return grads


def linear_vjp(xp, dy, x, weight, bias=None):
    """VJP of linear. dy: (..., K_out); x: (..., K_in); weight: (K_out, K_in); bias: (K_out,).

    Gradients in their argument's dtype; the weight/bias reductions over M accumulate in
    >= float32 (matmul accumulation of the backend).
    """
    K_out, K_in = weight.shape
    if dy is None:
        grads = {"x": xp.zeros_like(x), "weight": xp.zeros_like(weight)}
        if bias is not None:
            grads["bias"] = xp.zeros_like(bias)
        return grads
    wide = xp.float64 if x.dtype == xp.float64 else xp.float32
    dy2 = xp.astype(xp.reshape(dy, (-1, K_out)), wide)
    x2 = xp.astype(xp.reshape(x, (-1, K_in)), wide)
    dx = xp.matmul(dy2, xp.astype(weight, wide))
    grads = {
        "x": xp.astype(xp.reshape(dx, tuple(x.shape)), x.dtype),
        "weight": xp.astype(xp.matmul(xp.matrix_transpose(dy2), x2), weight.dtype),
    }
    if bias is not None:
        grads["bias"] = xp.astype(xp.sum(dy2, axis=0), bias.dtype)
    return grads


def validate_linear(x, weight, bias=None):
    d = Dims("linear")
    d.check("weight", weight, ("K_out", "K_in"))
    d.check("x", x, tuple([None] * (x.ndim - 1)) + ("K_in",))
    d.check("bias", bias, ("K_out",), optional=True)


register(OpSpec("linear", "linear", linear_ref, linear, validate_linear))
register(OpSpec("linear_vjp", "linear", linear_vjp_ref, linear_vjp, vjp_of="linear"))
