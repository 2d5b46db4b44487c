"""The SSD kernels at any requested chunk_size: sub-chunks, and configs that fit the device.

The SSD result does not depend on the chunk length, so the kernels run a requested chunk of 256
as sub-chunks (forward Qk <= 128, backward <= 64) and shrink Qk / the pipelining depth while a
kernel does not fit the GPU's shared memory (kernels/ssd.py, "Chunk cap"). In the interpreter
nothing runs out of shared memory, so the shrinking is exercised by a stand-in kernel that raises
Triton's OutOfResources for configs above a limit, as a GPU launch does.
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

from mamba_core.ops import REGISTRY  # noqa: E402

from mamba_backend_torch_triton.kernels import _scan_common as SC  # noqa: E402
from mamba_backend_torch_triton.kernels import ssd as SSD  # noqa: E402

TOL = 2e-4
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def rel(got, want):
    got = got.detach().double().cpu().numpy()
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).max()
    return float(np.abs(got - want).max() / (scale if scale > 0 else 1.0))


def t(a):
    return torch.from_numpy(np.asarray(a, np.float64)).float().to(DEV) if isinstance(a, np.ndarray) else a


def inputs(rng, Bs=1, L=300, H=2, P=3, G=1, N=4, chunk=256):
    args = dict(x=rng.standard_normal((Bs, L, H, P)), dt=rng.standard_normal((Bs, L, H)),
                A=-np.exp(rng.uniform(-1.0, 1.0, H)), B=rng.standard_normal((Bs, L, G, N)),
                C=rng.standard_normal((Bs, L, G, N)))
    kw = dict(chunk_size=chunk, D=rng.standard_normal(H), z=rng.standard_normal((Bs, L, H, P)),
              dt_bias=0.5 * rng.standard_normal(H), dt_softplus=True,
              initial_state=rng.standard_normal((Bs, H, P, N)))
    return args, kw


def check(args, kw, rng):
    y_ref, s_ref = REGISTRY["ssd_scan"].reference(**args, **kw)
    y, s = SSD.ssd_scan(**{k: t(v) for k, v in args.items()}, **{k: t(v) for k, v in kw.items()})
    assert rel(y, y_ref) < TOL and rel(s, s_ref) < TOL
    cot = (rng.standard_normal(y_ref.shape), rng.standard_normal(s_ref.shape))
    g_ref = REGISTRY["ssd_scan_vjp"].reference(cot, **args, **kw)
    g = SSD.ssd_scan_vjp(tuple(t(c) for c in cot), **{k: t(v) for k, v in args.items()},
                         **{k: t(v) for k, v in kw.items()})
    assert list(g) == list(g_ref)
    for k in g_ref:
        assert rel(g[k], g_ref[k]) < TOL, k


@pytest.mark.parametrize("chunk", [256, 512, 100])
def test_large_chunk_requests_run_as_sub_chunks(chunk):
    """chunk_size 256 (the Mamba-2 default), 512 and a non-power of two, over L = 300 tokens
    (more than one kernel chunk, the last one partial): forward and VJP equal the reference."""
    rng = np.random.default_rng(chunk)
    check(*inputs(rng, chunk=chunk), rng)


def test_configs_go_from_the_largest_chunk_down():
    assert SSD._configs(128) == [(128, 3), (128, 1), (64, 3), (64, 1), (32, 3), (32, 1), (16, 3), (16, 1)]
    assert SSD._chunk(256) == 128 and SSD._chunk(64) == 64 and SSD._chunk(5) == 16


class _SmallDevice:
    """A stand-in for a Triton kernel on a device with less shared memory: a launch whose Qk is
    above ``max_q``, or that asks for more pipelining stages than ``max_stages``, raises
    OutOfResources before running (as Triton does when it loads a kernel too large)."""

    def __init__(self, kernel, max_q, max_stages):
        self.kernel, self.max_q, self.max_stages = kernel, max_q, max_stages
        self.tried = []

    def __getitem__(self, grid):
        def call(*args, **kw):
            cfg = (kw["Q"], kw.get("num_stages", 3))
            self.tried.append(cfg)
            if cfg[0] > self.max_q or cfg[1] > self.max_stages:
                raise SC.OutOfResources(300_000, 232_448, "shared memory")
            return self.kernel[grid](*args, **kw)

        return call


def test_kernels_shrink_until_they_fit(monkeypatch):
    monkeypatch.setattr(SC, "_FITTED", {})
    fwd = _SmallDevice(SSD._ssd_fwd, max_q=32, max_stages=3)
    bwd = _SmallDevice(SSD._ssd_bwd, max_q=16, max_stages=1)
    monkeypatch.setattr(SSD, "_ssd_fwd", fwd)
    monkeypatch.setattr(SSD, "_ssd_bwd", bwd)
    rng = np.random.default_rng(7)
    check(*inputs(rng, L=70, chunk=256), rng)
    assert fwd.tried[:5] == [(128, 3), (128, 1), (64, 3), (64, 1), (32, 3)]
    assert bwd.tried[-1] == (16, 1)
    chosen = sorted(cfg for cfg in SC._FITTED.values())
    assert (32, 3) in chosen and (16, 1) in chosen and (16, 3) in chosen  # bwd; fwd; fwd recompute
    # the choice is remembered: a second call goes straight to it
    fwd.tried.clear()
    bwd.tried.clear()
    check(*inputs(rng, L=70, chunk=256), rng)
    assert fwd.tried[0] == (32, 3) and bwd.tried == [(16, 1)]


def test_nothing_fits_runs_the_default_composition(monkeypatch):
    monkeypatch.setattr(SC, "_FITTED", {})
    monkeypatch.setattr(SSD, "_ssd_fwd", _SmallDevice(SSD._ssd_fwd, max_q=0, max_stages=0))
    monkeypatch.setattr(SSD, "_ssd_bwd", _SmallDevice(SSD._ssd_bwd, max_q=0, max_stages=0))
    rng = np.random.default_rng(8)
    check(*inputs(rng, L=40, chunk=256), rng)
