"""The fused Mamba-2 decode step (kernels/mixer_steps.py, cuda/mixer_step.cu).

GPU tests (skipped, with the reason printed, without CuPy or a GPU): the fused step against
``mamba2.composed_step`` (on the float64 reference backend, the ground truth, and on cuda_cupy
itself, the contract) over several consecutive steps, in place and not; bit-identical reruns;
the CUDA-graph decoder (which captures the step in place) against eager ``lm.step``.
Host tests (no GPU): the launch plan, the dispatch rule, the switch, the in-place context, the
decoder's copy-back rule, and that the constants and instances of the .cu match the wrapper.
"""

import re

import numpy as np
import pytest

from mamba_core.models import mamba2

from mamba_backend_cuda_cupy import graphs
from mamba_backend_cuda_cupy._compile import source
from mamba_backend_cuda_cupy.backend import CudaCupyBackend
from mamba_backend_cuda_cupy.kernels import mixer_steps as ms

# relative norm error, fused vs composition, per dtype (float32: rounding of a 3-step chain)
TOL = {"float32": 3e-5, "float64": 1e-11}

# adversarial Mamba-2 configs: ngroups 1 / 2 / 4, d_mlp 0 and > 0 (d_ssm < d_inner), rmsnorm on
# and off, norm_before_gate both ways, dt_limit finite / half-open / none, bias and conv_bias
# on and off, D per head and per channel, d_state not a multiple of 32 (masked lanes) and up to
# 256, headdim not a multiple of the 16-row block, d_conv 1 .. 8
CONFIGS = {
    "g1": dict(d_model=32, d_state=16, headdim=8),
    "g2-nonorm-bias": dict(d_model=32, d_state=16, headdim=8, ngroups=2, rmsnorm=False, bias=True),
    "mlp-nbg-limit": dict(d_model=32, d_state=40, headdim=12, ngroups=2, expand=3, d_ssm=72,
                          norm_before_gate=True, dt_limit=(0.05, 0.5), D_has_hdim=True,
                          conv_bias=False),
    "mlp-n128-k3": dict(d_model=48, d_state=128, headdim=16, d_ssm=64, d_conv=3,
                        dt_limit=(0.0, 0.2)),
    "n200-k6-bias": dict(d_model=16, d_state=200, headdim=20, ngroups=2, expand=5, d_conv=6,
                         bias=True, D_has_hdim=True),
    "g4-nonorm-k1": dict(d_model=16, d_state=5, headdim=3, ngroups=4, expand=3, d_conv=1,
                         rmsnorm=False, dt_limit=(0.1, float("inf"))),
    "p40-k8-nbg": dict(d_model=40, d_state=33, headdim=40, d_conv=8, norm_before_gate=True),
    "n256-p64": dict(d_model=64, d_state=256, headdim=64, ngroups=2, bias=True),
}


def _backend_or_skip():
    be = CudaCupyBackend()
    ok = be.available()
    if not ok:
        print(f"SKIP: cuda_cupy not available: {ok.reason}")
        pytest.skip(f"cuda_cupy not available: {ok.reason}")
    return be


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got))
    d = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / (d if d > 0 else 1.0))


def random_mixer(kw: dict, batch: int, seed: int = 0):
    """A config, float64 NumPy params (every optional param away from its init value, so that it
    matters), a random cache and a function giving the next token's u (B, D)."""
    rng = np.random.default_rng(seed)
    cfg = mamba2.Config(**kw)
    params = {k: np.asarray(v, np.float64) for k, v in mamba2.init_params(cfg, rng).items()}
    for k in ("D", "norm.weight", "dt_bias", "conv1d.bias", "in_proj.bias", "out_proj.bias"):
        if k in params:
            params[k] = params[k] + 0.3 * rng.standard_normal(params[k].shape)
    cache = {k: rng.standard_normal(s) for k, s in mamba2.cache_shapes(cfg, batch).items()}
    return cfg, params, cache, lambda: rng.standard_normal((batch, cfg.d_model))


# ---- GPU: the fused step against the composition ----------------------------------------------
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_step_matches_composition(name, batch, dtype, inplace):
    be = _backend_or_skip()
    from mamba_core.reference_backend import REFERENCE

    cfg, params, cache, next_u = random_mixer(CONFIGS[name], batch)
    cparams = {k: be.asarray(v, dtype) for k, v in params.items()}
    assert ms.plan(cfg, batch) is not None
    ref_cache = dict(cache)
    cmp_cache = {k: be.asarray(v, dtype) for k, v in cache.items()}
    fused_cache = {k: be.asarray(v, dtype) for k, v in cache.items()}
    for _ in range(3):
        u = next_u()
        cu = be.asarray(u, dtype)
        assert ms.takes(cparams, cfg, cu, fused_cache)
        want, ref_cache = mamba2.composed_step(REFERENCE, params, cfg, u, ref_cache)
        comp, cmp_cache = mamba2.composed_step(be, cparams, cfg, cu, cmp_cache)
        before = {k: v.copy() for k, v in fused_cache.items()}
        with ms.inplace_cache(inplace):
            got, new = ms.mamba2_step(be, cparams, cfg, cu, fused_cache)
        assert all(a.dtype == np.dtype(dtype) for a in (got, *new.values()))
        if inplace:
            assert all(new[k] is fused_cache[k] for k in new), "in place: the inputs come back"
        else:
            for k in before:
                assert bool((before[k] == fused_cache[k]).all()), f"{k} was modified"
                assert new[k] is not fused_cache[k]
        fused_cache = new
        for label, a, b in [("out", got, want), *((k, new[k], ref_cache[k]) for k in new)]:
            assert rel(be.to_numpy(a), b) < TOL[dtype], (name, label, "vs reference")
        for label, a, b in [("out", got, comp), *((k, new[k], cmp_cache[k]) for k in new)]:
            assert rel(be.to_numpy(a), be.to_numpy(b)) < TOL[dtype], (name, label, "vs composition")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_step_is_deterministic(dtype):
    be = _backend_or_skip()
    cfg, params, cache, next_u = random_mixer(CONFIGS["mlp-n128-k3"], 3, seed=1)
    cparams = {k: be.asarray(v, dtype) for k, v in params.items()}
    u = be.asarray(next_u(), dtype)
    runs = []
    for _ in range(3):
        fresh = {k: be.asarray(v, dtype) for k, v in cache.items()}
        out, new = ms.mamba2_step(be, cparams, cfg, u, fresh)
        runs.append([be.to_numpy(a) for a in (out, new["conv_state"], new["ssm_state"])])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)  # the property is bit-identity


def test_step_dispatches_to_the_fused_step(monkeypatch):
    be = _backend_or_skip()
    cfg, params, cache, next_u = random_mixer(CONFIGS["g1"], 2)
    cparams = {k: be.asarray(v, "float32") for k, v in params.items()}
    ccache = {k: be.asarray(v, "float32") for k, v in cache.items()}
    calls, kernel = [], ms.mixer
    monkeypatch.setattr(ms, "mixer", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    u = be.asarray(next_u(), "float32")
    mamba2.step(be, cparams, cfg, u, ccache)
    assert calls == [1]
    monkeypatch.setenv(ms.ENV, "0")
    mamba2.step(be, cparams, cfg, u, ccache)
    assert calls == [1]  # the switch: the composition ran


def test_unsupported_config_falls_back_to_the_composition():
    be = _backend_or_skip()
    cfg, params, cache, next_u = random_mixer(dict(d_model=16, d_state=300, headdim=8), 2)
    cparams = {k: be.asarray(v, "float64") for k, v in params.items()}
    ccache = {k: be.asarray(v, "float64") for k, v in cache.items()}
    u = be.asarray(next_u(), "float64")
    assert not ms.takes(cparams, cfg, u, ccache)
    got, new = ms.mamba2_step(be, cparams, cfg, u, ccache)
    want, wnew = mamba2.composed_step(be, cparams, cfg, u, ccache)
    for a, b in [(got, want), *((new[k], wnew[k]) for k in new)]:
        assert rel(be.to_numpy(a), be.to_numpy(b)) < TOL["float64"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M,K,groups,skip,npart", [
    (1, 2048, 1, 0, 128),     # the 370M model's out_proj at batch 1
    (3, 96, 4, 16, 12),       # a gated-MLP slice left unscaled, 4 groups
    (20, 70, 2, 6, 6),        # two row tiles (16 + 4); K not a multiple of 4 (scalar loads)
    (2, 40, 16, 8, 32),       # GROUPS_MAX groups of 2 channels
    (1, 24, 1, 0, 1),         # K shorter than one round of copies
    (9, 72, 2, 8, 6),         # one 16-row tile; float64 vectors of 2: only some lanes run a round
    (8, 136, 4, 8, 8),        # 34 vectors of 4 a row: rounds that not every lane runs
])
@pytest.mark.parametrize("split", ["0", "auto", "4"])
def test_group_scaled_gemv_matches_numpy(M, K, groups, skip, npart, dtype, split, monkeypatch):
    """linear_group_scaled: column k >= skip of row m scaled by 1 / sqrt(sum of its group's
    partials / group size + eps), then the projection, against NumPy in float64; with K split
    over warps (MAMBA_CUPY_GEMV_SPLIT) or not."""
    be = _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels.linear import SPLIT_ENV, linear_group_scaled

    monkeypatch.setenv(SPLIT_ENV, split)

    rng = np.random.default_rng(K + M)
    N = 37
    x, w, bias = rng.standard_normal((M, K)), rng.standard_normal((N, K)), rng.standard_normal(N)
    part = rng.uniform(0.5, 3.0, (M, npart))
    eps = 1e-5
    gsz, npg = (K - skip) // groups, npart // groups
    scale = np.ones((M, K))
    for g in range(groups):
        rs = 1.0 / np.sqrt(part[:, g * npg:(g + 1) * npg].sum(1) / gsz + eps)
        scale[:, skip + g * gsz:skip + (g + 1) * gsz] = rs[:, None]
    want = (x * scale) @ w.T + bias
    args = [cp.asarray(a, dtype) for a in (x, w, bias, part)]
    got = linear_group_scaled(*args, groups, skip, eps)
    assert got.dtype == np.dtype(dtype) and got.shape == (M, N)
    assert rel(cp.asnumpy(got), want) < TOL[dtype]
    again = linear_group_scaled(*args, groups, skip, eps)
    assert bool((again == got).all())  # deterministic: a fixed order of sums


# ---- GPU: the CUDA-graph decoder, which captures the step in place -----------------------------
@pytest.mark.parametrize("fused,split", [("1", "0"), ("0", "0"), ("1", "4")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_graph_decoder_matches_eager(fused, split, dtype, monkeypatch):
    be = _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels.linear import SPLIT_ENV
    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig

    monkeypatch.setenv(ms.ENV, fused)
    monkeypatch.setenv(SPLIT_ENV, split)  # the GEMVs with K split over 4 warps, or not
    cfg = LMConfig(d_model=64, n_layer=3, vocab_size=100,
                   ssm_cfg={"layer": "Mamba2", "d_state": 48, "headdim": 16, "ngroups": 2})
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)), dtype)
    rng = np.random.default_rng(1)
    prefill = lm.init_cache(be, cfg, 3, dtype)
    for layer in prefill:  # a nonzero starting cache
        for k, v in layer.items():
            v[...] = cp.asarray(rng.standard_normal(v.shape), v.dtype)
    dec = graphs.GraphDecoder(be, params, cfg, batch=3, dtype=dtype, cache=prefill)
    cache = [{k: v.copy() for k, v in layer.items()} for layer in prefill]
    for _ in range(4):
        ids = cp.asarray(rng.integers(0, 100, 3), dtype=cp.int64)
        want, cache = lm.step(be, params, cfg, ids, cache)
        got = dec.step(ids)
        dec.synchronize()
        assert rel(cp.asnumpy(got), cp.asnumpy(want)) < TOL[dtype]
    for mine, theirs in zip(dec.cache, cache):
        for k in mine:
            assert rel(cp.asnumpy(mine[k]), cp.asnumpy(theirs[k])) < TOL[dtype], k


def test_inplace_step_leaves_nothing_to_copy_back():
    be = _backend_or_skip()
    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig

    cfg = LMConfig(d_model=32, n_layer=2, vocab_size=50,
                   ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16})
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)))
    static = lm.init_cache(be, cfg, 2)
    ids = be.asarray(np.array([1, 2]))
    with ms.inplace_cache():
        _, new = lm.step(be, params, cfg, ids, static)
    assert graphs._copies(static, new) == []
    _, new = lm.step(be, params, cfg, ids, static)
    assert len(graphs._copies(static, new)) == 2 * cfg.n_layer


# ---- host: planning and dispatch (no GPU) ------------------------------------------------------
@pytest.mark.parametrize("N", [1, 5, 16, 31, 32, 33, 64, 100, 128, 129, 200, 255, 256])
def test_npt_is_the_smallest_instance_that_holds_the_states(N):
    t = ms.npt_for(N)
    assert t in ms.NPTS and 32 * t >= N
    assert all(32 * s < N for s in ms.NPTS if s < t)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_plan_covers_every_head_channel(name, batch):
    cfg = mamba2.Config(**CONFIGS[name])
    pl = ms.plan(cfg, batch)
    P = cfg.headdim
    assert pl.npb * ms.ROWS >= P > (pl.npb - 1) * ms.ROWS
    assert pl.grid == (pl.npb, cfg.nheads, batch) and pl.threads == ms.WARPS * 32
    assert pl.tickets == cfg.nheads // cfg.ngroups * pl.npb
    assert 32 * pl.npt >= cfg.d_state


def test_plan_of_the_370m_model():
    cfg = mamba2.Config(d_model=1024, d_state=128, headdim=64)
    assert ms.plan(cfg, 1) == ms.Plan(npt=4, npb=4, grid=(4, 32, 1), threads=128, tickets=128)


@pytest.mark.parametrize("kw,batch,why", [
    (dict(d_model=16, d_state=257, headdim=8), 1, "d_state=257"),
    (dict(d_model=16, d_conv=9, headdim=8), 1, "d_conv=9"),
    (dict(d_model=16, headdim=8), 0, "batch 0"),
    (dict(d_model=16, headdim=8), 70000, "batch=70000"),
    (dict(d_model=68, headdim=8, ngroups=17), 1, "ngroups=17 > 16"),
])
def test_unsupported_configs_say_why(kw, batch, why):
    cfg = mamba2.Config(**kw)
    assert why in ms.unsupported(cfg, batch) and ms.plan(cfg, batch) is None


def _numpy_call(dtype="float32", **over):
    cfg, params, cache, next_u = random_mixer(CONFIGS["mlp-nbg-limit"], 2)
    params = {k: v.astype(dtype) for k, v in params.items()}
    cache = {k: v.astype(dtype) for k, v in cache.items()}
    u = next_u().astype(dtype)
    for k, v in over.items():
        (params if k in params else cache)[k] = v
    return params, cfg, u, cache


def test_takes_one_dtype_of_one_array_kind():
    params, cfg, u, cache = _numpy_call()
    assert ms.takes(params, cfg, u, cache, module="numpy")
    assert not ms.takes(params, cfg, u, cache)  # NumPy arrays are not CuPy arrays
    assert ms.takes(*_numpy_call("float64"), module="numpy")
    params, cfg, u, cache = _numpy_call(A_log=np.zeros(6, np.float64))  # one float64 param
    assert not ms.takes(params, cfg, u, cache, module="numpy")
    params, cfg, u, cache = _numpy_call()
    cache["ssm_state"] = cache["ssm_state"].astype(np.float64)  # a float64 cache, float32 model
    assert not ms.takes(params, cfg, u, cache, module="numpy")
    params, cfg, u, cache = _numpy_call("float16")
    assert not ms.takes(params, cfg, u, cache, module="numpy")
    params, cfg, u, cache = _numpy_call()
    assert not ms.takes(params, cfg, u, {"conv_state": cache["conv_state"][:1],
                                         "ssm_state": cache["ssm_state"]}, module="numpy")
    assert not ms.takes(params, cfg, u[:0], cache, module="numpy")


def test_switch_and_table(monkeypatch):
    be = CudaCupyBackend()
    monkeypatch.delenv(ms.ENV, raising=False)
    assert ms.enabled() and be.mixer_steps == {"mamba2": ms.mamba2_step}
    for off in ("0", "false", "OFF"):
        monkeypatch.setenv(ms.ENV, off)
        assert not ms.enabled() and be.mixer_steps == {}
    monkeypatch.setenv(ms.ENV, "1")
    assert be.mixer_steps["mamba2"] is ms.mamba2_step
    be.mixer_steps = {}  # an instance may override its table (benchmarks do)
    assert be.mixer_steps == {} and CudaCupyBackend().mixer_steps


def test_inplace_context_is_scoped():
    assert not ms._INPLACE.get()
    with ms.inplace_cache():
        assert ms._INPLACE.get()
        with ms.inplace_cache(False):
            assert not ms._INPLACE.get()
        assert ms._INPLACE.get()
    assert not ms._INPLACE.get()


def test_copy_back_skips_leaves_updated_in_place():
    a, b, c, d = (np.zeros(2) for _ in range(4))
    static = [{"ssm_state": a, "conv_state": b}, {"ssm_state": c, "conv_state": d}]
    e = np.ones(2)
    new = [{"ssm_state": a, "conv_state": b}, {"ssm_state": c, "conv_state": e}]
    assert graphs._copies(static, new) == [(d, e)]


def test_host_counters_are_zeroed_and_kept():
    buf = ms.counters(np, 10)
    assert buf.dtype == np.int32 and buf.shape[0] >= max(10, ms.MIN_COUNTERS) and not buf.any()
    assert ms.counters(np, 20) is buf
    big = ms.counters(np, ms.MIN_COUNTERS + 1)
    assert big.shape[0] >= ms.MIN_COUNTERS + 1 and not big.any()
    assert any(k is buf for k in ms._KEEP) and any(k is big for k in ms._KEEP)


def test_group_scaled_gemv_rejects_bad_arguments():
    from mamba_backend_cuda_cupy.kernels import linear

    x, w, part = np.zeros((2, 8), np.float32), np.zeros((3, 8), np.float32), np.ones((2, 4))
    with pytest.raises(ValueError, match="expected CuPy"):
        linear.linear_group_scaled(x, w, None, part, 2, 0, 1e-5)
    assert "#define GEMV_GROUPS_MAX 16" in source("linear.cu") and linear.GROUPS_MAX == 16


def test_cuda_source_matches_the_wrapper():
    text = source("mixer_step.cu")
    define = lambda name: int(re.search(rf"#define {name} (\d+)", text).group(1))
    assert define("M2_WARPS") == ms.WARPS
    assert define("M2_WARPS") * define("M2_RPW") == ms.ROWS
    assert define("M2_KMAX") == ms.KMAX
    for t in ("float", "double"):
        for n in ms.NPTS:
            assert f"M2_INST({t}, {n})" in text
