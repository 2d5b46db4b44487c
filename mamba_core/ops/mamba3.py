"""The Mamba-3 exponential-trapezoidal scan (SISO and MIMO), its recurrent step, and the
data-dependent rotary angles.

mamba3_scan(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
            initial_k=None, initial_v=None)
    x: (B, L, H, P) raw x (not up-projected); dt: (B, L, H) after softplus; A: (B, L, H) < 0
    (data-dependent); trap: (B, L, H) in [0, 1] (after sigmoid); B, C: (B, L, R, H, N) per head,
    already normed, biased and rotated; D: (H,) or None; mimo_x: (H, R, P), or None (then R must
    be 1 and it means ones); initial_state: (B, H, P, N); initial_k: (B, R, H, N) (the last Bhat
    before the sequence); initial_v: (B, H, P) (the last raw x). None means zeros. L >= 1.
        v_{r,t}  = x_t o mimo_x[:, r, :]                                   (B, R, H, P)
        alpha_t  = exp(A_t dt_t),  beta_t = (1 - trap_t) dt_t alpha_t,  gamma_t = trap_t dt_t
        S_t      = alpha_t S_{t-1} + beta_t sum_r v_{r,t-1} B_{r,t-1}^T + gamma_t sum_r v_{r,t} B_{r,t}^T
        y_{r,t}  = S_t C_{r,t} + D v_{r,t}              (no gate and no mimo_o: the mixer does that)
    with S_{-1} = initial_state, v_{r,-1} = initial_v o mimo_x[:, r], B_{r,-1} = initial_k.
    Returns (y (B, L, R, H, P) in x's dtype, final_state S_{L-1} (B, H, P, N) in float32 -- float64
    when x is float64 --, final_k = B[:, -1] (B, R, H, N), final_v = x[:, -1] (B, H, P)).
    ``chunk_size`` (Q) sets the default composition's block size; the result does not depend on it.

mamba3_step(x, dt, A, trap, B, C, state, k_state, v_state, D=None, mimo_x=None)
    One token: x: (B, H, P); dt, A, trap: (B, H); B, C: (B, R, H, N); state: (B, H, P, N);
    k_state: (B, R, H, N); v_state: (B, H, P). The same equations for one t. Returns
    (y (B, R, H, P) in x's dtype, new_state (B, H, P, N) wide, new_k = B, new_v = x).

mamba3_angles(angles, dt, initial_angle=None)
    angles: (B, L, S) the raw in_proj slice (shared by the heads); dt: (B, L, H) after softplus;
    initial_angle: (B, H, S) or None (zeros). L >= 1.
        phi_t[h, s] = (phi_{t-1}[h, s] + tanh(angles_t[s]) pi dt_t[h]) mod 2 pi,   phi_{-1} = initial
    Returns (phi (B, L, H, S), final_angle phi_{L-1} (B, H, S)), both float32 (float64 when angles
    or dt is float64), in [0, 2 pi).

Chunked form (the default composition of mamba3_scan). Unrolling the recurrence, input
u_s = sum_r v_{r,s} B_{r,s}^T enters S_t (t >= s) with weight exp(seg(t, s)) (gamma_s + [s < t] sg_s),
where sg_s = dt_{s+1} (1 - trap_{s+1}) (the "shifted gamma", 0 at the last token) and
seg(t, s) = sum_{k=s+1..t} A_k dt_k. So with scale_s = gamma_s + sg_s:
    y_{R,t} = sum_{s <= t} exp(seg(t, s)) w_{t,s} sum_r <C_{R,t}, B_{r,s}> v_{r,s} + D v_{R,t},
    w_{t,s} = scale_s for s < t and gamma_t on the diagonal -- the same-token correction
    "- sg_t sum_r <C_{R,t}, B_{r,t}> v_{r,t}", which is cross-rank in MIMO (an R x R block).
The state carried between chunks is S'_t = S_t + sg_t u_t (S_t plus the beta term still owed to
t + 1, undecayed): S'_end = exp(sum_chunk A dt) S'_start + sum_s exp(seg(end, s)) scale_s u_s, and it
starts from S'_{-1} = initial_state + dt_0 (1 - trap_0) sum_r v_{r,-1} B_{r,-1}^T (the beta_0 term of
the cached k/v). Tokens see the state entering their chunk decayed by exp(sum_{k<=t} A_k dt_k) from
the chunk start. At the last token sg = 0, so S' = S is the final state. seg is a masked
cumulative sum inside a chunk (a_t placed below the diagonal, summed down the rows): every exponent
is a short sum of terms <= 0, so strong decay over long sequences underflows to exact zeros
instead of overflowing. The last chunk is padded with dt = 0 and x = B = C = 0 (a no-op).

Angles (the default composition of mamba3_angles): increments are reduced mod 2 pi first, then an
inclusive Hillis-Steele scan (log2 L rounds) adds them, reducing mod 2 pi after every round, so
every partial sum stays in [0, 4 pi) and each addition rounds at ~2e-7 absolute in float32 (no long
float32 cumulative sum: its rounding grows with the unreduced angle). pi in theta and the 2 pi of
the wrap are rounded to the same dtype, so the wrap is exact and adds no drift with the number of
turns (mixing an exact 2 pi with a rounded pi drifts by ~1.7e-7 per turn).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims, check_floating
from mamba_core.ops.spec import OpSpec, register

#: 2 pi split in two: a float32-exact high part and the small remainder (Cody-Waite reduction).
TWO_PI = 2.0 * math.pi
_TWO_PI_HI = float(np.float32(TWO_PI))
_TWO_PI_LO = TWO_PI - _TWO_PI_HI


# ---- references ---------------------------------------------------------------------------
def _mimo_ones_ref(mimo_x, H, R, P):
    return np.ones((H, R, P)) if mimo_x is None else np.asarray(mimo_x, np.float64)


def mamba3_scan_ref(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                    initial_k=None, initial_v=None):
    """The Mamba-3 recurrence as an explicit loop over time, float64 (chunk_size is ignored)."""
    x = np.asarray(x, np.float64)
    dt, A, trap = (np.asarray(a, np.float64) for a in (dt, A, trap))
    Bm, Cm = np.asarray(B, np.float64), np.asarray(C, np.float64)
    Bsz, L, H, P = x.shape
    R, N = Bm.shape[2], Bm.shape[4]
    mx = _mimo_ones_ref(mimo_x, H, R, P)  # (H, R, P)
    S = np.zeros((Bsz, H, P, N)) if initial_state is None else np.asarray(initial_state, np.float64).copy()
    k_prev = np.zeros((Bsz, R, H, N)) if initial_k is None else np.asarray(initial_k, np.float64)
    x_prev = np.zeros((Bsz, H, P)) if initial_v is None else np.asarray(initial_v, np.float64)
    Dh = np.zeros(H) if D is None else np.asarray(D, np.float64)
    y = np.empty((Bsz, L, R, H, P))
    for t in range(L):
        alpha = np.exp(A[:, t] * dt[:, t])  # (B, H)
        beta = (1.0 - trap[:, t]) * dt[:, t] * alpha
        gamma = trap[:, t] * dt[:, t]
        v_prev = x_prev[:, None] * mx.transpose(1, 0, 2)  # (B, R, H, P)
        v = x[:, t, None] * mx.transpose(1, 0, 2)
        u_prev = np.einsum("brhp,brhn->bhpn", v_prev, k_prev)  # sum_r v_r B_r^T
        u = np.einsum("brhp,brhn->bhpn", v, Bm[:, t])
        S = alpha[..., None, None] * S + beta[..., None, None] * u_prev + gamma[..., None, None] * u
        y[:, t] = np.einsum("bhpn,brhn->brhp", S, Cm[:, t]) + Dh[:, None] * v
        k_prev, x_prev = Bm[:, t], x[:, t]
    return y, S, Bm[:, -1], x[:, -1]


def mamba3_step_ref(x, dt, A, trap, B, C, state, k_state, v_state, D=None, mimo_x=None):
    """One token of the Mamba-3 recurrence, float64."""
    y, S, k, v = mamba3_scan_ref(
        np.asarray(x)[:, None], np.asarray(dt)[:, None], np.asarray(A)[:, None],
        np.asarray(trap)[:, None], np.asarray(B)[:, None], np.asarray(C)[:, None], D=D,
        mimo_x=mimo_x, initial_state=state, initial_k=k_state, initial_v=v_state,
    )
    return y[:, 0], S, k, v


def mamba3_angles_ref(angles, dt, initial_angle=None):
    """The angle recurrence, one token at a time with a mod 2 pi each step, float64."""
    angles, dt = np.asarray(angles, np.float64), np.asarray(dt, np.float64)
    Bsz, L, S = angles.shape
    H = dt.shape[2]
    phi = np.zeros((Bsz, H, S)) if initial_angle is None else np.asarray(initial_angle, np.float64)
    out = np.empty((Bsz, L, H, S))
    for t in range(L):
        phi = np.mod(phi + np.tanh(angles[:, t, None, :]) * np.pi * dt[:, t, :, None], TWO_PI)
        out[:, t] = phi
    return out, phi


# ---- default compositions -----------------------------------------------------------------
def _wide(xp, *dtypes):
    """float64 when any argument is float64; everything narrower computes in float32."""
    return xp.float64 if any(d == xp.float64 for d in dtypes) else xp.float32


def _up(xp, x, mimo_x, wide):
    """x (..., H, P) -> v (..., R, H, P) = x o mimo_x[:, r, :] (R = 1 and ones when mimo_x is None)."""
    v = xp.expand_dims(xp.astype(x, wide), axis=-3)
    if mimo_x is None:
        return v
    return v * xp.permute_dims(xp.astype(mimo_x, wide), (1, 0, 2))


def _outer(xp, v, k):
    """sum_r v_r k_r^T: v (B, R, H, P), k (B, R, H, N) -> (B, H, P, N)."""
    return xp.matmul(xp.permute_dims(v, (0, 2, 3, 1)), xp.permute_dims(k, (0, 2, 1, 3)))


def _pad_time(xp, a, pad):
    """Append ``pad`` zeros along axis 1."""
    if pad == 0:
        return a
    shape = list(a.shape)
    shape[1] = pad
    return xp.concat([a, xp.zeros(tuple(shape), dtype=a.dtype)], axis=1)


def mamba3_scan(xp, x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                initial_k=None, initial_v=None):
    """Chunked Mamba-3 scan. x: (B, L, H, P); dt, A, trap: (B, L, H); B, C: (B, L, R, H, N)."""
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    Q = int(chunk_size)
    wide = _wide(xp, x.dtype)
    zero = xp.zeros((), dtype=wide)

    dtw, Aw, trw = (xp.astype(a, wide) for a in (dt, A, trap))
    a = Aw * dtw  # (B, L, H), <= 0
    gamma = trw * dtw
    owed = (1.0 - trw) * dtw  # dt_t (1 - trap_t): beta_t / alpha_t, owed to the previous token
    sg = xp.concat([owed[:, 1:], xp.zeros((Bsz, 1, H), dtype=wide)], axis=1)  # shifted gamma
    scale = gamma + sg

    # the state entering the sequence, with the beta_0 term of the cached k/v folded in (S')
    if initial_state is None:
        S = xp.zeros((Bsz, H, P, N), dtype=wide)
    else:
        S = xp.astype(initial_state, wide)
    if initial_k is not None and initial_v is not None:
        u0 = _outer(xp, _up(xp, initial_v, mimo_x, wide), xp.astype(initial_k, wide))
        S = S + xp.reshape(owed[:, 0], (Bsz, H, 1, 1)) * u0

    nc = -(-L // Q)
    pad = nc * Q - L
    QR = Q * R

    def tokens(arr):  # (B, L, H) -> (B, nc, H, Q)
        return xp.permute_dims(xp.reshape(_pad_time(xp, arr, pad), (Bsz, nc, Q, H)), (0, 1, 3, 2))

    def streams(arr, width):  # (B, L, R, H, width) -> (B, nc, H, Q*R, width), row = t*R + r
        arr = xp.reshape(_pad_time(xp, arr, pad), (Bsz, nc, Q, R, H, width))
        return xp.reshape(xp.permute_dims(arr, (0, 1, 4, 2, 3, 5)), (Bsz, nc, H, QR, width))

    ac, gc, sc = tokens(a), tokens(gamma), tokens(scale)
    vc = streams(_up(xp, x, mimo_x, wide), P)  # (B, nc, H, QR, P)
    Bc = streams(xp.astype(B, wide), N)
    Cc = streams(xp.astype(C, wide), N)

    # seg[t, s] = sum_{k=s+1..t} a_k (t >= s): a_t placed strictly below the diagonal, summed
    # down the rows -- short sums of the terms needed, never differences of long cumsums.
    idx = xp.arange(Q)
    below = xp.expand_dims(idx, axis=1) > xp.expand_dims(idx, axis=0)
    lower = xp.expand_dims(idx, axis=1) >= xp.expand_dims(idx, axis=0)
    diag = xp.expand_dims(idx, axis=1) == xp.expand_dims(idx, axis=0)
    seg = xp.cumulative_sum(xp.where(below, xp.expand_dims(ac, axis=-1), zero), axis=-2)  # (B,nc,H,Q,Q)
    from_start = xp.cumulative_sum(ac, axis=-1)  # sum_{k<=t} a_k            (B, nc, H, Q)

    # intra-chunk: token weights w[t, s] = exp(seg) * (scale_s below, gamma_t on the diagonal),
    # expanded over the R x R rank block of every (t, s) pair
    w = xp.where(diag, xp.expand_dims(gc, axis=-2), xp.expand_dims(sc, axis=-2))
    w = xp.where(lower, xp.exp(seg) * w, zero)
    scores = xp.reshape(xp.matmul(Cc, xp.matrix_transpose(Bc)), (Bsz, nc, H, Q, R, Q, R))
    scores = scores * xp.reshape(w, (Bsz, nc, H, Q, 1, Q, 1))
    y = xp.matmul(xp.reshape(scores, (Bsz, nc, H, QR, QR)), vc)  # (B, nc, H, QR, P)

    # each chunk's own contribution to S' at its end: sum_s exp(seg[end, s]) scale_s u_s
    to_end = xp.exp(seg[..., -1, :]) * sc  # (B, nc, H, Q)
    v_end = xp.reshape(vc, (Bsz, nc, H, Q, R, P)) * xp.reshape(to_end, (Bsz, nc, H, Q, 1, 1))
    S_chunk = xp.matmul(xp.matrix_transpose(xp.reshape(v_end, (Bsz, nc, H, QR, P))), Bc)  # (.., P, N)

    # S' entering each chunk: a scan over the chunks from the initial state
    total = xp.exp(from_start[..., -1])  # (B, nc, H)
    entering = []
    for c in range(nc):
        entering.append(S)
        S = xp.reshape(total[:, c], (Bsz, H, 1, 1)) * S + S_chunk[:, c]
    S_in = xp.stack(entering, axis=1)  # (B, nc, H, P, N)

    # inter-chunk: y_off[t, r] = exp(sum_{k<=t} a_k) C_{r,t} S'_in
    y_off = xp.reshape(xp.matmul(Cc, xp.matrix_transpose(S_in)), (Bsz, nc, H, Q, R, P))
    y = xp.reshape(y, (Bsz, nc, H, Q, R, P)) + y_off * xp.reshape(xp.exp(from_start), (Bsz, nc, H, Q, 1, 1))
    if D is not None:
        y = y + xp.reshape(xp.astype(D, wide), (1, 1, H, 1, 1, 1)) * xp.reshape(vc, (Bsz, nc, H, Q, R, P))
    y = xp.reshape(xp.permute_dims(y, (0, 1, 3, 4, 2, 5)), (Bsz, nc * Q, R, H, P))[:, :L]
    return xp.astype(y, x.dtype), S, B[:, -1], x[:, -1]


def mamba3_step(xp, x, dt, A, trap, B, C, state, k_state, v_state, D=None, mimo_x=None):
    """One token. x: (B, H, P); dt, A, trap: (B, H); B, C: (B, R, H, N); state (B, H, P, N)."""
    Bsz, H, P = x.shape
    wide = _wide(xp, x.dtype)
    dtw, Aw, trw = (xp.reshape(xp.astype(a, wide), (Bsz, H, 1, 1)) for a in (dt, A, trap))
    alpha = xp.exp(Aw * dtw)
    beta = (1.0 - trw) * dtw * alpha
    gamma = trw * dtw
    v = _up(xp, x, mimo_x, wide)  # (B, R, H, P)
    S = xp.astype(state, wide)
    S = (alpha * S + beta * _outer(xp, _up(xp, v_state, mimo_x, wide), xp.astype(k_state, wide))
         + gamma * _outer(xp, v, xp.astype(B, wide)))
    Cw = xp.permute_dims(xp.astype(C, wide), (0, 2, 1, 3))  # (B, H, R, N)
    y = xp.permute_dims(xp.matmul(Cw, xp.matrix_transpose(S)), (0, 2, 1, 3))  # (B, R, H, P)
    if D is not None:
        y = y + xp.reshape(xp.astype(D, wide), (H, 1)) * v
    return xp.astype(y, x.dtype), S, B, x


def _wrap(xp, a):
    """a mod 2 pi in [0, 2 pi), with 2 pi rounded to a's dtype like the pi in theta.

    theta uses pi rounded to the compute dtype, (1 + d) pi; wrapping by the same-rounded 2 pi keeps
    the computed angle equal to (1 + d) (phi mod 2 pi) up to rounding: no drift with the number of
    turns. Exact for a in [0, 4 pi) (a - 2 pi is exact there), which every scan step stays in.
    """
    r = a - TWO_PI * xp.floor(a / TWO_PI)
    r = xp.where(r < 0, r + TWO_PI, r)
    return xp.where(r >= TWO_PI, r - TWO_PI, r)


def _mod2pi_exact(xp, a):
    """a mod the true 2 pi (subtracted in two parts), for an initial angle of any size."""
    k = xp.floor(a / TWO_PI)
    return _wrap(xp, (a - k * _TWO_PI_HI) - k * _TWO_PI_LO)


def mamba3_angles(xp, angles, dt, initial_angle=None):
    """Cumulative rotary angles mod 2 pi. angles: (B, L, S); dt: (B, L, H) -> (phi, final)."""
    Bsz, L, S = angles.shape
    wide = _wide(xp, angles.dtype, dt.dtype)
    theta = xp.tanh(xp.astype(angles, wide)) * math.pi  # (B, L, S)
    p = _wrap(xp, xp.expand_dims(theta, axis=2) * xp.expand_dims(xp.astype(dt, wide), axis=3))
    k = 1
    while k < L:  # inclusive scan of addition mod 2 pi; every partial sum stays in [0, 2 pi)
        p = xp.concat([p[:, :k], _wrap(xp, p[:, k:] + p[:, :-k])], axis=1)
        k *= 2
    if initial_angle is not None:
        p = _wrap(xp, p + xp.expand_dims(_mod2pi_exact(xp, xp.astype(initial_angle, wide)), axis=1))
    return p, p[:, -1]


# ---- validation ---------------------------------------------------------------------------
def _positive_int(op, name, value):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0):
        raise ShapeError(f"{op}: {name!r} must be a positive integer, got {value!r}")


def _check_mimo(op, d, mimo_x, B):
    if mimo_x is None:
        if d["R"] != 1:
            raise ShapeError(
                f"{op}: 'mimo_x' is None, which means SISO (R = 1), but 'B' has shape "
                f"{tuple(B.shape)} with R={d['R']} ranks; pass mimo_x of shape (H, R, P)"
            )
    else:
        d.check("mimo_x", mimo_x, ("H", "R", "P"))


def validate_mamba3_scan(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64,
                         initial_state=None, initial_k=None, initial_v=None):
    op = "mamba3_scan"
    d = Dims(op)
    d.check("x", x, ("B", "L", "H", "P"))
    for name, arr in (("dt", dt), ("A", A), ("trap", trap)):
        d.check(name, arr, ("B", "L", "H"))
    d.check("B", B, ("B", "L", "R", "H", "N"))
    d.check("C", C, ("B", "L", "R", "H", "N"))
    if d["L"] < 1:
        raise ShapeError(f"{op}: the sequence must have L >= 1 tokens, got x shape {tuple(x.shape)}")
    d.check("D", D, ("H",), optional=True)
    _check_mimo(op, d, mimo_x, B)
    d.check("initial_state", initial_state, ("B", "H", "P", "N"), optional=True)
    d.check("initial_k", initial_k, ("B", "R", "H", "N"), optional=True)
    d.check("initial_v", initial_v, ("B", "H", "P"), optional=True)
    _positive_int(op, "chunk_size", chunk_size)
    for name, arr in dict(x=x, dt=dt, A=A, trap=trap, B=B, C=C, D=D, mimo_x=mimo_x,
                          initial_state=initial_state, initial_k=initial_k, initial_v=initial_v).items():
        check_floating(op, name, arr)


def validate_mamba3_step(x, dt, A, trap, B, C, state, k_state, v_state, D=None, mimo_x=None):
    op = "mamba3_step"
    d = Dims(op)
    d.check("x", x, ("B", "H", "P"))
    for name, arr in (("dt", dt), ("A", A), ("trap", trap)):
        d.check(name, arr, ("B", "H"))
    d.check("B", B, ("B", "R", "H", "N"))
    d.check("C", C, ("B", "R", "H", "N"))
    d.check("D", D, ("H",), optional=True)
    _check_mimo(op, d, mimo_x, B)
    d.check("state", state, ("B", "H", "P", "N"))
    d.check("k_state", k_state, ("B", "R", "H", "N"))
    d.check("v_state", v_state, ("B", "H", "P"))
    for name, arr in dict(x=x, dt=dt, A=A, trap=trap, B=B, C=C, D=D, mimo_x=mimo_x, state=state,
                          k_state=k_state, v_state=v_state).items():
        check_floating(op, name, arr)


def validate_mamba3_angles(angles, dt, initial_angle=None):
    op = "mamba3_angles"
    d = Dims(op)
    d.check("angles", angles, ("B", "L", "S"))
    d.check("dt", dt, ("B", "L", "H"))
    if d["L"] < 1:
        raise ShapeError(f"{op}: the sequence must have L >= 1 tokens, got angles shape {tuple(angles.shape)}")
    d.check("initial_angle", initial_angle, ("B", "H", "S"), optional=True)
    for name, arr in dict(angles=angles, dt=dt, initial_angle=initial_angle).items():
        check_floating(op, name, arr)


register(OpSpec("mamba3_scan", "mamba3", mamba3_scan_ref, mamba3_scan, validate_mamba3_scan))
register(OpSpec("mamba3_step", "mamba3", mamba3_step_ref, mamba3_step, validate_mamba3_step,
                step_of="mamba3_scan"))
register(OpSpec("mamba3_angles", "mamba3", mamba3_angles_ref, mamba3_angles, validate_mamba3_angles))
