"""Mamba-3 SISO and MIMO scan on the row-scan kernels (cuda/scan.cu, scan_bwd.cu): forward, step, VJP.

Ops (signatures and math: mamba_core/ops/mamba3.py):
    mamba3_scan(x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state, initial_k, initial_v)
    mamba3_step(x, dt, A, trap, B, C, state, k_state, v_state, D, mimo_x)
    mamba3_scan_vjp((dy, dS_L, dk_L, dv_L), <mamba3_scan's arguments>)

The trapezoid recurrence is run as a plain scan of S'_t = S_t + sg_t u_t (the state plus the
beta term still owed to t + 1), with u_t = sum_r v_{r,t} B_{r,t}^T, v_r = x o mimo_x[:, r],
sg_t = dt_{t+1} (1 - trap_{t+1}) (0 at the last token), scale_t = trap_t dt_t + sg_t:
    S'_t = exp(A_t dt_t) S'_{t-1} + scale_t u_t,   S'_{-1} = initial_state + dt_0 (1 - trap_0) u_{-1}
    y_{R,t} = S'_t C_{R,t} - sg_t sum_r <C_{R,t}, B_{r,t}> v_{r,t} + D v_{R,t}
(the same-token correction is an R x R block per token, done with matmuls). S'_{L-1} = S_{L-1}.
Backward: a forward sweep (y' = S' C and dC = sum_p dy_R S'), a reverse sweep of the adjoint
(readout G B_r -> dv, reduction sum_p v_r G -> dB, final = dS'_{-1}), and the decay gradient
dL/d(A dt)_t = exp(A_t dt_t) <G_t, S'_{t-1}> entry by entry by the decay_grad kernel
(cuda/scan_bwd.cu) from the checkpoints the forward sweep writes, as in ssd.py (not the
cumulative-sum identity, which cancels catastrophically in float32 under strong decay).
chunk_size does not change the result.
"""

from __future__ import annotations

from mamba_core.ops import mamba3 as _ops

from mamba_backend_cuda_cupy.kernels._common import default, runs_here, wide, xp_of
from mamba_backend_cuda_cupy.kernels._scan import decay_grad, row_scan, supported


def _coeffs(xp, x, dt, A, trap, B, C, mimo_x, wd):
    Bsz, L, H, P = x.shape
    R = B.shape[2]
    dtw, Aw, trw = dt.astype(wd), A.astype(wd), trap.astype(wd)
    sgn = dtw * (1.0 - trw)  # sgn[:, t] = sg_{t-1}
    sg = xp.concatenate([sgn[:, 1:], xp.zeros((Bsz, 1, H), wd)], axis=1)
    scale = trw * dtw + sg
    mx = xp.ones((H, R, P), wd) if mimo_x is None else mimo_x.astype(wd)
    mxr = xp.transpose(mx, (1, 0, 2))  # (R, H, P)
    v = x.astype(wd, copy=False)[:, :, None] * mxr  # (B, L, R, H, P)
    return dtw, Aw, trw, sgn, sg, scale, mx, mxr, v


def _b4(xp, a, P):
    """(B, L, H) -> a (B, L, H, P) broadcast view."""
    return xp.broadcast_to(a[..., None], tuple(a.shape) + (P,))


# ---- the same-token R x R block: M[b,l,h,R,r] = <C_R, B_r> and its products ------------------
# einsum for MIMO; for SISO (R = 1) the same sums as broadcast products: CuPy's einsum turns these
# 5-axis contractions with a size-1 rank into batched matrix products of 1 x 1 blocks.
def _tok_dot(xp, a, b):
    """M (B, L, H, R, R'): M[..., R, r] = sum over the last axis of a[:, :, R] b[:, :, r];
    a, b: (B, L, R, H, K)."""
    if a.shape[2] == 1 and b.shape[2] == 1:
        return xp.sum(a * b, axis=-1)[:, :, 0, :, None, None]
    return xp.einsum("blRhk,blrhk->blhRr", a, b)


def _tok_mix(xp, M, a, transpose=False):
    """sum_r M[..., R, r] a[:, :, r] -> (B, L, R, H, K) (transpose: sum_R M[..., R, r] a[:, :, R]);
    a: (B, L, R, H, K)."""
    if M.shape[-1] == 1 and M.shape[-2] == 1:
        return M[:, :, :, 0, 0][:, :, None, :, None] * a
    return xp.einsum("blhRr,blRhk->blrhk" if transpose else "blhRr,blrhk->blRhk", M, a)


def _initial(xp, Bsz, H, P, N, R, initial_state, initial_k, initial_v, sgn, mxr, wd):
    """(S'_{-1} or None, u_{-1} or None, v_{-1}, k_{-1})."""
    if initial_k is None and initial_v is None:
        return (None if initial_state is None else initial_state.astype(wd)), None, None, None
    x0 = xp.zeros((Bsz, H, P), wd) if initial_v is None else initial_v.astype(wd)
    k0 = xp.zeros((Bsz, R, H, N), wd) if initial_k is None else initial_k.astype(wd)
    v0 = x0[:, None] * mxr  # (B, R, H, P)
    u0 = xp.einsum("brhp,brhn->bhpn", v0, k0)
    S0 = sgn[:, 0, :, None, None] * u0
    if initial_state is not None:
        S0 = S0 + initial_state.astype(wd)
    return S0, u0, v0, k0


def _fwd(xp, x, dt, A, trap, B, C, D=None, mimo_x=None, initial_state=None, initial_k=None,
         initial_v=None):
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    wd = wide(xp, x.dtype)
    dtw, Aw, trw, sgn, sg, scale, mx, mxr, v = _coeffs(xp, x, dt, A, trap, B, C, mimo_x, wd)
    S0, _, _, _ = _initial(xp, Bsz, H, P, N, R, initial_state, initial_k, initial_v, sgn, mxr, wd)
    Bw, Cw = B.astype(wd, copy=False), C.astype(wd, copy=False)
    Y, _, fin = row_scan(xp, dA=_b4(xp, Aw * dtw, P), V=v, K=Bw, coef=_b4(xp, scale, P), Q=Cw,
                         init=S0)
    corr = _tok_mix(xp, _tok_dot(xp, Cw, Bw), v)
    y = Y - sg[:, :, None, :, None] * corr
    if D is not None:
        y = y + D.astype(wd)[:, None] * v
    return y.astype(x.dtype, copy=False), fin, B[:, -1], x[:, -1]


def _vjp(xp, cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None, initial_state=None,
         initial_k=None, initial_v=None):
    dy, dSL, dkL, dvL = _ops._unpack_scan_cotangent(cotangent)
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    wd = wide(xp, x.dtype)
    dtw, Aw, trw, sgn, sg, scale, mx, mxr, v = _coeffs(xp, x, dt, A, trap, B, C, mimo_x, wd)
    S0, u0, v0, k0 = _initial(xp, Bsz, H, P, N, R, initial_state, initial_k, initial_v, sgn, mxr, wd)
    Bw, Cw = B.astype(wd, copy=False), C.astype(wd, copy=False)
    dyw = xp.zeros((Bsz, L, R, H, P), wd) if dy is None else dy.astype(wd, copy=False)
    la4 = _b4(xp, Aw * dtw, P)
    # forward sweep: y' = S' C, dC = sum_p dy S', S_L
    # (and the decay gradient's checkpoints of this sweep, when the tiled kernel runs it)
    Yp, dC, _, ck = row_scan(xp, dA=la4, V=v, K=Bw, coef=_b4(xp, scale, P), Q=Cw, W=dyw,
                             init=S0, want_fin=False, checkpoints=True)
    # reverse sweep: the adjoint G of S'
    dSLw = None if dSL is None else dSL.astype(wd)
    GB, vG, Gm1 = row_scan(xp, dA=la4, V=dyw, K=Cw, Q=Bw, W=v, init=dSLw, reverse=True)
    sc5 = scale[:, :, None, :, None]
    dv = sc5 * GB
    dB = sc5 * vG
    dscale = xp.sum(v * GB, axis=(2, 4))  # (B, L, H)
    # the same-token correction y -= sg * M v
    M = _tok_dot(xp, Cw, Bw)
    corr = _tok_mix(xp, M, v)
    dyc = -sg[:, :, None, :, None] * dyw
    dv = dv + _tok_mix(xp, M, dyc, transpose=True)
    dM = _tok_dot(xp, dyc, v)
    dC = dC + _tok_mix(xp, dM, Bw)
    dB = dB + _tok_mix(xp, dM, Cw, transpose=True)
    dsg = -xp.sum(dyw * corr, axis=(2, 4))
    grads = {}
    if D is not None:
        dv = dv + D.astype(wd)[:, None] * dyw
        grads["D"] = xp.sum(dyw * v, axis=(0, 1, 2, 4))
    # decay: dL/d(A dt)_t = exp(A_t dt_t) <G_t, S'_{t-1}>, entry by entry (decay_grad)
    qa, _ = decay_grad(xp, dA=la4, V=v, K=Bw, coef=_b4(xp, scale, P), Vr=dyw, Kr=Cw, init=S0,
                       dfin=dSLw, ck=ck)
    dla = xp.sum(qa, axis=-1)  # (B, L, H)
    dA = dtw * dla
    ddt = Aw * dla
    # scale = trap dt + sg
    ddt = ddt + trw * dscale
    dtrap = dtw * dscale
    dsg = dsg + dscale
    # the initial state and the cached k/v
    grads_init = {}
    if u0 is not None:
        dsg_m1 = xp.sum(Gm1 * u0, axis=(2, 3))  # (B, H)
        du0 = sgn[:, 0, :, None, None] * Gm1
        dv0 = xp.einsum("bhpn,brhn->brhp", du0, k0)
        dk0 = xp.einsum("bhpn,brhp->brhn", du0, v0)
        if initial_k is not None:
            grads_init["initial_k"] = dk0
        x0 = xp.zeros((Bsz, H, P), wd) if initial_v is None else initial_v.astype(wd)
        if initial_v is not None:
            grads_init["initial_v"] = xp.sum(dv0 * mxr, axis=1)
    else:
        dsg_m1 = xp.zeros((Bsz, H), wd)
    # sg_t = sgn_{t+1} = dt_{t+1} (1 - trap_{t+1}); sgn_0 = sg_{-1}
    dsgn = xp.concatenate([dsg_m1[:, None], dsg[:, :-1]], axis=1)
    ddt = ddt + (1.0 - trw) * dsgn
    dtrap = dtrap - dtw * dsgn
    # v = x o mimo_x
    dx = xp.sum(dv * mxr, axis=2)
    if mimo_x is not None:
        dmx = xp.sum(dv * x.astype(wd, copy=False)[:, :, None], axis=(0, 1))  # (R, H, P)
        if u0 is not None:
            dmx = dmx + xp.sum(dv0 * x0[:, None], axis=0)
        grads["mimo_x"] = xp.transpose(dmx, (1, 0, 2))
    if dkL is not None:
        dB[:, -1] += dkL.astype(wd)
    if dvL is not None:
        dx[:, -1] += dvL.astype(wd)
    grads.update(x=dx, dt=ddt, A=dA, trap=dtrap, B=dB, C=dC)
    if initial_state is not None:
        grads["initial_state"] = Gm1
    grads.update(grads_init)
    args = dict(x=x, dt=dt, A=A, trap=trap, B=B, C=C, D=D, mimo_x=mimo_x,
                initial_state=initial_state, initial_k=initial_k, initial_v=initial_v)
    return {k: g.astype(args[k].dtype, copy=False) for k, g in grads.items()}


# ---- the ops ------------------------------------------------------------------------------
def _takes(x, B, *arrays) -> bool:
    return runs_here(x, B, *arrays) and supported(x.shape[-1], B.shape[-1], 8)


def mamba3_scan(x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64, initial_state=None,
                initial_k=None, initial_v=None):
    """Mamba-3 scan. x: (B, L, H, P); dt, A, trap: (B, L, H); B, C: (B, L, R, H, N)."""
    if not _takes(x, B, dt, A, trap, C, D, mimo_x, initial_state, initial_k, initial_v):
        return default("mamba3_scan")(x, dt, A, trap, B, C, D, mimo_x, chunk_size, initial_state,
                                      initial_k, initial_v)
    return _fwd(xp_of(x), x, dt, A, trap, B, C, D, mimo_x, initial_state, initial_k, initial_v)


def mamba3_step(x, dt, A, trap, B, C, state, k_state, v_state, D=None, mimo_x=None):
    """One token. x: (B, H, P); dt, A, trap: (B, H); B, C: (B, R, H, N); state: (B, H, P, N)."""
    if not _takes(x, B, dt, A, trap, C, state, k_state, v_state, D, mimo_x):
        return default("mamba3_step")(x, dt, A, trap, B, C, state, k_state, v_state, D, mimo_x)
    y, S, _, _ = _fwd(xp_of(x), x[:, None], dt[:, None], A[:, None], trap[:, None], B[:, None],
                      C[:, None], D, mimo_x, state, k_state, v_state)
    return y[:, 0], S, B, x


def mamba3_scan_vjp(cotangent, x, dt, A, trap, B, C, D=None, mimo_x=None, chunk_size=64,
                    initial_state=None, initial_k=None, initial_v=None):
    """VJP of mamba3_scan: two row-scan sweeps and elementwise/matmul glue (module docstring)."""
    cot = tuple(cotangent) if isinstance(cotangent, (tuple, list)) else ()
    if not _takes(x, B, dt, A, trap, C, D, mimo_x, initial_state, initial_k, initial_v, *cot):
        return default("mamba3_scan_vjp")(cotangent, x, dt, A, trap, B, C, D, mimo_x, chunk_size,
                                          initial_state, initial_k, initial_v)
    return _vjp(xp_of(x), cotangent, x, dt, A, trap, B, C, D, mimo_x, initial_state, initial_k,
                initial_v)


KERNELS = {"mamba3_scan": mamba3_scan, "mamba3_step": mamba3_step,
           "mamba3_scan_vjp": mamba3_scan_vjp}
