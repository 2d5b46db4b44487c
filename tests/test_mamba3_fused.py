"""mamba3_rope_scan (the Mamba-3 scan with its B/C prologue fused in): the reference VJP against
central finite differences, the default composition against the reference, and the early errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from mamba_core.errors import ShapeError
from mamba_core.ops import REGISTRY
from mamba_core.ops import mamba3_fused as F
from mamba_core.registry import get_backend

CASES = {
    "SISO,G=2,H=4,bias,init": dict(R=1, G=2, H=4, N=8, S=2, bias=True, init=True, pairing="interleaved"),
    "MIMO R=2,halves,G=1": dict(R=2, G=1, H=2, N=8, S=3, bias=True, init=True, pairing="halves"),
    "SISO,no bias,no init,G=H": dict(R=1, G=3, H=3, N=5, S=2, bias=False, init=False, pairing="interleaved"),
}


def make(c, seed=0, Bz=2, L=7, P=3):
    rng = np.random.default_rng(seed)
    R, G, H, N, S = c["R"], c["G"], c["H"], c["N"], c["S"]
    args = dict(
        x=rng.standard_normal((Bz, L, H, P)), dt=np.exp(rng.standard_normal((Bz, L, H)) * 0.3) * 0.3,
        A=-np.exp(rng.standard_normal((Bz, L, H)) * 0.3), trap=rng.uniform(0, 1, (Bz, L, H)),
        B=rng.standard_normal((Bz, L, R, G, N)), C=rng.standard_normal((Bz, L, R, G, N)),
        phi=rng.uniform(0, 2 * np.pi, (Bz, L, H, S)),
    )
    kw = dict(B_bias=rng.standard_normal((R, H, N)) if c["bias"] else None,
              C_bias=rng.standard_normal((R, H, N)) if c["bias"] else None,
              D=rng.standard_normal(H), mimo_x=rng.standard_normal((H, R, P)) if R > 1 else None,
              chunk_size=4, pairing=c["pairing"])
    if c["init"]:
        kw.update(initial_state=rng.standard_normal((Bz, H, P, N)),
                  initial_k=rng.standard_normal((Bz, R, H, N)), initial_v=rng.standard_normal((Bz, H, P)))
    return args, kw


@pytest.mark.parametrize("name", list(CASES))
def test_reference_vjp_matches_finite_differences(name):
    args, kw = make(CASES[name])
    out = F.mamba3_rope_scan_ref(**args, **kw)
    rng = np.random.default_rng(1)
    cot = tuple(rng.standard_normal(o.shape) for o in out)
    grads = F.mamba3_rope_scan_vjp_ref(cot, **args, **kw)
    expected = set(args) | {k for k in ("B_bias", "C_bias", "D", "mimo_x", "initial_state",
                                        "initial_k", "initial_v") if kw.get(k) is not None}
    assert set(grads) == expected

    def loss(a, k):
        return sum(float(np.sum(c * o)) for c, o in zip(cot, F.mamba3_rope_scan_ref(**a, **k)))

    eps = 1e-6
    for name_ in sorted(expected):
        src = args if name_ in args else kw
        d = rng.standard_normal(src[name_].shape)
        plus, minus = {**src, name_: src[name_] + eps * d}, {**src, name_: src[name_] - eps * d}
        fd = ((loss(plus, kw) - loss(minus, kw)) if src is args else (loss(args, plus) - loss(args, minus))) / (2 * eps)
        an = float(np.sum(grads[name_] * d))
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (name_, fd, an)


@pytest.mark.parametrize("name", list(CASES))
def test_default_composition_matches_reference(name):
    args, kw = make(CASES[name])
    be = get_backend("cpu_numpy")
    f32 = lambda v: be.asarray(v.astype(np.float32)) if isinstance(v, np.ndarray) else v  # noqa: E731
    got = be.ops.mamba3_rope_scan(**{k: f32(v) for k, v in args.items()}, **{k: f32(v) for k, v in kw.items()})
    want = F.mamba3_rope_scan_ref(**args, **kw)
    for g, w in zip(got, want):
        assert np.max(np.abs(np.asarray(g) - w)) <= 2e-5 * max(1.0, np.max(np.abs(w)))


def test_registered_with_its_vjp():
    assert REGISTRY["mamba3_rope_scan_vjp"].vjp_of == "mamba3_rope_scan"
    assert REGISTRY["mamba3_rope_scan"].family == "mamba3"


@pytest.mark.parametrize("change,match", [
    (dict(B=(2, 7, 1, 3, 8)), "groups of 'B'"),                    # G = 3 does not divide H = 4
    (dict(phi=(2, 7, 4, 5)), "2 S <= N"),                            # S = 5 pairs of N = 8
    (dict(B_bias=(1, 4, 7)), "B_bias"),                              # wrong N
    (dict(pairing="diagonal"), "pairing"),
])
def test_bad_input_is_named(change, match):
    args, kw = make(CASES["SISO,G=2,H=4,bias,init"])
    for k, v in change.items():
        if k == "pairing":
            kw[k] = v
        elif k in args:
            args[k] = np.zeros(v)
        else:
            kw[k] = np.zeros(v)
    if "B" in change:
        args["C"] = np.zeros(change["B"])
    with pytest.raises(ShapeError, match=match):
        get_backend("cpu_numpy").ops.mamba3_rope_scan(**args, **kw)
