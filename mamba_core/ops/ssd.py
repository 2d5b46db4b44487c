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
from mamba_core.ops.activations import silu, silu_ref, softplus, softplus_ref
from mamba_core.ops.spec import OpSpec, register

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


# ---- default compositions -----------------------------------------------------------------
def _wide(xp, dtype):
    """float64 stays float64; everything narrower computes in float32."""
    return xp.float64 if dtype == xp.float64 else xp.float32


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


def ssd_scan(xp, x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """Chunked SSD scan. x: (B, L, H, P); dt: (B, L, H); B, C: (B, L, G, N) -> (y, S_L)."""
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Hg = H // G
    Q = int(chunk_size)
    wide = _wide(xp, x.dtype)
    if initial_state is None:
        S = xp.zeros((Bsz, G, Hg, P, N), dtype=wide)
    else:
        S = xp.reshape(xp.astype(initial_state, wide), (Bsz, G, Hg, P, N))
    if L == 0:
        return xp.zeros((Bsz, 0, H, P), dtype=x.dtype), xp.reshape(S, (Bsz, H, P, N))

    nc = -(-L // Q)
    pad = nc * Q - L
    dtw = _pad_time(xp, _dt(xp, dt, dt_bias, dt_softplus, dt_limit, wide), pad)  # dt = 0: no-op
    xw = _pad_time(xp, xp.astype(x, wide), pad)
    Bw = _pad_time(xp, xp.astype(B, wide), pad)
    Cw = _pad_time(xp, xp.astype(C, wide), pad)

    # Layout (B, nc, G, Hg, Q, ...): heads grouped under their B/C group so B and C broadcast.
    xc = xp.permute_dims(xp.reshape(xw, (Bsz, nc, Q, G, Hg, P)), (0, 1, 3, 4, 2, 5))
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

    # intra-chunk outputs: y_diag = ((C B^T) o exp(seg) o keep) (dt o x)
    decay_ij = xp.where(keep, xp.exp(seg), zero)  # (B, nc, G, Hg, Q, Q)
    CB = xp.matmul(Cc, xp.matrix_transpose(Bc))  # (B, nc, G, 1, Q, Q)
    dx = xp.expand_dims(dtc, axis=-1) * xc  # (B, nc, G, Hg, Q, P)
    y = xp.matmul(CB * decay_ij, dx)

    # each chunk's own contribution to its end state: sum_j exp(seg[Q-1, j]) dt_j x_j B_j^T
    to_end = xp.exp(seg[..., -1, :])  # (B, nc, G, Hg, Q)
    if to_end_ok is not None:
        to_end = xp.where(to_end_ok, to_end, zero)
    S_chunk = xp.matmul(xp.matrix_transpose(dx * xp.expand_dims(to_end, axis=-1)), Bc)  # (.., P, N)

    # states entering each chunk: a scan over chunks from the initial state
    total = xp.exp(chunk_total)
    if pass_ok is not None:
        total = xp.where(pass_ok, total, zero)
    entering = []
    for c in range(nc):
        entering.append(S)
        S = xp.expand_dims(xp.expand_dims(total[:, c], axis=-1), axis=-1) * S + S_chunk[:, c]
    S_in = xp.stack(entering, axis=1)  # (B, nc, G, Hg, P, N)

    # inter-chunk outputs: y_off[i] = exp(sum_{k<=i} a_k) C_i S_in^T
    from_in = xp.exp(from_start)
    if enter_ok is not None:
        from_in = xp.where(enter_ok, from_in, zero)
    y = y + xp.expand_dims(from_in, axis=-1) * xp.matmul(Cc, xp.matrix_transpose(S_in))

    y = xp.reshape(xp.permute_dims(y, (0, 1, 4, 2, 3, 5)), (Bsz, nc * Q, H, P))[:, :L]
    y = _skip_gate(xp, y, x, D, z, wide)
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


register(OpSpec("ssd_scan", "ssd", ssd_scan_ref, ssd_scan, validate_ssd_scan))
register(OpSpec("ssd_step", "ssd", ssd_step_ref, ssd_step, validate_ssd_step, step_of="ssd_scan"))
