"""Mamba-3's scan with its B/C prologue fused in: group-to-head broadcast, bias, rotation.

mamba3_rope_scan(x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None, mimo_x=None,
                 chunk_size=64, initial_state=None, initial_k=None, initial_v=None,
                 pairing="interleaved")
    x: (B, L, H, P); dt, A, trap: (B, L, H); B, C: (B, L, R, G, N) per group (normed, neither
    biased nor rotated), G dividing H: head h reads group h // (H / G); phi: (B, L, H, S) with
    2 S <= N (mamba3_angles' output); B_bias, C_bias: (R, H, N) or None (zeros); D, mimo_x,
    chunk_size, initial_state, initial_k, initial_v as in mamba3_scan (initial_k is a rotated B:
    the cache's k_state). pairing: apply_rope's ("interleaved" for SISO, "halves" for MIMO).
        Bhat = apply_rope(heads(B) + B_bias, phi[:, :, None], pairing)     (B, L, R, H, N)
        Chat = apply_rope(heads(C) + C_bias, phi[:, :, None], pairing)
        (y, final_state, final_k, final_v) = mamba3_scan(x, dt, A, trap, Bhat, Chat, D, mimo_x, ...)
    final_k is Bhat[:, -1] (rotated, per head), so a decode can continue from the outputs.
    A backend fuses this to read B and C once per group instead of writing and reading the per-head
    rotated copies (2 x B L R H N): the Mamba-3 mixer's forward calls it when the backend has it
    natively, else the separate ops (``mamba_core.models.mamba3``).

mamba3_rope_scan_vjp(cotangent, <the same arguments>), cotangent as mamba3_scan_vjp's
    -> dict: x, dt, A, trap, B, C (per group: summed over each group's heads), phi (summed over
    the ranks) and, when given, B_bias, C_bias (summed over batch and time), D, mimo_x,
    initial_state, initial_k, initial_v.

The reference and the default composition are that composition (``compose``/``compose_vjp``),
over the references and over the default compositions of apply_rope and mamba3_scan; a native
backend may reuse them over its own kernels for the parts it does not fuse.
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops import mamba3 as m3
from mamba_core.ops import rope
from mamba_core.ops._checks import check_floating
from mamba_core.ops.spec import OpSpec, register

_SCAN_KW = ("D", "mimo_x", "chunk_size", "initial_state", "initial_k", "initial_v")


def heads(xp, v, H: int, bias=None):
    """lead + (R, G, N) per group -> lead + (R, H, N) per head (head h reads group h // (H / G)),
    + bias (R, H, N) in v's dtype."""
    lead, (R, G, N) = tuple(v.shape[:-3]), tuple(v.shape[-3:])
    if G != H:
        v = xp.broadcast_to(xp.expand_dims(v, axis=-2), lead + (R, G, H // G, N))
    v = xp.reshape(v, lead + (R, H, N))
    return v if bias is None else v + xp.astype(bias, v.dtype)


def heads_vjp(xp, g, G: int):
    """The reverse of ``heads``: g lead + (R, H, N) -> (dv lead + (R, G, N): each group's heads
    summed, dbias (R, H, N): summed over the leading dims)."""
    lead, (R, H, N) = tuple(g.shape[:-3]), tuple(g.shape[-3:])
    dv = xp.sum(xp.reshape(g, lead + (R, G, H // G, N)), axis=-2)
    return dv, xp.sum(g, axis=tuple(range(len(lead))))


def compose(xp, rope_fn, scan_fn, x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None,
            mimo_x=None, chunk_size=64, initial_state=None, initial_k=None, initial_v=None,
            pairing="interleaved"):
    """mamba3_rope_scan as its definition: heads, bias, rotation, then the scan.

    rope_fn(x, phi, pairing) and scan_fn(x, dt, A, trap, B, C, **kw) are an apply_rope and a
    mamba3_scan (references, default compositions or a backend's kernels)."""
    H = x.shape[2]
    ph = xp.expand_dims(phi, axis=2)  # (B, L, 1, H, S): the same angle for every rank
    Bh = rope_fn(heads(xp, B, H, B_bias), ph, pairing)
    Ch = rope_fn(heads(xp, C, H, C_bias), ph, pairing)
    return scan_fn(x, dt, A, trap, Bh, Ch, D=D, mimo_x=mimo_x, chunk_size=chunk_size,
                   initial_state=initial_state, initial_k=initial_k, initial_v=initial_v)


def compose_vjp(xp, rope_fn, rope_vjp_fn, scan_vjp_fn, cotangent, x, dt, A, trap, B, C, phi,
                B_bias=None, C_bias=None, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                initial_k=None, initial_v=None, pairing="interleaved"):
    """mamba3_rope_scan_vjp as the chain of its parts' VJPs (recomputing the rotated B and C)."""
    H, G = x.shape[2], B.shape[3]
    ph = xp.expand_dims(phi, axis=2)
    Bb, Cb = heads(xp, B, H, B_bias), heads(xp, C, H, C_bias)
    Bh, Ch = rope_fn(Bb, ph, pairing), rope_fn(Cb, ph, pairing)
    gs = scan_vjp_fn(cotangent, x, dt, A, trap, Bh, Ch, D=D, mimo_x=mimo_x, chunk_size=chunk_size,
                     initial_state=initial_state, initial_k=initial_k, initial_v=initial_v)
    gb = rope_vjp_fn(gs.pop("B"), Bb, ph, pairing)
    gc = rope_vjp_fn(gs.pop("C"), Cb, ph, pairing)
    dB, dBbias = heads_vjp(xp, gb["x"], G)
    dC, dCbias = heads_vjp(xp, gc["x"], G)
    dphi = gb["phi"][:, :, 0] + gc["phi"][:, :, 0]
    out = dict(gs)
    out["B"], out["C"] = xp.astype(dB, B.dtype), xp.astype(dC, C.dtype)
    out["phi"] = xp.astype(dphi, phi.dtype)
    if B_bias is not None:
        out["B_bias"] = xp.astype(dBbias, B_bias.dtype)
    if C_bias is not None:
        out["C_bias"] = xp.astype(dCbias, C_bias.dtype)
    return out


# ---- reference (float64, over the references) ----------------------------------------------
def _np64(a):
    return None if a is None else np.asarray(a, np.float64)


def _rope_ref(x, phi, pairing):
    return rope.apply_rope_ref(x, phi, pairing)


def mamba3_rope_scan_ref(x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None, mimo_x=None,
                         chunk_size=64, initial_state=None, initial_k=None, initial_v=None,
                         pairing="interleaved"):
    """heads + bias + apply_rope_ref, then mamba3_scan_ref, float64."""
    return compose(np, _rope_ref, m3.mamba3_scan_ref, _np64(x), _np64(dt), _np64(A), _np64(trap),
                   _np64(B), _np64(C), _np64(phi), _np64(B_bias), _np64(C_bias), D, mimo_x,
                   chunk_size, initial_state, initial_k, initial_v, pairing)


def mamba3_rope_scan_vjp_ref(cotangent, x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None,
                             D=None, mimo_x=None, chunk_size=64, initial_state=None,
                             initial_k=None, initial_v=None, pairing="interleaved"):
    """The chain of apply_rope_vjp_ref and mamba3_scan_vjp_ref, float64."""
    return compose_vjp(np, _rope_ref, rope.apply_rope_vjp_ref, m3.mamba3_scan_vjp_ref, cotangent,
                       _np64(x), _np64(dt), _np64(A), _np64(trap), _np64(B), _np64(C), _np64(phi),
                       _np64(B_bias), _np64(C_bias), D, mimo_x, chunk_size, initial_state,
                       initial_k, initial_v, pairing)


# ---- default composition (over the default compositions) -----------------------------------
def mamba3_rope_scan(xp, x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None, mimo_x=None,
                     chunk_size=64, initial_state=None, initial_k=None, initial_v=None,
                     pairing="interleaved"):
    """mamba3_scan after heads + bias + apply_rope. B, C: (B, L, R, G, N); phi: (B, L, H, S); biases: (R, H, N)."""
    return compose(xp, lambda v, p, pr: rope.apply_rope(xp, v, p, pr),
                   lambda *a, **k: m3.mamba3_scan(xp, *a, **k), x, dt, A, trap, B, C, phi,
                   B_bias, C_bias, D, mimo_x, chunk_size, initial_state, initial_k, initial_v,
                   pairing)


def mamba3_rope_scan_vjp(xp, cotangent, x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None,
                         D=None, mimo_x=None, chunk_size=64, initial_state=None, initial_k=None,
                         initial_v=None, pairing="interleaved"):
    """mamba3_rope_scan backward: cotangent as mamba3_scan_vjp's -> dict (B, C per group; phi; biases)."""
    return compose_vjp(xp, lambda v, p, pr: rope.apply_rope(xp, v, p, pr),
                       lambda dy, v, p, pr: rope.apply_rope_vjp(xp, dy, v, p, pr),
                       lambda *a, **k: m3.mamba3_scan_vjp(xp, *a, **k), cotangent, x, dt, A, trap,
                       B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state, initial_k,
                       initial_v, pairing)


# ---- validation ---------------------------------------------------------------------------
def _validate(op, x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state,
              initial_k, initial_v, pairing):
    d = m3.check_scan_args(op, x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state,
                           initial_k, initial_v, bc_dims=("B", "L", "R", "G", "N"))
    d.check("phi", phi, ("B", "L", "H", "S"))
    if d["H"] % d["G"]:
        raise ShapeError(f"{op}: the groups of 'B' and 'C' (G={d['G']}, shape {tuple(B.shape)}) must "
                         f"divide the heads of 'x' (H={d['H']}, shape {tuple(x.shape)})")
    if pairing not in rope.PAIRINGS:
        raise ShapeError(f"{op}: 'pairing' must be one of {rope.PAIRINGS}, got {pairing!r}")
    if 2 * d["S"] > d["N"] or (pairing == "halves" and d["N"] % 2):
        raise ShapeError(f"{op}: 'phi' rotates S={d['S']} pairs of 'B'/'C' components (N={d['N']}): "
                         f"needs 2 S <= N{' and N even for pairing halves' if pairing == 'halves' else ''}")
    d.check("B_bias", B_bias, ("R", "H", "N"), optional=True)
    d.check("C_bias", C_bias, ("R", "H", "N"), optional=True)
    for name, arr in dict(x=x, dt=dt, A=A, trap=trap, B=B, C=C, phi=phi, B_bias=B_bias,
                          C_bias=C_bias, D=D, mimo_x=mimo_x, initial_state=initial_state,
                          initial_k=initial_k, initial_v=initial_v).items():
        check_floating(op, name, arr)
    return d


def validate_mamba3_rope_scan(x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None,
                              mimo_x=None, chunk_size=64, initial_state=None, initial_k=None,
                              initial_v=None, pairing="interleaved"):
    _validate("mamba3_rope_scan", x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size,
              initial_state, initial_k, initial_v, pairing)


def validate_mamba3_rope_scan_vjp(cotangent, x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None,
                                  D=None, mimo_x=None, chunk_size=64, initial_state=None,
                                  initial_k=None, initial_v=None, pairing="interleaved"):
    op = "mamba3_rope_scan_vjp"
    d = _validate(op, x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size,
                  initial_state, initial_k, initial_v, pairing)
    m3.check_scan_cotangent(op, d, cotangent)


register(OpSpec("mamba3_rope_scan", "mamba3", mamba3_rope_scan_ref, mamba3_rope_scan,
                validate_mamba3_rope_scan))
register(OpSpec("mamba3_rope_scan_vjp", "mamba3", mamba3_rope_scan_vjp_ref, mamba3_rope_scan_vjp,
                validate_mamba3_rope_scan_vjp, vjp_of="mamba3_rope_scan"))
