"""The Mamba-2 SSD (state space duality) scan, with its recurrent step.

ssd_scan(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
         dt_limit=(0.0, inf), initial_state=None, seq_idx=None)
    x, z: (B, L, H, P); dt: (B, L, H); A: (H,) negative reals (already -exp(A_log));
    B, C: (B, L, G, N) with H % G == 0, head h reading group h // (H // G);
    D: (H,) or (H, P); dt_bias: (H,); initial_state: (B, H, P, N) or None (zeros);
    seq_idx: (B, L) integers, nondecreasing along each row (packed sequences) or None.
        dt_t = dt_t + dt_bias;  softplus(dt_t) when dt_softplus;  clamp(dt_t, *dt_limit) unless
        dt_limit is (0, inf)  (the official mamba_chunk_scan_combined's order)
        S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T        (per head; S_t is P x N)
        y_t = S_t C_t + D x_t;   y_t *= silu(z_t) when z is given
    With seq_idx, the state is reset to zero before every t where seq_idx[t] != seq_idx[t-1]:
    no decay crosses a boundary between two sequences, and initial_state only feeds the first.
    Returns (y (B, L, H, P) in x's dtype, final_state S_L (B, H, P, N) in float32, or float64
    when x is float64). All decays and states are computed in that wide dtype.
    ``chunk_size`` (Q) sets the default composition's block size; the result does not depend on it.

ssd_step(x, dt, A, B, C, state, D=None, z=None, dt_bias=None, dt_softplus=False,
         dt_limit=(0.0, inf))
    One token: x, z: (B, H, P); dt: (B, H); B, C: (B, G, N); state: (B, H, P, N).
    Returns (y (B, H, P) in x's dtype, new_state (B, H, P, N) in the wide dtype).

ssd_scan_vjp(cotangent, <ssd_scan's arguments>) with cotangent = (dy | None, dfinal_state | None)
    -> dict of gradients: x, dt, A, B, C (B, C summed over the heads of each group) and, when
    given, D, z, dt_bias, initial_state; each in its argument's shape (and dtype, for the default).
    softplus' derivative is sigmoid, and 1 above 20; an active dt_limit passes gradient only
    strictly inside (lo, hi); nothing crosses a seq_idx boundary. Reference: the reverse-time
    loop. Default: the transpose of the chunked algorithm (see its docstring, memory included).

The default composition is the chunked SSD algorithm. Time is cut into chunks of Q tokens (the
last chunk is padded with dt = 0, x = B = C = 0, which leaves the state untouched). With
a_t = dt_t A and seg(i, j) = sum_{k=j+1..i} a_k for j <= i inside a chunk:
    y_diag  = ((C B^T) o exp(seg) o mask) (dt o x)       the chunk attending to itself
    S_c     = sum_j exp(seg(Q-1, j)) dt_j x_j B_j^T      the chunk's own contribution to its end
    S_in    : S_in[0] = initial_state,  S_in[c+1] = exp(sum_chunk a) S_in[c] + S_c
    y_off   = exp(seg_from_start(i)) C_i S_in[c]^T       the state entering the chunk, decayed
seg is a masked cumulative sum (a_i placed below the diagonal, summed down the rows), so every
exponent is a short sum of the relevant a_k <= 0: nothing overflows and strong decay over long
sequences underflows harmlessly to exact zeros. seq_idx multiplies each decay by "same
sequence" masks, which makes packed sequences exact.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims, check_divides, check_floating
from mamba_core.ops.activations import (
    SOFTPLUS_THRESHOLD, sigmoid, sigmoid_ref, silu, silu_ref, softplus, softplus_ref,
)
from mamba_core.ops.spec import OpSpec, register
from mamba_core.ops._dtypes import wide as _wide

NO_LIMIT = (0.0, float("inf"))


def _limited(dt_limit) -> bool:
    return tuple(float(v) for v in dt_limit) != NO_LIMIT


# ---- references ---------------------------------------------------------------------------
def _dt_ref(dt, dt_bias, dt_softplus, dt_limit):
    dt = np.asarray(dt, np.float64)
    if dt_bias is not None:
        dt = dt + np.asarray(dt_bias, np.float64)
    if dt_softplus:
        dt = softplus_ref(dt)
    if _limited(dt_limit):
        dt = np.clip(dt, float(dt_limit[0]), float(dt_limit[1]))
    return dt


def _skip_gate_ref(y, x, D, z):
    if D is not None:
        D = np.asarray(D, np.float64)
        y = y + (D[:, None] if D.ndim == 1 else D) * x
    if z is not None:
        y = y * silu_ref(z)
    return y


def ssd_scan_ref(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                 dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """The SSD recurrence as an explicit loop over time, float64 (chunk_size is ignored)."""
    x = np.asarray(x, np.float64)
    A = np.asarray(A, np.float64)
    Bm = np.asarray(B, np.float64)
    Cm = np.asarray(C, np.float64)
    Bsz, L, H, P = x.shape
    G, N = Bm.shape[2], Bm.shape[3]
    group = np.arange(H) // (H // G)  # the group each head reads
    dt = _dt_ref(dt, dt_bias, dt_softplus, dt_limit)
    S = np.zeros((Bsz, H, P, N)) if initial_state is None else np.asarray(initial_state, np.float64).copy()
    y = np.empty((Bsz, L, H, P))
    for t in range(L):
        if seq_idx is not None and t > 0:
            new_seq = np.asarray(seq_idx)[:, t] != np.asarray(seq_idx)[:, t - 1]  # (B,)
            S = np.where(new_seq[:, None, None, None], 0.0, S)
        Bt = Bm[:, t][:, group]  # (B, H, N)
        Ct = Cm[:, t][:, group]
        decay = np.exp(dt[:, t] * A)[:, :, None, None]  # (B, H, 1, 1)
        S = decay * S + (dt[:, t, :, None] * x[:, t])[:, :, :, None] * Bt[:, :, None, :]
        y[:, t] = (S * Ct[:, :, None, :]).sum(-1)
    return _skip_gate_ref(y, x, D, z), S


def ssd_step_ref(x, dt, A, B, C, state, D=None, z=None, dt_bias=None, dt_softplus=False,
                 dt_limit=NO_LIMIT):
    """One token of the SSD recurrence, float64."""
    y, S = ssd_scan_ref(
        np.asarray(x)[:, None], np.asarray(dt)[:, None], A, np.asarray(B)[:, None],
        np.asarray(C)[:, None], D=D, z=None if z is None else np.asarray(z)[:, None],
        dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=state,
    )
    return y[:, 0], S


def _unpack_cotangent(cotangent):
    if not (isinstance(cotangent, (tuple, list)) and len(cotangent) == 2):
        raise ShapeError(
            "ssd_scan_vjp: 'cotangent' must be a pair (dy (B, L, H, P) or None, "
            f"dfinal_state (B, H, P, N) or None), got {type(cotangent).__name__}"
        )
    return cotangent[0], cotangent[1]


def _dt_vjp_ref(ddt, dt, dt_bias, dt_softplus, dt_limit):
    """Through clamp (gradient strictly inside the limits), softplus (sigmoid, 1 above 20), bias."""
    u = np.asarray(dt, np.float64)
    if dt_bias is not None:
        u = u + np.asarray(dt_bias, np.float64)
    if _limited(dt_limit):
        s = softplus_ref(u) if dt_softplus else u
        ddt = np.where((s > float(dt_limit[0])) & (s < float(dt_limit[1])), ddt, 0.0)
    if dt_softplus:
        ddt = ddt * np.where(u > SOFTPLUS_THRESHOLD, 1.0, sigmoid_ref(u))
    return ddt


def _skip_gate_vjp_ref(dy, y0, x, D, z):
    """The backward of y = (y0 + D x) * silu(z): returns (dy0, dx, dD, dz) (None where absent)."""
    dx = dD = dz = None
    if z is not None:
        z = np.asarray(z, np.float64)
        y1 = y0 if D is None else _skip_gate_ref(y0, x, D, None)
        sz = sigmoid_ref(z)
        dz = dy * y1 * sz * (1.0 + z * (1.0 - sz))  # silu'(z) = sig(z) (1 + z (1 - sig(z)))
        dy = dy * z * sz
    if D is not None:
        D = np.asarray(D, np.float64)
        dD = (dy * x).sum(axis=(0, 1))  # (H, P)
        if D.ndim == 1:
            dD = dD.sum(-1)
        dx = (D[:, None] if D.ndim == 1 else D) * dy
    return dy, dx, dD, dz


def ssd_scan_vjp_ref(cotangent, x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None,
                     dt_softplus=False, dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """The gradient of ssd_scan_ref as its reverse-time loop (the adjoint state dS), float64.

    cotangent = (dy (B, L, H, P) or None, dS_L (B, H, P, N) or None). Returns a dict with
    x, dt, A, B, C and, when given, D, z, dt_bias, initial_state, each the argument's shape.
    Forward pass kept: S_{t-1} (after any seq_idx reset) and S_t for every t.
    Backward, for t = L-1 .. 0 with dS the adjoint of S_t:
        dS += dy0_t C_t^T;  dC_t = dy0_t^T S_t;  dx_t = dt_t dS B_t;  dB_t = dt_t dS^T x_t;
        ddt_t = x_t^T dS B_t + A da_t;  da_t = exp(a_t) <dS, S_{t-1}>;  dA += dt_t da_t;
        dS <- exp(a_t) dS, and dS <- 0 when t starts a new sequence (nothing crosses a boundary).
    dinitial_state is the dS left after t = 0.
    """
    dy, dS_L = _unpack_cotangent(cotangent)
    x = np.asarray(x, np.float64)
    A = np.asarray(A, np.float64)
    Bm = np.asarray(B, np.float64)
    Cm = np.asarray(C, np.float64)
    Bsz, L, H, P = x.shape
    G, N = Bm.shape[2], Bm.shape[3]
    group = np.arange(H) // (H // G)
    dtv = _dt_ref(dt, dt_bias, dt_softplus, dt_limit)
    sq = None if seq_idx is None else np.asarray(seq_idx)

    # forward, keeping the states
    S = np.zeros((Bsz, H, P, N)) if initial_state is None else np.asarray(initial_state, np.float64).copy()
    before, after = [], []
    y0 = np.empty((Bsz, L, H, P))
    for t in range(L):
        if sq is not None and t > 0:
            S = np.where((sq[:, t] != sq[:, t - 1])[:, None, None, None], 0.0, S)
        before.append(S)
        decay = np.exp(dtv[:, t] * A)[:, :, None, None]
        S = decay * S + (dtv[:, t, :, None] * x[:, t])[:, :, :, None] * Bm[:, t][:, group][:, :, None, :]
        after.append(S)
        y0[:, t] = (S * Cm[:, t][:, group][:, :, None, :]).sum(-1)

    # output: skip and gate
    dy = np.zeros((Bsz, L, H, P)) if dy is None else np.asarray(dy, np.float64)
    dy0, dx_skip, dD, dz = _skip_gate_vjp_ref(dy, y0, x, D, z)
    dx = np.zeros((Bsz, L, H, P)) if dx_skip is None else dx_skip

    # reverse-time loop
    dS = np.zeros((Bsz, H, P, N)) if dS_L is None else np.asarray(dS_L, np.float64).copy()
    ddt = np.zeros((Bsz, L, H))
    dA = np.zeros(H)
    dBh = np.zeros((Bsz, L, H, N))  # per head, summed into groups at the end
    dCh = np.zeros((Bsz, L, H, N))
    for t in reversed(range(L)):
        Bt = Bm[:, t][:, group]  # (B, H, N)
        Ct = Cm[:, t][:, group]
        dS = dS + dy0[:, t, :, :, None] * Ct[:, :, None, :]
        dCh[:, t] = (dy0[:, t, :, :, None] * after[t]).sum(2)
        dx[:, t] += dtv[:, t, :, None] * (dS * Bt[:, :, None, :]).sum(-1)
        dBh[:, t] = dtv[:, t, :, None] * (dS * x[:, t, :, :, None]).sum(2)
        ddt[:, t] = (dS * x[:, t, :, :, None] * Bt[:, :, None, :]).sum((2, 3))
        decay = np.exp(dtv[:, t] * A)  # (B, H)
        da = decay * (dS * before[t]).sum((2, 3))
        ddt[:, t] += A * da
        dA += (dtv[:, t] * da).sum(0)
        dS = decay[:, :, None, None] * dS
        if sq is not None and t > 0:
            dS = np.where((sq[:, t] != sq[:, t - 1])[:, None, None, None], 0.0, dS)

    dB = np.zeros((Bsz, L, G, N))
    dC = np.zeros((Bsz, L, G, N))
    for h in range(H):
        dB[:, :, group[h]] += dBh[:, :, h]
        dC[:, :, group[h]] += dCh[:, :, h]
    ddt = _dt_vjp_ref(ddt, dt, dt_bias, dt_softplus, dt_limit)
    out = {"x": dx, "dt": ddt, "A": dA, "B": dB, "C": dC}
    if D is not None:
        out["D"] = dD
    if z is not None:
        out["z"] = dz
    if dt_bias is not None:
        out["dt_bias"] = ddt.sum(axis=(0, 1))
    if initial_state is not None:
        out["initial_state"] = dS
    return out


# ---- default compositions -----------------------------------------------------------------


def _dt(xp, dt, dt_bias, dt_softplus, dt_limit, wide):
    dt = xp.astype(dt, wide)
    if dt_bias is not None:
        dt = dt + xp.astype(dt_bias, wide)
    if dt_softplus:
        dt = softplus(xp, dt)
    if _limited(dt_limit):
        dt = xp.clip(dt, min=float(dt_limit[0]), max=float(dt_limit[1]))
    return dt


def _skip_gate(xp, y, x, D, z, wide):
    """y + D x, then * silu(z). y, x, z: (..., H, P); D: (H,) or (H, P)."""
    if D is not None:
        Dw = xp.astype(D, wide)
        if D.ndim == 1:
            Dw = xp.expand_dims(Dw, axis=1)
        y = y + Dw * xp.astype(x, wide)
    if z is not None:
        y = y * silu(xp, xp.astype(z, wide))
    return y


def _pad_time(xp, a, pad, axis=1):
    """Append ``pad`` zeros along ``axis``."""
    if pad == 0:
        return a
    shape = list(a.shape)
    shape[axis] = pad
    return xp.concat([a, xp.zeros(tuple(shape), dtype=a.dtype)], axis=axis)


def _chunked(xp, x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_limit, seq_idx):
    """The chunk layout shared by the chunked forward and its VJP (for L >= 1).

    Pads time to nc * Q and returns a dict with, in the wide dtype:
    xc (B, nc, G, Hg, Q, P); dtc, a, from_start (B, nc, G, Hg, Q); Bc, Cc (B, nc, G, 1, Q, N);
    seg, decay_ij (B, nc, G, Hg, Q, Q); to_end, from_in (B, nc, G, Hg, Q); total (B, nc, G, Hg);
    plus the sizes. The "same sequence" masks of seq_idx are already applied to decay_ij,
    to_end, from_in and total.
    """
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Hg = H // G
    Q = int(chunk_size)
    wide = _wide(xp, x.dtype)
    nc = -(-L // Q)
    pad = nc * Q - L
    dtw = _pad_time(xp, _dt(xp, dt, dt_bias, dt_softplus, dt_limit, wide), pad)  # dt = 0: no-op
    xw = _pad_time(xp, xp.astype(x, wide), pad)
    Bw = _pad_time(xp, xp.astype(B, wide), pad)
    Cw = _pad_time(xp, xp.astype(C, wide), pad)

    # Layout (B, nc, G, Hg, Q, ...): heads grouped under their B/C group so B and C broadcast.
    xc = _to_chunks(xp, xw, nc, Q, G, Hg)
    dtc = xp.permute_dims(xp.reshape(dtw, (Bsz, nc, Q, G, Hg)), (0, 1, 3, 4, 2))  # (B,nc,G,Hg,Q)
    Bc = xp.expand_dims(xp.permute_dims(xp.reshape(Bw, (Bsz, nc, Q, G, N)), (0, 1, 3, 2, 4)), axis=3)
    Cc = xp.expand_dims(xp.permute_dims(xp.reshape(Cw, (Bsz, nc, Q, G, N)), (0, 1, 3, 2, 4)), axis=3)
    a = dtc * xp.reshape(xp.astype(A, wide), (G, Hg, 1))  # (B, nc, G, Hg, Q), a_t = dt_t A <= 0

    # seg[i, j] = sum_{k=j+1..i} a_k (i >= j): a_i placed strictly below the diagonal, summed
    # down the rows. Each entry is a short sum of the terms it needs, never a difference of
    # long cumulative sums.
    idx = xp.arange(Q)
    below = xp.expand_dims(idx, axis=1) > xp.expand_dims(idx, axis=0)  # (Q, Q): i > j
    lower = xp.expand_dims(idx, axis=1) >= xp.expand_dims(idx, axis=0)  # i >= j
    zero = xp.zeros((), dtype=wide)
    seg = xp.cumulative_sum(xp.where(below, xp.expand_dims(a, axis=-1), zero), axis=-2)
    from_start = xp.cumulative_sum(a, axis=-1)  # sum_{k=0..i} a_k      (B, nc, G, Hg, Q)
    chunk_total = from_start[..., -1]  # sum over the chunk           (B, nc, G, Hg)

    keep = lower  # which (i, j) pairs carry decay
    to_end_ok = None  # which j reach the chunk end (None: all)
    enter_ok = None  # which i see the state entering the chunk (None: all)
    pass_ok = None  # whether the entering state survives the whole chunk (None: yes)
    if seq_idx is not None:
        sq = seq_idx
        if pad:  # padding continues the last sequence
            sq = xp.concat([sq, xp.broadcast_to(sq[:, -1:], (Bsz, pad))], axis=1)
        sq = xp.reshape(sq, (Bsz, nc, 1, 1, Q))  # broadcasts against (B, nc, G, Hg, Q)
        prev = xp.concat([sq[:, :1, ..., :1], sq[:, :-1, ..., -1:]], axis=1)  # seq before each chunk
        same = xp.expand_dims(sq, axis=-1) == xp.expand_dims(sq, axis=-2)  # (B, nc, 1, 1, Q, Q)
        keep = xp.logical_and(keep, same)
        to_end_ok = sq == sq[..., -1:]
        enter_ok = sq == prev
        pass_ok = sq[..., -1] == prev[..., 0]  # (B, nc, 1, 1)

    decay_ij = xp.where(keep, xp.exp(seg), zero)  # (B, nc, G, Hg, Q, Q)
    to_end = xp.exp(seg[..., -1, :])  # exp(seg[Q-1, j])               (B, nc, G, Hg, Q)
    if to_end_ok is not None:
        to_end = xp.where(to_end_ok, to_end, zero)
    total = xp.exp(chunk_total)  # (B, nc, G, Hg)
    if pass_ok is not None:
        total = xp.where(pass_ok, total, zero)
    from_in = xp.exp(from_start)  # exp(sum_{k<=i} a_k)
    if enter_ok is not None:
        from_in = xp.where(enter_ok, from_in, zero)
    return dict(Bsz=Bsz, L=L, H=H, P=P, G=G, N=N, Hg=Hg, Q=Q, nc=nc, pad=pad, wide=wide,
                xc=xc, dtc=dtc, Bc=Bc, Cc=Cc, a=a, below=below, decay_ij=decay_ij,
                to_end=to_end, total=total, from_in=from_in)


def _to_chunks(xp, v, nc, Q, G, Hg):
    """(B, nc * Q, H, P) -> (B, nc, G, Hg, Q, P)."""
    Bsz, P = v.shape[0], v.shape[-1]
    return xp.permute_dims(xp.reshape(v, (Bsz, nc, Q, G, Hg, P)), (0, 1, 3, 4, 2, 5))


def _from_chunks(xp, v, L):
    """(B, nc, G, Hg, Q, P) -> (B, L, H, P), dropping the padding."""
    Bsz, nc, G, Hg, Q, P = v.shape
    return xp.reshape(xp.permute_dims(v, (0, 1, 4, 2, 3, 5)), (Bsz, nc * Q, G * Hg, P))[:, :L]


def _entering_states(xp, k, dx, S):
    """The scan over chunks. dx = dt o x (B, nc, G, Hg, Q, P); S: the initial state (B, G, Hg, P, N).

    Returns (S_in (B, nc, G, Hg, P, N): the state entering each chunk, S_L)."""
    # each chunk's own contribution to its end state: sum_j exp(seg[Q-1, j]) dt_j x_j B_j^T
    S_chunk = xp.matmul(xp.matrix_transpose(dx * xp.expand_dims(k["to_end"], axis=-1)), k["Bc"])
    total = k["total"]
    entering = []
    for c in range(k["nc"]):
        entering.append(S)
        S = xp.expand_dims(xp.expand_dims(total[:, c], axis=-1), axis=-1) * S + S_chunk[:, c]
    return xp.stack(entering, axis=1), S


def ssd_scan(xp, x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """Chunked SSD scan. x: (B, L, H, P); dt: (B, L, H); B, C: (B, L, G, N) -> (y, S_L)."""
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Hg = H // G
    wide = _wide(xp, x.dtype)
    if initial_state is None:
        S = xp.zeros((Bsz, G, Hg, P, N), dtype=wide)
    else:
        S = xp.reshape(xp.astype(initial_state, wide), (Bsz, G, Hg, P, N))
    if L == 0:
        return xp.zeros((Bsz, 0, H, P), dtype=x.dtype), xp.reshape(S, (Bsz, H, P, N))
    k = _chunked(xp, x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_limit, seq_idx)

    # intra-chunk outputs: y_diag = ((C B^T) o exp(seg) o keep) (dt o x)
    CB = xp.matmul(k["Cc"], xp.matrix_transpose(k["Bc"]))  # (B, nc, G, 1, Q, Q)
    dx = xp.expand_dims(k["dtc"], axis=-1) * k["xc"]  # (B, nc, G, Hg, Q, P)
    y = xp.matmul(CB * k["decay_ij"], dx)

    # states entering each chunk: a scan over chunks from the initial state
    S_in, S = _entering_states(xp, k, dx, S)

    # inter-chunk outputs: y_off[i] = exp(sum_{k<=i} a_k) C_i S_in^T
    y = y + xp.expand_dims(k["from_in"], axis=-1) * xp.matmul(k["Cc"], xp.matrix_transpose(S_in))

    y = _skip_gate(xp, _from_chunks(xp, y, L), x, D, z, wide)
    return xp.astype(y, x.dtype), xp.reshape(S, (Bsz, H, P, N))


def ssd_step(xp, x, dt, A, B, C, state, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=NO_LIMIT):
    """One token. x, z: (B, H, P); dt: (B, H); B, C: (B, G, N); state: (B, H, P, N)."""
    Bsz, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    Hg = H // G
    wide = _wide(xp, x.dtype)
    xw = xp.reshape(xp.astype(x, wide), (Bsz, G, Hg, P, 1))
    dtw = xp.reshape(_dt(xp, dt, dt_bias, dt_softplus, dt_limit, wide), (Bsz, G, Hg, 1, 1))
    Aw = xp.reshape(xp.astype(A, wide), (G, Hg, 1, 1))
    Bw = xp.reshape(xp.astype(B, wide), (Bsz, G, 1, 1, N))
    Cw = xp.reshape(xp.astype(C, wide), (Bsz, G, 1, 1, N))
    S = xp.reshape(xp.astype(state, wide), (Bsz, G, Hg, P, N))
    S = xp.exp(dtw * Aw) * S + dtw * xw * Bw
    y = xp.reshape(xp.sum(S * Cw, axis=-1), (Bsz, H, P))
    y = _skip_gate(xp, y, x, D, z, wide)
    return xp.astype(y, x.dtype), xp.reshape(S, (Bsz, H, P, N))


def _dt_vjp(xp, ddt, dt, dt_bias, dt_softplus, dt_limit, wide):
    """The backward of _dt: clamp (strictly inside), softplus (sigmoid, 1 above 20), bias."""
    u = xp.astype(dt, wide)
    if dt_bias is not None:
        u = u + xp.astype(dt_bias, wide)
    zero = xp.zeros((), dtype=wide)
    if _limited(dt_limit):
        s = softplus(xp, u) if dt_softplus else u
        inside = xp.logical_and(s > float(dt_limit[0]), s < float(dt_limit[1]))
        ddt = xp.where(inside, ddt, zero)
    if dt_softplus:
        ddt = ddt * xp.where(u > SOFTPLUS_THRESHOLD, xp.ones((), dtype=wide), sigmoid(xp, u))
    return ddt


def _rev_cumsum(xp, v, axis):
    """out[k] = sum_{i >= k} v[i] along ``axis``."""
    return xp.flip(xp.cumulative_sum(xp.flip(v, axis=axis), axis=axis), axis=axis)


def ssd_scan_vjp(xp, cotangent, x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None,
                 dt_softplus=False, dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """Chunked SSD backward. cotangent = (dy (B, L, H, P) | None, dS_L (B, H, P, N) | None) -> dict.

    The transpose of the chunked forward, chunk for chunk (nothing is saved by the forward: the
    chunk layout and the entering states S_in are recomputed). Per chunk and head, with
    M = exp(seg) o keep, W = (C B^T) o M, dx = dt o x, e_i = exp(sum_{k<=i} a_k), f_j =
    exp(seg[Q-1, j]), and dS_out the adjoint of the state leaving the chunk:
        dS_out: a reverse scan over chunks, dS_out[nc-1] = dS_L,
                dS_out[c-1] = exp(chunk sum) dS_out[c] + (e o dy)^T C  (= dS_in[c]; dS_in[0] is
                dinitial_state)
        d(dx)   = W^T dy + f o (B dS_out^T)
        dC      = ((dy dx^T) o M) B + e o (dy S_in),  dB = ((dy dx^T) o M)^T C + f o (dx dS_out)
                  (both summed over the heads of a group)
        da      = from seg: da_k = sum_{i >= k > j} (dy dx^T o W)_ij, from e: reverse cumsum of
                  e o <dy, C S_in^T>, from f: exclusive cumsum of f o <dx, B dS_out^T>, and from
                  the chunk sum: exp(chunk sum) <dS_out, S_in> on every k of the chunk
        ddt = <d(dx), x> + A da,  dx = dt d(dx),  dA = sum dt da
    Every exponent is a masked short sum of a_k <= 0, as in the forward: stable for strong decay
    over long sequences. Memory (wide dtype, Q = chunk_size, L' = L rounded up to Q): a few
    (B, H, L', Q) intra-chunk matrices (W, its gradient, the seg gradient and its cumulative sum;
    (B, G, L', Q) for C B^T), the entering states and their adjoints (B, L'/Q, H, P, N) each,
    and O(B L' H P) for the inputs and gradients: O(B H L (Q + P N / Q)) in all. The Q x Q
    terms are skipped when dy is None.
    """
    dy, dS_L = _unpack_cotangent(cotangent)
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Hg = H // G
    wide = _wide(xp, x.dtype)
    zero = xp.zeros((), dtype=wide)
    out = {}
    if L == 0:
        out = {"x": xp.zeros(x.shape, dtype=x.dtype), "dt": xp.zeros(dt.shape, dtype=dt.dtype),
               "A": xp.zeros(A.shape, dtype=A.dtype), "B": xp.zeros(B.shape, dtype=B.dtype),
               "C": xp.zeros(C.shape, dtype=C.dtype)}
        if D is not None:
            out["D"] = xp.zeros(D.shape, dtype=D.dtype)
        if z is not None:
            out["z"] = xp.zeros(z.shape, dtype=z.dtype)
        if dt_bias is not None:
            out["dt_bias"] = xp.zeros(dt_bias.shape, dtype=dt_bias.dtype)
        if initial_state is not None:
            g = xp.zeros((Bsz, H, P, N), dtype=wide) if dS_L is None else xp.astype(dS_L, wide)
            out["initial_state"] = xp.astype(g, initial_state.dtype)
        return out

    k = _chunked(xp, x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_limit, seq_idx)
    nc, Q, pad = k["nc"], k["Q"], k["pad"]
    xc, dtc, Bc, Cc = k["xc"], k["dtc"], k["Bc"], k["Cc"]
    dxc = xp.expand_dims(dtc, axis=-1) * xc  # dt o x  (B, nc, G, Hg, Q, P)
    if initial_state is None:
        S0 = xp.zeros((Bsz, G, Hg, P, N), dtype=wide)
    else:
        S0 = xp.reshape(xp.astype(initial_state, wide), (Bsz, G, Hg, P, N))
    S_in, _ = _entering_states(xp, k, dxc, S0)  # (B, nc, G, Hg, P, N)
    e = xp.expand_dims(k["from_in"], axis=-1)  # (B, nc, G, Hg, Q, 1)
    f = xp.expand_dims(k["to_end"], axis=-1)

    # ---- output: skip and gate; dy0 is the cotangent of the scan's own output S_t C_t
    if dy is not None:
        dy0 = xp.astype(dy, wide)
        if z is not None:
            zw = xp.astype(z, wide)
            # y0 recomputed in the chunk layout (diagonal blocks + entering states)
            CB = xp.matmul(Cc, xp.matrix_transpose(Bc))
            y0 = xp.matmul(CB * k["decay_ij"], dxc) + e * xp.matmul(Cc, xp.matrix_transpose(S_in))
            y1 = _skip_gate(xp, _from_chunks(xp, y0, L), x, D, None, wide)
            sz = sigmoid(xp, zw)
            out["z"] = xp.astype(dy0 * y1 * sz * (1.0 + zw * (1.0 - sz)), z.dtype)
            dy0 = dy0 * zw * sz
        if D is not None:
            dD = xp.sum(dy0 * xp.astype(x, wide), axis=(0, 1))  # (H, P)
            if D.ndim == 1:
                dD = xp.sum(dD, axis=-1)
            out["D"] = xp.astype(dD, D.dtype)
        dyc = _to_chunks(xp, _pad_time(xp, dy0, pad), nc, Q, G, Hg)  # (B, nc, G, Hg, Q, P)
    else:
        if z is not None:
            out["z"] = xp.zeros(z.shape, dtype=z.dtype)
        if D is not None:
            out["D"] = xp.zeros(D.shape, dtype=D.dtype)
        dyc = None

    # ---- adjoint of the state leaving each chunk: a reverse scan over chunks
    g = xp.zeros((Bsz, G, Hg, P, N), dtype=wide) if dS_L is None else \
        xp.reshape(xp.astype(dS_L, wide), (Bsz, G, Hg, P, N))
    U = None if dyc is None else xp.matmul(xp.matrix_transpose(dyc * e), Cc)  # (B, nc, G, Hg, P, N)
    total = k["total"]
    leaving = [None] * nc
    for c in reversed(range(nc)):
        leaving[c] = g
        g = xp.expand_dims(xp.expand_dims(total[:, c], axis=-1), axis=-1) * g
        if U is not None:
            g = g + U[:, c]
    dS_out = xp.stack(leaving, axis=1)  # (B, nc, G, Hg, P, N)
    if initial_state is not None:
        out["initial_state"] = xp.astype(xp.reshape(g, (Bsz, H, P, N)), initial_state.dtype)

    # ---- the chunk's contribution to its end state, and the entering state passing through
    BdS = xp.matmul(Bc, xp.matrix_transpose(dS_out))  # B_j dS_out^T   (B, nc, G, Hg, Q, P)
    d_dx = f * BdS
    dBc = xp.sum(xp.matmul(dxc * f, dS_out), axis=3, keepdims=True)  # (B, nc, G, 1, Q, N)
    dseg_end = k["to_end"] * xp.sum(dxc * BdS, axis=-1)  # (B, nc, G, Hg, Q)
    # seg[Q-1, j] = sum_{k>j} a_k: each a_k collects the j < k (an exclusive cumulative sum)
    da = xp.concat([xp.zeros(dseg_end.shape[:-1] + (1,), dtype=wide),
                    xp.cumulative_sum(dseg_end, axis=-1)[..., :-1]], axis=-1)
    dtotal = total * xp.sum(dS_out * S_in, axis=(-2, -1))  # (B, nc, G, Hg)
    da = da + xp.expand_dims(dtotal, axis=-1)

    dCc = None
    if dyc is not None:
        # diagonal blocks: y = W dx with W = (C B^T) o M
        CB = xp.matmul(Cc, xp.matrix_transpose(Bc))  # (B, nc, G, 1, Q, Q)
        Wm = CB * k["decay_ij"]
        d_dx = d_dx + xp.matmul(xp.matrix_transpose(Wm), dyc)
        dW = xp.matmul(dyc, xp.matrix_transpose(dxc))  # (B, nc, G, Hg, Q, Q)
        dCB = xp.sum(dW * k["decay_ij"], axis=3, keepdims=True)
        dCc = xp.matmul(dCB, Bc)
        dBc = dBc + xp.matmul(xp.matrix_transpose(dCB), Cc)
        # seg[i, j] = sum_{j < k <= i} a_k: da_k = sum_{i >= k} sum_{j < k} dseg[i, j]
        dseg = _rev_cumsum(xp, dW * Wm, axis=-2)
        da = da + xp.sum(xp.where(k["below"], dseg, zero), axis=-1)
        # entering states: y_off = e o (C S_in^T)
        CS = xp.matmul(Cc, xp.matrix_transpose(S_in))  # (B, nc, G, Hg, Q, P)
        dCc = dCc + xp.sum(xp.matmul(dyc * e, S_in), axis=3, keepdims=True)
        da = da + _rev_cumsum(xp, k["from_in"] * xp.sum(dyc * CS, axis=-1), axis=-1)

    # ---- back to the inputs: dx = dt o x, a = dt A
    Aw = xp.reshape(xp.astype(A, wide), (G, Hg, 1))
    ddtc = xp.sum(d_dx * xc, axis=-1) + Aw * da  # (B, nc, G, Hg, Q)
    out["A"] = xp.astype(xp.reshape(xp.sum(dtc * da, axis=(0, 1, 4)), (H,)), A.dtype)
    dx = _from_chunks(xp, xp.expand_dims(dtc, axis=-1) * d_dx, L)
    if dyc is not None and D is not None:
        Dw = xp.astype(D, wide)
        dx = dx + (xp.expand_dims(Dw, axis=1) if D.ndim == 1 else Dw) * dy0
    out["x"] = xp.astype(dx, x.dtype)
    ddt = xp.reshape(xp.permute_dims(ddtc, (0, 1, 4, 2, 3)), (Bsz, nc * Q, H))[:, :L]
    ddt = _dt_vjp(xp, ddt, dt, dt_bias, dt_softplus, dt_limit, wide)
    out["dt"] = xp.astype(ddt, dt.dtype)
    if dt_bias is not None:
        out["dt_bias"] = xp.astype(xp.sum(ddt, axis=(0, 1)), dt_bias.dtype)

    def groups_back(v):  # (B, nc, G, 1, Q, N) -> (B, L, G, N)
        v = xp.permute_dims(v[:, :, :, 0], (0, 1, 3, 2, 4))
        return xp.reshape(v, (Bsz, nc * Q, G, N))[:, :L]

    out["B"] = xp.astype(groups_back(dBc), B.dtype)
    out["C"] = xp.zeros(C.shape, dtype=C.dtype) if dCc is None else xp.astype(groups_back(dCc), C.dtype)
    return {name: out[name] for name in _VJP_ORDER if name in out}


_VJP_ORDER = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


# ---- validation ---------------------------------------------------------------------------
def _check_dt_limit(op, dt_limit):
    ok = isinstance(dt_limit, (tuple, list)) and len(dt_limit) == 2
    if ok:
        try:
            lo, hi = float(dt_limit[0]), float(dt_limit[1])
        except (TypeError, ValueError):
            ok = False
        else:
            ok = not math.isnan(lo) and not math.isnan(hi) and lo < hi
    if not ok:
        raise ShapeError(
            f"{op}: 'dt_limit' must be a pair (lo, hi) of numbers with lo < hi, got {dt_limit!r}; "
            "use (0.0, float('inf')) for no limit"
        )


def _check_common(op, d, A, D, dt_bias, dt_softplus, dt_limit, floats):
    d.check("A", A, ("H",))
    if D is not None:
        d.check("D", D, ("H",) if getattr(D, "ndim", 0) == 1 else ("H", "P"))
    d.check("dt_bias", dt_bias, ("H",), optional=True)
    check_divides(
        op, "H (heads) by G (groups of B/C)", d["H"], d["G"],
        "B and C carry G groups; H must be a multiple of G (head h reads group h // (H // G)).",
    )
    if not isinstance(dt_softplus, (bool, np.bool_)):
        raise ShapeError(f"{op}: 'dt_softplus' must be a bool, got {dt_softplus!r}")
    _check_dt_limit(op, dt_limit)
    for name, arr in floats.items():
        check_floating(op, name, arr)


def validate_ssd_scan(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None,
                      dt_softplus=False, dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    op = "ssd_scan"
    d = Dims(op)
    d.check("x", x, ("B", "L", "H", "P"))
    d.check("dt", dt, ("B", "L", "H"))
    d.check("B", B, ("B", "L", "G", "N"))
    d.check("C", C, ("B", "L", "G", "N"))
    d.check("z", z, ("B", "L", "H", "P"), optional=True)
    _check_common(op, d, A, D, dt_bias, dt_softplus, dt_limit,
                  dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state))
    d.check("initial_state", initial_state, ("B", "H", "P", "N"), optional=True)
    if not (isinstance(chunk_size, numbers.Integral) and not isinstance(chunk_size, bool) and chunk_size > 0):
        raise ShapeError(f"{op}: 'chunk_size' must be a positive integer, got {chunk_size!r}")
    if seq_idx is not None:
        d.check("seq_idx", seq_idx, ("B", "L"))
        kind = str(getattr(seq_idx, "dtype", "")).replace("torch.", "")
        if "int" not in kind:
            raise ShapeError(
                f"{op}: 'seq_idx' must be an integer array (B, L) of sequence numbers, got dtype "
                f"{kind or type(seq_idx).__name__}"
            )


def validate_ssd_step(x, dt, A, B, C, state, D=None, z=None, dt_bias=None, dt_softplus=False,
                      dt_limit=NO_LIMIT):
    op = "ssd_step"
    d = Dims(op)
    d.check("x", x, ("B", "H", "P"))
    d.check("dt", dt, ("B", "H"))
    d.check("B", B, ("B", "G", "N"))
    d.check("C", C, ("B", "G", "N"))
    d.check("z", z, ("B", "H", "P"), optional=True)
    _check_common(op, d, A, D, dt_bias, dt_softplus, dt_limit,
                  dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, state=state))
    d.check("state", state, ("B", "H", "P", "N"))


def validate_ssd_scan_vjp(cotangent, x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None,
                          dt_softplus=False, dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    validate_ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit,
                      initial_state, seq_idx)
    dy, dS_L = _unpack_cotangent(cotangent)
    d = Dims("ssd_scan_vjp")
    d.check("x", x, ("B", "L", "H", "P"))
    d.check("B", B, ("B", "L", None, "N"))
    d.check("dy (cotangent[0])", dy, ("B", "L", "H", "P"), optional=True)
    d.check("dfinal_state (cotangent[1])", dS_L, ("B", "H", "P", "N"), optional=True)
    for name, arr in (("dy (cotangent[0])", dy), ("dfinal_state (cotangent[1])", dS_L)):
        check_floating("ssd_scan_vjp", name, arr)


register(OpSpec("ssd_scan", "ssd", ssd_scan_ref, ssd_scan, validate_ssd_scan))
register(OpSpec("ssd_step", "ssd", ssd_step_ref, ssd_step, validate_ssd_step, step_of="ssd_scan"))
register(OpSpec("ssd_scan_vjp", "ssd", ssd_scan_vjp_ref, ssd_scan_vjp, validate_ssd_scan_vjp,
                vjp_of="ssd_scan"))
