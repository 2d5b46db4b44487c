"""Depthwise causal conv1d, with its recurrent step.

causal_conv1d(x, weight, bias=None, initial_state=None, activation=None)
    x: (B, L, C), weight: (C, K), bias: (C,) or None,
    initial_state: (B, C, K) or None -- the K inputs before the sequence, oldest first (the
    official mamba_ssm conv_state layout; only the last K-1 are read), zeros when None.
    y_t[c] = act(b[c] + sum_{k<K} w[c, k] * x_{t-K+1+k}[c]), act = None or "silu".
    Returns (y (B, L, C), final_state (B, C, K) = the last K inputs, oldest first).

causal_conv1d_step(x, conv_state, weight, bias=None, activation=None)
    x: (B, C) the new input; conv_state: (B, C, K). Shifts x into the window and applies the
    same formula. Returns (y (B, C), new_state (B, C, K)).
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims
from mamba_core.ops.activations import silu, silu_ref
from mamba_core.ops.spec import OpSpec, register

ACTIVATIONS = (None, "silu")


# ---- references ---------------------------------------------------------------------------
def causal_conv1d_ref(x, weight, bias=None, initial_state=None, activation=None):
    """Causal depthwise conv as an explicit loop over time, float64."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    Bsz, L, C = x.shape
    K = w.shape[1]
    window = np.zeros((Bsz, C, K)) if initial_state is None else np.asarray(initial_state, np.float64).copy()
    y = np.empty_like(x)
    for t in range(L):
        window = np.concatenate([window[:, :, 1:], x[:, t, :, None]], axis=2)
        y[:, t] = (window * w).sum(-1)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    if activation == "silu":
        y = silu_ref(y)
    return y, window


def causal_conv1d_step_ref(x, conv_state, weight, bias=None, activation=None):
    """One token of the causal conv, float64."""
    y, state = causal_conv1d_ref(np.asarray(x)[:, None, :], weight, bias, conv_state, activation)
    return y[:, 0], state


# ---- default compositions -----------------------------------------------------------------
def causal_conv1d(xp, x, weight, bias=None, initial_state=None, activation=None):
    """Causal depthwise conv1d. x: (B, L, C); weight: (C, K); state: (B, C, K)."""
    Bsz, L, C = x.shape
    K = weight.shape[1]
    if initial_state is None:
        head = xp.zeros((Bsz, K, C), dtype=x.dtype)
    else:
        head = xp.permute_dims(xp.astype(initial_state, x.dtype), (0, 2, 1))
    full = xp.concat([head, x], axis=1)  # (B, K + L, C): index K-1+t holds x_t
    y = full[:, 1 : 1 + L, :] * weight[:, 0]
    for k in range(1, K):
        y = y + full[:, 1 + k : 1 + k + L, :] * weight[:, k]
    if bias is not None:
        y = y + bias
    if activation == "silu":
        y = silu(xp, y)
    final = xp.permute_dims(full[:, L:, :], (0, 2, 1))
    return y, final


def causal_conv1d_step(xp, x, conv_state, weight, bias=None, activation=None):
    """One token. x: (B, C); conv_state: (B, C, K). Returns (y (B, C), new_state)."""
    state = xp.concat([conv_state[:, :, 1:], xp.astype(x, conv_state.dtype)[:, :, None]], axis=2)
    y = xp.sum(state * weight, axis=-1)
    if bias is not None:
        y = y + bias
    if activation == "silu":
        y = silu(xp, y)
    return xp.astype(y, x.dtype), state


# ---- validation ---------------------------------------------------------------------------
def _check_activation(op, activation):
    if activation not in ACTIVATIONS:
        raise ShapeError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")


def validate_causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    d = Dims("causal_conv1d")
    d.check("x", x, ("B", "L", "C"))
    d.check("weight", weight, ("C", "K"))
    d.check("bias", bias, ("C",), optional=True)
    d.check("initial_state", initial_state, ("B", "C", "K"), optional=True)
    _check_activation("causal_conv1d", activation)


def validate_causal_conv1d_step(x, conv_state, weight, bias=None, activation=None):
    d = Dims("causal_conv1d_step")
    d.check("x", x, ("B", "C"))
    d.check("weight", weight, ("C", "K"))
    d.check("conv_state", conv_state, ("B", "C", "K"))
    d.check("bias", bias, ("C",), optional=True)
    _check_activation("causal_conv1d_step", activation)


register(OpSpec("causal_conv1d", "conv1d", causal_conv1d_ref, causal_conv1d, validate_causal_conv1d))
register(
    OpSpec(
        "causal_conv1d_step",
        "conv1d",
        causal_conv1d_step_ref,
        causal_conv1d_step,
        validate_causal_conv1d_step,
        step_of="causal_conv1d",
    )
)
