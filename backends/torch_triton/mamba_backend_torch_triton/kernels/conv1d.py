"""Triton kernels of the conv1d family: depthwise causal conv1d, its step and its VJP.

Ops (signatures and math: mamba_core/ops/conv1d.py):
    causal_conv1d(x, weight, bias, initial_state, activation)        -> (y, final_state)
    causal_conv1d_step(x, conv_state, weight, bias, activation)      -> (y, new_state)
    causal_conv1d_vjp((dy, dfinal), x, weight, bias, initial_state, activation)
                                                   -> {"x", "weight", "bias", "initial_state"}

Layout: x (B, L, C) channels-last, read in place when its last axis is unit-stride (so the
x slice of in_proj's output needs no copy); weight (C, K); states (B, C, K), oldest first.
"Full" indexing: full[s] for s < K is initial_state[..., s], full[K + t] is x_t, and
y_t = act(bias + sum_k w[:, k] full[t + 1 + k]).

Forward: one program per (b, block of BL positions, block of BC channels); the K taps are an
unrolled loop of shifted loads (neighbouring programs' rows come from L1/L2). The final state
(the last K entries of full) is a small torch slice.
Backward, two launches: (1) recompute the pre-activation, du = dy * act'(pre) written as
float32 (B, L, C), and per-program partial sums of dw (taps) and db, summed by torch
(deterministic); (2) dfull[s] = sum_k du[s-1-k] w[:, k] + dfinal[s - L], written straight into
dx (s >= K) and, when an initial state was given, into its gradient (s < K).
Step: one program per (b, block of channels): shift the window, insert x, dot with w (SYNC:
a CTA barrier between the window loads and the stores, for a new state written in place).
Precision: float32 arithmetic; y in x's dtype, states in their own dtype; float64 inputs run
the default composition.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_backend_torch_triton.kernels._glue import default, last_contig, pow2, runs_here


@triton.jit
def _conv_fwd_kernel(
    X, W, BIAS, INIT, Y, DY, DU, DWP, DBP,
    L, C,
    sxb, sxl, sib, sic, sik, syb, syl, sdyb, sdyl,
    K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, BWD: tl.constexpr,
):
    """Forward (BWD=False: writes Y) or backward step 1 (BWD=True: writes DU, DWP, DBP)."""
    b = tl.program_id(0).to(tl.int64)
    pl = tl.program_id(1)
    pc = tl.program_id(2)
    t = pl * BL + tl.arange(0, BL)
    c = pc * BC + tl.arange(0, BC)
    tm = t < L
    cm = c < C
    acc = tl.zeros([BL, BC], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + c, mask=cm, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        s = t + 1 + k
        xi = s - K
        xv = tl.load(X + b * sxb + xi[:, None] * sxl + c[None, :],
                     mask=(xi >= 0)[:, None] & tm[:, None] & cm[None, :], other=0.0).to(tl.float32)
        if HAS_INIT:
            xv += tl.load(INIT + b * sib + c[None, :] * sic + s[:, None] * sik,
                          mask=(s < K)[:, None] & tm[:, None] & cm[None, :], other=0.0).to(tl.float32)
        wk = tl.load(W + c * K + k, mask=cm, other=0.0).to(tl.float32)
        acc += xv * wk[None, :]
    if not BWD:
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
        tl.store(Y + b * syb + t[:, None] * syl + c[None, :], acc.to(Y.dtype.element_ty),
                 mask=tm[:, None] & cm[None, :])
    else:
        du = tl.load(DY + b * sdyb + t[:, None] * sdyl + c[None, :], mask=tm[:, None] & cm[None, :],
                     other=0.0).to(tl.float32)
        if SILU:
            sg = 1.0 / (1.0 + tl.exp(-acc))
            du = du * sg * (1.0 + acc * (1.0 - sg))
        tl.store(DU + (b * L + t[:, None]) * C + c[None, :], du, mask=tm[:, None] & cm[None, :])
        prog = b * tl.num_programs(1) + pl
        tl.store(DBP + prog * C + c, tl.sum(du, axis=0), mask=cm)
        for k in tl.static_range(K):
            s = t + 1 + k
            xi = s - K
            xv = tl.load(X + b * sxb + xi[:, None] * sxl + c[None, :],
                         mask=(xi >= 0)[:, None] & tm[:, None] & cm[None, :], other=0.0).to(tl.float32)
            if HAS_INIT:
                xv += tl.load(INIT + b * sib + c[None, :] * sic + s[:, None] * sik,
                              mask=(s < K)[:, None] & tm[:, None] & cm[None, :], other=0.0).to(tl.float32)
            tl.store(DWP + (prog * C + c) * K + k, tl.sum(du * xv, axis=0), mask=cm)


@triton.jit
def _conv_dfull_kernel(
    DU, W, DF, OUT,
    L, C, s0, n_out,
    sdfb, sdfc, sdfk, sob, sol, soc,
    K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, HAS_DF: tl.constexpr,
):
    """OUT[b, i, c] = dfull[s0 + i]: the gradient of full position s (see the module doc)."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BL + tl.arange(0, BL)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    valid = i < n_out
    cm = c < C
    s = s0 + i
    acc = tl.zeros([BL, BC], dtype=tl.float32)
    for k in tl.static_range(K):
        tt = s - 1 - k
        m = (tt >= 0) & (tt < L) & valid
        d = tl.load(DU + (b * L + tt[:, None]) * C + c[None, :], mask=m[:, None] & cm[None, :], other=0.0)
        wk = tl.load(W + c * K + k, mask=cm, other=0.0).to(tl.float32)
        acc += d * wk[None, :]
    if HAS_DF:
        j = s - L
        m = (j >= 0) & (j < K) & valid
        acc += tl.load(DF + b * sdfb + c[None, :] * sdfc + j[:, None] * sdfk,
                       mask=m[:, None] & cm[None, :], other=0.0).to(tl.float32)
    tl.store(OUT + b * sob + i[:, None] * sol + c[None, :] * soc, acc.to(OUT.dtype.element_ty),
             mask=valid[:, None] & cm[None, :])


@triton.jit
def _conv_step_kernel(
    X, S, W, BIAS, Y, NS,
    C, sxb, ssb, ssc, ssk,
    K: tl.constexpr, KP: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    SYNC: tl.constexpr = False,
):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    k = tl.arange(0, KP)
    cm = c < C
    km = k < K
    st = tl.load(S + b * ssb + c[:, None] * ssc + (k[None, :] + 1) * ssk,
                 mask=cm[:, None] & (k < K - 1)[None, :], other=0.0).to(tl.float32)
    xv = tl.load(X + b * sxb + c, mask=cm, other=0.0).to(NS.dtype.element_ty).to(tl.float32)
    st = tl.where((k == K - 1)[None, :], xv[:, None], st)
    if SYNC:  # NS may be S (in-place decode): every window load before any shifted store
        tl.debug_barrier()
    tl.store(NS + (b * C + c[:, None]) * K + k[None, :], st.to(NS.dtype.element_ty),
             mask=cm[:, None] & km[None, :])
    w = tl.load(W + c[:, None] * K + k[None, :], mask=cm[:, None] & km[None, :], other=0.0).to(tl.float32)
    y = tl.sum(st * w, axis=1)
    if HAS_BIAS:
        y += tl.load(BIAS + c, mask=cm, other=0.0).to(tl.float32)
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(Y + b * C + c, y.to(Y.dtype.element_ty), mask=cm)


# ---- torch glue ----------------------------------------------------------------------------
def _blocks(L, C, cpu):
    BC = min(pow2(C), 8 if cpu else 64)
    BL = min(pow2(L), 16 if cpu else 32)
    return BL, BC


def _final_state(x, initial_state, K):
    """The last K entries of full = concat(initial_state (or zeros), x) as (B, C, K)."""
    Bsz, L, C = x.shape
    xs = x[:, max(0, L - K):, :].permute(0, 2, 1)
    if L >= K:
        return xs.contiguous()
    head = (torch.zeros((Bsz, C, K), dtype=x.dtype, device=x.device) if initial_state is None
            else initial_state.to(x.dtype))
    return torch.cat([head[:, :, L:], xs], dim=2).contiguous()


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """Causal depthwise conv1d. x: (B, L, C); weight: (C, K); state: (B, C, K) -> (y, final)."""
    if not runs_here(x, weight, bias, initial_state):
        return default("causal_conv1d")(x, weight, bias, initial_state, activation)
    x = last_contig(x)
    Bsz, L, C = x.shape
    K = weight.shape[1]
    w = weight.contiguous()
    y = torch.empty((Bsz, L, C), dtype=x.dtype, device=x.device)
    BL, BC = _blocks(L, C, x.device.type == "cpu")
    init = initial_state
    if L > 0 and Bsz > 0 and C > 0:
        _conv_fwd_kernel[(Bsz, triton.cdiv(L, BL), triton.cdiv(C, BC))](
            x, w, w if bias is None else bias, x if init is None else init, y, y, y, y, y,
            L, C,
            x.stride(0), x.stride(1),
            *(init.stride() if init is not None else (0, 0, 0)),
            y.stride(0), y.stride(1), 0, 0,
            K=K, BL=BL, BC=BC, HAS_BIAS=bias is not None, HAS_INIT=init is not None,
            SILU=activation == "silu", BWD=False, num_warps=4,
        )
    return y, _final_state(x, initial_state, K)


def causal_conv1d_step(x, conv_state, weight, bias=None, activation=None):
    """One token. x: (B, C); conv_state: (B, C, K) -> (y (B, C), new_state (B, C, K))."""
    if not runs_here(x, conv_state, weight, bias):
        return default("causal_conv1d_step")(x, conv_state, weight, bias, activation)
    x = last_contig(x)
    Bsz, C = x.shape
    K = weight.shape[1]
    y = torch.empty((Bsz, C), dtype=x.dtype, device=x.device)
    ns = torch.empty((Bsz, C, K), dtype=conv_state.dtype, device=x.device)
    BC = min(pow2(C), 16 if x.device.type == "cpu" else 128)
    if Bsz > 0 and C > 0:
        _conv_step_kernel[(Bsz, triton.cdiv(C, BC))](
            x, conv_state, weight.contiguous(), weight if bias is None else bias, y, ns,
            C, x.stride(0), *conv_state.stride(),
            K=K, KP=pow2(K), BC=BC, HAS_BIAS=bias is not None, SILU=activation == "silu",
            num_warps=4,
        )
    return y, ns


def causal_conv1d_vjp(cotangent, x, weight, bias=None, initial_state=None, activation=None):
    """VJP of causal_conv1d; cotangent = (dy (B, L, C) | None, dfinal (B, C, K) | None)."""
    dy, dfinal = cotangent
    if not runs_here(dy, dfinal, x, weight, bias, initial_state):
        return default("causal_conv1d_vjp")(cotangent, x, weight, bias, initial_state, activation)
    x = last_contig(x)
    Bsz, L, C = x.shape
    K = weight.shape[1]
    dev = x.device
    w = weight.contiguous()
    dy = torch.zeros((Bsz, L, C), dtype=torch.float32, device=dev) if dy is None else last_contig(dy)
    cpu = dev.type == "cpu"
    BL, BC = _blocks(L, C, cpu)
    nL = triton.cdiv(L, BL)
    du = torch.empty((Bsz, L, C), dtype=torch.float32, device=dev)
    dwp = torch.zeros((Bsz * nL, C, K), dtype=torch.float32, device=dev)
    dbp = torch.zeros((Bsz * nL, C), dtype=torch.float32, device=dev)
    init = initial_state
    dx = torch.empty((Bsz, L, C), dtype=x.dtype, device=dev)
    dinit = None if init is None else torch.empty((Bsz, C, K), dtype=init.dtype, device=dev)
    if L > 0 and Bsz > 0 and C > 0:
        grid = (Bsz, nL, triton.cdiv(C, BC))
        _conv_fwd_kernel[grid](
            x, w, w if bias is None else bias, x if init is None else init, x, dy, du, dwp, dbp,
            L, C,
            x.stride(0), x.stride(1),
            *(init.stride() if init is not None else (0, 0, 0)),
            0, 0, dy.stride(0), dy.stride(1),
            K=K, BL=BL, BC=BC, HAS_BIAS=bias is not None, HAS_INIT=init is not None,
            SILU=activation == "silu", BWD=True, num_warps=4,
        )
    df = dfinal
    dfs = df.stride() if df is not None else (0, 0, 0)
    if Bsz > 0 and C > 0:
        if L > 0:
            _conv_dfull_kernel[(Bsz, triton.cdiv(L, BL), triton.cdiv(C, BC))](
                du, w, du if df is None else df, dx, L, C, K, L, *dfs,
                dx.stride(0), dx.stride(1), 1,
                K=K, BL=BL, BC=BC, HAS_DF=df is not None, num_warps=4,
            )
        if dinit is not None:
            KB = pow2(K)
            _conv_dfull_kernel[(Bsz, 1, triton.cdiv(C, BC))](
                du, w, du if df is None else df, dinit, L, C, 0, K, *dfs,
                dinit.stride(0), dinit.stride(2), dinit.stride(1),
                K=K, BL=KB, BC=BC, HAS_DF=df is not None, num_warps=4,
            )
    grads = {"x": dx, "weight": dwp.sum(0).to(weight.dtype)}
    if bias is not None:
        grads["bias"] = dbp.sum(0).to(bias.dtype)
    if init is not None:
        grads["initial_state"] = dinit
    return grads


KERNELS = {
    "causal_conv1d": causal_conv1d,
    "causal_conv1d_step": causal_conv1d_step,
    "causal_conv1d_vjp": causal_conv1d_vjp,
}
