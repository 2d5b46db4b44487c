"""Mamba-1 selective scan: forward, step, VJP. Two kernel paths, picked at call time:

``dedicated`` (default; cuda/selective_scan.cu): ss_fwd and ss_bwd, one thread group per channel
(b, e) with all N states in registers, B/C rows and the per-token channel values of each chunk
staged in shared memory (layout, chunking and partial sums: that file's header). The VJP runs
ss_fwd saving the state entering every chunk of TS tokens ((B, ceil(L/TS), E, N) scratch in the
wide dtype), then ss_bwd walks the chunks last first; dA, dD, ddelta_bias come back as
per-batch partials and dB, dC as per-block partials (B, L, G, blocks, N), summed here.

``row`` (cuda/scan.cu, scan_bwd.cu; kept for comparison and for what the dedicated kernels do
not take: N > 64): described below. Knobs, read at every call (so one process can time both):
    MAMBA_CUPY_SS = dedicated | row          (or set the module attribute SS_KERNEL)
    MAMBA_CUPY_SS_LANES = 1 | 2 | 4 | 8      lanes per channel of the dedicated kernels
                                             (default: ss_config's choice)
The step (one token) runs the row path.

Ops (signatures and math: mamba_core/ops/selective_scan.py):
    selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    selective_scan_step(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus)
    selective_scan_vjp((dy, dfinal_state), <selective_scan's arguments>)

Row path. Rows are (b, channel e): the group g of B/C is the kernel's "head" and its E/G
channels are the rows, each holding h[e, :] (N entries) in registers, decay a_t = exp(dt_t[e]
A[e, n]) per entry. Skip (D) and gate (silu(z)) are elementwise after the scan.

Backward (recompute; nothing is saved by the forward), with dy'_t = dy_t silu(z_t) and the
adjoint g_t = dL/dh_t = C_t dy'_t + a_{t+1} g_{t+1} (from dfinal_state):
  1. forward sweep (row_scan): s_t = h_t C_t (-> dz), dC_t = sum_{e in group} dy'_t[e] h_t[e, :];
  2. reverse sweep (row_scan, reverse): readout g_t B_t (-> du = dt g B + D dy', ddt's input
     term u g B), reduction dB_t = sum_{e in group} dt u g_t, dinitial_state = a_0 g_0;
  3. decay (decay_grad, cuda/scan_bwd.cu): q_t[e, n] = a_t g_t h_{t-1}, entry by entry:
     ddt_t += sum_n A[e, n] q_t,  dA[e, n] = sum_{b, t} dt_t q_t  (checkpointed recompute of h,
     every CHUNK tokens; no (B, L, E, N) array is formed).
Then dD = sum dy' u, dz = dy (s + D u) silu'(z), ddelta = ddt softplus'(raw), ddelta_bias.
The dedicated ss_bwd computes the same quantities in one pass per chunk.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from mamba_core.ops import selective_scan as _ops

from mamba_core.ops.activations import SOFTPLUS_THRESHOLD, softplus_grad
from mamba_core.ops.activations import softplus as _softplus

from mamba_backend_cuda_cupy._compile import ctype, function
from mamba_backend_cuda_cupy.kernels._common import (
    api, default, dsilu, runs_here, sigmoid, silu, wide, xp_of,
)
from mamba_backend_cuda_cupy.kernels._scan import decay_grad, row_scan, supported

#: None: read MAMBA_CUPY_SS at every call ("dedicated" | "row"); a string overrides it
SS_KERNEL = None


def kernel_choice() -> str:
    """The selective-scan path asked for: "dedicated" (default) or "row"."""
    choice = SS_KERNEL if SS_KERNEL is not None else os.environ.get("MAMBA_CUPY_SS", "dedicated")
    choice = choice.strip().lower()
    if choice not in ("dedicated", "row"):
        raise ValueError(f"MAMBA_CUPY_SS={choice!r}: expected 'dedicated' or 'row'")
    return choice


# ---- the dedicated kernels (cuda/selective_scan.cu): launch configuration ----------------------
SS_THREADS = 128       # threads per block (the kernels' SS_THREADS)
SS_LANES = (1, 2, 4, 8)  # lanes per channel (K)
SS_NPERS = (1, 2, 4, 8)  # states per lane (NPER): N <= 64
SS_MAX_N = 64
SS_SMEM_LIMIT = 48 * 1024  # static shared memory per block
#: the default K is the smallest giving at least this many threads (about 16 warps per SM on an
#: H100's 132 SMs), else the largest allowed
SS_TARGET_THREADS = 1 << 16


def _pow2(n: int) -> int:
    q = 1
    while q < n:
        q *= 2
    return q


def fwd_chunk(K: int, nper: int, itemsize: int) -> int:
    """Tokens per staged chunk of ss_fwd (CH): 8 K (8 u/delta/z values per thread), at most 32."""
    del nper, itemsize  # every instance fits (ss_smem_fwd <= 45 KB)
    return min(8 * K, 32)


def bwd_chunk(K: int, nper: int, itemsize: int) -> int:
    """Tokens per chunk of ss_bwd (TS): states of the chunk in registers, TS * NPER <= 64, at most
    32, halved (not below K) until the static shared memory fits."""
    ts = min(32, 64 // nper)
    while ss_smem_bwd(K, nper, ts, itemsize) > SS_SMEM_LIMIT and ts // 2 >= K:
        ts //= 2
    return ts


def ss_smem_fwd(K, nper, ch, itemsize):
    npad, cpb = K * nper, SS_THREADS // K
    return (2 * ch * npad + 3 * ch * cpb) * itemsize


def ss_smem_bwd(K, nper, ts, itemsize):
    npad, cpb, nw = K * nper, SS_THREADS // K, SS_THREADS // 32
    return (2 * ts * npad + 6 * ts * cpb + ts * nw * 2 * npad) * itemsize


@dataclasses.dataclass(frozen=True)
class SsConfig:
    lanes: int      # K, lanes per channel
    nper: int       # NPER, states per lane (K * NPER >= N)
    fwd_chunk: int  # CH, tokens per staged chunk of ss_fwd
    bwd_chunk: int  # TS, tokens per chunk of ss_bwd (and ss_fwd's save interval)
    blocks: int     # blocks per group: ceil((E / G) / channels_per_block)

    @property
    def channels_per_block(self) -> int:
        return SS_THREADS // self.lanes

    def names(self, c: str) -> tuple[str, str]:
        K, n = self.lanes, self.nper
        return (f"ss_fwd<{c}, {K}, {n}, {self.fwd_chunk}>",
                f"ss_bwd<{c}, {K}, {n}, {self.bwd_chunk}>")


def allowed_lanes(N: int) -> list[int]:
    npad = _pow2(max(N, 1))
    return [k for k in SS_LANES if k <= npad and npad // k in SS_NPERS]


def ss_config(Bsz: int, L: int, E: int, G: int, N: int, itemsize: int,
              lanes: int | None = None) -> SsConfig | None:
    """The dedicated kernels' launch configuration, or None when they do not take the shape
    (N > 64, L = 0, a grid axis over its limit). ``lanes`` (or MAMBA_CUPY_SS_LANES) forces K
    when allowed for N."""
    if N < 1 or N > SS_MAX_N or L < 1 or E < 1 or G < 1 or E % G or Bsz < 1:
        return None
    if Bsz > 65535 or G > 65535:
        return None
    allowed = allowed_lanes(N)
    if lanes is None:
        env = os.environ.get("MAMBA_CUPY_SS_LANES", "").strip()
        if env and env not in ("1", "2", "4", "8"):
            raise ValueError(f"MAMBA_CUPY_SS_LANES={env!r}: expected 1, 2, 4 or 8 (lanes per "
                             "channel of the dedicated selective-scan kernels), or unset")
        lanes = int(env) if env else None
    if lanes is not None and lanes in allowed:
        K = lanes
    else:
        K = next((k for k in allowed if Bsz * E * k >= SS_TARGET_THREADS), allowed[-1])
    nper = _pow2(max(N, 1)) // K
    cpb = SS_THREADS // K
    blocks = -(-(E // G) // cpb)
    ch, ts = fwd_chunk(K, nper, itemsize), bwd_chunk(K, nper, itemsize)
    if (ss_smem_fwd(K, nper, ch, itemsize) > SS_SMEM_LIMIT
            or ss_smem_bwd(K, nper, ts, itemsize) > SS_SMEM_LIMIT):
        return None
    return SsConfig(K, nper, ch, ts, blocks)


def ss_instances() -> list[str]:
    """Every SS_INST(T, K, NPER, CH, TS) line ss_config may ask for (cuda/selective_scan.cu)."""
    out = []
    for c, item in (("float", 4), ("double", 8)):
        for K in SS_LANES:
            for nper in SS_NPERS:
                out.append(f"SS_INST({c}, {K}, {nper}, {fwd_chunk(K, nper, item)}, "
                           f"{bwd_chunk(K, nper, item)})")
    return out


# ---- the dedicated kernels: launchers and their NumPy emulations --------------------------------
def _ptr(a):
    return a if a is not None else np.uint64(0)


def ss_forward(xp, cfg, u, delta, A, B, C, D, z, bias, softplus, init, *, want_y=True,
               want_fin=True, save=False):
    """ss_fwd. Arrays in the wide dtype, contiguous: u, delta, z (B, L, E); A (E, N);
    B, C (B, L, G, N); D, bias (E,); init (B, E, N). Returns (y | None, fin | None,
    ck (B, ceil(L / cfg.bwd_chunk), E, N) | None: the state entering every chunk when save)."""
    if isinstance(u, np.ndarray):
        return _emulate_fwd(cfg, u, delta, A, B, C, D, z, bias, softplus, init, want_y, want_fin,
                            save)
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    dtype = u.dtype
    TS = cfg.bwd_chunk
    y = xp.empty((Bsz, L, E), dtype) if want_y else None
    fin = xp.empty((Bsz, E, N), dtype) if want_fin else None
    ck = xp.empty((Bsz, -(-L // TS), E, N), dtype) if save else None
    fn = function("selective_scan.cu", cfg.names(ctype(dtype))[0])
    i32 = np.int32
    args = (i32(L), i32(E), i32(G), i32(N), i32(1 if softplus else 0), i32(TS),
            u, delta, _ptr(z), A, B, C, _ptr(D), _ptr(bias), _ptr(init),
            _ptr(y), _ptr(fin), _ptr(ck))
    fn((cfg.blocks, G, Bsz), (SS_THREADS,), args)
    return y, fin, ck


def ss_backward(xp, cfg, u, delta, A, B, C, D, z, bias, softplus, ck, dy, dfin, *, want_dinit):
    """ss_bwd. Arrays as ss_forward's, plus ck (its saved states), dy (B, L, E) | None,
    dfin (B, E, N) | None. Returns a dict: du, ddelta (B, L, E); dz (B, L, E) when z is given;
    dinit (B, E, N) when want_dinit; dA_part (B, E, N); dD_part, dbias_part (B, E);
    dB_part, dC_part (B, L, G, blocks, N)."""
    if isinstance(u, np.ndarray):
        return _emulate_bwd(cfg, u, delta, A, B, C, D, z, bias, softplus, ck, dy, dfin,
                            want_dinit)
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    dtype = u.dtype
    out = dict(du=xp.empty((Bsz, L, E), dtype), ddelta=xp.empty((Bsz, L, E), dtype),
               dz=xp.empty((Bsz, L, E), dtype) if z is not None else None,
               dA_part=xp.empty((Bsz, E, N), dtype), dD_part=xp.empty((Bsz, E), dtype),
               dbias_part=xp.empty((Bsz, E), dtype),
               dB_part=xp.empty((Bsz, L, G, cfg.blocks, N), dtype),
               dC_part=xp.empty((Bsz, L, G, cfg.blocks, N), dtype),
               dinit=xp.empty((Bsz, E, N), dtype) if want_dinit else None)
    fn = function("selective_scan.cu", cfg.names(ctype(dtype))[1])
    i32 = np.int32
    args = (i32(L), i32(E), i32(G), i32(N), i32(1 if softplus else 0),
            u, delta, _ptr(z), _ptr(dy), A, B, C, _ptr(D), _ptr(bias), ck, _ptr(dfin),
            *(_ptr(out[k]) for k in ("du", "ddelta", "dz", "dA_part", "dD_part", "dbias_part",
                                     "dB_part", "dC_part", "dinit")))
    fn((cfg.blocks, G, Bsz), (SS_THREADS,), args)
    return {k: v for k, v in out.items() if v is not None}


def _np_dt(delta, bias, softplus):
    raw = delta if bias is None else delta + bias
    return raw, (_softplus(np, raw) if softplus else raw)


def _np_decay(dt, A):
    """exp(dt A) as the kernels compute it: exp2(dt (A log2 e)) in float32, exp in float64."""
    if dt.dtype == np.float32:
        return np.exp2(dt[..., None] * (A * np.float32(math.log2(math.e))))
    return np.exp(dt[..., None] * A)


def _emulate_fwd(cfg, u, delta, A, B, C, D, z, bias, softplus, init, want_y, want_fin, save):
    """ss_fwd in NumPy, loop over time (tests only: small shapes)."""
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    wd = u.dtype
    TS = cfg.bwd_chunk
    group = np.arange(E) // (E // G)
    _, dt = _np_dt(delta, bias, softplus)
    h = np.zeros((Bsz, E, N), wd) if init is None else init.copy()
    s = np.zeros((Bsz, L, E), wd)
    ck = np.zeros((Bsz, -(-L // TS), E, N), wd) if save else None
    for t in range(L):
        if save and t % TS == 0:
            ck[:, t // TS] = h
        h = _np_decay(dt[:, t], A) * h + (dt[:, t] * u[:, t])[..., None] * B[:, t][:, group]
        s[:, t] = np.sum(h * C[:, t][:, group], axis=-1)
    y = None
    if want_y:
        y = s if D is None else s + D * u
        if z is not None:
            y = y * silu(np, z)
        y = y.astype(wd)
    return y, (h if want_fin else None), ck


def _block_sum(v, G, blocks, cpb):
    """(B, E, N) per channel -> (B, G, blocks, N): the sums over each block's channels."""
    Bsz, E, N = v.shape
    P = E // G
    pad = np.zeros((Bsz, G, blocks * cpb, N), v.dtype)
    pad[:, :, :P] = v.reshape(Bsz, G, P, N)
    return pad.reshape(Bsz, G, blocks, cpb, N).sum(axis=3)


def _emulate_bwd(cfg, u, delta, A, B, C, D, z, bias, softplus, ck, dy, dfin, want_dinit):
    """ss_bwd in NumPy with the kernel's structure: chunks of TS tokens last first, states
    recomputed from ck, per-batch and per-block partials (tests only: small shapes)."""
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    wd = u.dtype
    TS, blocks, cpb = cfg.bwd_chunk, cfg.blocks, cfg.channels_per_block
    group = np.arange(E) // (E // G)
    raw, dt = _np_dt(delta, bias, softplus)
    dyv = np.zeros((Bsz, L, E), wd) if dy is None else dy
    dyp = dyv if z is None else dyv * silu(np, z)
    Dv = np.zeros(E, wd) if D is None else D
    gs = np.zeros((Bsz, E, N), wd) if dfin is None else dfin.copy()
    du, ddelta = np.zeros((Bsz, L, E), wd), np.zeros((Bsz, L, E), wd)
    dz = np.zeros((Bsz, L, E), wd) if z is not None else None
    dA_part = np.zeros((Bsz, E, N), wd)
    dB_part = np.zeros((Bsz, L, G, blocks, N), wd)
    dC_part = np.zeros((Bsz, L, G, blocks, N), wd)
    for c in range(-(-L // TS) - 1, -1, -1):
        t0, t1 = c * TS, min(c * TS + TS, L)
        hin = ck[:, c]
        hs, h = [], hin
        for t in range(t0, t1):
            h = _np_decay(dt[:, t], A) * h + (dt[:, t] * u[:, t])[..., None] * B[:, t][:, group]
            hs.append(h)
        for t in range(t1 - 1, t0 - 1, -1):
            Bt, Ct = B[:, t][:, group], C[:, t][:, group]
            hp = hs[t - t0 - 1] if t > t0 else hin
            a = _np_decay(dt[:, t], A)
            gs = gs + Ct * dyp[:, t, :, None]
            q = gs * a * hp
            gb = np.sum(gs * Bt, axis=-1)
            s = np.sum(hs[t - t0] * Ct, axis=-1)
            dA_part += dt[:, t, :, None] * q
            dB_part[:, t] = _block_sum(gs * (dt[:, t] * u[:, t])[..., None], G, blocks, cpb)
            dC_part[:, t] = _block_sum(dyp[:, t, :, None] * hs[t - t0], G, blocks, cpb)
            gs = gs * a
            du[:, t] = dt[:, t] * gb + Dv * dyp[:, t]
            dd = np.sum(A * q, axis=-1) + u[:, t] * gb
            if softplus:
                dd = dd * softplus_grad(np, raw[:, t])
            ddelta[:, t] = dd
            if z is not None:
                dz[:, t] = dyv[:, t] * (s + Dv * u[:, t]) * dsilu(np, z[:, t])
    out = dict(du=du, ddelta=ddelta, dA_part=dA_part, dD_part=np.sum(dyp * u, axis=1),
               dbias_part=np.sum(ddelta, axis=1), dB_part=dB_part, dC_part=dC_part)
    if z is not None:
        out["dz"] = dz
    if want_dinit:
        out["dinit"] = gs
    return {k: v.astype(wd, copy=False) for k, v in out.items()}


def _wide_args(xp, wd, *arrays):
    """Each array (or None) in the wide dtype and C-contiguous."""
    return [None if a is None else xp.ascontiguousarray(a.astype(wd, copy=False)) for a in arrays]


def _fwd_ss(xp, cfg, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
            initial_state=None):
    wd = wide(xp, u.dtype)
    y, fin, _ = ss_forward(xp, cfg, *_wide_args(xp, wd, u, delta, A, B, C, D, z, delta_bias),
                           bool(delta_softplus), *_wide_args(xp, wd, initial_state))
    return y.astype(u.dtype, copy=False), fin


def _vjp_ss(xp, cfg, cotangent, u, delta, A, B, C, D=None, z=None, delta_bias=None,
            delta_softplus=False, initial_state=None):
    """The VJP on the dedicated kernels: ss_fwd saving chunk states, ss_bwd, partial sums."""
    dy, dhL = _ops._split_cotangent(cotangent)
    wd = wide(xp, u.dtype)
    uw, dw, Aw, Bw, Cw, Dw, zw, bw, iw, dyw, dfw = _wide_args(
        xp, wd, u, delta, A, B, C, D, z, delta_bias, initial_state, dy, dhL)
    sp = bool(delta_softplus)
    _, _, ck = ss_forward(xp, cfg, uw, dw, Aw, Bw, Cw, Dw, zw, bw, sp, iw, want_y=False,
                          want_fin=False, save=True)
    r = ss_backward(xp, cfg, uw, dw, Aw, Bw, Cw, Dw, zw, bw, sp, ck, dyw, dfw,
                    want_dinit=initial_state is not None)
    grads = dict(u=r["du"], delta=r["ddelta"], A=xp.sum(r["dA_part"], axis=0),
                 B=xp.sum(r["dB_part"], axis=3), C=xp.sum(r["dC_part"], axis=3))
    if D is not None:
        grads["D"] = xp.sum(r["dD_part"], axis=0)
    if delta_bias is not None:
        grads["delta_bias"] = xp.sum(r["dbias_part"], axis=0)
    if z is not None:
        grads["z"] = r["dz"]
    if initial_state is not None:
        grads["initial_state"] = r["dinit"]
    args = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                initial_state=initial_state)
    return {k: v.astype(args[k].dtype, copy=False) for k, v in grads.items()}


def dedicated_config(u, B):
    """The dedicated kernels' configuration for this call, or None (row path): None when
    MAMBA_CUPY_SS=row or the shape is outside their range."""
    if kernel_choice() != "dedicated":
        return None
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    return ss_config(Bsz, L, E, G, N, np.dtype(wide(np, u.dtype)).itemsize)


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
    cfg = dedicated_config(u, B)
    if cfg is not None:
        return _fwd_ss(xp_of(u), cfg, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
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
    """VJP of selective_scan: the dedicated ss_fwd/ss_bwd pair, or two row-scan sweeps, the decay
    kernel and elementwise glue (module docstring). cotangent = (dy (B, L, E) | None,
    dfinal_state (B, E, N) | None) -> dict."""
    cot = tuple(cotangent) if isinstance(cotangent, (tuple, list)) else (None, None)
    if not _takes(u, B, delta, A, C, D, z, delta_bias, initial_state, *cot):
        return default("selective_scan_vjp")(cotangent, u, delta, A, B, C, D, z, delta_bias,
                                             delta_softplus, initial_state)
    cfg = dedicated_config(u, B)
    if cfg is not None:
        return _vjp_ss(xp_of(u), cfg, cotangent, u, delta, A, B, C, D, z, delta_bias,
                       delta_softplus, initial_state)
    return _vjp(xp_of(u), cotangent, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                initial_state)


KERNELS = {"selective_scan": selective_scan, "selective_scan_step": selective_scan_step,
           "selective_scan_vjp": selective_scan_vjp}
