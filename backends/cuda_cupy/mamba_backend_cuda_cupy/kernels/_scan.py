"""Host side of the row scan (cuda/scan.cu): launch configuration, launcher, NumPy emulation.

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
