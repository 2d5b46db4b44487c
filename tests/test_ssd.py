"""The SSD scan (Mamba-2): reference against hand-derived closed forms; the chunked default
composition and the step form against the reference; packed sequences; validation errors."""


import numpy as np
import pytest

from mamba_core.errors import ShapeError
from mamba_core.ops import ssd
from mamba_core.registry import get_backend

from _support import TOLERANCES, rel

CPU = get_backend("cpu_numpy")
REF = get_backend("reference")
INF = float("inf")


def silu(x):
    return x / (1.0 + np.exp(-x))


def make(rng, Bsz, L, H, P, G, N, *, z=True, D="H", bias=True, softplus=True, h0=True):
    inp = dict(
        x=rng.standard_normal((Bsz, L, H, P)),
        dt=rng.standard_normal((Bsz, L, H)) if softplus else rng.uniform(0.01, 1.0, (Bsz, L, H)),
        A=-np.exp(rng.uniform(-1.0, 1.5, H)),
        B=rng.standard_normal((Bsz, L, G, N)),
        C=rng.standard_normal((Bsz, L, G, N)),
        dt_softplus=softplus,
    )
    if D == "H":
        inp["D"] = rng.standard_normal(H)
    elif D == "HP":
        inp["D"] = rng.standard_normal((H, P))
    if z:
        inp["z"] = rng.standard_normal((Bsz, L, H, P))
    if bias:
        inp["dt_bias"] = 0.5 * rng.standard_normal(H) if softplus else rng.uniform(0, 0.3, H)
    if h0:
        inp["initial_state"] = rng.standard_normal((Bsz, H, P, N))
    return inp


def cast(inp, dtype):
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
            for k, v in inp.items()}


def packed(rng, Bsz, L, n):
    """(B, L) int64 nondecreasing sequence ids, n sequences per row, boundaries differing per row."""
    rows = []
    for _ in range(Bsz):
        cuts = np.sort(rng.choice(np.arange(1, L), size=n - 1, replace=False))
        rows.append(np.searchsorted(cuts, np.arange(L), side="right") + 5)
    return np.stack(rows).astype(np.int64)


# ---- the reference against closed forms ---------------------------------------------------
def test_reference_one_token_by_hand():
    rng = np.random.default_rng(1)
    Bsz, H, P, G, N = 2, 4, 3, 2, 3
    inp = make(rng, Bsz, 1, H, P, G, N, D="HP")
    y, S = ssd.ssd_scan_ref(**inp)
    for b in range(Bsz):
        for h in range(H):
            g = h // (H // G)
            dt = np.log1p(np.exp(inp["dt"][b, 0, h] + inp["dt_bias"][h]))
            for p in range(P):
                xv = inp["x"][b, 0, h, p]
                s = [np.exp(dt * inp["A"][h]) * inp["initial_state"][b, h, p, n]
                     + dt * xv * inp["B"][b, 0, g, n] for n in range(N)]
                yy = sum(s[n] * inp["C"][b, 0, g, n] for n in range(N)) + inp["D"][h, p] * xv
                yy *= silu(inp["z"][b, 0, h, p])
                np.testing.assert_allclose(S[b, h, p], s, rtol=1e-13)
                np.testing.assert_allclose(y[b, 0, h, p], yy, rtol=1e-13)


def test_reference_constant_decay_geometric_series():
    # H = P = N = 1, dt = c, A = a, x = B = C = 1, S_0 = s: S_t = r^t s + c (1 - r^t) / (1 - r)
    L, c, a, s = 50, 0.3, -0.7, 2.5
    ones = np.ones((1, L, 1, 1))
    y, S = ssd.ssd_scan_ref(ones, np.full((1, L, 1), c), np.array([a]), ones, ones,
                            initial_state=np.array([[[[s]]]]))
    r, t = np.exp(c * a), np.arange(1, L + 1)
    want = r**t * s + c * (1 - r**t) / (1 - r)
    np.testing.assert_allclose(y[0, :, 0, 0], want, rtol=1e-13)
    np.testing.assert_allclose(S[0, 0, 0, 0], want[-1], rtol=1e-13)


@pytest.mark.parametrize("fn", [ssd.ssd_scan_ref, CPU.ops.ssd_scan], ids=["reference", "cpu_numpy"])
def test_dt_transform_is_bias_then_softplus_then_clamp(fn):
    rng = np.random.default_rng(2)
    inp = make(rng, 2, 9, 4, 2, 1, 3)
    lim = (0.3, 0.9)
    pre = np.clip(np.log1p(np.exp(inp["dt"] + inp["dt_bias"])), *lim)
    plain = dict(inp, dt=pre, dt_softplus=False)
    del plain["dt_bias"]
    want = ssd.ssd_scan_ref(**plain)
    got = fn(**inp, chunk_size=4, dt_limit=lim)
    assert rel(got[0], want[0]) < 1e-12 and rel(got[1], want[1]) < 1e-12
    assert (pre == lim[0]).any() and (pre == lim[1]).any()  # both ends of the limit bite
    # (0, inf) means "no limit": the same as not passing it
    free = fn(**inp, chunk_size=4, dt_limit=(0.0, INF))
    assert rel(free[0], fn(**inp, chunk_size=4)[0]) == 0.0 and rel(free[0], got[0]) > 1e-3


def test_D_per_head_equals_D_per_head_and_channel_repeated():
    inp = make(np.random.default_rng(3), 2, 11, 3, 4, 1, 2, D="H")
    per_hp = dict(inp, D=np.repeat(inp["D"][:, None], 4, axis=1))
    for be in (CPU, REF):
        assert rel(be.ops.ssd_scan(**inp, chunk_size=4)[0], be.ops.ssd_scan(**per_hp, chunk_size=4)[0]) < 1e-14


# ---- default composition and step against the reference ----------------------------------
SHAPES = {
    "L=1": (2, 1, 4, 3, 1, 3, {}),
    "L=37,G=2,D(H,P)": (2, 37, 4, 3, 2, 4, {"D": "HP"}),
    "B=3,G=H=3,no z": (3, 13, 3, 2, 3, 2, {"z": False}),
    "no h0": (2, 20, 4, 2, 2, 5, {"h0": False}),
    "plain": (2, 19, 2, 3, 1, 5, {"z": False, "D": None, "bias": False, "softplus": False, "h0": False}),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_default_matches_reference(shape, chunk, dtype):
    Bsz, L, H, P, G, N, opts = SHAPES[shape]
    inp = make(np.random.default_rng(5), Bsz, L, H, P, G, N, **opts)
    want_y, want_S = ssd.ssd_scan_ref(**cast(cast(inp, dtype), np.float64))
    y, S = CPU.ops.ssd_scan(**cast(inp, dtype), chunk_size=chunk)
    assert y.dtype == np.dtype(dtype) and S.dtype == np.dtype(dtype)
    assert y.shape == (Bsz, L, H, P) and S.shape == (Bsz, H, P, N)
    assert rel(y, want_y) < TOLERANCES[dtype]
    assert rel(S, want_S) < TOLERANCES[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_total_decay_over_long_sequence_is_exact(dtype):
    # exp(dt A) underflows to exactly 0, so S_t = dt_t x_t B_t^T and y_t = dt_t x_t <B_t, C_t> + D x_t;
    # a chunked form that takes exp of a long cumulative sum would give inf/nan here.
    rng = np.random.default_rng(6)
    L, H, P, N = 1500, 2, 2, 3
    inp = make(rng, 1, L, H, P, 1, N, z=False, bias=False, softplus=False, h0=True)
    inp["dt"] = rng.uniform(0.5, 1.0, (1, L, H))
    inp["A"] = np.full(H, -1e4)
    dt, x = inp["dt"], inp["x"]
    BC = (inp["B"][:, :, 0] * inp["C"][:, :, 0]).sum(-1)  # (1, L)
    want_y = dt[..., None] * x * BC[:, :, None, None] + inp["D"][:, None] * x
    want_S = (dt[:, -1, :, None] * x[:, -1])[..., None] * inp["B"][:, -1, 0][:, None, None, :]
    y, S = CPU.ops.ssd_scan(**cast(inp, dtype), chunk_size=256)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(S))
    assert rel(y, want_y) < TOLERANCES[dtype] and rel(S, want_S) < TOLERANCES[dtype]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("chunk", [16, 256])
def test_strong_decay_long_sequence_matches_reference(chunk, dtype):
    # the summed log-decay is about -5000 over the sequence and -1000 inside one chunk of 256
    rng = np.random.default_rng(7)
    L, H = 1000, 3
    inp = make(rng, 2, L, H, 2, 1, 4, softplus=False)
    inp["A"] = -rng.uniform(2.0, 8.0, H)
    inp["dt"] = rng.uniform(0.3, 1.5, (2, L, H))
    want = ssd.ssd_scan_ref(**cast(cast(inp, dtype), np.float64))
    got = CPU.ops.ssd_scan(**cast(inp, dtype), chunk_size=chunk)
    assert rel(got[0], want[0]) < TOLERANCES[dtype] and rel(got[1], want[1]) < TOLERANCES[dtype]


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("backend", [CPU, REF], ids=["cpu_numpy", "reference"])
def test_seq_idx_equals_running_the_packed_sequences_separately(backend, chunk):
    rng = np.random.default_rng(8)
    Bsz, L, H, P, G, N = 2, 30, 4, 2, 2, 3
    inp = make(rng, Bsz, L, H, P, G, N)
    seq = packed(rng, Bsz, L, 3)
    y, S = backend.ops.ssd_scan(**inp, chunk_size=chunk, seq_idx=seq)
    for b in range(Bsz):
        starts = [0] + [t for t in range(1, L) if seq[b, t] != seq[b, t - 1]] + [L]
        assert len(starts) == 4
        for k, (s, e) in enumerate(zip(starts[:-1], starts[1:])):
            part = {n: (v[b:b + 1, s:e] if isinstance(v, np.ndarray) and v.ndim >= 3 else v)
                    for n, v in inp.items() if n != "initial_state"}
            if k == 0:  # only the first sequence starts from the initial state
                part["initial_state"] = inp["initial_state"][b:b + 1]
            yp, Sp = ssd.ssd_scan_ref(**part)
            assert rel(y[b:b + 1, s:e], yp) < 1e-12
        assert rel(S[b:b + 1], Sp) < 1e-12  # the final state is the last sequence's


def test_seq_idx_constant_changes_nothing():
    inp = make(np.random.default_rng(9), 2, 21, 2, 2, 1, 3)
    base = CPU.ops.ssd_scan(**inp, chunk_size=8)
    same = CPU.ops.ssd_scan(**inp, chunk_size=8, seq_idx=np.full((2, 21), 3, np.int32))
    assert rel(same[0], base[0]) < 1e-14 and rel(same[1], base[1]) < 1e-14


@pytest.mark.parametrize("backend", [CPU, REF], ids=["cpu_numpy", "reference"])
@pytest.mark.parametrize("opts", [{"D": "HP"}, {"z": False, "D": None, "bias": False, "softplus": False,
                                                "h0": False}], ids=["all", "plain"])
def test_step_unrolled_equals_forward(backend, opts):
    inp = make(np.random.default_rng(10), 2, 23, 4, 3, 2, 4, **opts)
    lim = (0.05, 2.0)
    y_seq, S_seq = backend.ops.ssd_scan(**inp, chunk_size=8, dt_limit=lim)
    state = inp.get("initial_state", np.zeros((2, 4, 3, 4)))
    ys = []
    for t in range(23):
        y, state = backend.ops.ssd_step(
            inp["x"][:, t], inp["dt"][:, t], inp["A"], inp["B"][:, t], inp["C"][:, t], state,
            D=inp.get("D"), z=inp["z"][:, t] if "z" in inp else None, dt_bias=inp.get("dt_bias"),
            dt_softplus=inp["dt_softplus"], dt_limit=lim,
        )
        ys.append(y)
    assert rel(np.stack(ys, 1), y_seq) < 1e-12
    assert rel(state, S_seq) < 1e-12


def test_step_dtypes():
    inp = make(np.random.default_rng(11), 2, 1, 4, 3, 1, 3)
    args = cast(dict(x=inp["x"][:, 0], dt=inp["dt"][:, 0], A=inp["A"], B=inp["B"][:, 0],
                     C=inp["C"][:, 0], state=inp["initial_state"]), np.float32)
    y, S = CPU.ops.ssd_step(**args)
    assert y.dtype == np.float32 and S.dtype == np.float32 and S.shape == (2, 4, 3, 3)


@pytest.mark.parametrize("backend", [CPU, REF], ids=["cpu_numpy", "reference"])
def test_groups_equal_B_C_repeated_per_head(backend):
    H, G = 6, 3
    inp = make(np.random.default_rng(12), 2, 15, H, 2, G, 4)
    per_head = dict(inp, B=np.repeat(inp["B"], H // G, axis=2), C=np.repeat(inp["C"], H // G, axis=2))
    y_g, S_g = backend.ops.ssd_scan(**inp, chunk_size=4)
    y_h, S_h = backend.ops.ssd_scan(**per_head, chunk_size=4)  # G = H: head h reads its own B, C
    assert rel(y_g, y_h) < 1e-13 and rel(S_g, S_h) < 1e-13
    # and head h really reads group h // (H // G): swapping groups changes only their heads
    swapped = dict(inp, B=inp["B"][:, :, ::-1], C=inp["C"][:, :, ::-1])
    y_s, _ = backend.ops.ssd_scan(**swapped, chunk_size=4)
    assert rel(y_s[:, :, 2:4], y_g[:, :, 2:4]) < 1e-13 and rel(y_s[:, :, :2], y_g[:, :, :2]) > 1e-3


def test_batch_rows_are_independent():
    rng = np.random.default_rng(13)
    inp = make(rng, 3, 17, 4, 2, 2, 3)
    inp["seq_idx"] = packed(rng, 3, 17, 2)
    y, S = CPU.ops.ssd_scan(**inp, chunk_size=4)
    for b in range(3):
        row = {k: (v[b:b + 1] if isinstance(v, np.ndarray) and (v.ndim >= 3 or k == "seq_idx") else v)
               for k, v in inp.items()}
        yb, Sb = CPU.ops.ssd_scan(**row, chunk_size=4)
        assert rel(yb, y[b:b + 1]) < 1e-13 and rel(Sb, S[b:b + 1]) < 1e-13


# ---- validation ---------------------------------------------------------------------------
def _bad(name):
    inp = make(np.random.default_rng(14), 2, 5, 6, 2, 2, 3)
    bad = {
        "x": dict(inp, x=inp["x"][:, :, :4]),
        "dt": dict(inp, dt=inp["dt"][:, :4]),
        "A": dict(inp, A=inp["A"][:2]),
        "B": dict(inp, B=inp["B"][:, :, :, :2]),
        "C": dict(inp, C=inp["C"][:1]),
        "D": dict(inp, D=inp["D"][:5]),
        "D(H,P)": dict(inp, D=np.ones((6, 3))),
        "z": dict(inp, z=inp["z"][..., :1]),
        "dt_bias": dict(inp, dt_bias=inp["dt_bias"][None]),
        "initial_state": dict(inp, initial_state=inp["initial_state"][..., :2]),
        "groups": dict(inp, B=np.repeat(inp["B"], 2, axis=2)[:, :, :4],
                       C=np.repeat(inp["C"], 2, axis=2)[:, :, :4]),
        "dtype": dict(inp, x=np.ones((2, 5, 6, 2), np.int64)),
        "chunk_size": dict(inp, chunk_size=0),
        "chunk_size float": dict(inp, chunk_size=8.0),
        "dt_limit": dict(inp, dt_limit=(0.5, 0.1)),
        "dt_limit pair": dict(inp, dt_limit=0.1),
        "seq_idx shape": dict(inp, seq_idx=np.zeros((2, 4), np.int64)),
        "seq_idx dtype": dict(inp, seq_idx=np.zeros((2, 5))),
        "dt_softplus": dict(inp, dt_softplus="yes"),
    }
    return bad[name]


@pytest.mark.parametrize("name,expect", [
    ("x", "'x'"), ("dt", "'dt'"), ("A", "'A'"), ("B", "'B'"), ("C", "'C'"), ("D", "'D'"),
    ("D(H,P)", "'D'"), ("z", "'z'"), ("dt_bias", "'dt_bias'"), ("initial_state", "'initial_state'"),
    ("groups", "not divisible by 4"), ("dtype", "'x' must be a floating array"),
    ("chunk_size", "'chunk_size' must be a positive integer, got 0"),
    ("chunk_size float", "'chunk_size'"), ("dt_limit", r"'dt_limit'.*\(0\.5, 0\.1\)"),
    ("dt_limit pair", "'dt_limit'"), ("seq_idx shape", "'seq_idx'"),
    ("seq_idx dtype", "'seq_idx' must be an integer array"), ("dt_softplus", "'dt_softplus'"),
])
def test_validate_names_the_argument(name, expect):
    with pytest.raises(ShapeError, match=expect):
        CPU.ops.ssd_scan(**_bad(name))


def test_validate_step_names_the_argument():
    inp = make(np.random.default_rng(15), 2, 1, 4, 3, 1, 3)
    args = dict(x=inp["x"][:, 0], dt=inp["dt"][:, 0], A=inp["A"], B=inp["B"][:, 0], C=inp["C"][:, 0],
                state=inp["initial_state"])
    with pytest.raises(ShapeError, match="'state'"):
        CPU.ops.ssd_step(**dict(args, state=np.zeros((2, 4, 3, 5))))
    with pytest.raises(ShapeError, match="'B'"):
        CPU.ops.ssd_step(**dict(args, B=inp["B"]))
    with pytest.raises(ShapeError, match="'dt_limit'"):
        CPU.ops.ssd_step(**args, dt_limit=(1.0, 1.0))
