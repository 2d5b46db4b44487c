"""Checks of the basic ops: activations, the SiLU gate, linear, rmsnorm, add_rmsnorm, embedding, causal_conv1d.

Every check calls the op through ``be.ops.<name>`` so the backend's kernel (or the default
composition it inherits) is what is certified. Options that are not arrays (eps, group sizes,
activation names, flags) travel in the inputs as plain Python values.

causal_conv1d also has a ``step`` column: causal_conv1d_step unrolled over the sequence from the
same initial state (zeros when none), returning the same y and final_state.
"""

from __future__ import annotations

import numpy as np

from mamba_conformance.check import Case, Check

# ---- activations --------------------------------------------------------------------------
_ACT_CASES = (
    Case("B=2,L=7,E=5", {"shape": (2, 7, 5), "scale": 3.0}),
    Case("1-D,E=1", {"shape": (1,), "scale": 1.0}),
    Case("wide range |x|<=40 (softplus threshold 20)", {"shape": (3, 64), "scale": 40.0, "edges": True}),
    Case("tiny |x|<=1e-3", {"shape": (4, 9), "scale": 1e-3}),
)

# values exactly at, and either side of, softplus's threshold and the sigmoid's saturation
_EDGES = np.array([0.0, 19.5, 20.0, 20.5, 21.0, -19.5, -20.0, -20.5, -21.0, 30.0, -30.0, 40.0, -40.0])


def _act_inputs(case: Case, rng: np.random.Generator) -> dict:
    x = rng.uniform(-1.0, 1.0, case["shape"]) * case["scale"]
    if case.get("edges"):
        flat = x.reshape(-1)
        flat[: _EDGES.size] = _EDGES
        x = flat.reshape(case["shape"])
    return {"x": x}


def _activation(name: str) -> Check:
    def forward(be, inputs):
        return {"y": getattr(be.ops, name)(inputs["x"])}

    return Check(
        name=f"op:{name}", kind="op", cases=_ACT_CASES, make_inputs=_act_inputs, forward=forward,
        ops=(name,), doc=f"{name}(x), elementwise, incl. |x| > 20",
    )


# ---- silu_gate ----------------------------------------------------------------------------
_GATE_CASES = (
    Case("B=2,L=5,H=3,P=4", {"shape": (2, 5, 3, 4), "scale": 3.0}),
    Case("1-D,E=1", {"shape": (1,), "scale": 1.0}),
    Case("wide range |z|<=40", {"shape": (3, 64), "scale": 40.0, "edges": True}),
)


def _gate_inputs(case: Case, rng: np.random.Generator) -> dict:
    return {"x": rng.standard_normal(case["shape"]), "z": _act_inputs(case, rng)["x"]}


def _gate_forward(be, inputs):
    return {"y": be.ops.silu_gate(inputs["x"], inputs["z"])}


# ---- linear -------------------------------------------------------------------------------
_LINEAR_CASES = (
    Case("3-D x,bias,B=2,L=5,K_in=7,K_out=3", {"x": (2, 5, 7), "K_out": 3, "bias": True}),
    Case("3-D x,no bias,B=3,L=1,K_in=8,K_out=16", {"x": (3, 1, 8), "K_out": 16, "bias": False}),
    Case("2-D x,bias,B=4,K_in=5,K_out=1", {"x": (4, 5), "K_out": 1, "bias": True}),
    Case("2-D x,no bias,B=1,K_in=33,K_out=9", {"x": (1, 33), "K_out": 9, "bias": False}),
)


def _linear_inputs(case: Case, rng: np.random.Generator) -> dict:
    k_in = case["x"][-1]
    inp = {
        "x": rng.standard_normal(case["x"]),
        "weight": rng.standard_normal((case["K_out"], k_in)) / np.sqrt(k_in),
    }
    if case["bias"]:
        inp["bias"] = rng.standard_normal(case["K_out"])
    return inp


def _linear_forward(be, inputs):
    return {"y": be.ops.linear(inputs["x"], inputs["weight"], inputs.get("bias"))}


# ---- rmsnorm ------------------------------------------------------------------------------
_RMSNORM_CASES = (
    Case("plain,B=2,L=5,E=8", {"x": (2, 5, 8)}),
    Case("plain,2-D,E=7,eps=1e-6", {"x": (3, 7), "eps": 1e-6}),
    Case("plain,small |x| (eps matters)", {"x": (2, 3, 6), "scale": 3e-3}),
    Case("gated,norm_before_gate=False", {"x": (2, 5, 8), "z": True, "nbg": False}),
    Case("gated,norm_before_gate=True", {"x": (2, 5, 8), "z": True, "nbg": True}),
    Case("gated,group_size=4<E=12,norm_before_gate=False", {"x": (2, 3, 12), "z": True, "nbg": False, "gs": 4}),
    Case("gated,group_size=3<E=12,norm_before_gate=True", {"x": (2, 3, 12), "z": True, "nbg": True, "gs": 3}),
    Case("plain,group_size=5<E=10", {"x": (1, 4, 10), "gs": 5}),
)


def _rmsnorm_inputs(case: Case, rng: np.random.Generator) -> dict:
    shape = case["x"]
    inp = {
        "x": rng.standard_normal(shape) * case.get("scale", 1.0),
        "weight": 1.0 + 0.3 * rng.standard_normal(shape[-1]),
        "eps": case.get("eps", 1e-5),
        "group_size": case.get("gs"),
        "norm_before_gate": bool(case.get("nbg", False)),
    }
    if case.get("z"):
        inp["z"] = 2.0 * rng.standard_normal(shape)
    return inp


def _rmsnorm_forward(be, inputs):
    y = be.ops.rmsnorm(
        inputs["x"], inputs["weight"], inputs["eps"], z=inputs.get("z"),
        group_size=inputs["group_size"], norm_before_gate=inputs["norm_before_gate"],
    )
    return {"y": y}


# ---- add_rmsnorm --------------------------------------------------------------------------
_ADD_CASES = tuple(
    Case(f"residual={'given' if res else 'None'},residual_in_fp32={fp32}{',' + extra if extra else ''}",
         {"x": shape, "residual": res, "fp32": fp32})
    for res in (False, True)
    for fp32 in (True, False)
    for shape, extra in (((2, 5, 8), ""), ((1, 1, 3), "B=1,L=1,D=3"))
)


def _add_inputs(case: Case, rng: np.random.Generator) -> dict:
    shape = case["x"]
    inp = {
        "x": rng.standard_normal(shape),
        "weight": 1.0 + 0.3 * rng.standard_normal(shape[-1]),
        "eps": 1e-5,
        "residual_in_fp32": bool(case["fp32"]),
    }
    if case["residual"]:
        inp["residual"] = 3.0 * rng.standard_normal(shape)
    return inp


def _add_forward(be, inputs):
    y, res = be.ops.add_rmsnorm(
        inputs["x"], inputs.get("residual"), inputs["weight"], inputs["eps"],
        residual_in_fp32=inputs["residual_in_fp32"],
    )
    return {"y": y, "residual": res}


# ---- embedding ----------------------------------------------------------------------------
_EMB_CASES = (
    Case("B=2,L=9,V=13,D=6", {"B": 2, "L": 9, "V": 13, "D": 6}),
    Case("L=1,V=1", {"B": 3, "L": 1, "V": 1, "D": 4}),
    Case("int32 ids,first and last rows,V=50,D=5", {"B": 2, "L": 6, "V": 50, "D": 5, "int32": True, "edges": True}),
)


def _emb_inputs(case: Case, rng: np.random.Generator) -> dict:
    ids = rng.integers(0, case["V"], size=(case["B"], case["L"]))
    if case.get("edges"):
        ids[0, 0], ids[-1, -1] = 0, case["V"] - 1
    if case.get("int32"):
        ids = ids.astype(np.int32)
    return {"ids": ids, "weight": rng.standard_normal((case["V"], case["D"]))}


def _emb_forward(be, inputs):
    return {"y": be.ops.embedding(inputs["ids"], inputs["weight"])}


# ---- causal_conv1d ------------------------------------------------------------------------
_CONV_CASES = (
    Case("K=4,silu,B=2,L=9,C=5", {"B": 2, "L": 9, "C": 5, "K": 4, "act": "silu", "bias": True}),
    Case("K=4,no act,initial_state,L=7", {"B": 2, "L": 7, "C": 3, "K": 4, "act": None, "bias": True, "h0": True}),
    Case("K=2,silu,initial_state,no bias,L=6", {"B": 3, "L": 6, "C": 4, "K": 2, "act": "silu", "bias": False, "h0": True}),
    Case("K=2,no act,L=5", {"B": 1, "L": 5, "C": 2, "K": 2, "act": None, "bias": True}),
    Case("L=1,K=4,initial_state", {"B": 2, "L": 1, "C": 6, "K": 4, "act": "silu", "bias": True, "h0": True}),
    Case("L=1,K=4", {"B": 2, "L": 1, "C": 3, "K": 4, "act": None, "bias": False}),
    Case("L=2<K=4,initial_state", {"B": 2, "L": 2, "C": 5, "K": 4, "act": "silu", "bias": True, "h0": True}),
    Case("L=3<K=4,no act", {"B": 2, "L": 3, "C": 3, "K": 4, "act": None, "bias": True}),
)


def _conv_inputs(case: Case, rng: np.random.Generator) -> dict:
    Bsz, L, C, K = case["B"], case["L"], case["C"], case["K"]
    inp = {
        "x": rng.standard_normal((Bsz, L, C)),
        "weight": rng.standard_normal((C, K)) / np.sqrt(K),
        "activation": case["act"],
    }
    if case["bias"]:
        inp["bias"] = rng.standard_normal(C)
    if case.get("h0"):
        inp["initial_state"] = rng.standard_normal((Bsz, C, K))
    return inp


def _conv_forward(be, inputs):
    y, state = be.ops.causal_conv1d(
        inputs["x"], inputs["weight"], inputs.get("bias"), inputs.get("initial_state"),
        activation=inputs["activation"],
    )
    return {"y": y, "final_state": state}


def _conv_step(be, inputs):
    xp = be.xp
    x = inputs["x"]
    Bsz, L, C = x.shape
    state = inputs.get("initial_state")
    if state is None:
        state = xp.zeros((Bsz, C, inputs["weight"].shape[1]), dtype=x.dtype)
    ys = []
    for t in range(L):
        y, state = be.ops.causal_conv1d_step(
            x[:, t], state, inputs["weight"], inputs.get("bias"), activation=inputs["activation"]
        )
        ys.append(y)
    return {"y": xp.stack(ys, axis=1), "final_state": state}


# ---- cross_entropy ------------------------------------------------------------------------
_CE_CASES = (
    Case("mean,B=2,L=7,V=11", {"B": 2, "L": 7, "V": 11, "reduction": "mean"}),
    Case("sum,ignored targets,V=5", {"B": 3, "L": 4, "V": 5, "reduction": "sum", "ignore": True}),
    Case("mean,ignored targets,large logits", {"B": 2, "L": 5, "V": 9, "reduction": "mean", "ignore": True,
                                                "scale": 30.0}),
)


def _ce_inputs(case: Case, rng: np.random.Generator) -> dict:
    B, L, V = case["B"], case["L"], case["V"]
    targets = rng.integers(0, V, size=(B, L))
    if case.get("ignore"):
        targets[0, 0] = targets[-1, -1] = -100
    return {"logits": case.get("scale", 2.0) * rng.standard_normal((B, L, V)), "targets": targets,
            "reduction": case["reduction"]}


def _ce_forward(be, inputs):
    return {"loss": be.ops.cross_entropy(inputs["logits"], inputs["targets"], -100, inputs["reduction"])}


CHECKS = [
    _activation("silu"),
    _activation("softplus"),
    _activation("sigmoid"),
    Check(
        name="op:silu_gate", kind="op", cases=_GATE_CASES, make_inputs=_gate_inputs,
        forward=_gate_forward, ops=("silu_gate",), doc="x * silu(z), elementwise, incl. |z| > 20",
    ),
    Check(
        name="op:linear", kind="op", cases=_LINEAR_CASES, make_inputs=_linear_inputs,
        forward=_linear_forward, ops=("linear",), doc="y = x W^T + b; 2-D and 3-D x, with and without bias",
    ),
    Check(
        name="op:rmsnorm", kind="op", cases=_RMSNORM_CASES, make_inputs=_rmsnorm_inputs,
        forward=_rmsnorm_forward, ops=("rmsnorm",),
        doc="RMSNorm: plain, gated (norm before/after the gate), grouped (group_size < E)",
    ),
    Check(
        name="op:add_rmsnorm", kind="op", cases=_ADD_CASES, make_inputs=_add_inputs,
        forward=_add_forward, ops=("add_rmsnorm",),
        doc="residual add + RMSNorm: outputs y and the new residual",
    ),
    Check(
        name="op:embedding", kind="op", cases=_EMB_CASES, make_inputs=_emb_inputs,
        forward=_emb_forward, ops=("embedding",), doc="weight[ids]",
    ),
    Check(
        name="op:causal_conv1d", kind="op", cases=_CONV_CASES, make_inputs=_conv_inputs,
        forward=_conv_forward, step=_conv_step, ops=("causal_conv1d", "causal_conv1d_step"),
        doc="causal depthwise conv: y and final_state; step = causal_conv1d_step unrolled",
    ),
    Check(
        name="op:cross_entropy", kind="op", cases=_CE_CASES, make_inputs=_ce_inputs,
        forward=_ce_forward, ops=("cross_entropy",),
        doc="next-token cross-entropy (mean or sum) with ignore_index, stable for large logits",
    ),
]
