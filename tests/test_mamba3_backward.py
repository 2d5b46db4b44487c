"""Mamba-3 mixer training pass (SISO and MIMO): forward_train / backward against central finite
differences of forward in float64 (reference and cpu_numpy backends), for every parameter, for u
and for the initial cache; dcache; L = 1 and L not divisible by chunk_size; ngroups < nheads,
rope_fraction 1, out-norm, an active A_floor; cpu_numpy float32 against the reference in float64.
The reference backend has mamba3_rope_scan natively, so its training pass runs that op and its
VJP; cpu_numpy's runs the separate ops (apply_rope, mamba3_scan): both paths meet the finite
differences.

The scalar differentiated is f = sum(y * w) + sum over the final cache entries of (entry * w_c),
with the angle state entering as cos/sin of it (its stored value jumps at the mod 2 pi wrap; the
outputs, which use only cos/sin of the angle, do not).
"""


import numpy as np
import pytest

from mamba_core.models import mamba3
from mamba_core.registry import get_backend

from _support import TOLERANCES, rel

CPU = get_backend("cpu_numpy")
REF = get_backend("reference")
BACKENDS = {"reference": REF, "cpu_numpy": CPU}

_TINY = dict(d_model=8, d_state=4, headdim=4)  # E = 16, H = 4, P = 4, N = 4
CONFIGS = {
    "siso": dict(_TINY, chunk_size=4),  # S = 1
    "siso,rf=1,G=2,outnorm": dict(_TINY, rope_fraction=1.0, ngroups=2, is_outproj_norm=True, chunk_size=4),
    "siso,A_floor": dict(_TINY, A_floor=0.7, chunk_size=4),  # max(heavy_tail, A_floor) clamps some tokens
    "mimo,R=2": dict(_TINY, is_mimo=True, mimo_rank=2, chunk_size=4),
    "mimo,R=2,rf=1,G=2,outnorm": dict(_TINY, is_mimo=True, mimo_rank=2, rope_fraction=1.0, ngroups=2,
                                      is_outproj_norm=True, chunk_size=2),
}
# (L, initial cache given, which final-cache gradients are given)
CASES = {
    "L=6,no cache": (6, False, ()),
    "L=6,cache,dcache": (6, True, mamba3.CACHE_KEYS),  # 6 is not a multiple of chunk_size 4
    "L=1,cache,dcache(ssm,angle)": (1, True, ("ssm_state", "angle_state")),
}
EPS = 1e-6
N_IDX = 6  # finite differences on this many random elements per tensor


def perturbed(cfg, seed=0):
    """float64 params with every constant init (D, biases, norm weights, mimo_*) made random."""
    rng = np.random.default_rng(seed)
    p = {k: v.astype(np.float64) for k, v in mamba3.init_params(cfg, rng).items()}
    for k in p:
        if k not in ("in_proj.weight", "out_proj.weight"):
            p[k] = p[k] + 0.3 * rng.standard_normal(p[k].shape)
    return p


def random_cache(cfg, Bsz, seed):
    rng = np.random.default_rng(seed)
    c = {k: rng.standard_normal(s) for k, s in mamba3.cache_shapes(cfg, Bsz).items()}
    c["angle_state"] = rng.uniform(0.5, 2 * np.pi - 0.5, c["angle_state"].shape)
    return c


class Objective:
    """f(params, u, cache) = sum(y w) + sum_c <final cache c, w_c> (angle: cos/sin weights)."""

    def __init__(self, cfg, Bsz, L, cache_keys, seed):
        rng = np.random.default_rng(seed)
        self.w = rng.standard_normal((Bsz, L, cfg.d_model))
        self.wc = {k: rng.standard_normal(s) for k, s in mamba3.cache_shapes(cfg, Bsz).items()
                   if k in cache_keys}
        self.w_sin = rng.standard_normal(mamba3.cache_shapes(cfg, Bsz)["angle_state"])

    def value(self, y, cache):
        f = np.sum(np.asarray(y) * self.w)
        for k, w in self.wc.items():
            c = np.asarray(cache[k], np.float64)
            f += np.sum(np.cos(c) * w + np.sin(c) * self.w_sin) if k == "angle_state" else np.sum(c * w)
        return f

    def cotangents(self, cache):
        """(dy, dcache) of this scalar at the final cache ``cache``."""
        dcache = {}
        for k, w in self.wc.items():
            c = np.asarray(cache[k], np.float64)
            dcache[k] = -np.sin(c) * w + np.cos(c) * self.w_sin if k == "angle_state" else w
        return self.w, (dcache or None)


def fd_check(be, cfg, p, u, cache, obj, grads):
    """Central differences of obj on N_IDX random elements of each tensor; returns the errors."""
    rng = np.random.default_rng(123)
    inputs = {**{("param", k): v for k, v in p.items()}, ("u", "u"): u}
    if cache is not None:
        inputs.update({("cache", k): v for k, v in cache.items()})
    errs = {}
    for (kind, name), arr in inputs.items():
        g = grads[kind][name] if kind != "u" else grads["u"]
        assert g.shape == arr.shape and g.dtype == arr.dtype, (name, g.shape, g.dtype)
        assert np.abs(g).max() > 0, f"the gradient of {name} is all zeros"
        idx = rng.choice(arr.size, size=min(N_IDX, arr.size), replace=False)
        fd = []
        for i in idx:
            vals = []
            for sgn in (1, -1):
                a = arr.copy()
                a.flat[i] += sgn * EPS
                pp = dict(p, **({name: a} if kind == "param" else {}))
                uu = a if kind == "u" else u
                cc = dict(cache, **{name: a}) if kind == "cache" else cache
                y, c = mamba3.forward(be, pp, cfg, uu, cc)
                vals.append(obj.value(y, c))
            fd.append((vals[0] - vals[1]) / (2 * EPS))
        errs[f"{kind}:{name}"] = np.abs(np.array(fd) - g.flat[idx]).max() / np.abs(g).max()
    return errs


def run_backward(be, p, cfg, u, cache, obj):
    y, new_cache, saved = mamba3.forward_train(be, p, cfg, u, cache)
    dy, dcache = obj.cotangents(new_cache)
    dparams, du, dcache_in = mamba3.backward(be, p, cfg, saved, dy, dcache)
    return y, new_cache, saved, dparams, du, dcache_in


# ---- finite differences in float64 --------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", CONFIGS)
def test_backward_matches_finite_differences(backend, case, name):
    be = BACKENDS[backend]
    cfg = mamba3.Config.from_dict(**CONFIGS[name])
    L, with_cache, cache_keys = CASES[case]
    Bsz = 2
    p = perturbed(cfg, seed=1)
    u = np.random.default_rng(2).standard_normal((Bsz, L, cfg.d_model))
    cache = random_cache(cfg, Bsz, seed=3) if with_cache else None
    obj = Objective(cfg, Bsz, L, cache_keys, seed=4)
    y, new_cache, saved, dparams, du, dcache_in = run_backward(be, p, cfg, u, cache, obj)
    assert set(dparams) == set(p)
    assert (dcache_in is None) == (cache is None)
    if cache is not None:
        assert set(dcache_in) == set(cache)
    if name == "siso,A_floor":  # the clamp is active somewhere, and inactive elsewhere
        A = np.asarray(saved["A"])
        assert np.any(A == -cfg.A_floor) and np.any(A < -cfg.A_floor)
    errs = fd_check(be, cfg, p, u, cache, obj, {"param": dparams, "u": du, "cache": dcache_in})
    bad = {k: v for k, v in errs.items() if not v < 1e-5}
    assert not bad, bad


# ---- structure of forward_train / backward ------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_train_is_forward_and_saves_no_state(name, dtype):
    cfg = mamba3.Config.from_dict(**CONFIGS[name])
    p = {k: v.astype(dtype) for k, v in perturbed(cfg).items()}
    u = np.random.default_rng(1).standard_normal((2, 7, cfg.d_model)).astype(dtype)
    for cache in (None, {k: v.astype(dtype) for k, v in random_cache(cfg, 2, 2).items()}):
        y, c = mamba3.forward(CPU, p, cfg, u, cache)
        y2, c2, saved = mamba3.forward_train(CPU, p, cfg, u, cache)
        assert np.array_equal(y, y2) and y.dtype == y2.dtype
        assert set(c) == set(c2) and all(np.array_equal(c[k], c2[k]) and c[k].dtype == c2[k].dtype for k in c)
        H, P, N = cfg.nheads, cfg.headdim, cfg.d_state
        res = saved.pop("scan_res")  # cpu_numpy's saving form: the states every 64 tokens
        assert res.shape == (2, cfg.nheads, 1, cfg.d_state, cfg.headdim)
        for k, v in saved.items():  # no per-token SSM state (B, L, H, P, N)
            assert not (v.ndim >= 5 and tuple(v.shape[-2:]) == (P, N) and v.shape[-3] == H), k
        assert {"u", "zxbc", "y_scan", "y_gated"} <= set(saved)
        assert set(saved) & set(mamba3.CACHE_KEYS) == (set() if cache is None else set(cache))


def test_dy_none_and_empty_dcache_give_zero_gradients():
    cfg = mamba3.Config.from_dict(**CONFIGS["mimo,R=2"])
    p = perturbed(cfg)
    u = np.random.default_rng(1).standard_normal((2, 5, cfg.d_model))
    cache = random_cache(cfg, 2, 2)
    _, _, saved = mamba3.forward_train(CPU, p, cfg, u, cache)
    dparams, du, dcache_in = mamba3.backward(CPU, p, cfg, saved, None, {})
    assert not du.any() and not any(v.any() for v in dparams.values())
    assert not any(v.any() for v in dcache_in.values())


def test_dcache_alone_chains_like_truncated_bptt():
    """The gradient through the final cache into the next chunk equals the one-piece gradient."""
    cfg = mamba3.Config.from_dict(**CONFIGS["mimo,R=2,rf=1,G=2,outnorm"])
    p = perturbed(cfg, seed=5)
    u = np.random.default_rng(6).standard_normal((2, 9, cfg.d_model))
    w = np.random.default_rng(7).standard_normal((2, 9, cfg.d_model))
    _, _, saved = mamba3.forward_train(CPU, p, cfg, u)
    dp_all, du_all, _ = mamba3.backward(CPU, p, cfg, saved, w)
    _, c1, s1 = mamba3.forward_train(CPU, p, cfg, u[:, :4])
    _, _, s2 = mamba3.forward_train(CPU, p, cfg, u[:, 4:], c1)
    dp2, du2, dc = mamba3.backward(CPU, p, cfg, s2, w[:, 4:])
    dp1, du1, _ = mamba3.backward(CPU, p, cfg, s1, w[:, :4], dc)
    assert rel(np.concatenate([du1, du2], 1), du_all) < 1e-10
    for k in p:
        assert rel(dp1[k] + dp2[k], dp_all[k]) < 1e-10, k


# ---- float32 against the float64 reference ------------------------------------------------
@pytest.mark.parametrize("name", ["siso,rf=1,G=2,outnorm", "mimo,R=2", "mimo,R=2,rf=1,G=2,outnorm"])
def test_float32_backward_matches_reference(name):
    cfg = mamba3.Config.from_dict(**dict(CONFIGS[name], chunk_size=8))
    Bsz, L = 2, 21
    p32 = {k: v.astype(np.float32) for k, v in perturbed(cfg, seed=8).items()}
    u32 = np.random.default_rng(9).standard_normal((Bsz, L, cfg.d_model)).astype(np.float32)
    c32 = {k: v.astype(np.float32) for k, v in random_cache(cfg, Bsz, 10).items()}
    obj = Objective(cfg, Bsz, L, mamba3.CACHE_KEYS, seed=11)
    up = lambda d: {k: np.asarray(v, np.float64) for k, v in d.items()}  # noqa: E731

    _, want_c, saved = mamba3.forward_train(REF, up(p32), cfg, u32.astype(np.float64), up(c32))
    dy, dcache = obj.cotangents(want_c)
    want_p, want_u, want_dc = mamba3.backward(REF, up(p32), cfg, saved, dy, dcache)

    _, _, saved32 = mamba3.forward_train(CPU, p32, cfg, u32, c32)
    got_p, got_u, got_dc = mamba3.backward(
        CPU, p32, cfg, saved32, dy.astype(np.float32), {k: v.astype(np.float32) for k, v in dcache.items()})
    tol = TOLERANCES["float32"] * 10
    assert got_u.dtype == np.float32 and rel(got_u, want_u) < tol
    for k in p32:
        assert got_p[k].dtype == np.float32 and rel(got_p[k], want_p[k]) < tol, (k, rel(got_p[k], want_p[k]))
    for k in c32:
        err = rel(got_dc[k], want_dc[k])
        assert got_dc[k].dtype == np.float32 and err < tol, (k, err)
