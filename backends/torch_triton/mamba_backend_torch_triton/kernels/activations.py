"""Triton kernels of the elementwise activations, the SiLU gate, and their VJPs.

Ops (signatures and math: mamba_core/ops/activations.py):
    sigmoid(x), silu(x), softplus(x)                      -> y, x's shape and dtype
    sigmoid_vjp(dy, x), silu_vjp(dy, x), softplus_vjp(dy, x) -> {"x": dx}, x's shape and dtype
    silu_gate(x, z) = x silu(z)                           -> y, x's shape and dtype
    silu_gate_vjp(dy, x, z) -> {"x": dy silu(z), "z": dy x silu'(z)}, in x's and z's dtypes

One kernel per op family, one program per BLOCK elements of the flattened (contiguous) input:
each element is loaded once, widened to float32, and its result rounded once to x's dtype. The
default compositions run several torch elementwise kernels, each a full pass over memory in the
input dtype (about ten for silu_vjp); the gate y silu(z) of a Mamba-3 mixer and its VJP took
2.66 ms through them at B=8, L=2048, H=32, P=64 in bf16 (run 23), against a bandwidth floor of
~0.05 ms (read dy, y, z; write dy, dz: 5 x 33.5 MB).

The math is the default composition's, in float32:
    sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|)   (never overflows)
    softplus(x) = x above 20 (torch's threshold), else log1p(exp(x)) (selective_scan's _softplus)
    silu'(x) = s (1 + x (1 - s)), sigmoid'(x) = s (1 - s), softplus'(x) = s (1 above 20)
with 1 - s taken as sigmoid(-x) (e / (1 + e) or 1 / (1 + e)), not by subtraction: the gradients
keep their relative precision in the tails, where the composition's 1 - s rounds to 0.
log1p(y) is log(u) y / (u - 1) with u = 1 + y rounded (and y where u rounds to 1): the rounding
of u cancels, where log(1 + y) in float32 would lose y's low bits (relative 5e-4 at y = 1e-4).

The gate reads x and z once and writes y (forward: 3 passes of the tensor's bytes against 5 for
silu then a product), and its VJP reads dy, x, z and writes dx, dz (5 against ~11 for the
mixer's two products and silu_vjp).

Fallback: float64 inputs, inputs off CUDA (or the CPU without TRITON_INTERPRET=1), dy of
another shape than x (the default composition broadcasts), x and z of different dtypes, integer
and empty tensors, and dy None (zeros) run the core's default composition in torch -- the same
math, visible in ``FALLBACKS``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_core.ops.activations import SOFTPLUS_THRESHOLD

from mamba_backend_torch_triton.kernels._glue import default, runs_here
from mamba_backend_torch_triton.kernels.selective_scan import _softplus

FALLBACKS = "sigmoid/silu/softplus/silu_gate and their VJPs: float64 inputs, non-CUDA devices (CPU " \
            "without TRITON_INTERPRET=1), dy shaped unlike x or None, silu_gate's x and z of different " \
            "dtypes, integer or empty inputs -> the core's default composition"

#: elements per program and warps (read at every call)
CONFIG = {"block": 2048, "num_warps": 4}

_KIND = {"sigmoid": 0, "silu": 1, "softplus": 2}


@triton.jit
def _sigmoid_f32(x):
    """(sigmoid(x), sigmoid(-x) = 1 - sigmoid(x) without the cancellation, exp(-|x|))."""
    e = tl.exp(-tl.abs(x))
    big, small = 1.0 / (1.0 + e), e / (1.0 + e)
    return tl.where(x >= 0, big, small), tl.where(x >= 0, small, big), e


@triton.jit
def _act_fwd_kernel(x_ptr, y_ptr, n, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s, sc, e = _sigmoid_f32(x)
    if KIND == 0:
        y = s
    elif KIND == 1:
        y = x * s
    else:
        y = _softplus(x)  # selective_scan's: torch's threshold 20, log1p by Kahan's trick
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _act_vjp_kernel(dy_ptr, x_ptr, dx_ptr, n, thresh, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s, sc, e = _sigmoid_f32(x)
    if KIND == 0:
        g = s * sc
    elif KIND == 1:
        g = s * (1.0 + x * sc)
    else:
        g = tl.where(x > thresh, 1.0, s)
    tl.store(dx_ptr + offs, (dy * g).to(dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gate_fwd_kernel(x_ptr, z_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s, sc, e = _sigmoid_f32(z)
    tl.store(y_ptr + offs, (x * z * s).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gate_vjp_kernel(dy_ptr, x_ptr, z_ptr, dx_ptr, dz_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=m, other=0.0).to(tl.float32)
    s, sc, e = _sigmoid_f32(z)
    tl.store(dx_ptr + offs, (dy * z * s).to(dx_ptr.dtype.element_ty), mask=m)
    tl.store(dz_ptr + offs, (dy * x * s * (1.0 + z * sc)).to(dz_ptr.dtype.element_ty), mask=m)


def _gate_runs(x, z, *more):
    return (runs_here(x, z, *more) and x.is_floating_point() and x.dtype == z.dtype and x.numel() > 0
            and tuple(x.shape) == tuple(z.shape))


def silu_gate(x, z):
    """x silu(z) in one Triton pass (float32 inside, x's dtype out); x, z: the same shape."""
    if not _gate_runs(x, z):
        return default("silu_gate")(x, z)
    xc, zc = x.contiguous(), z.contiguous()
    y = torch.empty_like(xc)
    block = CONFIG["block"]
    _gate_fwd_kernel[(triton.cdiv(xc.numel(), block),)](xc, zc, y, xc.numel(), BLOCK=block,
                                                        num_warps=CONFIG["num_warps"])
    return y


def silu_gate_vjp(dy, x, z):
    """VJP of silu_gate in one Triton pass: {"x": dy silu(z), "z": dy x silu'(z)}."""
    if dy is None or not _gate_runs(x, z, dy) or tuple(dy.shape) != tuple(x.shape):
        return default("silu_gate_vjp")(dy, x, z)
    xc, zc, dyc = x.contiguous(), z.contiguous(), dy.contiguous()
    dx, dz = torch.empty_like(xc), torch.empty_like(zc)
    block = CONFIG["block"]
    _gate_vjp_kernel[(triton.cdiv(xc.numel(), block),)](dyc, xc, zc, dx, dz, xc.numel(), BLOCK=block,
                                                        num_warps=CONFIG["num_warps"])
    return {"x": dx, "z": dz}


def _launch(kernel, n, *args, kind):
    """kernel over n elements in BLOCK-sized programs; args: its runtime arguments (n among them)."""
    block = CONFIG["block"]
    kernel[(triton.cdiv(n, block),)](*args, KIND=_KIND[kind], BLOCK=block, num_warps=CONFIG["num_warps"])


def _forward(kind):
    fallback = default(kind)

    def op(x):
        if not runs_here(x) or not x.is_floating_point() or x.numel() == 0:
            return fallback(x)
        xc = x.contiguous()
        y = torch.empty_like(xc)
        _launch(_act_fwd_kernel, xc.numel(), xc, y, xc.numel(), kind=kind)
        return y

    op.__name__ = kind
    op.__doc__ = f"{kind}(x) in one Triton pass (float32 inside, x's dtype out); x: any shape."
    return op


def _vjp(kind):
    fallback = default(kind + "_vjp")

    def op(dy, x):
        if (dy is None or not runs_here(dy, x) or not x.is_floating_point() or x.numel() == 0
                or tuple(dy.shape) != tuple(x.shape)):
            return fallback(dy, x)
        xc, dyc = x.contiguous(), dy.contiguous()
        dx = torch.empty_like(xc)
        _launch(_act_vjp_kernel, xc.numel(), dyc, xc, dx, xc.numel(), SOFTPLUS_THRESHOLD, kind=kind)
        return {"x": dx}

    op.__name__ = kind + "_vjp"
    op.__doc__ = f"VJP of {kind}: {{'x': dy * {kind}'(x)}} in one Triton pass; dy, x: same shape."
    return op


KERNELS = {"silu_gate": silu_gate, "silu_gate_vjp": silu_gate_vjp}
for _k in _KIND:
    KERNELS[_k] = _forward(_k)
    KERNELS[_k + "_vjp"] = _vjp(_k)
