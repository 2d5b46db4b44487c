"""Gradients of the Mamba-3 ops: each reference VJP against central finite differences of its
forward reference for every argument (float64); each default VJP (cpu_numpy) against the
reference VJP in float64 and float32, including long sequences with strong decay; registration
and validation of the *_vjp ops."""


import numpy as np
import pytest

from mamba_core.errors import ShapeError
from mamba_core.ops import REGISTRY
from mamba_core.ops import mamba3 as m3
from mamba_core.ops import rope
from mamba_core.registry import get_backend

from _support import TOLERANCES, rel

CPU = get_backend("cpu_numpy")
TWO_PI = 2.0 * np.pi
FD_EPS = 1e-6
FD_TOL = 1e-6
DEFAULT_TOL = {"float64": 1e-10, "float32": TOLERANCES["float32"]}


def fd_rel(got, fd):
    """Relative error against a finite-difference gradient; exact zeros are judged absolutely."""
    got, fd = np.asarray(got, np.float64), np.asarray(fd, np.float64)
    return np.abs(got - fd).max() / max(np.abs(fd).max(), 1e-2)


def cast(v, dtype):
    return v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v


def floats(inp):
    return [k for k, v in inp.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]


def finite_differences(objective, inp, name):
    """d objective(inp) / d inp[name], central differences, one entry at a time."""
    base = inp[name]
    grad = np.zeros_like(base)
    for i in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[i] += FD_EPS
        minus[i] -= FD_EPS
        grad[i] = (objective(dict(inp, **{name: plus}), dict(inp, **{name: minus}))) / (2 * FD_EPS)
    return grad


# ---- mamba3_scan ---------------------------------------------------------------------------
def make_scan(rng, Bsz, L, H, P, N, R, *, mimo=True, D=True, h0=True, k0=True, v0=True,
              trap=None, decay="normal"):
    inp = dict(
        x=rng.standard_normal((Bsz, L, H, P)),
        B=rng.standard_normal((Bsz, L, R, H, N)),
        C=rng.standard_normal((Bsz, L, R, H, N)),
    )
    if decay == "strong":
        inp["dt"] = rng.uniform(0.5, 2.0, (Bsz, L, H))
        inp["A"] = -rng.uniform(2.0, 5.0, (Bsz, L, H))
    else:
        inp["dt"] = rng.uniform(0.05, 1.0, (Bsz, L, H))
        inp["A"] = -np.exp(rng.uniform(-1.5, 1.0, (Bsz, L, H)))
    if trap == "near0":
        inp["trap"] = rng.uniform(0.0, 1e-3, (Bsz, L, H))
    elif trap == "near1":
        inp["trap"] = rng.uniform(1.0 - 1e-3, 1.0, (Bsz, L, H))
    else:
        inp["trap"] = rng.uniform(0.0, 1.0, (Bsz, L, H))
    if mimo:
        inp["mimo_x"] = 1.0 / R + 0.5 * rng.standard_normal((H, R, P))
    else:
        assert R == 1
    if D:
        inp["D"] = 1.0 + 0.5 * rng.standard_normal(H)
    if h0:
        inp["initial_state"] = rng.standard_normal((Bsz, H, P, N))
    if k0:
        inp["initial_k"] = rng.standard_normal((Bsz, R, H, N))
    if v0:
        inp["initial_v"] = rng.standard_normal((Bsz, H, P))
    return inp


def scan_cotangent(rng, inp, which):
    """which: "all" or one of "dy", "dS", "dk", "dv" (the others None)."""
    Bsz, L, H, P = inp["x"].shape
    R, N = inp["B"].shape[2], inp["B"].shape[4]
    shapes = dict(dy=(Bsz, L, R, H, P), dS=(Bsz, H, P, N), dk=(Bsz, R, H, N), dv=(Bsz, H, P))
    return tuple(rng.standard_normal(s) if which in ("all", k) else None for k, s in shapes.items())


def scan_pairing(ct):
    """objective(plus, minus) = <ct, f(plus) - f(minus)> for the scan reference."""
    def objective(plus, minus):
        total = 0.0
        for c, p, m in zip(ct, m3.mamba3_scan_ref(**plus), m3.mamba3_scan_ref(**minus)):
            if c is not None:
                total += float((c * (p - m)).sum())
        return total
    return objective


SCAN_FD_CASES = {  # id: (B, L, H, P, N, R, make kwargs, cotangent)
    "siso-all": (2, 4, 2, 2, 3, 1, dict(mimo=False), "all"),
    "siso-bare": (2, 4, 2, 2, 3, 1, dict(mimo=False, D=False, h0=False, k0=False, v0=False), "all"),
    "mimo-all": (2, 4, 2, 2, 3, 2, {}, "all"),
    "mimo-bare": (1, 4, 2, 2, 3, 2, dict(D=False, h0=False, k0=False, v0=False), "all"),
    "mimo-dy": (1, 4, 2, 2, 3, 2, {}, "dy"),
    "mimo-dS": (1, 4, 2, 2, 3, 2, {}, "dS"),
    "mimo-dk": (1, 3, 2, 2, 3, 2, {}, "dk"),
    "mimo-dv": (1, 3, 2, 2, 3, 2, {}, "dv"),
    "mimo-state-only": (1, 4, 2, 2, 3, 2, dict(k0=False, v0=False), "all"),
    "mimo-kv-only": (1, 4, 2, 2, 3, 2, dict(h0=False, D=False), "all"),
    "mimo-k-without-v": (1, 3, 2, 2, 3, 2, dict(v0=False), "all"),
    "siso-trap-near0": (1, 4, 2, 2, 3, 1, dict(mimo=False, trap="near0"), "all"),
    "mimo-trap-near1": (1, 4, 2, 2, 3, 2, dict(trap="near1"), "all"),
    "siso-L1": (2, 1, 2, 2, 3, 1, dict(mimo=False), "all"),
    "mimo-L1": (2, 1, 2, 2, 3, 2, {}, "all"),
    "mimo-L5": (1, 5, 1, 3, 2, 3, {}, "all"),  # the "L not divisible by the chunk" shape
}


@pytest.mark.parametrize("case", list(SCAN_FD_CASES))
def test_scan_reference_vjp_matches_finite_differences(case):
    Bsz, L, H, P, N, R, kw, which = SCAN_FD_CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    inp = make_scan(rng, Bsz, L, H, P, N, R, **kw)
    ct = scan_cotangent(rng, inp, which)
    got = m3.mamba3_scan_vjp_ref(ct, **inp)
    assert set(got) == set(floats(inp)), "one gradient per floating argument given"
    for name in floats(inp):
        assert got[name].shape == inp[name].shape, name
        fd = finite_differences(scan_pairing(ct), inp, name)
        assert fd_rel(got[name], fd) < FD_TOL, (name, fd_rel(got[name], fd))


def test_scan_vjp_final_k_v_cotangents_are_pass_through():
    """dfinal_k / dfinal_v alone give exactly that gradient on B[:, -1] / x[:, -1], nothing else."""
    rng = np.random.default_rng(11)
    inp = make_scan(rng, 2, 5, 2, 3, 4, 2)
    dk, dv = rng.standard_normal((2, 2, 2, 4)), rng.standard_normal((2, 2, 3))
    for be_vjp in (m3.mamba3_scan_vjp_ref, lambda ct, **a: CPU.ops.mamba3_scan_vjp(ct, **a, chunk_size=2)):
        got = be_vjp((None, None, dk, dv), **inp)
        np.testing.assert_array_equal(got["B"][:, -1], dk)
        np.testing.assert_array_equal(got["x"][:, -1], dv)
        for name, g in got.items():
            rest = g[:, :-1] if name in ("x", "B") else g
            assert not np.any(rest), name


DEFAULT_SHAPES = [  # (B, L, H, P, N, R, chunk)
    (2, 1, 2, 3, 4, 1, 8),
    (2, 37, 3, 2, 4, 1, 8),
    (2, 37, 2, 3, 4, 2, 8),
    (1, 19, 2, 2, 4, 4, 4),
    (2, 12, 2, 2, 3, 2, 1),
    (2, 21, 2, 3, 4, 2, 64),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", DEFAULT_SHAPES, ids=lambda s: "B{}L{}H{}P{}N{}R{}Q{}".format(*s))
@pytest.mark.parametrize("mode", ["all+init", "all", "dy", "dS", "dk"])
def test_scan_default_vjp_matches_reference(shape, dtype, mode):
    Bsz, L, H, P, N, R, Q = shape
    rng = np.random.default_rng(L * 7 + R + len(mode))
    init = mode != "all"
    inp = make_scan(rng, Bsz, L, H, P, N, R, mimo=R > 1, D=init, h0=init, k0=init, v0=init)
    ct = scan_cotangent(rng, inp, "all" if mode.startswith("all") else mode)
    want = m3.mamba3_scan_vjp_ref(ct, **inp)
    got = CPU.ops.mamba3_scan_vjp(tuple(cast(c, dtype) for c in ct),
                                  **{k: cast(v, dtype) for k, v in inp.items()}, chunk_size=Q)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == inp[name].shape and got[name].dtype == np.dtype(dtype), name
        if np.any(want[name]):
            assert rel(got[name], want[name]) < DEFAULT_TOL[dtype], (name, rel(got[name], want[name]))
        else:
            assert not np.any(got[name]), name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_scan_default_vjp_strong_decay_long_sequence(dtype):
    """Strong decay over 600 tokens: every exponent is a short sum, so nothing overflows."""
    rng = np.random.default_rng(12)
    inp = make_scan(rng, 1, 600, 2, 2, 4, 2, decay="strong")
    ct = scan_cotangent(rng, inp, "all")
    want = m3.mamba3_scan_vjp_ref(ct, **inp)
    # no overflow, no invalid value; underflow to exact zeros is fine
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        got = CPU.ops.mamba3_scan_vjp(tuple(cast(c, dtype) for c in ct),
                                      **{k: cast(v, dtype) for k, v in inp.items()}, chunk_size=64)
    for name in want:
        assert np.all(np.isfinite(got[name])), name
        assert rel(got[name], want[name]) < DEFAULT_TOL[dtype], (name, rel(got[name], want[name]))


def test_scan_default_vjp_does_not_depend_on_chunk_size():
    rng = np.random.default_rng(13)
    inp = make_scan(rng, 2, 23, 2, 2, 3, 2)
    ct = scan_cotangent(rng, inp, "all")
    outs = [CPU.ops.mamba3_scan_vjp(ct, **inp, chunk_size=q) for q in (1, 5, 23, 64)]
    for o in outs[1:]:
        for name in o:
            assert rel(o[name], outs[0][name]) < 1e-12, name


# ---- mamba3_angles -------------------------------------------------------------------------
def make_angles(rng, Bsz, L, H, S, init=True):
    inp = dict(angles=rng.standard_normal((Bsz, L, S)), dt=rng.uniform(0.05, 1.5, (Bsz, L, H)))
    if init:
        inp["initial_angle"] = rng.uniform(-10.0, 10.0, (Bsz, H, S))
    return inp


def angles_pairing(ct):
    """<ct, phi(plus) - phi(minus)> with the differences taken on the circle: the mod 2 pi wrap is a
    jump of the forward value but not of the angle, so FD points that straddle it stay exact."""
    def circ(p, m):
        return np.mod(p - m + np.pi, TWO_PI) - np.pi

    def objective(plus, minus):
        total = 0.0
        for c, p, m in zip(ct, m3.mamba3_angles_ref(**plus), m3.mamba3_angles_ref(**minus)):
            if c is not None:
                total += float((c * circ(p, m)).sum())
        return total
    return objective


def angles_cotangent(rng, Bsz, L, H, S, which):
    dphi = rng.standard_normal((Bsz, L, H, S)) if which in ("all", "dphi") else None
    dfin = rng.standard_normal((Bsz, H, S)) if which in ("all", "dfinal") else None
    return dphi, dfin


@pytest.mark.parametrize("which", ["all", "dphi", "dfinal"])
@pytest.mark.parametrize("shape", [(2, 5, 3, 2), (2, 1, 2, 3)], ids=["L5", "L1"])
@pytest.mark.parametrize("init", [True, False], ids=["init", "zeros"])
def test_angles_reference_vjp_matches_finite_differences(shape, which, init):
    Bsz, L, H, S = shape
    rng = np.random.default_rng(L + len(which) + init)
    inp = make_angles(rng, Bsz, L, H, S, init)
    ct = angles_cotangent(rng, Bsz, L, H, S, which)
    got = m3.mamba3_angles_vjp_ref(ct, **inp)
    assert set(got) == set(floats(inp))
    for name in floats(inp):
        assert got[name].shape == inp[name].shape
        fd = finite_differences(angles_pairing(ct), inp, name)
        assert fd_rel(got[name], fd) < FD_TOL, (name, fd_rel(got[name], fd))


def test_angles_fd_is_exact_across_the_wrap():
    """An evaluation point whose FD step crosses 2 pi: the circular FD still equals the VJP."""
    rng = np.random.default_rng(14)
    inp = make_angles(rng, 1, 3, 1, 1, init=True)
    phi0 = m3.mamba3_angles_ref(**inp)[0][0, 0, 0, 0]
    inp["initial_angle"] = inp["initial_angle"] + (TWO_PI - phi0) - 1e-7  # phi_0 just below 2 pi
    ct = angles_cotangent(rng, 1, 3, 1, 1, "all")
    plus = dict(inp, initial_angle=inp["initial_angle"] + FD_EPS)
    assert m3.mamba3_angles_ref(**plus)[0][0, 0, 0, 0] < 1e-5  # the step did wrap
    fd = finite_differences(angles_pairing(ct), inp, "initial_angle")
    assert fd_rel(m3.mamba3_angles_vjp_ref(ct, **inp)["initial_angle"], fd) < FD_TOL


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("which", ["all", "dphi", "dfinal"])
@pytest.mark.parametrize("L,init", [(1, True), (13, False), (2000, True)])
def test_angles_default_vjp_matches_reference(dtype, which, L, init):
    rng = np.random.default_rng(L + len(which))
    inp = make_angles(rng, 2, L, 3, 2, init)
    ct = angles_cotangent(rng, 2, L, 3, 2, which)
    want = m3.mamba3_angles_vjp_ref(ct, **inp)
    got = CPU.ops.mamba3_angles_vjp(tuple(cast(c, dtype) for c in ct),
                                    **{k: cast(v, dtype) for k, v in inp.items()})
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == inp[name].shape and got[name].dtype == np.dtype(dtype)
        assert rel(got[name], want[name]) < DEFAULT_TOL[dtype], (name, rel(got[name], want[name]))


# ---- apply_rope ----------------------------------------------------------------------------
ROPE_CASES = {  # id: (x shape, phi shape, pairing)
    "interleaved-bcast-phi": ((2, 3, 2, 2, 6), (2, 3, 1, 2, 2), "interleaved"),
    "halves-bcast-phi": ((2, 3, 2, 2, 8), (2, 3, 1, 2, 2), "halves"),
    "interleaved-full-odd-N": ((2, 3, 2, 5), (2, 3, 2, 2), "interleaved"),
    "halves-full": ((2, 2, 3, 4), (2, 2, 3, 2), "halves"),
    "halves-bcast-x": ((2, 2, 1, 2, 8), (2, 2, 3, 2, 3), "halves"),
    "interleaved-lower-rank-phi": ((2, 3, 2, 4), (2, 2), "interleaved"),
}


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_reference_vjp_matches_finite_differences(case):
    xs, ps, pairing = ROPE_CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    inp = dict(x=rng.standard_normal(xs), phi=rng.uniform(-7.0, 7.0, ps))
    dy = rng.standard_normal(rope.apply_rope_ref(**inp, pairing=pairing).shape)

    def objective(plus, minus):
        return float((dy * (rope.apply_rope_ref(**plus, pairing=pairing)
                            - rope.apply_rope_ref(**minus, pairing=pairing))).sum())

    got = rope.apply_rope_vjp_ref(dy, **inp, pairing=pairing)
    assert set(got) == {"x", "phi"}
    for name in ("x", "phi"):
        assert got[name].shape == inp[name].shape
        fd = finite_differences(objective, inp, name)
        assert fd_rel(got[name], fd) < FD_TOL, (name, fd_rel(got[name], fd))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_default_vjp_matches_reference(case, dtype):
    xs, ps, pairing = ROPE_CASES[case]
    rng = np.random.default_rng(len(case))
    inp = dict(x=rng.standard_normal(xs), phi=rng.uniform(0.0, TWO_PI, ps))
    dy = rng.standard_normal(rope.apply_rope_ref(**inp, pairing=pairing).shape)
    want = rope.apply_rope_vjp_ref(dy, **inp, pairing=pairing)
    got = CPU.ops.apply_rope_vjp(dy.astype(dtype), inp["x"].astype(dtype), inp["phi"].astype(dtype),
                                 pairing=pairing)
    for name in ("x", "phi"):
        assert got[name].shape == inp[name].shape and got[name].dtype == np.dtype(dtype)
        assert rel(got[name], want[name]) < DEFAULT_TOL[dtype], (name, rel(got[name], want[name]))


def test_rope_vjp_of_x_is_the_inverse_rotation():
    rng = np.random.default_rng(15)
    x, phi = rng.standard_normal((3, 2, 8)), rng.uniform(0, TWO_PI, (3, 2, 3))
    for pairing in rope.PAIRINGS:
        y = rope.apply_rope_ref(x, phi, pairing)
        back = rope.apply_rope_vjp_ref(y, x, phi, pairing)["x"]
        np.testing.assert_allclose(back, x, rtol=1e-13, atol=1e-13)


# ---- registration and validation -----------------------------------------------------------
@pytest.mark.parametrize("op,family", [("mamba3_scan", "mamba3"), ("mamba3_angles", "mamba3"),
                                       ("apply_rope", "rope")])
def test_vjp_ops_are_registered(op, family):
    spec = REGISTRY[op + "_vjp"]
    assert spec.vjp_of == op and spec.family == family and spec.validate is not None


def test_vjp_validation_names_the_cotangent():
    rng = np.random.default_rng(16)
    inp = make_scan(rng, 1, 3, 2, 2, 3, 2)
    with pytest.raises(ShapeError, match="4-tuple"):
        CPU.ops.mamba3_scan_vjp((None, None), **inp)
    with pytest.raises(ShapeError, match="dfinal_k"):
        CPU.ops.mamba3_scan_vjp((None, None, np.zeros((1, 2, 2, 4)), None), **inp)
    with pytest.raises(ShapeError, match="mimo_x"):  # the forward's own checks run too
        CPU.ops.mamba3_scan_vjp((None,) * 4, **dict(inp, mimo_x=None))
    ang = make_angles(rng, 1, 3, 2, 2)
    with pytest.raises(ShapeError, match="dphi"):
        CPU.ops.mamba3_angles_vjp((np.zeros((1, 3, 2, 3)), None), **ang)
    with pytest.raises(ShapeError, match="pair"):
        CPU.ops.mamba3_angles_vjp(np.zeros((1, 3, 2, 2)), **ang)
    with pytest.raises(ShapeError, match="output shape"):
        CPU.ops.apply_rope_vjp(np.zeros((2, 3, 1, 2, 6)), np.zeros((2, 3, 2, 2, 6)),
                               np.zeros((2, 3, 1, 2, 2)))
