"""The gradient of the SSD scan: the reference VJP against central finite differences of
ssd_scan_ref for every argument; the chunked default VJP against the reference VJP."""

import zlib

import numpy as np
import pytest

from mamba_core.errors import ShapeError
from mamba_core.ops import REGISTRY, ssd
from mamba_core.ops.activations import inverse_softplus_ref, softplus_ref
from mamba_core.registry import get_backend

from _support import TOLERANCES, rel

CPU = get_backend("cpu_numpy")
INF = float("inf")
FD_EPS = 1e-6
FD_TOL = 1e-6
DEFAULT_TOL = {"float64": 1e-10, "float32": TOLERANCES["float32"]}


def make(rng, Bsz, L, H, P, G, N, *, z=True, D="H", bias=True, softplus=True, h0=True, nseq=None):
    inp = dict(
        x=rng.standard_normal((Bsz, L, H, P)),
        dt=rng.standard_normal((Bsz, L, H)) if softplus else rng.uniform(0.05, 1.0, (Bsz, L, H)),
        A=-np.exp(rng.uniform(-1.0, 1.0, H)),
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
    if nseq:
        rows = []
        for _ in range(Bsz):  # nseq sequences per row, boundaries differing per row
            cuts = np.sort(rng.choice(np.arange(1, L), size=nseq - 1, replace=False))
            rows.append(np.searchsorted(cuts, np.arange(L), side="right"))
        inp["seq_idx"] = np.stack(rows).astype(np.int64)
    return inp


def cotangent(rng, inp, mode):
    Bsz, L, H, P = inp["x"].shape
    N = inp["B"].shape[3]
    dy = rng.standard_normal((Bsz, L, H, P)) if mode in ("dy", "both") else None
    dS = rng.standard_normal((Bsz, H, P, N)) if mode in ("dS", "both") else None
    return dy, dS


def floats(inp):
    return [k for k, v in inp.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]


def cast(v, dtype):
    return v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v


def finite_differences(ct, inp, name):
    """d <ct, ssd_scan_ref(inp)> / d inp[name], central differences, one entry at a time."""
    dy, dS = ct

    def loss(arg):
        y, S = ssd.ssd_scan_ref(**dict(inp, **{name: arg}))
        return (0.0 if dy is None else (y * dy).sum()) + (0.0 if dS is None else (S * dS).sum())

    v = inp[name]
    out = np.zeros_like(v)
    for idx in np.ndindex(v.shape):
        hi, lo = v.copy(), v.copy()
        hi[idx] += FD_EPS
        lo[idx] -= FD_EPS
        out[idx] = (loss(hi) - loss(lo)) / (2 * FD_EPS)
    return out


def limited_dt(rng, inp, lim, margin=0.05):
    """dt whose transformed value sits clearly below, inside, or above ``lim`` (never within
    ``margin`` of an edge, so finite differences do not straddle the clamp)."""
    lo, hi = lim
    shape = inp["dt"].shape
    band = rng.integers(0, 3, shape)
    band.flat[:3] = [0, 1, 2]  # every band occurs
    s = np.choose(band, [rng.uniform(0.3 * lo, lo - margin, shape),
                         rng.uniform(lo + margin, hi - margin, shape),
                         rng.uniform(hi + margin, 2 * hi, shape)])
    pre = inverse_softplus_ref(s) if inp["dt_softplus"] else s
    return pre - inp.get("dt_bias", 0.0)


# ---- the reference VJP against finite differences -----------------------------------------
FD_CASES = {
    #            (B, L, H, P, G, N, make options, attributes)
    "all,G=2,D(H,P)": (2, 5, 4, 2, 2, 3, {"D": "HP"}, {}),
    "G=1,D(H),no z": (2, 5, 2, 2, 1, 3, {"z": False}, {}),
    "plain": (1, 6, 2, 2, 1, 2, {"z": False, "D": None, "bias": False, "softplus": False, "h0": False}, {}),
    "dt_limit,softplus": (2, 5, 2, 2, 1, 2, {"D": "HP"}, {"dt_limit": (0.3, 1.2)}),
    "dt_limit,no softplus": (1, 6, 2, 2, 2, 2, {"softplus": False, "bias": False}, {"dt_limit": (0.2, 0.7)}),
    "seq_idx x3,G=2": (2, 8, 4, 2, 2, 2, {"nseq": 3}, {}),
    "seq_idx x2,G=1,D(H,P)": (2, 6, 2, 2, 1, 3, {"nseq": 2, "D": "HP", "z": False}, {}),
    "L=1": (2, 1, 4, 2, 2, 3, {"D": "HP"}, {}),
}


@pytest.mark.parametrize("mode", ["both", "dy", "dS"])
@pytest.mark.parametrize("case", FD_CASES, ids=list(FD_CASES))
def test_reference_vjp_matches_finite_differences(case, mode):
    Bsz, L, H, P, G, N, opts, attrs = FD_CASES[case]
    rng = np.random.default_rng(zlib.crc32(f"{case}/{mode}".encode()))
    inp = dict(make(rng, Bsz, L, H, P, G, N, **opts), **attrs)
    if "dt_limit" in attrs:
        inp["dt"] = limited_dt(rng, inp, attrs["dt_limit"])
    ct = cotangent(rng, inp, mode)
    got = ssd.ssd_scan_vjp_ref(ct, **inp)
    assert sorted(got) == sorted(floats(inp))  # one entry per floating argument given
    for name in floats(inp):
        assert got[name].shape == inp[name].shape, name
        want = finite_differences(ct, inp, name)
        if not np.any(want):  # e.g. dC, dD, dz with dy = None: exactly zero both ways
            assert not np.any(got[name]), name
            continue
        assert rel(got[name], want) < FD_TOL, name


def test_reference_vjp_softplus_above_threshold_and_clamp_edges():
    # softplus(u) = u above 20 (gradient 1); a clamped dt gets no gradient at all
    rng = np.random.default_rng(20)
    inp = make(rng, 1, 6, 2, 2, 1, 2, z=False, D=None, bias=False)
    inp["dt"][0, :3, 0] = [21.0, 23.0, 25.0]  # far from 20, FD does not straddle it
    inp["A"] = np.array([-0.05, -0.5])
    ct = cotangent(rng, inp, "both")
    got = ssd.ssd_scan_vjp_ref(ct, **inp)
    assert rel(got["dt"], finite_differences(ct, inp, "dt")) < FD_TOL
    lim = (0.3, 1.0)
    s = softplus_ref(inp["dt"])
    clamped = (s < lim[0]) | (s > lim[1])
    assert clamped.any() and (~clamped).any()
    got = ssd.ssd_scan_vjp_ref(ct, **inp, dt_limit=lim)
    assert np.all(got["dt"][clamped] == 0.0) and np.all(got["dt"][~clamped] != 0.0)


def test_reference_vjp_seq_idx_blocks_the_initial_state_and_final_cotangent():
    # with dS only and the last sequence starting at t=3, nothing before t=3 gets gradient;
    # with dy only on the second sequence, initial_state gets none
    rng = np.random.default_rng(21)
    inp = make(rng, 1, 7, 2, 2, 1, 2)
    inp["seq_idx"] = np.array([[0, 0, 0, 1, 1, 1, 1]])
    _, dS = cotangent(rng, inp, "dS")
    got = ssd.ssd_scan_vjp_ref((None, dS), **inp)
    assert not np.any(got["x"][:, :3]) and np.all(got["x"][:, 3:] != 0) and not np.any(got["initial_state"])
    dy = np.zeros((1, 7, 2, 2))
    dy[:, 3:] = rng.standard_normal((1, 4, 2, 2))
    got = ssd.ssd_scan_vjp_ref((dy, None), **inp)
    assert not np.any(got["initial_state"]) and not np.any(got["dt"][:, :3])


# ---- the default VJP against the reference VJP --------------------------------------------
DEFAULT_CASES = {
    "all,G=2,D(H,P)": (2, 11, 4, 3, 2, 5, {"D": "HP"}, {}),
    "G=1,no z": (2, 11, 2, 2, 1, 3, {"z": False}, {}),
    "plain": (1, 11, 2, 3, 1, 4, {"z": False, "D": None, "bias": False, "softplus": False, "h0": False}, {}),
    "dt_limit": (2, 11, 2, 2, 2, 3, {}, {"dt_limit": (0.3, 1.2)}),
    "seq_idx x3": (2, 11, 4, 2, 2, 3, {"nseq": 3, "D": "HP"}, {}),
    "L=1": (2, 1, 2, 2, 1, 3, {}, {}),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=list(DEFAULT_CASES))
def test_default_vjp_matches_reference(case, chunk, dtype):
    Bsz, L, H, P, G, N, opts, attrs = DEFAULT_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    inp = dict(make(rng, Bsz, L, H, P, G, N, **opts), **attrs)
    if "dt_limit" in attrs:
        inp["dt"] = limited_dt(rng, inp, attrs["dt_limit"])
    ct = cotangent(rng, inp, "both")
    low = {k: cast(v, dtype) for k, v in inp.items()}
    want = ssd.ssd_scan_vjp_ref(ct, **{k: cast(v, np.float64) for k, v in low.items()})
    got = CPU.ops.ssd_scan_vjp(tuple(cast(c, dtype) for c in ct), **low, chunk_size=chunk)
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == inp[name].shape and got[name].dtype == np.dtype(dtype), name
        assert rel(got[name], want[name]) < DEFAULT_TOL[dtype], name


@pytest.mark.parametrize("mode", ["dy", "dS"])
def test_default_vjp_with_one_cotangent_missing(mode):
    rng = np.random.default_rng(22)
    inp = make(rng, 2, 10, 4, 2, 2, 3, D="HP", nseq=2)
    ct = cotangent(rng, inp, mode)
    want = ssd.ssd_scan_vjp_ref(ct, **inp)
    got = CPU.ops.ssd_scan_vjp(ct, **inp, chunk_size=4)
    for name in want:
        if not np.any(want[name]):
            assert not np.any(got[name]), name
        else:
            assert rel(got[name], want[name]) < DEFAULT_TOL["float64"], name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("chunk", [16, 256])
def test_default_vjp_strong_decay_long_sequence(chunk, dtype):
    # summed log-decay about -5000 over the sequence and -1000 inside one chunk of 256: a
    # backward that took exp of long cumulative sums (or divided by decays) would give inf/nan
    rng = np.random.default_rng(23)
    L, H = 1000, 3
    inp = make(rng, 2, L, H, 2, 1, 4, z=True, softplus=False)
    inp["A"] = -rng.uniform(2.0, 8.0, H)
    inp["dt"] = rng.uniform(0.3, 1.5, (2, L, H))
    ct = cotangent(rng, inp, "both")
    low = {k: cast(v, dtype) for k, v in inp.items()}
    want = ssd.ssd_scan_vjp_ref(ct, **{k: cast(v, np.float64) for k, v in low.items()})
    got = CPU.ops.ssd_scan_vjp(tuple(cast(c, dtype) for c in ct), **low, chunk_size=chunk)
    for name in want:
        assert np.all(np.isfinite(got[name])), name
        assert rel(got[name], want[name]) < DEFAULT_TOL[dtype], name


def test_registered_as_the_vjp_of_ssd_scan():
    spec = REGISTRY["ssd_scan_vjp"]
    assert spec.vjp_of == "ssd_scan" and spec.family == "ssd"
    assert spec.reference is ssd.ssd_scan_vjp_ref and spec.default is ssd.ssd_scan_vjp


def test_vjp_validation_names_the_argument():
    inp = make(np.random.default_rng(24), 2, 5, 4, 2, 2, 3)
    dy, dS = cotangent(np.random.default_rng(0), inp, "both")
    with pytest.raises(ShapeError, match=r"dy \(cotangent\[0\]\)"):
        CPU.ops.ssd_scan_vjp((dy[:, :4], dS), **inp)
    with pytest.raises(ShapeError, match=r"dfinal_state \(cotangent\[1\]\)"):
        CPU.ops.ssd_scan_vjp((dy, dS[..., :2]), **inp)
    with pytest.raises(ShapeError, match="'cotangent' must be a pair"):
        CPU.ops.ssd_scan_vjp(dy, **inp)
    with pytest.raises(ShapeError, match="'x'"):
        CPU.ops.ssd_scan_vjp((dy, dS), **dict(inp, x=inp["x"][:, :, :3]))
