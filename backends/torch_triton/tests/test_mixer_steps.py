"""The fused decode steps (kernels/mixer_steps.py) against the op composition they replace.

``mamba_core.models.<family>.step`` runs the backend's fused step when it has one, and the op
composition under MAMBA_NO_FUSED_STEP=1; both must give the same output and new cache, from a
random cache, over a few tokens, for the config variants that change the kernel's path (groups,
norm before / after the gate, no norm, D per channel, the gated-MLP slice, dt_limit, biases,
P and N not powers of two). float32 within 2e-4 (relative max error), bf16 within 4e-2 (the
composition rounds xBC, y and the norm input to bf16 between ops, the fused step does not).
Also: the input cache is never modified; the new cache is float32; ``inplace_cache`` writes
over the input cache with the same results; the group counters are left at zero; float64 runs
the composition; the eager CudaGraphDecoder (in-place) equals lm.step.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("triton", reason="triton is not installed")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

from mamba_core.models import lm, mamba1, mamba2  # noqa: E402
from mamba_core.registry import get_backend  # noqa: E402

from mamba_backend_torch_triton.kernels import mixer_steps as MS  # noqa: E402

BE = get_backend("torch_triton")
TOL = {torch.float32: 2e-4, torch.bfloat16: 4e-2}
STEPS = 3

MAMBA2 = {
    "default": dict(d_model=16, d_state=8, headdim=4),
    "groups=2,nbg,D(S)": dict(d_model=16, d_state=8, headdim=4, ngroups=2, norm_before_gate=True,
                              D_has_hdim=True),
    "no-norm,limit,bias": dict(d_model=16, d_state=8, headdim=4, rmsnorm=False, bias=True,
                               dt_limit=(0.01, 0.3)),
    "mlp-slice,K=3,no-conv-bias": dict(d_model=16, d_state=8, headdim=4, d_ssm=16, d_conv=3,
                                       conv_bias=False),
    "P=6,N=5,groups=4": dict(d_model=24, d_state=5, headdim=6, ngroups=4),
}
MAMBA1 = {
    "default": dict(d_model=8, d_state=4, d_conv=3),
    "bias,no-conv-bias,N=5,R=3": dict(d_model=12, d_state=5, bias=True, conv_bias=False, dt_rank=3),
}


def rel(got, want):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape
    return float((got - want).abs().max() / max(want.abs().max(), 1e-30))


def setup(mod, kw, dtype, batch=2, seed=0):
    cfg = mod.Config.from_dict(**kw)
    rng = np.random.default_rng(seed)
    params = {k: BE.asarray(v, str(dtype).replace("torch.", "")) for k, v in mod.init_params(cfg, rng).items()}
    params = {k: (v + 0.1 * torch.randn_like(v) if k in ("D", "norm.weight") else v) for k, v in params.items()}
    dev = next(iter(params.values())).device  # the CPU in the interpreter, else the GPU
    cache = {k: torch.from_numpy(rng.standard_normal(s)).float().to(dev)
             for k, s in mod.cache_shapes(cfg, batch).items()}
    us = [torch.from_numpy(rng.standard_normal((batch, cfg.d_model))).to(dev, dtype) for _ in range(STEPS)]
    return cfg, params, cache, us


def unroll(mod, cfg, params, cache, us):
    ys = []
    for u in us:
        y, cache = mod.step(BE, params, cfg, u, cache)
        ys.append(y)
    return torch.stack(ys, 1), cache


def compare(mod, kw, dtype, monkeypatch):
    cfg, params, cache, us = setup(mod, kw, dtype)
    before = {k: v.clone() for k, v in cache.items()}
    y, new = unroll(mod, cfg, params, cache, us)
    for k in cache:  # the input cache is untouched
        assert torch.equal(cache[k], before[k]), k
    monkeypatch.setenv("MAMBA_NO_FUSED_STEP", "1")
    y_ref, new_ref = unroll(mod, cfg, params, cache, us)
    monkeypatch.delenv("MAMBA_NO_FUSED_STEP")
    assert y.dtype == y_ref.dtype == dtype
    assert rel(y, y_ref) < TOL[dtype]
    for k in new_ref:
        assert new[k].dtype == new_ref[k].dtype == torch.float32, k
        assert rel(new[k], new_ref[k]) < TOL[dtype], k
    assert int(MS._counters(y.device, 1).abs().sum()) == 0  # left at zero for the next launch


def test_the_backend_offers_the_fused_steps():
    assert set(BE.mixer_steps) >= {"mamba1", "mamba2"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(MAMBA2))
def test_mamba2_fused_equals_composed(name, dtype, monkeypatch):
    compare(mamba2, MAMBA2[name], dtype, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(MAMBA1))
def test_mamba1_fused_equals_composed(name, dtype, monkeypatch):
    compare(mamba1, MAMBA1[name], dtype, monkeypatch)


@pytest.mark.parametrize("mod,kw", [(mamba2, MAMBA2["groups=2,nbg,D(S)"]), (mamba1, MAMBA1["default"])],
                         ids=["mamba2", "mamba1"])
def test_inplace_cache_writes_over_the_input(mod, kw):
    cfg, params, cache, us = setup(mod, kw, torch.float32)
    y, new = mod.step(BE, params, cfg, us[0], cache)
    live = {k: v.clone() for k, v in cache.items()}
    with MS.inplace_cache():
        y2, new2 = mod.step(BE, params, cfg, us[0], live)
    for k in live:
        assert new2[k] is live[k], k
        assert torch.equal(live[k], new[k]), k
    assert torch.equal(y2, y)


def test_float64_runs_the_composition(monkeypatch):
    cfg, params, cache, us = setup(mamba2, MAMBA2["default"], torch.float64)
    cache = {k: v.double() for k, v in cache.items()}
    y, new = mamba2.step(BE, params, cfg, us[0], cache)
    monkeypatch.setenv("MAMBA_NO_FUSED_STEP", "1")
    y_ref, new_ref = mamba2.step(BE, params, cfg, us[0], cache)
    assert torch.equal(y, y_ref) and all(torch.equal(new[k], new_ref[k]) for k in new)
    assert new["ssm_state"].dtype == torch.float64


@pytest.mark.parametrize("layer", ["Mamba2", "Mamba1"])
def test_decoder_in_place_equals_lm_step(layer):
    import warnings

    from mamba_backend_torch_triton.graphs import CudaGraphDecoder

    ssm = {"layer": layer, "d_state": 8, "headdim": 4} if layer == "Mamba2" else {"layer": layer, "d_state": 4}
    cfg = lm.LMConfig(d_model=16, n_layer=2, vocab_size=11, ssm_cfg=ssm)
    params = lm.to_backend(BE, lm.init_params(cfg, np.random.default_rng(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        dec = CudaGraphDecoder(BE, params, cfg)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]], device=params["backbone.embedding.weight"].device)
    cache = lm.init_cache(BE, cfg, 2)
    for t in range(3):
        want, cache = lm.step(BE, params, cfg, ids[:, t], cache)
        got = dec.step(ids[:, t])
        assert rel(got, want) < 2e-4
    for dst, src in zip(dec.cache(2), cache):
        for k in dst:
            assert rel(dst[k], src[k]) < 2e-4
