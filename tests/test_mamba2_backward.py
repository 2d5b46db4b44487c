"""The Mamba-2 mixer's forward_train and backward (the contract in mixer.py).

backward is checked against central finite differences of forward, in float64, on the
reference backend and on cpu_numpy, for every parameter, for u and for the initial cache, of the
scalar f = sum(out * w) + sum_k sum(new_cache[k] * w_k) (the second term when dcache is given).
Then cpu_numpy's float32 backward against the reference's float64 one.
"""

import math

import numpy as np
import pytest

from mamba_core.models import mamba2
from mamba_core.registry import get_backend
from _support import TOLERANCES, rel


CPU = get_backend("cpu_numpy")
REF = get_backend("reference")
BACKENDS = {"reference": REF, "cpu_numpy": CPU}

FD_EPS = 1e-6
FD_TOL = 1e-5
N_PICK = 6  # finite-difference entries per tensor (the largest-gradient one plus random ones)

SMALL = dict(d_model=8, d_state=4, headdim=4, chunk_size=4)  # E = 16, H = 4, X = 24
CONFIGS = {
    "default": dict(SMALL),
    "no rmsnorm (z in the scan),bias,K=3,no conv bias": dict(
        SMALL, d_conv=3, rmsnorm=False, bias=True, conv_bias=False),
    "G=2,D_has_hdim,norm_before_gate": dict(SMALL, ngroups=2, D_has_hdim=True, norm_before_gate=True),
    "G=2,grouped gated norm": dict(SMALL, ngroups=2, chunk_size=3),
    "d_ssm<d_inner,dt_limit,G=2": dict(SMALL, d_model=6, d_ssm=8, ngroups=2, dt_limit=(0.012, 0.15)),
}
# (L, initial cache, dcache)
CASES = {
    "L=7,no cache": (7, False, False),
    "L=8,cache": (8, True, False),
    "L=7,cache,dcache": (7, True, True),
    "L=1,cache,dcache": (1, True, True),
    "L=5,no cache,dcache": (5, False, True),
}


def perturbed(cfg, seed=0):
    """float64 params with D, A_log, dt_bias, the norm weight and every bias made random."""
    rng = np.random.default_rng(seed)
    p = {k: v.astype(np.float64) for k, v in mamba2.init_params(cfg, rng).items()}
    for k in p:
        if k in ("A_log", "D", "norm.weight") or k.endswith(".bias"):
            p[k] = p[k] + 0.3 * rng.standard_normal(p[k].shape)
    p["dt_bias"] = p["dt_bias"] + rng.uniform(-1.0, 2.5, p["dt_bias"].shape)
    return p


def problem(cfg, L, with_cache, with_dcache, Bsz=2, seed=1):
    """u, the initial cache (or None) and the projection weights (w for out, w_c per cache key)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((Bsz, L, cfg.d_model))
    cache = None
    if with_cache:
        cache = {k: 0.5 * rng.standard_normal(s) for k, s in mamba2.cache_shapes(cfg, Bsz).items()}
    w = rng.standard_normal((Bsz, L, cfg.d_model))
    wc = None
    if with_dcache:
        wc = {k: rng.standard_normal(s) for k, s in mamba2.cache_shapes(cfg, Bsz).items()}
    return u, cache, w, wc


def objective(be, p, cfg, u, cache, w, wc):
    y, new = mamba2.forward(be, p, cfg, u, None if cache is None else dict(cache))
    f = float(np.sum(np.asarray(y, np.float64) * w))
    if wc is not None:
        f += sum(float(np.sum(np.asarray(new[k], np.float64) * wc[k])) for k in wc)
    return f


def fd_check(name, grad, arr, f_of, rng):
    """Central differences of f_of() at N_PICK entries of ``arr`` (perturbed in place)."""
    grad = np.asarray(grad, np.float64)
    assert grad.shape == arr.shape, (name, grad.shape, arr.shape)
    flat = arr.reshape(-1)
    picks = {int(np.argmax(np.abs(grad)))}
    picks.update(int(i) for i in rng.choice(flat.size, min(N_PICK - 1, flat.size), replace=False))
    fd, an = [], []
    for i in sorted(picks):
        old = flat[i]
        flat[i] = old + FD_EPS
        fp = f_of()
        flat[i] = old - FD_EPS
        fm = f_of()
        flat[i] = old
        fd.append((fp - fm) / (2 * FD_EPS))
        an.append(grad.reshape(-1)[i])
    err = rel(an, fd)
    assert err < FD_TOL, f"{name}: rel err {err:.2e} (backward {an}, finite differences {fd})"
    return err


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_finite_differences(backend, name, case):
    be = BACKENDS[backend]
    cfg = mamba2.Config.from_dict(**CONFIGS[name])
    L, with_cache, with_dcache = CASES[case]
    p = perturbed(cfg)
    u, cache, w, wc = problem(cfg, L, with_cache, with_dcache)

    y, new, saved = mamba2.forward_train(be, p, cfg, u, cache)
    y0, new0 = mamba2.forward(be, p, cfg, u, cache)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y0))  # bit-identical
    for k in new0:
        np.testing.assert_array_equal(np.asarray(new[k]), np.asarray(new0[k]))
    # no per-token scan state is saved; the scan's residuals only where the backend has a
    # saving form (cpu_numpy: the states entering every 64 tokens)
    res = saved.pop("scan_res")
    assert (res is None) == (not be.ops.saves("ssd_scan"))
    assert res is None or res.shape[2] == -(-L // 64)
    assert not any(v.ndim >= 4 and v.shape[-1] == cfg.d_state for k, v in saved.items()
                   if k != "ssm_state"), "no scan state may be saved"

    dparams, du, dcache_in = mamba2.backward(be, p, cfg, saved, w, wc)
    assert set(dparams) == set(p)
    assert (dcache_in is None) == (cache is None)

    rng = np.random.default_rng(7)
    f_of = lambda: objective(be, p, cfg, u, cache, w, wc)  # noqa: E731
    for k in p:
        fd_check(k, dparams[k], p[k], f_of, rng)
    fd_check("u", du, u, f_of, rng)
    if cache is not None:
        assert set(dcache_in) == {"conv_state", "ssm_state"}
        for k in cache:
            fd_check(f"cache[{k}]", dcache_in[k], cache[k], f_of, rng)
        # the oldest slot of the conv window is never read
        assert not np.asarray(dcache_in["conv_state"])[..., 0].any()


def test_dt_limit_case_clamps_both_ways():
    """The dt_limit config really exercises the clamp: some dt below, some inside, some above."""
    cfg = mamba2.Config.from_dict(**CONFIGS["d_ssm<d_inner,dt_limit,G=2"])
    p = perturbed(cfg)
    u, cache, _, _ = problem(cfg, 7, True, False)
    _, _, saved = mamba2.forward_train(REF, p, cfg, u, cache)
    raw = np.asarray(saved["zxbcdt"])[..., -cfg.nheads:] + p["dt_bias"]
    dt = np.where(raw > 20, raw, np.log1p(np.exp(np.minimum(raw, 20))))
    lo, hi = cfg.dt_limit
    assert (dt < lo).any() and (dt > hi).any() and ((dt > lo) & (dt < hi)).any()


@pytest.mark.parametrize("name", CONFIGS)
def test_dcache_only_and_zero_dy(name):
    """dy = 0 with a dcache: gradients come from the final cache alone; dcache=None, dy=0 gives 0."""
    cfg = mamba2.Config.from_dict(**CONFIGS[name])
    p = perturbed(cfg)
    u, cache, _, wc = problem(cfg, 6, True, True)
    _, _, saved = mamba2.forward_train(CPU, p, cfg, u, cache)
    dparams, du, dcache_in = mamba2.backward(CPU, p, cfg, saved, np.zeros_like(u), None)
    assert not np.asarray(du).any() and not any(np.asarray(v).any() for v in dparams.values())
    assert not any(np.asarray(v).any() for v in dcache_in.values())
    # only the ssm_state entry of dcache: conv_state's gradient is None (zero)
    only = {"ssm_state": wc["ssm_state"]}
    dp, du, dc = mamba2.backward(CPU, p, cfg, saved, None, only)
    dp_r, du_r, dc_r = mamba2.backward(REF, p, cfg, saved, np.zeros_like(u), only)
    assert np.abs(np.asarray(du)).max() > 0
    assert rel(du, du_r) < TOLERANCES["float64"]
    for k in dp:
        assert rel(dp[k], dp_r[k]) < TOLERANCES["float64"] or not np.asarray(dp_r[k]).any(), k


@pytest.mark.parametrize("name", CONFIGS)
def test_float32_backward_matches_float64_reference(name):
    cfg = mamba2.Config.from_dict(**CONFIGS[name])
    p = perturbed(cfg)
    u, cache, w, wc = problem(cfg, 11, True, True, Bsz=3, seed=4)
    _, _, saved = mamba2.forward_train(REF, p, cfg, u, cache)
    want = mamba2.backward(REF, p, cfg, saved, w, wc)

    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    p32 = {k: f32(v) for k, v in p.items()}
    cache32 = {k: f32(v) for k, v in cache.items()}
    y, new, saved32 = mamba2.forward_train(CPU, p32, cfg, f32(u), cache32)
    assert y.dtype == np.float32 and all(v.dtype == np.float32 for v in new.values())
    dparams, du, dcache_in = mamba2.backward(CPU, p32, cfg, saved32, f32(w),
                                             {k: f32(v) for k, v in wc.items()})
    tol = 10 * TOLERANCES["float32"]
    assert du.dtype == np.float32 and rel(du, want[1]) < tol
    for k in p:
        assert dparams[k].dtype == np.float32 and dparams[k].shape == p[k].shape, k
        assert rel(dparams[k], want[0][k]) < tol, (k, rel(dparams[k], want[0][k]))
    for k in cache:
        assert dcache_in[k].dtype == np.float32, k
        assert rel(dcache_in[k], want[2][k]) < tol, (k, rel(dcache_in[k], want[2][k]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_numpy_backward_equals_reference_backward_float64(backend):
    """The default compositions' VJPs and the references' agree to float64 rounding."""
    cfg = mamba2.Config.from_dict(**CONFIGS["d_ssm<d_inner,dt_limit,G=2"])
    p = perturbed(cfg, seed=2)
    u, cache, w, wc = problem(cfg, 9, True, True, seed=5)
    got = mamba2.backward(BACKENDS[backend], p, cfg,
                          mamba2.forward_train(BACKENDS[backend], p, cfg, u, cache)[2], w, wc)
    want = mamba2.backward(REF, p, cfg, mamba2.forward_train(REF, p, cfg, u, cache)[2], w, wc)
    assert rel(got[1], want[1]) < TOLERANCES["float64"]
    for k in p:
        assert rel(got[0][k], want[0][k]) < TOLERANCES["float64"], k
    for k in cache:
        assert rel(got[2][k], want[2][k]) < TOLERANCES["float64"], k
    assert math.isfinite(float(np.abs(np.asarray(got[1])).sum()))
