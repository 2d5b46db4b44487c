"""Batch invariance: a prompt's logits are bit-identical whatever else is in the batch.

Only for backends whose ``capabilities.batch_invariant`` is True (others get SKIP). For a tiny
random LM of each family, prompt P is run alone (batch 1) and inside batches of sizes 2..5 whose
other rows are other random prompts, with P at a different row each time. ``forward`` compares
the prefill logits, ``step`` the logits of token-by-token decoding. The output is the largest
|difference| against P alone; its truth is 0 and the case is marked ``exact``: the runner
certifies it with tolerance 0 (bit identity), not with the dtype's tolerance.
"""

from __future__ import annotations

import numpy as np

from mamba_conformance.cases.lm import _MIXERS, _unpack, perturb
from mamba_conformance.check import Case, Check
from mamba_core.models import lm
from mamba_core.models.config import LMConfig

SIZES = (2, 3, 4, 5)


def _cases(family: str) -> tuple:
    return (Case("L=9,batches 1..5", {"family": family, "L": 9, "exact": True,
                                       "requires": "batch_invariant"}),)


def _make_inputs(case: Case, rng: np.random.Generator) -> dict:
    cfg = LMConfig(d_model=16, n_layer=2, vocab_size=50, ssm_cfg=dict(_MIXERS[case["family"]]))
    params = perturb(lm.init_params(cfg, rng), rng)
    inputs = {"cfg": cfg, "ids": rng.integers(0, cfg.vocab_size, size=(max(SIZES), case["L"]))}
    inputs.update({"param:" + k: v for k, v in params.items()})
    return inputs


def _batches(ids):
    """(row of P, batch ids) for each size: P = ids[0]; the others fill the remaining rows."""
    out = []
    for size in SIZES:
        row = size - 1 - (size % 2)  # P moves around: rows 1, 2, 3, 4 for sizes 2..5
        others = [ids[i] for i in range(1, size)]
        rows = others[:row] + [ids[0]] + others[row:]
        out.append((row, np.stack(rows)))
    return out


def _max_diff(be, alone, together) -> object:
    xp = be.xp
    return xp.max(xp.abs(together - alone))


def _forward(be, inputs) -> dict:
    cfg, params = _unpack(inputs)
    ids = be.to_numpy(inputs["ids"])
    alone, _ = lm.forward(be, params, cfg, be.asarray(ids[:1]))
    worst = be.xp.zeros((), dtype=alone.dtype)
    for row, batch in _batches(ids):
        logits, _ = lm.forward(be, params, cfg, be.asarray(batch))
        worst = be.xp.maximum(worst, _max_diff(be, alone[0], logits[row]))
    return {"max|logits(P in batch) - logits(P alone)|": worst}


def _decode(be, params, cfg, ids):
    cache = lm.init_cache(be, cfg, ids.shape[0], str(params["backbone.norm_f.weight"].dtype))
    outs = []
    for t in range(ids.shape[1]):
        logits, cache = lm.step(be, params, cfg, be.asarray(ids[:, t]), cache)
        outs.append(logits)
    return be.xp.stack(outs, axis=1)


def _step(be, inputs) -> dict:
    cfg, params = _unpack(inputs)
    ids = be.to_numpy(inputs["ids"])
    alone = _decode(be, params, cfg, ids[:1])
    worst = be.xp.zeros((), dtype=alone.dtype)
    for row, batch in _batches(ids):
        worst = be.xp.maximum(worst, _max_diff(be, alone[0], _decode(be, params, cfg, batch)[row]))
    return {"max|logits(P in batch) - logits(P alone)|": worst}


CHECKS = [
    Check(
        name=f"invariance:{family}",
        kind="model",
        cases=_cases(family),
        make_inputs=_make_inputs,
        forward=_forward,
        step=_step,
        ops=("linear", "embedding", "add_rmsnorm"),
        doc=f"{_MIXERS[family]['layer']} LM: a prompt's logits alone vs in batches of 2..5 "
            "(bit identity; only for backends claiming batch_invariant)",
    )
    for family in _MIXERS
]
