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

mamba3_scan_vjp(cotangent, <mamba3_scan's arguments>), cotangent = (dy (B, L, R, H, P),
    dfinal_state (B, H, P, N), dfinal_k (B, R, H, N), dfinal_v (B, H, P)), any entry None (zero)
    -> dict of gradients: x, dt, A, trap, B, C and, when given, D, mimo_x, initial_state,
    initial_k, initial_v, each in its argument's shape (and dtype, for the default). dfinal_k and
    dfinal_v add to the gradients of B[:, -1] and x[:, -1]. Reference: the reverse-time loop.
    Default: the transpose of the chunked form (its docstring states the memory).

mamba3_angles_vjp(cotangent, angles, dt, initial_angle=None), cotangent = (dphi (B, L, H, S),
    dfinal_angle (B, H, S)), either None -> dict: angles (through tanh pi dt, summed over the
    heads), dt (summed over S) and, when given, initial_angle. The mod 2 pi has gradient 1.

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
from mamba_core.ops._dtypes import wide as _wide

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


def _unpack_scan_cotangent(cotangent):
    if not (isinstance(cotangent, (tuple, list)) and len(cotangent) == 4):
        raise ShapeError(
            "mamba3_scan_vjp: 'cotangent' must be a 4-tuple (dy (B, L, R, H, P), dfinal_state "
            "(B, H, P, N), dfinal_k (B, R, H, N), dfinal_v (B, H, P)), any entry None for zero; "
            f"got {type(cotangent).__name__}"
            + (f" of length {len(cotangent)}" if isinstance(cotangent, (tuple, list)) else "")
        )
    return tuple(cotangent)


def _unpack_angles_cotangent(cotangent):
    if not (isinstance(cotangent, (tuple, list)) and len(cotangent) == 2):
        raise ShapeError(
            "mamba3_angles_vjp: 'cotangent' must be a pair (dphi (B, L, H, S) or None, "
            f"dfinal_angle (B, H, S) or None), got {type(cotangent).__name__}"
        )
    return tuple(cotangent)


def mamba3_scan_vjp_ref(cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64,
                        initial_state=None, initial_k=None, initial_v=None):
    """The gradient of mamba3_scan_ref as its reverse-time loop (the adjoint state dS), float64.

    cotangent = (dy (B, L, R, H, P), dS_L (B, H, P, N), dk_L (B, R, H, N), dv_L (B, H, P)), any
    entry None (zero). Returns a dict with x, dt, A, trap, B, C and, when given, D, mimo_x,
    initial_state, initial_k, initial_v, each in its argument's shape.
    Forward pass kept: S_{t-1} and S_t for every t. With u_t = sum_r v_{r,t} B_{r,t}^T and
    u_{-1} from (initial_v, initial_k), backward for t = L-1 .. 0, dS the adjoint of S_t:
        dS += sum_r dy_{r,t} C_{r,t}^T;  dC_{r,t} = dy_{r,t}^T S_t;  dv_{r,t} += D dy_{r,t}
        dalpha = <dS, S_{t-1}>,  dbeta = <dS, u_{t-1}>,  dgamma = <dS, u_t>
        du_t += gamma_t dS,  du_{t-1} += beta_t dS   (u -> dv_r = du B_r, dB_r = du^T v_r)
        da_t = alpha_t (dalpha + (1 - trap_t) dt_t dbeta)                  (a_t = A_t dt_t)
        dA_t = dt_t da_t;  ddt_t = A_t da_t + (1 - trap_t) alpha_t dbeta + trap_t dgamma
        dtrap_t = dt_t (dgamma - alpha_t dbeta);  dS <- alpha_t dS
    then dx_t = sum_r dv_{r,t} o mimo_x[:, r], dmimo_x = sum dv_r o x; dfinal_k adds to dB[:, -1],
    dfinal_v to dx[:, -1]; dinitial_state is the dS left after t = 0.
    """
    dy, dS_L, dk_L, dv_L = _unpack_scan_cotangent(cotangent)
    x = np.asarray(x, np.float64)
    dt, A, trap = (np.asarray(a, np.float64) for a in (dt, A, trap))
    Bm, Cm = np.asarray(B, np.float64), np.asarray(C, np.float64)
    Bsz, L, H, P = x.shape
    R, N = Bm.shape[2], Bm.shape[4]
    mx = _mimo_ones_ref(mimo_x, H, R, P)  # (H, R, P)
    mxr = mx.transpose(1, 0, 2)  # (R, H, P)
    Dh = np.zeros(H) if D is None else np.asarray(D, np.float64)
    # v and k with the initial (index 0) prepended: V[:, t + 1] = v_t, K[:, t + 1] = B_t
    x0 = np.zeros((Bsz, H, P)) if initial_v is None else np.asarray(initial_v, np.float64)
    k0 = np.zeros((Bsz, R, H, N)) if initial_k is None else np.asarray(initial_k, np.float64)
    X = np.concatenate([x0[:, None], x], axis=1)  # (B, L + 1, H, P)
    V = X[:, :, None] * mxr  # (B, L + 1, R, H, P)
    K = np.concatenate([k0[:, None], Bm], axis=1)  # (B, L + 1, R, H, N)
    U = np.einsum("btrhp,btrhn->bthpn", V, K)  # (B, L + 1, H, P, N)
    alpha = np.exp(A * dt)
    beta = (1.0 - trap) * dt * alpha
    gamma = trap * dt

    # forward, keeping the states: states[t + 1] = S_t, states[0] = S_{-1}
    S = np.zeros((Bsz, H, P, N)) if initial_state is None else np.asarray(initial_state, np.float64)
    states = [S]
    for t in range(L):
        S = (alpha[:, t, :, None, None] * S + beta[:, t, :, None, None] * U[:, t]
             + gamma[:, t, :, None, None] * U[:, t + 1])
        states.append(S)

    dy = np.zeros((Bsz, L, R, H, P)) if dy is None else np.asarray(dy, np.float64)
    dS = np.zeros((Bsz, H, P, N)) if dS_L is None else np.asarray(dS_L, np.float64).copy()
    dU = np.zeros((Bsz, L + 1, H, P, N))
    dC = np.empty((Bsz, L, R, H, N))
    dalpha, dbeta, dgamma = (np.zeros((Bsz, L, H)) for _ in range(3))
    for t in reversed(range(L)):
        dS = dS + np.einsum("brhp,brhn->bhpn", dy[:, t], Cm[:, t])
        dC[:, t] = np.einsum("brhp,bhpn->brhn", dy[:, t], states[t + 1])
        dalpha[:, t] = (dS * states[t]).sum((2, 3))
        dbeta[:, t] = (dS * U[:, t]).sum((2, 3))
        dgamma[:, t] = (dS * U[:, t + 1]).sum((2, 3))
        dU[:, t + 1] += gamma[:, t, :, None, None] * dS
        dU[:, t] += beta[:, t, :, None, None] * dS
        dS = alpha[:, t, :, None, None] * dS

    # u = sum_r v_r k_r^T, v_r = x o mimo_x[:, r]
    dV = np.einsum("bthpn,btrhn->btrhp", dU, K)
    dK = np.einsum("bthpn,btrhp->btrhn", dU, V)
    dV[:, 1:] += Dh[:, None] * dy
    dX = (dV * mxr).sum(2)  # (B, L + 1, H, P)
    da = alpha * (dalpha + (1.0 - trap) * dt * dbeta)
    out = {
        "x": dX[:, 1:],
        "dt": A * da + (1.0 - trap) * alpha * dbeta + trap * dgamma,
        "A": dt * da,
        "trap": dt * (dgamma - alpha * dbeta),
        "B": dK[:, 1:],
        "C": dC,
    }
    if dk_L is not None:
        out["B"][:, -1] += np.asarray(dk_L, np.float64)
    if dv_L is not None:
        out["x"][:, -1] += np.asarray(dv_L, np.float64)
    if D is not None:
        out["D"] = (dy * V[:, 1:]).sum((0, 1, 2, 4))
    if mimo_x is not None:
        out["mimo_x"] = np.einsum("btrhp,bthp->hrp", dV, X)
    if initial_state is not None:
        out["initial_state"] = dS
    if initial_k is not None:
        out["initial_k"] = dK[:, 0]
    if initial_v is not None:
        out["initial_v"] = dX[:, 0]
    return out


def mamba3_angles_vjp_ref(cotangent, angles, dt, initial_angle=None):
    """The gradient of mamba3_angles_ref as its reverse-time loop, float64.

    cotangent = (dphi (B, L, H, S), dfinal_angle (B, H, S)), either None (zero). The mod 2 pi has
    gradient 1, so with g_t = dfinal + sum_{k >= t} dphi_k (the adjoint of phi_t):
        dangles_t[s] = sum_h g_t[h, s] pi dt_t[h] (1 - tanh^2(angles_t[s]))
        ddt_t[h]     = sum_s g_t[h, s] tanh(angles_t[s]) pi;     dinitial_angle = g_0.
    Returns a dict with angles, dt and, when given, initial_angle.
    """
    dphi, dfin = _unpack_angles_cotangent(cotangent)
    angles, dt = np.asarray(angles, np.float64), np.asarray(dt, np.float64)
    Bsz, L, S = angles.shape
    H = dt.shape[2]
    th = np.tanh(angles)
    g = np.zeros((Bsz, H, S)) if dfin is None else np.asarray(dfin, np.float64).copy()
    dang = np.empty((Bsz, L, S))
    ddt = np.empty((Bsz, L, H))
    for t in reversed(range(L)):
        if dphi is not None:
            g = g + np.asarray(dphi[:, t], np.float64)
        dang[:, t] = (g * dt[:, t, :, None]).sum(1) * np.pi * (1.0 - th[:, t] ** 2)
        ddt[:, t] = (g * th[:, t, None, :]).sum(-1) * np.pi
    out = {"angles": dang, "dt": ddt}
    if initial_angle is not None:
        out["initial_angle"] = g
    return out


# ---- default compositions -----------------------------------------------------------------


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


def _rev_cumsum(xp, v, axis):
    """out[k] = sum_{i >= k} v[i] along ``axis``."""
    return xp.flip(xp.cumulative_sum(xp.flip(v, axis=axis), axis=axis), axis=axis)


def _excl_cumsum(xp, v):
    """out[k] = sum_{i < k} v[i] along the last axis."""
    head = xp.zeros(tuple(v.shape[:-1]) + (1,), dtype=v.dtype)
    return xp.concat([head, xp.cumulative_sum(v, axis=-1)[..., :-1]], axis=-1)


def _up_vjp(xp, dv, x, mimo_x, wide):
    """The backward of _up: dv (..., R, H, P), x (..., H, P) -> (dx (..., H, P), dmimo_x (H, R, P) | None)."""
    if mimo_x is None:
        return dv[..., 0, :, :], None
    mxr = xp.permute_dims(xp.astype(mimo_x, wide), (1, 0, 2))  # (R, H, P)
    dx = xp.sum(dv * mxr, axis=-3)
    lead = tuple(range(dv.ndim - 3))
    dmx = xp.sum(dv * xp.expand_dims(xp.astype(x, wide), axis=-3), axis=lead) if lead else dv * x
    return dx, xp.permute_dims(dmx, (1, 0, 2))


def _add_last(xp, g, d, wide):
    """g with d added to its last time step (g (B, L, ...), d (B, ...)); no in-place update."""
    if d is None:
        return g
    return xp.concat([g[:, :-1], g[:, -1:] + xp.expand_dims(xp.astype(d, wide), axis=1)], axis=1)


def mamba3_scan_vjp(xp, cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64,
                    initial_state=None, initial_k=None, initial_v=None):
    """Chunked Mamba-3 backward. cotangent = (dy, dS_L, dk_L, dv_L), any None -> dict of gradients.

    The transpose of the chunked forward, chunk for chunk; nothing is saved by the forward (the
    chunk layout, the weights w and the entering states S'_in are recomputed). Per chunk and head,
    rows (t, r) of Q R streams, with e_t = exp(sum_{k<=t} a_k), f_s = exp(seg(Q-1, s)),
    W = (C B^T) o w (w expanded over the R x R rank blocks) and dS_out the adjoint of S' leaving
    the chunk:
        dS_out  a reverse scan over chunks: dS_out[nc-1] = dS_L,
                dS_out[c-1] = exp(chunk sum) dS_out[c] + (e o dy)^T C  (= dS'_in[c]; dS'_in[0] is
                the adjoint of S'_{-1} = initial_state + dt_0 (1 - trap_0) u_{-1})
        dv      = W^T dy + f o scale o (B dS_out^T) + D dy
        dC      = (dy v^T o w) B + e o (dy S'_in),   dB = (dy v^T o w)^T C + f o scale o (v dS_out)
        dw      = sum over the rank block of (dy v^T) o (C B^T); through w = exp(seg) o coef:
                  dseg = dw o w -> da_k = sum_{t >= k > s} dseg[t, s]; the diagonal of
                  dw o exp(seg) goes to gamma_t, the part below it to scale_s
        da      += exclusive cumsum of f o scale o <v, B dS_out^T> (from f), reverse cumsum of
                  e o <dy, C S'_in^T> (from e), exp(chunk sum) <dS_out, S'_in> on every k (chunk sum)
    then scale = gamma + sg (sg_t = owed_{t+1}), gamma = trap dt, owed = (1 - trap) dt, a = A dt,
    v_r = x o mimo_x[:, r]. Every exponent is a masked short sum of a_k <= 0, as in the forward:
    stable for strong decay over long sequences.
    Memory (wide dtype; Q = chunk_size, L' = L rounded up to Q): four (B, H, L', Q R^2) intra-chunk
    matrices (C B^T, W, dy v^T, its masked product) and a few (B, H, L', Q) weight matrices,
    the entering states and their adjoints (B, L'/Q, H, P, N) each, and O(B L' R H (P + N)) for
    the inputs and gradients: O(B H L (Q R^2 + P N / Q + R (P + N))) in all. The Q x Q terms are
    skipped when dy is None.
    """
    dy, dS_L, dk_L, dv_L = _unpack_scan_cotangent(cotangent)
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    Q = int(chunk_size)
    wide = _wide(xp, x.dtype)
    zero = xp.zeros((), dtype=wide)

    dtw, Aw, trw = (xp.astype(a, wide) for a in (dt, A, trap))
    a = Aw * dtw
    gamma = trw * dtw
    owed = (1.0 - trw) * dtw
    sg = xp.concat([owed[:, 1:], xp.zeros((Bsz, 1, H), dtype=wide)], axis=1)
    scale = gamma + sg

    S = xp.zeros((Bsz, H, P, N), dtype=wide) if initial_state is None else xp.astype(initial_state, wide)
    u0 = None
    if initial_k is not None and initial_v is not None:
        v0 = _up(xp, initial_v, mimo_x, wide)  # (B, R, H, P)
        k0 = xp.astype(initial_k, wide)
        u0 = _outer(xp, v0, k0)
        S = S + xp.reshape(owed[:, 0], (Bsz, H, 1, 1)) * u0

    nc = -(-L // Q)
    pad = nc * Q - L
    QR = Q * R

    def tokens(arr):  # (B, L, H) -> (B, nc, H, Q)
        return xp.permute_dims(xp.reshape(_pad_time(xp, arr, pad), (Bsz, nc, Q, H)), (0, 1, 3, 2))

    def untokens(arr):  # (B, nc, H, Q) -> (B, L, H)
        return xp.reshape(xp.permute_dims(arr, (0, 1, 3, 2)), (Bsz, nc * Q, H))[:, :L]

    def streams(arr, width):  # (B, L, R, H, width) -> (B, nc, H, Q*R, width), row = t*R + r
        arr = xp.reshape(_pad_time(xp, arr, pad), (Bsz, nc, Q, R, H, width))
        return xp.reshape(xp.permute_dims(arr, (0, 1, 4, 2, 3, 5)), (Bsz, nc, H, QR, width))

    def unstreams(arr, width):  # (B, nc, H, Q*R, width) -> (B, L, R, H, width)
        arr = xp.permute_dims(xp.reshape(arr, (Bsz, nc, H, Q, R, width)), (0, 1, 3, 4, 2, 5))
        return xp.reshape(arr, (Bsz, nc * Q, R, H, width))[:, :L]

    def rows(arr):  # (B, nc, H, Q) -> (B, nc, H, Q*R, 1): a token's value on each of its R rows
        arr = xp.broadcast_to(xp.reshape(arr, (Bsz, nc, H, Q, 1)), (Bsz, nc, H, Q, R))
        return xp.reshape(arr, (Bsz, nc, H, QR, 1))

    def per_token(arr):  # (B, nc, H, Q*R, width) -> (B, nc, H, Q): summed over ranks and width
        return xp.sum(xp.reshape(xp.sum(arr, axis=-1), (Bsz, nc, H, Q, R)), axis=-1)

    ac, gc, sc = tokens(a), tokens(gamma), tokens(scale)
    vc = streams(_up(xp, x, mimo_x, wide), P)  # (B, nc, H, QR, P)
    Bc = streams(xp.astype(B, wide), N)
    Cc = streams(xp.astype(C, wide), N)

    idx = xp.arange(Q)
    below = xp.expand_dims(idx, axis=1) > xp.expand_dims(idx, axis=0)
    lower = xp.expand_dims(idx, axis=1) >= xp.expand_dims(idx, axis=0)
    diag = xp.expand_dims(idx, axis=1) == xp.expand_dims(idx, axis=0)
    seg = xp.cumulative_sum(xp.where(below, xp.expand_dims(ac, axis=-1), zero), axis=-2)  # (B,nc,H,Q,Q)
    e = xp.exp(xp.cumulative_sum(ac, axis=-1))  # exp(sum_{k<=t} a_k)   (B, nc, H, Q)
    f = xp.exp(seg[..., -1, :])  # exp(seg(Q-1, s))
    to_end = f * sc
    total = e[..., -1]  # (B, nc, H)

    # ---- recompute the states entering the chunks (the forward's scan over chunks)
    S_chunk = xp.matmul(xp.matrix_transpose(vc * rows(to_end)), Bc)  # (B, nc, H, P, N)
    entering = []
    for c in range(nc):
        entering.append(S)
        S = xp.reshape(total[:, c], (Bsz, H, 1, 1)) * S + S_chunk[:, c]
    S_in = xp.stack(entering, axis=1)  # (B, nc, H, P, N)

    # ---- adjoint of the state leaving each chunk: a reverse scan over chunks
    dyc = None if dy is None else streams(xp.astype(dy, wide), P)
    Uc = None if dyc is None else xp.matmul(xp.matrix_transpose(dyc * rows(e)), Cc)  # (B,nc,H,P,N)
    g = xp.zeros((Bsz, H, P, N), dtype=wide) if dS_L is None else xp.astype(dS_L, wide)
    leaving = [None] * nc
    for c in reversed(range(nc)):
        leaving[c] = g
        g = xp.reshape(total[:, c], (Bsz, H, 1, 1)) * g
        if Uc is not None:
            g = g + Uc[:, c]
    dS_out = xp.stack(leaving, axis=1)  # (B, nc, H, P, N)
    dS0 = g  # adjoint of S'_{-1}

    # ---- each chunk's contribution to its end state, and the entering state passing through
    BG = xp.matmul(Bc, xp.matrix_transpose(dS_out))  # B_row dS_out^T   (B, nc, H, QR, P)
    dvc = rows(to_end) * BG
    dBc = rows(to_end) * xp.matmul(vc, dS_out)  # (B, nc, H, QR, N)
    dto_end = per_token(vc * BG)
    dsc = f * dto_end
    da = _excl_cumsum(xp, to_end * dto_end)  # seg(Q-1, s) = sum_{k > s} a_k
    da = da + xp.expand_dims(total * xp.sum(dS_out * S_in, axis=(-2, -1)), axis=-1)
    dgc = xp.zeros(gc.shape, dtype=wide)

    if dyc is not None:
        # entering states: y_off = e_t C S'_in^T
        dCc = rows(e) * xp.matmul(dyc, S_in)
        de = per_token(dyc * xp.matmul(Cc, xp.matrix_transpose(S_in)))
        da = da + _rev_cumsum(xp, e * de, axis=-1)
        # intra-chunk: y = W v, W = (C B^T) o w over the rank blocks
        ex = xp.where(lower, xp.exp(seg), zero)
        w = ex * xp.where(diag, xp.expand_dims(gc, axis=-2), xp.expand_dims(sc, axis=-2))
        w7 = xp.reshape(w, (Bsz, nc, H, Q, 1, Q, 1))
        CB = xp.matmul(Cc, xp.matrix_transpose(Bc))  # (B, nc, H, QR, QR)
        Wm = xp.reshape(xp.reshape(CB, (Bsz, nc, H, Q, R, Q, R)) * w7, (Bsz, nc, H, QR, QR))
        dvc = dvc + xp.matmul(xp.matrix_transpose(Wm), dyc)
        dSc = xp.reshape(xp.matmul(dyc, xp.matrix_transpose(vc)), (Bsz, nc, H, Q, R, Q, R))
        dCB = xp.reshape(dSc * w7, (Bsz, nc, H, QR, QR))
        dCc = dCc + xp.matmul(dCB, Bc)
        dBc = dBc + xp.matmul(xp.matrix_transpose(dCB), Cc)
        dw = xp.sum(dSc * xp.reshape(CB, (Bsz, nc, H, Q, R, Q, R)), axis=(4, 6))  # (B, nc, H, Q, Q)
        # seg[t, s] = sum_{s < k <= t} a_k: da_k = sum_{t >= k} sum_{s < k} dseg[t, s]
        da = da + xp.sum(xp.where(below, _rev_cumsum(xp, dw * w, axis=-2), zero), axis=-1)
        dcoef = dw * ex
        dgc = dgc + xp.sum(xp.where(diag, dcoef, zero), axis=-1)
        dsc = dsc + xp.sum(xp.where(below, dcoef, zero), axis=-2)
        if D is not None:
            Dw = xp.reshape(xp.astype(D, wide), (1, 1, H, 1, 1))
            dvc = dvc + Dw * dyc
        dC = unstreams(dCc, N)
    else:
        dC = xp.zeros((Bsz, L, R, H, N), dtype=wide)

    out = {}
    # ---- back to the tokens: v_r = x o mimo_x[:, r]; scale = gamma + sg; sg_t = owed_{t+1}
    dx, dmx = _up_vjp(xp, unstreams(dvc, P), x, mimo_x, wide)
    dscale = untokens(dsc)
    dgamma = untokens(dgc) + dscale
    dowed = xp.concat([xp.zeros((Bsz, 1, H), dtype=wide), dscale[:, :-1]], axis=1)
    if u0 is not None:
        du0_coef = xp.sum(dS0 * u0, axis=(-2, -1))  # (B, H)
        dowed = xp.concat([dowed[:, :1] + xp.expand_dims(du0_coef, axis=1), dowed[:, 1:]], axis=1)
    da = untokens(da)
    out["x"] = xp.astype(_add_last(xp, dx, dv_L, wide), x.dtype)
    out["dt"] = xp.astype(da * Aw + dgamma * trw + dowed * (1.0 - trw), dt.dtype)
    out["A"] = xp.astype(da * dtw, A.dtype)
    out["trap"] = xp.astype((dgamma - dowed) * dtw, trap.dtype)
    out["B"] = xp.astype(_add_last(xp, unstreams(dBc, N), dk_L, wide), B.dtype)
    out["C"] = xp.astype(dC, C.dtype)
    if D is not None:
        if dyc is None:
            out["D"] = xp.zeros(D.shape, dtype=D.dtype)
        else:
            out["D"] = xp.astype(xp.sum(dyc * vc, axis=(0, 1, 3, 4)), D.dtype)
    if initial_state is not None:
        out["initial_state"] = xp.astype(dS0, initial_state.dtype)
    # ---- the cached k/v: S'_{-1} = initial_state + owed_0 sum_r v0_r k0_r^T
    if u0 is not None:
        du0 = xp.reshape(owed[:, 0], (Bsz, H, 1, 1)) * dS0  # (B, H, P, N)
        dv0 = xp.matmul(xp.expand_dims(du0, axis=1), xp.expand_dims(k0, axis=-1))[..., 0]  # (B,R,H,P)
        dk0 = xp.matmul(xp.expand_dims(xp.matrix_transpose(du0), axis=1), xp.expand_dims(v0, axis=-1))[..., 0]
        dxv0, dmx0 = _up_vjp(xp, dv0, initial_v, mimo_x, wide)
        if dmx is not None:
            dmx = dmx + dmx0
        out["initial_k"] = xp.astype(dk0, initial_k.dtype)
        out["initial_v"] = xp.astype(dxv0, initial_v.dtype)
    else:
        if initial_k is not None:
            out["initial_k"] = xp.zeros(initial_k.shape, dtype=initial_k.dtype)
        if initial_v is not None:
            out["initial_v"] = xp.zeros(initial_v.shape, dtype=initial_v.dtype)
    if mimo_x is not None:
        out["mimo_x"] = xp.astype(dmx, mimo_x.dtype)
    return {name: out[name] for name in _SCAN_VJP_ORDER if name in out}


_SCAN_VJP_ORDER = ("x", "dt", "A", "trap", "B", "C", "D", "mimo_x", "initial_state", "initial_k",
                   "initial_v")


def mamba3_angles_vjp(xp, cotangent, angles, dt, initial_angle=None):
    """Angles backward. cotangent = (dphi (B, L, H, S) | None, dfinal (B, H, S) | None) -> dict.

    The adjoint of phi_t is g_t = dfinal + sum_{k >= t} dphi_k (a reverse cumulative sum of
    cotangents: no wrap, no decay); dangles_t = sum_h g_t pi dt_t (1 - tanh^2), ddt_t = sum_s g_t
    pi tanh, dinitial_angle = g_0. Memory: O(B L H S) in the wide dtype.
    """
    dphi, dfin = _unpack_angles_cotangent(cotangent)
    Bsz, L, S = angles.shape
    H = dt.shape[2]
    wide = _wide(xp, angles.dtype, dt.dtype)
    th = xp.tanh(xp.astype(angles, wide))  # (B, L, S)
    g = xp.zeros((Bsz, L, H, S), dtype=wide) if dphi is None else _rev_cumsum(xp, xp.astype(dphi, wide), 1)
    if dfin is not None:
        g = g + xp.expand_dims(xp.astype(dfin, wide), axis=1)
    dtw = xp.astype(dt, wide)
    out = {
        "angles": xp.astype(xp.sum(g * xp.expand_dims(dtw, axis=-1), axis=2) * math.pi * (1.0 - th * th),
                            angles.dtype),
        "dt": xp.astype(xp.sum(g * xp.expand_dims(th, axis=2), axis=-1) * math.pi, dt.dtype),
    }
    if initial_angle is not None:
        out["initial_angle"] = xp.astype(g[:, 0], initial_angle.dtype)
    return out


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


def check_scan_args(op, x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state, initial_k,
                    initial_v, bc_dims=("B", "L", "R", "H", "N")) -> Dims:
    """The mamba3_scan argument checks (also mamba3_rope_scan's, whose B, C have bc_dims);
    returns the Dims for further checks. Floating dtypes are the caller's to check."""
    d = Dims(op)
    d.check("x", x, ("B", "L", "H", "P"))
    for name, arr in (("dt", dt), ("A", A), ("trap", trap)):
        d.check(name, arr, ("B", "L", "H"))
    d.check("B", B, bc_dims)
    d.check("C", C, bc_dims)
    if d["L"] < 1:
        raise ShapeError(f"{op}: the sequence must have L >= 1 tokens, got x shape {tuple(x.shape)}")
    d.check("D", D, ("H",), optional=True)
    _check_mimo(op, d, mimo_x, B)
    d.check("initial_state", initial_state, ("B", "H", "P", "N"), optional=True)
    d.check("initial_k", initial_k, ("B", "R", "H", "N"), optional=True)
    d.check("initial_v", initial_v, ("B", "H", "P"), optional=True)
    _positive_int(op, "chunk_size", chunk_size)
    return d


def check_scan_cotangent(op, d: Dims, cotangent):
    """mamba3_scan_vjp's cotangent (dy, dfinal_state, dfinal_k, dfinal_v) against d's dims."""
    dy, dS, dk, dv = _unpack_scan_cotangent(cotangent)
    cots = (("dy (cotangent[0])", dy, ("B", "L", "R", "H", "P")),
            ("dfinal_state (cotangent[1])", dS, ("B", "H", "P", "N")),
            ("dfinal_k (cotangent[2])", dk, ("B", "R", "H", "N")),
            ("dfinal_v (cotangent[3])", dv, ("B", "H", "P")))
    for name, arr, dims in cots:
        d.check(name, arr, dims, optional=True)
        check_floating(op, name, arr)


def validate_mamba3_scan(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64,
                         initial_state=None, initial_k=None, initial_v=None):
    op = "mamba3_scan"
    check_scan_args(op, x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state, initial_k,
                    initial_v)
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


def validate_mamba3_scan_vjp(cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64,
                             initial_state=None, initial_k=None, initial_v=None):
    validate_mamba3_scan(x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state, initial_k,
                         initial_v)
    op = "mamba3_scan_vjp"
    d = Dims(op)
    d.check("x", x, ("B", "L", "H", "P"))
    d.check("B", B, ("B", "L", "R", "H", "N"))
    check_scan_cotangent(op, d, cotangent)


def validate_mamba3_angles_vjp(cotangent, angles, dt, initial_angle=None):
    validate_mamba3_angles(angles, dt, initial_angle)
    op = "mamba3_angles_vjp"
    dphi, dfin = _unpack_angles_cotangent(cotangent)
    d = Dims(op)
    d.check("angles", angles, ("B", "L", "S"))
    d.check("dt", dt, ("B", "L", "H"))
    for name, arr, dims in (("dphi (cotangent[0])", dphi, ("B", "L", "H", "S")),
                            ("dfinal_angle (cotangent[1])", dfin, ("B", "H", "S"))):
        d.check(name, arr, dims, optional=True)
        check_floating(op, name, arr)


register(OpSpec("mamba3_scan", "mamba3", mamba3_scan_ref, mamba3_scan, validate_mamba3_scan))
register(OpSpec("mamba3_step", "mamba3", mamba3_step_ref, mamba3_step, validate_mamba3_step,
                step_of="mamba3_scan"))
register(OpSpec("mamba3_angles", "mamba3", mamba3_angles_ref, mamba3_angles, validate_mamba3_angles))
register(OpSpec("mamba3_scan_vjp", "mamba3", mamba3_scan_vjp_ref, mamba3_scan_vjp,
                validate_mamba3_scan_vjp, vjp_of="mamba3_scan"))
register(OpSpec("mamba3_angles_vjp", "mamba3", mamba3_angles_vjp_ref, mamba3_angles_vjp,
                validate_mamba3_angles_vjp, vjp_of="mamba3_angles"))
