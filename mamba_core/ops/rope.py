"""Data-dependent rotary embedding (the rotation Mamba-3 applies to B and C).

apply_rope(x, phi, pairing="interleaved")
    x: (..., N); phi: (..., S) with 2 * S <= N; the leading dims of x and phi broadcast against
    each other (callers expand dims, e.g. x (B, L, R, H, N) with phi (B, L, 1, H, S)).
    Component pair i < S, (a, b) = (x[2i], x[2i+1]) for pairing "interleaved" (Mamba-3 SISO) or
    (x[i], x[i + N/2]) for pairing "halves" (Mamba-3 MIMO; needs N even), is rotated by phi_i:
        a' = a cos(phi_i) - b sin(phi_i),    b' = a sin(phi_i) + b cos(phi_i)
    Every other component passes through unchanged. Returns (broadcast leading dims, N) in x's
    dtype; the rotation is computed in float32 (float64 when x or phi is float64).
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import check_floating
from mamba_core.ops.spec import OpSpec, register

PAIRINGS = ("interleaved", "halves")


def _pairs(N: int, S: int, pairing: str) -> list[tuple[int, int]]:
    """The (a, b) component indices of the S rotated pairs."""
    if pairing == "interleaved":
        return [(2 * i, 2 * i + 1) for i in range(S)]
    return [(i, i + N // 2) for i in range(S)]


# ---- reference ----------------------------------------------------------------------------
def apply_rope_ref(x, phi, pairing="interleaved"):
    """Rotary embedding, pair by pair, float64."""
    x = np.asarray(x, np.float64)
    phi = np.asarray(phi, np.float64)
    N, S = x.shape[-1], phi.shape[-1]
    lead = np.broadcast_shapes(x.shape[:-1], phi.shape[:-1])
    out = np.broadcast_to(x, lead + (N,)).copy()
    phi = np.broadcast_to(phi, lead + (S,))
    for i, (ia, ib) in enumerate(_pairs(N, S, pairing)):
        a, b = out[..., ia].copy(), out[..., ib].copy()
        c, s = np.cos(phi[..., i]), np.sin(phi[..., i])
        out[..., ia] = a * c - b * s
        out[..., ib] = a * s + b * c
    return out


# ---- default composition ------------------------------------------------------------------
def _lead_shape(a: tuple, b: tuple) -> tuple:
    """Broadcast two shapes (array-API rules), without asking the namespace."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return tuple(max(p, q) if min(p, q) != 0 else 0 for p, q in zip(a, b))


def apply_rope(xp, x, phi, pairing="interleaved"):
    """Rotate S component pairs of x (..., N) by phi (..., S); pairing "interleaved" or "halves"."""
    N, S = x.shape[-1], phi.shape[-1]
    wide = xp.float64 if (x.dtype == xp.float64 or phi.dtype == xp.float64) else xp.float32
    lead = _lead_shape(tuple(x.shape[:-1]), tuple(phi.shape[:-1]))
    xw = xp.astype(x, wide)
    phw = xp.astype(phi, wide)
    c, s = xp.cos(phw), xp.sin(phw)  # (..., S)

    def full(a):  # broadcast a pass-through slice to the output's leading dims
        return xp.broadcast_to(a, lead + (a.shape[-1],))

    if pairing == "interleaved":
        pairs = xp.reshape(xw[..., : 2 * S], tuple(x.shape[:-1]) + (S, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        rot = xp.stack([a * c - b * s, a * s + b * c], axis=-1)  # (lead, S, 2)
        parts = [xp.reshape(rot, lead + (2 * S,)), full(xw[..., 2 * S :])]
    else:
        h = N // 2
        a, b = xw[..., :S], xw[..., h : h + S]
        parts = [full(a * c - b * s), full(xw[..., S:h]), full(a * s + b * c), full(xw[..., h + S :])]
    return xp.astype(xp.concat(parts, axis=-1), x.dtype)


# ---- validation ---------------------------------------------------------------------------
def validate_apply_rope(x, phi, pairing="interleaved"):
    op = "apply_rope"
    if pairing not in PAIRINGS:
        raise ShapeError(
            f"{op}: 'pairing' must be one of {PAIRINGS} (interleaved: Mamba-3 SISO pairs (2i, 2i+1); "
            f"halves: Mamba-3 MIMO pairs (i, i + N/2)), got {pairing!r}"
        )
    for name, arr in (("x", x), ("phi", phi)):
        if arr is None:
            raise ShapeError(f"{op}: argument {name!r} is required, got None")
        if len(getattr(arr, "shape", ())) < 1:
            raise ShapeError(f"{op}: {name!r} must have at least one dim ((..., N) / (..., S)), "
                             f"got shape {tuple(getattr(arr, 'shape', ()))}")
        check_floating(op, name, arr)
    N, S = x.shape[-1], phi.shape[-1]
    if 2 * S > N:
        raise ShapeError(
            f"{op}: phi has S={S} angles but x has N={N} components; expected 2*S <= N "
            f"(x shape {tuple(x.shape)}, phi shape {tuple(phi.shape)})"
        )
    if pairing == "halves" and N % 2:
        raise ShapeError(f"{op}: pairing 'halves' pairs component i with i + N/2 and needs N even, got N={N}")
    xs, ps = tuple(x.shape[:-1]), tuple(phi.shape[:-1])
    n = max(len(xs), len(ps))
    for p, q in zip((1,) * (n - len(xs)) + xs, (1,) * (n - len(ps)) + ps):
        if p != q and p != 1 and q != 1:
            raise ShapeError(
                f"{op}: the leading dims of x (..., N) and phi (..., S) must broadcast, got x shape "
                f"{tuple(x.shape)} and phi shape {tuple(phi.shape)}; expand phi with size-1 dims "
                "(e.g. phi (B, L, 1, H, S) for x (B, L, R, H, N))"
            )


register(OpSpec("apply_rope", "rope", apply_rope_ref, apply_rope, validate_apply_rope))
