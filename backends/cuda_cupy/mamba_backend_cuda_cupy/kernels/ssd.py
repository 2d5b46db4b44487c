"""Mamba-2 SSD scan on the row-scan kernels (cuda/scan.cu, scan_bwd.cu): forward, step and VJP.

Ops (signatures and math: mamba_core/ops/ssd.py):
    ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, seq_idx)
    ssd_step(x, dt, A, B, C, state, D, z, dt_bias, dt_softplus, dt_limit)
    ssd_scan_vjp((dy, dfinal_state), <ssd_scan's arguments>)

Rows are (b, h, p): each holds S[p, :] (N entries) in registers; decay exp(dt_t A_h) per row.
Forward: one row scan (readout Y = S_t C_t), then skip and gate elementwise.
Backward, without saving any state (decay_grad recomputes S from checkpoints: those the tiled
forward sweep of step 1 writes, or its own):
  1. forward sweep: y0_t = S_t C_t, dC_t = sum_{p, heads of the group} dy0_t[p] S_t[p, :], S_L;
  2. reverse sweep of the adjoint G_t = exp(a_{t+1}) G_{t+1} + dy0_t C_t^T (from dfinal_state):
     readout G_t B_t (-> dx = dt G B + D dy0), reduction sum_p dt x G (-> dB), dinitial = e^{a_0} G_0;
  3. the decay gradient dL/da_t = exp(a_t) <G_t, S_{t-1}> (a_t = dt_t A), entry by entry, by
     the decay_grad kernel (cuda/scan_bwd.cu: checkpointed recompute of S, adjoint run back
     through each chunk). Not the cumulative-sum identity sum_{k >= t} (<dy0_k, y0_k> -
     dt_k x_k^T G_k B_k): under strong decay its terms are far larger than their sum, and in
     float32 the cancellation lost ~3 digits of dA (conformance, strong-decay L=256).
seq_idx and chunk_size: the kernels do not take seq_idx (that call runs the default composition);
chunk_size does not change the result.
"""

from __future__ import annotations

import math

from mamba_core.ops import ssd as _ops

from mamba_backend_cuda_cupy.kernels._common import (
    api, default, dt_transform, runs_here, wide, xp_of,
)
from mamba_backend_cuda_cupy.kernels._fused import gate_cotangent, skip_gate, skip_gate_grads
from mamba_backend_cuda_cupy.kernels._scan import decay_grad, row_scan, supported

NO_LIMIT = (0.0, math.inf)


def _prep(xp, x, dt, A, B, C, dt_bias, dt_softplus, dt_limit, wd):
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    dtv = dt_transform(xp, dt, dt_bias, dt_softplus, dt_limit, wd)  # (B, L, H)
    d4 = xp.broadcast_to(dtv[..., None], (Bsz, L, H, P))
    Am = xp.broadcast_to(A.astype(wd)[:, None, None], (H, P, N))
    return dtv, d4, Am, H // G


def _fwd(xp, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=NO_LIMIT,
         initial_state=None):
    wd = wide(xp, x.dtype)
    dtv, d4, Am, hpk = _prep(xp, x, dt, A, B, C, dt_bias, dt_softplus, dt_limit, wd)
    xw = x.astype(wd, copy=False)
    Y, _, fin = row_scan(
        xp, dA=d4, V=xw[:, :, None], K=B.astype(wd, copy=False)[:, :, None], hpk=hpk, Am=Am,
        coef=d4, Q=C.astype(wd, copy=False)[:, :, None],
        init=None if initial_state is None else initial_state.astype(wd),
    )
    y = skip_gate(xp, Y[:, :, 0], xw, D, z)  # one fused pass on the GPU (kernels/_fused.py)
    return y.astype(x.dtype, copy=False), fin


def _vjp(xp, cotangent, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
         dt_limit=NO_LIMIT, initial_state=None):
    dy, dSL = _ops._unpack_cotangent(cotangent)
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    wd = wide(xp, x.dtype)
    dtv, d4, Am, hpk = _prep(xp, x, dt, A, B, C, dt_bias, dt_softplus, dt_limit, wd)
    xw, Bw, Cw = x.astype(wd, copy=False), B.astype(wd, copy=False), C.astype(wd, copy=False)
    dyw = xp.zeros((Bsz, L, H, P), wd) if dy is None else dy.astype(wd, copy=False)
    dy0 = gate_cotangent(xp, dyw, z)  # dL/dy0 = dy silu(z)
    init = None if initial_state is None else initial_state.astype(wd)
    # 1. forward sweep: y0, dC per head
    # (and the decay gradient's checkpoints of this sweep, when the tiled kernel runs it)
    Y, dCh, _, ck = row_scan(xp, dA=d4, V=xw[:, :, None], K=Bw[:, :, None], hpk=hpk, Am=Am,
                             coef=d4, Q=Cw[:, :, None], W=dy0[:, :, None], init=init,
                             want_fin=False, checkpoints=True)
    y0 = Y[:, :, 0]
    # 2. reverse sweep of the adjoint
    dSLw = None if dSL is None else dSL.astype(wd)
    GB, dBh, dinit = row_scan(xp, dA=d4, V=dy0[:, :, None], K=Cw[:, :, None], hpk=hpk, Am=Am,
                              Q=Bw[:, :, None], W=(d4 * xw)[:, :, None], init=dSLw, reverse=True)
    GB = GB[:, :, 0]
    xGB = xp.sum(xw * GB, axis=-1)  # (B, L, H)
    # 3. decay: dL/da_t = exp(a_t) <G_t, S_{t-1}> per row, summed over the rows of the head
    Aw = A.astype(wd)
    la = xp.broadcast_to((dtv * Aw)[..., None], (Bsz, L, H, P))
    qa, _ = decay_grad(xp, dA=la, V=xw[:, :, None], K=Bw[:, :, None], hpk=hpk, coef=d4,
                       Vr=dy0[:, :, None], Kr=Cw[:, :, None], init=init, dfin=dSLw, ck=ck)
    dla = xp.sum(qa, axis=-1)  # (B, L, H)
    ddt = xGB + Aw * dla
    # dA sums B*L terms per head: accumulate in float64 (cheap: B*L*H values), round once
    grads = {"A": xp.sum(dtv * dla, axis=(0, 1), dtype=xp.float64).astype(wd)}
    # skip and gate: dx = dt G B + D dy0 and dz in one fused pass (kernels/_fused.py)
    dx, dz = skip_gate_grads(xp, d4, GB, xw, dy0, D, y0, dyw, z)
    if D is not None:
        dD = xp.sum(dy0 * xw, axis=(0, 1))
        grads["D"] = xp.sum(dD, axis=-1) if D.ndim == 1 else dD
    if z is not None:
        grads["z"] = dz
    # heads -> groups
    dB = xp.sum(dBh[:, :, 0].reshape(Bsz, L, G, hpk, N), axis=3)
    dC = xp.sum(dCh[:, :, 0].reshape(Bsz, L, G, hpk, N), axis=3)
    ddt = _ops._dt_vjp(api(xp), ddt, dt, dt_bias, dt_softplus, dt_limit, wd)
    grads.update(x=dx, dt=ddt, B=dB, C=dC)
    if dt_bias is not None:
        grads["dt_bias"] = xp.sum(ddt, axis=(0, 1))
    if initial_state is not None:
        grads["initial_state"] = dinit
    args = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state)
    return {k: v.astype(args[k].dtype, copy=False) for k, v in grads.items()}


# ---- the ops ------------------------------------------------------------------------------
def _takes(x, B, *arrays) -> bool:
    return runs_here(x, B, *arrays) and supported(x.shape[-1], B.shape[-1], 8)


def ssd_scan(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """SSD scan on the row-scan kernel. x, z: (B, L, H, P); dt: (B, L, H); B, C: (B, L, G, N)."""
    if seq_idx is not None or not _takes(x, B, dt, A, C, D, z, dt_bias, initial_state):
        return default("ssd_scan")(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus,
                                   dt_limit, initial_state, seq_idx)
    return _fwd(xp_of(x), x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state)


def ssd_step(x, dt, A, B, C, state, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=NO_LIMIT):
    """One token. x, z: (B, H, P); dt: (B, H); B, C: (B, G, N); state: (B, H, P, N)."""
    if not _takes(x, B, dt, A, C, state, D, z, dt_bias):
        return default("ssd_step")(x, dt, A, B, C, state, D, z, dt_bias, dt_softplus, dt_limit)
    y, S = _fwd(xp_of(x), x[:, None], dt[:, None], A, B[:, None], C[:, None], D,
                None if z is None else z[:, None], dt_bias, dt_softplus, dt_limit, state)
    return y[:, 0], S


def ssd_scan_vjp(cotangent, x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None,
                 dt_softplus=False, dt_limit=NO_LIMIT, initial_state=None, seq_idx=None):
    """VJP of ssd_scan: two row-scan sweeps and elementwise glue (see the module docstring)."""
    cot = tuple(cotangent) if isinstance(cotangent, (tuple, list)) else (None, None)
    if seq_idx is not None or not _takes(x, B, dt, A, C, D, z, dt_bias, initial_state, *cot):
        return default("ssd_scan_vjp")(cotangent, x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                       dt_softplus, dt_limit, initial_state, seq_idx)
    return _vjp(xp_of(x), cotangent, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit,
                initial_state)


KERNELS = {"ssd_scan": ssd_scan, "ssd_step": ssd_step, "ssd_scan_vjp": ssd_scan_vjp}
