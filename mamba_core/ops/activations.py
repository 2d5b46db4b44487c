"""Activations: silu, softplus (torch's threshold-20 form), sigmoid.

All elementwise, any shape, output shape and dtype = input's. The default compositions are also
the helpers the other ops' compositions call, so each formula lives here once.
"""

from __future__ import annotations

import numpy as np

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
    """softplus(x) with torch's threshold of 20. x: any shape."""
    return xp.where(
        x > SOFTPLUS_THRESHOLD, x, xp.log1p(xp.exp(xp.minimum(x, xp.asarray(SOFTPLUS_THRESHOLD, dtype=x.dtype))))
    )


register(OpSpec("sigmoid", "activations", sigmoid_ref, sigmoid))
register(OpSpec("silu", "activations", silu_ref, silu))
register(OpSpec("softplus", "activations", softplus_ref, softplus))
