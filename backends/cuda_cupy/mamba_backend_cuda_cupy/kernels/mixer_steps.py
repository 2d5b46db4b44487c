"""The fused one-token Mamba-2 decode step (cuda/mixer_step.cu): the ``mixer_steps`` hook.

    MIXER_STEPS = {"mamba2": mamba2_step}
    mamba2_step(be, params, cfg, u (B, D), cache) -> (out (B, D), new cache)

Same signature and results (float rounding aside) as ``mamba_core.models.mamba2.step``: see
``mamba2.composed_step`` and the module docstring there for the params, the cache and the math.
Why: a decode step moves little data and is bound by launches and latency. The composition
issues ~25 kernels per layer (conv step, A = -exp(A_log), dt glue, the scan step, its skip and
gate, the norm, contiguous copies, casts); this step issues three:

    in_proj (the GEMV, kernels/linear.py) -> ``mamba2_step`` kernel -> out_proj (the GEMV,
    ``linear_group_scaled`` with the norm: it divides by the group's RMS as it loads y)

The kernel, one block of 4 warps per (16 head channels, head h, batch row b) (cuda/mixer_step.cu
has the details), issues all its loads at once (one round trip to memory, not one a stage):
the rows' states, the conv windows and weights of its x channels and of its group's B and C
channels (every block of the group recomputes B and C, from L2), dt, A_log, z, D. Then dt =
clamp(softplus(dt + dt_bias), dt_limit), A = -exp(A_log) (no cached copy that could go stale),
S' = exp(dt A) S + dt x B^T, y = S' C + D x, the gate and the norm weight: Y = y silu(z) w, and
with rmsnorm each block's sum of squares of v = y silu(z) (y when norm_before_gate) over its
channels. out_proj sums a group's partials in a fixed order (deterministic) and scales its
columns by 1 / sqrt(mean(v^2) + eps) as it reads them, the partials' L2 reads overlapping its
weights' DRAM reads. No block waits for another: the first version had the last block of each
group (a ticket counter) normalise the whole group, a serial tail of several round trips (the
step took 12 us at batch 1 on an H100). The gated-MLP slice (d_mlp > 0: silu(z0) x0) is
written by the same launch. Nothing waits on the host: the step is captured by
graphs.GraphDecoder.

In-place cache (``inplace_cache()``): inside the context manager the kernel writes the new states
over the input cache (when both arrays are C-contiguous; they are what it returns then), so a
captured graph needs no copy-back (GraphDecoder captures its step so). Safe: every state entry
is read before it is overwritten, by the thread that overwrites it (the SSM state, the x conv
windows), or, for the B / C windows every block of a group reads, by the block that draws the
last ticket of its (b, group) from a counter (after every block of the group has used them).
Outside the context the input cache is never modified.

Precision: T = float32 or float64 throughout (the model's dtype; states in T, as the composition
returns them for float32 and float64 models).

Falls back to ``mamba2.composed_step`` (the same results, op by op) for:
    arrays that are not CuPy arrays, or not all of one dtype (float32 or float64): u, the
    params and both cache arrays; batch 0; a cache whose shapes are not cache_shapes(cfg, B);
    d_state > MAX_N (256); d_conv > KMAX (8); ngroups > 16 with rmsnorm (out_proj's groups);
    nheads or batch > 65535 (the grid).
``MAMBA_CUPY_FUSED_STEP=0`` turns the fused step off (the backend then offers no mixer_steps,
read at each step: set it before building a GraphDecoder to time the composition);
``MAMBA_NO_FUSED_STEP=1`` does the same for every backend.

The ticket counters: one int32 buffer per device, zeroed at allocation (a cudaMalloc of its own,
outside every memory pool, kept for the life of the process: captured graphs hold its address),
left at zero by every launch. Two fused steps must not run at the same time on one device
(decode runs one stream; graphs replay in order). The first step on a device allocates it: run
one step outside a capture first (GraphDecoder's warm-up does).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os

import numpy as np

from mamba_backend_cuda_cupy._compile import ctype, function
from mamba_backend_cuda_cupy._launch import launch
from mamba_backend_cuda_cupy.kernels._common import xp_of
from mamba_backend_cuda_cupy.kernels.linear import GROUPS_MAX, linear_group_scaled

ENV = "MAMBA_CUPY_FUSED_STEP"
WARPS = 4            # M2_WARPS in mixer_step.cu
ROWS = 16            # M2_BP: head channels per block (M2_WARPS * M2_RPW)
KMAX = 8             # M2_KMAX: the widest conv window
NPTS = (1, 2, 4, 8)  # the instances: state entries per lane
MAX_N = 32 * NPTS[-1]
GRID_MAX = 65535     # gridDim.y (heads) and gridDim.z (batch rows)
MIN_COUNTERS = 4096

_INPLACE = contextvars.ContextVar("mamba_cuda_cupy_inplace_cache", default=False)


def enabled() -> bool:
    """False when ``MAMBA_CUPY_FUSED_STEP=0`` (or false/off/no) asks for the composition."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


@contextlib.contextmanager
def inplace_cache(enabled: bool = True):
    """Within this context the fused step writes the new cache over the input cache (when its
    arrays are C-contiguous) and returns those same arrays."""
    token = _INPLACE.set(bool(enabled))
    try:
        yield
    finally:
        _INPLACE.reset(token)


# ---- launch plan (pure Python: host-tested) -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    """npt: state entries per lane (N <= 32 npt); npb: blocks per head (ROWS channels each);
    grid (npb, H, B) of WARPS * 32 threads; tickets: blocks per (b, group), the count the last
    block of a group draws."""

    npt: int
    npb: int
    grid: tuple
    threads: int
    tickets: int


def npt_for(N: int) -> int | None:
    """The instance holding N states a row: the smallest npt in NPTS with 32 npt >= N."""
    return next((t for t in NPTS if 32 * t >= N), None)


def unsupported(cfg, batch: int) -> str | None:
    """Why the kernel cannot take this config and batch (then the composition runs), or None."""
    if cfg.d_state > MAX_N:
        return f"d_state={cfg.d_state} > {MAX_N} (the kernel holds at most {MAX_N} states a row)"
    if cfg.d_conv > KMAX:
        return f"d_conv={cfg.d_conv} > {KMAX} (the kernel's widest conv window)"
    if cfg.rmsnorm and cfg.ngroups > GROUPS_MAX:
        return (f"ngroups={cfg.ngroups} > {GROUPS_MAX} with rmsnorm (out_proj's GEMV, which "
                "divides by the norm, holds at most that many groups)")
    if cfg.nheads > GRID_MAX or batch > GRID_MAX:
        return f"nheads={cfg.nheads} or batch={batch} > {GRID_MAX} (the grid's y and z limit)"
    if batch < 1:
        return "batch 0"
    return None


def plan(cfg, batch: int) -> Plan | None:
    """The launch for a Mamba-2 config and batch, or None when ``unsupported``."""
    if unsupported(cfg, batch) is not None:
        return None
    npb = -(-cfg.headdim // ROWS)
    return Plan(npt=npt_for(cfg.d_state), npb=npb, grid=(npb, cfg.nheads, batch),
                threads=WARPS * 32, tickets=(cfg.nheads // cfg.ngroups) * npb)


# ---- dispatch -------------------------------------------------------------------------------
def _params_used(params: dict, cfg) -> list:
    names = ["in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "out_proj.weight"]
    if cfg.bias:
        names += ["in_proj.bias", "out_proj.bias"]
    if cfg.conv_bias:
        names.append("conv1d.bias")
    if cfg.rmsnorm:
        names.append("norm.weight")
    return [params[k] for k in names]


def takes(params: dict, cfg, u, cache: dict, module: str = "cupy") -> bool:
    """Whether the kernel takes this call: every array a ``module`` array of one dtype (float32
    or float64), u (B, D) with B >= 1, the cache of cache_shapes(cfg, B), a supported config."""
    from mamba_core.models import mamba2

    if getattr(u, "ndim", 0) != 2 or unsupported(cfg, int(u.shape[0])) is not None:
        return False
    try:
        arrays = [u, *_params_used(params, cfg), cache["conv_state"], cache["ssm_state"]]
    except KeyError:
        return False
    if any(type(a).__module__.split(".")[0] != module for a in arrays):
        return False
    if len({a.dtype.name for a in arrays}) != 1 or u.dtype.name not in ("float32", "float64"):
        return False
    want = mamba2.cache_shapes(cfg, int(u.shape[0]))
    return all(tuple(cache[k].shape) == tuple(s) for k, s in want.items())


_COUNTERS: dict = {}
_KEEP: list = []  # every counter buffer handed out: captured graphs may hold its address


def _device_counters(n: int):
    import cupy

    from mamba_backend_cuda_cupy.kernels.linear import capturing

    if capturing():
        raise RuntimeError(
            "the fused Mamba-2 step allocates its ticket counters on its first call on a device, "
            "and this call is being captured into a CUDA graph; run one step outside the capture "
            "first (graphs.GraphDecoder's warm-up does)")
    mem = cupy.cuda.Memory(4 * n)  # its own cudaMalloc: outside every pool, never given back
    buf = cupy.ndarray((n,), cupy.int32, cupy.cuda.MemoryPointer(mem, 0))
    buf.fill(0)
    cupy.cuda.get_current_stream().synchronize()
    return buf


def counters(xp, n: int):
    """A zeroed int32 buffer of >= n tickets for the current device (NumPy: the host's)."""
    key = "host" if xp is np else int(xp.cuda.Device().id)
    buf = _COUNTERS.get(key)
    if buf is None or buf.shape[0] < n:
        size = max(n, MIN_COUNTERS)
        buf = np.zeros(size, np.int32) if xp is np else _device_counters(size)
        _KEEP.append(buf)
        _COUNTERS[key] = buf
    return buf


def _contig(xp, a):
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)


def _null():
    return np.uint64(0)


def mixer(zx, params: dict, cfg, cache: dict, inplace: bool = False):
    """The kernel: in_proj's output zx (B, 2M + S + X + H) and the cache -> (y (B, M + S), the
    out_proj input; new conv_state (B, X, K); new ssm_state (B, H, P, N)), all in zx's dtype.
    With ``inplace`` and C-contiguous cache arrays, the new states are those arrays."""
    xp = xp_of(zx)
    Bsz = int(zx.shape[0])
    pl = plan(cfg, Bsz)
    H, P, G, N, S, M, X, K = (cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.ssm_width,
                              cfg.d_mlp, cfg.conv_dim, cfg.d_conv)
    T = zx.dtype
    sc = np.dtype(T).type
    zx = zx if zx.strides[-1] == zx.itemsize else xp.ascontiguousarray(zx)
    cs0, ss0 = cache["conv_state"], cache["ssm_state"]
    cs, ss = _contig(xp, cs0), _contig(xp, ss0)
    if inplace and cs is cs0 and ss is ss0:
        ncs, nss = cs, ss
    else:
        ncs, nss = xp.empty((Bsz, X, K), T), xp.empty((Bsz, H, P, N), T)
    y = xp.empty((Bsz, M + S), T)
    part = xp.empty((Bsz, H * pl.npb), T) if cfg.rmsnorm else None
    cnt = counters(xp, Bsz * G)
    cw = _contig(xp, params["conv1d.weight"]).reshape(X, K)
    cb = _contig(xp, params["conv1d.bias"]) if cfg.conv_bias else _null()
    nw = _contig(xp, params["norm.weight"]) if cfg.rmsnorm else _null()
    limited = tuple(float(v) for v in cfg.dt_limit) != (0.0, float("inf"))
    lo, hi = (float(cfg.dt_limit[0]), float(cfg.dt_limit[1])) if limited else (0.0, 0.0)
    i32 = np.int32
    fn = function("mixer_step.cu", f"mamba2_step<{ctype(T)}, {pl.npt}>")
    launch(fn, pl.grid, (pl.threads,),
           (zx, np.int64(zx.strides[0] // zx.itemsize), cs, ncs, cw, cb,
            _contig(xp, params["dt_bias"]), _contig(xp, params["A_log"]), _contig(xp, params["D"]),
            ss, nss, nw, y, _null() if part is None else part, cnt,
            i32(H), i32(G), i32(P), i32(N), i32(M), i32(K), i32(bool(cfg.D_has_hdim)),
            i32(limited), sc(lo), sc(hi), i32(bool(cfg.norm_before_gate))))
    return y, part, ncs, nss


def _norm_eps() -> float:
    from mamba_core.models import mamba2

    return float(mamba2.NORM_EPS)


def mamba2_step(be, params: dict, cfg, u, cache: dict):
    """Fused Mamba-2 decode step: u (B, D) -> (out (B, D), {"conv_state", "ssm_state"})."""
    from mamba_core.models import mamba2

    if not takes(params, cfg, u, cache):
        return mamba2.composed_step(be, params, cfg, u, cache)
    zx = be.ops.linear(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None)
    y, part, ncs, nss = mixer(zx, params, cfg, cache, _INPLACE.get())
    w, bias = params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None
    if part is None:
        out = be.ops.linear(y, w, bias)
    else:  # the norm's division, folded into out_proj
        out = linear_group_scaled(y, w, bias, part, cfg.ngroups, cfg.d_mlp, _norm_eps())
    return out, {"conv_state": ncs, "ssm_state": nss}


MIXER_STEPS = {"mamba2": mamba2_step}
