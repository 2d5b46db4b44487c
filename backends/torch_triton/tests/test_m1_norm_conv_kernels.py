"""Triton kernels of the Mamba-1 scan, RMSNorm and causal conv1d against mamba-core's float64
references, on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1), tiny shapes.

float32: relative max error (max|got - want| / max|want|) under 2e-4, as conformance demands;
bfloat16 inputs: under 4e-2 against the reference on the bf16-rounded inputs; float64 inputs:
the documented fallback to the default composition (exact to 1e-9).
"""

import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the torch_triton kernels need it")
pytest.importorskip("triton", reason="triton is not installed: the torch_triton kernels need it")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

from mamba_backend_torch_triton.kernels import conv1d as kc  # noqa: E402
from mamba_backend_torch_triton.kernels import norm as kn  # noqa: E402
from mamba_backend_torch_triton.kernels import selective_scan as ks  # noqa: E402
from mamba_backend_torch_triton.kernels._glue import runs_here  # noqa: E402
from mamba_core.ops import conv1d as rc  # noqa: E402
from mamba_core.ops import norm as rn  # noqa: E402
from mamba_core.ops import selective_scan as rs  # noqa: E402

TOL = {"float32": 2e-4, "bfloat16": 4e-2, "float64": 1e-9}
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
TDT = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def rel(got, want):
    got = got.detach().to("cpu", torch.float64).numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got))
    scale = np.max(np.abs(want))
    # an exactly-zero reference (e.g. dA at L=1 without an initial state: h_{-1} = 0) is met only
    # up to the rounding of terms that cancel (compiled kernels contract to FMAs): with O(1)
    # inputs its error is measured against 1, i.e. absolutely
    return np.max(np.abs(got - want)) / (scale if scale > 0 else 1.0)


def rounded(a, dtype):
    """NumPy float64 copy of a as stored in dtype (so input rounding is not counted)."""
    if a is None or not isinstance(a, np.ndarray):
        return a
    return torch.as_tensor(a).to(TDT[dtype]).to(torch.float64).numpy()


def dev(a, dtype="float32", wide=False):
    if a is None or not isinstance(a, np.ndarray):
        return a
    return torch.as_tensor(a).to(torch.float32 if wide and dtype != "float64" else TDT[dtype]).to(DEV)


def check(got, want, dtype, what):
    err = rel(got, want)
    assert err < TOL[dtype], f"{what}: relative error {err:.3e} >= {TOL[dtype]:.0e}"


def check_dict(got, want, dtype, what):
    assert set(got) == set(want), (what, sorted(got), sorted(want))
    for k in want:
        check(got[k], want[k], dtype, f"{what}[{k}]")


# ---- selective scan -----------------------------------------------------------------------
SCAN_CASES = {
    "all,L=37,G=2": dict(B=2, L=37, E=6, G=2, N=4, z=1, D=1, bias=1, sp=1, h0=1),
    "none,L=1": dict(B=1, L=1, E=4, G=1, N=3, z=0, D=0, bias=0, sp=0, h0=0),
    "z,D,L=20,E=16 (several chunks)": dict(B=2, L=20, E=16, G=1, N=5, z=1, D=1, bias=1, sp=1, h0=0, T=8),
    "strong decay,L=40": dict(B=1, L=40, E=2, G=1, N=2, z=0, D=1, bias=1, sp=1, h0=1, strong=1, T=8),
}


def scan_inputs(c, rng):
    Bz, L, E, G, N = c["B"], c["L"], c["E"], c["G"], c["N"]
    inp = dict(
        u=rng.standard_normal((Bz, L, E)),
        delta=rng.uniform(0.5, 2.0, (Bz, L, E)) if c.get("strong") else rng.standard_normal((Bz, L, E)) * (1 if c["sp"] else 0.3) + (0 if c["sp"] else 0.5),
        A=-rng.uniform(1, 5, (E, N)) if c.get("strong") else -np.exp(rng.uniform(-1, 1, (E, N))),
        B=rng.standard_normal((Bz, L, G, N)), C=rng.standard_normal((Bz, L, G, N)),
    )
    inp["D"] = rng.standard_normal(E) if c["D"] else None
    inp["z"] = rng.standard_normal((Bz, L, E)) if c["z"] else None
    inp["delta_bias"] = 0.3 * rng.standard_normal(E) if c["bias"] else None
    inp["initial_state"] = rng.standard_normal((Bz, E, N)) if c["h0"] else None
    return inp


@pytest.fixture
def chunk(request):
    old = dict(ks.CONFIG["interpret"])
    yield
    ks.CONFIG["interpret"] = old


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(SCAN_CASES))
def test_selective_scan(name, dtype, chunk):
    run_scan(SCAN_CASES, name, dtype)


def run_scan(cases, name, dtype, step=True):
    """Forward, (step,) and VJP with both cotangents of case ``name`` against the reference."""
    c = cases[name]
    if "T" in c:
        ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], T=c["T"])
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    inp = scan_inputs(c, rng)
    sp = bool(c["sp"])
    ref_in = {k: rounded(v, dtype) for k, v in inp.items()}
    ref_in["A"] = inp["A"]  # A travels in float32 (it is -exp(A_log) in the wide dtype)
    args = {k: dev(v, dtype) for k, v in inp.items()}
    args["A"] = dev(inp["A"], dtype, wide=True)
    if args["initial_state"] is not None:
        args["initial_state"] = dev(inp["initial_state"], dtype, wide=True)
        ref_in["initial_state"] = inp["initial_state"]
    y, h = ks.selective_scan(**args, delta_softplus=sp)
    ry, rh = rs.selective_scan_ref(**ref_in, delta_softplus=sp)
    assert y.dtype == TDT[dtype] and h.dtype == torch.float32
    check(y, ry, dtype, "y")
    check(h, rh, dtype, "final_state")
    if step:  # step, unrolled from the same state
        state = args["initial_state"] if args["initial_state"] is not None else torch.zeros(h.shape, device=DEV)
        ys = []
        for t in range(c["L"]):
            sl = lambda a: None if a is None else a[:, t]  # noqa: E731
            yt, state = ks.selective_scan_step(sl(args["u"]), sl(args["delta"]), args["A"], sl(args["B"]),
                                               sl(args["C"]), state, args["D"], sl(args["z"]),
                                               args["delta_bias"], sp)
            ys.append(yt)
        check(torch.stack(ys, 1), ry, dtype, "step y")
        check(state, rh, dtype, "step state")
    # VJP with both cotangents
    dy = rng.standard_normal(ry.shape)
    dh = rng.standard_normal(rh.shape)
    got = ks.selective_scan_vjp((dev(dy, dtype), dev(dh, dtype, wide=True)), **args, delta_softplus=sp)
    want = rs.selective_scan_vjp_ref((rounded(dy, dtype), dh), **ref_in, delta_softplus=sp)
    want = {k: v for k, v in want.items() if args.get(k) is not None}
    for k, v in got.items():
        assert v.dtype == args[k].dtype, (k, v.dtype)
    check_dict(got, want, dtype, "selective_scan_vjp")


@pytest.mark.parametrize("variant", ["base", "exp2", "seq"])
@pytest.mark.parametrize("name", list(SCAN_CASES))
def test_selective_scan_variants(name, variant, chunk):
    """The kernel variants a sweep may pick (selective_scan.VARIANTS) give the same results
    (test_selective_scan runs the interpreter's default, "lanes")."""
    ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], variant=variant)
    test_selective_scan(name, "float32", chunk)


# the transposed variants (channels last, the N states of a channel in one thread), forward and
# VJP: every optional input, softplus on and off, G > 1, N not a power of two, L not a multiple
# of T, several chunks and several channel blocks (BE=8 in the interpreter)
TR_CASES = {
    **SCAN_CASES,
    "all,G=2,N=5,T=4,L=11,no softplus": dict(B=2, L=11, E=16, G=2, N=5, z=1, D=1, bias=1, sp=0, h0=1, T=4),
    "h0,bias,G=2,N=3,T=8,L=19": dict(B=1, L=19, E=32, G=2, N=3, z=0, D=0, bias=1, sp=1, h0=1, T=8),
}


@pytest.mark.parametrize("name,variant", [(k, "tr") for k in TR_CASES] + [
    (k, v) for k in TR_CASES if k != "all,L=37,G=2" for v in ("tr_scan", "tr_fold")])  # (interpreter time)
def test_selective_scan_transposed(name, variant, chunk):
    # T=8 unless the case names one: the interpreter runs the unrolled tokens one by one
    ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], variant=variant, T=8)
    run_scan(TR_CASES, name, "float32", step=False)


@pytest.mark.parametrize("T,BE", [(8, 8), (4, 8), (4, 16)])
@pytest.mark.parametrize("name", list(TR_CASES))
def test_selective_scan_lanes_vjp(name, T, BE, chunk, monkeypatch):
    """The "lanes" VJP (kernels/selective_scan_lanes.py) after its "seq" state-saving forward:
    every optional input, G > 1, N not a power of two, L a multiple of T or not (EVEN_L), one
    chunk or several, 8 or 16 channels a program (BE=16: two a thread, where E / G allows it).
    On a GPU, the float32 VJP's own config takes the variant (with a register cap, as the sweep
    sets it)."""
    ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], variant="lanes", T=T, BE=BE)
    monkeypatch.setitem(ks.CONFIG, "bwd_f32", {"T": T, "BE": BE, "num_warps": 1, "variant": "lanes",
                                              "maxnreg": 160})
    run_scan(TR_CASES, name, "float32", step=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("BE", [16, 32])
def test_selective_scan_lanes_vjp_channels_a_thread(BE, dtype, chunk, monkeypatch):
    """"lanes" with 2 or 4 channels a thread (BE = 16, 32 on one warp: the bf16 default and a
    sweep candidate), at E / G = 64 so the whole block is used, both dtypes."""
    cases = {"E=64": dict(B=1, L=11, E=64, G=1, N=5, z=1, D=1, bias=1, sp=1, h0=1, T=4)}
    ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], variant="lanes", BE=BE)
    for key in ("bwd", "bwd_f32"):
        monkeypatch.setitem(ks.CONFIG, key, {"T": 4, "BE": BE, "num_warps": 1, "variant": "lanes"})
    run_scan(cases, "E=64", dtype, step=False)


@pytest.mark.parametrize("variant", ["tr", "tr_scan", "tr_fold", "lanes"])
def test_selective_scan_transposed_bf16(variant, chunk):
    ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], variant=variant)
    run_scan(TR_CASES, "all,G=2,N=5,T=4,L=11,no softplus", "bfloat16", step=False)


@pytest.mark.parametrize("variant", ["lanes", "tr", "base"])
def test_selective_scan_vjp_states16_bf16(variant, chunk, monkeypatch):
    """CONFIG "states16": the VJP's chunk states kept in bf16 for bf16 inputs (stored so by the
    state-saving forward, read back into float32): gradients still within the bf16 tolerance
    of the reference, and the states really are bf16."""
    ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], variant=variant, states16=True)
    if DEV == "cuda":  # the GPU reads the VJP's own entry (bf16 inputs: "bwd")
        monkeypatch.setitem(ks.CONFIG, "bwd", {"T": 4, "BE": 8, "num_warps": 1, "variant": variant,
                                               "states16": True})
    saved_dtypes, launch = [], ks._scan_launch

    def spy(*a, **k):  # the state-saving forward's states (argument hs)
        if a[12] is not None:
            saved_dtypes.append(a[12].dtype)
        return launch(*a, **k)

    monkeypatch.setattr(ks, "_scan_launch", spy)
    run_scan(TR_CASES, "all,G=2,N=5,T=4,L=11,no softplus", "bfloat16", step=False)
    assert saved_dtypes == [torch.bfloat16]


@pytest.mark.parametrize("mode", [True, "outputs"], ids=["float32 copies", "float32 outputs"])
@pytest.mark.parametrize("name", ["all,L=37,G=2", "all,G=2,N=5,T=4,L=11,no softplus"])
def test_selective_scan_vjp_upcast_bf16(name, mode, chunk):
    """The bf16 VJP through the float32 kernels (CONFIG "bwd": {"upcast": True}, the GPU
    default until run 38) or with the 16-bit inputs read directly and float32 gradients cast after
    ("outputs"): gradients in the arguments' dtypes, against the reference."""
    ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], upcast=mode)
    run_scan(TR_CASES, name, "bfloat16", step=False)


@pytest.mark.parametrize("name,variant,dtype", [  # (the interpreter: 2-20 s each)
    ("all,G=2,N=5,T=4,L=11,no softplus", "lanes", "float32"),
    ("all,G=2,N=5,T=4,L=11,no softplus", "lanes", "bfloat16"),
    ("all,L=37,G=2", "lanes", "float32"),
    ("all,G=2,N=5,T=4,L=11,no softplus", "tr", "float32"),
    ("all,G=2,N=5,T=4,L=11,no softplus", "base", "bfloat16"),
])
def test_selective_scan_saving_form(name, variant, dtype, chunk, monkeypatch):
    """The saving form (CONFIG "save": {"states": True}): the plain op's outputs, SavedChunkStates
    at the VJP's chunk and layout, and the plain VJP's gradients from them without a
    state-saving launch; with "states" off (the default) it keeps nothing."""
    from mamba_backend_torch_triton.backend import TorchTritonBackend

    be = TorchTritonBackend()
    c = TR_CASES[name]
    ks.CONFIG["interpret"] = dict(ks.CONFIG["interpret"], variant=variant, T=c.get("T", 8))
    if DEV == "cuda":  # the GPU reads the VJP's own entries
        for key in ("bwd", "bwd_f32"):
            monkeypatch.setitem(ks.CONFIG, key, {"T": c.get("T", 8), "BE": 8, "num_warps": 1,
                                                 "variant": variant})
    inp = scan_inputs(c, np.random.default_rng(3))
    args = {k: dev(v, dtype, wide=k in ("A", "initial_state")) for k, v in inp.items()}
    sp = bool(c["sp"])
    plain = ks.selective_scan(**args, delta_softplus=sp)
    assert be.ops.forward_saving("selective_scan", **args, delta_softplus=sp)[1] is None  # off by default
    monkeypatch.setitem(ks.CONFIG, "save", {"states": True})
    out, res = be.ops.forward_saving("selective_scan", **args, delta_softplus=sp)
    assert isinstance(res, ks.SavedChunkStates) and res.T == c.get("T", 8)
    assert res.transposed == (variant == "tr") and res.states.dtype == torch.float32
    for g, w, what in zip(out, plain, ("y", "final_state")):
        check(g, w.double().cpu().numpy(), dtype, what)
    rng = np.random.default_rng(4)
    cot = (dev(rng.standard_normal(tuple(plain[0].shape)), dtype),
           dev(rng.standard_normal(tuple(plain[1].shape)), dtype, wide=True))
    want = ks.selective_scan_vjp(cot, **args, delta_softplus=sp)
    launches, launch = [], ks._scan_launch
    monkeypatch.setattr(ks, "_scan_launch", lambda *a, **k: (launches.append(a[12] is not None), launch(*a, **k)))
    got = be.ops.vjp_saved("selective_scan", res, cot, **args, delta_softplus=sp)
    assert launches == []  # no state-saving forward: the states came from the saving form
    check_dict(got, {k: v.double().cpu().numpy() for k, v in want.items()}, dtype, "vjp_saved")
    for key in ("interpret", "bwd", "bwd_f32"):  # the VJP now at another chunk
        monkeypatch.setitem(ks.CONFIG, key, dict(ks.CONFIG[key], T=2 * res.T))
    be.ops.vjp_saved("selective_scan", res, cot, **args, delta_softplus=sp)
    assert launches == [True]  # mismatched states are not read: recomputed


def test_selective_scan_unknown_variant_is_named(chunk, monkeypatch):
    # the config the device in use reads for these float32 inputs
    key = "interpret" if DEV == "cpu" else ("fwd_f32" if "fwd_f32" in ks.CONFIG else "fwd")
    monkeypatch.setitem(ks.CONFIG, key, dict(ks.CONFIG[key], variant="transposed"))
    x = torch.zeros(1, 2, 4, device=DEV)
    z = lambda *sh: torch.zeros(*sh, device=DEV)  # noqa: E731
    with pytest.raises(ValueError, match="'tr'"):
        ks.selective_scan(x, x, z(4, 2), z(1, 2, 1, 2), z(1, 2, 1, 2))


def test_selective_scan_noncontiguous_and_none_cotangent():
    """Slices of a wider tensor (as the mixer passes x, z and B, C) and dy=None / dh=None."""
    rng = np.random.default_rng(3)
    Bz, L, E, N = 2, 9, 4, 3
    xz = torch.as_tensor(rng.standard_normal((Bz, L, 2 * E)), dtype=torch.float32)
    dbl = torch.as_tensor(rng.standard_normal((Bz, L, 1 + 2 * N)), dtype=torch.float32)
    u, z = xz[..., :E], xz[..., E:]
    Bm, Cm = dbl[..., 1:1 + N].reshape(Bz, L, 1, N), dbl[..., 1 + N:].reshape(Bz, L, 1, N)
    assert not u.is_contiguous() and not Bm.is_contiguous()
    delta = torch.as_tensor(rng.standard_normal((Bz, L, E)), dtype=torch.float32)
    A = -torch.rand(E, N) - 0.5
    y, h = ks.selective_scan(u, delta, A, Bm, Cm, None, z, None, True)
    ry, rh = rs.selective_scan_ref(u.numpy(), delta.numpy(), A.numpy(), Bm.numpy(), Cm.numpy(), None,
                                   z.numpy(), None, True)
    check(y, ry, "float32", "y")
    check(h, rh, "float32", "h")
    dh = rng.standard_normal((Bz, E, N))
    got = ks.selective_scan_vjp((None, torch.as_tensor(dh, dtype=torch.float32)), u, delta, A, Bm, Cm,
                                None, z, None, True)
    want = rs.selective_scan_vjp_ref((None, dh), u.numpy(), delta.numpy(), A.numpy(), Bm.numpy(),
                                     Cm.numpy(), None, z.numpy(), None, True)
    for k in ("u", "delta", "A", "B", "C"):
        check(got[k], want[k], "float32", k)
    assert float(got["z"].abs().max()) == 0.0  # dy = None: no gradient reaches the gate


def test_float64_falls_back_to_default_composition():
    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.standard_normal((2, 3, 8)))
    w = torch.as_tensor(rng.standard_normal(8))
    assert not runs_here(x, w)
    check(kn.rmsnorm(x, w), rn.rmsnorm_ref(x.numpy(), w.numpy()), "float64", "rmsnorm f64")
    inp = scan_inputs(SCAN_CASES["all,L=37,G=2"], rng)
    args = {k: None if v is None else torch.as_tensor(v) for k, v in inp.items()}
    y, h = ks.selective_scan(**args, delta_softplus=True)
    ry, rh = rs.selective_scan_ref(**inp, delta_softplus=True)
    assert y.dtype == torch.float64
    check(y, ry, "float64", "scan f64")


# ---- rmsnorm ------------------------------------------------------------------------------
NORM_CASES = {
    "plain": dict(shape=(2, 5, 8)),
    "gated,nbg=False,gs=4": dict(shape=(2, 3, 12), z=True, nbg=False, gs=4),
    "gated,nbg=True,gs=3": dict(shape=(3, 12), z=True, nbg=True, gs=3),
    "gated,nbg=False,E=40": dict(shape=(2, 2, 40), z=True, nbg=False),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(NORM_CASES))
def test_rmsnorm(name, dtype):
    c = NORM_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.standard_normal(c["shape"])
    w = 1 + 0.3 * rng.standard_normal(c["shape"][-1])
    z = 2 * rng.standard_normal(c["shape"]) if c.get("z") else None
    kw = dict(eps=1e-5, z=None, group_size=c.get("gs"), norm_before_gate=c.get("nbg", False))
    y = kn.rmsnorm(dev(x, dtype), dev(w, dtype), **{**kw, "z": dev(z, dtype)})
    assert y.dtype == TDT[dtype]
    R = lambda a: rounded(a, dtype)  # noqa: E731
    check(y, rn.rmsnorm_ref(R(x), R(w), **{**kw, "z": R(z)}), dtype, "rmsnorm")
    dy = rng.standard_normal(c["shape"])
    got = kn.rmsnorm_vjp(dev(dy, dtype), dev(x, dtype), dev(w, dtype), **{**kw, "z": dev(z, dtype)})
    want = rn.rmsnorm_vjp_ref(R(dy), R(x), R(w), **{**kw, "z": R(z)})
    check_dict(got, want, dtype, "rmsnorm_vjp")


@pytest.mark.parametrize("fp32", [True, False])
@pytest.mark.parametrize("has_res", [True, False])
def test_add_rmsnorm(has_res, fp32):
    rng = np.random.default_rng(int(has_res) * 2 + int(fp32))
    shape = (2, 3, 10)
    x = rng.standard_normal(shape)
    r = 3 * rng.standard_normal(shape) if has_res else None
    w = 1 + 0.3 * rng.standard_normal(10)
    y, res = kn.add_rmsnorm(dev(x), dev(r), dev(w), 1e-5, fp32)
    ry, rres = rn.add_rmsnorm_ref(x, r, w, 1e-5, fp32)
    check(y, ry, "float32", "y")
    check(res, rres, "float32", "residual")
    dy, dr = rng.standard_normal(shape), rng.standard_normal(shape)
    for cot in ((dy, dr), (dy, None), (None, dr)):
        got = kn.add_rmsnorm_vjp(tuple(dev(a) for a in cot), dev(x), dev(r), dev(w), 1e-5, fp32)
        want = rn.add_rmsnorm_vjp_ref(cot, x, r, w, 1e-5, fp32)
        check_dict(got, want, "float32", f"add_rmsnorm_vjp {[a is None for a in cot]}")


def test_add_rmsnorm_bf16_residual_in_fp32():
    rng = np.random.default_rng(7)
    x, r, w = rng.standard_normal((4, 16)), rng.standard_normal((4, 16)), rng.standard_normal(16)
    y, res = kn.add_rmsnorm(dev(x, "bfloat16"), dev(r, "float32"), dev(w, "bfloat16"), 1e-5, True)
    assert y.dtype == torch.bfloat16 and res.dtype == torch.float32
    ry, rres = rn.add_rmsnorm_ref(rounded(x, "bfloat16"), r, rounded(w, "bfloat16"))
    check(y, ry, "bfloat16", "y")
    check(res, rres, "float32", "residual (float32 add of bf16 x)")


# ---- causal conv1d -------------------------------------------------------------------------
CONV_CASES = {
    "K=4,silu,bias,h0,L=9": dict(B=2, L=9, C=5, K=4, act="silu", bias=True, h0=True),
    "K=4,none,L=2<K,h0": dict(B=1, L=2, C=3, K=4, act=None, bias=False, h0=True),
    "K=3,silu,L=40,C=20": dict(B=2, L=40, C=20, K=3, act="silu", bias=True, h0=False),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_causal_conv1d(name, dtype):
    c = CONV_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    Bz, L, C, K = c["B"], c["L"], c["C"], c["K"]
    x = rng.standard_normal((Bz, L, C))
    w = rng.standard_normal((C, K)) / 2
    b = rng.standard_normal(C) if c["bias"] else None
    h0 = rng.standard_normal((Bz, C, K)) if c["h0"] else None
    R = lambda a: rounded(a, dtype)  # noqa: E731
    y, fs = kc.causal_conv1d(dev(x, dtype), dev(w, dtype), dev(b, dtype), dev(h0, dtype), c["act"])
    ry, rfs = rc.causal_conv1d_ref(R(x), R(w), R(b), R(h0), c["act"])
    assert y.dtype == TDT[dtype]
    check(y, ry, dtype, "y")
    check(fs, rfs, dtype, "final_state")
    state = dev(h0 if h0 is not None else np.zeros((Bz, C, K)), dtype, wide=True)
    ys = []
    for t in range(L):
        yt, state = kc.causal_conv1d_step(dev(x, dtype)[:, t], state, dev(w, dtype), dev(b, dtype), c["act"])
        ys.append(yt)
    check(torch.stack(ys, 1), ry, dtype, "step y")
    check(state, rfs, dtype, "step state")
    dy, df = rng.standard_normal(ry.shape), rng.standard_normal(rfs.shape)
    got = kc.causal_conv1d_vjp((dev(dy, dtype), dev(df, dtype)), dev(x, dtype), dev(w, dtype), dev(b, dtype),
                               dev(h0, dtype), c["act"])
    want = rc.causal_conv1d_vjp_ref((R(dy), R(df)), R(x), R(w), R(b), R(h0), c["act"])
    check_dict(got, want, dtype, "causal_conv1d_vjp")


def test_conv1d_noncontiguous_x():
    rng = np.random.default_rng(9)
    wide = torch.as_tensor(rng.standard_normal((2, 7, 10)), dtype=torch.float32)
    x = wide[..., 2:7]
    w = torch.as_tensor(rng.standard_normal((5, 4)), dtype=torch.float32)
    y, fs = kc.causal_conv1d(x, w, None, None, "silu")
    ry, rfs = rc.causal_conv1d_ref(x.numpy(), w.numpy(), None, None, "silu")
    check(y, ry, "float32", "y")
    check(fs, rfs, "float32", "final_state")
    got = kc.causal_conv1d_vjp((None, torch.ones(2, 5, 4)), x, w, None, None, "silu")
    want = rc.causal_conv1d_vjp_ref((None, np.ones((2, 5, 4))), x.numpy(), w.numpy(), None, None, "silu")
    check_dict(got, want, "float32", "vjp, dy=None")
