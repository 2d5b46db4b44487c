"""The compiled loop of the selective scan (imported lazily: importing it imports numba).

One loop nest per call: batch b and channel e outside, time t inside, the N state entries of
channel e innermost. The state lives in ``h`` (updated in place), so the time loop is a plain
recurrence, exactly the one the float64 reference states:

    dt = delta[b, t, e] + delta_bias[e];  dt = softplus(dt) when softplus (threshold 20)
    h[b, e, n] = exp(dt A[e, n]) h[b, e, n] + dt B[b, t, g, n] u[b, t, e]      (g = e // (E / G))
    y[b, t, e] = sum_n h[b, e, n] C[b, t, g, n] + D[e] u[b, t, e];  y *= silu(z[b, t, e]) when has_z

Arrays arrive C-contiguous in one floating dtype (float32, or float64 for float64 inputs); numba
compiles one specialisation per dtype on first use and caches it on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numba


@numba.njit(cache=True, fastmath=False)
def selective_scan_loop(u, delta, A, B, C, D, z, delta_bias, has_z, softplus, h, y):
    Bsz, L, E = u.shape
    N = A.shape[1]
    G = B.shape[2]
    per_group = E // G
    for b in range(Bsz):
        for e in range(E):
            g = e // per_group
            for t in range(L):
                dt = delta[b, t, e] + delta_bias[e]
                if softplus and dt <= 20.0:
                    dt = math.log1p(math.exp(dt))
                x = u[b, t, e]
                acc = 0.0
                for n in range(N):
                    hn = math.exp(dt * A[e, n]) * h[b, e, n] + dt * B[b, t, g, n] * x
                    h[b, e, n] = hn
                    acc += hn * C[b, t, g, n]
                out = acc + D[e] * x
                if has_z:
                    zz = z[b, t, e]
                    if zz >= 0.0:
                        s = 1.0 / (1.0 + math.exp(-zz))
                    else:
                        ez = math.exp(zz)
                        s = ez / (1.0 + ez)
                    out = out * zz * s
                y[b, t, e] = out
