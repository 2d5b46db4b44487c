"""Host side of the row scan (cuda/scan.cu) and of its decay gradient (cuda/scan_bwd.cu, see
``decay_grad``): launch configuration, launchers, NumPy emulations.

``row_scan(xp, ...)`` runs the kernel when the arrays are CuPy arrays and a NumPy emulation of
the very same contract when they are NumPy arrays. The Mamba-1/2/3 wrappers are written once over
``xp`` on top of it, so their glue (the decompositions of the backward passes in particular) is
tested on a machine without a GPU against the float64 references; on the GPU only the kernel
itself is new.

Contract (shapes; arrays may be broadcast views -- strides are read from them):
    dA, coef: (B, L, H, P)      Am: (H, P, N) or None (ones)
    V, W:     (B, L, R, H, P)   K, Q: (B, L, R, HK, N), head h reading K/Q head h // hpk
    init:     (B, H, P, N) or None
    dec_t = exp(dA_t * Am);  in_t = coef_t * sum_r V_r K_r^T
    forward: S_t = dec_t S_{t-1} + in_t;    reverse: G_t = dec_{t+1} G_{t+1} + in_t
    returns (Y (B, L, R, H, P) = S_t Q_r   | None,
             Red (B, L, R, H, N) = sum_p W_r[p] S_t[p, :]   | None,
             fin (B, H, P, N) = S_{L-1}, or dec_0 G_0 in reverse)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mamba_backend_cuda_cupy._compile import ctype, function

MAX_WARPS = 16
SMEM_LIMIT = 48 * 1024


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


@dataclasses.dataclass(frozen=True)
class ScanConfig:
    lpc: int      # lanes per row (power of two <= 32)
    nper: int     # state entries per lane (1, 2, 4 or 8)
    warps: int    # warps per block
    tiles: int    # blocks along the rows of one head
    smem: int     # dynamic shared memory bytes (row reduction)

    @property
    def rows_per_tile(self) -> int:
        return self.warps * (32 // self.lpc)


def scan_config(P: int, N: int, itemsize: int) -> ScanConfig | None:
    """The launch configuration for P rows of N states, or None when the kernel cannot take it."""
    if P < 1 or N < 1 or N > 256:
        return None
    lpc = min(32, _pow2(N))
    nper = _pow2(-(-N // lpc))
    subs = 32 // lpc
    warps = max(1, min(MAX_WARPS, -(-P // subs)))
    tiles = -(-P // (warps * subs))
    smem = warps * subs * lpc * nper * itemsize
    if smem > SMEM_LIMIT:
        return None
    return ScanConfig(lpc, nper, warps, tiles, smem)


def supported(P: int, N: int, itemsize: int = 4) -> bool:
    return scan_config(P, N, itemsize) is not None


def _elem_strides(a, ndim):
    st = tuple(int(s) // a.itemsize for s in a.strides)
    assert len(st) == ndim, (a.shape, ndim)
    return st


def row_scan(xp, *, dA, V, K, hpk=1, Am=None, coef=None, Q=None, W=None, init=None,
             reverse=False, want_fin=True):
    """Run the row scan (see the module docstring). Returns (Y, Red, fin)."""
    if isinstance(V, np.ndarray):
        return _emulate(dA, V, K, hpk, Am, coef, Q, W, init, reverse, want_fin)
    return _launch(xp, dA, V, K, hpk, Am, coef, Q, W, init, reverse, want_fin)


def _launch(xp, dA, V, K, hpk, Am, coef, Q, W, init, reverse, want_fin):
    Bsz, L, R, H, P = V.shape
    N = K.shape[-1]
    dtype = V.dtype
    cfg = scan_config(P, N, dtype.itemsize)
    if cfg is None:
        raise ValueError(f"row_scan: P={P}, N={N} is outside the kernel's range (N <= 256)")

    def unit_last(a):
        return a if a is None or a.strides[-1] == a.itemsize else xp.ascontiguousarray(a)

    K, Q = unit_last(K), unit_last(Q)
    init = None if init is None else xp.ascontiguousarray(init, dtype=dtype)
    Y = xp.empty((Bsz, L, R, H, P), dtype) if Q is not None else None
    Red = xp.empty((cfg.tiles, Bsz, L, R, H, N), dtype) if W is not None else None
    fin = xp.empty((Bsz, H, P, N), dtype) if want_fin else None
    avec = Am is not None and Am.strides[2] != 0
    name = f"row_scan<{ctype(dtype)}, {cfg.nper}, {'true' if avec else 'false'}>"
    fn = function("scan.cu", name)
    i32, i64 = np.int32, np.int64
    z5 = (0,) * 5

    def ptr(a):  # an absent array is a null pointer (an 8-byte zero)
        return a if a is not None else np.uint64(0)

    sD = _elem_strides(dA, 4)
    sA = _elem_strides(Am, 3) if Am is not None else (0, 0, 0)
    sC = _elem_strides(coef, 4) if coef is not None else (0, 0, 0, 0)
    sV = _elem_strides(V, 5)
    sK = _elem_strides(K, 5)
    sQ = _elem_strides(Q, 5) if Q is not None else z5
    sW = _elem_strides(W, 5) if W is not None else z5
    args = (
        i32(L), i32(H), i32(P), i32(N), i32(R), i32(cfg.lpc), i32(1 if reverse else 0),
        dA, *(i64(s) for s in sD),
        ptr(Am), *(i64(s) for s in sA),
        ptr(coef), *(i64(s) for s in sC),
        V, *(i64(s) for s in sV),
        K, *(i64(s) for s in sK[:4]), i32(hpk),
        ptr(Q), *(i64(s) for s in sQ[:4]),
        ptr(Y),
        ptr(W), *(i64(s) for s in sW),
        ptr(Red),
        ptr(init), ptr(fin),
    )
    if L > 0:
        fn((cfg.tiles, H, Bsz), (cfg.warps * 32,), args, shared_mem=cfg.smem)
    elif want_fin:
        fin[...] = 0 if init is None else init
    if Red is not None:
        Red = Red[0] if cfg.tiles == 1 else xp.sum(Red, axis=0)
    return Y, Red, fin


def _emulate(dA, V, K, hpk, Am, coef, Q, W, init, reverse, want_fin):
    """The contract in NumPy, loop over time (tests only: small shapes)."""
    Bsz, L, R, H, P = V.shape
    N = K.shape[-1]
    dt = V.dtype
    heads = np.arange(H) // hpk
    Kh = K[:, :, :, heads]  # (B, L, R, H, N)
    Qh = None if Q is None else Q[:, :, :, heads]
    Am_ = np.ones((H, P, N), dt) if Am is None else np.broadcast_to(Am, (H, P, N))
    cf = np.ones((Bsz, L, H, P), dt) if coef is None else coef
    S = np.zeros((Bsz, H, P, N), dt) if init is None else np.array(init, dt)
    Y = None if Q is None else np.zeros((Bsz, L, R, H, P), dt)
    Red = None if W is None else np.zeros((Bsz, L, R, H, N), dt)
    pend = np.ones((Bsz, H, P, N), dt)
    order = range(L - 1, -1, -1) if reverse else range(L)
    for t in order:
        dec = np.exp(dA[:, t, :, :, None] * Am_[None])
        inp = cf[:, t, :, :, None] * np.einsum("brhp,brhn->bhpn", V[:, t], Kh[:, t])
        if reverse:
            S = pend * S + inp
            pend = dec
        else:
            S = dec * S + inp
        if Y is not None:
            Y[:, t] = np.einsum("bhpn,brhn->brhp", S, Qh[:, t])
        if Red is not None:
            Red[:, t] = np.einsum("brhp,bhpn->brhn", W[:, t], S)
    fin = (pend * S if reverse else S) if want_fin else None
    return Y, Red, fin


# ---- the decay gradient (cuda/scan_bwd.cu) ------------------------------------------------------
#: tokens per checkpoint chunk of decay_grad (the kernel's CH template argument)
DECAY_CHUNK = 32


def decay_grad(xp, *, dA, V, K, Vr, Kr, hpk=1, Am=None, coef=None, init=None, dfin=None,
               want_dAm=False):
    """The decay gradient of the row scan (cuda/scan_bwd.cu). Returns (qa, dAm | None).

    Forward as row_scan (dA, Am, coef, V, K, init); adjoint G_t = dec_{t+1} G_{t+1} + Vr_t Kr_t^T
    from G_L = dfin; q_t[n] = dec_t[n] G_t[n] S_{t-1}[n];
    qa (B, L, H, P) = sum_n Am[n] q_t[n] (Am None: 1);  dAm (B, H, P, N) = sum_t dA_t q_t[n].
    Vr: (B, L, R2, H, P), Kr: (B, L, R2, HK, N) (R2 may differ from V's R).
    """
    if isinstance(V, np.ndarray):
        return _emulate_decay(dA, V, K, Vr, Kr, hpk, Am, coef, init, dfin, want_dAm)
    return _launch_decay(xp, dA, V, K, Vr, Kr, hpk, Am, coef, init, dfin, want_dAm)


def _launch_decay(xp, dA, V, K, Vr, Kr, hpk, Am, coef, init, dfin, want_dAm):
    Bsz, L, R, H, P = V.shape
    R2 = Vr.shape[2]
    N = K.shape[-1]
    dtype = V.dtype
    cfg = scan_config(P, N, dtype.itemsize)
    if cfg is None:
        raise ValueError(f"decay_grad: P={P}, N={N} is outside the kernel's range (N <= 256)")
    if R2 != R:  # the kernel takes one rank for both inputs: pad the smaller with zero terms
        raise ValueError(f"decay_grad: V has rank {R} but Vr has rank {R2}; they must match")

    def unit_last(a):
        return a if a.strides[-1] == a.itemsize else xp.ascontiguousarray(a)

    K, Kr = unit_last(K), unit_last(Kr)
    init = None if init is None else xp.ascontiguousarray(init, dtype=dtype)
    dfin = None if dfin is None else xp.ascontiguousarray(dfin, dtype=dtype)
    nck = max(1, -(-L // DECAY_CHUNK))
    ck = xp.empty((Bsz, nck, H, P, N), dtype)
    qa = xp.empty((Bsz, L, H, P), dtype)
    dAm = xp.empty((Bsz, H, P, N), dtype) if want_dAm else None
    if L == 0:
        if dAm is not None:
            dAm[...] = 0
        return qa, dAm
    avec = Am is not None and Am.strides[2] != 0
    name = f"decay_grad<{ctype(dtype)}, {cfg.nper}, {'true' if avec else 'false'}, {DECAY_CHUNK}>"
    fn = function("scan_bwd.cu", name)
    i32, i64 = np.int32, np.int64

    def ptr(a):
        return a if a is not None else np.uint64(0)

    sD = _elem_strides(dA, 4)
    sA = _elem_strides(Am, 3) if Am is not None else (0, 0, 0)
    sC = _elem_strides(coef, 4) if coef is not None else (0, 0, 0, 0)
    sV, sK = _elem_strides(V, 5), _elem_strides(K, 5)
    sU, sR = _elem_strides(Vr, 5), _elem_strides(Kr, 5)
    args = (
        i32(L), i32(H), i32(P), i32(N), i32(R), i32(cfg.lpc),
        dA, *(i64(s) for s in sD),
        ptr(Am), *(i64(s) for s in sA),
        ptr(coef), *(i64(s) for s in sC),
        V, *(i64(s) for s in sV),
        K, *(i64(s) for s in sK[:4]),
        Vr, *(i64(s) for s in sU),
        Kr, *(i64(s) for s in sR[:4]), i32(hpk),
        ptr(init), ptr(dfin), ck, qa, ptr(dAm),
    )
    fn((cfg.tiles, H, Bsz), (cfg.warps * 32,), args)
    return qa, dAm


def _emulate_decay(dA, V, K, Vr, Kr, hpk, Am, coef, init, dfin, want_dAm):
    """decay_grad in NumPy with the kernel's loop structure (checkpoints every DECAY_CHUNK
    tokens, chunks recomputed last first): tests only, small shapes."""
    Bsz, L, R, H, P = V.shape
    N = K.shape[-1]
    dt = V.dtype
    heads = np.arange(H) // hpk
    Kh, Krh = K[:, :, :, heads], Kr[:, :, :, heads]  # (B, L, R, H, N)
    Am_ = np.ones((H, P, N), dt) if Am is None else np.broadcast_to(Am, (H, P, N))
    cf = np.ones((Bsz, L, H, P), dt) if coef is None else coef
    CH = DECAY_CHUNK
    nck = max(1, -(-L // CH))

    def dec(t):
        return np.exp(dA[:, t, :, :, None] * Am_[None]).astype(dt)

    def fwd(t, S):
        inp = cf[:, t, :, :, None] * np.einsum("brhp,brhn->bhpn", V[:, t], Kh[:, t])
        return dec(t) * S + inp

    S = np.zeros((Bsz, H, P, N), dt) if init is None else np.array(init, dt)
    ck = np.zeros((Bsz, nck, H, P, N), dt)
    for t in range(L):
        if t % CH == 0:
            ck[:, t // CH] = S
        S = fwd(t, S)
    G = np.zeros((Bsz, H, P, N), dt) if dfin is None else np.array(dfin, dt)
    pend = np.ones((Bsz, H, P, N), dt)
    acc = np.zeros((Bsz, H, P, N), dt)
    qa = np.zeros((Bsz, L, H, P), dt)
    for c in range(nck - 1, -1, -1):
        t0, t1 = c * CH, min(c * CH + CH, L)
        S = ck[:, c].copy()
        buf = []
        for t in range(t0, t1):
            buf.append(S)
            S = fwd(t, S)
        for t in range(t1 - 1, t0 - 1, -1):
            d = dec(t)
            G = pend * G + np.einsum("brhp,brhn->bhpn", Vr[:, t], Krh[:, t])
            pend = d
            q = d * G * buf[t - t0]
            qa[:, t] = np.sum(Am_[None] * q, axis=-1)
            acc += dA[:, t, :, :, None] * q
    return qa, (acc if want_dAm else None)
