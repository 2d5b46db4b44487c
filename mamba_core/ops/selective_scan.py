"""The Mamba-1 selective scan, with its recurrent step.

selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
               initial_state=None)
    u, delta, z: (B, L, E); A: (E, N) negative reals (already -exp(A_log)); B, C: (B, L, G, N)
    with E % G == 0, channel e reading group e // (E // G); D, delta_bias: (E,);
    initial_state: (B, E, N) or None (zeros).
        dt_t = delta_t + delta_bias;  dt_t = softplus(dt_t) when delta_softplus
        h_t[e, n] = exp(dt_t[e] A[e, n]) h_{t-1}[e, n] + dt_t[e] B_t[g(e), n] u_t[e]
        y_t[e] = sum_n h_t[e, n] C_t[g(e), n] + D[e] u_t[e];   y_t *= silu(z_t) when z is given
    Returns (y (B, L, E) in u's dtype, final_state h_L (B, E, N) in float32, or float64 when u
    is float64). The recurrence runs in that same wide dtype whatever the input dtype.

selective_scan_step(u, delta, A, B, C, state, D=None, z=None, delta_bias=None,
                    delta_softplus=False)
    One token: u, delta, z: (B, E); B, C: (B, G, N); state: (B, E, N).
    Returns (y (B, E) in u's dtype, new_state (B, E, N) in the wide dtype).

The default composition is a chunked scan: time is cut into chunks of ``CHUNK`` tokens; inside a
chunk an inclusive Hillis-Steele scan (log2(CHUNK) vectorised rounds) composes the affine maps
h -> a_t h + b_t, where a_t = exp(dt_t A) is in (0, 1]; the state is carried from chunk to chunk.
Only products of decays in (0, 1] and sums appear -- never exp of a long cumulative sum -- so
strong decay over long sequences underflows harmlessly to exact zeros instead of overflowing.
Memory is bounded by (B, CHUNK, E, N) whatever L is.
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims, check_divides, check_floating
from mamba_core.ops.activations import silu, silu_ref, softplus, softplus_ref
from mamba_core.ops.spec import OpSpec, register

#: tokens per chunk of the default composition (memory ~ B * CHUNK * E * N per temporary)
CHUNK = 16


# ---- references ---------------------------------------------------------------------------
def _dt_ref(delta, delta_bias, delta_softplus):
    dt = np.asarray(delta, np.float64)
    if delta_bias is not None:
        dt = dt + np.asarray(delta_bias, np.float64)
    return softplus_ref(dt) if delta_softplus else dt


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None):
    """Selective scan as an explicit loop over time, float64 (see the module docstring)."""
    u = np.asarray(u, np.float64)
    A = np.asarray(A, np.float64)
    Bm = np.asarray(B, np.float64)
    Cm = np.asarray(C, np.float64)
    Bsz, L, E = u.shape
    N = A.shape[1]
    G = Bm.shape[2]
    group = np.arange(E) // (E // G)  # the group each channel reads
    dt = _dt_ref(delta, delta_bias, delta_softplus)
    h = np.zeros((Bsz, E, N)) if initial_state is None else np.asarray(initial_state, np.float64).copy()
    y = np.empty((Bsz, L, E))
    for t in range(L):
        Bt = Bm[:, t][:, group]  # (B, E, N)
        Ct = Cm[:, t][:, group]
        h = np.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * Bt * u[:, t, :, None]
        y[:, t] = (h * Ct).sum(-1)
    if D is not None:
        y = y + np.asarray(D, np.float64) * u
    if z is not None:
        y = y * silu_ref(z)
    return y, h


def selective_scan_step_ref(u, delta, A, B, C, state, D=None, z=None, delta_bias=None,
                            delta_softplus=False):
    """One token of the selective scan, float64."""
    y, h = selective_scan_ref(
        np.asarray(u)[:, None], np.asarray(delta)[:, None], A, np.asarray(B)[:, None],
        np.asarray(C)[:, None], D, None if z is None else np.asarray(z)[:, None], delta_bias,
        delta_softplus, state,
    )
    return y[:, 0], h


# ---- default compositions -----------------------------------------------------------------
def _wide(xp, dtype):
    """float64 stays float64; everything narrower computes in float32."""
    return xp.float64 if dtype == xp.float64 else xp.float32


def _dt(xp, delta, delta_bias, delta_softplus, wide):
    dt = xp.astype(delta, wide)
    if delta_bias is not None:
        dt = dt + xp.astype(delta_bias, wide)
    return softplus(xp, dt) if delta_softplus else dt


def _scan_chunk(xp, a, b):
    """Inclusive scan of the affine maps h -> a_t h + b_t along axis 1 (Hillis-Steele).

    a, b: (B, Q, ...). Returns (A_t, B_t) with h_t = A_t h_{-1} + B_t, where A_t is the product
    of a_0..a_t and B_t the input accumulated and decayed from the chunk start to t.
    """
    Q = a.shape[1]
    k = 1
    while k < Q:
        # the element at t (covering (t-k, t]) absorbs the one at t-k (covering (t-2k, t-k])
        b = xp.concat([b[:, :k], a[:, k:] * b[:, :-k] + b[:, k:]], axis=1)
        a = xp.concat([a[:, :k], a[:, k:] * a[:, :-k]], axis=1)
        k *= 2
    return a, b


def _selective_scan(xp, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    initial_state=None, chunk=CHUNK):
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    Eg = E // G
    wide = _wide(xp, u.dtype)
    # channels split as (G, E/G) so each group's B and C broadcast over its channels
    uw = xp.reshape(xp.astype(u, wide), (Bsz, L, G, Eg, 1))
    dt = xp.reshape(_dt(xp, delta, delta_bias, delta_softplus, wide), (Bsz, L, G, Eg, 1))
    Aw = xp.reshape(xp.astype(A, wide), (G, Eg, N))
    Bw = xp.expand_dims(xp.astype(B, wide), axis=3)  # (B, L, G, 1, N)
    Cw = xp.expand_dims(xp.astype(C, wide), axis=3)
    if initial_state is None:
        h = xp.zeros((Bsz, G, Eg, N), dtype=wide)
    else:
        h = xp.reshape(xp.astype(initial_state, wide), (Bsz, G, Eg, N))
    ys = []
    for s in range(0, L, chunk):
        e = min(s + chunk, L)
        a = xp.exp(dt[:, s:e] * Aw)  # (B, Q, G, Eg, N), in (0, 1]
        b = dt[:, s:e] * Bw[:, s:e] * uw[:, s:e]
        acc_a, acc_b = _scan_chunk(xp, a, b)
        hs = acc_a * xp.expand_dims(h, axis=1) + acc_b  # states h_t of the chunk
        ys.append(xp.sum(hs * Cw[:, s:e], axis=-1))  # (B, Q, G, Eg)
        h = hs[:, -1]
    if not ys:  # L == 0
        y = xp.zeros((Bsz, 0, E), dtype=wide)
    else:
        y = xp.reshape(xp.concat(ys, axis=1) if len(ys) > 1 else ys[0], (Bsz, L, E))
    y = _skip_and_gate(xp, y, u, D, z, wide)
    return xp.astype(y, u.dtype), xp.reshape(h, (Bsz, E, N))


def _skip_and_gate(xp, y, u, D, z, wide):
    if D is not None:
        y = y + xp.astype(D, wide) * xp.astype(u, wide)
    if z is not None:
        y = y * silu(xp, xp.astype(z, wide))
    return y


def selective_scan(xp, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None):
    """Selective scan. u, delta, z: (B, L, E); A: (E, N); B, C: (B, L, G, N) -> (y, h_L)."""
    return _selective_scan(xp, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def selective_scan_step(xp, u, delta, A, B, C, state, D=None, z=None, delta_bias=None,
                        delta_softplus=False):
    """One token. u, delta, z: (B, E); B, C: (B, G, N); state: (B, E, N) -> (y, new_state)."""
    Bsz, E = u.shape
    G, N = B.shape[1], B.shape[2]
    Eg = E // G
    wide = _wide(xp, u.dtype)
    uw = xp.reshape(xp.astype(u, wide), (Bsz, G, Eg, 1))
    dt = xp.reshape(_dt(xp, delta, delta_bias, delta_softplus, wide), (Bsz, G, Eg, 1))
    Aw = xp.reshape(xp.astype(A, wide), (G, Eg, N))
    Bw = xp.expand_dims(xp.astype(B, wide), axis=2)  # (B, G, 1, N)
    Cw = xp.expand_dims(xp.astype(C, wide), axis=2)
    h = xp.reshape(xp.astype(state, wide), (Bsz, G, Eg, N))
    h = xp.exp(dt * Aw) * h + dt * Bw * uw
    y = xp.reshape(xp.sum(h * Cw, axis=-1), (Bsz, E))
    y = _skip_and_gate(xp, y, u, D, z, wide)
    return xp.astype(y, u.dtype), xp.reshape(h, (Bsz, E, N))


# ---- validation ---------------------------------------------------------------------------
def _check_common(op, d, A, D, delta_bias, delta_softplus, floats):
    d.check("A", A, ("E", "N"))
    d.check("D", D, ("E",), optional=True)
    d.check("delta_bias", delta_bias, ("E",), optional=True)
    check_divides(
        op, "E (channels) by G (groups of B/C)", d["E"], d["G"],
        "B and C carry G groups; E must be a multiple of G (channel e reads group e // (E // G)).",
    )
    if not isinstance(delta_softplus, (bool, np.bool_)):
        raise ShapeError(f"{op}: 'delta_softplus' must be a bool, got {delta_softplus!r}")
    for name, arr in floats.items():
        check_floating(op, name, arr)


def validate_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, initial_state=None):
    op = "selective_scan"
    d = Dims(op)
    d.check("u", u, ("B", "L", "E"))
    d.check("delta", delta, ("B", "L", "E"))
    d.check("B", B, ("B", "L", "G", "N"))
    d.check("C", C, ("B", "L", "G", "N"))
    d.check("z", z, ("B", "L", "E"), optional=True)
    _check_common(op, d, A, D, delta_bias, delta_softplus,
                  dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    d.check("initial_state", initial_state, ("B", "E", "N"), optional=True)


def validate_selective_scan_step(u, delta, A, B, C, state, D=None, z=None, delta_bias=None,
                                 delta_softplus=False):
    op = "selective_scan_step"
    d = Dims(op)
    d.check("u", u, ("B", "E"))
    d.check("delta", delta, ("B", "E"))
    d.check("B", B, ("B", "G", "N"))
    d.check("C", C, ("B", "G", "N"))
    d.check("z", z, ("B", "E"), optional=True)
    _check_common(op, d, A, D, delta_bias, delta_softplus,
                  dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    d.check("state", state, ("B", "E", "N"))


register(OpSpec("selective_scan", "selective_scan", selective_scan_ref, selective_scan,
                validate_selective_scan))
register(
    OpSpec(
        "selective_scan_step",
        "selective_scan",
        selective_scan_step_ref,
        selective_scan_step,
        validate_selective_scan_step,
        step_of="selective_scan",
    )
)
