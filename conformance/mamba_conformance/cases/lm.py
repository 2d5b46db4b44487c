"""Language-model checks: logits and final cache of every mixer family, forward vs step.

Each case is a tiny random-weight LM (params perturbed so that constant inits such as D = 1 or
norm weights = 1 are not special). ``forward`` runs an optional prefix to build a cache on the
backend under test, then the sequence from that cache; ``step`` builds the same prefix cache,
then feeds the sequence token by token. Both return the logits and every layer's final cache.
"""

from __future__ import annotations

import numpy as np

from mamba_conformance.check import Case, Check
from mamba_core.models import lm
from mamba_core.models.config import LMConfig

_MIXER_OPS = {
    "mamba1": ("causal_conv1d", "causal_conv1d_step", "selective_scan", "selective_scan_step"),
    "mamba2": ("causal_conv1d", "causal_conv1d_step", "ssd_scan", "ssd_step", "rmsnorm"),
    "mamba3": ("rmsnorm", "mamba3_angles", "apply_rope", "mamba3_scan", "mamba3_step"),
}
_MIXER_OPS["mamba3_mimo"] = _MIXER_OPS["mamba3"]

_MIXERS = {
    "mamba1": {"layer": "Mamba1", "d_state": 4, "d_conv": 4},
    "mamba2": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 4},
    "mamba3": {"layer": "Mamba3", "d_state": 8, "headdim": 8, "chunk_size": 4},
    "mamba3_mimo": {"layer": "Mamba3", "d_state": 8, "headdim": 8, "chunk_size": 4,
                    "is_mimo": True, "mimo_rank": 2},
}


def _cases(family: str) -> tuple:
    return (
        Case("B=2,L=11", {"family": family, "B": 2, "L": 11, "prefix": 0}),
        Case("L=1", {"family": family, "B": 1, "L": 1, "prefix": 0}),
        Case("from-cache,L=6", {"family": family, "B": 2, "L": 6, "prefix": 5}),
        Case("mlp,untied,L=7", {"family": family, "B": 2, "L": 7, "prefix": 3, "mlp": True, "untied": True}),
    )


def _config(case: Case) -> LMConfig:
    return LMConfig(
        d_model=16, n_layer=2, vocab_size=50, ssm_cfg=dict(_MIXERS[case["family"]]),
        d_intermediate=24 if case.get("mlp") else 0, tie_embeddings=not case.get("untied"),
    )


def perturb(params: dict, rng: np.random.Generator) -> dict:
    """Make every constant-initialised tensor (D = 1, norm weights = 1, zero biases) non-constant."""
    out = {}
    for k, v in params.items():
        v = np.asarray(v, np.float64)
        if v.size > 1 and np.all(v == v.flat[0]):
            v = v + 0.2 * rng.standard_normal(v.shape)
        out[k] = v
    return out


def _make_inputs(case: Case, rng: np.random.Generator) -> dict:
    cfg = _config(case)
    params = perturb(lm.init_params(cfg, rng), rng)
    ids = rng.integers(0, cfg.vocab_size, size=(case["B"], case["prefix"] + case["L"]))
    targets = rng.integers(0, cfg.vocab_size, size=(case["B"], case["L"]))
    inputs = {"cfg": cfg, "ids": ids[:, case["prefix"]:], "prefix": ids[:, : case["prefix"]],
              "targets": targets}
    inputs.update({"param:" + k: v for k, v in params.items()})
    return inputs


def _unpack(inputs):
    params = {k[6:]: v for k, v in inputs.items() if k.startswith("param:")}
    return inputs["cfg"], params


def _prefix_cache(be, cfg, params, prefix):
    if prefix.shape[1] == 0:
        return None
    return lm.forward(be, params, cfg, prefix)[1]


def _flatten_cache(cache) -> dict:
    return {f"cache.{i}.{k}": v for i, layer in enumerate(cache) for k, v in layer.items()}


def _forward(be, inputs) -> dict:
    cfg, params = _unpack(inputs)
    cache = _prefix_cache(be, cfg, params, inputs["prefix"])
    logits, cache = lm.forward(be, params, cfg, inputs["ids"], cache)
    return {"logits": logits, **_flatten_cache(cache)}


def _step(be, inputs) -> dict:
    cfg, params = _unpack(inputs)
    ids = inputs["ids"]
    cache = _prefix_cache(be, cfg, params, inputs["prefix"])
    if cache is None:
        cache = lm.init_cache(be, cfg, ids.shape[0], _dtype_name(params["backbone.norm_f.weight"]))
    outs = []
    for t in range(ids.shape[1]):
        logits, cache = lm.step(be, params, cfg, ids[:, t], cache)
        outs.append(logits)
    return {"logits": be.xp.stack(outs, axis=1), **_flatten_cache(cache)}


def _dtype_name(a) -> str:
    return str(a.dtype).replace("torch.", "")


CHECKS = [
    Check(
        name=f"lm:{family}",
        kind="model",
        cases=_cases(family),
        make_inputs=_make_inputs,
        forward=_forward,
        step=_step,
        ops=("embedding", "add_rmsnorm", "linear", "cross_entropy") + _MIXER_OPS[family],
        doc=f"{_MIXERS[family]['layer']} language model: logits and every layer's final cache",
    )
    for family in _MIXERS
]
