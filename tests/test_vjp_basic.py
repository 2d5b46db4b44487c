"""VJPs of the small op families and the cross-entropy op.

1. Every reference VJP against central finite differences of its reference forward, in float64,
   for every floating argument (eps 1e-6, relative max error < 1e-6).
2. Every default VJP (cpu_numpy, ``be.ops.<op>_vjp``) against the reference VJP in float64 and
   float32, with the tolerances of the conformance table.
3. cross_entropy against a direct formula, ignore_index, and the sum/mean reductions.
"""

import numpy as np
import pytest

from mamba_conformance.check import TOLERANCES
from mamba_core.errors import ShapeError
from mamba_core.ops import REGISTRY
from mamba_core.registry import get_backend

FD_EPS = 1e-6
FD_TOL = 1e-6


def _r(rng, *shape):
    return rng.standard_normal(shape)


# ---- cases: name -> (op, builder(rng) -> (forward kwargs, which outputs get a cotangent)) ----
# The "present" tuple says which entries of a tuple output get a cotangent (others are None);
# None for single-output ops.
def _act(rng):
    x = _r(rng, 3, 4) * 3
    x[0, :2] = [25.0, 40.0]  # softplus above its threshold: gradient exactly 1
    x[1, :2] = [-30.0, 19.5]
    return {"x": x}, None


def _gate(rng):
    """silu_gate(x, z): z over the activations' range (both signs, |z| up to 40)."""
    return {"x": _r(rng, 3, 4), "z": _act(rng)[0]["x"]}, None


def _linear(bias):
    def make(rng):
        kw = {"x": _r(rng, 2, 3, 4), "weight": _r(rng, 5, 4)}
        if bias:
            kw["bias"] = _r(rng, 5)
        return kw, None

    return make


def _rmsnorm(gate, group_size, norm_before_gate):
    def make(rng):
        kw = {"x": _r(rng, 2, 3, 8), "weight": _r(rng, 8), "eps": 1e-5}
        if gate:
            kw.update(z=_r(rng, 2, 3, 8), norm_before_gate=norm_before_gate)
        if group_size:
            kw["group_size"] = group_size
        return kw, None

    return make


def _add_rmsnorm(residual, residual_in_fp32, present):
    def make(rng):
        kw = {"x": _r(rng, 2, 3, 6), "residual": _r(rng, 2, 3, 6) if residual else None,
              "weight": _r(rng, 6), "eps": 1e-5, "residual_in_fp32": residual_in_fp32}
        return kw, present

    return make


def _embedding(rng):
    ids = np.array([[0, 3, 3, 1], [4, 3, 0, 0]])  # repeats: the scatter must add them up
    return {"ids": ids, "weight": _r(rng, 6, 5)}, None


def _conv(L, bias, init, activation, present=(True, True)):
    def make(rng):
        C, K = 3, 4
        kw = {"x": _r(rng, 2, L, C), "weight": _r(rng, C, K), "activation": activation,
              "bias": _r(rng, C) if bias else None,
              "initial_state": _r(rng, 2, C, K) if init else None}
        return kw, present

    return make


def _ce(reduction, ignore):
    def make(rng):
        logits = _r(rng, 2, 3, 7) * 2
        targets = rng.integers(0, 7, (2, 3))
        if ignore:
            targets[0, 1] = targets[1, 2] = -100
        return {"logits": logits, "targets": targets, "reduction": reduction}, None

    return make


CASES = {
    "silu": ("silu", _act),
    "sigmoid": ("sigmoid", _act),
    "softplus": ("softplus", _act),
    "silu_gate": ("silu_gate", _gate),
    "linear": ("linear", _linear(False)),
    "linear-bias": ("linear", _linear(True)),
    "rmsnorm": ("rmsnorm", _rmsnorm(False, None, False)),
    "rmsnorm-group": ("rmsnorm", _rmsnorm(False, 4, False)),
    "rmsnorm-gate": ("rmsnorm", _rmsnorm(True, None, False)),
    "rmsnorm-gate-group": ("rmsnorm", _rmsnorm(True, 2, False)),
    "rmsnorm-gate-nbg": ("rmsnorm", _rmsnorm(True, None, True)),
    "rmsnorm-gate-group-nbg": ("rmsnorm", _rmsnorm(True, 4, True)),
    "add_rmsnorm-nores": ("add_rmsnorm", _add_rmsnorm(False, True, (True, True))),
    "add_rmsnorm-res-fp32": ("add_rmsnorm", _add_rmsnorm(True, True, (True, True))),
    "add_rmsnorm-res-nofp32": ("add_rmsnorm", _add_rmsnorm(True, False, (True, True))),
    "add_rmsnorm-dy-only": ("add_rmsnorm", _add_rmsnorm(True, True, (True, False))),
    "add_rmsnorm-dres-only": ("add_rmsnorm", _add_rmsnorm(True, True, (False, True))),
    "embedding": ("embedding", _embedding),
    "conv1d": ("causal_conv1d", _conv(5, False, False, None)),
    "conv1d-bias-silu": ("causal_conv1d", _conv(5, True, False, "silu")),
    "conv1d-init": ("causal_conv1d", _conv(5, False, True, None)),
    "conv1d-init-bias-silu": ("causal_conv1d", _conv(6, True, True, "silu")),
    "conv1d-short-init": ("causal_conv1d", _conv(2, True, True, "silu")),  # L < K
    "conv1d-dy-only": ("causal_conv1d", _conv(5, True, True, "silu", (True, False))),
    "conv1d-dstate-only": ("causal_conv1d", _conv(3, True, True, None, (False, True))),
    "cross_entropy-mean": ("cross_entropy", _ce("mean", False)),
    "cross_entropy-mean-ignore": ("cross_entropy", _ce("mean", True)),
    "cross_entropy-sum-ignore": ("cross_entropy", _ce("sum", True)),
}


def _is_float(a):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def _build(label, seed=0):
    op, make = CASES[label]
    rng = np.random.default_rng([seed, len(label)])
    kw, present = make(rng)
    out = REGISTRY[op].reference(**kw)
    if present is None:
        cot = np.asarray(rng.standard_normal(np.shape(out)))
    else:
        cot = tuple(rng.standard_normal(o.shape) if p else None for o, p in zip(out, present))
    return op, kw, cot


def _pairing(out, cot):
    """<cot, out>: the scalar whose gradient the VJP is."""
    if isinstance(cot, tuple):
        return sum(float(np.sum(c * o)) for c, o in zip(cot, out) if c is not None)
    return float(np.sum(cot * out))


def _rel(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-300))


# ---- 1. reference VJPs against finite differences ---------------------------------------------
@pytest.mark.parametrize("label", sorted(CASES))
def test_reference_vjp_matches_finite_differences(label):
    op, kw, cot = _build(label)
    fwd, vjp = REGISTRY[op].reference, REGISTRY[op + "_vjp"].reference
    grads = vjp(cot, **kw)
    floats = sorted(k for k, v in kw.items() if _is_float(v))
    assert sorted(grads) == floats, "one gradient per given floating argument, keyed by name"
    for name in floats:
        a = kw[name]
        assert grads[name].shape == a.shape
        fd = np.zeros(a.shape)
        for i in np.ndindex(a.shape):
            plus, minus = a.copy(), a.copy()
            plus[i] += FD_EPS
            minus[i] -= FD_EPS
            fd[i] = (_pairing(fwd(**{**kw, name: plus}), cot) - _pairing(fwd(**{**kw, name: minus}), cot)) / (
                2 * FD_EPS
            )
        err = _rel(grads[name], fd)
        assert err < FD_TOL, f"{label}: d/d{name} differs from finite differences by {err:.2e}"


# ---- 2. default VJPs (cpu_numpy) against the reference VJPs ---------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("label", sorted(CASES))
def test_default_vjp_matches_reference(label, dtype):
    be = get_backend("cpu_numpy")
    op, kw, cot = _build(label, seed=1)
    # round inputs to the tested dtype first so input rounding is not counted as error
    kw_t = {k: v.astype(dtype) if _is_float(v) else v for k, v in kw.items()}
    cast = lambda c: None if c is None else np.asarray(c).astype(dtype)  # noqa: E731
    cot_t = tuple(cast(c) for c in cot) if isinstance(cot, tuple) else cast(cot)
    kw_r = {k: v.astype(np.float64) if _is_float(v) else v for k, v in kw_t.items()}
    cot_r = tuple(None if c is None else c.astype(np.float64) for c in cot_t) if isinstance(cot, tuple) else (
        cot_t.astype(np.float64)
    )
    want = REGISTRY[op + "_vjp"].reference(cot_r, **kw_r)
    got = getattr(be.ops, op + "_vjp")(cot_t, **kw_t)
    assert sorted(got) == sorted(want)
    tol = 1e-10 if dtype == "float64" else TOLERANCES["float32"]
    for name in want:
        g = be.to_numpy(got[name])
        assert g.shape == kw[name].shape and g.dtype == np.dtype(dtype), (name, g.shape, g.dtype)
        err = _rel(g, want[name])
        assert err < tol, f"{label} {dtype}: d/d{name} relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("label", ["silu", "silu_gate", "linear-bias", "rmsnorm-gate-group", "add_rmsnorm-res-fp32",
                                   "embedding", "conv1d-init-bias-silu", "cross_entropy-mean-ignore"])
def test_zero_cotangent_gives_zero_gradients(label):
    be = get_backend("cpu_numpy")
    op, kw, cot = _build(label)
    none = tuple(None for _ in cot) if isinstance(cot, tuple) else None
    for grads in (REGISTRY[op + "_vjp"].reference(none, **kw), getattr(be.ops, op + "_vjp")(none, **kw)):
        assert sorted(grads) == sorted(k for k, v in kw.items() if _is_float(v))
        for name, g in grads.items():
            assert np.shape(g) == kw[name].shape and not np.any(be.to_numpy(g)), name


def test_every_vjp_is_registered_beside_its_op():
    for name in ["silu", "sigmoid", "softplus", "silu_gate", "linear", "rmsnorm", "add_rmsnorm", "embedding",
                 "causal_conv1d", "cross_entropy"]:
        spec = REGISTRY[name + "_vjp"]
        assert spec.vjp_of == name and spec.family == REGISTRY[name].family
    assert "causal_conv1d_step_vjp" not in REGISTRY  # training differentiates the sequence form


def test_embedding_default_vjp_over_several_onehot_blocks(monkeypatch):
    from mamba_core.ops import embedding as emb

    monkeypatch.setattr(emb, "ONEHOT_BLOCK", 16)  # 8 tokens -> blocks of 2 vocabulary rows
    rng = np.random.default_rng(3)
    ids, w, dy = rng.integers(0, 7, (2, 4)), rng.standard_normal((7, 3)), rng.standard_normal((2, 4, 3))
    got = get_backend("cpu_numpy").ops.embedding_vjp(dy, ids, w)["weight"]
    np.testing.assert_allclose(got, emb.embedding_vjp_ref(dy, ids, w)["weight"], rtol=1e-12, atol=1e-14)


# ---- 3. cross_entropy forward --------------------------------------------------------------
def _ce_direct(logits, targets, ignore_index=-100):
    """-log softmax(logits)[target] per position, straight from the definition."""
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    safe = np.where(targets == ignore_index, 0, targets)
    nll = -np.log(np.take_along_axis(p, safe[..., None], axis=-1)[..., 0])
    return np.where(targets == ignore_index, 0.0, nll), targets != ignore_index


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignore", [False, True])
def test_cross_entropy_matches_direct_formula(reduction, ignore, dtype):
    rng = np.random.default_rng(4)
    logits, targets = rng.standard_normal((3, 5, 11)) * 3, rng.integers(0, 11, (3, 5))
    if ignore:
        targets[0, :3] = -100
        targets[2, 4] = -100
    nll, valid = _ce_direct(logits, targets)
    want = nll.sum() / (valid.sum() if reduction == "mean" else 1)
    ref = REGISTRY["cross_entropy"].reference(logits, targets, reduction=reduction)
    assert abs(float(ref) - want) <= 1e-13 * abs(want)
    be = get_backend("cpu_numpy")
    got = be.ops.cross_entropy(logits.astype(dtype), targets, reduction=reduction)
    assert got.shape == () and got.dtype == np.dtype(dtype)
    want_t = REGISTRY["cross_entropy"].reference(logits.astype(dtype), targets, reduction=reduction)
    assert abs(float(got) - float(want_t)) <= (1e-12 if dtype == "float64" else 1e-6) * abs(float(want_t))


def test_cross_entropy_mean_is_sum_over_count_and_ignores_ignored_rows():
    rng = np.random.default_rng(5)
    logits, targets = rng.standard_normal((4, 6)), np.array([1, -100, 5, 0])
    ref = REGISTRY["cross_entropy"].reference
    s, m = float(ref(logits, targets, reduction="sum")), float(ref(logits, targets))
    assert abs(m - s / 3) < 1e-15 * abs(s)
    # the ignored row's logits change nothing
    other = logits.copy()
    other[1] = 100.0 * rng.standard_normal(6)
    assert float(ref(other, targets)) == m
    assert float(get_backend("cpu_numpy").ops.cross_entropy(other, targets)) == pytest.approx(m, rel=1e-14)
    # a custom ignore_index
    t2 = np.where(targets == -100, 3, targets)
    assert float(ref(logits, t2, ignore_index=3)) == pytest.approx(m, rel=1e-15)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5000.0, -5000.0, -5001.0]], np.float32)
    targets = np.array([1, 2])
    got = float(get_backend("cpu_numpy").ops.cross_entropy(logits, targets, reduction="sum"))
    want = 1000.0 + (np.log(2 + np.exp(-1.0)) + 1.0)
    assert np.isfinite(got) and abs(got - want) < 1e-6 * want
    g = get_backend("cpu_numpy").ops.cross_entropy_vjp(np.float32(1.0), logits, targets, reduction="sum")
    assert np.all(np.isfinite(g["logits"]))


def test_cross_entropy_errors():
    be = get_backend("cpu_numpy")
    logits, all_ignored = np.zeros((2, 3, 5)), np.full((2, 3), -100)
    for fn in (REGISTRY["cross_entropy"].reference, be.ops.cross_entropy):
        with pytest.raises(ShapeError, match="every target equals ignore_index"):
            fn(logits, all_ignored)
        assert float(fn(logits, all_ignored, reduction="sum")) == 0.0
        with pytest.raises(ShapeError, match="reduction"):
            fn(logits, np.zeros((2, 3), int), reduction="none")
    with pytest.raises(ShapeError, match="every target"):
        be.ops.cross_entropy_vjp(1.0, logits, all_ignored)
    with pytest.raises(ShapeError, match=r"\[0, 5\)"):
        REGISTRY["cross_entropy"].reference(logits, np.full((2, 3), 5))
    with pytest.raises(ShapeError, match="'targets' must have"):
        be.ops.cross_entropy(logits, np.zeros((2, 4), int))
    with pytest.raises(ShapeError, match="integer"):
        be.ops.cross_entropy(logits, np.zeros((2, 3)))
