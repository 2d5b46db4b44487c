"""The whole-model decode step with the norms folded into projections (decode.py) and the
GEMV's residual epilogue it relies on (kernels/linear.py linear_residual_epilogue).

GPU tests (skipped, with the reason printed, without CuPy or a GPU): the epilogue against NumPy;
decode.step against lm.step over several tokens, for Mamba-2 configs with groups, biases, a
gated-MLP slice, no gated norm, an untied head, batches across the GEMV's row tiles, in place
and not; its fallbacks. Host tests: the reasons it gives for not taking a call, the switch.
"""

import numpy as np
import pytest

from mamba_core.models import lm
from mamba_core.models.config import LMConfig

from mamba_backend_cuda_cupy import decode
from mamba_backend_cuda_cupy.backend import CudaCupyBackend
from mamba_backend_cuda_cupy.kernels import mixer_steps as ms

TOL = {"float32": 5e-5, "float64": 1e-11}


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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M,K,N,with_res,scaled", [
    (1, 2048, 1024, True, True),    # the 370M model's out_proj at batch 1
    (3, 96, 40, False, False),      # the first layer: no residual yet, no gated norm
    (20, 64, 33, True, True),       # two row tiles (16 + 4), N not a multiple of the warps
    (2, 30, 7, True, False),        # K not a multiple of 4 (scalar loads)
])
def test_residual_epilogue_matches_numpy(M, K, N, with_res, scaled, dtype):
    be = _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels.linear import linear_residual_epilogue

    rng = np.random.default_rng(M * K + N)
    x, w, bias = rng.standard_normal((M, K)), rng.standard_normal((N, K)), rng.standard_normal(N)
    res = rng.standard_normal((M, N)) if with_res else None
    nw = rng.standard_normal(N)
    xs = x
    scales = None
    if scaled:  # 2 groups, a 2-column slice left unscaled
        part = rng.uniform(0.5, 3.0, (M, 4))
        gsz = (K - 2) // 2
        xs = x.copy()
        for g in range(2):
            rs = 1.0 / np.sqrt(part[:, 2 * g:2 * g + 2].sum(1) / gsz + 1e-5)
            xs[:, 2 + g * gsz:2 + (g + 1) * gsz] *= rs[:, None]
        scales = (cp.asarray(part, dtype), 2, 2, 1e-5)
    r = xs @ w.T + bias + (0.0 if res is None else res)
    c = lambda a: None if a is None else cp.asarray(a, dtype)  # noqa: E731
    ro, u, p2 = linear_residual_epilogue(c(x), c(w), c(bias), c(res), c(nw), scales)
    assert ro.dtype == np.dtype(dtype) and ro.shape == u.shape == (M, N) and p2.shape[0] == M
    assert rel(cp.asnumpy(ro), r) < TOL[dtype]
    assert rel(cp.asnumpy(u), r * nw) < TOL[dtype]
    assert rel(cp.asnumpy(p2).sum(1), (r ** 2).sum(1)) < TOL[dtype]
    again = linear_residual_epilogue(c(x), c(w), c(bias), c(res), c(nw), scales)
    assert all(bool((a == b).all()) for a, b in zip(again, (ro, u, p2)))  # deterministic


MODELS = {
    "g2": dict(d_model=64, n_layer=3, vocab_size=100,
               ssm_cfg={"layer": "Mamba2", "d_state": 48, "headdim": 16, "ngroups": 2}),
    "bias-untied-nbg": dict(d_model=48, n_layer=2, vocab_size=70, tie_embeddings=False,
                            ssm_cfg={"layer": "Mamba2", "d_state": 32, "headdim": 12,
                                     "bias": True, "norm_before_gate": True}),
    "mlp-slice": dict(d_model=32, n_layer=2, vocab_size=50,
                      ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 8, "d_ssm": 48}),
    "no-gated-norm": dict(d_model=32, n_layer=2, vocab_size=50,
                          ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 8,
                                   "rmsnorm": False}),
}


def _model(be, name, dtype, batch, seed=0):
    import cupy as cp

    cfg = LMConfig(**MODELS[name])
    rng = np.random.default_rng(seed)
    params = lm.init_params(cfg, rng)
    for k in params:  # norms away from 1, so that a wrong weight shows
        if k.endswith("norm.weight") or k.endswith("norm_f.weight"):
            params[k] = params[k] + 0.3 * rng.standard_normal(params[k].shape).astype(params[k].dtype)
    params = lm.to_backend(be, params, dtype)
    cache = lm.init_cache(be, cfg, batch, dtype)
    for layer in cache:
        for k, v in layer.items():
            v[...] = cp.asarray(rng.standard_normal(v.shape), v.dtype)
    return cfg, params, cache, rng


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 3, 20])
@pytest.mark.parametrize("name", list(MODELS))
def test_decode_step_matches_lm_step(name, batch, dtype, inplace):
    be = _backend_or_skip()
    import cupy as cp

    cfg, params, cache, rng = _model(be, name, dtype, batch)
    mine = [{k: v.copy() for k, v in layer.items()} for layer in cache]
    for _ in range(3):
        ids = cp.asarray(rng.integers(0, cfg.vocab_size, batch), dtype=cp.int64)
        assert decode.unsupported(be, params, cfg, ids, mine) is None
        want, cache = lm.step(be, params, cfg, ids, cache)
        with ms.inplace_cache(inplace):
            got, new = decode.step(be, params, cfg, ids, mine)
        if inplace:
            assert all(new[i][k] is mine[i][k] for i in range(cfg.n_layer) for k in new[i])
        mine = new
        assert got.dtype == want.dtype and rel(cp.asnumpy(got), cp.asnumpy(want)) < TOL[dtype]
        for a, b in zip(mine, cache):
            for k in a:
                assert rel(cp.asnumpy(a[k]), cp.asnumpy(b[k])) < TOL[dtype], k


def test_decode_step_falls_back_to_lm_step(monkeypatch):
    be = _backend_or_skip()
    import cupy as cp

    cfg, params, cache, rng = _model(be, "g2", "float32", 2)
    ids = cp.asarray([3, 4], dtype=cp.int64)
    calls = []
    real = lm.step
    monkeypatch.setattr(lm, "step", lambda *a, **k: calls.append(1) or real(*a, **k))
    decode.step(be, params, cfg, ids, cache)
    assert calls == []  # the fused path
    monkeypatch.setenv(decode.ENV, "0")
    got, _ = decode.step(be, params, cfg, ids, cache)
    assert calls == [1]
    monkeypatch.delenv(decode.ENV)
    monkeypatch.setenv(ms.ENV, "0")
    assert "fused Mamba-2 step is off" in decode.unsupported(be, params, cfg, ids, cache)


# ---- host ---------------------------------------------------------------------------------
def test_unsupported_says_why(monkeypatch):
    be = CudaCupyBackend()
    m1 = LMConfig(d_model=16, n_layer=1, vocab_size=10, ssm_cfg={"layer": "Mamba1"})
    assert "only Mamba-2" in decode.unsupported(be, {}, m1, None, None)
    mlp = LMConfig(d_model=16, n_layer=1, vocab_size=10, d_intermediate=32,
                   ssm_cfg={"layer": "Mamba2", "headdim": 8})
    assert "d_intermediate=32" in decode.unsupported(be, {}, mlp, None, None)
    monkeypatch.setenv(decode.ENV, "off")
    assert not decode.enabled() and decode.ENV in decode.unsupported(be, {}, m1, None, None)
    monkeypatch.setenv(decode.ENV, "1")
    assert decode.enabled()
