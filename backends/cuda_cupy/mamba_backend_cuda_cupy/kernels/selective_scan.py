"""Mamba-1 selective scan on the row-scan kernel (cuda/scan.cu): forward and step.

Ops (signatures and math: mamba_core/ops/selective_scan.py):
    selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    selective_scan_step(u, delta, A, B, C, state, D, z, delta_bias, delta_softplus)

Rows are (b, channel e): the group g of B/C is the kernel's "head" and its E/G channels are the
rows, each holding h[e, :] (N entries) in registers, decay exp(dt_t[e] A[e, n]) per entry.
Skip (D) and gate (silu(z)) are elementwise after the scan.

selective_scan_vjp has no kernel yet: its decay gradient couples the forward state and the
adjoint entry by entry (dA[e, n] = sum_t dt a g h_{t-1}), which the two-sweep scheme of ssd.py
cannot form; it runs the core's default composition (chunked recompute) on CuPy.
"""

from __future__ import annotations

from mamba_core.ops import selective_scan as _ops

from mamba_backend_cuda_cupy.kernels._common import default, runs_here, wide, xp_of
from mamba_backend_cuda_cupy.kernels._scan import row_scan, supported


def _fwd(xp, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
         initial_state=None):
    Bsz, L, E = u.shape
    G, N = B.shape[2], B.shape[3]
    P = E // G
    wd = wide(xp, u.dtype)
    dtv = _ops._dt(xp, delta, delta_bias, delta_softplus, wd).reshape(Bsz, L, G, P)
    init = None if initial_state is None else initial_state.astype(wd).reshape(Bsz, G, P, N)
    Y, _, fin = row_scan(
        xp, dA=dtv, V=u.astype(wd).reshape(Bsz, L, 1, G, P), K=B.astype(wd)[:, :, None],
        Am=A.astype(wd).reshape(G, P, N), coef=dtv, Q=C.astype(wd)[:, :, None], init=init,
    )
    y = _ops._skip_and_gate(xp, Y.reshape(Bsz, L, E), u, D, z, wd)
    return y.astype(u.dtype), fin.reshape(Bsz, E, N)


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


KERNELS = {"selective_scan": selective_scan, "selective_scan_step": selective_scan_step}
