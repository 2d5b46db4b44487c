"""cpu_numpy kernels against the float64 references, batch invariance of linear, and per-token
allocations of the decode kernels (tracemalloc)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mamba_core.ops import conv1d, mamba3 as m3, selective_scan as ss, ssd
from mamba_backend_cpu_numpy import conv1d as kconv, linear as klin, mamba3 as km3
from mamba_backend_cpu_numpy import selective_scan as kss, ssd as kssd

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


def _ss_args(rng, B=2, L=70, E=6, G=2, N=4, dtype=np.float64):
    a = dict(u=rng.standard_normal((B, L, E)), delta=rng.standard_normal((B, L, E)),
             A=-rng.uniform(0.5, 2, (E, N)), B=rng.standard_normal((B, L, G, N)),
             C=rng.standard_normal((B, L, G, N)), D=rng.standard_normal(E),
             z=rng.standard_normal((B, L, E)), delta_bias=rng.standard_normal(E),
             initial_state=rng.standard_normal((B, E, N)))
    return {k: v.astype(dtype) for k, v in a.items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_selective_scan_forward_and_vjp_match_reference(dtype):
    rng = np.random.default_rng(1)
    B, L, E, N = 2, 70, 6, 4
    a = _ss_args(rng, B, L, E, 2, N, dtype)
    a64 = {k: v.astype(np.float64) for k, v in a.items()}
    for g, w in zip(kss.selective_scan(**a, delta_softplus=True), ss.selective_scan_ref(**a64, delta_softplus=True)):
        assert rel(g, w) < TOL[dtype]
    cot = (rng.standard_normal((B, L, E)), rng.standard_normal((B, E, N)))
    gw = ss.selective_scan_vjp_ref(cot, **a64, delta_softplus=True)
    gg = kss.selective_scan_vjp(tuple(c.astype(dtype) for c in cot), **a, delta_softplus=True)
    for k in gw:
        assert rel(gg[k], gw[k]) < TOL[dtype], k


def _mamba3_args(rng, R, B=2, L=150, H=3, P=4, N=6, dtype=np.float64):
    """L > 2 CKPT blocks (a partial last one), cached k/v, MIMO when R > 1."""
    a = dict(x=rng.standard_normal((B, L, H, P)), dt=rng.uniform(0.01, 0.5, (B, L, H)),
             A=-rng.uniform(0.5, 2, (B, L, H)), trap=rng.uniform(0, 1, (B, L, H)),
             B=rng.standard_normal((B, L, R, H, N)), C=rng.standard_normal((B, L, R, H, N)),
             D=rng.standard_normal(H), initial_state=rng.standard_normal((B, H, P, N)),
             initial_k=rng.standard_normal((B, R, H, N)), initial_v=rng.standard_normal((B, H, P)))
    if R > 1:
        a["mimo_x"] = rng.standard_normal((H, R, P))
    return {k: v.astype(dtype) for k, v in a.items()}


@pytest.mark.parametrize("R", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mamba3_forward_and_vjp_match_reference(dtype, R):
    rng = np.random.default_rng(5)
    a = _mamba3_args(rng, R, dtype=dtype)
    a64 = {k: v.astype(np.float64) for k, v in a.items()}
    want = m3.mamba3_scan_ref(**a64)
    for g, w in zip(km3.mamba3_scan(**a), want):
        assert rel(g, w) < TOL[dtype]
    cot = tuple(rng.standard_normal(w.shape) for w in want)
    gw = m3.mamba3_scan_vjp_ref(cot, **a64)
    gg = km3.mamba3_scan_vjp(tuple(c.astype(dtype) for c in cot), **a)
    assert list(gg) == list(gw)
    for k in gw:
        assert gg[k].dtype == a[k].dtype and gg[k].shape == a[k].shape, k
        assert rel(gg[k], gw[k]) < TOL[dtype], k
    # no cache, no D, partial cotangents (None entries are zeros)
    for key in ("initial_state", "initial_k", "initial_v", "D"):
        a.pop(key), a64.pop(key)
    cot = (cot[0], None, None, cot[3])
    gw = m3.mamba3_scan_vjp_ref(cot, **a64)
    gg = km3.mamba3_scan_vjp(tuple(None if c is None else c.astype(dtype) for c in cot), **a)
    assert list(gg) == list(gw)
    for k in gw:
        assert rel(gg[k], gw[k]) < TOL[dtype], k


def _scan_cases():
    """(op, arguments, make the cotangent from the outputs) of the three scans, over more than
    two CKPT blocks with a partial last one, every optional input given."""
    rng = np.random.default_rng(7)
    ss_args = dict(_ss_args(rng, L=150), delta_softplus=True)
    ssd_args = dict(_ssd_args(rng, L=150), dt_softplus=True)
    ssd_args["seq_idx"] = np.repeat(np.arange(3), [20, 70, 60])[None].repeat(2, 0)
    full = lambda o: tuple(np.ones_like(v) for v in o)  # noqa: E731
    return [("selective_scan", ss_args, full), ("ssd_scan", ssd_args, full),
            ("mamba3_scan", _mamba3_args(rng, 1), full), ("mamba3_scan", _mamba3_args(rng, 3), full),
            ("mamba3_scan", _mamba3_args(rng, 1, L=1), full)]


@pytest.mark.parametrize("case", range(5), ids=["selective_scan", "ssd_scan", "mamba3_scan",
                                                "mamba3_scan MIMO", "mamba3_scan L=1"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_saving_forms_are_the_plain_op_and_vjp_bit_for_bit(case, dtype):
    """The saving forms keep the block checkpoints the VJP's first pass recomputes (the same
    values: the forward forms them with the same roundings), so outputs and gradients are the
    plain op's and VJP's bit for bit, and the checkpoints are 1 / CKPT of a per-token state."""
    from mamba_core.registry import get_backend

    be = get_backend("cpu_numpy")
    op, args, make_cot = _scan_cases()[case]
    args = {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
            for k, v in args.items()}
    assert be.ops.saves(op)
    plain = getattr(be.ops, op)(**args)
    out, ck = be.ops.forward_saving(op, **args)
    assert all(np.array_equal(a, b) for a, b in zip(out, plain))
    L = next(iter(args.values())).shape[1]
    assert ck.shape[2] == -(-L // 64) and ck.dtype == dtype
    cot = make_cot(plain)
    want = getattr(be.ops, f"{op}_vjp")(cot, **args)
    got = be.ops.vjp_saved(op, ck, cot, **args)
    assert list(got) == list(want)
    for k in want:
        assert np.array_equal(got[k], want[k]), k


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


FUSED = {"mamba1": {"layer": "Mamba1"}, "mamba2": {"layer": "Mamba2"}, "mamba3": {"layer": "Mamba3"},
         "mamba3_mimo": {"layer": "Mamba3", "is_mimo": True, "mimo_rank": 2}}


@pytest.mark.parametrize("family", sorted(FUSED))
def test_fused_decode_step_allocates_only_its_outputs(family):
    """The fused mixer step (decode.py) after warm-up: the traced allocations per token are the
    in_proj output, y, out_proj's output and the new cache (the contract returns a fresh cache),
    plus the kernel's O(channels) scratch; never a second state. The caller's cache is left
    untouched and shares no memory with the new one."""
    from mamba_core.models.config import LMConfig
    from mamba_core.registry import get_backend

    be = get_backend("cpu_numpy")
    cfg = LMConfig(d_model=64, n_layer=1, vocab_size=32, ssm_cfg=dict(FUSED[family]))
    mcfg = cfg.mixer_config
    rng = np.random.default_rng(6)
    params = {k: v for k, v in cfg.mixer.init_params(mcfg, rng).items()}
    cache = cfg.mixer.init_cache(be, mcfg, 1)
    u = rng.standard_normal((1, 64)).astype(np.float32)
    step = be.mixer_steps[cfg.mixer.LAYER.lower()]
    for _ in range(3):
        _, cache = step(be, params, mcfg, u, cache)
    frozen = {k: v.copy() for k, v in cache.items()}
    cache_bytes = sum(v.nbytes for v in cache.values())
    proj_bytes = 4 * (params["in_proj.weight"].shape[0] + 2 * mcfg.d_inner + 64)
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    out, new = step(be, params, mcfg, u, cache)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    for k in cache:
        assert np.array_equal(cache[k], frozen[k]), k
        assert not np.shares_memory(new[k], cache[k]), k
    scratch = 16384  # decode.scratch: Bh, Ch, cos/sin tables, conv outputs: O(R H N + X)
    assert peak < cache_bytes + proj_bytes + scratch, (peak, cache_bytes, proj_bytes)
