"""Data-dependent rotary embedding (the rotation Mamba-3 applies to B and C).

apply_rope(x, phi, pairing="interleaved")
    x: (..., N); phi: (..., S) with 2 * S <= N; the leading dims of x and phi broadcast against
    each other (callers expand dims, e.g. x (B, L, R, H, N) with phi (B, L, 1, H, S)).
    Component pair i < S, (a, b) = (x[2i], x[2i+1]) for pairing "interleaved" (Mamba-3 SISO) or
    (x[i], x[i + N/2]) for pairing "halves" (Mamba-3 MIMO; needs N even), is rotated by phi_i:
        a' = a cos(phi_i) - b sin(phi_i),    b' = a sin(phi_i) + b cos(phi_i)
    Every other component passes through unchanged. Returns (broadcast leading dims, N) in x's
    dtype; the rotation is computed in float32 (float64 when x or phi is float64).

apply_rope_vjp(dy, x, phi, pairing="interleaved") -> {"x": dx, "phi": dphi}
    dy: (broadcast leading dims, N). The rotation is orthogonal, so dx is dy rotated back (by
    -phi_i on each pair, the rest passed through); with (a', b') the rotated pair,
        dphi_i = a' db' - b' da'        (da', db': dy on the pair).
    Each is summed over the dims its argument was broadcast along, so dx has x's shape and dphi
    phi's (e.g. summed over R for phi (B, L, 1, H, S)).
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


def _sum_to_ref(g, shape):
    """Sum g over the dims along which an array of ``shape`` was broadcast to g's shape."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def apply_rope_vjp_ref(dy, x, phi, pairing="interleaved"):
    """The gradient of apply_rope_ref, pair by pair, float64: {"x": dx, "phi": dphi}.

    For each rotated pair (a, b) -> (a', b') by phi_i, with (da', db') = dy on the pair:
        da = da' cos + db' sin,  db = -da' sin + db' cos,  dphi_i = a' db' - b' da'.
    """
    x = np.asarray(x, np.float64)
    phi = np.asarray(phi, np.float64)
    N, S = x.shape[-1], phi.shape[-1]
    lead = np.broadcast_shapes(x.shape[:-1], phi.shape[:-1])
    dy = np.broadcast_to(np.asarray(dy, np.float64), lead + (N,))
    y = apply_rope_ref(x, phi, pairing)
    phib = np.broadcast_to(phi, lead + (S,))
    dx = dy.copy()
    dphi = np.empty(lead + (S,))
    for i, (ia, ib) in enumerate(_pairs(N, S, pairing)):
        c, s = np.cos(phib[..., i]), np.sin(phib[..., i])
        dx[..., ia] = dy[..., ia] * c + dy[..., ib] * s
        dx[..., ib] = -dy[..., ia] * s + dy[..., ib] * c
        dphi[..., i] = y[..., ia] * dy[..., ib] - y[..., ib] * dy[..., ia]
    return {"x": _sum_to_ref(dx, x.shape), "phi": _sum_to_ref(dphi, phi.shape)}


def _sum_to(xp, g, shape):
    """Array-API _sum_to_ref."""
    shape = tuple(shape)
    extra = len(g.shape) - len(shape)
    if extra > 0:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
    return xp.sum(g, axis=axes, keepdims=True) if axes else g


def apply_rope_vjp(xp, dy, x, phi, pairing="interleaved"):
    """Rotary backward: dy (lead, N) -> {"x": dy rotated back (x's shape), "phi": (phi's shape)}.

    Recomputes the rotated pairs from x and phi; memory O(size of dy) in the wide dtype.
    """
    N, S = x.shape[-1], phi.shape[-1]
    wide = xp.float64 if (x.dtype == xp.float64 or phi.dtype == xp.float64) else xp.float32
    lead = _lead_shape(tuple(x.shape[:-1]), tuple(phi.shape[:-1]))
    dyw = xp.broadcast_to(xp.astype(dy, wide), lead + (N,))
    xw = xp.broadcast_to(xp.astype(x, wide), lead + (N,))
    phw = xp.astype(phi, wide)
    c, s = xp.cos(phw), xp.sin(phw)  # (..., S)

    if pairing == "interleaved":
        pairs = xp.reshape(xw[..., : 2 * S], lead + (S, 2))
        dpairs = xp.reshape(dyw[..., : 2 * S], lead + (S, 2))
        a, b, da, db = pairs[..., 0], pairs[..., 1], dpairs[..., 0], dpairs[..., 1]
    else:
        h = N // 2
        a, b, da, db = xw[..., :S], xw[..., h : h + S], dyw[..., :S], dyw[..., h : h + S]
    ya, yb = a * c - b * s, a * s + b * c  # the rotated pair
    dphi = ya * db - yb * da  # (lead, S)
    ga, gb = da * c + db * s, db * c - da * s
    if pairing == "interleaved":
        rot = xp.reshape(xp.stack([ga, gb], axis=-1), lead + (2 * S,))
        dx = xp.concat([rot, dyw[..., 2 * S :]], axis=-1)
    else:
        dx = xp.concat([ga, dyw[..., S:h], gb, dyw[..., h + S :]], axis=-1)
    return {"x": xp.astype(_sum_to(xp, dx, x.shape), x.dtype),
            "phi": xp.astype(_sum_to(xp, dphi, phi.shape), phi.dtype)}


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


def validate_apply_rope_vjp(dy, x, phi, pairing="interleaved"):
    validate_apply_rope(x, phi, pairing)
    op = "apply_rope_vjp"
    if dy is None:
        raise ShapeError(f"{op}: the cotangent 'dy' is required, got None")
    check_floating(op, "dy", dy)
    want = _lead_shape(tuple(x.shape[:-1]), tuple(phi.shape[:-1])) + (x.shape[-1],)
    if tuple(dy.shape) != want:
        raise ShapeError(
            f"{op}: 'dy' must have apply_rope's output shape {want} (x {tuple(x.shape)} and phi "
            f"{tuple(phi.shape)} broadcast), got {tuple(dy.shape)}"
        )


register(OpSpec("apply_rope_vjp", "rope", apply_rope_vjp_ref, apply_rope_vjp, validate_apply_rope_vjp,
                vjp_of="apply_rope"))
