"""Op-level benchmarks: each scan family forward, forward+backward and step; rmsnorm; conv1d.

Every bench states, next to its inputs, the bytes it must move (each input read once, each
output written once, float32) and the flops it must do, so that its floor is
max(bytes / bandwidth, flops / peak). The flop counts of the scans are those of the recurrent
form (the fewest of any algorithm: exp counted as one flop); chunked algorithms do more, on
matrix units. forward+backward runs the forward and then the op's VJP (``<op>_vjp``), which
takes the forward's arguments; its bytes are the forward's plus the inputs read again, the
cotangent read and one gradient per input written, and its flops are 3x the forward's.

Inputs are drawn from a fixed seed, never zeros, in the ranges the mixers produce (dt > 0 small,
A < 0, trap in (0, 1), normalised B/C).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from mamba_core.bench.presets import OpShapes

F32 = 4  # bytes per element


@dataclasses.dataclass(frozen=True)
class OpBench:
    family: str  # mamba1 | mamba2 | mamba3 | mamba3_mimo | rmsnorm | conv1d
    op: str  # the registered op (the VJP is "<op>_vjp")
    mode: str  # fwd | fwd+bwd | step
    inputs: Callable[[OpShapes, np.random.Generator], dict]
    call: Callable[[Any, dict], Any]  # (backend, backend inputs) -> outputs
    cost: Callable[[OpShapes], tuple[float, float]]  # (bytes, flops)
    tokens: Callable[[OpShapes], int]

    @property
    def key(self) -> str:
        return f"{self.family}/{self.op}/{self.mode}"


def _n(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _u(rng, lo, hi, *shape):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _seq(s: OpShapes) -> int:
    return s.B * s.L


def _one(s: OpShapes) -> int:
    return s.B


def _fwd_bwd_cost(fwd_cost, in_elems):
    """forward + VJP: forward traffic, inputs again, cotangent (= outputs) read, grads written."""
    def cost(s):
        b, f = fwd_cost(s)
        return b + 2 * F32 * in_elems(s) + (b - F32 * in_elems(s)), 3 * f
    return cost


# ---- Mamba-1: selective scan ------------------------------------------------------------------
def _m1_inputs(s, rng, step=False):
    B, L, E, N, G = s.B, s.L, s.E, s.N1, s.G
    lead = (B,) if step else (B, L)
    return {
        "u": _n(rng, *lead, E), "delta": _n(rng, *lead, E, scale=0.5), "z": _n(rng, *lead, E),
        "B": _n(rng, *lead, G, N), "C": _n(rng, *lead, G, N),
        "A": -np.tile(np.arange(1, N + 1, dtype=np.float32), (E, 1)),
        "D": np.ones(E, np.float32), "delta_bias": _u(rng, -4.0, -2.0, E),
        **({"state": _n(rng, B, E, N, scale=0.1)} if step else {"dy": _n(rng, B, L, E)}),
    }


def _m1_args(a):
    return (a["u"], a["delta"], a["A"], a["B"], a["C"]), dict(D=a["D"], z=a["z"], delta_bias=a["delta_bias"],
                                                              delta_softplus=True)


def _m1_in(s):  # u, delta, z (B, L, E); B, C (B, L, G, N); A (E, N); D, delta_bias (E)
    return 3 * s.B * s.L * s.E + 2 * s.B * s.L * s.G * s.N1 + s.E * s.N1 + 2 * s.E


def _m1_cost(s):
    # bytes: inputs + y (B, L, E) + final state (B, E, N)
    # flops per (b, t, e, n): exp(dt A), dt*A, dA*h, dt*u*B, +, C*h, + = 7; per (b, t, e):
    # softplus (~4), D skip (2), silu gate (~5) = 11
    by = F32 * (_m1_in(s) + s.B * s.L * s.E + s.B * s.E * s.N1)
    return by, 7 * s.B * s.L * s.E * s.N1 + 11 * s.B * s.L * s.E


def _m1_step_cost(s):
    # bytes: u, delta, z (B, E); B, C (B, G, N); A (E, N); D, bias (E); state read + written; y
    by = F32 * (4 * s.B * s.E + 2 * s.B * s.G * s.N1 + s.E * s.N1 + 2 * s.E + 2 * s.B * s.E * s.N1)
    return by, 7 * s.B * s.E * s.N1 + 11 * s.B * s.E


def _m1_fwd(be, a):
    args, kw = _m1_args(a)
    return be.ops.selective_scan(*args, **kw)


def _m1_fwd_bwd(be, a):
    args, kw = _m1_args(a)
    y = be.ops.selective_scan(*args, **kw)
    return y, be.ops.selective_scan_vjp((a["dy"], None), *args, **kw)


def _m1_step(be, a):
    return be.ops.selective_scan_step(a["u"], a["delta"], a["A"], a["B"], a["C"], a["state"], D=a["D"],
                                      z=a["z"], delta_bias=a["delta_bias"], delta_softplus=True)


# ---- Mamba-2: SSD ------------------------------------------------------------------------------
def _m2_inputs(s, rng, step=False):
    B, L, H, P, N, G = s.B, s.L, s.H, s.P, s.N, s.G
    lead = (B,) if step else (B, L)
    return {
        "x": _n(rng, *lead, H, P), "dt": _n(rng, *lead, H, scale=0.5),
        "A": -_u(rng, 1.0, 16.0, H), "B": _n(rng, *lead, G, N), "C": _n(rng, *lead, G, N),
        "D": np.ones(H, np.float32), "dt_bias": _u(rng, -4.0, -2.0, H),
        **({"state": _n(rng, B, H, P, N, scale=0.1)} if step else {"dy": _n(rng, B, L, H, P)}),
    }


def _m2_in(s):  # x (B, L, H, P); dt (B, L, H); B, C (B, L, G, N); A, D, dt_bias (H)
    return s.B * s.L * (s.H * s.P + s.H + 2 * s.G * s.N) + 3 * s.H


def _m2_cost(s):
    # bytes: inputs + y (B, L, H, P) + final state (B, H, P, N)
    # flops per (b, t, h, p, n): dA*S, dt*x*B, +, C*S, + = 5 (+ per (b, t, h): exp, softplus)
    by = F32 * (_m2_in(s) + s.B * s.L * s.H * s.P + s.B * s.H * s.P * s.N)
    return by, 5 * s.B * s.L * s.H * s.P * s.N + 3 * s.B * s.L * s.H * s.P


def _m2_step_cost(s):
    by = F32 * (2 * s.B * s.H * s.P + s.B * s.H + 2 * s.B * s.G * s.N + 3 * s.H + 2 * s.B * s.H * s.P * s.N)
    return by, 5 * s.B * s.H * s.P * s.N + 3 * s.B * s.H * s.P


def _m2_fwd(be, a):
    return be.ops.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=a["chunk"], D=a["D"],
                           dt_bias=a["dt_bias"], dt_softplus=True)


def _m2_fwd_bwd(be, a):
    args = (a["x"], a["dt"], a["A"], a["B"], a["C"])
    kw = dict(chunk_size=a["chunk"], D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True)
    y = be.ops.ssd_scan(*args, **kw)
    return y, be.ops.ssd_scan_vjp((a["dy"], None), *args, **kw)


def _m2_step(be, a):
    return be.ops.ssd_step(a["x"], a["dt"], a["A"], a["B"], a["C"], a["state"], D=a["D"],
                           dt_bias=a["dt_bias"], dt_softplus=True)


# ---- Mamba-3: exponential-trapezoidal scan (SISO: R = 1; MIMO: R = s.R) ------------------------
def _m3_inputs(s, rng, R, step=False):
    B, L, H, P, N = s.B, s.L, s.H, s.P, s.N
    lead = (B,) if step else (B, L)
    a = {
        "x": _n(rng, *lead, H, P), "dt": _u(rng, 1e-3, 0.1, *lead, H), "A": -_u(rng, 0.5, 4.0, *lead, H),
        "trap": _u(rng, 0.05, 0.95, *lead, H),
        "B": _n(rng, *lead, R, H, N, scale=N ** -0.5), "C": _n(rng, *lead, R, H, N, scale=N ** -0.5),
        "D": np.ones(H, np.float32),
        "mimo_x": (1.0 / R + _n(rng, H, R, P, scale=0.05)) if R > 1 else None,
    }
    if step:
        a.update(state=_n(rng, B, H, P, N, scale=0.1), k_state=_n(rng, B, R, H, N, scale=N ** -0.5),
                 v_state=_n(rng, B, H, P))
    else:
        a["dy"] = _n(rng, B, L, R, H, P)
    return a


def _m3_in(s, R):  # x (B, L, H, P); dt, A, trap (B, L, H); B, C (B, L, R, H, N); D (H); mimo_x
    return s.B * s.L * (s.H * s.P + 3 * s.H + 2 * R * s.H * s.N) + s.H + (s.H * R * s.P if R > 1 else 0)


def _m3_cost(s, R):
    # bytes: inputs + y (B, L, R, H, P) + final state (B, H, P, N) + final k (B, R, H, N) + v (B, H, P)
    # flops per (b, t, h, p, n): alpha*S, beta*u_prev, gamma*u, two adds (5); u = sum_r v_r B_r^T
    # (2R); y_r = S C_r (2R)  ->  (5 + 4R); plus the up-projection v_r = x o mimo_x (R per p)
    by = F32 * (_m3_in(s, R) + s.B * s.L * R * s.H * s.P + s.B * s.H * s.P * s.N + s.B * R * s.H * s.N
                + s.B * s.H * s.P)
    return by, (5 + 4 * R) * s.B * s.L * s.H * s.P * s.N + 3 * R * s.B * s.L * s.H * s.P


def _m3_step_cost(s, R):
    # x, y, v_state (in and out); dt, A, trap; B, C, k_state (in and out); state read + written
    by = F32 * (s.B * s.H * s.P * (3 + R) + 3 * s.B * s.H + 4 * s.B * R * s.H * s.N + s.H
                + 2 * s.B * s.H * s.P * s.N)
    return by, (5 + 4 * R) * s.B * s.H * s.P * s.N + 3 * R * s.B * s.H * s.P


def _m3_fwd(be, a):
    return be.ops.mamba3_scan(a["x"], a["dt"], a["A"], a["trap"], a["B"], a["C"], D=a["D"],
                              mimo_x=a["mimo_x"], chunk_size=a["chunk"])


def _m3_fwd_bwd(be, a):
    args = (a["x"], a["dt"], a["A"], a["trap"], a["B"], a["C"])
    kw = dict(D=a["D"], mimo_x=a["mimo_x"], chunk_size=a["chunk"])
    y = be.ops.mamba3_scan(*args, **kw)
    return y, be.ops.mamba3_scan_vjp((a["dy"], None, None, None), *args, **kw)


def _m3_step(be, a):
    return be.ops.mamba3_step(a["x"], a["dt"], a["A"], a["trap"], a["B"], a["C"], a["state"], a["k_state"],
                              a["v_state"], D=a["D"], mimo_x=a["mimo_x"])


# ---- rmsnorm (the gated output norm of Mamba-2/3, over d_inner) ---------------------------------
def _norm_inputs(s, rng):
    return {"x": _n(rng, s.B, s.L, s.E), "z": _n(rng, s.B, s.L, s.E), "w": _u(rng, 0.5, 1.5, s.E),
            "dy": _n(rng, s.B, s.L, s.E)}


def _norm_in(s):
    return 2 * s.B * s.L * s.E + s.E


def _norm_cost(s):
    # bytes: x, z, w read; y written. flops per element: silu (~5), gate mul, square+sum (2),
    # scale by rsqrt and weight (2) = 10
    return F32 * (_norm_in(s) + s.B * s.L * s.E), 10 * s.B * s.L * s.E


def _norm_fwd(be, a):
    return be.ops.rmsnorm(a["x"], a["w"], 1e-5, z=a["z"])


def _norm_fwd_bwd(be, a):
    y = be.ops.rmsnorm(a["x"], a["w"], 1e-5, z=a["z"])
    return y, be.ops.rmsnorm_vjp(a["dy"], a["x"], a["w"], 1e-5, a["z"], None, False)


# ---- causal conv1d (Mamba-2's xBC: C = d_inner + 2 G N channels, silu) ---------------------------
def _conv_C(s):
    return s.E + 2 * s.G * s.N


def _conv_inputs(s, rng, step=False):
    C, K = _conv_C(s), s.K
    lead = (s.B,) if step else (s.B, s.L)
    a = {"x": _n(rng, *lead, C), "w": _n(rng, C, K, scale=K ** -0.5), "b": _n(rng, C, scale=0.1)}
    if step:
        a["state"] = _n(rng, s.B, C, K)
    else:
        a["dy"] = _n(rng, s.B, s.L, C)
    return a


def _conv_in(s):
    return s.B * s.L * _conv_C(s) + _conv_C(s) * (s.K + 1)


def _conv_cost(s):
    # bytes: x, w, b read; y (B, L, C) and final state (B, C, K) written.
    # flops per (b, t, c): K multiply-adds (2K) + bias + silu (~5)
    C = _conv_C(s)
    return F32 * (_conv_in(s) + s.B * s.L * C + s.B * C * s.K), (2 * s.K + 6) * s.B * s.L * C


def _conv_step_cost(s):
    C = _conv_C(s)
    return F32 * (2 * s.B * C + 2 * s.B * C * s.K + C * (s.K + 1)), (2 * s.K + 6) * s.B * C


def _conv_fwd(be, a):
    return be.ops.causal_conv1d(a["x"], a["w"], a["b"], None, "silu")


def _conv_fwd_bwd(be, a):
    y = be.ops.causal_conv1d(a["x"], a["w"], a["b"], None, "silu")
    return y, be.ops.causal_conv1d_vjp((a["dy"], None), a["x"], a["w"], a["b"], None, "silu")


def _conv_step(be, a):
    return be.ops.causal_conv1d_step(a["x"], a["state"], a["w"], a["b"], "silu")


def _with(extra: Callable[[OpShapes], dict], make):
    def inputs(s, rng):
        d = make(s, rng)
        d.update(extra(s))
        return d
    return inputs


def all_benches() -> list[OpBench]:
    """Every op-level bench, in report order."""
    m2c = lambda s: {"chunk": min(s.chunk_ssd, s.L)}  # noqa: E731  (the chunk size the op runs with)
    m3c = lambda s: {"chunk": min(s.chunk_m3, s.L)}  # noqa: E731
    out = [
        OpBench("mamba1", "selective_scan", "fwd", _m1_inputs, _m1_fwd, _m1_cost, _seq),
        OpBench("mamba1", "selective_scan", "fwd+bwd", _m1_inputs, _m1_fwd_bwd, _fwd_bwd_cost(_m1_cost, _m1_in), _seq),
        OpBench("mamba1", "selective_scan_step", "step", lambda s, r: _m1_inputs(s, r, step=True), _m1_step,
                _m1_step_cost, _one),
        OpBench("mamba2", "ssd_scan", "fwd", _with(m2c, _m2_inputs), _m2_fwd, _m2_cost, _seq),
        OpBench("mamba2", "ssd_scan", "fwd+bwd", _with(m2c, _m2_inputs), _m2_fwd_bwd, _fwd_bwd_cost(_m2_cost, _m2_in),
                _seq),
        OpBench("mamba2", "ssd_step", "step", lambda s, r: _m2_inputs(s, r, step=True), _m2_step, _m2_step_cost, _one),
    ]
    for fam, R in (("mamba3", 1), ("mamba3_mimo", None)):
        rk = (lambda s: 1) if R == 1 else (lambda s: s.R)
        out += [
            OpBench(fam, "mamba3_scan", "fwd", _with(m3c, lambda s, r, rk=rk: _m3_inputs(s, r, rk(s))), _m3_fwd,
                    lambda s, rk=rk: _m3_cost(s, rk(s)), _seq),
            OpBench(fam, "mamba3_scan", "fwd+bwd", _with(m3c, lambda s, r, rk=rk: _m3_inputs(s, r, rk(s))),
                    _m3_fwd_bwd, _fwd_bwd_cost(lambda s, rk=rk: _m3_cost(s, rk(s)), lambda s, rk=rk: _m3_in(s, rk(s))),
                    _seq),
            OpBench(fam, "mamba3_step", "step", lambda s, r, rk=rk: _m3_inputs(s, r, rk(s), step=True), _m3_step,
                    lambda s, rk=rk: _m3_step_cost(s, rk(s)), _one),
        ]
    out += [
        OpBench("rmsnorm", "rmsnorm", "fwd", _norm_inputs, _norm_fwd, _norm_cost, _seq),
        OpBench("rmsnorm", "rmsnorm", "fwd+bwd", _norm_inputs, _norm_fwd_bwd, _fwd_bwd_cost(_norm_cost, _norm_in), _seq),
        OpBench("conv1d", "causal_conv1d", "fwd", _conv_inputs, _conv_fwd, _conv_cost, _seq),
        OpBench("conv1d", "causal_conv1d", "fwd+bwd", _conv_inputs, _conv_fwd_bwd, _fwd_bwd_cost(_conv_cost, _conv_in),
                _seq),
        OpBench("conv1d", "causal_conv1d_step", "step", lambda s, r: _conv_inputs(s, r, step=True), _conv_step,
                _conv_step_cost, _one),
    ]
    return out


def to_backend(be, inputs: dict) -> dict:
    """NumPy float32 arrays onto the backend; everything else passes through."""
    return {k: be.asarray(v, "float32") if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
