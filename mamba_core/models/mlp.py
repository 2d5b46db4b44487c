"""The gated MLP sub-block of mamba_ssm (``GatedMLP``): y = fc2(a * silu(g)), [a, g] = fc1(x).

Params: fc1.weight (2F, D), fc2.weight (D, F), no biases; F = d_intermediate rounded up to a
multiple of 128 (``LMConfig.mlp_hidden``).
"""

from __future__ import annotations

from mamba_core.models import init


def param_shapes(d_model: int, hidden: int) -> dict:
    return {"fc1.weight": (2 * hidden, d_model), "fc2.weight": (d_model, hidden)}


def init_params(d_model: int, hidden: int, rng) -> dict:
    return {
        "fc1.weight": init.linear_weight(rng, 2 * hidden, d_model),
        "fc2.weight": init.linear_weight(rng, d_model, hidden),
    }


def forward(be, params: dict, x):
    """x: (..., D) -> (..., D)."""
    h = be.ops.linear(x, params["fc1.weight"])
    F = h.shape[-1] // 2
    y = be.ops.silu_gate(h[..., :F], h[..., F:])
    return be.ops.linear(y, params["fc2.weight"])


def forward_train(be, params: dict, x):
    """forward, also returning what backward needs: saved = {"x", "h" (fc1 output)}."""
    h = be.ops.linear(x, params["fc1.weight"])
    F = h.shape[-1] // 2
    y = be.ops.silu_gate(h[..., :F], h[..., F:])
    return be.ops.linear(y, params["fc2.weight"]), {"x": x, "h": h}


def backward(be, params: dict, saved: dict, dout):
    """dout: (..., D) -> (dx, {"fc1.weight", "fc2.weight"})."""
    xp = be.xp
    x, h = saved["x"], saved["h"]
    F = h.shape[-1] // 2
    a, g = h[..., :F], h[..., F:]
    y = be.ops.silu_gate(a, g)
    d2 = be.ops.linear_vjp(dout, y, params["fc2.weight"])
    gg = be.ops.silu_gate_vjp(d2["x"], a, g)
    d1 = be.ops.linear_vjp(xp.concat([gg["x"], gg["z"]], axis=-1), x, params["fc1.weight"])
    return d1["x"], {"fc1.weight": d1["weight"], "fc2.weight": d2["weight"]}
