"""Mamba-3 checks: the Mamba-3 mixer, SISO and MIMO, forward vs reference and step.

mixer:mamba3 (SISO) and mixer:mamba3_mimo: outputs y and the final cache (angle_state,
ssm_state, k_state, v_state); ``step`` feeds the tokens one by one from the same starting cache
(zeros, or a random nonzero cache whose K/V states exercise the first token's beta term). The
cases cover L = 1, lengths not divisible by the chunk, a chunk longer than the sequence,
ngroups > 1 (nheads_qk < nheads: head h reads B/C group h // (H/G)), both rope fractions, the
gated out-proj norm, strong decay over a long sequence (large dt: the summed log-decay reaches
~ -400 and the angles wrap many times), and batches whose rows differ (inputs and caches).

Parameters are the official initialisation perturbed (D, dt_bias, B/C biases, B/C norm weights,
the out norm and the mimo_x / mimo_z / mimo_o projections made non-constant), so that sign,
pairing and rank-mixing bugs show; they travel as flat inputs "param:<name>" and the cache as
"cache:<name>". The angle state is compared as it is (both sides reduce it mod 2 pi).
"""

from __future__ import annotations

import numpy as np

from mamba_conformance.mixers import mixer_forward, mixer_step
from mamba_conformance.check import Case, Check
from mamba_core.models import mamba3

_SMALL = {"d_model": 8, "d_state": 4, "headdim": 4, "chunk_size": 8}  # E = 16, H = 4, N = 4
_MIMO = {**_SMALL, "is_mimo": True, "mimo_rank": 2, "chunk_size": 4}


def _cases(base: dict) -> tuple:
    return (
        Case("B=2,L=11", {"B": 2, "L": 11, "cfg": dict(base)}),
        Case("L=1", {"B": 2, "L": 1, "cfg": dict(base)}),
        Case("L=1,from-cache", {"B": 2, "L": 1, "cache": True, "cfg": dict(base)}),
        Case("from-cache,B=3,L=7", {"B": 3, "L": 7, "cache": True, "cfg": dict(base)}),
        Case("L=37 (not a multiple of the chunk),from-cache",
             {"B": 2, "L": 37, "cache": True, "cfg": dict(base)}),
        Case("chunk>L,L=13", {"B": 2, "L": 13, "cfg": {**base, "chunk_size": 64}}),
        Case("G=2<H=4,rf=1,from-cache,L=19",
             {"B": 2, "L": 19, "cache": True, "cfg": {**base, "ngroups": 2, "rope_fraction": 1.0}}),
        Case("G=H=4,L=10", {"B": 2, "L": 10, "cfg": {**base, "ngroups": 4}}),
        Case("outproj_norm,G=2,from-cache,L=21",
             {"B": 2, "L": 21, "cache": True, "cfg": {**base, "ngroups": 2, "is_outproj_norm": True}}),
        Case("strong-decay,L=128", {"B": 2, "L": 128, "decay": "strong", "cfg": {**base, "chunk_size": 16}}),
    )


_SISO_CASES = _cases(_SMALL)
_MIMO_CASES = _cases(_MIMO) + (
    Case("R=3,rf=1,outproj_norm,from-cache,L=17",
         {"B": 2, "L": 17, "cache": True,
          "cfg": {**_MIMO, "mimo_rank": 3, "rope_fraction": 1.0, "is_outproj_norm": True, "chunk_size": 5}}),
)


def perturb(params: dict, rng: np.random.Generator, decay: str = "normal") -> dict:
    """float64 copies of the init params, with the constant ones made random."""
    out = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for k in ("D", "B_bias", "C_bias", "B_norm.weight", "C_norm.weight", "norm.weight",
              "mimo_x", "mimo_z", "mimo_o"):
        if k in out:
            out[k] = out[k] + 0.4 * rng.standard_normal(out[k].shape)
    out["dt_bias"] = out["dt_bias"] + rng.uniform(-1.0, 2.0, out["dt_bias"].shape)
    if decay == "strong":  # dt ~ 2..4, |A| ~ 1: the summed log-decay over L = 128 is ~ -400
        out["dt_bias"] = rng.uniform(2.0, 4.0, out["dt_bias"].shape)
    return out


def _inputs_for(case: Case, rng: np.random.Generator) -> dict:
    cfg = mamba3.Config.from_dict(**case["cfg"])
    params = perturb(mamba3.init_params(cfg, rng), rng, case.get("decay", "normal"))
    Bsz = case["B"]
    inputs = {"cfg": cfg, "u": rng.standard_normal((Bsz, case["L"], cfg.d_model))}
    inputs.update({"param:" + k: v for k, v in params.items()})
    if case.get("cache"):
        for k, shape in mamba3.cache_shapes(cfg, Bsz).items():
            if k == "angle_state":
                inputs["cache:" + k] = rng.uniform(0.0, 2 * np.pi, shape)
            else:
                inputs["cache:" + k] = rng.standard_normal(shape)
    return inputs


_OPS = ("linear", "rmsnorm", "silu", "softplus", "sigmoid", "mamba3_angles", "apply_rope",
        "mamba3_scan", "mamba3_step")

CHECKS = [
    Check(
        name="mixer:mamba3",
        kind="model",
        cases=_SISO_CASES,
        make_inputs=_inputs_for,
        forward=mixer_forward,
        step=mixer_step,
        ops=_OPS,
        doc="Mamba-3 SISO mixer: output and final cache (angle_state, ssm_state, k_state, v_state), "
            "from zeros or a cache",
    ),
    Check(
        name="mixer:mamba3_mimo",
        kind="model",
        cases=_MIMO_CASES,
        make_inputs=_inputs_for,
        forward=mixer_forward,
        step=mixer_step,
        ops=_OPS,
        doc="Mamba-3 MIMO mixer (R = 2, 3; halves rotation; per-rank gate and mimo_o mix): output "
            "and final cache, from zeros or a cache",
    ),
]
