"""Mamba-2 checks: the SSD scan op and the Mamba-2 mixer, forward vs reference and step.

ssd_scan: outputs y and final_state; ``step`` unrolls ssd_step over L from the same initial
state. The step form has no seq_idx, so for packed-sequence cases the unroll resets the state to
zero wherever seq_idx changes (what seq_idx means), then steps on. The cases cover L = 1, lengths
not divisible by the chunk, a chunk longer than the sequence, G > 1, D per head and per (head,
channel), nonzero initial states, three packed sequences, strong decay over a long sequence,
batches whose rows differ, an active dt_limit, and the z gate.

mamba2 mixer: outputs y and the final cache (conv_state, ssm_state); ``step`` feeds the tokens
one by one from the same starting cache (zeros, or a random nonzero cache). Parameters are the
official initialisation perturbed (D, dt_bias, A_log, norm weight and biases made non-constant)
so that sign and offset bugs show; they travel as flat inputs "param:<name>" and the cache as
"cache:<name>".
"""

from __future__ import annotations

import numpy as np

from mamba_conformance.mixers import mixer_forward, mixer_step
from mamba_conformance.check import Case, Check
from mamba_core.models import mamba2

# ---- the op -------------------------------------------------------------------------------
_ALL = {"z": True, "D": "H", "bias": True, "softplus": True, "h0": True}
_NONE = {"z": False, "D": None, "bias": False, "softplus": False, "h0": False}

_SCAN_CASES = (
    Case("L=1", {"B": 2, "L": 1, "H": 4, "P": 3, "G": 1, "N": 3, "Q": 8, **_ALL}),
    Case("L=37,Q=8,G=2,D(H,P)", {"B": 2, "L": 37, "H": 4, "P": 3, "G": 2, "N": 4, "Q": 8, **_ALL, "D": "HP"}),
    Case("B=3,G=H=3,h0,no z,L=13,Q=4",
         {"B": 3, "L": 13, "H": 3, "P": 2, "G": 3, "N": 2, "Q": 4, **_ALL, "z": False}),
    Case("plain(no z/D/bias/softplus/h0),L=20,Q=7",
         {"B": 2, "L": 20, "H": 2, "P": 3, "G": 1, "N": 5, "Q": 7, **_NONE}),
    Case("Q>L,z only,L=17,Q=64", {"B": 2, "L": 17, "H": 2, "P": 2, "G": 1, "N": 4, "Q": 64, **_NONE, "z": True}),
    Case("seq_idx:3 packed,h0,L=29,Q=8", {"B": 2, "L": 29, "H": 4, "P": 2, "G": 2, "N": 3, "Q": 8, **_ALL,
                                          "seq": 3}),
    Case("dt_limit=(0.05,0.6),L=25,Q=8", {"B": 2, "L": 25, "H": 2, "P": 3, "G": 1, "N": 3, "Q": 8, **_ALL,
                                          "limit": (0.05, 0.6)}),
    Case("strong-decay,L=256,Q=16", {"B": 2, "L": 256, "H": 2, "P": 2, "G": 1, "N": 3, "Q": 16, **_ALL,
                                     "decay": "strong"}),
    Case("weak-decay,L=129,Q=32", {"B": 2, "L": 129, "H": 2, "P": 2, "G": 2, "N": 3, "Q": 32, **_ALL,
                                   "decay": "weak"}),
)

_SCAN_ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state", "seq_idx")


def _seq_idx(rng, Bsz, L, n):
    """(B, L) int64, nondecreasing, n sequences per row with boundaries that differ per row."""
    rows = []
    for _ in range(Bsz):
        cuts = np.sort(rng.choice(np.arange(1, L), size=n - 1, replace=False)) if L > n else []
        row = np.zeros(L, np.int64)
        for c in cuts:
            row[c:] += 1
        rows.append(row + int(rng.integers(0, 3)))  # ids need not start at 0
    return np.stack(rows)


def _scan_inputs(case: Case, rng: np.random.Generator) -> dict:
    Bsz, L, H, P, G, N = case["B"], case["L"], case["H"], case["P"], case["G"], case["N"]
    decay = case.get("decay", "normal")
    inp = {
        "x": rng.standard_normal((Bsz, L, H, P)),
        "B": rng.standard_normal((Bsz, L, G, N)),
        "C": rng.standard_normal((Bsz, L, G, N)),
        "chunk_size": case["Q"],
        "dt_softplus": bool(case["softplus"]),
        "dt_limit": tuple(case.get("limit", (0.0, float("inf")))),
    }
    if decay == "strong":  # dt ~ 1..2, |A| ~ 2..8: the summed log-decay over L is ~ -1000
        inp["A"] = -rng.uniform(2.0, 8.0, H)
        dt = rng.uniform(0.5, 2.0, (Bsz, L, H))
        bias = rng.uniform(0.0, 0.5, H)
    elif decay == "weak":  # dt ~ 1e-3, |A| <= 1: the state remembers the whole sequence
        inp["A"] = -rng.uniform(0.01, 1.0, H)
        dt = rng.uniform(-7.5, -6.5, (Bsz, L, H)) if case["softplus"] else rng.uniform(5e-4, 2e-3, (Bsz, L, H))
        bias = rng.uniform(-0.2, 0.2, H)
    else:
        inp["A"] = -np.exp(rng.uniform(-1.0, 1.5, H))
        dt = rng.standard_normal((Bsz, L, H)) if case["softplus"] else rng.uniform(0.01, 0.8, (Bsz, L, H))
        bias = 0.5 * rng.standard_normal(H)
    inp["dt"] = dt
    if case["bias"]:
        inp["dt_bias"] = bias if case["softplus"] else np.abs(bias)
    if case["D"] == "H":
        inp["D"] = rng.standard_normal(H)
    elif case["D"] == "HP":
        inp["D"] = rng.standard_normal((H, P))
    if case["z"]:
        inp["z"] = rng.standard_normal((Bsz, L, H, P))
    if case["h0"]:
        inp["initial_state"] = 2.0 * rng.standard_normal((Bsz, H, P, N))
    if case.get("seq"):
        inp["seq_idx"] = _seq_idx(rng, Bsz, L, case["seq"])
    return inp


def _scan_forward(be, inputs) -> dict:
    kwargs = {k: inputs[k] for k in _SCAN_ARGS if k in inputs}
    y, s = be.ops.ssd_scan(**kwargs, chunk_size=inputs["chunk_size"], dt_softplus=inputs["dt_softplus"],
                           dt_limit=inputs["dt_limit"])
    return {"y": y, "final_state": s}


def _wide(xp, dtype):
    return xp.float64 if dtype == xp.float64 else xp.float32


def _scan_step(be, inputs) -> dict:
    xp = be.xp
    x = inputs["x"]
    Bsz, L, H, P = x.shape
    N = inputs["B"].shape[3]
    state = inputs.get("initial_state")
    if state is None:
        state = xp.zeros((Bsz, H, P, N), dtype=_wide(xp, x.dtype))
    z, seq = inputs.get("z"), inputs.get("seq_idx")
    ys = []
    for t in range(L):
        if seq is not None and t > 0:  # a new sequence starts from a zero state
            new = xp.reshape(seq[:, t] != seq[:, t - 1], (Bsz, 1, 1, 1))
            state = xp.where(new, xp.zeros_like(state), state)
        y, state = be.ops.ssd_step(
            x[:, t], inputs["dt"][:, t], inputs["A"], inputs["B"][:, t], inputs["C"][:, t], state,
            D=inputs.get("D"), z=None if z is None else z[:, t], dt_bias=inputs.get("dt_bias"),
            dt_softplus=inputs["dt_softplus"], dt_limit=inputs["dt_limit"],
        )
        ys.append(y)
    return {"y": xp.stack(ys, axis=1), "final_state": state}


# ---- the mixer ----------------------------------------------------------------------------
_SMALL = {"d_model": 8, "d_state": 4, "headdim": 4, "chunk_size": 8}  # E = 16, H = 4

_MIXER_CASES = (
    Case("B=2,L=11", {"B": 2, "L": 11, "cfg": dict(_SMALL)}),
    Case("L=1", {"B": 2, "L": 1, "cfg": dict(_SMALL)}),
    Case("from-cache,B=3,L=7", {"B": 3, "L": 7, "cache": True, "cfg": dict(_SMALL)}),
    Case("G=2,D_has_hdim,norm_before_gate,from-cache,L=37",
         {"B": 2, "L": 37, "cache": True,
          "cfg": {**_SMALL, "ngroups": 2, "D_has_hdim": True, "norm_before_gate": True}}),
    Case("no rmsnorm(z gate in scan),bias,no conv bias,K=3,L=19",
         {"B": 2, "L": 19, "cache": True,
          "cfg": {**_SMALL, "d_conv": 3, "rmsnorm": False, "bias": True, "conv_bias": False}}),
    Case("d_ssm<d_inner(gated MLP slice),dt_limit,G=2,L=21",
         {"B": 2, "L": 21,
          "cfg": {**_SMALL, "d_model": 6, "expand": 2, "d_ssm": 8, "ngroups": 2,
                  "dt_limit": (0.02, 0.5)}}),
    Case("strong-decay,L=96,Q=16", {"B": 2, "L": 96, "decay": "strong",
                                    "cfg": {**_SMALL, "d_model": 4, "d_state": 3, "headdim": 2,
                                            "chunk_size": 16}}),
)


def perturb(params: dict, rng: np.random.Generator, decay: str = "normal") -> dict:
    """float64 copies of the init params, with the constant or structured ones made random."""
    out = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out["D"] = out["D"] + 0.5 * rng.standard_normal(out["D"].shape)
    out["A_log"] = out["A_log"] + 0.3 * rng.standard_normal(out["A_log"].shape)
    out["dt_bias"] = out["dt_bias"] + rng.uniform(-1.0, 2.0, out["dt_bias"].shape)
    if "norm.weight" in out:
        out["norm.weight"] = out["norm.weight"] + 0.3 * rng.standard_normal(out["norm.weight"].shape)
    for k in ("in_proj.bias", "conv1d.bias", "out_proj.bias"):
        if k in out:
            out[k] = out[k] + 0.3 * rng.standard_normal(out[k].shape)
    if decay == "strong":  # |A| ~ 2..10, dt ~ 0.7..2: the summed log-decay over L is ~ -500
        out["A_log"] = np.log(rng.uniform(2.0, 10.0, out["A_log"].shape))
        out["dt_bias"] = rng.uniform(0.0, 2.0, out["dt_bias"].shape)
    return out


def _mixer_inputs(case: Case, rng: np.random.Generator) -> dict:
    cfg = mamba2.Config.from_dict(**case["cfg"])
    params = perturb(mamba2.init_params(cfg, rng), rng, case.get("decay", "normal"))
    Bsz = case["B"]
    inputs = {"cfg": cfg, "u": rng.standard_normal((Bsz, case["L"], cfg.d_model))}
    inputs.update({"param:" + k: v for k, v in params.items()})
    if case.get("cache"):
        for k, shape in mamba2.cache_shapes(cfg, Bsz).items():
            inputs["cache:" + k] = rng.standard_normal(shape)
    return inputs


CHECKS = [
    Check(
        name="op:ssd_scan",
        kind="op",
        cases=_SCAN_CASES,
        make_inputs=_scan_inputs,
        forward=_scan_forward,
        step=_scan_step,
        ops=("ssd_scan", "ssd_step"),
        doc="Mamba-2 SSD scan: y and final state; step = ssd_step unrolled (for seq_idx cases the "
            "unroll zeroes the state where seq_idx changes)",
    ),
    Check(
        name="mixer:mamba2",
        kind="model",
        cases=_MIXER_CASES,
        make_inputs=_mixer_inputs,
        forward=mixer_forward,
        step=mixer_step,
        ops=("linear", "causal_conv1d", "causal_conv1d_step", "ssd_scan", "ssd_step", "rmsnorm", "silu"),
        doc="Mamba-2 mixer: output and final cache (conv_state, ssm_state), from zeros or a cache",
    ),
]
