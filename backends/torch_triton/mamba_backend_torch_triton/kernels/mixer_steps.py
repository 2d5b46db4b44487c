"""Fused one-token decode steps of the Mamba-1 and Mamba-2 mixers (the ``mixer_steps`` hook).

    MIXER_STEPS = {"mamba2": mamba2_step, "mamba1": mamba1_step}
    each: fn(be, params, cfg, u (B, D), cache) -> (out (B, D), new cache)

Same signature and results as ``mamba_core.models.<family>.step`` (the op composition; see its
docstring for the params, the cache and the math). Why: at batch 1 a decode step moves little
data and is bound by launches; the composition issues ~15 kernels per Mamba-2 layer (conv step,
A = -exp(A_log), scan step, norm, contiguous copies of slices, cache casts), the fused step 3.

Mamba-2, three launches: in_proj (torch matmul) -> ``_m2_step`` -> out_proj (torch matmul).
``_m2_step``, one program per (b, head h, block of BP head channels p):
    conv: window = [conv_state[c, 1:], xBC[c]] for the program's x channels c = h P + p and its
          group's B and C channels (recomputed by every program of the group: 2 N K loads from
          L2), xBC_conv = silu(window . w + bias)
    dt = clamp(softplus(dt_raw + dt_bias), dt_limit); A = -exp(A_log[h]) (computed here: no
          per-token torch glue, and no cached copy that could go stale when A_log changes)
    S = exp(dt A) S + dt x B^T;  y = S C + D x;  (no rmsnorm: y *= silu(z))
    gated RMSNorm over a group of S/G channels (many programs): each program writes
          v = y silu(z) (or y when norm_before_gate) to a float32 scratch row and its partial
          sum of squares; then takes a ticket from a per-(b, group) counter (atomic add,
          acq_rel, after a CTA barrier). The program that draws the last ticket sums the
          partials in a fixed order (deterministic), normalises the group's channels
          (v r w [silu(z)]), writes the new conv state of the group's B and C channels (every
          program of the group has read them by then) and resets the counter to 0 for the next
          launch. The counters are a persistent int32 buffer per device, left at zero.
    Nothing is synchronised with the host; the launch depends only on shapes and flags: the
    step captures into a CUDA graph.
d_mlp > 0 (the gated-MLP slice): silu(z0) x0 is written by torch into the first d_mlp columns.

Mamba-1, five launches: in_proj -> conv step (kernels/conv1d.py) -> x_proj (matmul) ->
``_m1_step`` -> out_proj. ``_m1_step``, one program per (b, block of BE channels): dt_proj as an
in-register dot over the R = dt_rank inputs, softplus, A = -exp(A_log), the scan step, D skip
and the silu(z) gate.

In-place cache updates (``inplace_cache()``): graphs.CudaGraphDecoder captures the step with the
new states written over the input cache (the captured graph then needs no copy-back: 2 fewer
copies of the cache per layer and token). Outside that context manager the input cache is never
modified. The kernels are safe in place: every state element is read before it is overwritten
(a CTA barrier separates the conv-window loads from the shifted stores; the shared B / C windows
are written by the last program of their group only).

Precision: float32 registers and states; bf16 / fp16 inputs welcome; out in u's dtype; caches
float32 (as the composition returns them). The fused path keeps xBC, y and the norm in float32
where the composition rounds them to the model dtype between ops: in bf16 the two differ by
bf16 rounding (both within the reference tolerance). float64, inputs on another device (not
CUDA, or the CPU without TRITON_INTERPRET=1) and d_conv > 16 run the composition.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mamba_backend_torch_triton.kernels._glue import pow2, runs_here
from mamba_backend_torch_triton.kernels.conv1d import _conv_step_kernel
from mamba_backend_torch_triton.kernels.selective_scan import _softplus

#: launch shapes (overridable, e.g. by benchmarks/gpu/sweep_tt.py): Mamba-2 head channels per
#: program BP (capped by P), Mamba-1 channels per program BE, warps; "interpret": the CPU.
CONFIG = {
    "mamba2": {"BP": 16, "num_warps": 4},
    "mamba1": {"BE": 64, "num_warps": 4},
    "interpret": {"BP": 4, "BE": 8, "num_warps": 1},
}

_INPLACE = contextvars.ContextVar("mamba_torch_triton_inplace_cache", default=False)


@contextlib.contextmanager
def inplace_cache(enabled: bool = True):
    """Within this context the fused steps write the new cache over the input cache (when its
    arrays are contiguous float32, as lm.init_cache makes them) and return those same arrays."""
    token = _INPLACE.set(bool(enabled))
    try:
        yield
    finally:
        _INPLACE.reset(token)


_COUNTERS: dict = {}
_KEEP: list = []  # every counter buffer ever handed out: captured graphs may hold its address


def _counters(device, n: int):
    """A zeroed int32 buffer of >= n tickets on ``device`` (the kernels leave it zeroed).

    One buffer per device: two fused Mamba-2 steps must not run concurrently on one device
    (decode runs one stream; CUDA graphs replay in order)."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _KEEP.append(buf)
        _COUNTERS[device] = buf
    return buf


def _cfg(kind: str, dev) -> dict:
    c = dict(CONFIG[kind])
    if dev.type == "cpu":
        c.update({k: v for k, v in CONFIG["interpret"].items() if k in c})
    return c


def _float32_states(cache: dict, keys) -> bool:
    return all(cache[k].dtype == torch.float32 and cache[k].is_contiguous() for k in keys)


# ---- Mamba-2 ----------------------------------------------------------------------------------
@triton.jit
def _silu(v):
    return v / (1.0 + tl.exp(-v))


@triton.jit
def _conv_window(ZXr, CS, CW, CB, b, ch, cm, off_xbc, scsb, scsc, scsk,
                 K: tl.constexpr, KP: tl.constexpr, HAS_CB: tl.constexpr):
    """The new conv window (C, KP) of channels ``ch`` (xBC indices) and silu(conv) (C,)."""
    k = tl.arange(0, KP)
    old = tl.load(CS + b * scsb + ch[:, None] * scsc + (k[None, :] + 1) * scsk,
                  mask=cm[:, None] & (k < K - 1)[None, :], other=0.0).to(tl.float32)
    new = tl.load(ZXr + off_xbc + ch, mask=cm, other=0.0).to(tl.float32)
    win = tl.where((k == K - 1)[None, :], new[:, None], old)
    w = tl.load(CW + ch[:, None] * K + k[None, :], mask=cm[:, None] & (k < K)[None, :],
                other=0.0).to(tl.float32)
    acc = tl.sum(win * w, axis=1)
    if HAS_CB:
        acc += tl.load(CB + ch, mask=cm, other=0.0).to(tl.float32)
    return win, _silu(acc)


@triton.jit
def _m2_step(
    ZX, CS, CW, CB, DTB, ALOG, DV, SS, NW,
    Y, NCS, NSS, SCR, PART, CNT,
    S, H, G, N, P, M, szx, scsb, scsc, scsk, sncb, sncc, snck, sy, eps, lo, hi,
    K: tl.constexpr, KP: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    NPB: tl.constexpr, NPART: tl.constexpr, TB: tl.constexpr,
    HAS_CB: tl.constexpr, D_HP: tl.constexpr, LIMIT: tl.constexpr, RMSNORM: tl.constexpr,
    NBG: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    HG = H // G
    g = h // HG
    GN = G * N
    off_xbc = 2 * M + S
    ZXr = ZX + b * szx
    # conv of the program's x channels and of its group's B, C channels
    p = pb * BP + tl.arange(0, BP)
    pm = p < P
    cx = h * P + p
    win_x, xv = _conv_window(ZXr, CS, CW, CB, b, cx, pm, off_xbc, scsb, scsc, scsk, K, KP, HAS_CB)
    n = tl.arange(0, BN)
    nm = n < N
    cB = S + g * N + n
    cC = S + GN + g * N + n
    win_B, Bv = _conv_window(ZXr, CS, CW, CB, b, cB, nm, off_xbc, scsb, scsc, scsk, K, KP, HAS_CB)
    win_C, Cv = _conv_window(ZXr, CS, CW, CB, b, cC, nm, off_xbc, scsb, scsc, scsk, K, KP, HAS_CB)
    # dt, decay
    dt = tl.load(ZXr + off_xbc + S + 2 * GN + h).to(tl.float32) + tl.load(DTB + h).to(tl.float32)
    dt = _softplus(dt)
    if LIMIT:
        dt = tl.minimum(tl.maximum(dt, lo), hi)
    decay = tl.exp(-dt * tl.exp(tl.load(ALOG + h).to(tl.float32)))
    # state update and output
    st_off = ((b * H + h) * P + p[:, None]) * N + n[None, :]
    pn = pm[:, None] & nm[None, :]
    st = tl.load(SS + st_off, mask=pn, other=0.0).to(tl.float32)
    st = decay * st + (dt * xv)[:, None] * Bv[None, :]
    tl.store(NSS + st_off, st, mask=pn)
    y = tl.sum(st * Cv[None, :], axis=1)
    if D_HP:
        y += tl.load(DV + cx, mask=pm, other=0.0).to(tl.float32) * xv
    else:
        y += tl.load(DV + h).to(tl.float32) * xv
    z = tl.load(ZXr + 2 * M + cx, mask=pm, other=0.0).to(tl.float32)
    if RMSNORM:
        v = y
        if not NBG:
            v = y * _silu(z)
        tl.store(SCR + b * S + cx, v, mask=pm)
        tl.store(PART + (b * H + h) * NPB + pb, tl.sum(tl.where(pm, v * v, 0.0), axis=0))
    else:
        tl.store(Y + b * sy + M + cx, (y * _silu(z)).to(Y.dtype.element_ty), mask=pm)
    # every load of the conv windows is done before any shifted store (in place: same buffer)
    tl.debug_barrier()
    kk = tl.arange(0, KP)
    km = (kk < K)[None, :]
    tl.store(NCS + b * sncb + cx[:, None] * sncc + kk[None, :] * snck, win_x, mask=pm[:, None] & km)
    # the group's last program: the norm over the group and the shared B / C conv windows
    ticket = tl.atomic_add(CNT + b * G + g, 1, sem="acq_rel")
    if ticket == HG * NPB - 1:
        tl.debug_barrier()
        tl.store(NCS + b * sncb + cB[:, None] * sncc + kk[None, :] * snck, win_B, mask=nm[:, None] & km)
        tl.store(NCS + b * sncb + cC[:, None] * sncc + kk[None, :] * snck, win_C, mask=nm[:, None] & km)
        if RMSNORM:
            GS = HG * P
            q = tl.arange(0, NPART)
            parts = tl.load(PART + (b * H + g * HG) * NPB + q, mask=q < HG * NPB, other=0.0,
                            cache_modifier=".cg")
            r = 1.0 / tl.sqrt(tl.sum(parts, axis=0) / GS + eps)
            for i in range(0, GS, TB):
                jj = i + tl.arange(0, TB)
                jm = jj < GS
                cj = g * GS + jj
                vj = tl.load(SCR + b * S + cj, mask=jm, other=0.0, cache_modifier=".cg")
                oj = vj * r * tl.load(NW + cj, mask=jm, other=0.0).to(tl.float32)
                if NBG:
                    oj = oj * _silu(tl.load(ZXr + 2 * M + cj, mask=jm, other=0.0).to(tl.float32))
                tl.store(Y + b * sy + M + cj, oj.to(Y.dtype.element_ty), mask=jm)
        tl.store(CNT + b * G + g, 0)


def mamba2_step(be, params: dict, cfg, u, cache: dict):
    """Fused Mamba-2 decode step: u (B, D) -> (out (B, D), {"conv_state", "ssm_state"})."""
    from mamba_core.models import mamba2

    keys = ("conv_state", "ssm_state")
    opt = [params.get(k) for k in ("in_proj.bias", "conv1d.bias", "norm.weight", "out_proj.bias")]
    if (not runs_here(u, params["in_proj.weight"], params["conv1d.weight"], params["A_log"],
                      params["D"], params["dt_bias"], cache["conv_state"], cache["ssm_state"], *opt)
            or cfg.d_conv > 16):
        return mamba2.composed_step(be, params, cfg, u, cache)
    Bsz = u.shape[0]
    H, P, G, N, S, M, X, K = (cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.ssm_width,
                              cfg.d_mlp, cfg.conv_dim, cfg.d_conv)
    dev = u.device
    zx = F.linear(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None)
    cs, ss = cache["conv_state"], cache["ssm_state"]
    if _INPLACE.get() and _float32_states(cache, keys):
        ncs, nss = cs, ss
    else:
        ncs = torch.empty((Bsz, X, K), dtype=torch.float32, device=dev)
        nss = torch.empty((Bsz, H, P, N), dtype=torch.float32, device=dev)
    ss = ss.contiguous()
    y = torch.empty((Bsz, M + S), dtype=u.dtype, device=dev)
    lc = _cfg("mamba2", dev)
    BP = min(pow2(P), lc["BP"])
    NPB = triton.cdiv(P, BP)
    scr = torch.empty((Bsz, S), dtype=torch.float32, device=dev) if cfg.rmsnorm else y
    part = torch.empty((Bsz, H * NPB), dtype=torch.float32, device=dev) if cfg.rmsnorm else y
    lim = tuple(float(v) for v in cfg.dt_limit) != (0.0, float("inf"))
    lo, hi = (float(cfg.dt_limit[0]), min(float(cfg.dt_limit[1]), 3.0e38)) if lim else (0.0, 0.0)
    cw = params["conv1d.weight"].contiguous()
    if Bsz > 0:
        _m2_step[(Bsz, H, NPB)](
            zx, cs, cw, params["conv1d.bias"] if cfg.conv_bias else cw, params["dt_bias"],
            params["A_log"], params["D"].contiguous(), ss,
            params["norm.weight"] if cfg.rmsnorm else cw,
            y, ncs, nss, scr, part, _counters(dev, Bsz * G),
            S, H, G, N, P, M, zx.stride(0), *cs.stride(), *ncs.stride(), y.stride(0),
            float(mamba2.NORM_EPS), lo, hi,
            K=K, KP=pow2(K), BP=BP, BN=pow2(N), NPB=NPB, NPART=pow2((H // G) * NPB),
            TB=min(pow2((H // G) * P), 2048 if dev.type == "cuda" else 64),
            HAS_CB=bool(cfg.conv_bias), D_HP=bool(cfg.D_has_hdim), LIMIT=lim,
            RMSNORM=bool(cfg.rmsnorm), NBG=bool(cfg.norm_before_gate), num_warps=lc["num_warps"],
        )
    if M > 0:
        y[:, :M] = F.silu(zx[:, :M]) * zx[:, M:2 * M]
    out = F.linear(y, params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None)
    return out, {"conv_state": ncs, "ssm_state": nss}


# ---- Mamba-1 ----------------------------------------------------------------------------------
@triton.jit
def _m1_step(
    XC, XZ, XD, WDT, BDT, ALOG, DV, SS, Y, NSS,
    E, N, R, sxc, sxz, sxd, sy,
    BE: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr, HAS_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    em = e < E
    n = tl.arange(0, NP)
    nm = n < N
    r = tl.arange(0, RP)
    rm = r < R
    # delta = dt_proj(dt_r) + bias, softplus
    dtr = tl.load(XD + b * sxd + r, mask=rm, other=0.0).to(tl.float32)
    wdt = tl.load(WDT + e[:, None] * R + r[None, :], mask=em[:, None] & rm[None, :], other=0.0).to(tl.float32)
    dt = tl.sum(wdt * dtr[None, :], axis=1) + tl.load(BDT + e, mask=em, other=0.0).to(tl.float32)
    dt = _softplus(dt)
    Bv = tl.load(XD + b * sxd + R + n, mask=nm, other=0.0).to(tl.float32)
    Cv = tl.load(XD + b * sxd + R + N + n, mask=nm, other=0.0).to(tl.float32)
    x = tl.load(XC + b * sxc + e, mask=em, other=0.0).to(tl.float32)
    en = em[:, None] & nm[None, :]
    A = -tl.exp(tl.load(ALOG + e[:, None] * N + n[None, :], mask=en, other=0.0).to(tl.float32))
    st_off = (b * E + e[:, None]) * N + n[None, :]
    h = tl.load(SS + st_off, mask=en, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(NSS + st_off, h, mask=en)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(DV + e, mask=em, other=0.0).to(tl.float32) * x
    z = tl.load(XZ + b * sxz + E + e, mask=em, other=0.0).to(tl.float32)
    tl.store(Y + b * sy + e, (y * _silu(z)).to(Y.dtype.element_ty), mask=em)


def mamba1_step(be, params: dict, cfg, u, cache: dict):
    """Fused Mamba-1 decode step: u (B, D) -> (out (B, D), {"conv_state", "ssm_state"})."""
    from mamba_core.models import mamba1

    keys = ("conv_state", "ssm_state")
    opt = [params.get(k) for k in ("in_proj.bias", "conv1d.bias", "out_proj.bias", "D")]
    if (not runs_here(u, params["in_proj.weight"], params["conv1d.weight"], params["A_log"],
                      params["x_proj.weight"], params["dt_proj.weight"], params["dt_proj.bias"],
                      cache["conv_state"], cache["ssm_state"], *opt)
            or cfg.d_conv > 16):
        return mamba1.composed_step(be, params, cfg, u, cache)
    Bsz = u.shape[0]
    E, N, K, R = cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank_value
    dev = u.device
    xz = F.linear(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None)
    cs, ss = cache["conv_state"], cache["ssm_state"]
    if _INPLACE.get() and _float32_states(cache, keys):
        ncs, nss = cs, ss
    else:
        ncs = torch.empty((Bsz, E, K), dtype=torch.float32, device=dev)
        nss = torch.empty((Bsz, E, N), dtype=torch.float32, device=dev)
    ss = ss.contiguous()
    lc = _cfg("mamba1", dev)
    xc = torch.empty((Bsz, E), dtype=u.dtype, device=dev)
    cw = params["conv1d.weight"].contiguous()
    BC = min(pow2(E), 16 if dev.type == "cpu" else 128)
    if Bsz > 0:
        _conv_step_kernel[(Bsz, triton.cdiv(E, BC))](
            xz, cs, cw, params["conv1d.bias"] if cfg.conv_bias else cw, xc, ncs,
            E, xz.stride(0), *cs.stride(),
            K=K, KP=pow2(K), BC=BC, HAS_BIAS=bool(cfg.conv_bias), SILU=True, SYNC=True,
            num_warps=4,
        )
    xd = F.linear(xc, params["x_proj.weight"])  # (B, R + 2N): dt_r, B, C
    y = torch.empty((Bsz, E), dtype=u.dtype, device=dev)
    D = params.get("D")
    BE = min(pow2(E), lc["BE"])
    if Bsz > 0:
        _m1_step[(Bsz, triton.cdiv(E, BE))](
            xc, xz, xd, params["dt_proj.weight"].contiguous(), params["dt_proj.bias"],
            params["A_log"].contiguous(), xc if D is None else D, ss, y, nss,
            E, N, R, xc.stride(0), xz.stride(0), xd.stride(0), y.stride(0),
            BE=BE, NP=pow2(N), RP=pow2(R), HAS_D=D is not None, num_warps=lc["num_warps"],
        )
    out = F.linear(y, params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None)
    return out, {"conv_state": ncs, "ssm_state": nss}


MIXER_STEPS = {"mamba2": mamba2_step, "mamba1": mamba1_step}
