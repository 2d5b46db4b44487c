"""Host side of the row scan (cuda/scan.cu) and of its decay gradient (cuda/scan_bwd.cu, see
``decay_grad``): launch configuration, launchers, NumPy emulations.

``row_scan(xp, ...)`` runs the kernel when the arrays are CuPy arrays and a NumPy emulation of
the very same contract when they are NumPy arrays. The Mamba-1/2/3 wrappers are written once over
``xp`` on top of it, so their glue (the decompositions of the backward passes in particular) is
tested on a machine without a GPU against the float64 references; on the GPU only the kernel
itself is new.

Three kernels implement the contract, chosen at every call by MAMBA_CUPY_ROW_SCAN:
- "tiled" (default): row_scan_tiled (cuda/scan_tiled.cu) for the calls whose decay and
  coefficient are the same on all rows of a head (``tiled_applies``: every Mamba-2 and Mamba-3
  call), a thread holding an RP x NPT tile of state (plan: ``tiled_config``, overridable with
  MAMBA_CUPY_TILED); the other calls (Mamba-1's per-state decay) and the decay gradient run
  the chunked kernels. Same arithmetic per state entry; Y and Red sum in another order, so they
  agree with the other kernels to rounding, not bit for bit. (A tiled decay gradient, its
  recomputed states in per-thread shared-memory slots, was correct but slower on the H100:
  26.8 ms against 18.7 at the SSD shape, run 11; it was removed.)
- "chunked": row_scan_chunked and decay_grad_chunked: time in chunks staged through shared memory
  with cp.async one chunk ahead, Y staged and written coalesced, the row reduction flushed once
  per ring of slabs; plans: chunk_config, decay_config.
- "step": row_scan, decay_grad: the original kernels, one global load per operand per step.
"chunked" and "step" have the same rows and arithmetic per row: Y, fin, qa and dAm agree bit for
bit, Red too when the plan keeps the same rows per block.

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
import functools
import os

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


# ---- the chunked kernel (row_scan_chunked): which kernel, and its shared-memory plan ----------
#: MAMBA_CUPY_ROW_SCAN selects the row-scan and decay-gradient kernels, read at every call:
#: "tiled" (default: row_scan_tiled where it applies, the chunked kernels elsewhere), "chunked"
#: (inputs staged through shared memory in chunks of time) or "step" (the original kernels, one
#: global load per operand per step; kept to check and time against).
ROW_SCAN_ENV = "MAMBA_CUPY_ROW_SCAN"
ROW_SCAN_KINDS = ("tiled", "chunked", "step")
#: dynamic shared memory a chunked launch may plan for (bytes; capped by the device's opt-in
#: limit at launch). 110 KiB keeps two 512-thread blocks on an H100 SM (228 KiB).
CHUNK_SMEM_BUDGET = 110 * 1024
#: time steps per chunk (and reduction slabs per ring) considered, largest first
CHUNK_STEPS = (64, 32, 16, 8, 4, 2, 1)


def row_scan_kind() -> str:
    """The kernel MAMBA_CUPY_ROW_SCAN selects ("tiled" unless set)."""
    kind = os.environ.get(ROW_SCAN_ENV, "tiled").strip().lower() or "tiled"
    if kind not in ROW_SCAN_KINDS:
        raise ValueError(f"{ROW_SCAN_ENV}={kind!r}: expected one of {', '.join(ROW_SCAN_KINDS)}")
    return kind


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    lpc: int      # lanes per row, as ScanConfig
    nper: int     # state entries per lane
    warps: int    # warps per block
    tiles: int    # blocks along the rows of one head
    steps: int    # TC: time steps per staged chunk
    ring: int     # DR: (step, rank) slabs per reduction flush (1 when there is no reduction)
    offsets: tuple  # element offsets (oK, oQ, oD, oC, oV, oW, oY, oR) into shared memory
    smem: int     # dynamic shared memory bytes

    @property
    def rows_per_tile(self) -> int:
        return self.warps * (32 // self.lpc)


def _chunk_layout(T, D, R, rows, npad, has_q, has_coef, has_w):
    """(offsets, total elements) of row_scan_chunked's shared memory (see scan.cu)."""
    sizes = (2 * T * R * npad,                      # K
             2 * T * R * npad if has_q else 0,      # Q
             2 * T * rows,                          # dA
             2 * T * rows if has_coef else 0,       # coef
             2 * T * R * rows,                      # V
             2 * T * R * rows if has_w else 0,      # W
             2 * T * R * rows if has_q else 0,      # Y staging
             2 * D * rows * npad if has_w else 0)   # reduction rings
    offs, o = [], 0
    for n in sizes:
        offs.append(o)
        o += n
    return tuple(offs), o


def chunk_config(P: int, N: int, R: int, L: int, itemsize: int, has_q: bool = True,
                 has_coef: bool = True, has_w: bool = False,
                 budget: int = CHUNK_SMEM_BUDGET) -> ChunkConfig | None:
    """The launch plan of row_scan_chunked, or None when the kernel cannot take (P, N).

    Rows and lanes as scan_config. Chooses the chunk length TC and the reduction ring DR that
    minimise the barriers per step, 1/TC + R/DR (R/DR only with a reduction), within `budget`
    bytes (ties: less memory); TC is at most the next power of two >= L. When not even
    TC = DR = 1 fits, fewer warps per block (more tiles) are tried."""
    base = scan_config(P, N, itemsize)
    if base is None or R < 1:
        return None
    subs = 32 // base.lpc
    npad = base.lpc * base.nper
    tmax = _pow2(max(1, L))
    warps = base.warps
    while warps >= 1:
        rows = warps * subs
        best = None
        for T in CHUNK_STEPS:
            if T > tmax:
                continue
            for D in (CHUNK_STEPS if has_w else (1,)):
                offs, total = _chunk_layout(T, D, R, rows, npad, has_q, has_coef, has_w)
                nbytes = total * itemsize
                if nbytes > budget:
                    continue
                key = (1.0 / T + (R / D if has_w else 0.0), nbytes)
                if best is None or key < best[0]:
                    best = (key, T, D, offs, nbytes)
        if best is not None:
            _, T, D, offs, nbytes = best
            tiles = -(-P // rows)
            return ChunkConfig(base.lpc, base.nper, warps, tiles, T, D, offs, nbytes)
        warps //= 2
    return None


# ---- the tiled kernel (row_scan_tiled, cuda/scan_tiled.cu): when it applies, and its plan --------
#: state entries a lane (NPT) and rows a thread (RP) the tiled kernel is instantiated for
TILED_NPT = (1, 2, 4, 8)
TILED_RP = (1, 2, 4, 8)
#: MAMBA_CUPY_TILED="npt=8,rp=4,warps=8" overrides the tiled plan's choices (any subset; for
#: sweeps). Defaults, float32: NPT = Npad/32 (at least 1; N = 128: 4 entries a lane, a warp a
#: row group), RP = 8 rows a thread; float64 (registers): NPT = Npad/16 within 1..8, RP = 2; at
#: most 8 warps a block. Measured on an H100 (benchmarks/results/gpu-20261123-h100, run 10,
#: SSD shape, float32): forward sweep 2.04 ms either way, with the row reduction 3.52 ms
#: (npt=4, rp=8) against 4.05 (npt=8, rp=4), 7.45 (npt=8, rp=2), 13.9 (npt=8, rp=1).
TILED_ENV = "MAMBA_CUPY_TILED"
TILED_MAX_WARPS = 8


@dataclasses.dataclass(frozen=True)
class TiledConfig:
    lg: int       # lanes per row group (a power of two <= 32)
    npt: int      # state entries per lane
    rp: int       # rows per thread
    warps: int    # warps per block
    tiles: int    # blocks along the rows of one head
    steps: int    # TC: time steps per staged chunk
    ring: int     # DR: (step, rank) slabs per reduction flush (1 when there is no reduction)
    offsets: tuple  # element offsets (oK, oQ, oD, oC, oV, oW, oY, oR) into shared memory
    smem: int     # dynamic shared memory bytes

    @property
    def rows_per_tile(self) -> int:
        return self.warps * (32 // self.lg) * self.rp


def _tiled_overrides() -> dict:
    raw = os.environ.get(TILED_ENV, "").strip()
    out = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        key, _, val = item.partition("=")
        key = key.strip().lower()
        if key not in ("npt", "rp", "warps") or not val.strip().isdigit():
            raise ValueError(f"{TILED_ENV}={raw!r}: expected comma-separated npt=, rp=, warps= "
                             "with integer values, e.g. npt=8,rp=4,warps=8")
        out[key] = int(val)
    if "npt" in out and out["npt"] not in TILED_NPT:
        raise ValueError(f"{TILED_ENV}: npt={out['npt']} is not one of {TILED_NPT}")
    if "rp" in out and out["rp"] not in TILED_RP:
        raise ValueError(f"{TILED_ENV}: rp={out['rp']} is not one of {TILED_RP}")
    if "warps" in out and not 1 <= out["warps"] <= 16:
        raise ValueError(f"{TILED_ENV}: warps={out['warps']} is outside 1..16")
    return out


def _tiled_layout(T, D, R, rb, npad, warps, has_q, has_coef, has_w, align):
    """(offsets, total elements) of row_scan_tiled's shared memory (see scan_tiled.cu); every
    region starts on a multiple of `align` elements (16 bytes)."""
    sizes = (2 * T * R * npad,                      # K
             2 * T * R * npad if has_q else 0,      # Q
             2 * T,                                 # dA
             2 * T if has_coef else 0,              # coef
             2 * T * R * rb,                        # V
             2 * T * R * rb if has_w else 0,        # W
             2 * T * R * rb if has_q else 0,        # Y staging
             2 * D * warps * npad if has_w else 0)  # reduction rings
    offs, o = [], 0
    for n in sizes:
        offs.append(o)
        o += -(-n // align) * align
    return tuple(offs), o


def tiled_config(P: int, N: int, R: int, L: int, itemsize: int, has_q: bool = True,
                 has_coef: bool = True, has_w: bool = False,
                 budget: int = CHUNK_SMEM_BUDGET) -> TiledConfig | None:
    """The launch plan of row_scan_tiled, or None when it cannot take (P, N).

    Lanes: NPT entries each, LG = Npad / NPT lanes a row group (Npad = the next power of two
    >= N, LG <= 32), RP <= LG rows a thread (defaults: TILED_ENV's comment); warps enough for
    the P rows (at most 8). Chunk TC
    and ring DR as chunk_config (fewest barriers a step within `budget`; fewer warps when even
    TC = DR = 1 does not fit)."""
    if P < 1 or N < 1 or N > 256 or R < 1:
        return None
    ov = _tiled_overrides()
    npad = _pow2(N)
    npt = ov.get("npt", max(1, npad // 32) if itemsize <= 4 else min(8, max(1, npad // 16)))
    npt = min(npt, npad)
    if npad // npt > 32:
        npt = npad // 32
    if npt not in TILED_NPT:
        return None
    lg = npad // npt
    rp = ov.get("rp", (8 if npt <= 4 else 4) if itemsize <= 4 else 2)  # 8 x 8 would spill
    rp = max(1, min(rp, lg, _pow2(P)))
    groups = 32 // lg
    warps = ov.get("warps", max(1, min(TILED_MAX_WARPS, -(-P // (groups * rp)))))
    align = max(1, 16 // itemsize)
    tmax = _pow2(max(1, L))
    while warps >= 1:
        rb = warps * groups * rp
        best = None
        for T in CHUNK_STEPS:
            if T > tmax:
                continue
            for D in (CHUNK_STEPS if has_w else (1,)):
                offs, total = _tiled_layout(T, D, R, rb, npad, warps, has_q, has_coef, has_w,
                                            align)
                nbytes = total * itemsize
                if nbytes > budget:
                    continue
                key = (1.0 / T + (R / D if has_w else 0.0), nbytes)
                if best is None or key < best[0]:
                    best = (key, T, D, offs, nbytes)
        if best is not None:
            _, T, D, offs, nbytes = best
            return TiledConfig(lg, npt, rp, warps, -(-P // rb), T, D, offs, nbytes)
        warps //= 2
    return None


def tiled_applies(dA, Am, coef) -> bool:
    """Whether a call's decay and coefficient are the same on every row of a head (strides 0
    along p; Am a per-head scalar): the calls row_scan_tiled takes."""
    if dA.strides[3] != 0:
        return False
    if Am is not None and (Am.strides[1] != 0 or Am.strides[2] != 0):
        return False
    return coef is None or coef.strides[3] == 0


_SMEM_SET: dict = {}


def _with_smem(fn, nbytes: int, device_id: int):
    """fn, allowed `nbytes` of dynamic shared memory (the attribute, once per kernel and device,
    only above the portable 48 KiB)."""
    if nbytes > SMEM_LIMIT:
        key = (id(fn), device_id)
        if _SMEM_SET.get(key, 0) < nbytes:
            fn.max_dynamic_shared_size_bytes = nbytes
            _SMEM_SET[key] = nbytes
    return fn


@functools.lru_cache(maxsize=None)
def _smem_optin(device_id: int) -> int:
    """The device's opt-in shared memory per block (bytes); 48 KiB when it cannot be read."""
    try:
        import cupy

        return int(cupy.cuda.Device(device_id).attributes["MaxSharedMemoryPerBlockOptin"])
    except Exception:  # an old CuPy or driver: the portable limit
        return SMEM_LIMIT


def _elem_strides(a, ndim):
    st = tuple(int(s) // a.itemsize for s in a.strides)
    assert len(st) == ndim, (a.shape, ndim)
    return st


def row_scan(xp, *, dA, V, K, hpk=1, Am=None, coef=None, Q=None, W=None, init=None,
             reverse=False, want_fin=True, checkpoints=False):
    """Run the row scan (see the module docstring). Returns (Y, Red, fin), and with
    ``checkpoints`` (forward only) a fourth item: decay_grad's checkpoints of this scan
    ((B, ceil(L / DECAY_CHUNK), H, P, N), S_{t-1} at every t = c DECAY_CHUNK) for its ``ck``,
    or None when the kernel that ran does not write them (then decay_grad makes its own)."""
    if checkpoints and reverse:
        raise ValueError("row_scan: checkpoints are the forward states; reverse=True has none")
    if isinstance(V, np.ndarray):
        out = _emulate(dA, V, K, hpk, Am, coef, Q, W, init, reverse, want_fin, checkpoints)
    else:
        out = _launch(xp, dA, V, K, hpk, Am, coef, Q, W, init, reverse, want_fin, checkpoints)
    return out if checkpoints else out[:3]


def _launch(xp, dA, V, K, hpk, Am, coef, Q, W, init, reverse, want_fin, checkpoints=False):
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
    avec = Am is not None and Am.strides[2] != 0
    targs = f"<{ctype(dtype)}, {cfg.nper}, {'true' if avec else 'false'}>"
    ck = tc = None
    kind = row_scan_kind()
    if kind != "step" and L > 0:
        dev = xp.cuda.Device().id
        budget = min(CHUNK_SMEM_BUDGET, _smem_optin(dev))
        if kind == "tiled" and tiled_applies(dA, Am, coef):
            tc = tiled_config(P, N, R, L, dtype.itemsize, Q is not None, coef is not None,
                              W is not None, budget)
        if tc is None:
            ck = chunk_config(P, N, R, L, dtype.itemsize, Q is not None, coef is not None,
                              W is not None, budget)
    lanes = cfg.lpc
    if tc is not None:  # same arguments as row_scan_chunked (it ignores the strides along p, n)
        cfg, ck, lanes = tc, tc, tc.lg
        fn = _with_smem(function("scan_tiled.cu", f"row_scan_tiled<{ctype(dtype)}, {tc.npt}, {tc.rp}>"),
                        cfg.smem, dev)
    elif ck is not None:
        cfg = ck
        fn = _with_smem(function("scan.cu", "row_scan_chunked" + targs), cfg.smem, dev)
    else:
        fn = function("scan.cu", "row_scan" + targs)
    Y = xp.empty((Bsz, L, R, H, P), dtype) if Q is not None else None
    Red = xp.empty((cfg.tiles, Bsz, L, R, H, N), dtype) if W is not None else None
    fin = xp.empty((Bsz, H, P, N), dtype) if want_fin else None
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
        i32(L), i32(H), i32(P), i32(N), i32(R), i32(lanes), i32(1 if reverse else 0),
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
    if ck is not None:
        args += (i32(ck.steps), i32(ck.ring), *(i32(o) for o in ck.offsets))
    ckpt = None
    if tc is not None:  # only the tiled kernel writes decay_grad's checkpoints
        if checkpoints:
            ckpt = xp.empty((Bsz, max(1, -(-L // DECAY_CHUNK)), H, P, N), dtype)
        args += (ptr(ckpt), i32(DECAY_CHUNK))
    if L > 0:
        fn((cfg.tiles, H, Bsz), (cfg.warps * 32,), args, shared_mem=cfg.smem)
    elif want_fin:
        fin[...] = 0 if init is None else init
    if Red is not None:
        Red = Red[0] if cfg.tiles == 1 else xp.sum(Red, axis=0)
    return Y, Red, fin, ckpt


def _emulate(dA, V, K, hpk, Am, coef, Q, W, init, reverse, want_fin, checkpoints=False):
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
    ckpt = np.zeros((Bsz, max(1, -(-L // DECAY_CHUNK)), H, P, N), dt) if checkpoints else None
    order = range(L - 1, -1, -1) if reverse else range(L)
    for t in order:
        if ckpt is not None and t % DECAY_CHUNK == 0:
            ckpt[:, t // DECAY_CHUNK] = S
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
    return Y, Red, fin, ckpt


# ---- the decay gradient (cuda/scan_bwd.cu) ------------------------------------------------------
#: tokens per checkpoint chunk of decay_grad (the kernel's CH template argument)
DECAY_CHUNK = 32


def decay_grad(xp, *, dA, V, K, Vr, Kr, hpk=1, Am=None, coef=None, init=None, dfin=None,
               want_dAm=False, ck=None):
    """The decay gradient of the row scan (cuda/scan_bwd.cu). Returns (qa, dAm | None).

    Forward as row_scan (dA, Am, coef, V, K, init); adjoint G_t = dec_{t+1} G_{t+1} + Vr_t Kr_t^T
    from G_L = dfin; q_t[n] = dec_t[n] G_t[n] S_{t-1}[n];
    qa (B, L, H, P) = sum_n Am[n] q_t[n] (Am None: 1);  dAm (B, H, P, N) = sum_t dA_t q_t[n].
    Vr: (B, L, R2, H, P), Kr: (B, L, R2, HK, N) (R2 may differ from V's R).
    ck: the checkpoints of the same forward scan, as row_scan(..., checkpoints=True) returns them
    (None: computed here, by a forward sweep of the kernel's own).
    """
    if isinstance(V, np.ndarray):
        return _emulate_decay(dA, V, K, Vr, Kr, hpk, Am, coef, init, dfin, want_dAm, ck)
    return _launch_decay(xp, dA, V, K, Vr, Kr, hpk, Am, coef, init, dfin, want_dAm, ck)


@dataclasses.dataclass(frozen=True)
class DecayConfig:
    lpc: int
    nper: int
    warps: int
    tiles: int
    steps: int      # TS: tokens per staged sub-chunk (a power of two dividing DECAY_CHUNK)
    offsets: tuple  # element offsets (oK, oV, oD, oC, oQ) into shared memory
    smem: int

    @property
    def rows_per_tile(self) -> int:
        return self.warps * (32 // self.lpc)


def _decay_layout(T, R, rows, npad, has_coef):
    """(offsets, total elements) of decay_grad_chunked's shared memory (see scan_bwd.cu)."""
    sizes = (2 * T * R * npad,                   # K or Kr
             2 * T * R * rows,                   # V or Vr
             2 * T * rows,                       # dA
             2 * T * rows if has_coef else 0,    # coef
             2 * T * rows)                       # qa staging
    offs, o = [], 0
    for n in sizes:
        offs.append(o)
        o += n
    return tuple(offs), o


def decay_config(P: int, N: int, R: int, itemsize: int, has_coef: bool = True,
                 budget: int = CHUNK_SMEM_BUDGET) -> DecayConfig | None:
    """The launch plan of decay_grad_chunked: the longest sub-chunk TS (dividing DECAY_CHUNK)
    within `budget` bytes; fewer warps per block when not even TS = 1 fits."""
    base = scan_config(P, N, itemsize)
    if base is None or R < 1:
        return None
    subs = 32 // base.lpc
    npad = base.lpc * base.nper
    warps = base.warps
    while warps >= 1:
        rows = warps * subs
        for T in CHUNK_STEPS:
            if T > DECAY_CHUNK or DECAY_CHUNK % T:
                continue
            offs, total = _decay_layout(T, R, rows, npad, has_coef)
            if total * itemsize <= budget:
                return DecayConfig(base.lpc, base.nper, warps, -(-P // rows), T, offs,
                                   total * itemsize)
        warps //= 2
    return None


def _launch_decay(xp, dA, V, K, Vr, Kr, hpk, Am, coef, init, dfin, want_dAm, ck_in=None):
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
    if ck_in is not None and tuple(ck_in.shape) != (Bsz, nck, H, P, N):
        raise ValueError(f"decay_grad: ck has shape {tuple(ck_in.shape)}, expected "
                         f"{(Bsz, nck, H, P, N)} (row_scan(..., checkpoints=True) of this scan)")
    ck = xp.empty((Bsz, nck, H, P, N), dtype) if ck_in is None else ck_in
    qa = xp.empty((Bsz, L, H, P), dtype)
    dAm = xp.empty((Bsz, H, P, N), dtype) if want_dAm else None
    if L == 0:
        if dAm is not None:
            dAm[...] = 0
        return qa, dAm
    avec = Am is not None and Am.strides[2] != 0
    targs = f"<{ctype(dtype)}, {cfg.nper}, {'true' if avec else 'false'}, {DECAY_CHUNK}>"
    dc = None
    if row_scan_kind() != "step":
        dev = xp.cuda.Device().id
        dc = decay_config(P, N, R, dtype.itemsize, coef is not None,
                          min(CHUNK_SMEM_BUDGET, _smem_optin(dev)))
    if dc is not None:
        cfg = dc
        fn = _with_smem(function("scan_bwd.cu", "decay_grad_chunked" + targs), cfg.smem, dev)
    else:
        fn = function("scan_bwd.cu", "decay_grad" + targs)
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
    if dc is not None:  # only the chunked kernel takes given checkpoints
        args += (i32(dc.steps), *(i32(o) for o in dc.offsets), i32(ck_in is not None))
        fn((cfg.tiles, H, Bsz), (cfg.warps * 32,), args, shared_mem=cfg.smem)
    else:
        fn((cfg.tiles, H, Bsz), (cfg.warps * 32,), args)
    return qa, dAm


def _emulate_decay(dA, V, K, Vr, Kr, hpk, Am, coef, init, dfin, want_dAm, ck_in=None):
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
    if ck_in is not None:  # the forward scan's checkpoints (row_scan(..., checkpoints=True))
        ck = np.asarray(ck_in, dt)
    else:
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
