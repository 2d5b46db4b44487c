"""Mamba-3 ops: the scan reference against hand-derived closed forms; the chunked default
composition and the step form against the reference; continuing from a final (state, k, v);
MIMO against SISO; the rotary pairings; the angle recurrence over long sequences; validation."""


import numpy as np
import pytest

from mamba_core.errors import ShapeError
from mamba_core.ops import mamba3 as m3
from mamba_core.ops import rope, ssd
from mamba_core.registry import get_backend

from _support import TOLERANCES, rel

CPU = get_backend("cpu_numpy")
REF = get_backend("reference")
TWO_PI = 2.0 * np.pi


def circ(a, b):
    """Largest distance between two angle arrays on the circle."""
    d = np.mod(np.asarray(a, np.float64) - np.asarray(b, np.float64) + np.pi, TWO_PI) - np.pi
    return np.abs(d).max()


def make(rng, Bsz, L, H, P, N, R, *, mimo=True, D=True, h0=True, k0=True, v0=True, decay="normal",
         trap=None):
    unit = rng.standard_normal  # B/C of unit RMS
    inp = dict(
        x=rng.standard_normal((Bsz, L, H, P)),
        B=unit((Bsz, L, R, H, N)),
        C=unit((Bsz, L, R, H, N)),
    )
    if decay == "strong":
        inp["dt"] = rng.uniform(0.5, 2.0, (Bsz, L, H))
        inp["A"] = -rng.uniform(2.0, 5.0, (Bsz, L, H))
    else:
        inp["dt"] = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), (Bsz, L, H)))
        inp["A"] = -np.exp(rng.uniform(-2.0, 1.5, (Bsz, L, H)))
    inp["trap"] = rng.uniform(0.0, 1.0, (Bsz, L, H)) if trap is None else np.full((Bsz, L, H), float(trap))
    if mimo and R > 1:
        inp["mimo_x"] = 1.0 / R + 0.5 * rng.standard_normal((H, R, P))
    if D:
        inp["D"] = 1.0 + 0.5 * rng.standard_normal(H)
    if h0:
        inp["initial_state"] = rng.standard_normal((Bsz, H, P, N))
    if k0:
        inp["initial_k"] = unit((Bsz, R, H, N))
    if v0:
        inp["initial_v"] = rng.standard_normal((Bsz, H, P))
    return inp


def cast(inp, dtype):
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
            for k, v in inp.items()}


def ref_scan(inp):
    return m3.mamba3_scan_ref(**inp)


# ---- the reference against closed forms ---------------------------------------------------
@pytest.mark.parametrize("R", [1, 3])
def test_reference_one_token_by_hand(R):
    """L = 1 from (S0, k0, v0): y_r = (alpha S0 + beta sum_r v0_r k0_r^T + gamma sum_r v_r B_r^T) C_r + D v_r."""
    rng = np.random.default_rng(1)
    Bsz, H, P, N = 2, 3, 2, 4
    inp = make(rng, Bsz, 1, H, P, N, R)
    mx = inp.get("mimo_x", np.ones((H, R, P)))
    y, S, k, v = ref_scan(inp)
    for b in range(Bsz):
        for h in range(H):
            dt, A, tr = inp["dt"][b, 0, h], inp["A"][b, 0, h], inp["trap"][b, 0, h]
            alpha = np.exp(A * dt)
            beta, gamma = (1 - tr) * dt * alpha, tr * dt
            S_h = alpha * inp["initial_state"][b, h]
            for r in range(R):
                S_h = S_h + beta * np.outer(inp["initial_v"][b, h] * mx[h, r], inp["initial_k"][b, r, h])
                S_h = S_h + gamma * np.outer(inp["x"][b, 0, h] * mx[h, r], inp["B"][b, 0, r, h])
            np.testing.assert_allclose(S[b, h], S_h, rtol=1e-13, atol=1e-13)
            for r in range(R):
                want = S_h @ inp["C"][b, 0, r, h] + inp["D"][h] * inp["x"][b, 0, h] * mx[h, r]
                np.testing.assert_allclose(y[b, 0, r, h], want, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(k, inp["B"][:, -1])
    np.testing.assert_array_equal(v, inp["x"][:, -1])


def test_trap_one_is_euler_scan_of_mamba2():
    """trap = 1: beta = 0, gamma = dt -- the Mamba-2 recurrence (k0/v0 do not matter)."""
    rng = np.random.default_rng(2)
    Bsz, L, H, P, N = 2, 11, 3, 2, 4
    inp = make(rng, Bsz, L, H, P, N, 1, trap=1.0)
    A_h = -np.exp(rng.uniform(-1, 1, H))
    inp["A"] = np.broadcast_to(A_h, (Bsz, L, H)).copy()  # constant in time, as Mamba-2's
    y, S, _, _ = ref_scan(inp)
    y2, S2 = ssd.ssd_scan_ref(inp["x"], inp["dt"], A_h, inp["B"][:, :, 0], inp["C"][:, :, 0], D=inp["D"],
                              initial_state=inp["initial_state"])  # G = H: one B/C per head
    assert rel(y[:, :, 0], y2) < 1e-13 and rel(S, S2) < 1e-13
    inp["initial_k"] = inp["initial_k"] + 5.0
    assert rel(ref_scan(inp)[0], y) < 1e-15


def test_trap_zero_delays_the_input_by_one_token():
    """trap = 0: S_t = alpha_t (S_{t-1} + dt_t x_{t-1} B_{t-1}^T); x_t reaches y_t only through D."""
    rng = np.random.default_rng(3)
    Bsz, L, H, P, N = 2, 9, 2, 3, 4
    inp = make(rng, Bsz, L, H, P, N, 1, trap=0.0)
    y, S, _, _ = ref_scan(inp)
    S_h = inp["initial_state"].copy()
    x_prev, k_prev = inp["initial_v"], inp["initial_k"][:, 0]
    for t in range(L):
        alpha = np.exp(inp["A"][:, t] * inp["dt"][:, t])[..., None, None]
        S_h = alpha * (S_h + inp["dt"][:, t, :, None, None] * x_prev[..., None] * k_prev[:, :, None, :])
        want = (S_h * inp["C"][:, t, 0, :, None, :]).sum(-1) + inp["D"][:, None] * inp["x"][:, t]
        np.testing.assert_allclose(y[:, t, 0], want, rtol=1e-12, atol=1e-12)
        x_prev, k_prev = inp["x"][:, t], inp["B"][:, t, 0]
    np.testing.assert_allclose(S, S_h, rtol=1e-12, atol=1e-12)
    # changing the last token's x moves y_{L-1} by D dx only, and the state not at all
    bumped = dict(inp, x=inp["x"].copy())
    bumped["x"][:, -1] += 1.0
    y2, S2, _, _ = ref_scan(bumped)
    np.testing.assert_allclose(y2[:, -1, 0] - y[:, -1, 0], np.broadcast_to(inp["D"][:, None], (Bsz, H, P)),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S2, S, rtol=1e-14, atol=1e-14)


def test_mimo_rank_one_with_ones_equals_siso():
    rng = np.random.default_rng(4)
    inp = make(rng, 2, 13, 2, 3, 4, 1, mimo=False)
    siso = ref_scan(inp)
    mimo = ref_scan(dict(inp, mimo_x=np.ones((2, 1, 3))))
    for a, b in zip(siso, mimo):
        np.testing.assert_array_equal(a, b)
    d_siso = CPU.ops.mamba3_scan(**inp, chunk_size=4)
    d_mimo = CPU.ops.mamba3_scan(**inp, mimo_x=np.ones((2, 1, 3)), chunk_size=4)
    for a, b in zip(d_siso, d_mimo):
        assert rel(a, b) < 1e-15


def test_mimo_ranks_sum_into_one_state():
    """R = 2 with mimo_x = (1, 1) and B_1 = 0 has the SISO state; rank 1 reads it with C_1."""
    rng = np.random.default_rng(5)
    Bsz, L, H, P, N = 2, 7, 2, 2, 3
    inp = make(rng, Bsz, L, H, P, N, 1, mimo=False, k0=False)
    two = dict(inp, mimo_x=np.ones((H, 2, P)))
    two["B"] = np.concatenate([inp["B"], np.zeros_like(inp["B"])], axis=2)
    C1 = rng.standard_normal(inp["C"].shape)
    two["C"] = np.concatenate([inp["C"], C1], axis=2)
    y1, S1, _, _ = ref_scan(inp)
    y2, S2, _, _ = ref_scan(two)
    assert rel(S2, S1) < 1e-14 and rel(y2[:, :, :1], y1) < 1e-14
    y_c1, _, _, _ = ref_scan(dict(inp, C=C1))
    assert rel(y2[:, :, 1:], y_c1) < 1e-14


# ---- default (chunked) composition and step against the reference -------------------------
SCAN_SHAPES = [  # (B, L, H, P, N, R, chunk)
    (2, 1, 2, 3, 4, 1, 8),
    (2, 37, 3, 2, 4, 1, 8),
    (2, 37, 2, 3, 4, 2, 8),
    (3, 19, 2, 2, 4, 4, 4),
    (2, 12, 2, 2, 3, 2, 1),
    (2, 21, 2, 3, 4, 1, 64),
    (2, 21, 2, 2, 4, 4, 64),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SCAN_SHAPES, ids=lambda s: "B{}L{}H{}P{}N{}R{}Q{}".format(*s))
@pytest.mark.parametrize("init", [True, False], ids=["init", "zeros"])
def test_chunked_default_matches_reference(shape, dtype, init):
    Bsz, L, H, P, N, R, Q = shape
    rng = np.random.default_rng(L * 31 + R)
    inp = cast(make(rng, Bsz, L, H, P, N, R, D=init, h0=init, k0=init, v0=init), dtype)
    want = ref_scan(inp)
    got = CPU.ops.mamba3_scan(**inp, chunk_size=Q)
    assert got[0].dtype == np.dtype(dtype) and got[0].shape == (Bsz, L, R, H, P)
    assert got[1].dtype == np.dtype(dtype) and got[1].shape == (Bsz, H, P, N)
    for g, w in zip(got, want):
        assert rel(g, w) < TOLERANCES[dtype]


def test_chunk_size_does_not_change_the_result():
    rng = np.random.default_rng(6)
    inp = make(rng, 2, 30, 2, 2, 4, 2)
    outs = [CPU.ops.mamba3_scan(**inp, chunk_size=q) for q in (1, 3, 8, 30, 100)]
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):
            assert rel(a, b) < 1e-13


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("R", [1, 2])
def test_long_strong_decay_is_exact(dtype, R):
    """L = 256 with dt |A| ~ 1..10 per token: the summed log-decay is ~ -1000 (exp would underflow)."""
    rng = np.random.default_rng(7)
    inp = cast(make(rng, 2, 256, 2, 2, 3, R, decay="strong"), dtype)
    want = ref_scan(inp)
    got = CPU.ops.mamba3_scan(**inp, chunk_size=16)
    assert all(np.isfinite(np.asarray(g)).all() for g in got)
    for g, w in zip(got, want):
        assert rel(g, w) < TOLERANCES[dtype]


def _unrolled(be, inp):
    x = inp["x"]
    Bsz, L, H, P = x.shape
    R, N = inp["B"].shape[2], inp["B"].shape[4]
    state = inp.get("initial_state", np.zeros((Bsz, H, P, N), x.dtype))
    k = inp.get("initial_k", np.zeros((Bsz, R, H, N), x.dtype))
    v = inp.get("initial_v", np.zeros((Bsz, H, P), x.dtype))
    ys = []
    for t in range(L):
        y, state, k, v = be.ops.mamba3_step(
            x[:, t], inp["dt"][:, t], inp["A"][:, t], inp["trap"][:, t], inp["B"][:, t], inp["C"][:, t],
            state, k, v, D=inp.get("D"), mimo_x=inp.get("mimo_x"))
        ys.append(y)
    return np.stack(ys, axis=1), state, k, v


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("R", [1, 4])
def test_step_unrolled_matches_forward(dtype, R):
    rng = np.random.default_rng(8 + R)
    inp = cast(make(rng, 2, 15, 2, 3, 4, R), dtype)
    want = ref_scan(inp)
    for be in (CPU, REF):
        got = _unrolled(be, inp)
        assert got[0].shape == (2, 15, R, 2, 3)
        for g, w in zip(got, want):
            assert rel(g, w) < TOLERANCES[dtype]


@pytest.mark.parametrize("R", [1, 2])
def test_continuing_from_final_state_k_v_equals_whole_sequence(R):
    rng = np.random.default_rng(9)
    inp = make(rng, 2, 26, 2, 2, 4, R)
    whole = CPU.ops.mamba3_scan(**inp, chunk_size=8)
    seq = ("x", "dt", "A", "trap", "B", "C")
    first = {k: (v[:, :11] if k in seq else v) for k, v in inp.items()}
    y1, s1, k1, v1 = CPU.ops.mamba3_scan(**first, chunk_size=8)
    second = {k: (v[:, 11:] if k in seq else v) for k, v in inp.items()}
    second.update(initial_state=s1, initial_k=k1, initial_v=v1)
    y2, s2, k2, v2 = CPU.ops.mamba3_scan(**second, chunk_size=8)
    assert rel(np.concatenate([y1, y2], axis=1), whole[0]) < 1e-13
    assert rel(s2, whole[1]) < 1e-13
    np.testing.assert_array_equal(k2, whole[2])
    np.testing.assert_array_equal(v2, whole[3])


def test_batch_rows_are_independent():
    rng = np.random.default_rng(10)
    inp = make(rng, 3, 17, 2, 2, 3, 2)
    y = CPU.ops.mamba3_scan(**inp, chunk_size=4)[0]
    row = {k: (v[1:2] if k not in ("D", "mimo_x") else v) for k, v in inp.items()}
    assert rel(CPU.ops.mamba3_scan(**row, chunk_size=4)[0], y[1:2]) < 1e-14
    assert rel(y[0], y[1]) > 0.1  # rows differ, so the check above means something


# ---- apply_rope ---------------------------------------------------------------------------
@pytest.mark.parametrize("be", [CPU, REF], ids=["cpu_numpy", "reference"])
def test_rope_quarter_turn_on_basis_vectors(be):
    N, S = 8, 2
    phi = np.full((1, S), np.pi / 2)
    e = np.eye(N)
    # interleaved: pairs (0,1), (2,3); a quarter turn maps (1,0) -> (0,1) and (0,1) -> (-1,0)
    np.testing.assert_allclose(be.ops.apply_rope(e[:1], phi, "interleaved"), e[1:2], atol=1e-15)
    np.testing.assert_allclose(be.ops.apply_rope(e[1:2], phi, "interleaved"), -e[:1], atol=1e-15)
    np.testing.assert_allclose(be.ops.apply_rope(e[2:3], phi, "interleaved"), e[3:4], atol=1e-15)
    # halves: pairs (0,4), (1,5)
    np.testing.assert_allclose(be.ops.apply_rope(e[:1], phi, "halves"), e[4:5], atol=1e-15)
    np.testing.assert_allclose(be.ops.apply_rope(e[5:6], phi, "halves"), -e[1:2], atol=1e-15)
    # components past the S pairs pass through unchanged
    for i in (4, 5, 6, 7):
        np.testing.assert_array_equal(be.ops.apply_rope(e[i : i + 1], phi, "interleaved"), e[i : i + 1])
    for i in (2, 3, 6, 7):
        np.testing.assert_array_equal(be.ops.apply_rope(e[i : i + 1], phi, "halves"), e[i : i + 1])


@pytest.mark.parametrize("pairing", ["interleaved", "halves"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rope_default_matches_reference_with_broadcast(pairing, dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 5, 3, 2, 8)).astype(dtype)  # (B, L, R, H, N)
    phi = rng.uniform(0, TWO_PI, (2, 5, 1, 2, 3)).astype(dtype)  # (B, L, 1, H, S)
    got = CPU.ops.apply_rope(x, phi, pairing=pairing)
    want = rope.apply_rope_ref(x, phi, pairing)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert rel(got, want) < TOLERANCES[dtype]
    # a rotation keeps the norm of every rotated pair
    np.testing.assert_allclose(np.linalg.norm(want, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


# ---- mamba3_angles ------------------------------------------------------------------------
def test_angles_are_the_cumulative_sum_mod_two_pi():
    rng = np.random.default_rng(12)
    angles, dt = rng.standard_normal((2, 20, 3)), rng.uniform(0.01, 2.0, (2, 20, 4))
    phi0 = rng.uniform(-20, 20, (2, 4, 3))
    want = np.mod(phi0[:, None] + np.cumsum(np.tanh(angles)[:, :, None] * np.pi * dt[..., None], axis=1), TWO_PI)
    for be in (CPU, REF):
        phi, final = be.ops.mamba3_angles(angles, dt, phi0)
        assert phi.shape == (2, 20, 4, 3) and final.shape == (2, 4, 3)
        assert circ(phi, want) < 1e-12 and circ(final, want[:, -1]) < 1e-12
        assert (phi >= 0).all() and (phi < TWO_PI).all()
        np.testing.assert_array_equal(final, phi[:, -1])
    phi, _ = CPU.ops.mamba3_angles(angles, dt)
    assert circ(phi, want - phi0[:, None]) < 1e-12  # None means zeros


def test_angles_float32_stay_accurate_over_long_sequences():
    """L = 5000 with drifting angles: the float32 angle stays within ~1e-4 rad of float64, while a
    float32 cumulative sum over the whole sequence followed by one mod drifts far more."""
    rng = np.random.default_rng(13)
    L = 5000
    angles = (rng.standard_normal((1, L, 4)) + 1.0).astype(np.float32)  # mostly positive turns
    dt = rng.uniform(0.05, 0.5, (1, L, 2)).astype(np.float32)
    want, want_final = m3.mamba3_angles_ref(angles, dt)
    phi, final = CPU.ops.mamba3_angles(angles, dt)
    assert phi.dtype == np.float32 and final.dtype == np.float32
    err = circ(phi, want)
    naive = np.mod(np.cumsum(np.tanh(angles)[:, :, None] * np.float32(np.pi) * dt[..., None], axis=1,
                             dtype=np.float32), np.float32(TWO_PI))
    assert err < 1e-4, err
    assert circ(final, want_final) < 1e-4
    assert circ(naive, want) > 10 * err  # the test can tell an accurate angle from a naive one


def test_angles_step_matches_forward():
    rng = np.random.default_rng(14)
    angles, dt = rng.standard_normal((2, 12, 3)), rng.uniform(0.01, 1.0, (2, 12, 2))
    phi, final = CPU.ops.mamba3_angles(angles, dt)
    carry, steps = None, []
    for t in range(12):
        p, carry = CPU.ops.mamba3_angles(angles[:, t : t + 1], dt[:, t : t + 1], carry)
        steps.append(p)
    assert circ(np.concatenate(steps, axis=1), phi) < 1e-12 and circ(carry, final) < 1e-12


# ---- validation ---------------------------------------------------------------------------
def _small(R=1):
    return make(np.random.default_rng(15), 2, 5, 2, 3, 4, R)


@pytest.mark.parametrize("change, pattern", [
    (lambda i: i.update(B=i["B"][:, :, :, :1]), r"'B' has shape \(2, 5, 2, 1, 4\), expected .*H=2"),
    (lambda i: i.update(C=i["C"][:, :, 0]), r"'C' must have shape \(B, L, R, H, N\)"),
    (lambda i: i.update(A=i["A"][:, :, 0]), r"'A' must have shape \(B, L, H\)"),
    (lambda i: i.update(mimo_x=np.ones((2, 3, 3))), r"'mimo_x' has shape \(2, 3, 3\).*R=2"),
    (lambda i: i.pop("mimo_x"), r"'mimo_x' is None.*R=2 ranks"),
    (lambda i: i.update(initial_k=i["initial_k"][:, :1]), r"'initial_k' has shape .*R=2"),
    (lambda i: i.update(initial_state=i["initial_state"][..., :3]), r"'initial_state' has shape .*N=4"),
    (lambda i: i.update(initial_v=i["initial_v"][..., :2]), r"'initial_v' has shape .*P=3"),
    (lambda i: i.update(D=np.ones(3)), r"'D' has shape \(3,\).*H=2"),
    (lambda i: i.update(chunk_size=0), r"'chunk_size' must be a positive integer, got 0"),
    (lambda i: i.update(x=i["x"].astype(np.int64)), r"'x' must be a floating array"),
])
def test_scan_validation_errors(change, pattern):
    inp = _small(R=2)
    inp["chunk_size"] = 4
    change(inp)
    with pytest.raises(ShapeError, match=pattern):
        CPU.ops.mamba3_scan(**inp)


def test_step_validation_errors():
    inp = _small(R=2)
    args = dict(x=inp["x"][:, 0], dt=inp["dt"][:, 0], A=inp["A"][:, 0], trap=inp["trap"][:, 0],
                B=inp["B"][:, 0], C=inp["C"][:, 0], state=inp["initial_state"], k_state=inp["initial_k"],
                v_state=inp["initial_v"], mimo_x=inp["mimo_x"])
    CPU.ops.mamba3_step(**args)  # the valid call runs
    with pytest.raises(ShapeError, match=r"'k_state' has shape .*R=2"):
        CPU.ops.mamba3_step(**dict(args, k_state=args["k_state"][:, :1]))
    with pytest.raises(ShapeError, match=r"'state' must have shape \(B, H, P, N\)"):
        CPU.ops.mamba3_step(**dict(args, state=args["state"][0]))
    with pytest.raises(ShapeError, match=r"'mimo_x' is None"):
        CPU.ops.mamba3_step(**dict(args, mimo_x=None))


def test_rope_and_angle_validation_errors():
    x, phi = np.zeros((2, 7)), np.zeros((2, 4))
    with pytest.raises(ShapeError, match=r"S=4 angles but x has N=7.*2\*S <= N"):
        CPU.ops.apply_rope(x, phi)
    with pytest.raises(ShapeError, match=r"'halves'.*needs N even, got N=7"):
        CPU.ops.apply_rope(x, phi[:, :2], pairing="halves")
    with pytest.raises(ShapeError, match=r"'pairing' must be one of .*got 'rotate_half'"):
        CPU.ops.apply_rope(x, phi[:, :2], pairing="rotate_half")
    with pytest.raises(ShapeError, match=r"must broadcast, got x shape \(2, 7\) and phi shape \(3, 2\)"):
        CPU.ops.apply_rope(x, np.zeros((3, 2)))
    with pytest.raises(ShapeError, match=r"'dt' has shape \(2, 4, 2\), expected .*L=5"):
        CPU.ops.mamba3_angles(np.zeros((2, 5, 3)), np.zeros((2, 4, 2)))
    with pytest.raises(ShapeError, match=r"'initial_angle' has shape \(2, 2, 2\), expected .*S=3"):
        CPU.ops.mamba3_angles(np.zeros((2, 5, 3)), np.zeros((2, 5, 2)), np.zeros((2, 2, 2)))


def test_ops_are_registered():
    from mamba_core.ops import REGISTRY

    assert REGISTRY["mamba3_step"].step_of == "mamba3_scan"
    for name in ("mamba3_scan", "mamba3_step", "mamba3_angles", "apply_rope"):
        assert REGISTRY[name].reference is not None and REGISTRY[name].validate is not None
