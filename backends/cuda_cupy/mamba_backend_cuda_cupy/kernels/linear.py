"""Linear layer for few rows (cuda/linear.cu): a GEMV kernel that needs no cuBLAS.

Op (signature and math: mamba_core/ops/linear.py):
    linear(x, weight, bias) -> y = x W^T + b;  x: (..., K_in), weight: (K_out, K_in), bias: (K_out,)

Dispatch (``use_kernel``): the kernel runs when x has at most ``GEMV_ROWS`` rows
(M = prod(x.shape[:-1]): decode, where reading W once is the whole cost and the kernel is as
fast as cuBLAS) and, whatever M, while the current stream is being captured into a CUDA graph
(cuBLAS refuses to run inside a capture: graphs.GraphDecoder), and inside ``gemv_only()``.
Otherwise cupy.matmul (cuBLAS).
linear_vjp is not native: training is not captured and its matmuls are large.

Launch (``plan``): M is split into chunks of at most ``MAX_TILE`` rows; a chunk of m rows runs the
instance with MR = the next power of two >= m and NR = ``rows_per_warp(MR, itemsize)`` weight
rows per row group, ``LINEAR_WARPS`` warps a block, KS = ``split_k(...)`` warps sharing each
row group's K (LINEAR_WARPS / KS row groups a block), ceil(K_out / (row groups * NR)) blocks.
Loads are VEC wide (16 bytes) when K_in, both row strides and both pointers allow it
(``vec_width``), else scalar. x and weight are used in place when their inner stride is 1 (any
row stride); otherwise one contiguous copy is made for that call. Computes and returns in the
wide dtype (float64 when any argument is float64), as matmul's type promotion does for
float32/float64.

Bandwidth (cuda/linear.cu has the details): a lane copies its next U (8 for MR NR <= 2, 4 up to
8, else 2) weight vectors per row with cp.async, all in flight together, before computing on
them. With plain loads ptxas kept 1 to 2 in flight a warp: at the 370M Mamba-2's batch-1 shapes
in_proj (4384 x 1024, 4384 warps) still covered the DRAM latency, but out_proj (1024 x 2048,
1024 warps, ~0.5 MB in flight) ran at ~0.6 TB/s, ~13 us for 8.4 MB (48 layers: ~0.5 ms a
token); with U = 8, ~4 MB are in flight: expected ~2.5 TB/s (~3.5 us). The lanes' sums and their
order are unchanged (``emulate`` still describes them).

Split K (``MAMBA_CUPY_GEMV_SPLIT``, read at each call; set it before building a GraphDecoder):
with one warp a row, out_proj at batch 1 (1024 rows of K = 2048: 512 vectors of 16 B, two rounds
of U = 8 a lane) issues its second round only after its first has arrived, from 1024 warps: run 16
timed it at 5.46 us, 46% of peak bandwidth. Splitting each row's K over KS warps of a block
(their sums added in shared memory by the first, in a fixed order: deterministic) puts every
load in flight in one round from 2048 warps. Modes:
    0 / off   KS = 1: one warp a row
    auto      (the default, ``SPLIT_DEFAULT``, since run 37 timed it) ``split_k``: KS doubles
              (up to LINEAR_WARPS) while each warp keeps at least one full round of U vectors a
              lane and the warps stay within ``WARPS_PER_SM`` a multiprocessor (out_proj at
              batch 1: 2; in_proj and lm_head: 1; batch 16: out_proj 4, in_proj 2)
    2 / 4     that split wherever it divides the row's vectors (the largest of 4, 2, 1 that does)
Results differ from KS = 1 in the order of the final sums only (float rounding). Every instance
is checked on the CPU (tests/test_cpu_emulation.py runs linear.cu under g++ with a thread a CUDA
thread) and, on a GPU, by the tests with the split forced to 4.
Run 37 (H100, benchmarks/results/gpu-20261207-h100; GEMVs alone over > 200 MB of weights):
out_proj at batch 1 5.04 us (50% of peak) against 5.52 (45%) unsplit, at batch 16 16.9 us
against 38.7; in_proj at batch 16 30.3 against 31.2 (batch 1: unsplit either way).
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from mamba_backend_cuda_cupy._compile import ctype, function
from mamba_backend_cuda_cupy._launch import launch
from mamba_backend_cuda_cupy.kernels._common import KERNEL_DTYPES, default, runs_here, wide

GEMV_ROWS = 16     # at most this many rows, the kernel runs even outside a capture
SPLIT_ENV = "MAMBA_CUPY_GEMV_SPLIT"
SPLIT_MODES = ("0", "auto", "2", "4")
#: the default split: "auto" since run 37 (2026-12-07, H100, benchmarks/results/gpu-20261207-h100):
#: out_proj at batch 1 5.04 us against 5.52 with one warp a row, at batch 16 16.9 against 38.7;
#: the 370M decode graph 1.25 against 1.26 ms a token at batch 1, 5.36 against 6.23 at batch 16
SPLIT_DEFAULT = "auto"
WARPS_PER_SM = 32  # split_k's ceiling on the launch's warps, per multiprocessor
MAX_TILE = 16      # rows one launch holds (the largest MR instance)
TILES = (1, 2, 4, 8, 16)
LINEAR_WARPS = 4   # LINEAR_WARPS in linear.cu


_FORCE = threading.local()


def use_kernel(rows: int, capturing: bool, forced: bool = False) -> bool:
    """Whether linear runs the GEMV kernel (True) or cupy.matmul (False)."""
    return forced or capturing or rows <= GEMV_ROWS


@contextlib.contextmanager
def gemv_only():
    """Inside: linear always runs the kernel (this thread). GraphDecoder wraps its warm-up and its
    capture in it, so both take the same path: every NVRTC compile and pool block the capture
    needs is made by the warm-up, whatever the batch."""
    prev = getattr(_FORCE, "on", False)
    _FORCE.on = True
    try:
        yield
    finally:
        _FORCE.on = prev


def forced() -> bool:
    return getattr(_FORCE, "on", False)


def row_tile(m: int) -> int:
    """MR: the smallest instance that holds m (1 <= m <= MAX_TILE) rows."""
    return next(t for t in TILES if t >= m)


def rows_per_warp(mr: int, itemsize: int) -> int:
    """NR, weight rows per warp: more rows share each load of x when x has many rows."""
    if mr <= 2:
        return 1
    if mr <= 4:
        return 2
    return 4 if itemsize == 4 else 2


def vec_width(itemsize: int, K: int, strides=(), ptrs=()) -> int:
    """Entries per load: 16 bytes (4 floats, 2 doubles) when K, every row stride (entries) and
    every pointer (bytes) are multiples of it, else 1."""
    v = 16 // itemsize
    ok = K % v == 0 and all(s % v == 0 for s in strides) and all(p % 16 == 0 for p in ptrs)
    return v if ok else 1


def unroll(mr: int, nr: int) -> int:
    """U: vectors of each weight row a lane copies before using them (gemv_unroll in linear.cu)."""
    return 8 if mr * nr <= 2 else (4 if mr * nr <= 8 else 2)


def split_mode(environ=None) -> str:
    """``MAMBA_CUPY_GEMV_SPLIT`` as one of SPLIT_MODES (off/false/no read as 0)."""
    import os

    raw = (os.environ if environ is None else environ).get(SPLIT_ENV, SPLIT_DEFAULT).strip().lower()
    mode = {"": "0", "off": "0", "false": "0", "no": "0"}.get(raw, raw)
    if mode not in SPLIT_MODES:
        raise ValueError(f"{SPLIT_ENV}={raw!r}: expected one of 0, auto, 2, 4")
    return mode


def split_k(nvec: int, N: int, mr: int, nr: int, sms: int, mode: str = "auto") -> int:
    """ks, warps sharing each weight row's nvec vectors (1, 2 or 4; see the module docstring)."""
    if mode == "0":
        return 1
    if mode in ("2", "4"):
        ks = int(mode)
        while ks > 1 and nvec % ks:
            ks //= 2
        return ks
    u, warps, ks = unroll(mr, nr), -(-N // nr), 1
    while (2 * ks <= LINEAR_WARPS and nvec % (2 * ks) == 0 and nvec // (2 * ks) >= 32 * u
           and warps * 2 * ks <= WARPS_PER_SM * sms):
        ks *= 2
    return ks


def plan(M: int, N: int, itemsize: int, nvec: int = 1, sms: int = 1, mode: str = "0"):
    """The launches for M rows, N outputs and rows of nvec vectors:
    [(m0, rows, MR, NR, blocks, ks)]."""
    out = []
    for m0 in range(0, M, MAX_TILE):
        m = min(MAX_TILE, M - m0)
        mr = row_tile(m)
        nr = rows_per_warp(mr, itemsize)
        ks = split_k(nvec, N, mr, nr, sms, mode)
        out.append((m0, m, mr, nr, max(1, -(-N // (LINEAR_WARPS // ks * nr))), ks))
    return out


def emulate(X, W, bias, vec: int, itemsize: int = 8, sms: int = 1, mode: str = "0"):
    """The kernel's arithmetic in NumPy, launch by launch, warp by warp and lane by lane (warp kq
    of a row group takes the vectors [kq per, (kq + 1) per), per = nvec / ks, of each row; its
    lane l sums vectors kq per + l, + 32, ...; the lanes' partials are summed, then the warps'
    in kq order). X: (M, K), W: (N, K), bias: (N,) or None -> (M, N). For the host tests of the
    index math."""
    M, K = X.shape
    N = W.shape[0]
    Y = np.full((M, N), np.nan)
    nvec = K // vec
    for m0, m, mr, nr, blocks, ks in plan(M, N, itemsize, nvec, sms, mode):
        rpb, per = LINEAR_WARPS // ks, nvec // ks
        step = blocks * rpb * nr
        for b in range(blocks):
            for nb in range(b * rpb * nr, N, step):
                for rg in range(rpb):
                    n0 = nb + rg * nr
                    for j in range(nr):
                        n = n0 + j
                        if n >= N:
                            continue
                        total = np.zeros(m)
                        for kq in range(ks):
                            ks0 = kq * per * vec
                            prod = X[m0:m0 + m, ks0:ks0 + per * vec] * W[n, ks0:ks0 + per * vec]
                            lane_of = (np.arange(per) % 32).repeat(vec)
                            part = np.zeros((m, 32))
                            for lane in range(32):
                                part[:, lane] = prod[:, lane_of == lane].sum(axis=1)
                            total = total + part.sum(axis=1)
                        Y[m0:m0 + m, n] = total + (0.0 if bias is None else bias[n])
    return Y


def capturing(stream=None, runtime=None) -> bool:
    """Whether ``stream`` (default: CuPy's current stream) is being captured into a CUDA graph.

    Stream.is_capturing() (CuPy >= 9; cudaStreamIsCapturing), else the runtime call itself. A
    query that fails counts as capturing: CUDA refuses it on the legacy stream while another
    stream captures, and the kernel is right in every case, only cuBLAS is not."""
    if stream is None or runtime is None:
        import cupy

        stream = cupy.cuda.get_current_stream() if stream is None else stream
        runtime = cupy.cuda.runtime if runtime is None else runtime
    try:
        probe = getattr(stream, "is_capturing", None)
        if probe is not None:
            return bool(probe())
        return bool(runtime.streamIsCapturing(stream.ptr))
    except Exception:
        return True


_SMS: dict = {}


def _sms(cp) -> int:
    """Multiprocessors of the current device (cached)."""
    dev = cp.cuda.Device().id
    if dev not in _SMS:
        _SMS[dev] = int(cp.cuda.Device(dev).attributes["MultiProcessorCount"])
    return _SMS[dev]


def _rows2d(cp, a, wd, K):
    """a as (rows, K) with inner stride 1 and its row stride in entries: a itself when it already
    is one in the wide dtype (any row stride >= K), else one contiguous copy."""
    if a.dtype == wd and a.ndim == 2:
        r, c = a.strides
        it = a.itemsize
        if c == it or a.shape[1] <= 1:
            if a.shape[0] <= 1:
                return a, K
            if r % it == 0 and r >= K * it:
                return a, r // it
    return cp.ascontiguousarray(a, dtype=wd).reshape(-1, K), K


def _launch(x, weight, bias, scales=None):
    """The GEMV kernel for any number of rows (chunks of MAX_TILE). Returns (..., K_out) in wd.
    scales: None, or (part, groups, skip, eps) for ``linear_group_scaled``."""
    import cupy as cp

    K = x.shape[-1]
    N = weight.shape[0]
    wd = wide(cp, x.dtype, weight.dtype, *(() if bias is None else (bias.dtype,)))
    x2 = x.reshape(-1, K) if x.ndim != 2 and x.flags.c_contiguous else x  # a view, no copy
    X, ldx = _rows2d(cp, x2, wd, K)
    Wm, ldw = _rows2d(cp, weight, wd, K)
    b = None if bias is None else cp.ascontiguousarray(bias, dtype=wd)
    M = X.shape[0]
    Y = cp.empty((M, N), wd)
    null = np.uint64(0)
    # FX in linear.cu: 0 plain, 1 one scale a row (applied to the sum), 2 group scales
    fx, P, groups, skip, eps, npart = 0, None, 1, 0, 0.0, 0
    if scales is not None:
        part, groups, skip, eps = scales
        P = cp.ascontiguousarray(part, dtype=wd).reshape(M, -1)
        npart = P.shape[1]
        fx = 1 if groups == 1 and skip == 0 else 2
    if M and N:
        itemsize = np.dtype(wd).itemsize
        # a vector never straddles a scale group: skip and the group size are multiples of it
        vec = vec_width(itemsize, K, (ldx, ldw, skip, (K - skip) // groups),
                        (X.data.ptr, Wm.data.ptr))
        i32, i64, sc = np.int32, np.int64, np.dtype(wd).type
        mode = split_mode()
        sms = 1 if mode == "0" else _sms(cp)
        for m0, m, mr, nr, blocks, ks in plan(M, N, itemsize, K // vec, sms, mode):
            fn = function("linear.cu", f"linear_gemv<{ctype(wd)}, {vec}, {mr}, {nr}, {fx}, {ks}>")
            launch(fn, (blocks,), (LINEAR_WARPS * 32,),
                   (X[m0:m0 + m], Wm, b if b is not None else null, Y[m0:m0 + m], i32(m), i32(N),
                    i32(K), i64(ldx), i64(ldw), i64(N), null if P is None else P[m0:m0 + m],
                    i32(npart), i32(groups), i32(skip), sc(eps)))
    return Y.reshape(tuple(x.shape[:-1]) + (N,))


def _takes(x, weight, bias) -> bool:
    arrays = [a for a in (x, weight, bias) if a is not None]
    return (runs_here(*arrays) and type(x).__module__.startswith("cupy")
            and all(a.dtype.name in KERNEL_DTYPES for a in arrays)
            and x.ndim >= 1 and weight.ndim == 2 and x.shape[-1] == weight.shape[1]
            and (bias is None or tuple(bias.shape) == (weight.shape[0],)))


def linear(x, weight, bias=None):
    """y = x W^T + b. x: (..., K_in), weight: (K_out, K_in), bias: (K_out,) -> (..., K_out)."""
    if not _takes(x, weight, bias):
        return default("linear")(x, weight, bias)
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    f = forced()  # the capture query (a runtime call) only where it decides something
    if not use_kernel(rows, rows > GEMV_ROWS and not f and capturing(), f):
        return default("linear")(x, weight, bias)
    return _launch(x, weight, bias)


GROUPS_MAX = 16  # GEMV_GROUPS_MAX in linear.cu


def _check_scales(x, part, groups, skip):
    K = x.shape[-1]
    if not (1 <= groups <= GROUPS_MAX) or skip < 0 or skip >= K or (K - skip) % groups:
        raise ValueError(f"group scales: groups={groups}, skip={skip} for K_in={K}: expected "
                         f"1 <= groups <= {GROUPS_MAX} dividing K_in - skip > 0")
    if part.ndim != 2 or part.shape[0] != x.shape[0] or part.shape[1] % groups:
        raise ValueError(f"group scales: part {tuple(part.shape)}: expected "
                         f"({x.shape[0]}, a multiple of groups={groups})")


def linear_group_scaled(x, weight, bias, part, groups: int, skip: int, eps: float):
    """y = x' W^T + b, x' = x with column k >= skip of row m scaled by
    1 / sqrt(sum(part[m, g npg:(g + 1) npg]) / gsz + eps), g = (k - skip) // gsz,
    gsz = (K_in - skip) / groups, npg = part.shape[1] / groups: a gated RMSNorm's division
    folded into the projection that follows it (kernels/mixer_steps.py), with part the
    normalised values' partial sums of squares. Always the GEMV kernel (capturable).

    x: (M, K_in) CuPy, weight: (K_out, K_in), bias: (K_out,) or None, part: (M, npart);
    1 <= groups <= GROUPS_MAX dividing K_in - skip and npart -> (M, K_out) in the wide dtype."""
    if x.ndim != 2 or not _takes(x, weight, bias):
        raise ValueError(f"linear_group_scaled: x {tuple(x.shape)} {x.dtype} with weight "
                         f"{tuple(weight.shape)} {weight.dtype}: expected CuPy (M, K_in) and "
                         "(K_out, K_in) arrays of float32 or float64 on one device")
    _check_scales(x, part, groups, skip)
    return _launch(x, weight, bias, (part, int(groups), int(skip), float(eps)))


KERNELS = {"linear": linear}
