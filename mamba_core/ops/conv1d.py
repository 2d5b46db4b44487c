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

causal_conv1d_vjp((dy, dfinal_state), x, weight, bias=None, initial_state=None, activation=None)
    -> {"x", "weight", "bias" (given), "initial_state" (given)}; either cotangent entry may be
    None (zero). With u_t the pre-activation and du_t = dy_t * act'(u_t):
    dw[c, k] = sum_{b,t} du_t[c] * window_t[c, k],  db = sum_{b,t} du_t,
    and every input in window_t (x or initial state) receives du_t * w[:, k] plus dfinal_state
    where it is in the final window. initial_state[..., 0] is never read, so its gradient is 0.
    The step form has no VJP: training differentiates the sequence form.
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims
from mamba_core.ops.activations import silu, silu_grad, silu_grad_ref, silu_ref
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


# ---- VJP reference (the reference loop run backwards) -------------------------------------
def causal_conv1d_vjp_ref(cotangent, x, weight, bias=None, initial_state=None, activation=None):
    """VJP of causal_conv1d in float64, a reverse-time loop over the forward's windows."""
    dy, dfinal = cotangent
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    Bsz, L, C = x.shape
    K = w.shape[1]
    # forward again, keeping each window and pre-activation
    window = np.zeros((Bsz, C, K)) if initial_state is None else np.asarray(initial_state, np.float64).copy()
    windows, pre = [], np.empty_like(x)
    for t in range(L):
        window = np.concatenate([window[:, :, 1:], x[:, t, :, None]], axis=2)
        windows.append(window)
        pre[:, t] = (window * w).sum(-1)
    if bias is not None:
        pre = pre + np.asarray(bias, np.float64)
    du = np.zeros(x.shape) if dy is None else np.asarray(dy, np.float64)
    if activation == "silu":
        du = du * silu_grad_ref(pre)
    # backwards over time: dwindow is the gradient wrt window_t
    dwindow = np.zeros((Bsz, C, K)) if dfinal is None else np.asarray(dfinal, np.float64).copy()
    dx = np.empty_like(x)
    dw = np.zeros((C, K))
    for t in range(L - 1, -1, -1):
        dwindow = dwindow + du[:, t, :, None] * w
        dw += (du[:, t, :, None] * windows[t]).sum(axis=0)
        dx[:, t] = dwindow[:, :, K - 1]
        # window_t = concat(window_{t-1}[:, :, 1:], x_t): slot k of window_t was slot k+1 before
        dwindow = np.concatenate([np.zeros((Bsz, C, 1)), dwindow[:, :, : K - 1]], axis=2)
    grads = {"x": dx, "weight": dw}
    if bias is not None:
        grads["bias"] = du.sum(axis=(0, 1))
    if initial_state is not None:
        grads["initial_state"] = dwindow
    return grads


# ---- VJP default composition --------------------------------------------------------------
def causal_conv1d_vjp(xp, cotangent, x, weight, bias=None, initial_state=None, activation=None):
    """VJP of causal_conv1d. cotangent = (dy (B, L, C) | None, dfinal_state (B, C, K) | None).

    Shifted-slice form, computed in >= float32; gradients in their argument's dtype.
    """
    dy, dfinal = cotangent
    Bsz, L, C = x.shape
    K = weight.shape[1]
    wide = xp.float64 if x.dtype == xp.float64 else xp.float32
    w = xp.astype(weight, wide)
    if initial_state is None:
        head = xp.zeros((Bsz, K, C), dtype=wide)
    else:
        head = xp.permute_dims(xp.astype(initial_state, wide), (0, 2, 1))
    full = xp.concat([head, xp.astype(x, wide)], axis=1)  # (B, K + L, C): index K+t holds x_t
    du = xp.zeros((Bsz, L, C), dtype=wide) if dy is None else xp.astype(dy, wide)
    if activation == "silu":
        pre = full[:, 1 : 1 + L, :] * w[:, 0]
        for k in range(1, K):
            pre = pre + full[:, 1 + k : 1 + k + L, :] * w[:, k]
        if bias is not None:
            pre = pre + xp.astype(bias, wide)
        du = du * silu_grad(xp, pre)
    # y_t reads full[t + 1 + k] with weight k: scatter du * w[:, k] back to those positions
    if dfinal is None:
        dfull = xp.zeros((Bsz, K + L, C), dtype=wide)
    else:
        dfin = xp.permute_dims(xp.astype(dfinal, wide), (0, 2, 1))  # final = full[L : L + K]
        dfull = xp.concat([xp.zeros((Bsz, L, C), dtype=wide), dfin], axis=1)
    dws = []
    for k in range(K):
        dws.append(xp.sum(du * full[:, 1 + k : 1 + k + L, :], axis=(0, 1)))
        parts = [xp.zeros((Bsz, 1 + k, C), dtype=wide), du * w[:, k]]
        if K - 1 - k:
            parts.append(xp.zeros((Bsz, K - 1 - k, C), dtype=wide))
        dfull = dfull + xp.concat(parts, axis=1)
    grads = {
        "x": xp.astype(dfull[:, K:, :], x.dtype),
        "weight": xp.astype(xp.stack(dws, axis=1), weight.dtype),
    }
    if bias is not None:
        grads["bias"] = xp.astype(xp.sum(du, axis=(0, 1)), bias.dtype)
    if initial_state is not None:
        grads["initial_state"] = xp.astype(xp.permute_dims(dfull[:, :K, :], (0, 2, 1)), initial_state.dtype)
    return grads


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
register(
    OpSpec("causal_conv1d_vjp", "conv1d", causal_conv1d_vjp_ref, causal_conv1d_vjp, vjp_of="causal_conv1d")
)
