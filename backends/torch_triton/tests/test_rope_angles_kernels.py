"""Triton kernels of Mamba-3's rotary angles and rotation (kernels/rope.py) against mamba-core's
float64 references, on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1), tiny
shapes.

Angles are compared by circular distance (phi lives mod 2 pi) divided by 2 pi; everything else by
the relative max error (max|got - want| / max|want|). float32 under 2e-4; bfloat16 inputs under
4e-2 against the reference on the bf16-rounded inputs. Returned keys, shapes and dtypes equal the
default composition's; float64 inputs run the default composition (documented fallback).
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

from mamba_backend_torch_triton.kernels import rope as K  # noqa: E402
from mamba_backend_torch_triton.kernels._glue import default  # noqa: E402
from mamba_core.ops import mamba3 as r3  # noqa: E402
from mamba_core.ops import rope as rr  # noqa: E402
from mamba_core.registry import get_backend  # noqa: E402

TOL = {"float32": 2e-4, "bfloat16": 4e-2, "float64": 1e-9}
DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
TDT = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
OPS = ("mamba3_angles", "mamba3_angles_vjp", "apply_rope", "apply_rope_vjp")


def np64(t):
    return t.detach().to("cpu", torch.float64).numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def rel(got, want):
    got, want = np64(got), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got))
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)


def circ(got, want):
    """Max circular distance between angles, over 2 pi; got must lie in [0, 2 pi)."""
    got, want = np64(got), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(got >= 0) and np.all(got < 2 * np.pi + 1e-6)
    d = np.mod(got - want, 2 * np.pi)
    return np.max(np.minimum(d, 2 * np.pi - d)) / (2 * np.pi)


def rounded(a, dtype):
    """NumPy float64 copy of a as stored in dtype (so input rounding is not counted)."""
    return a if a is None else torch.as_tensor(a).to(TDT[dtype]).to(torch.float64).numpy()


def dev(a, dtype):
    return a if a is None else torch.as_tensor(a).to(TDT[dtype]).to(DEV)


def check(err, dtype, what):
    assert err < TOL[dtype], f"{what}: relative error {err:.3e} >= {TOL[dtype]:.0e}"


def same_layout(got, want, what):
    """Keys, shapes and dtypes of a kernel's result equal the default composition's."""
    if isinstance(want, dict):
        assert set(got) == set(want), (what, sorted(got), sorted(want))
        got, want = [got[k] for k in sorted(want)], [want[k] for k in sorted(want)]
    elif isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), what
    else:
        got, want = [got], [want]
    for g, w in zip(got, want):
        assert (tuple(g.shape), g.dtype) == (tuple(w.shape), w.dtype), (what, g.shape, g.dtype, w.shape, w.dtype)


# ---- mamba3_angles ------------------------------------------------------------------------
# T is 16 in the interpreter: L=37 and L=300 end on partial chunks, L=32 on a full one; split
# into segments of >= 16 tokens, L=37 and L=32 make 2 segments, L=300 4 (the last one short)
ANGLE_CASES = {
    "init,L=37": dict(B=2, L=37, H=3, S=5, init=True),
    "no init,L=32": dict(B=1, L=32, H=2, S=4, init=False),
    "L=1,init": dict(B=2, L=1, H=1, S=3, init=True),
    "long L=300,large dt (many turns),sliced angles": dict(B=1, L=300, H=2, S=3, init=True, big=True,
                                                           sliced=True),
}


def angle_inputs(c, rng):
    Bz, L, H, S = c["B"], c["L"], c["H"], c["S"]
    dt = rng.uniform(5.0, 20.0, (Bz, L, H)) if c.get("big") else rng.uniform(0.01, 2.0, (Bz, L, H))
    return dict(angles=2 * rng.standard_normal((Bz, L, S)), dt=dt,
                initial_angle=30 * rng.standard_normal((Bz, H, S)) if c["init"] else None)


def angle_args(inp, dtype, sliced=False):
    args = {k: dev(v, dtype) for k, v in inp.items()}
    if sliced:  # angles as a column slice of a wider (B, L, width) tensor, like in_proj's output
        a = args["angles"]
        wide = torch.zeros(a.shape[:2] + (a.shape[2] + 7,), dtype=a.dtype, device=a.device)
        wide[..., 4 : 4 + a.shape[2]] = a
        args["angles"] = wide[..., 4 : 4 + a.shape[2]]
    return args


def _segments(monkeypatch, n):
    """L split into at most n segments (of >= 16 tokens) on whichever device runs the kernels."""
    for which in ("angles_fwd", "angles_bwd", "interpret"):
        monkeypatch.setitem(K.CONFIG, which, dict(K.CONFIG[which], segments=n, min_seg=16))


@pytest.mark.parametrize("variant", ["scan", "seq"])
@pytest.mark.parametrize("segments", [1, 4], ids=["one segment", "L split"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(ANGLE_CASES))
def test_mamba3_angles(name, dtype, segments, variant, monkeypatch):
    """Both forward variants (CONFIG "variant": chunk tiles composed by a scan, or a token-by-token
    walk), whole or split L, against the float64 reference."""
    _segments(monkeypatch, segments)
    for which in ("angles_fwd", "interpret"):
        monkeypatch.setitem(K.CONFIG, which, dict(K.CONFIG[which], variant=variant))
    c = ANGLE_CASES[name]
    inp = angle_inputs(c, np.random.default_rng(zlib.crc32(name.encode())))
    args = angle_args(inp, dtype, c.get("sliced", False))
    phi, fin = K.mamba3_angles(**args)
    rphi, rfin = r3.mamba3_angles_ref(**{k: rounded(v, dtype) for k, v in inp.items()})
    check(circ(phi, rphi), dtype, f"{name} phi")
    check(circ(fin, rfin), dtype, f"{name} final_angle")
    same_layout((phi, fin), default("mamba3_angles")(**args), name)


@pytest.mark.parametrize("segments", [1, 4], ids=["one segment", "L split"])
@pytest.mark.parametrize("cot", ["dphi", "dfinal", "both"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["init,L=37", "no init,L=32", "long L=300,large dt (many turns),sliced angles"])
def test_mamba3_angles_vjp(name, dtype, cot, segments, monkeypatch):
    _segments(monkeypatch, segments)
    c = ANGLE_CASES[name]
    rng = np.random.default_rng(zlib.crc32((name + cot).encode()))
    inp = angle_inputs(c, rng)
    Bz, L, H, S = c["B"], c["L"], c["H"], c["S"]
    dphi = rng.standard_normal((Bz, L, H, S)) if cot in ("dphi", "both") else None
    dfin = rng.standard_normal((Bz, H, S)) if cot in ("dfinal", "both") else None
    args = angle_args(inp, dtype, c.get("sliced", False))
    cotangent = (dev(dphi, dtype), dev(dfin, dtype))
    got = K.mamba3_angles_vjp(cotangent, **args)
    want = r3.mamba3_angles_vjp_ref((rounded(dphi, dtype), rounded(dfin, dtype)),
                                    **{k: rounded(v, dtype) for k, v in inp.items()})
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        check(rel(got[k], want[k]), dtype, f"{name} d{k}")
    same_layout(got, default("mamba3_angles_vjp")(cotangent, **args), name)


def test_mamba3_angles_unknown_variant_is_named(monkeypatch):
    for which in ("angles_fwd", "interpret"):
        monkeypatch.setitem(K.CONFIG, which, dict(K.CONFIG[which], variant="parallel"))
    x = torch.zeros(1, 4, 2, device=DEV)
    with pytest.raises(ValueError, match="'seq'"):
        K.mamba3_angles(x, torch.ones(1, 4, 2, device=DEV))


def test_mamba3_angles_vjp_no_cotangent_is_zero():
    inp = angle_inputs(ANGLE_CASES["init,L=37"], np.random.default_rng(1))
    got = K.mamba3_angles_vjp((None, None), **angle_args(inp, "float32"))
    assert set(got) == {"angles", "dt", "initial_angle"}
    assert all(float(v.abs().max()) == 0.0 for v in got.values())


# ---- apply_rope ---------------------------------------------------------------------------
# (x shape, phi shape): the broadcasts Mamba-3 uses, N > 2 S (pass-through components), N = 2 S
ROPE_CASES = {
    "SISO x (B,L,1,H,N), N>2S": ((2, 5, 1, 3, 12), (2, 5, 1, 3, 4)),
    "SISO x (B,L,1,1,N) over H": ((2, 5, 1, 1, 10), (2, 5, 1, 3, 3)),
    "MIMO x (B,L,R,H,N), N=2S": ((2, 4, 3, 2, 8), (2, 4, 1, 2, 4)),
    "MIMO x (B,L,R,H,N), N>2S": ((1, 6, 2, 3, 14), (1, 6, 1, 3, 5)),
    "step x (B,R,H,N), phi (B,1,H,S)": ((3, 2, 4, 12), (3, 1, 4, 2)),
    "phi broadcast, 5 irreducible dims": ((2, 1, 3, 1, 2, 8), (1, 2, 1, 2, 1, 3)),
}


def rope_inputs(name, rng):
    xs, ps = ROPE_CASES[name]
    return rng.standard_normal(xs), rng.uniform(0.0, 2 * np.pi, ps)


@pytest.mark.parametrize("pairing", ["interleaved", "halves"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_apply_rope(name, dtype, pairing):
    x, phi = rope_inputs(name, np.random.default_rng(zlib.crc32((name + pairing).encode())))
    xt, pt = dev(x, dtype), dev(phi, "float32")  # phi travels in float32, as the mixer's does
    y = K.apply_rope(xt, pt, pairing)
    check(rel(y, rr.apply_rope_ref(rounded(x, dtype), phi, pairing)), dtype, f"{name} y")
    same_layout(y, default("apply_rope")(xt, pt, pairing), name)


@pytest.mark.parametrize("pairing", ["interleaved", "halves"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_apply_rope_vjp(name, dtype, pairing):
    rng = np.random.default_rng(zlib.crc32((name + pairing + "vjp").encode()))
    x, phi = rope_inputs(name, rng)
    dy = rng.standard_normal(rr.apply_rope_ref(x, phi, pairing).shape)
    args = (dev(dy, dtype), dev(x, dtype), dev(phi, dtype), pairing)
    got = K.apply_rope_vjp(*args)
    want = rr.apply_rope_vjp_ref(rounded(dy, dtype), rounded(x, dtype), rounded(phi, dtype), pairing)
    assert set(got) == set(want)
    for k in want:
        check(rel(got[k], want[k]), dtype, f"{name} d{k}")
    same_layout(got, default("apply_rope_vjp")(*args), name)


def test_apply_rope_reads_strided_x():
    """x as a non-contiguous view (a slice of the heads of a wider tensor) is read in place."""
    rng = np.random.default_rng(7)
    big = dev(rng.standard_normal((2, 5, 1, 6, 12)), "float32")
    x, phi = big[:, :, :, 1:4], rng.uniform(0, 6, (2, 5, 1, 3, 4))
    for pairing in ("interleaved", "halves"):
        check(rel(K.apply_rope(x, dev(phi, "float32"), pairing),
                  rr.apply_rope_ref(np64(x), phi, pairing)), "float32", pairing)


# ---- fallback and registration ------------------------------------------------------------
def test_float64_runs_the_default_composition():
    rng = np.random.default_rng(3)
    inp = angle_inputs(ANGLE_CASES["init,L=37"], rng)
    phi, _ = K.mamba3_angles(**{k: dev(v, "float64") for k, v in inp.items()})
    assert phi.dtype == torch.float64
    check(circ(phi, r3.mamba3_angles_ref(**inp)[0]), "float64", "phi")
    x, ph = rope_inputs("SISO x (B,L,1,H,N), N>2S", rng)
    y = K.apply_rope(dev(x, "float64"), dev(ph, "float64"))
    assert y.dtype == torch.float64
    check(rel(y, rr.apply_rope_ref(x, ph)), "float64", "y")


def test_backend_lists_the_ops_as_native():
    be = get_backend("torch_triton")
    assert be.available()
    for op in OPS:
        assert op in K.KERNELS and be.ops.is_native(op), op
