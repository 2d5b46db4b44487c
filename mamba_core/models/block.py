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
