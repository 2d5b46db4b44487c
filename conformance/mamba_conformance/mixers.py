"""Forward and step of a mixer check, shared by every mixer family's cases.

A mixer check's inputs carry the mixer's config as "cfg" (its module is found from the config's
class), the parameters as "param:<name>", the input as "u" (B, L, D) and, when the case starts
from a cache, the cache as "cache:<name>". Both functions return {"y", <every cache entry>}.
"""

from __future__ import annotations

import sys

from mamba_conformance.grads import unpack


def mixer_module(cfg):
    """The mixer module (mamba_core.models.mamba1/2/3) that defines this config class."""
    return sys.modules[type(cfg).__module__]


def split_inputs(inputs: dict):
    """(cfg, module, params, cache or None) of a mixer check's inputs."""
    cfg = inputs["cfg"]
    return cfg, mixer_module(cfg), unpack(inputs, "param:"), unpack(inputs, "cache:") or None


def mixer_forward(be, inputs) -> dict:
    cfg, mod, params, cache = split_inputs(inputs)
    y, cache = mod.forward(be, params, cfg, inputs["u"], cache)
    return {"y": y, **cache}


def mixer_step(be, inputs) -> dict:
    """The step form unrolled over the sequence, from the case's cache or from zeros."""
    cfg, mod, params, cache = split_inputs(inputs)
    u = inputs["u"]
    if cache is None:
        cache = mod.init_cache(be, cfg, u.shape[0], str(u.dtype).replace("torch.", ""))
    ys = []
    for t in range(u.shape[1]):
        y, cache = mod.step(be, params, cfg, u[:, t], cache)
        ys.append(y)
    return {"y": be.xp.stack(ys, axis=1), **cache}
