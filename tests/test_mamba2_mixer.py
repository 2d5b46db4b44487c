"""The Mamba-2 mixer: parameters and their official init, forward against a from-the-spec loop,
forward vs step, forward continued from a cache, configuration errors."""

import math

import numpy as np
import pytest

from mamba_core.errors import ConfigError
from mamba_core.models import mamba2, mixer_module
from mamba_core.registry import get_backend
from _support import TOLERANCES, rel


CPU = get_backend("cpu_numpy")
REF = get_backend("reference")

SMALL = dict(d_model=8, d_state=4, headdim=4, chunk_size=4)  # E = 16, H = 4
CONFIGS = {
    "default": dict(SMALL),
    "G=2,D_has_hdim,norm_before_gate": dict(SMALL, ngroups=2, D_has_hdim=True, norm_before_gate=True),
    "no rmsnorm,bias,K=3,no conv bias": dict(SMALL, d_conv=3, rmsnorm=False, bias=True, conv_bias=False),
    "d_ssm<d_inner,dt_limit,G=2": dict(SMALL, d_model=6, d_ssm=8, ngroups=2, dt_limit=(0.02, 0.5)),
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


def silu(x):
    return x / (1.0 + np.exp(-x))


def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def mixer_by_hand(p, cfg, u, conv_state=None, ssm_state=None):
    """SPEC.md's Mamba-2 equations, token by token, head by head, in float64 (no ops used)."""
    Bsz, L, _ = u.shape
    E, S, M, H, P, G, N, K = (cfg.d_inner, cfg.ssm_width, cfg.d_mlp, cfg.nheads, cfg.headdim,
                              cfg.ngroups, cfg.d_state, cfg.d_conv)
    X = S + 2 * G * N
    window = np.zeros((Bsz, X, K)) if conv_state is None else conv_state.copy()
    state = np.zeros((Bsz, H, P, N)) if ssm_state is None else ssm_state.copy()
    A = -np.exp(p["A_log"])
    Dp = p["D"].reshape(H, P) if cfg.D_has_hdim else np.repeat(p["D"][:, None], P, axis=1)
    out = np.zeros((Bsz, L, cfg.d_model))
    for t in range(L):
        zx = u[:, t] @ p["in_proj.weight"].T + p.get("in_proj.bias", 0.0)
        z0, x0, z, xBC, dt = np.split(zx, np.cumsum([M, M, S, X]), axis=-1)
        window = np.concatenate([window[:, :, 1:], xBC[:, :, None]], axis=2)
        xBC = silu((window * p["conv1d.weight"][:, 0, :]).sum(-1) + p.get("conv1d.bias", 0.0))
        x, Bm, Cm = xBC[:, :S], xBC[:, S:S + G * N], xBC[:, S + G * N:]
        dt = softplus(dt + p["dt_bias"])
        if cfg.dt_limit != (0.0, math.inf):
            dt = np.clip(dt, *cfg.dt_limit)
        y = np.zeros((Bsz, S))
        for h in range(H):
            g = h // (H // G)
            xh = x[:, h * P:(h + 1) * P]  # (B, P)
            Bh, Ch = Bm[:, g * N:(g + 1) * N], Cm[:, g * N:(g + 1) * N]  # (B, N)
            d = dt[:, h, None, None]
            state[:, h] = np.exp(d * A[h]) * state[:, h] + d * xh[:, :, None] * Bh[:, None, :]
            y[:, h * P:(h + 1) * P] = (state[:, h] * Ch[:, None, :]).sum(-1) + Dp[h] * xh
        if cfg.rmsnorm:
            gs = S // G
            v = y if cfg.norm_before_gate else y * silu(z)
            v = v.reshape(Bsz, G, gs)
            v = (v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-5)).reshape(Bsz, S) * p["norm.weight"]
            y = v * silu(z) if cfg.norm_before_gate else v
        else:
            y = y * silu(z)
        if M:
            y = np.concatenate([silu(z0) * x0, y], axis=-1)
        out[:, t] = y @ p["out_proj.weight"].T + p.get("out_proj.bias", 0.0)
    return out, window, state


def random_cache(cfg, Bsz, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) for k, s in mamba2.cache_shapes(cfg, Bsz).items()}


# ---- parameters and init ------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_param_shapes_and_official_names(name):
    cfg = mamba2.Config.from_dict(**CONFIGS[name])
    D, E, S, H, G, N, K = (cfg.d_model, cfg.d_inner, cfg.ssm_width, cfg.nheads, cfg.ngroups,
                           cfg.d_state, cfg.d_conv)
    d_in = 2 * E + 2 * G * N + H
    want = {"in_proj.weight": (d_in, D), "conv1d.weight": (S + 2 * G * N, 1, K), "dt_bias": (H,),
            "A_log": (H,), "D": (S,) if cfg.D_has_hdim else (H,), "out_proj.weight": (D, E)}
    if cfg.rmsnorm:
        want["norm.weight"] = (S,)
    if cfg.bias:
        want.update({"in_proj.bias": (d_in,), "out_proj.bias": (D,)})
    if cfg.conv_bias:
        want["conv1d.bias"] = (S + 2 * G * N,)
    assert mamba2.param_shapes(cfg) == want
    params = mamba2.init_params(cfg, np.random.default_rng(0))
    assert {k: v.shape for k, v in params.items()} == want
    assert all(v.dtype == np.float32 for v in params.values())


def test_d_ssm_below_d_inner_sizes():
    cfg = mamba2.Config(d_model=6, d_state=4, headdim=4, d_ssm=8, ngroups=2)
    assert (cfg.d_inner, cfg.ssm_width, cfg.d_mlp, cfg.nheads, cfg.conv_dim) == (12, 8, 4, 2, 24)
    assert mamba2.param_shapes(cfg)["in_proj.weight"] == (2 * 12 + 2 * 2 * 4 + 2, 6)
    assert mamba2.cache_shapes(cfg, 3) == {"conv_state": (3, 24, 4), "ssm_state": (3, 2, 4, 4)}
    default = mamba2.Config(d_model=768)  # mamba2-130m: E = 1536, H = 24
    assert (default.nheads, default.conv_dim, default.d_in_proj) == (24, 1536 + 256, 3072 + 256 + 24)


def test_official_init_values():
    cfg = mamba2.Config(d_model=64, d_state=16, headdim=8, dt_min=0.002, dt_max=0.05,
                        A_init_range=(2, 12))
    p = mamba2.init_params(cfg, np.random.default_rng(0))
    A = np.exp(p["A_log"].astype(np.float64))
    assert A.shape == (16,) and A.min() >= 2 and A.max() <= 12 and A.std() > 1.0
    np.testing.assert_array_equal(p["D"], 1.0)
    np.testing.assert_array_equal(p["norm.weight"], 1.0)
    dt = softplus(p["dt_bias"].astype(np.float64))
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert np.log(dt).std() > 0.4  # log-uniform over [log dt_min, log dt_max], not a constant
    assert np.abs(p["in_proj.weight"]).max() <= 1 / math.sqrt(64)
    assert np.abs(p["out_proj.weight"]).max() <= 1 / math.sqrt(128)
    assert np.abs(p["conv1d.weight"]).max() <= 1 / math.sqrt(4)
    c = mamba2.init_params(mamba2.Config(d_model=64, d_state=16, headdim=8, conv_init=0.05,
                                         D_has_hdim=True), np.random.default_rng(0))
    assert np.abs(c["conv1d.weight"]).max() <= 0.05 and np.abs(c["conv1d.weight"]).max() > 0.04
    assert c["D"].shape == (128,)
    # the floor: dt_min below it is lifted to it
    f = mamba2.init_params(mamba2.Config(d_model=16, d_state=4, headdim=4, dt_min=1e-6, dt_max=1e-5,
                                         dt_init_floor=1e-3), np.random.default_rng(0))
    np.testing.assert_allclose(softplus(f["dt_bias"].astype(np.float64)), 1e-3, rtol=1e-4)


def test_no_weight_decay_and_registry():
    for k in ("A_log", "D", "dt_bias", "conv1d.bias", "norm.weight", "in_proj.bias"):
        assert mamba2.no_weight_decay(k), k
    for k in ("in_proj.weight", "conv1d.weight", "out_proj.weight"):
        assert not mamba2.no_weight_decay(k), k
    assert mixer_module("Mamba2") is mamba2 and mamba2.LAYER == "Mamba2"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_cache_zeros(dtype):
    cfg = mamba2.Config.from_dict(**SMALL)
    cache = mamba2.init_cache(CPU, cfg, 3, dtype)
    assert {k: v.shape for k, v in cache.items()} == {"conv_state": (3, 24, 4), "ssm_state": (3, 4, 4, 4)}
    assert all(v.dtype == np.dtype(dtype) and not v.any() for v in cache.values())


# ---- forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [CPU, REF], ids=["cpu_numpy", "reference"])
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("from_cache", [False, True], ids=["zeros", "cache"])
def test_forward_matches_the_equations(backend, name, from_cache):
    cfg = mamba2.Config.from_dict(**CONFIGS[name])
    p = perturbed(cfg)
    u = np.random.default_rng(1).standard_normal((2, 13, cfg.d_model))
    cache = random_cache(cfg, 2, 2) if from_cache else None
    want = mixer_by_hand(p, cfg, u, *(cache.values() if cache else ()))
    y, new = mamba2.forward(backend, p, cfg, u, cache)
    assert rel(y, want[0]) < 1e-12
    assert rel(new["conv_state"], want[1]) < 1e-12 and rel(new["ssm_state"], want[2]) < 1e-12


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", CONFIGS)
def test_step_unrolled_equals_forward(name, dtype):
    cfg = mamba2.Config.from_dict(**CONFIGS[name])
    p = {k: v.astype(dtype) for k, v in perturbed(cfg).items()}
    u = np.random.default_rng(3).standard_normal((3, 9, cfg.d_model)).astype(dtype)
    y, final = mamba2.forward(CPU, p, cfg, u)
    cache = mamba2.init_cache(CPU, cfg, 3, dtype)
    before = {k: v.copy() for k, v in cache.items()}
    ys = []
    for t in range(9):
        yt, cache_next = mamba2.step(CPU, p, cfg, u[:, t], cache)
        if t == 0:  # step never writes into the cache it was given
            assert all(np.array_equal(cache[k], before[k]) for k in cache)
        cache = cache_next
        ys.append(yt)
    assert y.dtype == np.dtype(dtype) and ys[0].dtype == np.dtype(dtype)
    assert rel(np.stack(ys, 1), y) < TOLERANCES[dtype]
    for k in final:
        assert final[k].dtype == np.dtype(dtype) and cache[k].dtype == np.dtype(dtype)
        assert rel(cache[k], final[k]) < TOLERANCES[dtype]


@pytest.mark.parametrize("split", [1, 3, 4, 10])
def test_forward_in_two_pieces_equals_one_forward(split):
    cfg = mamba2.Config.from_dict(**CONFIGS["G=2,D_has_hdim,norm_before_gate"])
    p = perturbed(cfg, seed=4)
    u = np.random.default_rng(5).standard_normal((2, 11, cfg.d_model))
    y, final = mamba2.forward(CPU, p, cfg, u)
    y1, c1 = mamba2.forward(CPU, p, cfg, u[:, :split])
    y2, c2 = mamba2.forward(CPU, p, cfg, u[:, split:], c1)
    assert rel(np.concatenate([y1, y2], 1), y) < 1e-12
    assert all(rel(c2[k], final[k]) < 1e-12 for k in final)


def test_chunk_size_does_not_change_the_output():
    base = mamba2.Config.from_dict(**SMALL)
    p = perturbed(base, seed=6)
    u = np.random.default_rng(7).standard_normal((2, 21, base.d_model))
    want, _ = mamba2.forward(REF, p, base, u)
    for q in (1, 5, 256):
        got, _ = mamba2.forward(CPU, p, mamba2.Config.from_dict(**dict(SMALL, chunk_size=q)), u)
        assert rel(got, want) < 1e-12


def test_float32_forward_matches_reference():
    cfg = mamba2.Config.from_dict(**CONFIGS["d_ssm<d_inner,dt_limit,G=2"])
    p32 = {k: v.astype(np.float32) for k, v in perturbed(cfg, seed=8).items()}
    u = np.random.default_rng(9).standard_normal((2, 40, cfg.d_model)).astype(np.float32)
    want, _ = mamba2.forward(REF, {k: v.astype(np.float64) for k, v in p32.items()}, cfg,
                             u.astype(np.float64))
    got, cache = mamba2.forward(CPU, p32, cfg, u)
    assert got.dtype == np.float32 and cache["ssm_state"].dtype == np.float32
    assert rel(got, want) < TOLERANCES["float32"]


# ---- configuration errors -----------------------------------------------------------------
@pytest.mark.parametrize("fields,field", [
    (dict(d_state=0), "d_state"),
    (dict(d_conv=2.5), "d_conv"),
    (dict(headdim=5), "headdim"),  # 16 channels are not whole heads of 5
    (dict(headdim=0), "headdim"),
    (dict(d_ssm=12), "headdim"),  # a valid width, but not whole heads of 8
    (dict(headdim=4, ngroups=3), "ngroups"),  # 4 heads do not split into 3 groups
    (dict(d_ssm=32), "d_ssm"),  # more than d_inner = 16
    (dict(expand=0), "expand"),
    (dict(expand=1.3), "expand"),
    (dict(A_init_range=(0, 16)), "A_init_range"),
    (dict(A_init_range=(5, 2)), "A_init_range"),
    (dict(dt_min=0.0), "dt_min"),
    (dict(dt_min=0.1, dt_max=0.01), "dt_max"),
    (dict(dt_init_floor=0), "dt_init_floor"),
    (dict(dt_limit=(0.5, 0.1)), "dt_limit"),
    (dict(dt_limit=0.1), "dt_limit"),
    (dict(conv_init=-1.0), "conv_init"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(rmsnorm="yes"), "rmsnorm"),
    (dict(D_has_hdim=1), "D_has_hdim"),
    (dict(dt_rank=4), "dt_rank"),  # a Mamba-1 field: unknown here
])
def test_config_errors_name_the_field(fields, field):
    full = dict(dict(d_state=4, headdim=8), **fields)  # d_model 8: E = 16, H = 2
    with pytest.raises(ConfigError, match=field) as info:
        mamba2.Config.from_dict(8, **full)
    if field != "dt_rank":
        assert f"{field}={full[field]!r}" in str(info.value)  # the value received is in the message
    with pytest.raises(ConfigError, match="d_model"):
        mamba2.Config.from_dict(0)


def test_config_accepts_json_lists():
    cfg = mamba2.Config.from_dict(8, d_state=4, headdim=8, A_init_range=[1, 4], dt_limit=[0.0, 1e9])
    assert cfg.A_init_range == (1, 4) and cfg.dt_limit == (0.0, 1e9)
