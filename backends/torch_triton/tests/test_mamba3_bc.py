"""torch_triton's Mamba-3 B/C prologue kernels (kernels/mamba3_bc.py) against the float64
composition they replace (the core's heads + bias, the rotation's reference and their VJPs), in
the Triton interpreter (TRITON_INTERPRET=1) or on a GPU.

Cases: G = 1 and G = H / 2, ranks R = 1 and 3, "interleaved" and "halves" pairings, S = 0
(nothing rotated), S < N / 2 with N odd (pass-through columns), biases present or absent, L not a
multiple of the token block, bf16 inputs; each with every head of a group in one program
(HB = None, the VJP's group sums complete in the kernel) and with blocks of 1 or 2 heads (the
VJP's float32 partials summed by torch; 2 heads with H / G = 3 falls back to 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("triton", reason="triton is not installed")

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

import numpy as np  # noqa: E402

from mamba_core.ops import mamba3_fused as core  # noqa: E402
from mamba_core.ops import rope  # noqa: E402

from mamba_backend_torch_triton.kernels import mamba3_bc as BC  # noqa: E402
from mamba_backend_torch_triton.kernels.mamba3_bc import bc_heads_rope, bc_heads_rope_vjp  # noqa: E402

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

CASES = {
    "G=1,R=1,bias": dict(Bz=2, L=37, R=1, G=1, H=4, N=16, S=4, pairing="interleaved", bias=True),
    "G=2,R=2,halves,N=12": dict(Bz=1, L=20, R=2, G=2, H=4, N=12, S=3, pairing="halves", bias=True),
    "R=3,no bias": dict(Bz=1, L=9, R=3, G=1, H=2, N=8, S=4, pairing="interleaved", bias=False),
    "S=0": dict(Bz=2, L=5, R=1, G=2, H=2, N=10, S=0, pairing="interleaved", bias=True),
    "N odd, halves, no bias": dict(Bz=1, L=17, R=1, G=1, H=3, N=9, S=2, pairing="halves", bias=False),
}


def _case(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    Bz, L, R, G, H, N, S = (c[k] for k in ("Bz", "L", "R", "G", "H", "N", "S"))
    B = torch.randn(Bz, L, R, G, N, dtype=torch.float64, generator=g)
    C = torch.randn(Bz, L, R, G, N, dtype=torch.float64, generator=g)
    phi = torch.rand(Bz, L, H, S, dtype=torch.float64, generator=g) * 6.283
    bb = torch.randn(R, H, N, dtype=torch.float64, generator=g) if c["bias"] else None
    cb = torch.randn(R, H, N, dtype=torch.float64, generator=g) if c["bias"] else None
    dBh = torch.randn(Bz, L, R, H, N, dtype=torch.float64, generator=g)
    dCh = torch.randn(Bz, L, R, H, N, dtype=torch.float64, generator=g)
    return B, C, phi, bb, cb, dBh, dCh


def _reference(c, B, C, phi, bb, cb, dBh, dCh):
    """Forward and gradients of the composition in float64: the core's heads / heads_vjp and the
    rotation's reference and reference VJP (mamba_core.ops.rope)."""
    np64 = lambda t: None if t is None else t.numpy()  # noqa: E731
    ph = np64(phi)[:, :, None]  # (B, L, 1, H, S): the same angle for every rank
    outs, grads, dphi = [], [], 0.0
    for v, bias, dv in ((B, bb, dBh), (C, cb, dCh)):
        vb = core.heads(np, np64(v), c["H"], np64(bias))
        outs.append(torch.from_numpy(rope.apply_rope_ref(vb, ph, c["pairing"])))
        g = rope.apply_rope_vjp_ref(np64(dv), vb, ph, c["pairing"])
        dgroup, dbias = core.heads_vjp(np, g["x"], c["G"])
        grads.append((torch.from_numpy(dgroup), None if bias is None else torch.from_numpy(dbias)))
        dphi = dphi + g["phi"][:, :, 0]
    (gB, gbb), (gC, gcb) = grads
    return outs[0], outs[1], (gB, gC, torch.from_numpy(np.asarray(dphi)), gbb, gcb)


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("hb", [None, 1, 2], ids=["HB=all", "HB=1", "HB=2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(CASES))
def test_bc_heads_rope_and_vjp_match_the_composition(name, dtype, hb, monkeypatch):
    for which in ("bc", "bc_vjp", "interpret"):
        monkeypatch.setitem(BC.CONFIG, which, dict(BC.CONFIG[which], HB=hb))
    c = CASES[name]
    B, C, phi, bb, cb, dBh, dCh = _case(c)
    Bh_r, Ch_r, (gB, gC, gphi, gbb, gcb) = _reference(c, B, C, phi, bb, cb, dBh, dCh)
    on = lambda t, dt=dtype: None if t is None else t.to(device=DEV, dtype=dt)  # noqa: E731
    # biases and angles stay float32 (as the mixer passes them); B, C and cotangents in dtype
    Bh, Ch = bc_heads_rope(on(B), on(C), on(phi, torch.float32), on(bb, torch.float32),
                           on(cb, torch.float32), c["H"], c["pairing"])
    tol = 2e-6 if dtype == torch.float32 else 2e-2
    assert Bh.dtype == Ch.dtype == dtype and Bh.shape == Bh_r.shape
    assert _rel(Bh, Bh_r) < tol and _rel(Ch, Ch_r) < tol
    dB, dC, dbb, dcb, dphi = bc_heads_rope_vjp(on(dBh), on(dCh), on(B), on(C), on(phi, torch.float32),
                                               on(bb, torch.float32), on(cb, torch.float32), c["pairing"])
    assert dB.shape == B.shape and dB.dtype == dtype and dphi.shape == phi.shape
    assert _rel(dB, gB) < tol and _rel(dC, gC) < tol
    if c["S"]:
        assert dphi.dtype == torch.float32 and _rel(dphi, gphi) < (2e-6 if dtype == torch.float32 else 3e-2)
    if c["bias"]:
        assert dbb.dtype == torch.float32 and _rel(dbb, gbb) < tol and _rel(dcb, gcb) < tol
    else:
        assert dbb is None and dcb is None
