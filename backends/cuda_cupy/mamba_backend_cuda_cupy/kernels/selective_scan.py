"""Mamba-1 selective scan on the row-scan kernels (cuda/scan.cu, scan_bwd.cu): forward, step, VJP.

Ops (signatures and math: mamba_core/ops/selective_scan.py):
    selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    selective_scan_step(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus)
    selective_scan_vjp((dy, dfinal_state), <selective_scan's arguments>)

Rows are (b, channel e): the group g of B/C is the kernel's "head" and its E/G channels are the
rows, each holding h[e, :] (N entries) in registers, decay a_t = exp(dt_t[e] A[e, n]) per entry.
Skip (D) and gate (silu(z)) are elementwise after the scan.

Backward (recompute; nothing is saved by the forward), with dy'_t = dy_t silu(z_t) and the
adjoint g_t = dL/dh_t = C_t dy'_t + a_{t+1} g_{t+1} (from dfinal_state):
  1. forward sweep (row_scan): s_t = h_t C_t (-> dz), dC_t = sum_{e in group} dy'_t[e] h_t[e, :];
  2. reverse sweep (row_scan, reverse): readout g_t B_t (-> du = dt g B + D dy', ddt's input
     term u g B), reduction dB_t = sum_{e in group} dt u g_t, dinitial_state = a_0 g_0;
  3. decay (decay_grad, cuda/scan_bwd.cu): q_t[e, n] = a_t g_t h_{t-1}, entry by entry:
     ddt_t += sum_n A[e, n] q_t,  dA[e, n] = sum_{b, t} dt_t q_t  (checkpointed recompute of h,
     every CHUNK tokens; no (B, L, E, N) array is formed).
Then dD = sum dy' u, dz = dy (s + D u) silu'(z), ddelta = ddt softplus'(raw), ddelta_bias.
"""

from __future__ import annotations

from mamba_core.ops import selective_scan as _ops

from mamba_core.ops.activations import SOFTPLUS_THRESHOLD

from mamba_backend_cuda_cupy.kernels._common import (
    api, default, dsilu, runs_here, sigmoid, silu, wide, xp_of,
)
from mamba_backend_cuda_cupy.kernels._scan import decay_grad, row_scan, supported


def _fwd(xp, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
         initial_state=None):
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    P = E // G
    wd = wide(xp, u.dtype)
    dtv = _ops._dt(api(xp), delta, delta_bias, delta_softplus, wd).reshape(Bsz, L, G, P)
    init = None if initial_state is None else initial_state.astype(wd).reshape(Bsz, G, P, N)
    Y, _, fin = row_scan(
        xp, dA=dtv, V=u.astype(wd).reshape(Bsz, L, 1, G, P), K=B.astype(wd)[:, :, None],
        Am=A.astype(wd).reshape(G, P, N), coef=dtv, Q=C.astype(wd)[:, :, None], init=init,
    )
    y = _ops._skip_and_gate(api(xp), Y.reshape(Bsz, L, E), u, D, z, wd)
    return y.astype(u.dtype), fin.reshape(Bsz, E, N)


def _vjp(xp, cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
         initial_state=None):
    dy, dhL = _ops._split_cotangent(cotangent)
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    P = E // G
    wd = wide(xp, u.dtype)
    raw = delta.astype(wd)
    if delta_bias is not None:
        raw = raw + delta_bias.astype(wd)
    dtv = _ops._dt(api(xp), delta, delta_bias, delta_softplus, wd).reshape(Bsz, L, G, P)
    uw = u.astype(wd).reshape(Bsz, L, G, P)
    Bw, Cw = B.astype(wd)[:, :, None], C.astype(wd)[:, :, None]  # (B, L, 1, G, N)
    Am = A.astype(wd).reshape(G, P, N)
    init = None if initial_state is None else initial_state.astype(wd).reshape(Bsz, G, P, N)
    dhLw = None if dhL is None else dhL.astype(wd).reshape(Bsz, G, P, N)
    dyw = xp.zeros((Bsz, L, G, P), wd) if dy is None else dy.astype(wd).reshape(Bsz, L, G, P)
    zw = None if z is None else z.astype(wd).reshape(Bsz, L, G, P)
    dy0 = dyw if z is None else dyw * silu(xp, zw)
    # 1. forward sweep: s = h C, dC (summed over the channels of each group by the reduction)
    Y, dC, _ = row_scan(xp, dA=dtv, V=uw[:, :, None], K=Bw, Am=Am, coef=dtv, Q=Cw,
                        W=dy0[:, :, None], init=init, want_fin=False)
    s0 = Y[:, :, 0]  # (B, L, G, P)
    # 2. reverse sweep of the adjoint: g B, dB, dinitial_state
    gB, dB, dinit = row_scan(xp, dA=dtv, V=dy0[:, :, None], K=Cw, Am=Am, Q=Bw,
                             W=(dtv * uw)[:, :, None], init=dhLw, reverse=True,
                             want_fin=initial_state is not None)
    gB = gB[:, :, 0]
    du = dtv * gB
    # 3. decay, entry by entry
    qa, dAm = decay_grad(xp, dA=dtv, V=uw[:, :, None], K=Bw, Am=Am, coef=dtv, Vr=dy0[:, :, None],
                         Kr=Cw, init=init, dfin=dhLw, want_dAm=True)
    ddt = qa + uw * gB
    grads = {"A": xp.sum(dAm, axis=0).reshape(E, N)}
    # skip and gate
    if D is not None:
        Dw = D.astype(wd).reshape(G, P)
        du = du + Dw * dy0
        grads["D"] = xp.sum(dy0 * uw, axis=(0, 1)).reshape(E)
    if z is not None:
        pre = s0 if D is None else s0 + Dw * uw
        grads["z"] = (dyw * pre * dsilu(xp, zw)).reshape(Bsz, L, E)
    ddt = ddt.reshape(Bsz, L, E)
    if delta_softplus:
        ddt = ddt * xp.where(raw > SOFTPLUS_THRESHOLD, 1.0, sigmoid(xp, raw)).astype(wd)
    grads.update(u=du.reshape(Bsz, L, E), delta=ddt, B=dB[:, :, 0], C=dC[:, :, 0])
    if delta_bias is not None:
        grads["delta_bias"] = xp.sum(ddt, axis=(0, 1))
    if initial_state is not None:
        grads["initial_state"] = dinit.reshape(Bsz, E, N)
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                initial_state=initial_state)
    return {k: v.astype(args[k].dtype) for k, v in grads.items()}


def _takes(u, B, *arrays) -> bool:
    G = B.shape[-2]
    return runs_here(u, B, *arrays) and supported(u.shape[-1] // G, B.shape[-1], 8)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None):
    """Selective scan. u, delta, z: (B, L, E); A: (E, N); B, C: (B, L, G, N) -> (y, h_L)."""
    if not _takes(u, B, delta, A, C, D, z, delta_bias, initial_state):
        return default("selective_scan")(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                         initial_state)
    return _fwd(xp_of(u), u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def selective_scan_step(u, delta, A, B, C, state, D=None, z=None, delta_bias=None,
                        delta_softplus=False):
    """One token. u, delta, z: (B, E); B, C: (B, G, N); state: (B, E, N) -> (y, new_state)."""
    if not _takes(u, B, delta, A, C, state, D, z, delta_bias):
        return default("selective_scan_step")(u, delta, A, B, C, state, D, z, delta_bias,
                                              delta_softplus)
    y, h = _fwd(xp_of(u), u[:, None], delta[:, None], A, B[:, None], C[:, None], D,
                None if z is None else z[:, None], delta_bias, delta_softplus, state)
    return y[:, 0], h


def selective_scan_vjp(cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None):
    """VJP of selective_scan: two row-scan sweeps, the decay kernel and elementwise glue (module
    docstring). cotangent = (dy (B, L, E) | None, dfinal_state (B, E, N) | None) -> dict."""
    cot = tuple(cotangent) if isinstance(cotangent, (tuple, list)) else (None, None)
    if not _takes(u, B, delta, A, C, D, z, delta_bias, initial_state, *cot):
        return default("selective_scan_vjp")(cotangent, u, delta, A, B, C, D, z, delta_bias,
                                             delta_softplus, initial_state)
    return _vjp(xp_of(u), cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                initial_state)


KERNELS = {"selective_scan": selective_scan, "selective_scan_step": selective_scan_step,
           "selective_scan_vjp": selective_scan_vjp}
