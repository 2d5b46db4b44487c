"""Mamba-1 mixer training path: forward_train equals forward bit for bit, and backward equals
central finite differences of forward (float64, reference and cpu_numpy backends) for every
parameter, the input u and the initial cache, with and without gradients of the final cache;
cpu_numpy float32 backward against the reference float64 backward."""


import numpy as np
import pytest

from mamba_core.models import mamba1
from mamba_core.registry import get_backend
from _support import TOLERANCES, rel


CPU = get_backend("cpu_numpy")
REF = get_backend("reference")
BACKENDS = {"reference": REF, "cpu_numpy": CPU}

CONFIGS = {
    "default": dict(d_model=8, d_state=4),
    "bias,K=3,R=3,expand=1.5": dict(d_model=12, d_state=3, d_conv=3, expand=1.5, dt_rank=3,
                                     bias=True, conv_bias=False),
}

# (name, L, with initial cache, which final-cache gradients are given)
CASES = [
    ("no cache", 5, False, ()),
    ("cache", 5, True, ()),
    ("cache+dcache", 5, True, ("conv_state", "ssm_state")),
    ("no cache+dssm_state only", 4, False, ("ssm_state",)),
    ("L=1 cache+dcache", 1, True, ("conv_state", "ssm_state")),
    ("L=19 (> scan chunk, not a multiple) cache+dcache", 19, True, ("conv_state", "ssm_state")),
]

FD_EPS = 1e-6
FD_TOL = 1e-5
N_PROBES = 6  # finite differences on this many random elements of each tensor


def perturbed(cfg, seed=0):
    """float64 params with D, A_log and every bias made random (so no constant hides a bug).

    dt_proj.bias is drawn so that dt = softplus(...) is about 0.2-1 rather than the init's
    1e-3-0.1: with tiny dt, A_log's and dt_proj.weight's gradients are ~1e-5 of the loss and
    float64 finite differences at eps 1e-6 would measure their own rounding, not the gradient.
    """
    rng = np.random.default_rng(seed)
    p = {k: v.astype(np.float64) for k, v in mamba1.init_params(cfg, rng).items()}
    for k in p:
        if k == "A_log" or k == "D" or k.endswith(".bias"):
            p[k] = p[k] + 0.3 * rng.standard_normal(p[k].shape)
    p["dt_proj.bias"] = rng.uniform(-1.5, 0.5, p["dt_proj.bias"].shape)
    return p


def problem(cfg_kw, L, with_cache, dcache_keys, Bsz=2, seed=0):
    """params, u, cache (or None), the loss weights wy and wc (dict; its keys get dcache)."""
    cfg = mamba1.Config(**cfg_kw)
    rng = np.random.default_rng(seed + 100)
    p = perturbed(cfg, seed)
    u = rng.standard_normal((Bsz, L, cfg.d_model))
    cache = None
    if with_cache:
        cache = {k: 0.5 * rng.standard_normal(s) for k, s in mamba1.cache_shapes(cfg, Bsz).items()}
    wy = rng.standard_normal((Bsz, L, cfg.d_model))
    wc = {k: rng.standard_normal(s) for k, s in mamba1.cache_shapes(cfg, Bsz).items() if k in dcache_keys}
    return cfg, p, u, cache, wy, wc


def loss(be, cfg, p, u, cache, wy, wc):
    """The scalar sum(y * wy) + sum over the chosen cache entries of sum(cache * wc)."""
    y, new_cache = mamba1.forward(be, p, cfg, u, cache)
    total = float(np.sum(be.to_numpy(y) * wy))
    for k, w in wc.items():
        total += float(np.sum(be.to_numpy(new_cache[k]) * w))
    return total


def run_backward(be, cfg, p, u, cache, wy, wc, dtype="float64"):
    cast = lambda a: be.asarray(np.asarray(a, np.float64), dtype)  # noqa: E731
    pb = {k: cast(v) for k, v in p.items()}
    cb = None if cache is None else {k: cast(v) for k, v in cache.items()}
    _, _, saved = mamba1.forward_train(be, pb, cfg, cast(u), cb)
    dcache = {k: cast(w) for k, w in wc.items()} or None
    return mamba1.backward(be, pb, cfg, saved, cast(wy), dcache)


def fd_check(be, cfg, p, u, cache, wy, wc, analytic, rng):
    """Central differences on N_PROBES random elements of every tensor -> {name: rel error}."""
    tensors = {f"param {k}": (p, k) for k in p}
    tensors["u"] = ({"u": u}, "u")
    if cache is not None:
        tensors.update({f"cache {k}": (cache, k) for k in cache})
    errs = {}
    for name, (holder, key) in tensors.items():
        base = holder[key]
        grad = np.asarray(be.to_numpy(analytic[name]), np.float64)
        assert grad.shape == base.shape, (name, grad.shape, base.shape)
        idx = rng.choice(base.size, size=min(N_PROBES, base.size), replace=False)
        worst = 0.0
        for i in idx:
            saved_val = base.flat[i]
            base.flat[i] = saved_val + FD_EPS
            up = loss(be, cfg, p, holder["u"] if key == "u" else u, cache, wy, wc)
            base.flat[i] = saved_val - FD_EPS
            down = loss(be, cfg, p, holder["u"] if key == "u" else u, cache, wy, wc)
            base.flat[i] = saved_val
            worst = max(worst, abs((up - down) / (2 * FD_EPS) - grad.flat[i]))
        errs[name] = worst / max(np.abs(grad).max(), 1e-300)
    return errs


def as_named(dparams, du, dcache_in):
    named = {f"param {k}": v for k, v in dparams.items()}
    named["u"] = du
    if dcache_in is not None:
        named.update({f"cache {k}": v for k, v in dcache_in.items()})
    return named


# ---- forward_train is forward ---------------------------------------------------------------
@pytest.mark.parametrize("cfg_name", CONFIGS)
@pytest.mark.parametrize("be_name,dtype", [("reference", "float64"), ("cpu_numpy", "float64"),
                                           ("cpu_numpy", "float32")])
@pytest.mark.parametrize("with_cache", [False, True])
def test_forward_train_is_forward_bit_for_bit(cfg_name, be_name, dtype, with_cache):
    be = BACKENDS[be_name]
    cfg, p, u, cache, _, _ = problem(CONFIGS[cfg_name], 7, with_cache, ())
    pb = {k: be.asarray(v, dtype) for k, v in p.items()}
    cb = None if cache is None else {k: be.asarray(v, dtype) for k, v in cache.items()}
    ub = be.asarray(u, dtype)
    y, c = mamba1.forward(be, pb, cfg, ub, cb)
    y2, c2, saved = mamba1.forward_train(be, pb, cfg, ub, cb)
    assert np.array_equal(be.to_numpy(y), be.to_numpy(y2))
    for k in c:
        assert np.array_equal(be.to_numpy(c[k]), be.to_numpy(c2[k])), k
    # only op inputs are kept, and the scan's residuals where the backend has a saving form
    # (cpu_numpy: states every 64 tokens): nothing the size of the per-token states (B, L, E, N)
    res = saved.pop("scan_res")
    assert (res is None) == (not be.ops.saves("selective_scan"))
    big = u.shape[0] * u.shape[1] * cfg.d_inner * cfg.d_state
    assert res is None or res.size <= big // u.shape[1]
    for k, v in saved.items():
        assert v.size < big or k in ("conv_state", "ssm_state"), (k, v.shape)
    assert ("ssm_state" in saved) == with_cache


# ---- backward against finite differences ----------------------------------------------------
@pytest.mark.parametrize("be_name", ["reference", "cpu_numpy"])
@pytest.mark.parametrize("cfg_name", CONFIGS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_backward_matches_finite_differences(be_name, cfg_name, case):
    name, L, with_cache, dcache_keys = case
    be = BACKENDS[be_name]
    cfg, p, u, cache, wy, wc = problem(CONFIGS[cfg_name], L, with_cache, dcache_keys)
    dparams, du, dcache_in = run_backward(be, cfg, p, u, cache, wy, wc)

    assert set(dparams) == set(p)
    for k in p:
        assert dparams[k].shape == p[k].shape, k
        assert np.all(np.isfinite(be.to_numpy(dparams[k]))), k
    assert du.shape == u.shape
    if with_cache:
        assert set(dcache_in) == set(cache)
    else:
        assert dcache_in is None
    errs = fd_check(be, cfg, p, u, cache, wy, wc, as_named(dparams, du, dcache_in),
                    np.random.default_rng(7))
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e < FD_TOL}
    assert not bad, f"{be_name} {cfg_name} {name}: finite-difference errors above {FD_TOL}: {bad}"
    # every parameter gets a gradient that is not identically zero (no dead branch)
    for k in p:
        assert np.abs(be.to_numpy(dparams[k])).max() > 0, f"gradient of {k} is identically zero"


def test_dcache_is_honoured():
    """A gradient of the final cache changes the gradients (and only through the final cache)."""
    cfg, p, u, cache, wy, wc = problem(CONFIGS["default"], 5, True, ("conv_state", "ssm_state"))
    with_dc = as_named(*run_backward(CPU, cfg, p, u, cache, wy, wc))
    without = as_named(*run_backward(CPU, cfg, p, u, cache, wy, {}))
    assert rel(with_dc["u"], without["u"]) > 1e-3
    assert rel(with_dc["cache ssm_state"], without["cache ssm_state"]) > 1e-3
    # dy = 0: only the final-cache gradients drive the backward, and it is linear in them
    zero = np.zeros_like(wy)
    a = as_named(*run_backward(CPU, cfg, p, u, cache, zero, wc))
    b = as_named(*run_backward(CPU, cfg, p, u, cache, zero, {k: 2 * w for k, w in wc.items()}))
    for k in a:
        assert rel(b[k], 2 * np.asarray(a[k])) < 1e-12, k


def test_conv_state_oldest_slot_gets_no_gradient():
    """conv_state[..., 0] is never read (only the last K-1 inputs are): its gradient is exactly 0
    unless the final window, which it can only reach when L == 0, is given a gradient."""
    cfg, p, u, cache, wy, wc = problem(CONFIGS["default"], 3, True, ())
    _, _, dcache_in = run_backward(CPU, cfg, p, u, cache, wy, wc)
    assert np.all(dcache_in["conv_state"][..., 0] == 0)
    assert np.abs(dcache_in["conv_state"][..., 1:]).max() > 0


# ---- cpu_numpy against the reference ----------------------------------------------------------
@pytest.mark.parametrize("cfg_name", CONFIGS)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5]], ids=[CASES[i][0] for i in (0, 2, 5)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cpu_numpy_backward_matches_reference(cfg_name, case, dtype):
    _, L, with_cache, dcache_keys = case
    cfg, p, u, cache, wy, wc = problem(CONFIGS[cfg_name], L, with_cache, dcache_keys, seed=3)
    want = as_named(*run_backward(REF, cfg, p, u, cache, wy, wc))
    got = as_named(*run_backward(CPU, cfg, p, u, cache, wy, wc, dtype))
    assert set(got) == set(want)
    tol = TOLERANCES["float64"] * 10 if dtype == "float64" else TOLERANCES["float32"] * 10
    for k in want:
        g = got[k]
        assert g.dtype == np.dtype(dtype), (k, g.dtype)  # the dtype of what it differentiates
        assert rel(g, want[k]) < tol, (k, rel(g, want[k]), tol)
