"""The residual block of mamba_ssm (``Block`` with fused add + norm), over one layer's params.

    hidden, residual = add_rmsnorm(hidden, residual, norm.weight)     residual kept in fp32
    hidden = mixer(hidden)
    if MLP:  hidden, residual = add_rmsnorm(hidden, residual, norm2.weight); hidden = mlp(hidden)

Params (scoped to the layer): norm.weight (D,), mixer.* , and with an MLP norm2.weight (D,) and
mlp.fc1.weight / mlp.fc2.weight.
"""

from __future__ import annotations

import numpy as np

from mamba_core.models import mlp
from mamba_core.models.mixer import scope


def param_shapes(cfg) -> dict:
    shapes = {"norm.weight": (cfg.d_model,)}
    shapes.update({f"mixer.{k}": v for k, v in cfg.mixer.param_shapes(cfg.mixer_config).items()})
    if cfg.d_intermediate:
        shapes["norm2.weight"] = (cfg.d_model,)
        shapes.update({f"mlp.{k}": v for k, v in mlp.param_shapes(cfg.d_model, cfg.mlp_hidden).items()})
    return shapes


def init_params(cfg, rng) -> dict:
    p = {"norm.weight": np.ones(cfg.d_model, np.float32)}
    p.update({f"mixer.{k}": v for k, v in cfg.mixer.init_params(cfg.mixer_config, rng).items()})
    if cfg.d_intermediate:
        p["norm2.weight"] = np.ones(cfg.d_model, np.float32)
        p.update({f"mlp.{k}": v for k, v in mlp.init_params(cfg.d_model, cfg.mlp_hidden, rng).items()})
    return p


def _run(be, params, cfg, hidden, residual, mixer_call):
    hidden, residual = be.ops.add_rmsnorm(
        hidden, residual, params["norm.weight"], cfg.norm_epsilon, cfg.residual_in_fp32
    )
    hidden, cache = mixer_call(scope(params, "mixer."), hidden)
    if cfg.d_intermediate:
        hidden, residual = be.ops.add_rmsnorm(
            hidden, residual, params["norm2.weight"], cfg.norm_epsilon, cfg.residual_in_fp32
        )
        hidden = mlp.forward(be, scope(params, "mlp."), hidden)
    return hidden, residual, cache


def forward(be, params, cfg, hidden, residual, cache=None):
    """hidden: (B, L, D); residual: (B, L, D) or None -> (hidden, residual, mixer cache)."""
    mcfg = cfg.mixer_config
    return _run(be, params, cfg, hidden, residual,
                lambda p, h: cfg.mixer.forward(be, p, mcfg, h, cache))


def step(be, params, cfg, hidden, residual, cache):
    """hidden: (B, D); residual: (B, D) or None -> (hidden, residual, mixer cache)."""
    mcfg = cfg.mixer_config
    return _run(be, params, cfg, hidden, residual,
                lambda p, h: cfg.mixer.step(be, p, mcfg, h, cache))


# ---- training: forward keeping what backward needs, then backward ---------------------------
def forward_train(be, params, cfg, hidden, residual, cache=None):
    """forward, also returning ``saved``: the block's inputs, the mixer's saved tensors and, with
    an MLP, the mixer output and the residual between the two halves."""
    mcfg = cfg.mixer_config
    h1, r1 = be.ops.add_rmsnorm(hidden, residual, params["norm.weight"], cfg.norm_epsilon,
                                cfg.residual_in_fp32)
    m, new_cache, msaved = cfg.mixer.forward_train(be, scope(params, "mixer."), mcfg, h1, cache)
    saved = {"hidden": hidden, "residual": residual, "mixer": msaved}
    if not cfg.d_intermediate:
        return m, r1, new_cache, saved
    h2, r2 = be.ops.add_rmsnorm(m, r1, params["norm2.weight"], cfg.norm_epsilon, cfg.residual_in_fp32)
    out, mlp_saved = mlp.forward_train(be, scope(params, "mlp."), h2)
    saved.update(m=m, r1=r1, mlp=mlp_saved)
    return out, r2, new_cache, saved


def backward(be, params, cfg, saved, dhidden_out, dresidual_out, dcache=None):
    """Gradients of the block from those of its two outputs (hidden, residual).

    Returns (dparams scoped to the layer, dhidden, dresidual or None when the block's input
    residual was None, dcache_in or None).
    """
    eps, fp32 = cfg.norm_epsilon, cfg.residual_in_fp32
    grads = {}
    if cfg.d_intermediate:
        dh2, dmlp = mlp.backward(be, scope(params, "mlp."), saved["mlp"], dhidden_out)
        grads.update({f"mlp.{k}": v for k, v in dmlp.items()})
        g = be.ops.add_rmsnorm_vjp((dh2, dresidual_out), saved["m"], saved["r1"],
                                   params["norm2.weight"], eps, fp32)
        grads["norm2.weight"] = g["weight"]
        dm, dr1 = g["x"], g["residual"]
    else:
        dm, dr1 = dhidden_out, dresidual_out
    dmix, dh1, dcache_in = cfg.mixer.backward(be, scope(params, "mixer."), cfg.mixer_config,
                                              saved["mixer"], dm, dcache)
    grads.update({f"mixer.{k}": v for k, v in dmix.items()})
    g = be.ops.add_rmsnorm_vjp((dh1, dr1), saved["hidden"], saved["residual"],
                               params["norm.weight"], eps, fp32)
    grads["norm.weight"] = g["weight"]
    return grads, g["x"], g.get("residual"), dcache_in
