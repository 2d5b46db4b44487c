"""What every mixer module (``mamba1``, ``mamba2``, ``mamba3``) provides.

A mixer is a module of plain functions over a flat dict of named parameters whose names are the
official mamba_ssm ones (``in_proj.weight``, ``conv1d.weight``, ``A_log``, ``D``, ...), so that
checkpoints map one to one. Arrays are backend arrays; the functions call ops only through
``be.ops.<name>`` and glue only through ``be.xp`` (array API), never a framework directly.

    LAYER: str                      "Mamba1" | "Mamba2" | "Mamba3" (the ssm_cfg "layer" value)
    Config                          dataclass; Config.from_dict(d_model, **ssm_cfg) validates
                                    and raises ConfigError naming the field, the value and why
    param_shapes(cfg) -> {name: shape}
    init_params(cfg, rng) -> {name: float32 numpy array}    faithful official initialisation
    no_weight_decay(name) -> bool   (biases, norms, A_log, D, dt_bias, ...) for training
    cache_shapes(cfg, batch) -> {name: shape}
    init_cache(be, cfg, batch, dtype) -> {name: backend array}   zeros; states >= float32
    forward(be, params, cfg, u, cache=None) -> (y, new_cache)
        u: (B, L, D). With a cache, continues from it (the sequence follows the cached one).
        new_cache is always returned: forward over a prompt is the prefill of decoding.
    step(be, params, cfg, u, cache) -> (y, new_cache)
        u: (B, D), one token. Never modifies ``cache`` in place.

Training (explicit forward and backward, composed from the ops' VJPs):

    forward_train(be, params, cfg, u, cache=None, *, residuals=True) -> (y, new_cache, saved)
        Exactly ``forward``, also returning ``saved``: a dict naming the arrays backward needs
        (the inputs of each op call: e.g. "xz", "x_conv", "dt", ...) and the scan's residuals
        ("scan_res") when the backend has a saving form of the mixer's scan op
        (mamba_core/ops/saving.py: e.g. chunk states). Without one, or with residuals=False
        (``forward`` passes it: inference keeps nothing), the scan's VJP recomputes its states.
    backward(be, params, cfg, saved, dy, dcache=None) -> (dparams, du, dcache_in)
        dy: (B, L, D), the gradient of y. dcache: None, or a dict with some of new_cache's keys:
        gradients of the final cache (so truncated BPTT can chain chunks).
        dparams: one entry for every key of params, same shape. du: (B, L, D).
        dcache_in: gradients of the initial cache (same keys as the cache) when forward_train
        was given a cache, else None.

``forward`` then ``step`` must agree: running step over the L tokens from a cache equals forward
from that cache, in outputs and in the final cache. Conformance checks exactly that.
"""

from __future__ import annotations

import os

from mamba_core.errors import ConfigError


def fused_step(be, family: str):
    """The backend's fused one-token step for ``family``, or None (then the op composition runs).

    ``MAMBA_NO_FUSED_STEP=1`` in the environment returns None always, to time or debug against
    the composition.
    """
    fn = getattr(be, "mixer_steps", {}).get(family)
    if fn is None or os.environ.get("MAMBA_NO_FUSED_STEP", "") not in ("", "0"):
        return None
    return fn


def scan_call(be, residuals: bool, op: str, *args, **kwargs):
    """Op ``op`` -> (outputs, residuals): ``be.ops.forward_saving`` when ``residuals``, else the
    plain op with residuals None (the backward's ``be.ops.vjp_saved`` then runs the plain VJP)."""
    if residuals:
        return be.ops.forward_saving(op, *args, **kwargs)
    return getattr(be.ops, op)(*args, **kwargs), None


def scope(params: dict, prefix: str) -> dict:
    """The entries of ``params`` under ``prefix`` (e.g. 'backbone.layers.3.mixer.'), unprefixed."""
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


def require(cond: bool, field: str, value, why: str) -> None:
    """Raise ConfigError('<field>=<value>: <why>') unless cond."""
    if not cond:
        raise ConfigError(f"{field}={value!r}: {why}")


def known_fields(cls, kwargs: dict, where: str) -> dict:
    """Reject unknown config keys with the list of known ones."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {unknown}; known fields are {sorted(names - {'d_model'})}"
        )
    return kwargs


def zero_cache(be, shapes: dict, dtype: str = "float32") -> dict:
    """Zero states as backend arrays: float64 for float64 models, else float32 (never narrower)."""
    import numpy as np

    name = str(dtype).replace("torch.", "")
    np_dtype = np.float64 if name == "float64" else np.float32
    return {k: be.asarray(np.zeros(s, np_dtype)) for k, s in shapes.items()}
