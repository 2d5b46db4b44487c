"""Fused one-token decode steps (``Backend.mixer_steps``): mamba1, mamba2, mamba3.

Each step is in_proj (the backend's linear), ONE serial numba kernel for everything between the
projections, then out_proj (the backend's linear); results and cache equal
``mamba_core.models.<family>.step`` (within the dtype's tolerance). Per token the Python side
makes two linear calls, the kernel call and the fresh arrays the contract needs (y and the new
cache: the caller's cache is never modified, so the new one cannot reuse its buffers).

    mamba1: conv step (shift in, dot, bias, silu) -> x_proj and dt_proj (dot products) ->
            softplus(delta + dt_bias) -> h = exp(dt A) h + dt B x, y = h C + D x -> y silu(z)
    mamba2: conv step -> dt = clamp(softplus(dt + dt_bias)) -> S = exp(dt A) S + dt x B^T,
            y = S C + D x [-> y silu(z)] -> gated grouped rmsnorm [-> silu(z0) x0 ++ y]
    mamba3: dt = softplus, trap = sigmoid, A = -max(heavy_tail, A_floor) -> rmsnorm(B), (C) per
            rank and group, + biases -> angles phi = wrap(phi + tanh(a) pi dt) -> rotate B, C ->
            S = alpha S + beta sum_r v'_r k'_r^T + gamma sum_r v_r B_r^T, y_r = S C_r + D v_r ->
            gate (or gated head norm) -> sum_r y_r mimo_o_r

Kernels are serial (no thread pool to wake per token; one (batch row, head) after the other);
their O(channels) work arrays are arguments (``scratch``), so a caller that keeps them (the
StaticDecoder) allocates nothing per call;
every sum runs in a fixed order that depends only on the row's own data, so a row's result is
the same whatever the batch (batch-invariant when the linear is). Sums over the state axis N use
8 independent partial sums (lane j takes n = j mod 8) added in a fixed order at the end: the
lanes vectorise without reassociation.
"""

from __future__ import annotations

import math

import numpy as np

from mamba_backend_cpu_numpy._nb import NJIT_SERIAL, c, njit
from mamba_backend_cpu_numpy import linear as _linear

LANES = 8
TWO_PI = 2.0 * math.pi


@njit(**NJIT_SERIAL)
def _silu(v):
    return v / (1.0 + np.exp(-v))


@njit(**NJIT_SERIAL)
def _softplus(v):
    return v if v > 20.0 else np.log1p(np.exp(v))


@njit(**NJIT_SERIAL)
def _conv(xin, state, w, bias, has_bias, out, new):
    """One conv step over C channels: new = shift(state) <- xin; out = silu(w . new + bias)."""
    C, K = w.shape
    for ch in range(C):
        acc = 0.0
        for k in range(K):
            v = state[ch, k + 1] if k < K - 1 else xin[ch]
            new[ch, k] = v
            acc += w[ch, k] * v
        if has_bias:
            acc += bias[ch]
        out[ch] = acc / (1.0 + np.exp(-acc))


@njit(**NJIT_SERIAL)
def _dot(a, b, lanes):
    """sum_k a[k] b[k] with 8 partial sums (k mod 8) added in order, then the tail."""
    K = a.shape[0]
    K8 = K - K % LANES
    for j in range(LANES):
        lanes[j] = 0.0
    for k0 in range(0, K8, LANES):
        for j in range(LANES):
            lanes[j] += a[k0 + j] * b[k0 + j]
    s = lanes[0]
    for j in range(1, LANES):
        s += lanes[j]
    for k in range(K8, K):
        s += a[k] * b[k]
    return s


# ---- Mamba-1 ------------------------------------------------------------------------------
@njit(**NJIT_SERIAL)
def _m1(xz, conv_state, conv_w, conv_b, has_cb, xproj_w, dtproj_w, dt_bias, A_log, D, ssm_state,
        y, conv_new, ssm_new, xc, xdbl, lanes, acc, dA):
    Bsz = xz.shape[0]
    E, N = A_log.shape
    R = dtproj_w.shape[1]
    f = y.dtype.type
    for b in range(Bsz):
        _conv(xz[b, :E], conv_state[b], conv_w, conv_b, has_cb, xc, conv_new[b])
        for j in range(xproj_w.shape[0]):
            xdbl[j] = _dot(xproj_w[j], xc, lanes)
        Bv = xdbl[R:R + N]
        Cv = xdbl[R + N:R + 2 * N]
        for e in range(E):
            d = f(_softplus(_dot(dtproj_w[e], xdbl[:R], lanes) + dt_bias[e]))
            dx = d * xc[e]
            si = ssm_state[b, e]
            so = ssm_new[b, e]
            for n in range(N):
                dA[n] = np.exp(-d * np.exp(A_log[e, n]))
            for n in range(N):
                so[n] = dA[n] * si[n] + dx * Bv[n]
            t = _dot(so, Cv, acc)
            y[b, e] = (t + D[e] * xc[e]) * _silu(xz[b, E + e])


def mamba1_step(be, params, cfg, u, cache):
    """Fused Mamba-1 decode step (the signature and results of mamba_core.models.mamba1.step)."""
    lin = _linear_of(be)
    wide = np.float64 if u.dtype == np.float64 else np.float32
    E, N, K = cfg.d_inner, cfg.d_state, cfg.d_conv
    Bsz = u.shape[0]
    xz = c(lin(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None), wide)
    conv_b = params["conv1d.bias"] if cfg.conv_bias else None
    y = np.empty((Bsz, E), wide)
    conv_new = np.empty((Bsz, E, K), wide)
    ssm_new = np.empty((Bsz, E, N), wide)
    _m1(xz, c(cache["conv_state"], wide), c(params["conv1d.weight"].reshape(E, K), wide),
        c(conv_b, wide) if conv_b is not None else xz[0], conv_b is not None,
        c(params["x_proj.weight"], wide), c(params["dt_proj.weight"], wide),
        c(params["dt_proj.bias"], wide), c(params["A_log"], wide), c(params["D"], wide),
        c(cache["ssm_state"], wide), y, conv_new, ssm_new, *scratch("mamba1", cfg, wide))
    out = lin(y.astype(u.dtype, copy=False), params["out_proj.weight"],
              params["out_proj.bias"] if cfg.bias else None)
    return out, {"conv_state": conv_new, "ssm_state": ssm_new}


# ---- Mamba-2 ------------------------------------------------------------------------------
@njit(**NJIT_SERIAL)
def _m2(zx, conv_state, conv_w, conv_b, has_cb, dt_bias, A_log, D, norm_w, ssm_state,
        M, S, G, lo, hi, limited, rmsnorm, norm_before_gate, y, conv_new, ssm_new, xbc, acc):
    Bsz = zx.shape[0]
    H, P, N = ssm_state.shape[1], ssm_state.shape[2], ssm_state.shape[3]
    X = conv_w.shape[0]
    Hg = H // G
    GN = G * N
    o_z, o_x = 2 * M, 2 * M + S
    o_dt = o_x + X
    f = y.dtype.type
    for b in range(Bsz):
        _conv(zx[b, o_x:o_x + X], conv_state[b], conv_w, conv_b, has_cb, xbc, conv_new[b])
        for h in range(H):
            g = h // Hg
            Bv = xbc[S + g * N:S + (g + 1) * N]
            Cv = xbc[S + GN + g * N:S + GN + (g + 1) * N]
            d = _softplus(zx[b, o_dt + h] + dt_bias[h])
            if limited:
                d = min(max(d, lo), hi)
            d = f(d)
            da = f(np.exp(d * -np.exp(A_log[h])))
            for p in range(P):
                xv = xbc[h * P + p]
                dx = d * xv
                si = ssm_state[b, h, p]
                so = ssm_new[b, h, p]
                for n in range(N):
                    so[n] = da * si[n] + dx * Bv[n]
                v = _dot(so, Cv, acc) + D[h, p] * xv
                if not rmsnorm:
                    v = v * _silu(zx[b, o_z + h * P + p])
                y[b, M + h * P + p] = v
        if rmsnorm:  # gated rmsnorm over groups of S / G channels
            gs = S // G
            for g in range(G):
                ss = 0.0
                for i in range(g * gs, (g + 1) * gs):
                    v = y[b, M + i]
                    if not norm_before_gate:
                        v = v * _silu(zx[b, o_z + i])
                        y[b, M + i] = v
                    ss += v * v
                r = 1.0 / np.sqrt(ss / gs + 1e-5)
                for i in range(g * gs, (g + 1) * gs):
                    v = y[b, M + i] * r * norm_w[i]
                    if norm_before_gate:
                        v = v * _silu(zx[b, o_z + i])
                    y[b, M + i] = v
        for i in range(M):
            y[b, i] = _silu(zx[b, i]) * zx[b, M + i]


def mamba2_step(be, params, cfg, u, cache):
    """Fused Mamba-2 decode step (the signature and results of mamba_core.models.mamba2.step)."""
    lin = _linear_of(be)
    wide = np.float64 if u.dtype == np.float64 else np.float32
    H, P, N, K, X = cfg.nheads, cfg.headdim, cfg.d_state, cfg.d_conv, cfg.conv_dim
    Bsz = u.shape[0]
    zx = c(lin(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None), wide)
    conv_b = params["conv1d.bias"] if cfg.conv_bias else None
    D = np.broadcast_to(c(params["D"], wide).reshape(H, -1), (H, P))
    lo, hi = (float(v) for v in cfg.dt_limit)
    y = np.empty((Bsz, cfg.d_inner), wide)
    conv_new = np.empty((Bsz, X, K), wide)
    ssm_new = np.empty((Bsz, H, P, N), wide)
    _m2(zx, c(cache["conv_state"], wide), c(params["conv1d.weight"].reshape(X, K), wide),
        c(conv_b, wide) if conv_b is not None else zx[0], conv_b is not None,
        c(params["dt_bias"], wide), c(params["A_log"], wide), D,
        c(params["norm.weight"], wide) if cfg.rmsnorm else zx[0], c(cache["ssm_state"], wide),
        cfg.d_mlp, cfg.ssm_width, cfg.ngroups, lo, hi, (lo, hi) != (0.0, float("inf")),
        bool(cfg.rmsnorm), bool(cfg.norm_before_gate), y, conv_new, ssm_new,
        *scratch("mamba2", cfg, wide))
    out = lin(y.astype(u.dtype, copy=False), params["out_proj.weight"],
              params["out_proj.bias"] if cfg.bias else None)
    return out, {"conv_state": conv_new, "ssm_state": ssm_new}


# ---- Mamba-3 ------------------------------------------------------------------------------
@njit(**NJIT_SERIAL)
def _wrap(a):
    """a mod 2 pi in [0, 2 pi) (as mamba_core.ops.mamba3._wrap)."""
    r = a - TWO_PI * np.floor(a / TWO_PI)
    if r < 0.0:
        r += TWO_PI
    if r >= TWO_PI:
        r -= TWO_PI
    return r


@njit(**NJIT_SERIAL)
def _bc(zx, off, b, norm_w, bias, R, G, H, N, S, halves, cosv, sinv, out):
    """out[r, h, :] = rope(rmsnorm(v[r, g(h)]) * norm_w + bias[h, r], phi_h) for one row b."""
    Hg = H // G
    for r in range(R):
        for g in range(G):
            base = off + (r * G + g) * N
            ss = 0.0
            for n in range(N):
                v = zx[b, base + n]
                ss += v * v
            rr = 1.0 / np.sqrt(ss / N + 1e-5)
            for hh in range(Hg):
                h = g * Hg + hh
                for n in range(N):
                    out[r, h, n] = zx[b, base + n] * rr * norm_w[n] + bias[h, r, n]
                for i in range(S):
                    if halves:
                        ia, ib = i, i + N // 2
                    else:
                        ia, ib = 2 * i, 2 * i + 1
                    a0, b0 = out[r, h, ia], out[r, h, ib]
                    cs, sn = cosv[h, i], sinv[h, i]
                    out[r, h, ia] = a0 * cs - b0 * sn
                    out[r, h, ib] = a0 * sn + b0 * cs


@njit(**NJIT_SERIAL)
def _m3(zx, dt_bias, Bn_w, Cn_w, B_bias, C_bias, D, mx, mz, mo, is_mimo, out_norm, norm_w, A_floor,
        G, halves, angle_state, ssm_state, k_state, v_state,
        y, angle_new, ssm_new, k_new, v_new, Bh, Ch, cosv, sinv, dts, vc, vp, yr, lanes):
    Bsz = zx.shape[0]
    H, P, N = ssm_state.shape[1], ssm_state.shape[2], ssm_state.shape[3]
    R = k_state.shape[1]
    S = angle_state.shape[2]
    E = H * P
    RGN = R * G * N
    o_x, o_B = E, 2 * E
    o_C = o_B + RGN
    o_dt = o_C + RGN
    o_A, o_tr = o_dt + H, o_dt + 2 * H
    o_ang = o_dt + 3 * H
    f = y.dtype.type
    for b in range(Bsz):
        # dt and the angles phi = wrap(wrap(tanh(a) pi dt) + wrap(phi_prev))
        for h in range(H):
            dts[h] = _softplus(zx[b, o_dt + h] + dt_bias[h])
            for i in range(S):
                th = np.tanh(zx[b, o_ang + i]) * math.pi
                phi = _wrap(_wrap(th * dts[h]) + _wrap(angle_state[b, h, i]))
                angle_new[b, h, i] = phi
                cosv[h, i] = np.cos(phi)
                sinv[h, i] = np.sin(phi)
        _bc(zx, o_B, b, Bn_w, B_bias, R, G, H, N, S, halves, cosv, sinv, Bh)
        _bc(zx, o_C, b, Cn_w, C_bias, R, G, H, N, S, halves, cosv, sinv, Ch)
        for h in range(H):
            d = dts[h]
            ddA = zx[b, o_A + h]
            ht = max(ddA, 0.0) + 1.0 / (1.0 - min(ddA, 0.0))
            A = -max(ht, A_floor)
            tv = zx[b, o_tr + h]
            e = np.exp(-abs(tv))
            tr = 1.0 / (1.0 + e) if tv >= 0 else e / (1.0 + e)
            alpha = np.exp(A * d)
            beta = (1.0 - tr) * d * alpha
            gamma = tr * d
            for r in range(R):
                for p in range(P):
                    m = mx[h, r, p] if is_mimo else 1.0
                    vc[r, p] = zx[b, o_x + h * P + p] * m
                    vp[r, p] = v_state[b, h, p] * m
            alpha, beta, gamma = f(alpha), f(beta), f(gamma)
            for p in range(P):
                si = ssm_state[b, h, p]
                so = ssm_new[b, h, p]
                for n in range(N):
                    so[n] = alpha * si[n]
                for r in range(R):
                    cp = beta * vp[r, p]
                    cc = gamma * vc[r, p]
                    kr = k_state[b, r, h]
                    br = Bh[r, h]
                    for n in range(N):
                        so[n] += cp * kr[n] + cc * br[n]
                for r in range(R):
                    yr[r, p] = _dot(so, Ch[r, h], lanes)
            # y_r = S C_r + D v_r, gate (or gated head norm), then sum_r mimo_o
            for p in range(P):
                y[b, h * P + p] = 0.0
            for r in range(R):
                ss = 0.0
                for p in range(P):
                    v = yr[r, p] + D[h] * vc[r, p]
                    yr[r, p] = v
                    ss += v * v
                rr = 1.0 / np.sqrt(ss / P + 1e-5)
                for p in range(P):
                    zz = zx[b, h * P + p] * (mz[h, r, p] if is_mimo else 1.0)
                    v = yr[r, p]
                    if out_norm:
                        v = v * rr * norm_w[h * P + p]
                    v = v * _silu(zz)
                    if is_mimo:
                        y[b, h * P + p] += v * mo[h, r, p]
                    else:
                        y[b, h * P + p] = v
            for p in range(P):
                v_new[b, h, p] = zx[b, o_x + h * P + p]
        for r in range(R):
            for h in range(H):
                for n in range(N):
                    k_new[b, r, h, n] = Bh[r, h, n]


def mamba3_step(be, params, cfg, u, cache):
    """Fused Mamba-3 decode step (the signature and results of mamba_core.models.mamba3.step)."""
    lin = _linear_of(be)
    wide = np.float64 if u.dtype == np.float64 else np.float32
    H, P, N, R, S = cfg.nheads, cfg.headdim, cfg.d_state, cfg.mimo_rank, cfg.num_rope_angles
    Bsz = u.shape[0]
    zx = c(lin(u, params["in_proj.weight"]), wide)
    one = zx[0, :1].reshape(1, 1, 1)
    mimo = [c(params[k], wide) if cfg.is_mimo else one for k in ("mimo_x", "mimo_z", "mimo_o")]
    y = np.empty((Bsz, cfg.d_inner), wide)
    angle_new = np.empty((Bsz, H, S), wide)
    ssm_new = np.empty((Bsz, H, P, N), wide)
    k_new = np.empty((Bsz, R, H, N), wide)
    v_new = np.empty((Bsz, H, P), wide)
    _m3(zx, c(params["dt_bias"], wide), c(params["B_norm.weight"], wide),
        c(params["C_norm.weight"], wide), c(params["B_bias"], wide), c(params["C_bias"], wide),
        c(params["D"], wide), mimo[0], mimo[1], mimo[2], bool(cfg.is_mimo),
        bool(cfg.is_outproj_norm), c(params["norm.weight"], wide) if cfg.is_outproj_norm else zx[0],
        float(cfg.A_floor), cfg.ngroups, bool(cfg.is_mimo), c(cache["angle_state"], wide),
        c(cache["ssm_state"], wide), c(cache["k_state"], wide), c(cache["v_state"], wide),
        y, angle_new, ssm_new, k_new, v_new, *scratch("mamba3", cfg, wide))
    out = lin(y.astype(u.dtype, copy=False), params["out_proj.weight"])
    return out, {"angle_state": angle_new, "ssm_state": ssm_new,
                 "k_state": k_new.astype(u.dtype, copy=False),
                 "v_state": v_new.astype(u.dtype, copy=False)}


def scratch(family: str, cfg, dtype) -> tuple:
    """The work arrays the kernel of ``family`` takes last (O(channels), any contents; the
    StaticDecoder keeps one set per model, the functional steps make one per call):
    mamba1 xc (E), xdbl (R + 2N), lanes, acc (8), dA (N); mamba2 xbc (conv_dim), acc (8);
    mamba3 Bh, Ch (R, H, N), cos, sin (H, S), dt (H), vc, vp, yr (R, P), lanes (8)."""
    e = lambda *shape: np.empty(shape, dtype)  # noqa: E731
    if family == "mamba1":
        return (e(cfg.d_inner), e(cfg.dt_rank_value + 2 * cfg.d_state), e(LANES), e(LANES),
                e(cfg.d_state))
    if family == "mamba2":
        return (e(cfg.conv_dim), e(LANES))
    R, H, N, P, S = cfg.mimo_rank, cfg.nheads, cfg.d_state, cfg.headdim, cfg.num_rope_angles
    return (e(R, H, N), e(R, H, N), e(H, S), e(H, S), e(H), e(R, P), e(R, P), e(R, P), e(LANES))


def _linear_of(be):
    """The backend's own linear kernel (called directly: the op table's argument checks cost
    more than a decode-sized matmul)."""
    return be.kernels.get("linear") or _linear.blas_linear


MIXER_STEPS = {"mamba1": mamba1_step, "mamba2": mamba2_step, "mamba3": mamba3_step}
