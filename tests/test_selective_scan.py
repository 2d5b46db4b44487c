"""The selective scan: reference against hand-derived closed forms; the default composition and
the step form against the reference; validation errors."""


import numpy as np
import pytest

from mamba_core.errors import ShapeError
from mamba_core.ops import selective_scan as ss
from mamba_core.registry import get_backend

from _support import TOLERANCES, rel

CPU = get_backend("cpu_numpy")
REF = get_backend("reference")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


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


def cast(inp, dtype):
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in inp.items()}


# ---- the reference against closed forms ---------------------------------------------------
def test_reference_one_token_by_hand():
    rng = np.random.default_rng(1)
    Bsz, E, G, N = 2, 4, 2, 3
    inp = make(rng, Bsz, 1, E, G, N)
    y, h = ss.selective_scan_ref(**inp)
    for b in range(Bsz):
        for e in range(E):
            g = e // (E // G)
            dt = np.log1p(np.exp(inp["delta"][b, 0, e] + inp["delta_bias"][e]))
            hh = [np.exp(dt * inp["A"][e, n]) * inp["initial_state"][b, e, n]
                  + dt * inp["B"][b, 0, g, n] * inp["u"][b, 0, e] for n in range(N)]
            yy = sum(hh[n] * inp["C"][b, 0, g, n] for n in range(N)) + inp["D"][e] * inp["u"][b, 0, e]
            zz = inp["z"][b, 0, e]
            yy *= zz * sigmoid(zz)
            np.testing.assert_allclose(h[b, e], hh, rtol=1e-13)
            np.testing.assert_allclose(y[b, 0, e], yy, rtol=1e-13)


def test_reference_constant_decay_geometric_series():
    # E = N = 1, dt = c, A = a, B = C = u = 1, h_0 = s: h_t = r^t s + c (1 - r^t) / (1 - r), r = e^{ca}
    L, c, a, s = 50, 0.3, -0.7, 2.5
    ones = np.ones((1, L, 1, 1))
    y, h = ss.selective_scan_ref(np.ones((1, L, 1)), np.full((1, L, 1), c), np.array([[a]]), ones, ones,
                                 initial_state=np.array([[[s]]]))
    r, t = np.exp(c * a), np.arange(1, L + 1)
    want = r**t * s + c * (1 - r**t) / (1 - r)
    np.testing.assert_allclose(y[0, :, 0], want, rtol=1e-13)
    np.testing.assert_allclose(h[0, 0, 0], want[-1], rtol=1e-13)


def test_delta_bias_and_softplus_transform():
    rng = np.random.default_rng(2)
    inp = make(rng, 2, 5, 4, 1, 3, bias=True, softplus=True)
    pre = inp["delta"] + inp["delta_bias"]
    plain = dict(inp, delta=np.log1p(np.exp(pre)), delta_softplus=False)
    del plain["delta_bias"]
    for fn in (ss.selective_scan_ref, CPU.ops.selective_scan):
        np.testing.assert_allclose(fn(**inp)[0], ss.selective_scan_ref(**plain)[0], rtol=1e-12)
    # without softplus the bias is simply added
    nosp = dict(inp, delta_softplus=False, delta=np.abs(inp["delta"]), delta_bias=np.abs(inp["delta_bias"]))
    added = dict(nosp, delta=nosp["delta"] + nosp["delta_bias"])
    del added["delta_bias"]
    np.testing.assert_allclose(ss.selective_scan_ref(**nosp)[0], ss.selective_scan_ref(**added)[0], rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_total_decay_over_long_sequence_is_exact(dtype):
    # exp(dt A) underflows to exactly 0, so h_t = dt B_t u_t and y_t = dt u_t <B_t, C_t> + D u_t;
    # a scan that forms exp(-cumsum(dt A)) would overflow to inf/nan here.
    rng = np.random.default_rng(3)
    L, E, N = 3000, 2, 3
    inp = make(rng, 1, L, E, 1, N, z=False, bias=False, softplus=False, h0=True)
    inp["delta"] = rng.uniform(0.5, 1.0, (1, L, E))
    inp["A"] = np.full((E, N), -1e4)
    dt, u = inp["delta"], inp["u"]
    want_y = dt * u * (inp["B"][:, :, 0] * inp["C"][:, :, 0]).sum(-1, keepdims=True) + inp["D"] * u
    want_h = dt[:, -1, :, None] * inp["B"][:, -1] * u[:, -1, :, None]
    y, h = CPU.ops.selective_scan(**cast(inp, dtype))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(h))
    assert rel(y, want_y) < TOLERANCES[dtype] and rel(h, want_h) < TOLERANCES[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_strong_decay_long_sequence_matches_reference(dtype):
    # sum of dt A over the sequence is about -3000: exp of a cumulative sum would underflow/overflow
    rng = np.random.default_rng(4)
    inp = make(rng, 2, 1000, 3, 1, 4, softplus=False)
    inp["A"] = -rng.uniform(1.0, 5.0, (3, 4))
    inp["delta"] = rng.uniform(0.3, 1.5, (2, 1000, 3))
    want = ss.selective_scan_ref(**cast(cast(inp, dtype), np.float64))
    got = CPU.ops.selective_scan(**cast(inp, dtype))
    assert rel(got[0], want[0]) < TOLERANCES[dtype] and rel(got[1], want[1]) < TOLERANCES[dtype]


# ---- default composition and step against the reference ----------------------------------
SHAPES = {
    "L=1": (2, 1, 4, 1, 3, {}),
    "L=37,G=2": (2, 37, 6, 2, 4, {}),
    "B=3,G=3,no z": (3, 13, 6, 3, 2, {"z": False}),
    "G=E,no h0": (2, 20, 4, 4, 5, {"h0": False}),
    "plain": (2, 19, 4, 1, 5, {"z": False, "D": False, "bias": False, "softplus": False, "h0": False}),
    "L=70 (several chunks)": (1, 70, 3, 1, 2, {}),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_default_matches_reference(shape, dtype):
    Bsz, L, E, G, N, opts = SHAPES[shape]
    inp = make(np.random.default_rng(5), Bsz, L, E, G, N, **opts)
    want_y, want_h = ss.selective_scan_ref(**cast(cast(inp, dtype), np.float64))
    y, h = CPU.ops.selective_scan(**cast(inp, dtype))
    assert y.dtype == np.dtype(dtype) and h.dtype == np.dtype(dtype)
    assert y.shape == (Bsz, L, E) and h.shape == (Bsz, E, N)
    assert rel(y, want_y) < TOLERANCES[dtype]
    assert rel(h, want_h) < TOLERANCES[dtype]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 64])
def test_every_chunk_size_gives_the_same_scan(chunk):
    inp = make(np.random.default_rng(6), 2, 45, 4, 2, 3)
    want_y, want_h = ss.selective_scan_ref(**inp)
    y, h = ss._selective_scan(np, **inp, chunk=chunk)
    assert rel(y, want_y) < 1e-12 and rel(h, want_h) < 1e-12


@pytest.mark.parametrize("backend", [CPU, REF], ids=["cpu_numpy", "reference"])
@pytest.mark.parametrize("opts", [{}, {"z": False, "D": False, "bias": False, "softplus": False, "h0": False}],
                         ids=["all", "plain"])
def test_step_unrolled_equals_forward(backend, opts):
    inp = make(np.random.default_rng(7), 2, 23, 6, 3, 4, **opts)
    y_seq, h_seq = backend.ops.selective_scan(**inp)
    state = inp.get("initial_state", np.zeros((2, 6, 4)))
    ys = []
    for t in range(23):
        y, state = backend.ops.selective_scan_step(
            inp["u"][:, t], inp["delta"][:, t], inp["A"], inp["B"][:, t], inp["C"][:, t], state,
            D=inp.get("D"), z=inp["z"][:, t] if "z" in inp else None,
            delta_bias=inp.get("delta_bias"), delta_softplus=inp["delta_softplus"],
        )
        ys.append(y)
    assert rel(np.stack(ys, 1), y_seq) < 1e-12
    assert rel(state, h_seq) < 1e-12


def test_step_dtypes():
    inp = make(np.random.default_rng(8), 2, 1, 4, 1, 3)
    args = cast(dict(u=inp["u"][:, 0], delta=inp["delta"][:, 0], A=inp["A"], B=inp["B"][:, 0],
                     C=inp["C"][:, 0], state=inp["initial_state"]), np.float32)
    y, h = CPU.ops.selective_scan_step(**args)
    assert y.dtype == np.float32 and h.dtype == np.float32 and h.shape == (2, 4, 3)


@pytest.mark.parametrize("backend", [CPU, REF], ids=["cpu_numpy", "reference"])
def test_groups_equal_B_C_repeated_per_channel(backend):
    E, G = 6, 3
    inp = make(np.random.default_rng(9), 2, 15, E, G, 4)
    per_channel = dict(inp, B=np.repeat(inp["B"], E // G, axis=2), C=np.repeat(inp["C"], E // G, axis=2))
    y_g, h_g = backend.ops.selective_scan(**inp)
    y_e, h_e = backend.ops.selective_scan(**per_channel)  # G = E: channel e reads its own B, C
    assert rel(y_g, y_e) < 1e-13 and rel(h_g, h_e) < 1e-13
    # and channel e really reads group e // (E // G): swapping groups changes only their channels
    swapped = dict(inp, B=inp["B"][:, :, ::-1], C=inp["C"][:, :, ::-1])
    y_s, _ = backend.ops.selective_scan(**swapped)
    assert rel(y_s[..., 2:4], y_g[..., 2:4]) < 1e-13 and rel(y_s[..., :2], y_g[..., :2]) > 1e-3


def test_batch_rows_are_independent():
    inp = make(np.random.default_rng(10), 3, 17, 4, 2, 3)
    y, h = CPU.ops.selective_scan(**inp)
    for b in range(3):
        row = {k: (v[b : b + 1] if isinstance(v, np.ndarray) and v.ndim >= 3 else v) for k, v in inp.items()}
        yb, hb = CPU.ops.selective_scan(**row)
        assert rel(yb, y[b : b + 1]) < 1e-14 and rel(hb, h[b : b + 1]) < 1e-14


# ---- validation ---------------------------------------------------------------------------
def _bad(name):
    inp = make(np.random.default_rng(11), 2, 5, 6, 2, 3)
    bad = {
        "u": dict(inp, u=inp["u"][:, :, :4]),
        "delta": dict(inp, delta=inp["delta"][:, :4]),
        "A": dict(inp, A=inp["A"][:, :2]),
        "B": dict(inp, B=inp["B"][:, :, :, :2]),
        "C": dict(inp, C=inp["C"][:1]),
        "D": dict(inp, D=inp["D"][:5]),
        "z": dict(inp, z=inp["z"][..., :5]),
        "delta_bias": dict(inp, delta_bias=inp["delta_bias"][None]),
        "initial_state": dict(inp, initial_state=inp["initial_state"][:, :, :2]),
        "groups": dict(inp, B=np.repeat(inp["B"], 2, axis=2)[:, :, :4],
                       C=np.repeat(inp["C"], 2, axis=2)[:, :, :4]),
        "dtype": dict(inp, u=np.ones((2, 5, 6), np.int64)),
    }
    return bad[name]


@pytest.mark.parametrize("name,expect", [
    ("u", "'u'"), ("delta", "'delta'"), ("A", "'A'"), ("B", "'B'"), ("C", "'C'"), ("D", "'D'"),
    ("z", "'z'"), ("delta_bias", "'delta_bias'"), ("initial_state", "'initial_state'"),
    ("groups", "not divisible by 4"), ("dtype", "'u' must be a floating array"),
])
def test_validate_names_the_argument(name, expect):
    with pytest.raises(ShapeError, match=expect):
        CPU.ops.selective_scan(**_bad(name))


def test_validate_step_names_the_state():
    inp = make(np.random.default_rng(12), 2, 1, 4, 1, 3)
    with pytest.raises(ShapeError, match="'state'"):
        CPU.ops.selective_scan_step(inp["u"][:, 0], inp["delta"][:, 0], inp["A"], inp["B"][:, 0],
                                    inp["C"][:, 0], np.zeros((2, 4, 5)))
    with pytest.raises(ShapeError, match="'B'"):
        CPU.ops.selective_scan_step(inp["u"][:, 0], inp["delta"][:, 0], inp["A"], inp["B"],
                                    inp["C"][:, 0], np.zeros((2, 4, 3)))
