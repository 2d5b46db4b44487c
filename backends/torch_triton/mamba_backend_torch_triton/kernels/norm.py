"""Triton kernels of the norm family: gated, grouped RMSNorm and the fused residual add.

Ops (signatures and math: mamba_core/ops/norm.py):
    rmsnorm(x, weight, eps, z, group_size, norm_before_gate)            -> y
    add_rmsnorm(x, residual, weight, eps, residual_in_fp32)             -> (y, residual_out)
    rmsnorm_vjp(dy, x, weight, eps, z, group_size, norm_before_gate)    -> {"x", "weight", "z"}
    add_rmsnorm_vjp((dy, dres), x, residual, weight, eps, residual_in_fp32)
                                                                        -> {"x", "weight", "residual"}

Layout: x (..., E) is viewed as M = prod(...) rows of E channels (last axis unit-stride; other
strides are passed to the kernel, so slices of a wider tensor are read in place). One program
normalises one (row, group) pair with the group in registers (BLOCK = next power of two of the
group size). The backward recomputes the norm from the inputs (nothing is saved), each program
walks ``rows_per_prog`` rows of one group and writes its partial weight gradient to a
(programs, E) float32 buffer that torch sums: deterministic, no atomics.

Precision: everything in float32 registers; y in x's dtype; residual_out in float32 when
residual_in_fp32, else in the promoted dtype of x and residual (then rounded before the norm
reads it, as the default composition does). float64 inputs run the default composition.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mamba_backend_torch_triton.kernels._glue import default, last_contig, pow2, runs_here


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _norm_fwd_kernel(
    X, R, Z, W, Y, RO,
    sx, sr, sz, sy, sro,
    GS, eps,
    BLOCK: tl.constexpr, HAS_RES: tl.constexpr, HAS_Z: tl.constexpr, NBG: tl.constexpr,
    STORE_RES: tl.constexpr, ROUND_RES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    mask = offs < GS
    cols = grp * GS + offs
    x = tl.load(X + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(R + row * sr + cols, mask=mask, other=0.0).to(tl.float32)
    if STORE_RES:
        xr = x.to(RO.dtype.element_ty)
        tl.store(RO + row * sro + cols, xr, mask=mask)
        if ROUND_RES:
            x = xr.to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    v = x
    if HAS_Z:
        z = tl.load(Z + row * sz + cols, mask=mask, other=0.0).to(tl.float32)
        gate = z * _sigmoid(z)
        if not NBG:
            v = x * gate
    r = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / GS + eps)
    y = v * r * w
    if HAS_Z:
        if NBG:
            y = y * gate
    tl.store(Y + row * sy + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    X, R, Z, W, DY, DRO, DX, DR, DZ, DWP,
    sx, sr, sz, sdy, sdro, sdx, sdr, sdz,
    M, E, GS, eps, rows_per_prog,
    BLOCK: tl.constexpr, HAS_RES: tl.constexpr, HAS_Z: tl.constexpr, NBG: tl.constexpr,
    HAS_DRO: tl.constexpr,
):
    pid = tl.program_id(0)
    grp = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    cmask = offs < GS
    cols = grp * GS + offs
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, rows_per_prog):
        row = pid.to(tl.int64) * rows_per_prog + i
        mask = cmask & ((offs * 0 + row) < M)
        x = tl.load(X + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            x += tl.load(R + row * sr + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * sdy + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(Z + row * sz + cols, mask=mask, other=0.0).to(tl.float32)
            sg = _sigmoid(z)
            gate = z * sg
            if NBG:
                # y = n(x) * w * gate
                r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / GS + eps)
                n = x * r
                dn = dy * w * gate
                dx = r * (dn - n * (tl.sum(dn * n, axis=0) / GS))
                dw += dy * n * gate
                dgate = dy * n * w
            else:
                # y = n(x * gate) * w
                v = x * gate
                r = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / GS + eps)
                n = v * r
                dn = dy * w
                dv = r * (dn - n * (tl.sum(dn * n, axis=0) / GS))
                dx = dv * gate
                dw += dy * n
                dgate = dv * x
            dz = dgate * sg * (1.0 + z * (1.0 - sg))
            tl.store(DZ + row * sdz + cols, dz.to(DZ.dtype.element_ty), mask=mask)
        else:
            r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / GS + eps)
            n = x * r
            dn = dy * w
            dx = r * (dn - n * (tl.sum(dn * n, axis=0) / GS))
            dw += dy * n
        if HAS_DRO:
            dx += tl.load(DRO + row * sdro + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * sdx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_RES:
            tl.store(DR + row * sdr + cols, dx.to(DR.dtype.element_ty), mask=mask)
    tl.store(DWP + pid.to(tl.int64) * E + cols, dw, mask=cmask)


# ---- torch glue ----------------------------------------------------------------------------
def _rows(t, E):
    """(..., E) -> a (M, E) view (or copy) with unit stride on the last axis."""
    return None if t is None else last_contig(t).reshape(-1, E)


def _warps(block: int) -> int:
    return 1 if block <= 256 else 4 if block <= 2048 else 8


def _fwd(x, residual, weight, eps, z, gs, nbg, res_dtype):
    E = x.shape[-1]
    x2, r2, z2 = _rows(x, E), _rows(residual, E), _rows(z, E)
    M = x2.shape[0]
    y = torch.empty((M, E), dtype=x.dtype, device=x.device)
    ro = None if res_dtype is None else torch.empty((M, E), dtype=res_dtype, device=x.device)
    BLOCK = pow2(gs)
    if M > 0:
        _norm_fwd_kernel[(M, E // gs)](
            x2, x2 if r2 is None else r2, x2 if z2 is None else z2, weight.contiguous(), y,
            y if ro is None else ro,
            x2.stride(0), 0 if r2 is None else r2.stride(0), 0 if z2 is None else z2.stride(0),
            y.stride(0), 0 if ro is None else ro.stride(0),
            gs, float(eps),
            BLOCK=BLOCK, HAS_RES=r2 is not None, HAS_Z=z2 is not None, NBG=bool(nbg),
            STORE_RES=ro is not None, ROUND_RES=ro is not None and ro.dtype != torch.float32,
            num_warps=_warps(BLOCK),
        )
    y = y.reshape(x.shape)
    return y, (None if ro is None else ro.reshape(x.shape))


def _bwd(dy, x, residual, weight, eps, z, gs, nbg, dres_out, dx_dtype, dres_dtype):
    E = x.shape[-1]
    x2, r2, z2 = _rows(x, E), _rows(residual, E), _rows(z, E)
    M = x2.shape[0]
    dev = x.device
    dy2 = torch.zeros((M, E), dtype=torch.float32, device=dev) if dy is None else _rows(dy, E)
    dro2 = _rows(dres_out, E)
    dx = torch.empty((M, E), dtype=dx_dtype, device=dev)
    dr = None if r2 is None else torch.empty((M, E), dtype=dres_dtype, device=dev)
    dz = None if z2 is None else torch.empty((M, E), dtype=z.dtype, device=dev)
    BLOCK = pow2(gs)
    target = 8 if x.device.type == "cpu" else 512  # programs along the rows
    rpp = max(1, math.ceil(M / target))
    nprog = max(1, math.ceil(M / rpp))
    dwp = torch.zeros((nprog, E), dtype=torch.float32, device=dev)
    if M > 0:
        _norm_bwd_kernel[(nprog, E // gs)](
            x2, x2 if r2 is None else r2, x2 if z2 is None else z2, weight.contiguous(), dy2,
            dy2 if dro2 is None else dro2, dx, dx if dr is None else dr, dx if dz is None else dz, dwp,
            x2.stride(0), 0 if r2 is None else r2.stride(0), 0 if z2 is None else z2.stride(0),
            dy2.stride(0), 0 if dro2 is None else dro2.stride(0), dx.stride(0),
            0 if dr is None else dr.stride(0), 0 if dz is None else dz.stride(0),
            M, E, gs, float(eps), rpp,
            BLOCK=BLOCK, HAS_RES=r2 is not None, HAS_Z=z2 is not None, NBG=bool(nbg),
            HAS_DRO=dro2 is not None, num_warps=_warps(BLOCK),
        )
    dw = dwp.sum(0).to(weight.dtype)
    shape = x.shape
    return (dx.reshape(shape), dw, None if dr is None else dr.reshape(shape),
            None if dz is None else dz.reshape(shape))


# ---- the ops -------------------------------------------------------------------------------
def rmsnorm(x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """Gated, grouped RMSNorm. x, z: (..., E); weight: (E,) -> y (..., E) in x's dtype."""
    if not runs_here(x, weight, z):
        return default("rmsnorm")(x, weight, eps, z, group_size, norm_before_gate)
    gs = group_size or x.shape[-1]
    return _fwd(x, None, weight, eps, z, gs, norm_before_gate, None)[0]


def add_rmsnorm(x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """(rmsnorm(residual + x) * w, residual + x). x, residual: (..., D); weight: (D,)."""
    if not runs_here(x, residual, weight):
        return default("add_rmsnorm")(x, residual, weight, eps, residual_in_fp32)
    if residual_in_fp32:
        res_dtype = torch.float32
    else:
        res_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    return _fwd(x, residual, weight, eps, None, x.shape[-1], False, res_dtype)


def rmsnorm_vjp(dy, x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """VJP of rmsnorm -> {"x", "weight", "z" (when given)}, each in its argument's dtype."""
    if not runs_here(dy, x, weight, z):
        return default("rmsnorm_vjp")(dy, x, weight, eps, z, group_size, norm_before_gate)
    gs = group_size or x.shape[-1]
    dx, dw, _, dz = _bwd(dy, x, None, weight, eps, z, gs, norm_before_gate, None, x.dtype, None)
    grads = {"x": dx, "weight": dw}
    if z is not None:
        grads["z"] = dz
    return grads


def add_rmsnorm_vjp(cotangent, x, residual, weight, eps=1e-5, residual_in_fp32=True):
    """VJP of add_rmsnorm; cotangent = (dy, dresidual_out), either None (zero).

    -> {"x", "weight", "residual" (when given)}; dx = dresidual = rmsnorm's dx + dresidual_out.
    """
    dy, dres_out = cotangent
    if not runs_here(dy, dres_out, x, residual, weight):
        return default("add_rmsnorm_vjp")(cotangent, x, residual, weight, eps, residual_in_fp32)
    dx, dw, dr, _ = _bwd(dy, x, residual, weight, eps, None, x.shape[-1], False, dres_out, x.dtype,
                         None if residual is None else residual.dtype)
    grads = {"x": dx, "weight": dw}
    if residual is not None:
        grads["residual"] = dr
    return grads


KERNELS = {
    "rmsnorm": rmsnorm,
    "add_rmsnorm": add_rmsnorm,
    "rmsnorm_vjp": rmsnorm_vjp,
    "add_rmsnorm_vjp": add_rmsnorm_vjp,
}
