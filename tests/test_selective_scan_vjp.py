"""The selective scan's VJP: the reference against central finite differences of the reference
forward (every argument, float64); the default composition against the reference (float64 and
float32, strong decay over long sequences, every chunk size); keys, shapes, dtypes, validation."""

import zlib

import numpy as np
import pytest

from mamba_core.errors import ShapeError
from mamba_core.ops import REGISTRY
from mamba_core.ops import selective_scan as ss
from mamba_core.registry import get_backend

from _support import TOLERANCES

CPU = get_backend("cpu_numpy")
REF = get_backend("reference")
FD_EPS, FD_TOL = 1e-6, 1e-6
VJP_TOL = {"float64": 1e-10, "float32": TOLERANCES["float32"]}
ARRAY_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    num = np.abs(got - want).max() if got.size else 0.0
    return 0.0 if num == 0.0 else num / max(np.abs(want).max(), 1e-300)


def make(rng, Bsz, L, E, G, N, *, z=True, D=True, bias=True, softplus=True, h0=True):
    inp = dict(
        u=rng.standard_normal((Bsz, L, E)),
        delta=rng.standard_normal((Bsz, L, E)) if softplus else rng.uniform(0.01, 1.0, (Bsz, L, E)),
        A=-np.exp(rng.uniform(-1.0, 1.5, (E, N))),
        B=rng.standard_normal((Bsz, L, G, N)),
        C=rng.standard_normal((Bsz, L, G, N)),
        delta_softplus=softplus,
    )
    if D:
        inp["D"] = rng.standard_normal(E)
    if z:
        inp["z"] = rng.standard_normal((Bsz, L, E))
    if bias:
        inp["delta_bias"] = 0.5 * rng.standard_normal(E) if softplus else rng.uniform(0, 0.3, E)
    if h0:
        inp["initial_state"] = rng.standard_normal((Bsz, E, N))
    return inp


def cotangent(rng, inp, which):
    Bsz, L, E = inp["u"].shape
    N = inp["A"].shape[1]
    dy = rng.standard_normal((Bsz, L, E)) if which in ("dy", "both") else None
    dh = rng.standard_normal((Bsz, E, N)) if which in ("dfinal", "both") else None
    return dy, dh


def cast(inp, dtype):
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in inp.items()}


def cast_cot(cot, dtype):
    return tuple(None if c is None else c.astype(dtype) for c in cot)


def objective(inp, cot):
    """<dy, y> + <dfinal, h_L>: its gradient is the VJP with cotangent (dy, dfinal)."""
    y, h = ss.selective_scan_ref(**inp)
    dy, dh = cot
    return (0.0 if dy is None else (dy * y).sum()) + (0.0 if dh is None else (dh * h).sum())


def finite_difference(inp, cot, name):
    x = inp[name]
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += FD_EPS
        minus[idx] -= FD_EPS
        grad[idx] = (objective(dict(inp, **{name: plus}), cot)
                     - objective(dict(inp, **{name: minus}), cot)) / (2 * FD_EPS)
    return grad


# ---- the reference VJP against finite differences -----------------------------------------
#        label: (B, L, E, G, N, make options, cotangent, extra tweak)
FD_CASES = {
    "all options, G=2, both": (2, 5, 4, 2, 3, {}, "both", None),
    "all options, G=2, dy only": (2, 4, 4, 2, 2, {}, "dy", None),
    "all options, G=1, dfinal only": (1, 4, 3, 1, 3, {}, "dfinal", None),
    "plain (no z, D, bias, softplus, h0)": (
        2, 5, 3, 1, 2, dict(z=False, D=False, bias=False, softplus=False, h0=False), "both", None),
    "no softplus, bias, G=E": (1, 4, 4, 4, 2, dict(softplus=False, z=False), "both", None),
    "softplus, no h0, dfinal only": (2, 3, 2, 1, 2, dict(h0=False, D=False), "dfinal", None),
    "L=1": (2, 1, 4, 2, 3, {}, "both", None),
    "softplus above threshold 20": (1, 4, 4, 2, 2, {}, "both", "above20"),
    "strong decay": (1, 10, 4, 2, 3, {}, "both", "strong"),
}


def _tweak(inp, rng, how):
    if how == "above20":  # channels 0 and 2 sit far above the threshold: gradient 1 there
        inp["delta_bias"] = np.array([25.0, 0.3, 23.0, -0.2])
        inp["A"] = -rng.uniform(0.01, 0.05, inp["A"].shape)  # keep exp(dt A) away from 0
    elif how == "strong":
        # channel 0 decays by e^-20 or more per token: its states forget everything at every
        # step; the others by about e^-0.4 to e^-15 per token.
        # (Strong decay everywhere would shrink dA and dinitial_state below what eps = 1e-6
        # differences resolve; the default is checked on long strongly decaying sequences below.)
        inp["A"] = -np.exp(rng.uniform(0.0, 1.5, inp["A"].shape))
        inp["A"][0] = -40.0
        inp["delta_bias"] = np.ones_like(inp["delta_bias"])
    return inp


@pytest.mark.parametrize("case", FD_CASES, ids=list(FD_CASES))
def test_reference_vjp_matches_finite_differences(case):
    Bsz, L, E, G, N, opts, which, tweak = FD_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    inp = _tweak(make(rng, Bsz, L, E, G, N, **opts), rng, tweak)
    cot = cotangent(rng, inp, which)
    grads = ss.selective_scan_vjp_ref(cot, **inp)
    assert set(grads) == {k for k in ARRAY_ARGS if k in inp}
    for name, g in grads.items():
        assert g.shape == inp[name].shape, name
        fd = finite_difference(inp, cot, name)
        assert rel(g, fd) < FD_TOL, (name, rel(g, fd))
    if which == "dfinal":  # y does not enter the objective: the output-only grads are exactly 0
        for name in ("C", "D", "z"):
            if name in grads:
                assert not np.any(grads[name]), name
    if tweak == "above20":
        pre = inp["delta"] + inp["delta_bias"]
        assert pre[..., [0, 2]].min() > 20 and pre[..., [1, 3]].max() < 20
        nsp = ss.selective_scan_vjp_ref(cot, **dict(inp, delta_softplus=False,
                                                    delta=np.where(pre > 20, inp["delta"], 0.0)))
        # above the threshold softplus is the identity, so the delta gradient is the dt gradient
        above = [0, 2]
        np.testing.assert_allclose(grads["delta"][..., above], nsp["delta"][..., above], rtol=1e-12)


def test_reference_vjp_zero_cotangent_is_zero():
    inp = make(np.random.default_rng(1), 2, 3, 4, 2, 3)
    grads = ss.selective_scan_vjp_ref((None, None), **inp)
    assert set(grads) == set(ARRAY_ARGS)
    assert all(not np.any(g) for g in grads.values())


# ---- the default VJP against the reference ------------------------------------------------
SHAPES = {
    "L=1": (2, 1, 4, 1, 3, {}),
    "L=37,G=2": (2, 37, 6, 2, 4, {}),
    "B=3,G=3,no z": (3, 13, 6, 3, 2, {"z": False}),
    "G=E,no h0": (2, 20, 4, 4, 5, {"h0": False}),
    "plain": (2, 19, 4, 1, 5, dict(z=False, D=False, bias=False, softplus=False, h0=False)),
    "L=70 (several chunks)": (1, 70, 3, 1, 2, {}),
}


@pytest.mark.parametrize("which", ["both", "dy", "dfinal"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_default_vjp_matches_reference(shape, dtype, which):
    Bsz, L, E, G, N, opts = SHAPES[shape]
    rng = np.random.default_rng(5)
    inp = cast(make(rng, Bsz, L, E, G, N, **opts), dtype)
    cot = cast_cot(cotangent(rng, inp, which), dtype)
    want = ss.selective_scan_vjp_ref(cast_cot(cot, np.float64), **cast(inp, np.float64))
    got = CPU.ops.selective_scan_vjp(cot, **inp)
    assert set(got) == set(want) == {k for k in ARRAY_ARGS if k in inp}
    for name in want:
        assert got[name].shape == inp[name].shape and got[name].dtype == np.dtype(dtype), name
        assert rel(got[name], want[name]) < VJP_TOL[dtype], (name, rel(got[name], want[name]))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 64])
def test_every_chunk_size_gives_the_same_vjp(chunk):
    rng = np.random.default_rng(6)
    inp = make(rng, 2, 45, 4, 2, 3)
    cot = cotangent(rng, inp, "both")
    want = ss.selective_scan_vjp_ref(cot, **inp)
    got = ss._selective_scan_vjp(np, cot, **inp, chunk=chunk)
    for name in want:
        assert rel(got[name], want[name]) < 1e-12, name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_strong_decay_long_sequence_vjp_matches_reference(dtype):
    # sum of dt A over the sequence is about -3000: exp of a cumulative sum would under/overflow
    rng = np.random.default_rng(4)
    inp = make(rng, 2, 1000, 3, 1, 4, softplus=False)
    inp["A"] = -rng.uniform(1.0, 5.0, (3, 4))
    inp["delta"] = rng.uniform(0.3, 1.5, (2, 1000, 3))
    inp = cast(inp, dtype)
    cot = cast_cot(cotangent(rng, inp, "both"), dtype)
    want = ss.selective_scan_vjp_ref(cast_cot(cot, np.float64), **cast(inp, np.float64))
    got = CPU.ops.selective_scan_vjp(cot, **inp)
    for name in want:
        assert np.all(np.isfinite(got[name])), name
        assert rel(got[name], want[name]) < VJP_TOL[dtype], (name, rel(got[name], want[name]))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_total_decay_vjp_is_local(dtype):
    # exp(dt A) underflows to 0: h_t = dt_t B_t u_t, so the gradients are per-token closed forms
    # and nothing flows to A or to the initial state.
    rng = np.random.default_rng(3)
    L, E, N = 3000, 2, 3
    inp = make(rng, 1, L, E, 1, N, z=False, bias=False, softplus=False, h0=True)
    inp["delta"] = rng.uniform(0.5, 1.0, (1, L, E))
    inp["A"] = np.full((E, N), -1e4)
    dy, dh = cotangent(rng, inp, "both")
    dt, u, Bm, Cm = inp["delta"], inp["u"], inp["B"][:, :, 0], inp["C"][:, :, 0]
    bc = (Bm * Cm).sum(-1, keepdims=True)  # (1, L, 1)
    want_du = dy * (dt * bc + inp["D"])
    want_du[:, -1] += dt[:, -1] * (dh * Bm[:, -1, None]).sum(-1)
    got = CPU.ops.selective_scan_vjp(cast_cot((dy, dh), dtype), **cast(inp, dtype))
    assert all(np.all(np.isfinite(g)) for g in got.values())
    assert rel(got["u"], want_du) < TOLERANCES[dtype]
    assert not np.any(got["A"]) and not np.any(got["initial_state"])


def test_reference_backend_and_default_agree():
    rng = np.random.default_rng(7)
    inp = make(rng, 2, 9, 6, 3, 2)
    cot = cotangent(rng, inp, "both")
    a, b = REF.ops.selective_scan_vjp(cot, **inp), CPU.ops.selective_scan_vjp(cot, **inp)
    assert set(a) == set(b) and all(rel(b[k], a[k]) < 1e-12 for k in a)


def test_zero_length_sequence():
    rng = np.random.default_rng(8)
    inp = make(rng, 2, 0, 4, 2, 3)
    dh = rng.standard_normal((2, 4, 3))
    for fn in (ss.selective_scan_vjp_ref, CPU.ops.selective_scan_vjp):
        g = fn((np.zeros((2, 0, 4)), dh), **inp)
        np.testing.assert_array_equal(g["initial_state"], dh)
        assert not np.any(g["A"]) and g["u"].shape == (2, 0, 4) and g["B"].shape == (2, 0, 2, 3)


# ---- registration and validation ----------------------------------------------------------
def test_registered_as_the_vjp_of_selective_scan():
    spec = REGISTRY["selective_scan_vjp"]
    assert spec.vjp_of == "selective_scan" and spec.family == "selective_scan"
    assert spec.reference is ss.selective_scan_vjp_ref and spec.default is ss.selective_scan_vjp


@pytest.mark.parametrize("bad,expect", [
    (lambda inp, dy, dh: ((dy[:, :3], dh), inp), r"cotangent\[0\] \(dy\)"),
    (lambda inp, dy, dh: ((dy, dh[:, :, :2]), inp), r"cotangent\[1\] \(dfinal_state\)"),
    (lambda inp, dy, dh: ((dy,), inp), "must be the pair"),
    (lambda inp, dy, dh: (dy, inp), "must be the pair"),
    (lambda inp, dy, dh: ((dy.astype(np.int64), dh), inp), "must be a floating array"),
    (lambda inp, dy, dh: ((dy, dh), dict(inp, B=inp["B"][:, :, :, :2])), "'B'"),
])
def test_validate_names_the_cotangent(bad, expect):
    rng = np.random.default_rng(9)
    inp = make(rng, 2, 5, 4, 2, 3)
    cot, args = bad(inp, *cotangent(rng, inp, "both"))
    with pytest.raises(ShapeError, match=expect):
        CPU.ops.selective_scan_vjp(cot, **args)
