"""mamba3_rope_scan on this backend: the B/C prologue as CuPy glue, then this backend's scan.

Ops (contract: mamba_core/ops/mamba3_fused.py):
    mamba3_rope_scan(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size,
                     initial_state, initial_k, initial_v, pairing) -> (y, S_L, k_L, v_L)
    mamba3_rope_scan_vjp(cotangent, <the same>) -> dict

Nothing is fused here yet: the group -> head broadcast, the bias and the rotation run as the
core's array glue (apply_rope's default composition on CuPy), then mamba3.py's row-scan kernels,
forward and VJP (``compose``/``compose_vjp``). Without this module the op's default composition
would run the core's chunked scan in CuPy instead of this backend's scan kernels; with it the
Mamba-3 mixer's forward does the same work as through the separate ops.
"""

from __future__ import annotations

from mamba_core.ops import mamba3_fused as core
from mamba_core.ops import rope as _rope

from mamba_backend_cuda_cupy.kernels._common import default, runs_here, xp_of
from mamba_backend_cuda_cupy.kernels.mamba3 import mamba3_scan, mamba3_scan_vjp


def _rope_fns(xp):
    return (lambda v, p, pr: _rope.apply_rope(xp, v, p, pr),
            lambda dy, v, p, pr: _rope.apply_rope_vjp(xp, dy, v, p, pr))


def mamba3_rope_scan(x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None, mimo_x=None,
                     chunk_size=64, initial_state=None, initial_k=None, initial_v=None,
                     pairing="interleaved"):
    """Mamba-3 scan after heads + bias + rotation. B, C: (B, L, R, G, N); phi: (B, L, H, S)."""
    args = (x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state,
            initial_k, initial_v, pairing)
    if not runs_here(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, initial_state,
                     initial_k, initial_v):
        return default("mamba3_rope_scan")(*args)
    xp = xp_of(x)
    return core.compose(xp, _rope_fns(xp)[0], mamba3_scan, *args)


def mamba3_rope_scan_vjp(cotangent, x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None,
                         mimo_x=None, chunk_size=64, initial_state=None, initial_k=None,
                         initial_v=None, pairing="interleaved"):
    """Its VJP: the rotated B, C recomputed, this backend's scan VJP, the rotations' VJPs."""
    args = (x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state,
            initial_k, initial_v, pairing)
    cot = tuple(cotangent) if isinstance(cotangent, (tuple, list)) else ()
    if not runs_here(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, initial_state,
                     initial_k, initial_v, *cot):
        return default("mamba3_rope_scan_vjp")(cotangent, *args)
    xp = xp_of(x)
    rope_fn, rope_vjp_fn = _rope_fns(xp)
    return core.compose_vjp(xp, rope_fn, rope_vjp_fn, mamba3_scan_vjp, cotangent, *args)


KERNELS = {"mamba3_rope_scan": mamba3_rope_scan, "mamba3_rope_scan_vjp": mamba3_rope_scan_vjp}
