"""The SSD and Mamba-3 Triton kernels against mamba_core's float64 references.

Runs on the CPU through the Triton interpreter (TRITON_INTERPRET=1 is set before triton is
imported), at tiny shapes. Forward, VJP and step of ssd_scan and mamba3_scan, float32 inputs,
relative max error within the float32 conformance tolerance (2e-4; the interpreter computes
tl.dot in IEEE float32 -- on a GPU with MAMBA_TRITON_TF32=1 expect ~1e-3). Covers L not divisible
by the chunk, a chunk longer than L, seq_idx, initial states, ngroups > 1, D (H) and (H, P), z,
dt_bias + softplus, dt_limit, strong decay, MIMO R = 2 and 4 (and R = 3), initial k / v; plus
bf16 inputs (4e-2), the float64 fallback and non-contiguous inputs.
"""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("triton", reason="triton is not installed")

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

from mamba_core.ops import REGISTRY  # noqa: E402

from mamba_backend_torch_triton.kernels import mamba3 as M3  # noqa: E402
from mamba_backend_torch_triton.kernels import ssd as SSD  # noqa: E402

TOL = {"float32": 2e-4, "bfloat16": 4e-2}
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def rel(got, want):
    got = got.detach().double().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got))
    scale = np.abs(want).max()
    return float(np.abs(got - want).max() / (scale if scale > 0 else 1.0))


def to_t(a, dtype=torch.float32):
    if isinstance(a, np.ndarray):
        t = torch.from_numpy(a)
        return (t.to(dtype) if a.dtype == np.float64 else t).to(DEV)
    return a


def tt(d, dtype=torch.float32):
    return {k: to_t(v, dtype) for k, v in d.items()}


# ---- SSD -----------------------------------------------------------------------------------
SSD_CASES = {
    "L=37,Q=8,G=2,all": dict(L=37, H=4, P=3, G=2, N=4, Q=8),
    "seq_idx,D(H,P),h0": dict(L=29, H=4, P=2, G=2, N=3, Q=8, D="HP", seq=3),
    "plain,Q=7": dict(L=20, H=2, P=3, G=1, N=5, Q=7, z=False, D=None, bias=False, sp=False, h0=False),
    "Q>L,L=1": dict(L=1, H=2, P=3, G=1, N=3, Q=64),
    "dt_limit": dict(L=25, H=2, P=3, G=1, N=3, Q=8, lim=(0.05, 0.6)),
    "strong-decay,L=160": dict(L=160, H=2, P=2, G=1, N=3, Q=16, strong=True),
}


def ssd_inputs(rng, Bs=2, L=37, H=4, P=3, G=2, N=4, Q=8, z=True, D="H", bias=True, sp=True, h0=True,
               seq=0, lim=(0.0, float("inf")), strong=False):
    args = dict(x=rng.standard_normal((Bs, L, H, P)), B=rng.standard_normal((Bs, L, G, N)),
                C=rng.standard_normal((Bs, L, G, N)))
    if strong:
        args["A"] = -rng.uniform(2.0, 8.0, H)
        args["dt"] = rng.uniform(0.5, 2.0, (Bs, L, H))
    else:
        args["A"] = -np.exp(rng.uniform(-1.0, 1.5, H))
        args["dt"] = rng.standard_normal((Bs, L, H)) if sp else rng.uniform(0.01, 0.8, (Bs, L, H))
    kw = dict(chunk_size=Q, dt_softplus=sp, dt_limit=lim)
    if D == "H":
        kw["D"] = rng.standard_normal(H)
    elif D == "HP":
        kw["D"] = rng.standard_normal((H, P))
    if z:
        kw["z"] = rng.standard_normal((Bs, L, H, P))
    if bias:
        kw["dt_bias"] = 0.5 * rng.standard_normal(H) if sp else np.abs(0.5 * rng.standard_normal(H))
    if h0:
        kw["initial_state"] = 2.0 * rng.standard_normal((Bs, H, P, N))
    if seq:
        s = np.zeros((Bs, L), np.int64)
        for b in range(Bs):
            for cut in np.sort(rng.choice(np.arange(1, L), size=seq - 1, replace=False)):
                s[b, cut:] += 1
        kw["seq_idx"] = s + 1
    return args, kw


@pytest.mark.parametrize("name", list(SSD_CASES))
def test_ssd_scan_forward_and_vjp(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    args, kw = ssd_inputs(rng, **SSD_CASES[name])
    y_ref, s_ref = REGISTRY["ssd_scan"].reference(**args, **kw)
    y, s = SSD.ssd_scan(**tt(args), **tt(kw))
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert rel(y, y_ref) < TOL["float32"] and rel(s, s_ref) < TOL["float32"]

    cot = (rng.standard_normal(y_ref.shape), rng.standard_normal(s_ref.shape))
    g_ref = REGISTRY["ssd_scan_vjp"].reference(cot, **args, **kw)
    g = SSD.ssd_scan_vjp(tuple(to_t(c) for c in cot), **tt(args), **tt(kw))
    assert list(g) == list(g_ref)
    for k in g_ref:
        assert rel(g[k], g_ref[k]) < TOL["float32"], k


def test_ssd_scan_vjp_partial_cotangents():
    rng = np.random.default_rng(3)
    args, kw = ssd_inputs(rng, L=19, H=2, P=2, G=1, N=3, Q=8)
    y_ref, s_ref = REGISTRY["ssd_scan"].reference(**args, **kw)
    for cot in ((None, rng.standard_normal(s_ref.shape)), (rng.standard_normal(y_ref.shape), None)):
        g_ref = REGISTRY["ssd_scan_vjp"].reference(cot, **args, **kw)
        g = SSD.ssd_scan_vjp(tuple(None if c is None else to_t(c) for c in cot), **tt(args), **tt(kw))
        for k in g_ref:
            assert rel(g[k], g_ref[k]) < TOL["float32"], k


@pytest.mark.parametrize("D,z,lim", [("H", True, (0.0, float("inf"))), ("HP", False, (0.05, 0.6))])
def test_ssd_step(D, z, lim):
    rng = np.random.default_rng(5)
    Bs, H, P, G, N = 2, 4, 3, 2, 5
    args = dict(x=rng.standard_normal((Bs, H, P)), dt=rng.standard_normal((Bs, H)),
                A=-np.exp(rng.uniform(-1, 1, H)), B=rng.standard_normal((Bs, G, N)),
                C=rng.standard_normal((Bs, G, N)), state=rng.standard_normal((Bs, H, P, N)))
    kw = dict(D=rng.standard_normal(H if D == "H" else (H, P)), dt_bias=rng.standard_normal(H),
              dt_softplus=True, dt_limit=lim)
    if z:
        kw["z"] = rng.standard_normal((Bs, H, P))
    ref = REGISTRY["ssd_step"].reference(**args, **kw)
    got = SSD.ssd_step(**tt(args), **tt(kw))
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL["float32"]


# ---- Mamba-3 -------------------------------------------------------------------------------
M3_CASES = {
    "SISO,L=37,Q=8": dict(L=37, H=3, P=3, N=4, R=1, Q=8),
    "MIMO R=2,L=37": dict(L=37, H=2, P=3, N=4, R=2, Q=8),
    "MIMO R=4,L=23,Q=4,no D": dict(L=23, H=2, P=2, N=4, R=4, Q=4, D=False),
    "SISO bare,Q=7": dict(L=20, H=2, P=3, N=5, R=1, Q=7, D=False, h0=False, k0=False, v0=False),
    "MIMO R=2,k0/v0 only,Q>L": dict(L=13, H=2, P=2, N=4, R=2, Q=64, D=False, h0=False),
    "MIMO R=3,L=1": dict(L=1, H=2, P=2, N=4, R=3, Q=8),
    "strong decay,R=2,L=120": dict(L=120, H=2, P=2, N=3, R=2, Q=16, strong=True),
}


def m3_inputs(rng, Bs=2, L=37, H=2, P=3, N=4, R=1, Q=8, D=True, h0=True, k0=True, v0=True, strong=False):
    args = dict(x=rng.standard_normal((Bs, L, H, P)), B=rng.standard_normal((Bs, L, R, H, N)),
                C=rng.standard_normal((Bs, L, R, H, N)))
    if strong:
        args["dt"] = rng.uniform(0.5, 2.0, (Bs, L, H))
        args["A"] = -rng.uniform(2.0, 5.0, (Bs, L, H))
    else:
        args["dt"] = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), (Bs, L, H)))
        args["A"] = -np.exp(rng.uniform(-2.0, 1.5, (Bs, L, H)))
    trap = 1.0 / (1.0 + np.exp(-2.0 * rng.standard_normal((Bs, L, H))))
    pick = rng.integers(0, 3, trap.shape)
    args["trap"] = np.where(pick == 0, 0.0, np.where(pick == 1, 1.0, trap))
    kw = dict(chunk_size=Q)
    if R > 1:
        kw["mimo_x"] = 1.0 / R + 0.5 * rng.standard_normal((H, R, P))
    if D:
        kw["D"] = 1.0 + 0.5 * rng.standard_normal(H)
    if h0:
        kw["initial_state"] = rng.standard_normal((Bs, H, P, N))
    if k0:
        kw["initial_k"] = rng.standard_normal((Bs, R, H, N))
    if v0:
        kw["initial_v"] = rng.standard_normal((Bs, H, P))
    return args, kw


@pytest.mark.parametrize("name", list(M3_CASES))
def test_mamba3_scan_forward_and_vjp(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    args, kw = m3_inputs(rng, **M3_CASES[name])
    ref = REGISTRY["mamba3_scan"].reference(**args, **kw)
    got = M3.mamba3_scan(**tt(args), **tt(kw))
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL["float32"]
    cot = tuple(rng.standard_normal(r.shape) for r in ref)
    g_ref = REGISTRY["mamba3_scan_vjp"].reference(cot, **args, **kw)
    g = M3.mamba3_scan_vjp(tuple(to_t(c) for c in cot), **tt(args), **tt(kw))
    assert list(g) == list(g_ref)
    for k in g_ref:
        assert rel(g[k], g_ref[k]) < TOL["float32"], k


@pytest.mark.parametrize("conf", [dict(chunk=None, num_warps=8, stages=None), dict(chunk=16, num_warps=4, stages=2),
                                  dict(chunk=32, num_warps=8, stages=1),
                                  dict(chunk=16, num_warps=4, stages=1, recompute_bp=2),
                                  dict(chunk=16, num_warps=4, stages=1, state_stride=4),
                                  dict(chunk=16, num_warps=4, stages=1, state_stride=3, recompute_bp=2)],
                         ids=["call's chunk", "16", "32", "16, state recompute in P blocks of 2",
                              "16, every 4th state kept", "16, every 3rd state kept, P blocks of 2"])
def test_mamba3_scan_vjp_any_backward_launch(monkeypatch, conf):
    """The backward runs at its own chunk and launch (CONFIG["bwd"]; float32: "bwd_ieee"): the
    gradients do not depend on them (the call's chunk is 64 here, so every cap changes the layout; P = 5 in blocks of 2
    splits the state recompute over 3 programs a head; with a state stride K the backward
    recomputes K - 1 of every K entering states itself: L = 70 at chunk 16 is 5 chunks, so the
    first block in the reverse walk is partial)."""
    monkeypatch.setitem(M3.CONFIG, M3.conf_key("bwd", torch.float32), dict(conf, states16=True))
    rng = np.random.default_rng(11)
    args, kw = m3_inputs(rng, L=70, H=2, P=5, N=4, R=2, Q=64)
    ref = REGISTRY["mamba3_scan"].reference(**args, **kw)
    cot = tuple(rng.standard_normal(r.shape) for r in ref)
    g_ref = REGISTRY["mamba3_scan_vjp"].reference(cot, **args, **kw)
    g = M3.mamba3_scan_vjp(tuple(to_t(c) for c in cot), **tt(args), **tt(kw))
    for k in g_ref:
        assert rel(g[k], g_ref[k]) < TOL["float32"], k


@pytest.mark.parametrize("conf", [dict(chunk=32, num_warps=8, stages=2), dict(chunk=16, num_warps=4, stages=None),
                                  dict(chunk=None, num_warps=None, stages=None, bp=2)],
                         ids=["32", "16", "P blocks of 2"])
def test_mamba3_scan_forward_any_launch(monkeypatch, conf):
    """The forward's own chunk and launch (CONFIG["fwd"]; float32: "fwd_ieee"; "bp": state rows a
    program, here P = 5 over 3 programs a head) change only the rounding."""
    monkeypatch.setitem(M3.CONFIG, M3.conf_key("fwd", torch.float32), conf)
    rng = np.random.default_rng(12)
    args, kw = m3_inputs(rng, L=70, H=2, P=5, N=4, R=2, Q=64)
    ref = REGISTRY["mamba3_scan"].reference(**args, **kw)
    got = M3.mamba3_scan(**tt(args), **tt(kw))
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL["float32"]


def test_mamba3_launch_entry_by_dtype(monkeypatch):
    """float32 with IEEE dots (the default) launches under the "_ieee" entries, whose row cap
    keeps the FMA dots' tiles in registers; 16-bit inputs and the opt-in float32 dots under the
    plain ones."""
    monkeypatch.delenv("MAMBA_TRITON_FP32_DOT", raising=False)
    monkeypatch.delenv("MAMBA_TRITON_TF32", raising=False)
    assert M3.conf_key("fwd", torch.float32) == "fwd_ieee"
    assert M3.conf_key("bwd", torch.float32) == "bwd_ieee"
    assert M3.conf_key("bwd", torch.bfloat16) == "bwd"
    monkeypatch.setenv("MAMBA_TRITON_FP32_DOT", "tf32x3")
    assert M3.conf_key("fwd", torch.float32) == "fwd"


@pytest.mark.parametrize("conf,chunk,R,want", [
    (dict(chunk=None, rows=None), 64, 4, 64), (dict(chunk=32, rows=None), 64, 1, 32),
    (dict(chunk=None, rows=16), 64, 1, 16), (dict(chunk=None, rows=16), 64, 4, 4),
    (dict(chunk=8, rows=16), 64, 1, 8), (dict(chunk=None, rows=16), 64, 32, 1)])
def test_mamba3_chunk_cap(conf, chunk, R, want):
    assert M3._chunk_cap(conf, chunk, R) == want


@pytest.mark.parametrize("R", [1, 4])
def test_mamba3_rows_cap_forward_and_backward(monkeypatch, R):
    """A "rows" cap of 16 runs R = 4 at 4 tokens a chunk, R = 1 at 16 (the layout's floor):
    the same results up to rounding."""
    monkeypatch.setitem(M3.CONFIG, M3.conf_key("fwd", torch.float32),
                        dict(chunk=None, num_warps=None, stages=None, bp=None, rows=16))
    monkeypatch.setitem(M3.CONFIG, M3.conf_key("bwd", torch.float32),
                        dict(chunk=None, num_warps=4, stages=1, states16=True, recompute_bp=None,
                             state_stride=1, rows=16))
    rng = np.random.default_rng(13)
    args, kw = m3_inputs(rng, L=37, H=2, P=3, N=4, R=R, Q=64)
    ref = REGISTRY["mamba3_scan"].reference(**args, **kw)
    got = M3.mamba3_scan(**tt(args), **tt(kw))
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL["float32"]
    cot = tuple(rng.standard_normal(r.shape) for r in ref)
    g_ref = REGISTRY["mamba3_scan_vjp"].reference(cot, **args, **kw)
    g = M3.mamba3_scan_vjp(tuple(to_t(c) for c in cot), **tt(args), **tt(kw))
    for k in g_ref:
        assert rel(g[k], g_ref[k]) < TOL["float32"], k


def test_mamba3_scan_vjp_state_cotangent_only():
    rng = np.random.default_rng(7)
    args, kw = m3_inputs(rng, L=21, H=2, P=2, N=3, R=2, Q=8)
    ref = REGISTRY["mamba3_scan"].reference(**args, **kw)
    cot = (None, rng.standard_normal(ref[1].shape), None, None)
    g_ref = REGISTRY["mamba3_scan_vjp"].reference(cot, **args, **kw)
    g = M3.mamba3_scan_vjp(tuple(None if c is None else to_t(c) for c in cot), **tt(args), **tt(kw))
    for k in g_ref:
        assert rel(g[k], g_ref[k]) < TOL["float32"], k


@pytest.mark.parametrize("R", [1, 2])
def test_mamba3_step(R):
    rng = np.random.default_rng(11 + R)
    Bs, H, P, N = 2, 3, 3, 5
    args = dict(x=rng.standard_normal((Bs, H, P)), dt=rng.uniform(0.01, 0.5, (Bs, H)),
                A=-rng.uniform(0.1, 3.0, (Bs, H)), trap=rng.uniform(0, 1, (Bs, H)),
                B=rng.standard_normal((Bs, R, H, N)), C=rng.standard_normal((Bs, R, H, N)),
                state=rng.standard_normal((Bs, H, P, N)), k_state=rng.standard_normal((Bs, R, H, N)),
                v_state=rng.standard_normal((Bs, H, P)), D=rng.standard_normal(H))
    if R > 1:
        args["mimo_x"] = rng.standard_normal((H, R, P))
    ref = REGISTRY["mamba3_step"].reference(**args)
    got = M3.mamba3_step(**tt(args))
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL["float32"]


# ---- dtypes, fallback, layout --------------------------------------------------------------
def test_bf16_inputs():
    rng = np.random.default_rng(13)
    args, kw = ssd_inputs(rng, L=24, H=2, P=4, G=1, N=4, Q=8)
    # the truth sees the bf16-rounded inputs (input rounding is not the kernel's error)
    targs = tt(args, torch.bfloat16)
    tkw = tt(kw, torch.bfloat16)
    r64 = {k: (v.double().cpu().numpy() if isinstance(v, torch.Tensor) and v.is_floating_point() else
               (v.cpu().numpy() if isinstance(v, torch.Tensor) else v)) for k, v in {**targs, **tkw}.items()}
    y_ref, s_ref = REGISTRY["ssd_scan"].reference(**r64)
    y, s = SSD.ssd_scan(**targs, **tkw)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel(y, y_ref) < TOL["bfloat16"] and rel(s, s_ref) < TOL["bfloat16"]

    args, kw = m3_inputs(rng, L=24, H=2, P=4, N=4, R=2, Q=8)
    targs, tkw = tt(args, torch.bfloat16), tt(kw, torch.bfloat16)
    r64 = {k: v.double().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in {**targs, **tkw}.items()}
    ref = REGISTRY["mamba3_scan"].reference(**r64)
    got = M3.mamba3_scan(**targs, **tkw)
    assert got[0].dtype == torch.bfloat16
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL["bfloat16"]


def test_bf16_mimo_under_the_16bit_launches():
    """bf16 MIMO (R = 4) at the call's chunk 64 runs under CONFIG["fwd"] / ["bwd"] with their row
    caps (32 rows forward: Qk = 8; 16 backward: Qk = 4): forward and gradients against the
    float64 truth on the rounded inputs."""
    assert M3.conf_key("fwd", torch.bfloat16) == "fwd"
    assert M3._chunk_cap(M3.CONFIG["fwd"], 64, 4) == 8
    assert M3._chunk_cap(M3.CONFIG["bwd"], 64, 4) == 4
    assert M3._chunk_cap(M3.CONFIG["bwd"], 64, 1) == 16  # SISO keeps its timed chunk
    rng = np.random.default_rng(19)
    args, kw = m3_inputs(rng, L=37, H=2, P=4, N=4, R=4, Q=64)
    targs, tkw = tt(args, torch.bfloat16), tt(kw, torch.bfloat16)
    r64 = {k: v.double().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in {**targs, **tkw}.items()}
    ref = REGISTRY["mamba3_scan"].reference(**r64)
    got = M3.mamba3_scan(**targs, **tkw)
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL["bfloat16"]
    cot = tuple(to_t(rng.standard_normal(r.shape), torch.bfloat16) for r in ref)
    g_ref = REGISTRY["mamba3_scan_vjp"].reference(tuple(c.double().cpu().numpy() for c in cot), **r64)
    g = M3.mamba3_scan_vjp(cot, **targs, **tkw)
    for k in g_ref:
        assert rel(g[k], g_ref[k]) < TOL["bfloat16"], k


def test_float64_falls_back_to_default_composition():
    rng = np.random.default_rng(17)
    args, kw = ssd_inputs(rng, L=10, H=2, P=2, G=1, N=3, Q=4)
    y, s = SSD.ssd_scan(**tt(args, torch.float64), **tt(kw, torch.float64))
    y_ref, s_ref = REGISTRY["ssd_scan"].reference(**args, **kw)
    assert y.dtype == torch.float64 and s.dtype == torch.float64
    assert rel(y, y_ref) < 1e-9 and rel(s, s_ref) < 1e-9
    assert "float64" in SSD.FALLBACKS and "float64" in M3.FALLBACKS


def test_non_contiguous_inputs():
    rng = np.random.default_rng(19)
    args, kw = m3_inputs(rng, L=12, H=2, P=3, N=4, R=1, Q=8)
    ref = REGISTRY["mamba3_scan"].reference(**args, **kw)
    targs = tt(args)
    # the same values seen through transposed storage
    targs["x"] = targs["x"].transpose(1, 2).contiguous().transpose(1, 2)
    targs["B"] = targs["B"].permute(0, 1, 2, 4, 3).contiguous().permute(0, 1, 2, 4, 3)
    assert not targs["x"].is_contiguous()
    got = M3.mamba3_scan(**targs, **tt(kw))
    for g, r in zip(got, ref):
        assert rel(g, r) < TOL["float32"]


def test_backend_table_has_the_kernels():
    from mamba_backend_torch_triton.backend import TorchTritonBackend

    table = TorchTritonBackend().kernels
    for op in ("ssd_scan", "ssd_scan_vjp", "ssd_step", "mamba3_scan", "mamba3_scan_vjp", "mamba3_step"):
        assert op in table
        # the kernel has the op's public signature
        import inspect

        ref = inspect.signature(REGISTRY[op].reference)
        assert list(inspect.signature(table[op]).parameters) == list(ref.parameters)
