"""Linear layer (gemm): y = x W^T + b.

x: (..., K_in), weight: (K_out, K_in) (the torch/checkpoint layout), bias: (K_out,) or None.
Returns (..., K_out) in x's dtype.
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


def validate_linear(x, weight, bias=None):
    d = Dims("linear")
    d.check("weight", weight, ("K_out", "K_in"))
    d.check("x", x, tuple([None] * (x.ndim - 1)) + ("K_in",))
    d.check("bias", bias, ("K_out",), optional=True)


register(OpSpec("linear", "linear", linear_ref, linear, validate_linear))
