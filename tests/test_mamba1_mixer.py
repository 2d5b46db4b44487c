"""The Mamba-1 mixer: parameters and their official init, forward against a from-the-spec loop,
forward vs step, forward continued from a cache, configuration errors."""

import math

import numpy as np
import pytest

from mamba_core.errors import ConfigError
from mamba_core.models import mamba1, mixer_module
from mamba_core.registry import get_backend
from _support import TOLERANCES, rel


CPU = get_backend("cpu_numpy")
REF = get_backend("reference")

CONFIGS = {
    "default": dict(d_model=8, d_state=4),
    "bias,K=3,R=3,expand=1.5": dict(d_model=12, d_state=3, d_conv=3, expand=1.5, dt_rank=3,
                                     bias=True, conv_bias=False),
}


def perturbed(cfg, seed=0):
    """float64 params with D, A_log and every bias made random (so no constant hides a bug)."""
    rng = np.random.default_rng(seed)
    p = {k: v.astype(np.float64) for k, v in mamba1.init_params(cfg, rng).items()}
    for k in p:
        if k == "A_log" or k == "D" or k.endswith(".bias"):
            p[k] = p[k] + 0.3 * rng.standard_normal(p[k].shape)
    return p


def silu(x):
    return x / (1.0 + np.exp(-x))


def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def mixer_by_hand(p, cfg, u, conv_state=None, ssm_state=None):
    """SPEC.md's Mamba-1 equations, token by token, in float64 (independent of the ops)."""
    Bsz, L, _ = u.shape
    E, N, K, R = cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank_value
    window = np.zeros((Bsz, E, K)) if conv_state is None else conv_state.copy()
    h = np.zeros((Bsz, E, N)) if ssm_state is None else ssm_state.copy()
    A = -np.exp(p["A_log"])
    out = np.zeros((Bsz, L, cfg.d_model))
    for t in range(L):
        xz = u[:, t] @ p["in_proj.weight"].T + p.get("in_proj.bias", 0.0)
        x, z = xz[:, :E], xz[:, E:]
        window = np.concatenate([window[:, :, 1:], x[:, :, None]], axis=2)
        x = silu((window * p["conv1d.weight"][:, 0, :]).sum(-1) + p.get("conv1d.bias", 0.0))
        x_dbl = x @ p["x_proj.weight"].T
        dt_r, Bm, Cm = x_dbl[:, :R], x_dbl[:, R:R + N], x_dbl[:, R + N:]
        dt = softplus(dt_r @ p["dt_proj.weight"].T + p["dt_proj.bias"])  # (B, E)
        h = np.exp(dt[:, :, None] * A) * h + dt[:, :, None] * Bm[:, None, :] * x[:, :, None]
        y = (h * Cm[:, None, :]).sum(-1) + p["D"] * x
        y = y * silu(z)
        out[:, t] = y @ p["out_proj.weight"].T + p.get("out_proj.bias", 0.0)
    return out, window, h


def random_cache(cfg, Bsz, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) for k, s in mamba1.cache_shapes(cfg, Bsz).items()}


# ---- parameters and init ------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_param_shapes_and_official_names(name):
    cfg = mamba1.Config.from_dict(**CONFIGS[name])
    E, N, K, R, D = cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank_value, cfg.d_model
    want = {"in_proj.weight": (2 * E, D), "conv1d.weight": (E, 1, K), "x_proj.weight": (R + 2 * N, E),
            "dt_proj.weight": (E, R), "dt_proj.bias": (E,), "A_log": (E, N), "D": (E,),
            "out_proj.weight": (D, E)}
    if cfg.bias:
        want.update({"in_proj.bias": (2 * E,), "out_proj.bias": (D,)})
    if cfg.conv_bias:
        want["conv1d.bias"] = (E,)
    assert mamba1.param_shapes(cfg) == want
    params = mamba1.init_params(cfg, np.random.default_rng(0))
    assert {k: v.shape for k, v in params.items()} == want
    assert all(v.dtype == np.float32 for v in params.values())


def test_dt_rank_auto_is_ceil_d_model_over_16():
    assert mamba1.Config(d_model=16).dt_rank_value == 1
    assert mamba1.Config(d_model=33).dt_rank_value == 3
    assert mamba1.Config(d_model=768).dt_rank_value == 48
    assert mamba1.Config(d_model=33, dt_rank=5).dt_rank_value == 5
    assert mamba1.Config(d_model=10, expand=1.5).d_inner == 15


def test_official_init_values():
    cfg = mamba1.Config(d_model=64, d_state=16, dt_min=0.002, dt_max=0.05)
    p = mamba1.init_params(cfg, np.random.default_rng(0))
    np.testing.assert_allclose(p["A_log"], np.log(np.arange(1, 17))[None].repeat(128, 0), rtol=1e-6)
    np.testing.assert_array_equal(p["D"], 1.0)
    dt = softplus(p["dt_proj.bias"].astype(np.float64))
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert np.log(dt).std() > 0.5  # log-uniform over [log dt_min, log dt_max], not a constant
    bound = cfg.dt_rank_value ** -0.5 * cfg.dt_scale
    w = p["dt_proj.weight"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(p["in_proj.weight"]).max() <= 1 / math.sqrt(64)
    assert np.abs(p["conv1d.weight"]).max() <= 1 / math.sqrt(4)
    const = mamba1.init_params(mamba1.Config(d_model=64, dt_init="constant", dt_scale=2.0),
                               np.random.default_rng(0))
    np.testing.assert_allclose(const["dt_proj.weight"], 2.0 * 4 ** -0.5, rtol=1e-7)


def test_no_weight_decay_and_registry():
    assert mamba1.no_weight_decay("A_log") and mamba1.no_weight_decay("D")
    assert mamba1.no_weight_decay("dt_proj.bias") and mamba1.no_weight_decay("conv1d.bias")
    assert not mamba1.no_weight_decay("in_proj.weight") and not mamba1.no_weight_decay("dt_proj.weight")
    assert mixer_module("Mamba1") is mamba1 and mamba1.LAYER == "Mamba1"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_cache_zeros(dtype):
    cfg = mamba1.Config(d_model=8, d_state=4)
    cache = mamba1.init_cache(CPU, cfg, 3, dtype)
    assert {k: v.shape for k, v in cache.items()} == {"conv_state": (3, 16, 4), "ssm_state": (3, 16, 4)}
    assert all(v.dtype == np.dtype(dtype) and not v.any() for v in cache.values())


# ---- forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [CPU, REF], ids=["cpu_numpy", "reference"])
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("from_cache", [False, True], ids=["zeros", "cache"])
def test_forward_matches_the_equations(backend, name, from_cache):
    cfg = mamba1.Config.from_dict(**CONFIGS[name])
    p = perturbed(cfg)
    u = np.random.default_rng(1).standard_normal((2, 13, cfg.d_model))
    cache = random_cache(cfg, 2, 2) if from_cache else None
    want = mixer_by_hand(p, cfg, u, *(cache.values() if cache else ()))
    y, new = mamba1.forward(backend, p, cfg, u, cache)
    assert rel(y, want[0]) < 1e-12
    assert rel(new["conv_state"], want[1]) < 1e-12 and rel(new["ssm_state"], want[2]) < 1e-12


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", CONFIGS)
def test_step_unrolled_equals_forward(name, dtype):
    cfg = mamba1.Config.from_dict(**CONFIGS[name])
    p = {k: v.astype(dtype) for k, v in perturbed(cfg).items()}
    u = np.random.default_rng(3).standard_normal((3, 9, cfg.d_model)).astype(dtype)
    y, final = mamba1.forward(CPU, p, cfg, u)
    cache = mamba1.init_cache(CPU, cfg, 3, dtype)
    before = {k: v.copy() for k, v in cache.items()}
    ys = []
    for t in range(9):
        yt, cache_next = mamba1.step(CPU, p, cfg, u[:, t], cache)
        if t == 0:  # step never writes into the cache it was given
            assert all(np.array_equal(cache[k], before[k]) for k in cache)
        cache = cache_next
        ys.append(yt)
    assert y.dtype == np.dtype(dtype) and ys[0].dtype == np.dtype(dtype)
    assert rel(np.stack(ys, 1), y) < TOLERANCES[dtype]
    for k in final:
        assert final[k].dtype == np.dtype(dtype) and cache[k].dtype == np.dtype(dtype)
        assert rel(cache[k], final[k]) < TOLERANCES[dtype]


@pytest.mark.parametrize("split", [1, 2, 6, 10])
def test_forward_in_two_pieces_equals_one_forward(split):
    cfg = mamba1.Config.from_dict(**CONFIGS["bias,K=3,R=3,expand=1.5"])
    p = perturbed(cfg, seed=4)
    u = np.random.default_rng(5).standard_normal((2, 11, cfg.d_model))
    y, final = mamba1.forward(CPU, p, cfg, u)
    y1, c1 = mamba1.forward(CPU, p, cfg, u[:, :split])
    y2, c2 = mamba1.forward(CPU, p, cfg, u[:, split:], c1)
    assert rel(np.concatenate([y1, y2], 1), y) < 1e-12
    assert all(rel(c2[k], final[k]) < 1e-12 for k in final)


def test_float32_forward_matches_reference():
    cfg = mamba1.Config.from_dict(**CONFIGS["default"])
    p = perturbed(cfg, seed=6)
    u = np.random.default_rng(7).standard_normal((2, 40, cfg.d_model))
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    want, _ = mamba1.forward(REF, {k: v.astype(np.float64) for k, v in p32.items()}, cfg,
                             u.astype(np.float32).astype(np.float64))
    got, cache = mamba1.forward(CPU, p32, cfg, u.astype(np.float32))
    assert got.dtype == np.float32 and cache["ssm_state"].dtype == np.float32
    assert rel(got, want) < TOLERANCES["float32"]


# ---- configuration errors -----------------------------------------------------------------
@pytest.mark.parametrize("fields,field", [
    (dict(d_state=0), "d_state"),
    (dict(d_conv=2.5), "d_conv"),
    (dict(expand=0), "expand"),
    (dict(expand=1.3), "expand"),  # 1.3 * 8 channels is not whole
    (dict(dt_rank="big"), "dt_rank"),
    (dict(dt_rank=0), "dt_rank"),
    (dict(dt_min=0.0), "dt_min"),
    (dict(dt_min=0.1, dt_max=0.01), "dt_max"),
    (dict(dt_init="normal"), "dt_init"),
    (dict(dt_scale=-1.0), "dt_scale"),
    (dict(dt_init_floor=0), "dt_init_floor"),
    (dict(conv_bias="yes"), "conv_bias"),
    (dict(bias=1), "bias"),
    (dict(headdim=64), "headdim"),  # a Mamba-2 field: unknown here
])
def test_config_errors_name_the_field(fields, field):
    with pytest.raises(ConfigError, match=field) as info:
        mamba1.Config.from_dict(8, **fields)
    if field != "headdim":
        assert repr(fields[field]) in str(info.value)  # the value received is in the message
    with pytest.raises(ConfigError, match="d_model"):
        mamba1.Config.from_dict(0)
