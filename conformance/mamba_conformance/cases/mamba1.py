"""Mamba-1 checks: the selective scan op and the Mamba-1 mixer, forward vs reference and step.

selective_scan: outputs y and final_state; ``step`` unrolls selective_scan_step over L from the
same initial state. The cases cover L = 1, odd lengths that are multiples of nothing, G > 1,
nonzero initial states, strong decay over a long sequence, weak decay (long memory), batches
whose rows differ, and every optional argument on and off.

mamba1 mixer: outputs y and the final cache (conv_state, ssm_state); ``step`` feeds the tokens
one by one from the same starting cache (zeros, or a random nonzero cache). Parameters are the
official initialisation perturbed (D, biases and A_log made non-constant) so that sign and
offset bugs show; they travel as flat inputs "param:<name>" and the cache as "cache:<name>".
"""

from __future__ import annotations

import numpy as np

from mamba_conformance.mixers import mixer_forward, mixer_step
from mamba_conformance.check import Case, Check
from mamba_core.models import mamba1

# ---- the op -------------------------------------------------------------------------------
_ALL = {"z": True, "D": True, "bias": True, "softplus": True, "h0": True}
_NONE = {"z": False, "D": False, "bias": False, "softplus": False, "h0": False}

_SCAN_CASES = (
    Case("L=1", {"B": 2, "L": 1, "E": 4, "G": 1, "N": 3, **_ALL}),
    Case("L=37,G=2", {"B": 2, "L": 37, "E": 6, "G": 2, "N": 4, **_ALL}),
    Case("B=3,G=3,h0,L=13", {"B": 3, "L": 13, "E": 6, "G": 3, "N": 2, **_ALL, "z": False}),
    Case("plain(no z/D/bias/softplus),L=20", {"B": 2, "L": 20, "E": 4, "G": 1, "N": 5, **_NONE}),
    Case("z only,L=17", {"B": 2, "L": 17, "E": 3, "G": 1, "N": 4, **_NONE, "z": True}),
    Case("strong-decay,L=256", {"B": 2, "L": 256, "E": 2, "G": 1, "N": 3, **_ALL, "decay": "strong"}),
    Case("weak-decay,G=E,L=129", {"B": 2, "L": 129, "E": 2, "G": 2, "N": 3, **_ALL, "decay": "weak"}),
)

_SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _scan_inputs(case: Case, rng: np.random.Generator) -> dict:
    Bsz, L, E, G, N = case["B"], case["L"], case["E"], case["G"], case["N"]
    decay = case.get("decay", "normal")
    inp = {
        "u": rng.standard_normal((Bsz, L, E)),
        "B": rng.standard_normal((Bsz, L, G, N)),
        "C": rng.standard_normal((Bsz, L, G, N)),
        "delta_softplus": bool(case["softplus"]),
    }
    if decay == "strong":  # dt ~ 1..2, |A| ~ 1..5: sum of dt A over L reaches ~ -1000 (exp underflows)
        inp["A"] = -rng.uniform(1.0, 5.0, (E, N))
        delta = rng.uniform(0.5, 2.0, (Bsz, L, E))
        bias = rng.uniform(0.0, 0.5, E)
    elif decay == "weak":  # dt ~ 1e-3, |A| <= 1: the state remembers the whole sequence
        inp["A"] = -rng.uniform(0.01, 1.0, (E, N))
        delta = rng.uniform(-7.5, -6.5, (Bsz, L, E)) if case["softplus"] else rng.uniform(5e-4, 2e-3, (Bsz, L, E))
        bias = rng.uniform(-0.2, 0.2, E)
    else:
        inp["A"] = -np.exp(rng.uniform(-1.0, 1.5, (E, N)))
        delta = rng.standard_normal((Bsz, L, E)) if case["softplus"] else rng.uniform(0.01, 0.8, (Bsz, L, E))
        bias = 0.5 * rng.standard_normal(E)
    inp["delta"] = delta
    if case["bias"]:
        inp["delta_bias"] = bias if case["softplus"] else np.abs(bias)
    if case["D"]:
        inp["D"] = rng.standard_normal(E)
    if case["z"]:
        inp["z"] = rng.standard_normal((Bsz, L, E))
    if case["h0"]:
        inp["initial_state"] = 2.0 * rng.standard_normal((Bsz, E, N))
    return inp


def _scan_forward(be, inputs) -> dict:
    kwargs = {k: inputs[k] for k in _SCAN_ARGS if k in inputs}
    y, h = be.ops.selective_scan(
        **kwargs, delta_softplus=inputs["delta_softplus"], initial_state=inputs.get("initial_state")
    )
    return {"y": y, "final_state": h}


def _wide(xp, dtype):
    return xp.float64 if dtype == xp.float64 else xp.float32


def _scan_step(be, inputs) -> dict:
    xp = be.xp
    u = inputs["u"]
    Bsz, L, E = u.shape
    N = inputs["A"].shape[1]
    state = inputs.get("initial_state")
    if state is None:
        state = xp.zeros((Bsz, E, N), dtype=_wide(xp, u.dtype))
    z = inputs.get("z")
    ys = []
    for t in range(L):
        y, state = be.ops.selective_scan_step(
            u[:, t], inputs["delta"][:, t], inputs["A"], inputs["B"][:, t], inputs["C"][:, t], state,
            D=inputs.get("D"), z=None if z is None else z[:, t], delta_bias=inputs.get("delta_bias"),
            delta_softplus=inputs["delta_softplus"],
        )
        ys.append(y)
    return {"y": xp.stack(ys, axis=1), "final_state": state}


# ---- the mixer ----------------------------------------------------------------------------
_MIXER_CASES = (
    Case("B=2,L=11", {"B": 2, "L": 11, "cfg": {"d_model": 8, "d_state": 4}}),
    Case("L=1", {"B": 2, "L": 1, "cfg": {"d_model": 8, "d_state": 4}}),
    Case("from-cache,B=3,L=7", {"B": 3, "L": 7, "cache": True, "cfg": {"d_model": 8, "d_state": 4}}),
    Case("bias,no-conv-bias,R=3,K=3,expand=1.5,L=37",
         {"B": 2, "L": 37, "cache": True,
          "cfg": {"d_model": 12, "d_state": 3, "d_conv": 3, "expand": 1.5, "dt_rank": 3,
                  "bias": True, "conv_bias": False}}),
    Case("strong-decay,L=96", {"B": 2, "L": 96, "decay": "strong", "cfg": {"d_model": 4, "d_state": 3}}),
)


def perturb(params: dict, rng: np.random.Generator, decay: str = "normal") -> dict:
    """float64 copies of the init params, with the constant or structured ones made random."""
    out = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out["D"] = out["D"] + 0.5 * rng.standard_normal(out["D"].shape)
    out["A_log"] = out["A_log"] + 0.3 * rng.standard_normal(out["A_log"].shape)
    out["dt_proj.bias"] = out["dt_proj.bias"] + 0.5 * rng.standard_normal(out["dt_proj.bias"].shape)
    for k in ("in_proj.bias", "conv1d.bias", "out_proj.bias"):
        if k in out:
            out[k] = out[k] + 0.3 * rng.standard_normal(out[k].shape)
    if decay == "strong":  # |A| ~ 2..10, dt ~ 0.7..1.7: the summed log-decay over L is ~ -500
        out["A_log"] = np.log(rng.uniform(2.0, 10.0, out["A_log"].shape))
        out["dt_proj.bias"] = rng.uniform(0.0, 1.5, out["dt_proj.bias"].shape)
    return out


def _mixer_inputs(case: Case, rng: np.random.Generator) -> dict:
    cfg = mamba1.Config.from_dict(**case["cfg"])
    params = perturb(mamba1.init_params(cfg, rng), rng, case.get("decay", "normal"))
    Bsz = case["B"]
    inputs = {"cfg": cfg, "u": rng.standard_normal((Bsz, case["L"], cfg.d_model))}
    inputs.update({"param:" + k: v for k, v in params.items()})
    if case.get("cache"):
        for k, shape in mamba1.cache_shapes(cfg, Bsz).items():
            inputs["cache:" + k] = rng.standard_normal(shape)
    return inputs


CHECKS = [
    Check(
        name="op:selective_scan",
        kind="op",
        cases=_SCAN_CASES,
        make_inputs=_scan_inputs,
        forward=_scan_forward,
        step=_scan_step,
        ops=("selective_scan", "selective_scan_step"),
        doc="Mamba-1 selective scan: y and final state; step = selective_scan_step unrolled",
    ),
    Check(
        name="mixer:mamba1",
        kind="model",
        cases=_MIXER_CASES,
        make_inputs=_mixer_inputs,
        forward=mixer_forward,
        step=mixer_step,
        ops=("linear", "causal_conv1d", "causal_conv1d_step", "selective_scan", "selective_scan_step"),
        doc="Mamba-1 mixer: output and final cache (conv_state, ssm_state), from zeros or a cache",
    ),
]
