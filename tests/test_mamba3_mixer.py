"""The Mamba-3 mixer (SISO and MIMO): parameters and their official init, forward against a
from-the-notes float64 loop, forward vs step, forward continued from a cache, configuration
errors."""

import math

import numpy as np
import pytest

from mamba_core.errors import ConfigError
from mamba_core.models import mamba3, mixer_module
from mamba_core.registry import get_backend

from _support import TOLERANCES, rel

CPU = get_backend("cpu_numpy")
REF = get_backend("reference")

_SMALL = dict(d_model=16, d_state=8, headdim=8)  # E = 32, H = 4, P = 8, N = 8
CONFIGS = {
    "siso": dict(_SMALL, chunk_size=4),
    "siso,rf=1,G=2,outnorm": dict(_SMALL, rope_fraction=1.0, ngroups=2, is_outproj_norm=True, chunk_size=8),
    "siso,G=4(=H),rf=0.5": dict(_SMALL, ngroups=4, chunk_size=16),
    "mimo,R=2": dict(_SMALL, is_mimo=True, mimo_rank=2, chunk_size=4),
    "mimo,R=2,rf=1,G=2,outnorm": dict(_SMALL, is_mimo=True, mimo_rank=2, rope_fraction=1.0, ngroups=2,
                                      is_outproj_norm=True, chunk_size=4),
    "mimo,R=3,G=2": dict(_SMALL, is_mimo=True, mimo_rank=3, ngroups=2, chunk_size=3),
}


def angle_err(got, want):
    """Largest angular distance (mod 2 pi) between two angle arrays."""
    d = np.asarray(got, np.float64) - np.asarray(want, np.float64)
    return np.abs((d + np.pi) % (2 * np.pi) - np.pi).max()


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
    c["angle_state"] = rng.uniform(0, 2 * np.pi, c["angle_state"].shape)
    return c


# ---- the whole mixer by hand, from /work/notes/mamba3.md -----------------------------------
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def rms(v, w, eps=1e-5):
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * w


def rotate(v, phi, mimo):
    """v: (B, R, H, N); phi: (B, H, S). SISO: pairs (2i, 2i+1); MIMO: pairs (i, i + N/2)."""
    out = v.copy()
    N, S = v.shape[-1], phi.shape[-1]
    c, s = np.cos(phi)[:, None], np.sin(phi)[:, None]  # (B, 1, H, S)
    for i in range(S):
        a, b = (i, i + N // 2) if mimo else (2 * i, 2 * i + 1)
        out[..., a] = v[..., a] * c[..., i] - v[..., b] * s[..., i]
        out[..., b] = v[..., a] * s[..., i] + v[..., b] * c[..., i]
    return out


def mixer_by_hand(p, cfg, u, cache=None):
    """The notes' Mamba-3 equations, token by token, in float64 (independent of the ops)."""
    Bsz, L, _ = u.shape
    E, H, P, G, N, R = cfg.d_inner, cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.mimo_rank
    split = int(N * cfg.rope_fraction)
    S = (split - split % 2) // 2
    mimo = cfg.is_mimo
    if cache is None:
        phi = np.zeros((Bsz, H, S))
        St = np.zeros((Bsz, H, P, N))
        k_prev = np.zeros((Bsz, R, H, N))
        x_prev = np.zeros((Bsz, H, P))
    else:
        phi, St, k_prev, x_prev = (cache[k].copy() for k in ("angle_state", "ssm_state", "k_state", "v_state"))
    ones = np.ones((H, R, P))
    mx, mz, mo = (p[k] if mimo else ones for k in ("mimo_x", "mimo_z", "mimo_o"))
    out = np.zeros((Bsz, L, cfg.d_model))
    for t in range(L):
        proj = u[:, t] @ p["in_proj.weight"].T
        sizes = [E, E, R * G * N, R * G * N, H, H, H, S]
        z, x, Bm, Cm, dd_dt, dd_A, trap, ang = np.split(proj, np.cumsum(sizes)[:-1], axis=-1)
        ht = np.where(dd_A >= 0, 1 + dd_A, 1 / (1 - np.minimum(dd_A, 0)))
        A = -np.maximum(ht, cfg.A_floor)
        dt = softplus(dd_dt + p["dt_bias"])
        trap = sigmoid(trap)
        Bn = rms(Bm.reshape(Bsz, R, G, N), p["B_norm.weight"])
        Cn = rms(Cm.reshape(Bsz, R, G, N), p["C_norm.weight"])
        Bh, Ch = np.zeros((Bsz, R, H, N)), np.zeros((Bsz, R, H, N))
        for h in range(H):
            g = h // (H // G)
            Bh[:, :, h] = Bn[:, :, g] + p["B_bias"][h]
            Ch[:, :, h] = Cn[:, :, g] + p["C_bias"][h]
        phi = np.mod(phi + (np.tanh(ang) * np.pi)[:, None, :] * dt[:, :, None], 2 * np.pi)
        Bh, Ch = rotate(Bh, phi, mimo), rotate(Ch, phi, mimo)
        x = x.reshape(Bsz, H, P)
        z = z.reshape(Bsz, H, P)
        alpha = np.exp(A * dt)
        beta = (1 - trap) * dt * alpha
        gamma = trap * dt
        y = np.zeros((Bsz, H, P))
        for b in range(Bsz):
            for h in range(H):
                prev = sum(np.outer(x_prev[b, h] * mx[h, r], k_prev[b, r, h]) for r in range(R))
                cur = sum(np.outer(x[b, h] * mx[h, r], Bh[b, r, h]) for r in range(R))
                St[b, h] = alpha[b, h] * St[b, h] + beta[b, h] * prev + gamma[b, h] * cur
                for r in range(R):
                    yr = St[b, h] @ Ch[b, r, h] + p["D"][h] * x[b, h] * mx[h, r]
                    zr = z[b, h] * mz[h, r]
                    if cfg.is_outproj_norm:
                        yr = rms(yr, p["norm.weight"][h * P:(h + 1) * P]) * silu(zr)
                    else:
                        yr = yr * silu(zr)
                    y[b, h] += yr * mo[h, r] if mimo else yr
        k_prev, x_prev = Bh, x
        out[:, t] = y.reshape(Bsz, E) @ p["out_proj.weight"].T
    return out, {"angle_state": phi, "ssm_state": St, "k_state": k_prev, "v_state": x_prev}


def check_cache(got, want, tol):
    assert set(got) == set(want)
    for k in want:
        assert tuple(got[k].shape) == want[k].shape, k
        if k == "angle_state":  # reduced mod 2 pi, compared as angles
            g = np.asarray(got[k], np.float64)
            assert g.min() >= 0 and g.max() <= 2 * np.pi * (1 + 1e-6)
            assert angle_err(g, want[k]) < tol * 2 * np.pi, k
        else:
            assert rel(got[k], want[k]) < tol, (k, rel(got[k], want[k]))


# ---- parameters and init ------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_param_shapes_and_official_names(name):
    cfg = mamba3.Config.from_dict(**CONFIGS[name])
    D, E, H, P, G, N, R = (cfg.d_model, cfg.d_inner, cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state,
                           cfg.mimo_rank)
    S = cfg.num_rope_angles
    assert S == (4 if cfg.rope_fraction == 1.0 else 2)
    want = {"in_proj.weight": (2 * E + 2 * R * G * N + 3 * H + S, D), "dt_bias": (H,),
            "B_bias": (H, R, N), "C_bias": (H, R, N), "B_norm.weight": (N,), "C_norm.weight": (N,),
            "D": (H,), "out_proj.weight": (D, E)}
    if cfg.is_mimo:
        want.update({k: (H, R, P) for k in ("mimo_x", "mimo_z", "mimo_o")})
    if cfg.is_outproj_norm:
        want["norm.weight"] = (E,)
    assert mamba3.param_shapes(cfg) == want
    params = mamba3.init_params(cfg, np.random.default_rng(0))
    assert {k: v.shape for k, v in params.items()} == want
    assert all(v.dtype == np.float32 for v in params.values())


def test_sizes_of_the_official_defaults():
    cfg = mamba3.Config(d_model=768)  # N = 128, rope_fraction 0.5, headdim 64, SISO
    assert cfg.num_rope_angles == 32 and cfg.mimo_rank == 1 and cfg.nheads == 24
    assert cfg.d_in_proj == 2 * 1536 + 2 * 128 + 3 * 24 + 32
    assert mamba3.Config(d_model=768, rope_fraction=1.0).num_rope_angles == 64
    assert mamba3.Config(d_model=768, is_mimo=True).mimo_rank == 4
    assert mamba3.Config(d_model=768, mimo_rank=2).mimo_rank == 1  # forced to 1 without is_mimo
    assert mamba3.Config(d_model=16, d_state=7, headdim=8).num_rope_angles == 1  # split 3 -> 2
    assert mamba3.Config(d_model=16, d_state=6, headdim=8).num_rope_angles == 1
    assert mamba3.Config(d_model=16, d_state=7, headdim=8, rope_fraction=1.0).num_rope_angles == 3


def test_official_init_values():
    cfg = mamba3.Config(d_model=64, d_state=16, headdim=16, is_mimo=True, mimo_rank=4,
                        is_outproj_norm=True, dt_min=0.002, dt_max=0.05)
    p = mamba3.init_params(cfg, np.random.default_rng(0))
    for k in ("B_bias", "C_bias", "B_norm.weight", "C_norm.weight", "D", "norm.weight", "mimo_z"):
        np.testing.assert_array_equal(p[k], 1.0, err_msg=k)
    np.testing.assert_array_equal(p["mimo_x"], np.float32(0.25))
    np.testing.assert_array_equal(p["mimo_o"], np.float32(0.25))
    dt = softplus(p["dt_bias"].astype(np.float64))
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert np.log(dt).std() > 0.3  # log-uniform, not a constant
    w = p["in_proj.weight"]
    assert np.abs(w).max() <= 1 / math.sqrt(64) and np.abs(w).max() > 0.9 / math.sqrt(64)
    w = p["out_proj.weight"]
    assert np.abs(w).max() <= 1 / math.sqrt(128) and np.abs(w).max() > 0.9 / math.sqrt(128)


def test_no_weight_decay_and_registry():
    for k in ("dt_bias", "D", "B_bias", "C_bias", "B_norm.weight", "C_norm.weight", "norm.weight"):
        assert mamba3.no_weight_decay(k), k
    for k in ("in_proj.weight", "out_proj.weight", "mimo_x", "mimo_z", "mimo_o"):
        assert not mamba3.no_weight_decay(k), k
    assert mixer_module("Mamba3") is mamba3 and mamba3.LAYER == "Mamba3"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_cache_zeros(dtype):
    cfg = mamba3.Config.from_dict(**CONFIGS["mimo,R=2"])
    cache = mamba3.init_cache(CPU, cfg, 3, dtype)
    assert {k: v.shape for k, v in cache.items()} == {
        "angle_state": (3, 4, 2), "ssm_state": (3, 4, 8, 8), "k_state": (3, 2, 4, 8), "v_state": (3, 4, 8)}
    assert all(v.dtype == np.dtype(dtype) and not v.any() for v in cache.values())


def test_decay_rate_heavy_tail():
    v = np.array([-1e30, -1e4, -3.0, -1e-9, 0.0, 1e-9, 0.5, 1e4, 1e30])
    ht = mamba3.heavy_tail(np, v)
    want = np.where(v >= 0, 1 + v, 1 / (1 - np.minimum(v, 0)))
    np.testing.assert_allclose(ht, want, rtol=1e-15)
    A = mamba3.decay_rate(np, v, 1e-4)
    np.testing.assert_allclose(A, -np.maximum(want, 1e-4), rtol=1e-15)
    assert np.all(A <= -1e-4) and np.all(np.isfinite(A))
    with np.errstate(all="raise"):  # no overflow warnings in float32 either
        A32 = mamba3.decay_rate(np, v.astype(np.float32)[1:-1], 1e-4)
    assert A32.dtype == np.float32 and np.all(np.isfinite(A32))


# ---- forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [CPU, REF], ids=["cpu_numpy", "reference"])
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("from_cache", [False, True], ids=["zeros", "cache"])
def test_forward_matches_the_equations(backend, name, from_cache):
    cfg = mamba3.Config.from_dict(**CONFIGS[name])
    p = perturbed(cfg)
    u = np.random.default_rng(1).standard_normal((2, 13, cfg.d_model))
    cache = random_cache(cfg, 2, 2) if from_cache else None
    want_y, want_c = mixer_by_hand(p, cfg, u, cache)
    y, new = mamba3.forward(backend, p, cfg, u, cache)
    assert y.shape == want_y.shape and rel(y, want_y) < 1e-10
    check_cache(new, want_c, 1e-10)


@pytest.mark.parametrize("name", ["siso,rf=1,G=2,outnorm", "mimo,R=2,rf=1,G=2,outnorm"])
def test_float32_forward_matches_reference(name):
    cfg = mamba3.Config.from_dict(**CONFIGS[name])
    p32 = {k: v.astype(np.float32) for k, v in perturbed(cfg, seed=6).items()}
    u32 = np.random.default_rng(7).standard_normal((2, 40, cfg.d_model)).astype(np.float32)
    c32 = {k: v.astype(np.float32) for k, v in random_cache(cfg, 2, 8).items()}
    up = lambda d: {k: v.astype(np.float64) for k, v in d.items()}  # noqa: E731
    want, want_c = mamba3.forward(REF, up(p32), cfg, u32.astype(np.float64), up(c32))
    got, cache = mamba3.forward(CPU, p32, cfg, u32, c32)
    assert got.dtype == np.float32 and all(v.dtype == np.float32 for v in cache.values())
    assert rel(got, want) < TOLERANCES["float32"]
    check_cache(cache, want_c, TOLERANCES["float32"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", CONFIGS)
def test_step_unrolled_equals_forward(name, dtype):
    cfg = mamba3.Config.from_dict(**CONFIGS[name])
    p = {k: v.astype(dtype) for k, v in perturbed(cfg, seed=2).items()}
    u = np.random.default_rng(3).standard_normal((3, 9, cfg.d_model)).astype(dtype)
    start = {k: v.astype(dtype) for k, v in random_cache(cfg, 3, 4).items()}
    y, final = mamba3.forward(CPU, p, cfg, u, start)
    cache = start
    before = {k: v.copy() for k, v in cache.items()}
    ys = []
    for t in range(9):
        yt, cache_next = mamba3.step(CPU, p, cfg, u[:, t], cache)
        if t == 0:  # step never writes into the cache it was given
            assert all(np.array_equal(cache[k], before[k]) for k in cache)
        cache = cache_next
        ys.append(yt)
    assert y.dtype == np.dtype(dtype) and ys[0].dtype == np.dtype(dtype) and ys[0].shape == (3, cfg.d_model)
    tol = TOLERANCES[dtype]
    assert rel(np.stack(ys, 1), y) < tol
    for k in final:
        assert final[k].dtype == np.dtype(dtype) and cache[k].dtype == np.dtype(dtype)
    check_cache(cache, final, tol)


@pytest.mark.parametrize("name", ["siso", "mimo,R=2,rf=1,G=2,outnorm"])
@pytest.mark.parametrize("split", [1, 5, 12])
def test_forward_in_two_pieces_equals_one_forward(name, split):
    cfg = mamba3.Config.from_dict(**CONFIGS[name])
    p = perturbed(cfg, seed=4)
    u = np.random.default_rng(5).standard_normal((2, 13, cfg.d_model))
    y, final = mamba3.forward(CPU, p, cfg, u)
    y1, c1 = mamba3.forward(CPU, p, cfg, u[:, :split])
    y2, c2 = mamba3.forward(CPU, p, cfg, u[:, split:], c1)
    assert rel(np.concatenate([y1, y2], 1), y) < 1e-12
    check_cache(c2, final, 1e-12)


def test_block_and_lm_accept_mamba3():
    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig

    cfg = LMConfig(d_model=16, n_layer=2, vocab_size=20,
                   ssm_cfg={"layer": "Mamba3", "d_state": 8, "headdim": 8, "is_mimo": True, "mimo_rank": 2})
    p = lm.init_params(cfg, np.random.default_rng(0))
    lm.check_params(cfg, p)
    assert p["backbone.layers.1.mixer.mimo_x"].shape == (4, 2, 8)
    np.testing.assert_array_equal(p["backbone.layers.1.mixer.B_bias"], 1.0)  # not zeroed as a Linear bias
    p = lm.to_backend(CPU, p, "float64")
    ids = np.random.default_rng(1).integers(0, 20, (2, 7))
    logits, _ = lm.forward(CPU, p, cfg, ids)
    _, cache = lm.forward(CPU, p, cfg, ids[:, :4])  # prefill, then decode token by token
    for t in range(4, 7):
        lt, cache = lm.step(CPU, p, cfg, ids[:, t], cache)
        assert rel(lt, logits[:, t]) < 1e-12


# ---- configuration errors -----------------------------------------------------------------
@pytest.mark.parametrize("fields,field", [
    (dict(rope_fraction=0.3), "rope_fraction"),
    (dict(headdim=12), "headdim"),  # 12 does not divide E = 32
    (dict(ngroups=3), "ngroups"),  # 3 does not divide H = 4
    (dict(d_state=0), "d_state"),
    (dict(d_state=1), "d_state"),  # no rotation angle
    (dict(expand=0), "expand"),
    (dict(is_mimo="yes"), "is_mimo"),
    (dict(is_mimo=True, mimo_rank=0), "mimo_rank"),
    (dict(is_mimo=True, d_state=7), "d_state"),  # halves pairing needs an even N
    (dict(dt_min=0.1, dt_max=0.01), "dt_max"),
    (dict(A_floor=-1.0), "A_floor"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(d_conv=4), "d_conv"),  # a Mamba-2 field: unknown here
])
def test_config_errors_name_the_field(fields, field):
    with pytest.raises(ConfigError, match=field) as info:
        mamba3.Config.from_dict(16, **{"headdim": 8, **fields})
    if field in fields:
        assert repr(fields[field]) in str(info.value) or field == "d_conv"
    with pytest.raises(ConfigError, match="d_model"):
        mamba3.Config.from_dict(0, headdim=8)


def test_ignored_official_flags_are_accepted():
    cfg = mamba3.Config.from_dict(16, headdim=8, fuse_pregate_headwise_norm=False, dropout=0.0)
    assert cfg.nheads == 4
