"""torch_triton's mamba3_rope_scan: the Mamba-3 scan with its B/C prologue in the scan kernel.

Ops (contract: mamba_core/ops/mamba3_fused.py):
    mamba3_rope_scan(x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size,
                     initial_state, initial_k, initial_v, pairing) -> (y, S_L, k_L, v_L)
    mamba3_rope_scan_vjp(cotangent, <the same>) -> dict

Forward: mamba3.py's ``_m3_fwd`` with ROPE on. Each chunk loads the B and C rows of the head's
group (B, L, R, G, N: shared by H / G heads, so mostly L2 hits), adds the head's bias and rotates
the pairs by phi in registers, then runs the same chunk math as mamba3_scan. Against the separate
ops this skips writing and reading the per-head copies: at the Mamba-3 SISO benchmark shape (B=8,
L=2048, H=32, N=128, bf16, G=1) the bias adds and the two rotations write 2 x 134 MB and the scan
reads them back, against 2 x 4 MB of B, C and 67 MB of phi read here. k_L (the last token's
rotated B) comes from apply_rope on that token alone.

Switch: MAMBA_TRITON_FUSED_ROPE_SCAN=1 runs the fused kernel; the default (0) runs the same
composition over this backend's kernels (bias in torch, apply_rope twice, mamba3_scan), because
the fused kernel has not been timed on a GPU yet: compiled for sm_90 (Triton 3.9, bf16, N = 128,
Qk = 64) its chunk loop is 6.5k SASS instructions with ~800 register spill loads and stores,
against 2.7k for mamba3_scan's (which spills too), so it may well be slower until its tiles are
slimmed (the bias rows hoisted out of the loop, the cos/sin tiles' live range cut). Read at every
call.

VJP: the composition (``compose_vjp``) over this backend's kernels: the rotated B and C are
recomputed by apply_rope, then mamba3_scan_vjp and apply_rope_vjp; the group and bias
gradients are sums in torch.

Fallback: what mamba3_scan falls back on (float64, non-CUDA devices, P, N > 256, R > 16), and
phi in float64, run the core's default composition.
"""

from __future__ import annotations

import os

import array_api_compat.torch as xpt

from mamba_core.ops import mamba3_fused as core

from mamba_backend_torch_triton.kernels._scan_common import fallback, launch_fitting
from mamba_backend_torch_triton.kernels.mamba3 import (
    _fits, _key, _run_fwd, _s_start, _supported, mamba3_scan, mamba3_scan_vjp,
)
from mamba_backend_torch_triton.kernels.rope import apply_rope, apply_rope_vjp

FALLBACKS = "mamba3_rope_scan/mamba3_rope_scan_vjp: as mamba3_scan (float64, non-CUDA devices, " \
            "P > 256, N > 256 or R > 16) -> the core's default composition"


def fused_enabled() -> bool:
    """MAMBA_TRITON_FUSED_ROPE_SCAN=1: the fused kernel (default 0: the composition)."""
    v = os.environ.get("MAMBA_TRITON_FUSED_ROPE_SCAN", "0")
    if v not in ("0", "1"):
        raise ValueError(f"MAMBA_TRITON_FUSED_ROPE_SCAN={v!r}: expected 0 or 1")
    return v == "1"


def mamba3_rope_scan(x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None, mimo_x=None,
                     chunk_size=64, initial_state=None, initial_k=None, initial_v=None,
                     pairing="interleaved"):
    """The Mamba-3 scan with groups -> heads, bias and rotation in its kernel (Triton)."""
    args = (x, dt, A, trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state,
            initial_k, initial_v, pairing)
    if not _supported(x, B, dt, A, trap, C, phi, B_bias, C_bias, D, mimo_x, initial_state,
                      initial_k, initial_v):
        return fallback("mamba3_rope_scan")(*args)
    if not fused_enabled():
        return core.compose(xpt, apply_rope, mamba3_scan, *args)
    Bsz, L, H, P = x.shape
    R, N = B.shape[2], B.shape[4]
    S0, _ = _s_start(x, dt, trap, initial_state, initial_k, initial_v, mimo_x, Bsz, H, P, N)
    rope = dict(phi=phi, B_bias=B_bias, C_bias=C_bias, pairing=pairing)
    res, _ = launch_fitting(
        _key("rope_fwd", x, B, chunk_size, D is not None, mimo_x is not None, pairing,
             B_bias is not None, C_bias is not None, B.shape[3]),
        _fits(chunk_size, R),
        lambda cfg: _run_fwd(x, dt, A, trap, B, C, D, mimo_x, cfg[0], S0, True, False, cfg[1],
                             rope=rope))
    if res is None:
        return fallback("mamba3_rope_scan")(*args)
    k_last = apply_rope(core.heads(xpt, B[:, -1], H, B_bias), phi[:, -1, None], pairing)
    return res[0], res[1], k_last, x[:, -1]


def mamba3_rope_scan_vjp(cotangent, x, dt, A, trap, B, C, phi, B_bias=None, C_bias=None, D=None,
                         mimo_x=None, chunk_size=64, initial_state=None, initial_k=None,
                         initial_v=None, pairing="interleaved"):
    """mamba3_rope_scan's VJP through this backend's apply_rope, mamba3_scan_vjp, apply_rope_vjp."""
    return core.compose_vjp(xpt, apply_rope, apply_rope_vjp, mamba3_scan_vjp, cotangent, x, dt, A,
                            trap, B, C, phi, B_bias, C_bias, D, mimo_x, chunk_size, initial_state,
                            initial_k, initial_v, pairing)


KERNELS = {"mamba3_rope_scan": mamba3_rope_scan, "mamba3_rope_scan_vjp": mamba3_rope_scan_vjp}
