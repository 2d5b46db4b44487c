"""Native kernels of the example_numba backend.

``KERNELS`` maps an op name (``mamba-core ops`` lists them) to a callable with that op's public
signature: the default composition's arguments without the leading ``xp``. Every op not listed
runs the core's default composition on ``xp`` (NumPy), so the backend is complete from the start.

- ``silu``: the scaffold's first op, in array-API NumPy.
- ``selective_scan`` and ``selective_scan_step``: a numba kernel (``_numba_scan``), a compiled
  loop over time; the step is the same kernel run for one token from the given state.

Planted bug, for the docs and the tests: with ``MAMBA_EXAMPLE_NUMBA_BUG=d_sign`` in the
environment the scan uses ``-D`` instead of ``D``; ``mamba-conformance example_numba`` must then
fail on op:selective_scan (and the Mamba-1 mixer and LM) with a message naming the op.
"""

from __future__ import annotations

import functools
import os

import numpy as np

xp = np  # the backend's array namespace (backend.py returns it as .xp)

BUG_ENV = "MAMBA_EXAMPLE_NUMBA_BUG"


def silu(x):
    """silu(x) = x * sigmoid(x), x of any shape; computed in >= float32, returned in x's dtype."""
    wide = xp.float64 if x.dtype == xp.float64 else xp.float32
    xw = xp.astype(x, wide)
    e = xp.exp(-xp.abs(xw))  # never overflows: sigmoid from exp(-|x|)
    s = xp.where(xw >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return xp.astype(xw * s, x.dtype)


@functools.cache
def _loop():
    from mamba_backend_example_numba._numba_scan import selective_scan_loop

    return selective_scan_loop


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None):
    """Selective scan. u, delta, z: (B, L, E); A: (E, N); B, C: (B, L, G, N); D, delta_bias: (E,);
    initial_state: (B, E, N) -> (y (B, L, E) in u's dtype, h_L (B, E, N) in float32/float64)."""
    wide = np.float64 if u.dtype == np.float64 else np.float32
    Bsz, L, E = u.shape
    N = A.shape[1]

    def c(a):
        return np.ascontiguousarray(a, dtype=wide)

    D_ = np.zeros(E, dtype=wide) if D is None else c(D)
    if os.environ.get(BUG_ENV) == "d_sign":  # the deliberately wrong override (see module doc)
        D_ = -D_
    bias = np.zeros(E, dtype=wide) if delta_bias is None else c(delta_bias)
    h = np.zeros((Bsz, E, N), dtype=wide) if initial_state is None else np.array(initial_state, dtype=wide)
    y = np.empty((Bsz, L, E), dtype=wide)
    uw = c(u)
    _loop()(uw, c(delta), c(A), c(B), c(C), D_, uw if z is None else c(z), bias, z is not None,
            bool(delta_softplus), h, y)
    return np.astype(y, u.dtype, copy=False), h


def selective_scan_step(u, delta, A, B, C, state, D=None, z=None, delta_bias=None,
                        delta_softplus=False):
    """One token. u, delta, z: (B, E); B, C: (B, G, N); state: (B, E, N) -> (y (B, E), new state)."""
    y, h = selective_scan(u[:, None], delta[:, None], A, B[:, None], C[:, None], D,
                          None if z is None else z[:, None], delta_bias, delta_softplus, state)
    return y[:, 0], h


KERNELS = {
    "silu": silu,
    "selective_scan": selective_scan,
    "selective_scan_step": selective_scan_step,
}
