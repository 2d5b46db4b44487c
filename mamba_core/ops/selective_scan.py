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

selective_scan_vjp(cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, initial_state=None)
    cotangent = (dy (B, L, E), dfinal_state (B, E, N)), either may be None (zero). Returns a dict
    of gradients keyed by argument name: u, delta, A, B, C always; D, z, delta_bias,
    initial_state when given; each with its argument's shape (and dtype, for the default).
    B and C gradients sum over the channels of each group. softplus' derivative follows torch:
    sigmoid(x) for x <= 20, 1 above. The reference is the reverse-time loop; the default
    recomputes the forward states chunk by chunk (see ``selective_scan_vjp``'s docstring for its
    memory).
"""

from __future__ import annotations

import math

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims, check_divides, check_floating
from mamba_core.ops.activations import (
    SOFTPLUS_THRESHOLD,
    sigmoid,
    sigmoid_ref,
    silu,
    silu_ref,
    softplus,
    softplus_ref,
)
from mamba_core.ops.spec import OpSpec, register
from mamba_core.ops._dtypes import wide as _wide

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


# ---- gradients (VJP) ----------------------------------------------------------------------
# Forward, named for the backward:  raw_t = delta_t + delta_bias;  dt_t = softplus(raw_t) or raw_t;
# a_t = exp(dt_t A);  h_t = a_t h_{t-1} + dt_t B_t u_t;  s_t = sum_n h_t C_t;  p_t = s_t + D u_t;
# y_t = p_t silu(z_t).  Backward, with dy'_t = dy_t silu(z_t) and the adjoint state
# g_t = dL/dh_t = C_t dy'_t + a_{t+1} g_{t+1}  (g_{L-1} starts from dfinal_state):
#   dz_t = dy_t p_t silu'(z_t);  dD = sum_t dy'_t u_t;  dC_t = sum_{e in group} dy'_t h_t;
#   ddt_t = sum_n g_t (A a_t h_{t-1} + B_t u_t);  dA = sum_t g_t a_t h_{t-1} dt_t;
#   dB_t = sum_{e in group} g_t dt_t u_t;  du_t = D dy'_t + sum_n g_t dt_t B_t;
#   ddelta_t = ddt_t softplus'(raw_t) (sigmoid(raw_t), or 1 above the threshold 20; 1 without
#   softplus);  ddelta_bias = sum_t ddelta_t;  dinitial_state = a_0 g_0.
def _dsilu_ref(z):
    s = sigmoid_ref(z)
    return s * (1.0 + z * (1.0 - s))


def _dsoftplus_ref(raw):
    """torch's rule: sigmoid below the threshold, 1 above it (where softplus(x) = x)."""
    return np.where(raw > SOFTPLUS_THRESHOLD, 1.0, sigmoid_ref(raw))


def _group_sum_ref(x, G):
    """(B, E, N) per channel -> (B, G, N): channel e belongs to group e // (E // G)."""
    Bsz, E, N = x.shape
    return x.reshape(Bsz, G, E // G, N).sum(axis=2)


def _split_cotangent(cotangent):
    if not isinstance(cotangent, (tuple, list)) or len(cotangent) != 2:
        raise ShapeError(
            "selective_scan_vjp: 'cotangent' must be the pair (dy, dfinal_state) matching the "
            f"forward's output (y, final_state), either may be None; got {type(cotangent).__name__}"
            + (f" of length {len(cotangent)}" if isinstance(cotangent, (tuple, list)) else "")
        )
    return cotangent[0], cotangent[1]


def selective_scan_vjp_ref(cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, initial_state=None):
    """Selective scan VJP: a reverse-time loop over the reference recurrence, float64.

    cotangent = (dy (B, L, E) or None, dfinal_state (B, E, N) or None). Returns a dict with the
    gradients of u, delta, A, B, C and, when given, D, z, delta_bias, initial_state (float64,
    each with its argument's shape). Every state h_t is kept: memory O(B L E N).
    """
    dy, dhL = _split_cotangent(cotangent)
    u = np.asarray(u, np.float64)
    A = np.asarray(A, np.float64)
    Bm = np.asarray(B, np.float64)
    Cm = np.asarray(C, np.float64)
    Bsz, L, E = u.shape
    N = A.shape[1]
    G = Bm.shape[2]
    group = np.arange(E) // (E // G)
    raw = np.asarray(delta, np.float64)
    if delta_bias is not None:
        raw = raw + np.asarray(delta_bias, np.float64)
    dt = softplus_ref(raw) if delta_softplus else raw

    # forward again, keeping every state: hs[:, t] = h_{t-1}, hs[:, t + 1] = h_t
    hs = np.empty((Bsz, L + 1, E, N))
    hs[:, 0] = 0.0 if initial_state is None else np.asarray(initial_state, np.float64)
    s = np.empty((Bsz, L, E))
    for t in range(L):
        Bt = Bm[:, t][:, group]
        dtt = dt[:, t, :, None]
        hs[:, t + 1] = np.exp(dtt * A) * hs[:, t] + dtt * Bt * u[:, t, :, None]
        s[:, t] = (hs[:, t + 1] * Cm[:, t][:, group]).sum(-1)

    # skip connection and gate
    dy = np.zeros((Bsz, L, E)) if dy is None else np.asarray(dy, np.float64)
    grads = {}
    if z is not None:
        z = np.asarray(z, np.float64)
        p = s if D is None else s + np.asarray(D, np.float64) * u
        grads["z"] = dy * p * _dsilu_ref(z)
        dyp = dy * silu_ref(z)
    else:
        dyp = dy
    du = np.zeros((Bsz, L, E))
    if D is not None:
        grads["D"] = (dyp * u).sum(axis=(0, 1))
        du += dyp * np.asarray(D, np.float64)

    # reverse-time loop over the recurrence
    ddt = np.empty((Bsz, L, E))
    dA = np.zeros((E, N))
    dB = np.empty((Bsz, L, G, N))
    dC = np.empty((Bsz, L, G, N))
    g = np.zeros((Bsz, E, N)) if dhL is None else np.asarray(dhL, np.float64).copy()
    for t in reversed(range(L)):
        Bt = Bm[:, t][:, group]
        Ct = Cm[:, t][:, group]
        dyt = dyp[:, t, :, None]  # (B, E, 1)
        dtt = dt[:, t, :, None]
        ut = u[:, t, :, None]
        g = g + Ct * dyt  # now g = dL/dh_t
        dC[:, t] = _group_sum_ref(dyt * hs[:, t + 1], G)
        a = np.exp(dtt * A)
        ga_h = g * a * hs[:, t]  # dL/da_t * a_t
        ddt[:, t] = (ga_h * A).sum(-1) + (g * Bt * ut).sum(-1)
        dA += (ga_h * dtt).sum(0)
        dB[:, t] = _group_sum_ref(g * dtt * ut, G)
        du[:, t] += (g * dtt * Bt).sum(-1)
        g = g * a  # dL/dh_{t-1}, less the C_{t-1} dy'_{t-1} term added next step

    ddelta = ddt * _dsoftplus_ref(raw) if delta_softplus else ddt
    grads.update(u=du, delta=ddelta, A=dA, B=dB, C=dC)
    if delta_bias is not None:
        grads["delta_bias"] = ddelta.sum(axis=(0, 1))
    if initial_state is not None:
        grads["initial_state"] = g
    return grads


def _auto_chunk(L):
    """Q balancing the ceil(L/Q) saved chunk-start states against the ~16 chunk temporaries."""
    return max(CHUNK, math.ceil(math.sqrt(L / 16)))


def _as(xp, x, dtype):
    """astype without a copy when x already has the dtype."""
    return xp.astype(x, dtype, copy=False)


def _selective_scan_vjp(xp, cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                        delta_softplus=False, initial_state=None, chunk=None):
    dy, dhL = _split_cotangent(cotangent)
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    Eg = E // G
    Q = _auto_chunk(L) if chunk is None else chunk
    wide = _wide(xp, u.dtype)
    uw = xp.reshape(_as(xp, u, wide), (Bsz, L, G, Eg, 1))
    raw = _as(xp, delta, wide)
    if delta_bias is not None:
        raw = raw + _as(xp, delta_bias, wide)
    dt = xp.reshape(softplus(xp, raw) if delta_softplus else raw, (Bsz, L, G, Eg, 1))
    Aw = xp.reshape(_as(xp, A, wide), (G, Eg, N))
    Bw = xp.expand_dims(_as(xp, B, wide), axis=3)  # (B, L, G, 1, N)
    Cw = xp.expand_dims(_as(xp, C, wide), axis=3)
    if initial_state is None:
        h = xp.zeros((Bsz, G, Eg, N), dtype=wide)
    else:
        h = xp.reshape(_as(xp, initial_state, wide), (Bsz, G, Eg, N))

    # dy' = dy silu(z): what reaches the scan output s_t
    dyp = None
    if dy is not None:
        dyp = _as(xp, dy, wide)
        if z is not None:
            dyp = dyp * silu(xp, _as(xp, z, wide))
        dyp = xp.reshape(dyp, (Bsz, L, G, Eg, 1))

    # pass 1: the state entering every chunk (the only forward states kept)
    starts = list(range(0, L, Q))
    entering = []
    for s in starts:
        e = min(s + Q, L)
        entering.append(h)
        dtq = dt[:, s:e]
        acc_a, acc_b = _scan_chunk(xp, xp.exp(dtq * Aw), dtq * Bw[:, s:e] * uw[:, s:e])
        h = acc_a[:, -1] * h + acc_b[:, -1]

    # pass 2: chunks in reverse; recompute the chunk's states, then its adjoint states
    if dhL is None:
        carry = xp.zeros((Bsz, G, Eg, N), dtype=wide)
    else:
        carry = xp.reshape(xp.astype(dhL, wide), (Bsz, G, Eg, N))  # a copy: never alias dhL
    dA = xp.zeros((G, Eg, N), dtype=wide)
    du_c, ddt_c, dB_c, dC_c, s_c = [], [], [], [], []
    for i in reversed(range(len(starts))):
        s, e = starts[i], min(starts[i] + Q, L)
        h_in = xp.expand_dims(entering[i], axis=1)  # (B, 1, G, Eg, N)
        dtq, Bq, uq = dt[:, s:e], Bw[:, s:e], uw[:, s:e]
        a = xp.exp(dtq * Aw)  # (B, Q, G, Eg, N)
        bu = Bq * uq
        acc_a, acc_b = _scan_chunk(xp, a, dtq * bu)
        hs = acc_a * h_in + acc_b  # h_t for t in [s, e)
        h_prev = xp.concat([h_in, hs[:, :-1]], axis=1)  # h_{t-1}
        # g_t = a_{t+1} g_{t+1} + C_t dy'_t, run as a forward scan over the flipped chunk:
        # position k <-> t = e-1-k, multiplier a_{t+1} = a_{e-k} (k >= 1), 1 at k = 0 (carry).
        m = xp.concat([xp.ones_like(a[:, :1]), xp.flip(a[:, 1:], axis=1)], axis=1)
        if dyp is not None:
            acc_m, acc_c = _scan_chunk(xp, m, xp.flip(dyp[:, s:e] * Cw[:, s:e], axis=1))
            g = xp.flip(acc_m * xp.expand_dims(carry, axis=1) + acc_c, axis=1)
        else:
            acc_m, _ = _scan_chunk(xp, m, xp.zeros_like(m))
            g = xp.flip(acc_m * xp.expand_dims(carry, axis=1), axis=1)
        ga = g * a
        carry = ga[:, 0]
        ga_h = ga * h_prev  # dL/da_t * a_t
        ddt_c.append(xp.sum(ga_h * Aw + g * bu, axis=-1))  # (B, Q, G, Eg)
        dA = dA + xp.sum(ga_h * dtq, axis=(0, 1))
        gdt = g * dtq
        dB_c.append(xp.sum(gdt * uq, axis=3))  # (B, Q, G, N)
        du_c.append(xp.sum(gdt * Bq, axis=-1))  # (B, Q, G, Eg)
        if dyp is not None:
            dC_c.append(xp.sum(dyp[:, s:e] * hs, axis=3))
            if z is not None:
                s_c.append(xp.sum(hs * Cw[:, s:e], axis=-1))

    def cat(parts, shape):  # the chunks were produced last first; empties the list
        out = xp.zeros(shape, dtype=wide) if not parts else (
            parts[0] if len(parts) == 1 else xp.concat(parts[::-1], axis=1))
        parts.clear()
        return out

    du = xp.reshape(cat(du_c, (Bsz, L, G, Eg)), (Bsz, L, E))
    ddt = xp.reshape(cat(ddt_c, (Bsz, L, G, Eg)), (Bsz, L, E))
    dB = cat(dB_c, (Bsz, L, G, N))
    dC = cat(dC_c, (Bsz, L, G, N))
    grads = {}
    if dyp is not None:
        dyp = xp.reshape(dyp, (Bsz, L, E))
    if D is not None:
        Dw = _as(xp, D, wide)
        if dyp is None:
            grads["D"] = xp.zeros((E,), dtype=wide)
        else:
            grads["D"] = xp.sum(dyp * xp.reshape(uw, (Bsz, L, E)), axis=(0, 1))
            du = du + dyp * Dw
    if z is not None:
        if dy is None:
            grads["z"] = xp.zeros((Bsz, L, E), dtype=wide)
        else:
            zw = _as(xp, z, wide)
            sz = sigmoid(xp, zw)
            p = xp.reshape(cat(s_c, (Bsz, L, G, Eg)), (Bsz, L, E))
            if D is not None:
                p = p + Dw * xp.reshape(uw, (Bsz, L, E))
            grads["z"] = _as(xp, dy, wide) * p * (sz * (1.0 + zw * (1.0 - sz)))
    if delta_softplus:
        ddt = ddt * xp.where(raw > SOFTPLUS_THRESHOLD, xp.ones_like(raw), sigmoid(xp, raw))
    grads.update(u=du, delta=ddt, A=xp.reshape(dA, (E, N)), B=dB, C=dC)
    if delta_bias is not None:
        grads["delta_bias"] = xp.sum(ddt, axis=(0, 1))
    if initial_state is not None:
        grads["initial_state"] = xp.reshape(carry, (Bsz, E, N))
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                initial_state=initial_state)
    return {k: _as(xp, v, args[k].dtype) for k, v in grads.items()}


def selective_scan_vjp(xp, cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None):
    """Selective scan VJP. cotangent = (dy (B, L, E) | None, dfinal_state (B, E, N) | None) -> dict.

    Keys u, delta, A, B, C and, when given, D, z, delta_bias, initial_state; each gradient has
    its argument's shape and dtype (computed in float32, or float64 for float64 inputs).
    Recompute, two passes over chunks of Q = max(16, ceil(sqrt(L/16))) tokens: pass 1 runs the
    forward scan keeping only the state entering each chunk; pass 2 visits the chunks in reverse,
    recomputes the chunk's states from the saved one, runs the adjoint recurrence
    g_t = a_{t+1} g_{t+1} + C_t dy'_t as a scan over the flipped chunk (products of decays in
    (0, 1] only: exact under strong decay) and reduces the chunk's gradients. Extra memory, in
    the wide dtype: ceil(L/Q) * B*E*N saved states + about 16 * B*Q*E*N chunk temporaries
    (together O(B*E*N*sqrt(L)); no (B, L, E, N) array is ever formed) + about a dozen per-token
    (B, L, E) vectors (dt, dy', per-chunk results before concatenation), besides the gradients.
    """
    return _selective_scan_vjp(xp, cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                               initial_state)


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


def validate_selective_scan_vjp(cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                delta_softplus=False, initial_state=None):
    op = "selective_scan_vjp"
    dy, dhL = _split_cotangent(cotangent)
    d = Dims(op)
    d.check("u", u, ("B", "L", "E"))
    d.check("A", A, ("E", "N"))
    d.check("cotangent[0] (dy)", dy, ("B", "L", "E"), optional=True)
    d.check("cotangent[1] (dfinal_state)", dhL, ("B", "E", "N"), optional=True)
    check_floating(op, "cotangent[0] (dy)", dy)
    check_floating(op, "cotangent[1] (dfinal_state)", dhL)
    validate_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


register(OpSpec("selective_scan_vjp", "selective_scan", selective_scan_vjp_ref, selective_scan_vjp,
                validate_selective_scan_vjp, vjp_of="selective_scan"))
