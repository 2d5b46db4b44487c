"""torch_triton's mamba3_rope_scan against the float64 reference, in the Triton interpreter
(TRITON_INTERPRET=1) or on a GPU, along its three paths: the scan kernel with the B/C prologue
fused in, the default (mamba3_bc's B/C kernels, then the scan) and the separate ops.

Beyond the conformance cases: several P blocks (P > 64), N not a power of two with S < N / 2,
S = 0 (nothing rotated), G = H and G < H, bf16 inputs with float32 biases, the float64 fallback,
and the fused op against the separate ops on the same inputs (both through this backend).
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

from mamba_core.ops import mamba3_fused as core  # noqa: E402

from mamba_backend_torch_triton.kernels import mamba3 as M3  # noqa: E402
from mamba_backend_torch_triton.kernels import mamba3_fused as F  # noqa: E402
from mamba_backend_torch_triton.kernels import rope as RO  # noqa: E402

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
TOL = {torch.float32: 2e-4, torch.bfloat16: 4e-2}

CASES = {
    "SISO,G=1,H=2,bias,h0/k0/v0": dict(L=19, H=2, G=1, P=3, N=8, S=2, R=1, Q=8, bias=True, init=True),
    "SISO,G=2,H=4,odd N,no bias": dict(L=13, H=4, G=2, P=2, N=7, S=2, R=1, Q=4, bias=False, init=False),
    "SISO,S=0": dict(L=9, H=2, G=2, P=2, N=4, S=0, R=1, Q=4, bias=True, init=False),
    "MIMO R=2,halves,bias": dict(L=11, H=2, G=1, P=2, N=8, S=3, R=2, Q=4, bias=True, init=True,
                                 pairing="halves"),
    "P=80 (two P blocks)": dict(L=5, H=1, G=1, P=80, N=4, S=1, R=1, Q=4, bias=True, init=True),
}


def inputs(c, dtype=torch.float32):
    rng = np.random.default_rng(zlib.crc32(repr(sorted(c.items())).encode()))
    Bz, L, H, G, P, N, S, R = 2, c["L"], c["H"], c["G"], c["P"], c["N"], c["S"], c["R"]
    a = dict(
        x=rng.standard_normal((Bz, L, H, P)), dt=np.exp(rng.uniform(np.log(1e-3), np.log(0.5), (Bz, L, H))),
        A=-np.exp(rng.uniform(-2.0, 1.5, (Bz, L, H))), trap=rng.uniform(0.0, 1.0, (Bz, L, H)),
        B=rng.standard_normal((Bz, L, R, G, N)), C=rng.standard_normal((Bz, L, R, G, N)),
        phi=rng.uniform(0.0, 2 * np.pi, (Bz, L, H, S)),
    )
    kw = dict(B_bias=0.5 * rng.standard_normal((R, H, N)) if c["bias"] else None,
              C_bias=0.5 * rng.standard_normal((R, H, N)) if c["bias"] else None,
              D=rng.standard_normal(H), mimo_x=0.5 + 0.3 * rng.standard_normal((H, R, P)) if R > 1 else None,
              chunk_size=c["Q"], pairing=c.get("pairing", "interleaved"))
    if c["init"]:
        kw.update(initial_state=rng.standard_normal((Bz, H, P, N)), initial_k=rng.standard_normal((Bz, R, H, N)),
                  initial_v=rng.standard_normal((Bz, H, P)))

    def t(v, narrow=True):
        if not isinstance(v, np.ndarray):
            return v
        return torch.from_numpy(v).to(dtype if narrow else torch.float32).to(DEV)

    wide = {"dt", "A", "trap", "phi", "B_bias", "C_bias", "D", "initial_state"}
    ta = {k: t(v, k not in wide) for k, v in a.items()}
    tk = {k: t(v, k not in wide) for k, v in kw.items()}
    # the reference sees the values the kernels see (16-bit inputs rounded first)
    ra = {k: v.double().cpu().numpy() for k, v in ta.items()}
    rk = {k: (v.double().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in tk.items()}
    return ta, tk, ra, rk


def rel(got, want):
    got = got.detach().double().cpu().numpy()
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.size == 0:  # S = 0: nothing rotated, an empty phi gradient
        return 0.0
    scale = np.abs(want).max()
    return float(np.abs(got - want).max() / (scale if scale > 0 else 1.0))


@pytest.fixture(params=["fused", "composed", "separate"])
def path(request, monkeypatch):
    """The op's three paths: the fused kernel (MAMBA_TRITON_FUSED_ROPE_SCAN=1), the default (the
    B/C kernels of mamba3_bc, then the scan) and the separate ops (MAMBA_TRITON_BC_KERNEL=0)."""
    monkeypatch.setenv("MAMBA_TRITON_FUSED_ROPE_SCAN", "1" if request.param == "fused" else "0")
    monkeypatch.setenv("MAMBA_TRITON_BC_KERNEL", "0" if request.param == "separate" else "1")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_vjp_against_reference(name, dtype, path):
    ta, tk, ra, rk = inputs(CASES[name], dtype)
    got = F.mamba3_rope_scan(*ta.values(), **tk)
    want = core.mamba3_rope_scan_ref(*ra.values(), **rk)
    for g, w, what in zip(got, want, ("y", "final_state", "final_k", "final_v")):
        assert rel(g, w) < TOL[dtype], (what, rel(g, w))
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    rng = np.random.default_rng(1)
    cot = tuple(rng.standard_normal(tuple(w.shape)) for w in want)
    tcot = tuple(torch.from_numpy(c).to(g.dtype).to(DEV) for c, g in zip(cot, got))
    gg = F.mamba3_rope_scan_vjp(tcot, *ta.values(), **tk)
    rcot = tuple(c.double().cpu().numpy() for c in tcot)
    gw = core.mamba3_rope_scan_vjp_ref(rcot, *ra.values(), **rk)
    assert set(gg) == set(gw), (sorted(gg), sorted(gw))
    for k in gw:
        assert rel(gg[k], gw[k]) < (TOL[dtype] if dtype == torch.float32 else 6e-2), (k, rel(gg[k], gw[k]))


def test_fused_equals_separate_ops(monkeypatch):
    """The fused kernel against this backend's own bias + apply_rope + mamba3_scan."""
    import array_api_compat.torch as xpt

    monkeypatch.setenv("MAMBA_TRITON_FUSED_ROPE_SCAN", "1")
    ta, tk, _, _ = inputs(CASES["SISO,G=2,H=4,odd N,no bias"])
    got = F.mamba3_rope_scan(*ta.values(), **tk)
    ph = ta["phi"][:, :, None]
    Bh = RO.apply_rope(core.heads(xpt, ta["B"], 4, tk["B_bias"]), ph, tk["pairing"])
    Ch = RO.apply_rope(core.heads(xpt, ta["C"], 4, tk["C_bias"]), ph, tk["pairing"])
    sk = {k: tk[k] for k in ("D", "mimo_x", "chunk_size") if k in tk}
    want = M3.mamba3_scan(ta["x"], ta["dt"], ta["A"], ta["trap"], Bh, Ch, **sk)
    for g, w in zip(got, want):
        assert rel(g, w.double().cpu().numpy()) < 1e-5


@pytest.mark.parametrize("switch", ["MAMBA_TRITON_FUSED_ROPE_SCAN", "MAMBA_TRITON_BC_KERNEL"])
def test_switch_is_checked(monkeypatch, switch):
    monkeypatch.setenv(switch, "yes")
    ta, tk, _, _ = inputs(CASES["SISO,S=0"])
    with pytest.raises(ValueError, match=switch):
        F.mamba3_rope_scan(*ta.values(), **tk)


def test_float64_runs_the_default_composition():
    ta, tk, ra, rk = inputs(CASES["SISO,S=0"], torch.float64)
    got = F.mamba3_rope_scan(*ta.values(), **tk)
    want = core.mamba3_rope_scan_ref(*ra.values(), **rk)
    assert got[0].dtype == torch.float64
    assert rel(got[0], want[0]) < 1e-10


# ---- the saving forms (mamba_core/ops/saving.py): mamba3_rope_scan's and mamba3_scan's --------
@pytest.fixture(params=[True, False], ids=["states", "no states"])
def save_states(request, monkeypatch):
    """CONFIG["save"]["states"]: the saving forward keeps the chunk states, or not."""
    monkeypatch.setitem(M3.CONFIG, "save", dict(M3.CONFIG["save"], states=request.param))
    return request.param


def _count_chunks(monkeypatch):
    """A list that grows by the chunk (Qk) of each launch of the scan's forward kernel."""
    calls, run = [], M3._run_fwd

    def counting(*a, **k):
        out = run(*a, **k)
        calls.append(out[3])
        return out

    monkeypatch.setattr(M3, "_run_fwd", counting)
    return calls


def _count_recomputes(monkeypatch):
    """A list that grows by one at each state-recomputing launch of the scan's forward kernel."""
    calls, run = [], M3._run_fwd

    def counting(*a, **k):
        calls.append(a[11])  # store_states
        return run(*a, **k)

    monkeypatch.setattr(M3, "_run_fwd", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["SISO,G=1,H=2,bias,h0/k0/v0", "MIMO R=2,halves,bias"])
def test_rope_scan_saving_form_matches_the_plain_op(name, dtype, path, save_states, monkeypatch):
    """forward_saving then vjp_saved give the plain op's outputs and gradients (up to the
    rounding of another chunking), keep per-head B/C and states on the default path only, and
    with states the VJP runs no state recompute."""
    from mamba_backend_torch_triton.backend import TorchTritonBackend

    be = TorchTritonBackend()
    assert be.ops.saves("mamba3_rope_scan") and be.ops.saves("mamba3_scan")
    ta, tk, _, _ = inputs(CASES[name], dtype)
    plain = F.mamba3_rope_scan(*ta.values(), **tk)
    out, res = be.ops.forward_saving("mamba3_rope_scan", *ta.values(), **tk)
    if path != "composed":
        assert res is None  # the fused and separate paths leave nothing
    else:
        Bh, Ch, scan_res = res
        assert Bh.shape == Ch.shape == ta["x"].shape[:2] + (CASES[name]["R"],) + (ta["x"].shape[2], ta["B"].shape[-1])
        assert (scan_res is not None) == save_states
        if save_states:
            assert scan_res.states.shape[2:] == (ta["x"].shape[2], ta["x"].shape[3], ta["B"].shape[-1])
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for g, w, what in zip(out, plain, ("y", "final_state", "final_k", "final_v")):
        assert rel(g, w.double().cpu().numpy()) < tol, (what, rel(g, w.double().cpu().numpy()))
    rng = np.random.default_rng(2)
    cot = tuple(torch.from_numpy(rng.standard_normal(tuple(g.shape))).to(g.dtype).to(DEV) for g in plain)
    want = F.mamba3_rope_scan_vjp(cot, *ta.values(), **tk)
    recomputes = _count_recomputes(monkeypatch)
    got = be.ops.vjp_saved("mamba3_rope_scan", res, cot, *ta.values(), **tk)
    assert set(got) == set(want)
    for k in want:
        assert rel(got[k], want[k].double().cpu().numpy()) < tol, (k, rel(got[k], want[k].double().cpu().numpy()))
    if path == "composed" and save_states:
        assert recomputes == []
    elif path != "fused":
        assert recomputes == [True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_scan_saving_states_feed_the_backward_only_at_its_launch(dtype, monkeypatch):
    """mamba3_scan's saving form keeps the states at the backward's chunk; a backward launched at
    another chunk (CONFIG changed in between) recomputes instead of reading mismatched states."""
    import array_api_compat.torch as xpt

    ta, tk, _, _ = inputs(CASES["SISO,G=2,H=4,odd N,no bias"], dtype)
    Bh = core.heads(xpt, ta["B"], 4)
    Ch = core.heads(xpt, ta["C"], 4)
    sk = {"D": tk["D"], "chunk_size": 64}  # the backward's CONFIG caps its chunk below 64
    args = (ta["x"], ta["dt"], ta["A"], ta["trap"], Bh, Ch)
    out, res = M3.mamba3_scan_saving(*args, **sk)
    plain = M3.mamba3_scan(*args, **sk)
    key = M3.conf_key("bwd", dtype)
    qk = M3._layout(M3._chunk_cap(M3.CONFIG[key], sk["chunk_size"], 1), 1)[0]
    assert isinstance(res, M3.SavedStates) and res.span == qk  # the serial backward: every chunk's
    assert res.states.shape[1] == -(-ta["x"].shape[1] // qk)
    for g, w in zip(out, plain):
        assert rel(g, w.double().cpu().numpy()) < (2e-5 if dtype == torch.float32 else 2e-2)
    cot = tuple(torch.ones_like(g) for g in plain)
    want = M3.mamba3_scan_vjp(cot, *args, **sk)
    assert qk < 64
    monkeypatch.setitem(M3.CONFIG, key, dict(M3.CONFIG[key], chunk=2 * qk, rows=2 * qk))
    recomputes = _count_recomputes(monkeypatch)
    got = M3.mamba3_scan_vjp_saved(res, cot, *args, **sk)
    assert recomputes == [True]  # the saved states are per Qk chunk, the backward now per 2 Qk
    for k in want:
        assert rel(got[k], want[k].double().cpu().numpy()) < (2e-4 if dtype == torch.float32 else 4e-2), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_scan_saving_form_with_a_state_stride(dtype, monkeypatch):
    """CONFIG["save"]["state_stride"] = 2: every other chunk's state kept (half the memory); the
    VJP recomputes the others in its blocks and gives the plain VJP's gradients, with no
    separate state-recompute launch."""
    import array_api_compat.torch as xpt

    monkeypatch.setitem(M3.CONFIG, "save", dict(M3.CONFIG["save"], states=True, state_stride=2))
    ta, tk, _, _ = inputs(CASES["SISO,G=1,H=2,bias,h0/k0/v0"], dtype)
    Bh = core.heads(xpt, ta["B"], 2, tk["B_bias"])
    Ch = core.heads(xpt, ta["C"], 2, tk["C_bias"])
    sk = dict(D=tk["D"], chunk_size=64, initial_state=tk["initial_state"], initial_k=tk["initial_k"],
              initial_v=tk["initial_v"])
    args = (ta["x"], ta["dt"], ta["A"], ta["trap"], Bh, Ch)
    out, res = M3.mamba3_scan_saving(*args, **sk)
    qk = M3._layout(M3._chunk_cap(M3.CONFIG[M3.conf_key("bwd", dtype)], 64, 1), 1)[0]
    nc = -(-ta["x"].shape[1] // qk)
    assert res.span == 2 * qk and res.states.shape[1] == -(-nc // 2) and nc > 1
    cot = tuple(torch.ones_like(g) for g in out)
    want = M3.mamba3_scan_vjp(cot, *args, **sk)
    recomputes = _count_recomputes(monkeypatch)
    got = M3.mamba3_scan_vjp_saved(res, cot, *args, **sk)
    assert recomputes == []
    for k in want:
        assert rel(got[k], want[k].double().cpu().numpy()) < (2e-4 if dtype == torch.float32 else 4e-2), k


@pytest.mark.parametrize("block,scratch", [(2, False), (3, False), (3, True)])
@pytest.mark.parametrize("name,dtype", [("SISO,G=1,H=2,bias,h0/k0/v0", torch.float32),
                                        ("MIMO R=2,halves,bias", torch.float32),
                                        ("SISO,G=1,H=2,bias,h0/k0/v0", torch.bfloat16)])
def test_blocked_backward_matches_the_serial_one(name, dtype, block, scratch, monkeypatch):
    """CONFIG "bwd" variant "blocked": one program per block of chunks from the state gradient
    the serial pass (_m3_dsb) leaves at its end, the block's states stepped to or in scratch
    rows. The gradients are the serial backward's, with every cotangent and with dy None; from a
    saving form's states too (kept at the block stride)."""
    import array_api_compat.torch as xpt

    c = CASES[name]
    ta, tk, _, _ = inputs(dict(c, L=41), dtype)  # 41 tokens: 3 chunks of 16, a partial block at 3
    H, R = c["H"], c["R"]
    Bh = core.heads(xpt, ta["B"], H, tk["B_bias"])
    Ch = core.heads(xpt, ta["C"], H, tk["C_bias"])
    sk = dict(D=tk["D"], mimo_x=tk["mimo_x"], chunk_size=64, initial_state=tk["initial_state"],
              initial_k=tk["initial_k"], initial_v=tk["initial_v"])
    args = (ta["x"], ta["dt"], ta["A"], ta["trap"], Bh, Ch)
    out = M3.mamba3_scan(*args, **sk)
    rng = np.random.default_rng(5)
    cot = tuple(torch.from_numpy(rng.standard_normal(tuple(g.shape))).to(g.dtype).to(DEV) for g in out)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    for cc in (cot, (None,) + cot[1:], (cot[0], None, None, None)):
        want = M3.mamba3_scan_vjp(cc, *args, **sk)
        key = M3.conf_key("bwd", dtype)
        with monkeypatch.context() as m:
            m.setitem(M3.CONFIG, key, dict(M3.CONFIG[key], variant="blocked", block=block,
                                           block_scratch=scratch))
            got = M3.mamba3_scan_vjp(cc, *args, **sk)
            launches = _count_chunks(m)
            out2, res = M3.mamba3_scan_saving(*args, **sk)
            qk_b = M3._layout(M3._chunk_cap(M3.CONFIG[key], 64, R), R)[0]
            qk_f = M3._layout(M3._chunk_cap(M3.CONFIG[M3.conf_key("fwd", dtype)], 64, R), R)[0]
            assert res.span == qk_b * block
            # the forward's own chunk when it divides the span, else the backward's
            assert launches == [qk_f if res.span % qk_f == 0 else qk_b], (launches, qk_f, qk_b)
            for g, w in zip(out2, out):
                assert rel(g, w.double().cpu().numpy()) < tol
            got2 = M3.mamba3_scan_vjp_saved(res, cc, *args, **sk)
        assert set(got) == set(want)
        for k in want:
            for g in (got, got2):
                assert rel(g[k], want[k].double().cpu().numpy()) < tol, (k, rel(g[k], want[k].double().cpu().numpy()))


def test_unknown_backward_variant_is_named(monkeypatch):
    monkeypatch.setitem(M3.CONFIG, "bwd", dict(M3.CONFIG["bwd"], variant="parallel"))
    monkeypatch.setitem(M3.CONFIG, "bwd_ieee", dict(M3.CONFIG["bwd_ieee"], variant="parallel"))
    ta, tk, _, _ = inputs(CASES["SISO,S=0"])
    out = F.mamba3_rope_scan(*ta.values(), **tk)
    with pytest.raises(ValueError, match="'parallel'.*'serial' or 'blocked'"):
        F.mamba3_rope_scan_vjp(tuple(torch.ones_like(o) for o in out), *ta.values(), **tk)
