"""Mamba-3 op checks: the exponential-trapezoidal scan, the rotary angles, and the rotation.

mamba3_scan: outputs y, final_state, final_k, final_v; ``step`` unrolls mamba3_step over L from
the same initial (state, k, v) -- zeros when the case has none. The cases cover L = 1, a length
not divisible by the chunk, a chunk longer than the sequence, chunk 1, SISO (R = 1, mimo_x None)
and MIMO R = 2 and R = 4 with random mimo_x, several heads with different content, nonzero
initial state / k / v (and each alone), trap pinned at 0 and 1 mixed with random values, D None
and given, batches whose rows differ, and strong decay over a long sequence (L = 256, chunk 16,
dt * |A| ~ 1..10 per token: the summed log-decay is ~ -1000).

mamba3_angles: outputs phi and final_angle; ``step`` applies the op one token at a time carrying
final_angle. apply_rope: forward only, both pairings, with broadcast leading dims.

mamba3_rope_scan: the scan with groups -> heads, bias and rotation fused in, SISO (interleaved)
and MIMO (halves), G = 1 and G > 1, with and without biases, odd N with S < N / 2; ``step`` runs
the prologue per token and mamba3_step from the same initial (state, k, v).
"""

from __future__ import annotations

import numpy as np

from mamba_core.ops.mamba3_fused import heads
from mamba_conformance.check import Case, Check

# ---- mamba3_scan --------------------------------------------------------------------------
_FULL = {"D": True, "h0": True, "k0": True, "v0": True}
_BARE = {"D": False, "h0": False, "k0": False, "v0": False}

_SCAN_CASES = (
    Case("L=1,SISO,h0/k0/v0", {"B": 2, "L": 1, "H": 2, "P": 3, "N": 4, "R": 1, "Q": 8, **_FULL}),
    Case("L=1,MIMO R=4", {"B": 2, "L": 1, "H": 2, "P": 2, "N": 4, "R": 4, "Q": 8, **_FULL}),
    Case("SISO,L=37,Q=8", {"B": 2, "L": 37, "H": 3, "P": 3, "N": 4, "R": 1, "Q": 8, **_FULL}),
    Case("MIMO R=2,L=37,Q=8", {"B": 2, "L": 37, "H": 2, "P": 3, "N": 4, "R": 2, "Q": 8, **_FULL}),
    Case("MIMO R=4,L=23,Q=4,no D", {"B": 3, "L": 23, "H": 2, "P": 2, "N": 4, "R": 4, "Q": 4, **_FULL,
                                    "D": False}),
    Case("SISO,bare(no D/h0/k/v),L=20,Q=7", {"B": 2, "L": 20, "H": 2, "P": 3, "N": 5, "R": 1, "Q": 7, **_BARE}),
    Case("MIMO R=2,k0/v0 only,Q>L,L=13,Q=64", {"B": 2, "L": 13, "H": 2, "P": 2, "N": 4, "R": 2, "Q": 64,
                                               **_BARE, "k0": True, "v0": True}),
    Case("SISO,h0 only,Q=1,L=9", {"B": 2, "L": 9, "H": 2, "P": 2, "N": 3, "R": 1, "Q": 1, **_BARE,
                                  "h0": True, "D": True}),
    Case("trap in {0,1} mixed,MIMO R=2,L=29,Q=8", {"B": 2, "L": 29, "H": 3, "P": 2, "N": 4, "R": 2, "Q": 8,
                                                    **_FULL, "trap": "extremes"}),
    Case("strong-decay,SISO,L=256,Q=16", {"B": 2, "L": 256, "H": 2, "P": 2, "N": 3, "R": 1, "Q": 16,
                                          **_FULL, "decay": "strong"}),
    Case("strong-decay,MIMO R=2,L=256,Q=16", {"B": 2, "L": 256, "H": 2, "P": 2, "N": 2, "R": 2, "Q": 16,
                                              **_FULL, "decay": "strong", "trap": "extremes"}),
)

_SCAN_ARGS = ("x", "dt", "A", "trap", "B", "C", "D", "mimo_x", "initial_state", "initial_k", "initial_v")


def _unit_rms(rng, shape):
    """Gaussian rows scaled to RMS 1 over the last dim, times a per-head-ish gain near 1."""
    a = rng.standard_normal(shape)
    a = a / np.sqrt(np.mean(a * a, axis=-1, keepdims=True))
    return a * rng.uniform(0.7, 1.3, shape[:-1] + (1,))


def _scan_inputs(case: Case, rng: np.random.Generator) -> dict:
    Bsz, L, H, P, N, R = case["B"], case["L"], case["H"], case["P"], case["N"], case["R"]
    inp = {
        "x": rng.standard_normal((Bsz, L, H, P)),
        "B": _unit_rms(rng, (Bsz, L, R, H, N)),
        "C": _unit_rms(rng, (Bsz, L, R, H, N)),
        "chunk_size": case["Q"],
    }
    if case.get("decay") == "strong":  # dt * |A| ~ 1..10 per token
        inp["dt"] = rng.uniform(0.5, 2.0, (Bsz, L, H))
        inp["A"] = -rng.uniform(2.0, 5.0, (Bsz, L, H))
    else:
        inp["dt"] = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), (Bsz, L, H)))
        inp["A"] = -np.exp(rng.uniform(-2.0, 1.5, (Bsz, L, H)))
    trap = 1.0 / (1.0 + np.exp(-2.0 * rng.standard_normal((Bsz, L, H))))
    if case.get("trap") == "extremes":
        pick = rng.integers(0, 3, (Bsz, L, H))
        trap = np.where(pick == 0, 0.0, np.where(pick == 1, 1.0, trap))
    inp["trap"] = trap
    if R > 1:
        inp["mimo_x"] = 1.0 / R + 0.5 * rng.standard_normal((H, R, P))
    if case["D"]:
        inp["D"] = 1.0 + 0.5 * rng.standard_normal(H)
    if case["h0"]:
        inp["initial_state"] = rng.standard_normal((Bsz, H, P, N))
    if case["k0"]:
        inp["initial_k"] = _unit_rms(rng, (Bsz, R, H, N))
    if case["v0"]:
        inp["initial_v"] = rng.standard_normal((Bsz, H, P))
    return inp


def _scan_forward(be, inputs) -> dict:
    kwargs = {k: inputs[k] for k in _SCAN_ARGS if k in inputs}
    y, s, k, v = be.ops.mamba3_scan(**kwargs, chunk_size=inputs["chunk_size"])
    return {"y": y, "final_state": s, "final_k": k, "final_v": v}


def _initial_carry(xp, inputs):
    """The (state, k, v) a step walk starts from: the case's initial ones, zeros where absent
    (H from x; R and N from B, which may be per head or per group)."""
    x, Bm = inputs["x"], inputs["B"]
    Bsz, L, H, P = x.shape
    R, N = Bm.shape[2], Bm.shape[4]
    wide = xp.float64 if x.dtype == xp.float64 else xp.float32
    state = inputs.get("initial_state")
    state = xp.zeros((Bsz, H, P, N), dtype=wide) if state is None else state
    k = inputs.get("initial_k")
    k = xp.zeros((Bsz, R, H, N), dtype=Bm.dtype) if k is None else k
    v = inputs.get("initial_v")
    v = xp.zeros((Bsz, H, P), dtype=x.dtype) if v is None else v
    return state, k, v


def _scan_step(be, inputs) -> dict:
    xp = be.xp
    x, Bm = inputs["x"], inputs["B"]
    L = x.shape[1]
    state, k, v = _initial_carry(xp, inputs)
    ys = []
    for t in range(L):
        y, state, k, v = be.ops.mamba3_step(
            x[:, t], inputs["dt"][:, t], inputs["A"][:, t], inputs["trap"][:, t], Bm[:, t],
            inputs["C"][:, t], state, k, v, D=inputs.get("D"), mimo_x=inputs.get("mimo_x"),
        )
        ys.append(y)
    return {"y": xp.stack(ys, axis=1), "final_state": state, "final_k": k, "final_v": v}


# ---- mamba3_rope_scan ---------------------------------------------------------------------
# The scan with its B/C prologue (groups -> heads, bias, rotation) fused in; step = per token
# the prologue on that token (heads, bias, apply_rope) and mamba3_step, so the fused op's final_k
# (a rotated B) is checked as a decode continues from it.
_ROPE_SCAN_CASES = (
    Case("SISO,interleaved,G=1,H=2,bias,L=37,Q=8", {"B": 2, "L": 37, "H": 2, "G": 1, "P": 3, "N": 8,
                                                   "S": 2, "R": 1, "Q": 8, "bias": True, **_FULL,
                                                   "pairing": "interleaved"}),
    Case("SISO,G=2,H=4,no bias,bare,L=20,Q=7", {"B": 2, "L": 20, "H": 4, "G": 2, "P": 2, "N": 6, "S": 3,
                                               "R": 1, "Q": 7, "bias": False, **_BARE, "pairing": "interleaved"}),
    Case("MIMO R=2,halves,bias,L=29,Q=8", {"B": 2, "L": 29, "H": 2, "G": 1, "P": 2, "N": 8, "S": 2,
                                           "R": 2, "Q": 8, "bias": True, **_FULL, "pairing": "halves"}),
    Case("L=1,MIMO R=4,halves,S=N/2,G=2", {"B": 2, "L": 1, "H": 2, "G": 2, "P": 2, "N": 4, "S": 2,
                                           "R": 4, "Q": 8, "bias": True, **_FULL, "pairing": "halves"}),
    Case("strong-decay,SISO,odd N,L=256,Q=16", {"B": 2, "L": 256, "H": 2, "G": 1, "P": 2, "N": 5, "S": 2,
                                                 "R": 1, "Q": 16, "bias": True, **_FULL,
                                                 "decay": "strong", "pairing": "interleaved"}),
)
_ROPE_SCAN_ARGS = _SCAN_ARGS + ("phi", "B_bias", "C_bias", "pairing")


def _rope_scan_inputs(case: Case, rng: np.random.Generator) -> dict:
    Bsz, L, H, G, N, R, S = (case[k] for k in ("B", "L", "H", "G", "N", "R", "S"))
    inp = _scan_inputs(case, rng)  # x, dt, A, trap, D, mimo_x, initial_* (and per-head B, C)
    inp["B"] = _unit_rms(rng, (Bsz, L, R, G, N))
    inp["C"] = _unit_rms(rng, (Bsz, L, R, G, N))
    inp["phi"] = rng.uniform(0.0, 2.0 * np.pi, (Bsz, L, H, S))
    if case["bias"]:
        inp["B_bias"] = 0.5 * rng.standard_normal((R, H, N))
        inp["C_bias"] = 0.5 * rng.standard_normal((R, H, N))
    inp["pairing"] = case["pairing"]
    return inp


def _rope_scan_forward(be, inputs) -> dict:
    kwargs = {k: inputs[k] for k in _ROPE_SCAN_ARGS if k in inputs}
    y, s, k, v = be.ops.mamba3_rope_scan(**kwargs, chunk_size=inputs["chunk_size"])
    return {"y": y, "final_state": s, "final_k": k, "final_v": v}


def _rope_scan_step(be, inputs) -> dict:
    xp = be.xp
    x, Bm = inputs["x"], inputs["B"]
    L, H = x.shape[1], x.shape[2]
    state, k, v = _initial_carry(xp, inputs)  # B per group or per head: R and N are its dims 2, 4
    ys = []
    for t in range(L):
        ph = xp.expand_dims(inputs["phi"][:, t], axis=1)  # (B, 1, H, S)
        Bt = be.ops.apply_rope(heads(xp, Bm[:, t], H, inputs.get("B_bias")), ph,
                               pairing=inputs["pairing"])
        Ct = be.ops.apply_rope(heads(xp, inputs["C"][:, t], H, inputs.get("C_bias")), ph,
                               pairing=inputs["pairing"])
        y, state, k, v = be.ops.mamba3_step(
            x[:, t], inputs["dt"][:, t], inputs["A"][:, t], inputs["trap"][:, t], Bt, Ct, state, k, v,
            D=inputs.get("D"), mimo_x=inputs.get("mimo_x"),
        )
        ys.append(y)
    return {"y": xp.stack(ys, axis=1), "final_state": state, "final_k": k, "final_v": v}


# ---- mamba3_angles ------------------------------------------------------------------------
_ANGLE_CASES = (
    Case("L=1,phi0", {"B": 2, "L": 1, "H": 2, "S": 3, "phi0": True}),
    Case("L=37,H=3,S=2", {"B": 2, "L": 37, "H": 3, "S": 2, "phi0": False}),
    Case("L=300,phi0 unreduced,large dt", {"B": 3, "L": 300, "H": 2, "S": 4, "phi0": "big", "dt": "large"}),
)


def _angle_inputs(case: Case, rng: np.random.Generator) -> dict:
    Bsz, L, H, S = case["B"], case["L"], case["H"], case["S"]
    hi = 4.0 if case.get("dt") == "large" else 0.5
    inp = {
        "angles": 1.5 * rng.standard_normal((Bsz, L, S)) + rng.uniform(-1.0, 1.0, S),
        "dt": np.exp(rng.uniform(np.log(1e-3), np.log(hi), (Bsz, L, H))),
    }
    if case["phi0"] == "big":  # an official decode cache stores phi without reduction
        inp["initial_angle"] = rng.uniform(-50.0, 50.0, (Bsz, H, S))
    elif case["phi0"]:
        inp["initial_angle"] = rng.uniform(0.0, 2.0 * np.pi, (Bsz, H, S))
    return inp


def _angle_forward(be, inputs) -> dict:
    phi, final = be.ops.mamba3_angles(inputs["angles"], inputs["dt"], inputs.get("initial_angle"))
    return {"phi": phi, "final_angle": final}


def _angle_step(be, inputs) -> dict:
    angles, dt = inputs["angles"], inputs["dt"]
    carry = inputs.get("initial_angle")
    phis = []
    for t in range(angles.shape[1]):
        phi, carry = be.ops.mamba3_angles(angles[:, t : t + 1], dt[:, t : t + 1], carry)
        phis.append(phi)
    return {"phi": be.xp.concat(phis, axis=1), "final_angle": carry}


# ---- apply_rope ---------------------------------------------------------------------------
_ROPE_CASES = (
    Case("interleaved,S=N/2", {"x": (2, 5, 1, 3, 8), "phi": (2, 5, 1, 3, 4), "pairing": "interleaved"}),
    Case("interleaved,S<N/2,odd N,broadcast R", {"x": (2, 4, 3, 2, 7), "phi": (2, 4, 1, 2, 2),
                                                 "pairing": "interleaved"}),
    Case("halves,S=N/4,broadcast R", {"x": (2, 3, 4, 2, 8), "phi": (2, 3, 1, 2, 2), "pairing": "halves"}),
    Case("halves,S=N/2", {"x": (3, 6, 10), "phi": (3, 6, 5), "pairing": "halves"}),
)


def _rope_inputs(case: Case, rng: np.random.Generator) -> dict:
    return {
        "x": rng.standard_normal(case["x"]),
        "phi": rng.uniform(0.0, 2.0 * np.pi, case["phi"]),
        "pairing": case["pairing"],
    }


def _rope_forward(be, inputs) -> dict:
    return {"y": be.ops.apply_rope(inputs["x"], inputs["phi"], pairing=inputs["pairing"])}


CHECKS = [
    Check(
        name="op:mamba3_scan",
        kind="op",
        cases=_SCAN_CASES,
        make_inputs=_scan_inputs,
        forward=_scan_forward,
        step=_scan_step,
        ops=("mamba3_scan", "mamba3_step"),
        doc="Mamba-3 exponential-trapezoidal scan (SISO and MIMO): y, final state, final k and v; "
            "step = mamba3_step unrolled from the same initial (state, k, v)",
    ),
    Check(
        name="op:mamba3_rope_scan",
        kind="op",
        cases=_ROPE_SCAN_CASES,
        make_inputs=_rope_scan_inputs,
        forward=_rope_scan_forward,
        step=_rope_scan_step,
        ops=("mamba3_rope_scan", "apply_rope", "mamba3_step"),
        doc="Mamba-3 scan with its B/C prologue fused in (groups -> heads, bias, rotation by phi): "
            "y, final state, final k (rotated) and v; step = the prologue per token, then mamba3_step",
    ),
    Check(
        name="op:mamba3_angles",
        kind="op",
        cases=_ANGLE_CASES,
        make_inputs=_angle_inputs,
        forward=_angle_forward,
        step=_angle_step,
        ops=("mamba3_angles",),
        doc="Mamba-3 rotary angles mod 2 pi: phi and final angle; step = the op one token at a "
            "time carrying final_angle",
    ),
    Check(
        name="op:apply_rope",
        kind="op",
        cases=_ROPE_CASES,
        make_inputs=_rope_inputs,
        forward=_rope_forward,
        ops=("apply_rope",),
        doc="Data-dependent rotary embedding, interleaved (SISO) and halves (MIMO) pairings",
    ),
]
