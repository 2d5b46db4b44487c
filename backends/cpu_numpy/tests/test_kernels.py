"""cpu_numpy kernels against the float64 references, batch invariance of linear, and per-token
allocations of the decode kernels (tracemalloc)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mamba_core.ops import conv1d, selective_scan as ss, ssd
from mamba_backend_cpu_numpy import conv1d as kconv, linear as klin, selective_scan as kss, ssd as kssd

TOL = {np.float64: 1e-9, np.float32: 2e-4}


def rel(got, want):
    return np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-300)


def _ssd_args(rng, B=2, L=70, H=4, P=3, G=2, N=5, dtype=np.float64):
    a = dict(x=rng.standard_normal((B, L, H, P)), dt=rng.standard_normal((B, L, H)),
             A=-rng.uniform(0.5, 2, H), B=rng.standard_normal((B, L, G, N)),
             C=rng.standard_normal((B, L, G, N)), D=rng.standard_normal(H),
             z=rng.standard_normal((B, L, H, P)), dt_bias=rng.standard_normal(H),
             initial_state=rng.standard_normal((B, H, P, N)))
    a = {k: v.astype(dtype) for k, v in a.items()}
    a["seq_idx"] = np.repeat(np.arange(3), [20, 30, L - 50])[None].repeat(B, 0)
    return a


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ssd_forward_and_vjp_match_reference(dtype):
    rng = np.random.default_rng(0)
    a = _ssd_args(rng, dtype=dtype)
    a64 = {k: np.asarray(v, np.float64) if v.dtype.kind == "f" else v for k, v in a.items()}
    want = ssd.ssd_scan_ref(**a64, dt_softplus=True)
    got = kssd.ssd_scan(**a, dt_softplus=True)
    for g, w in zip(got, want):
        assert rel(g, w) < TOL[dtype]
    cot = (rng.standard_normal(want[0].shape), rng.standard_normal(want[1].shape))
    gw = ssd.ssd_scan_vjp_ref(cot, **a64, dt_softplus=True)
    gg = kssd.ssd_scan_vjp(tuple(c.astype(dtype) for c in cot), **a, dt_softplus=True)
    assert gg.keys() == gw.keys()
    for k in gw:
        assert rel(gg[k], gw[k]) < TOL[dtype], k


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_selective_scan_forward_and_vjp_match_reference(dtype):
    rng = np.random.default_rng(1)
    B, L, E, G, N = 2, 70, 6, 2, 4
    a = dict(u=rng.standard_normal((B, L, E)), delta=rng.standard_normal((B, L, E)),
             A=-rng.uniform(0.5, 2, (E, N)), B=rng.standard_normal((B, L, G, N)),
             C=rng.standard_normal((B, L, G, N)), D=rng.standard_normal(E),
             z=rng.standard_normal((B, L, E)), delta_bias=rng.standard_normal(E),
             initial_state=rng.standard_normal((B, E, N)))
    a = {k: v.astype(dtype) for k, v in a.items()}
    a64 = {k: v.astype(np.float64) for k, v in a.items()}
    for g, w in zip(kss.selective_scan(**a, delta_softplus=True), ss.selective_scan_ref(**a64, delta_softplus=True)):
        assert rel(g, w) < TOL[dtype]
    cot = (rng.standard_normal((B, L, E)), rng.standard_normal((B, E, N)))
    gw = ss.selective_scan_vjp_ref(cot, **a64, delta_softplus=True)
    gg = kss.selective_scan_vjp(tuple(c.astype(dtype) for c in cot), **a, delta_softplus=True)
    for k in gw:
        assert rel(gg[k], gw[k]) < TOL[dtype], k


def test_conv1d_vjp_matches_reference():
    rng = np.random.default_rng(2)
    x, w, b, s = (rng.standard_normal(sh) for sh in ((2, 9, 5), (5, 4), (5,), (2, 5, 4)))
    cot = (rng.standard_normal((2, 9, 5)), rng.standard_normal((2, 5, 4)))
    gw = conv1d.causal_conv1d_vjp_ref(cot, x, w, b, s, "silu")
    gg = kconv.causal_conv1d_vjp(cot, x, w, b, s, "silu")
    for k in gw:
        assert rel(gg[k], gw[k]) < 1e-12, k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_rows_are_batch_invariant(dtype):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((70, 33)).astype(dtype)
    X = rng.standard_normal((23, 33)).astype(dtype)
    full = klin.linear(X, W)
    for i in range(23):  # each row alone (M = 1) equals its row in the batch, bit for bit
        assert np.array_equal(klin.linear(X[i:i + 1], W)[0], full[i])
    assert np.array_equal(klin.linear(np.roll(X, 5, 0), W), np.roll(full, 5, 0))
    assert rel(full, X.astype(np.float64) @ W.T.astype(np.float64)) < TOL[dtype]


def test_decode_kernels_allocate_only_their_outputs():
    """After warm-up, a step kernel allocates its outputs (the contract returns fresh y and
    state: the caller's cache is not modified) and no temporaries of state size."""
    rng = np.random.default_rng(4)
    B, H, P, N = 1, 8, 16, 32
    x, z = (rng.standard_normal((B, H, P)).astype(np.float32) for _ in range(2))
    dt = rng.standard_normal((B, H)).astype(np.float32)
    A = -np.ones(H, np.float32)
    Bm, Cm = (rng.standard_normal((B, 1, N)).astype(np.float32) for _ in range(2))
    S = rng.standard_normal((B, H, P, N)).astype(np.float32)
    D = np.ones(H, np.float32)
    bias = np.zeros(H, np.float32)
    for _ in range(3):
        kssd.ssd_step(x, dt, A, Bm, Cm, S, D=D, z=z, dt_bias=bias, dt_softplus=True)
    out_bytes = x.nbytes + S.nbytes
    tracemalloc.start()
    for _ in range(10):
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]  # the previous state is still alive here
        y, S = kssd.ssd_step(x, dt, A, Bm, Cm, S, D=D, z=z, dt_bias=bias, dt_softplus=True)
        peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    # outputs + small per-call arrays (dt, D broadcast: O(H P)), never a second state
    assert peak < out_bytes + S.nbytes // 2, (peak, out_bytes)
