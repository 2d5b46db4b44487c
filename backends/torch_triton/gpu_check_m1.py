"""GPU check of the torch_triton Mamba-1 scan, RMSNorm and conv1d kernels and of CUDA-graph decode.

    python backends/torch_triton/gpu_check_m1.py OUT_DIR      (or: from gpu_check_m1 import run)

1. correctness at small shapes on the GPU (compiled Triton, not the interpreter): every kernel
   (forward, VJP, step) against mamba-core's float64 reference, float32 (tol 2e-4) and bfloat16
   (tol 4e-2);
2. timings (triton.testing.do_bench medians, ms) at B=8, L=2048, E=2048, N=16: the Mamba-1
   scan forward and forward+backward (the VJP recomputes the forward), a small sweep of its
   launch shapes, gated RMSNorm fwd / fwd+bwd, causal conv1d fwd / fwd+bwd, in fp32 and bf16,
   with the bytes each must move and the bandwidth reached;
3. decode of a ~370M random-weight Mamba-2 LM in bf16 (d_model 1024, 48 layers, vocab 50280,
   d_state 128, headdim 64, expand 2) at batch 1 and 16: eager lm.step vs the CUDA graph
   (CudaGraphDecoder), tokens/s, and the graph's logits against eager ones.
Needs on the device: torch, triton, numpy, pluggy and array-api-compat (pure Python; the device
machine has no network: carry a copy, e.g. put it under an ignored folder and add that folder
to PYTHONPATH), with PYTHONPATH=<repo>:<repo>/backends/torch_triton when nothing is installed.
First run (H100, torch 2.11, triton 3.6): all kernels within tolerance; decode batch 1
53.6 ms eager -> 1.72 ms with the graph, batch 16 64.1 -> 3.68 ms.
Every part runs in try/except: errors are printed and recorded, the rest goes on. Results go to
OUT_DIR/gpu_check_m1.json; a short table is printed last.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np


def _rel(got, want):
    import torch

    g = got.detach().to("cpu", torch.float64).numpy()
    w = np.asarray(want, np.float64)
    if g.shape != w.shape:
        return float("inf")
    if not np.all(np.isfinite(g)):
        return float("nan")
    scale = np.max(np.abs(w)) if w.size else 0.0
    if scale == 0.0:  # an exactly-zero truth (e.g. dA at L=1 from a zero state): absolute error
        return float(np.max(np.abs(g))) if g.size else 0.0
    return float(np.max(np.abs(g - w)) / scale)


def _part(results, name, fn):
    print(f"== {name}", flush=True)
    t0 = time.time()
    try:
        results[name] = fn()
    except Exception as exc:  # keep going: the lead reads the JSON
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"   ({time.time() - t0:.1f} s)", flush=True)


# ---- 1. correctness ----------------------------------------------------------------------
def _correctness():
    import torch

    from mamba_backend_torch_triton.kernels import conv1d as kc
    from mamba_backend_torch_triton.kernels import norm as kn
    from mamba_backend_torch_triton.kernels import selective_scan as ks
    from mamba_core.ops import conv1d as rc
    from mamba_core.ops import norm as rn
    from mamba_core.ops import selective_scan as rs

    out = {}
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    tol = {"float32": 2e-4, "bfloat16": 4e-2}
    rng = np.random.default_rng(0)

    def rnd(a, dt):
        return None if a is None else torch.as_tensor(a).to(tdt[dt]).double().numpy()

    def cu(a, dt, wide=False):
        return None if a is None else torch.as_tensor(a).to(torch.float32 if wide else tdt[dt]).cuda()

    def record(key, err, dt):
        out[key] = {"err": err, "tol": tol[dt], "ok": bool(err < tol[dt])}

    for dt in ("float32", "bfloat16"):
        for (Bz, L, E, G, N, h0) in ((2, 37, 6, 2, 4, True), (2, 300, 64, 1, 16, True), (1, 1, 4, 1, 3, False)):
            inp = dict(u=rng.standard_normal((Bz, L, E)), delta=rng.standard_normal((Bz, L, E)),
                       A=-np.exp(rng.uniform(-1, 1.5, (E, N))), B=rng.standard_normal((Bz, L, G, N)),
                       C=rng.standard_normal((Bz, L, G, N)), D=rng.standard_normal(E),
                       z=rng.standard_normal((Bz, L, E)), delta_bias=0.3 * rng.standard_normal(E),
                       initial_state=rng.standard_normal((Bz, E, N)) if h0 else None)
            ref_in = {k: (v if k in ("A", "initial_state") else rnd(v, dt)) for k, v in inp.items()}
            args = {k: cu(v, dt, wide=k in ("A", "initial_state")) for k, v in inp.items()}
            tag = f"scan {dt} B={Bz},L={L},E={E},G={G},N={N}"
            y, h = ks.selective_scan(**args, delta_softplus=True)
            ry, rh = rs.selective_scan_ref(**ref_in, delta_softplus=True)
            record(tag + " fwd y", _rel(y, ry), dt)
            record(tag + " fwd h", _rel(h, rh), dt)
            st = args["initial_state"] if h0 else torch.zeros((Bz, E, N), device="cuda")
            ys = []
            for t in range(L):
                yt, st = ks.selective_scan_step(args["u"][:, t], args["delta"][:, t], args["A"], args["B"][:, t],
                                                args["C"][:, t], st, args["D"], args["z"][:, t],
                                                args["delta_bias"], True)
                ys.append(yt)
            record(tag + " step y", _rel(torch.stack(ys, 1), ry), dt)
            record(tag + " step h", _rel(st, rh), dt)
            dy, dh = rng.standard_normal(ry.shape), rng.standard_normal(rh.shape)
            got = ks.selective_scan_vjp((cu(dy, dt), cu(dh, dt, True)), **args, delta_softplus=True)
            want = rs.selective_scan_vjp_ref((rnd(dy, dt), dh), **ref_in, delta_softplus=True)
            for k, v in got.items():
                record(tag + f" vjp {k}", _rel(v, want[k]), dt)
        for (shape, gs, nbg) in (((4, 33, 256), 64, False), ((3, 2048), None, True), ((5, 96), 32, False)):
            x, z = rng.standard_normal(shape), 2 * rng.standard_normal(shape)
            w = 1 + 0.3 * rng.standard_normal(shape[-1])
            tag = f"rmsnorm {dt} {shape} gs={gs} nbg={nbg}"
            y = kn.rmsnorm(cu(x, dt), cu(w, dt), 1e-5, cu(z, dt), gs, nbg)
            record(tag + " fwd", _rel(y, rn.rmsnorm_ref(rnd(x, dt), rnd(w, dt), 1e-5, rnd(z, dt), gs, nbg)), dt)
            dy = rng.standard_normal(shape)
            got = kn.rmsnorm_vjp(cu(dy, dt), cu(x, dt), cu(w, dt), 1e-5, cu(z, dt), gs, nbg)
            want = rn.rmsnorm_vjp_ref(rnd(dy, dt), rnd(x, dt), rnd(w, dt), 1e-5, rnd(z, dt), gs, nbg)
            for k, v in got.items():
                record(tag + f" vjp {k}", _rel(v, want[k]), dt)
            r = rng.standard_normal(shape)
            yy, res = kn.add_rmsnorm(cu(x, dt), cu(r, "float32"), cu(w, dt), 1e-5, True)
            ry, rres = rn.add_rmsnorm_ref(rnd(x, dt), r, rnd(w, dt))
            record(tag + " add_rmsnorm y", _rel(yy, ry), dt)
            record(tag + " add_rmsnorm res", _rel(res, rres), "float32")
            got = kn.add_rmsnorm_vjp((cu(dy, dt), cu(r, dt)), cu(x, dt), cu(r, "float32"), cu(w, dt), 1e-5, True)
            want = rn.add_rmsnorm_vjp_ref((rnd(dy, dt), rnd(r, dt)), rnd(x, dt), r, rnd(w, dt))
            for k, v in got.items():
                record(tag + f" add_rmsnorm vjp {k}", _rel(v, want[k]), dt)
        for (Bz, L, C, K, h0) in ((2, 9, 5, 4, True), (2, 300, 200, 4, True), (1, 2, 3, 4, True), (2, 64, 130, 3, False)):
            x, w, b = rng.standard_normal((Bz, L, C)), rng.standard_normal((C, K)) / 2, rng.standard_normal(C)
            s0 = rng.standard_normal((Bz, C, K)) if h0 else None
            tag = f"conv1d {dt} B={Bz},L={L},C={C},K={K}"
            y, fs = kc.causal_conv1d(cu(x, dt), cu(w, dt), cu(b, dt), cu(s0, dt), "silu")
            ry, rfs = rc.causal_conv1d_ref(rnd(x, dt), rnd(w, dt), rnd(b, dt), rnd(s0, dt), "silu")
            record(tag + " fwd y", _rel(y, ry), dt)
            record(tag + " fwd state", _rel(fs, rfs), dt)
            st = cu(s0 if h0 else np.zeros((Bz, C, K)), dt, True)
            ys = []
            for t in range(L):
                yt, st = kc.causal_conv1d_step(cu(x, dt)[:, t], st, cu(w, dt), cu(b, dt), "silu")
                ys.append(yt)
            record(tag + " step y", _rel(torch.stack(ys, 1), ry), dt)
            dy, df = rng.standard_normal(ry.shape), rng.standard_normal(rfs.shape)
            got = kc.causal_conv1d_vjp((cu(dy, dt), cu(df, dt)), cu(x, dt), cu(w, dt), cu(b, dt), cu(s0, dt), "silu")
            want = rc.causal_conv1d_vjp_ref((rnd(dy, dt), rnd(df, dt)), rnd(x, dt), rnd(w, dt), rnd(b, dt),
                                            rnd(s0, dt), "silu")
            for k, v in got.items():
                record(tag + f" vjp {k}", _rel(v, want[k]), dt)
    bad = {k: v for k, v in out.items() if not v["ok"]}
    print(f"   correctness: {len(out) - len(bad)}/{len(out)} within tolerance")
    for k, v in bad.items():
        print(f"   FAIL {k}: {v['err']:.3e} (tol {v['tol']:.0e})")
    return {"all_ok": not bad, "checks": out}


# ---- 2. op timings ------------------------------------------------------------------------
def _bench(fn, reps=50):
    import triton

    return float(triton.testing.do_bench(fn, warmup=10, rep=reps, return_mode="median"))


def _op_timings():
    import torch

    from mamba_backend_torch_triton.kernels import conv1d as kc
    from mamba_backend_torch_triton.kernels import norm as kn
    from mamba_backend_torch_triton.kernels import selective_scan as ks

    Bz, L, E, N, K = 8, 2048, 2048, 16, 4
    res = {"shape": dict(B=Bz, L=L, E=E, N=N, K=K)}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        g = torch.Generator(device="cuda").manual_seed(0)
        r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
        u, delta, z = r(Bz, L, E).to(dt), (r(Bz, L, E) * 0.5 - 2).to(dt), r(Bz, L, E).to(dt)
        A = -torch.exp(torch.rand(E, N, device="cuda"))
        Bm, Cm = r(Bz, L, 1, N).to(dt), r(Bz, L, 1, N).to(dt)
        D, db = r(E), r(E) * 0.1
        dy = r(Bz, L, E).to(dt)
        esz = u.element_size()
        io = 4 * Bz * L * E * esz + 2 * Bz * L * N * esz  # u, delta, z, y + B, C
        fwd = lambda: ks.selective_scan(u, delta, A, Bm, Cm, D, z, db, True)  # noqa: E731
        bwd = lambda: ks.selective_scan_vjp((dy, None), u, delta, A, Bm, Cm, D, z, db, True)  # noqa: E731
        t_f = _bench(fwd)
        t_fb = t_f + _bench(bwd)
        res[f"scan fwd {name}"] = {"ms": t_f, "GB/s": io / t_f / 1e6, "bytes_floor": io}
        # fwd+bwd: forward, then the VJP (reads u, delta, z, B, C, dy; writes du, ddelta, dz, dB, dC)
        io_b = io + (4 * Bz * L * E + 2 * Bz * L * N) * esz
        res[f"scan fwd+bwd {name}"] = {"ms": t_fb, "GB/s": (io + io_b) / t_fb / 1e6}
        print(f"   scan {name}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms", flush=True)
        x, zz, w = r(Bz * L, E).to(dt), r(Bz * L, E).to(dt), r(E)
        t = _bench(lambda: kn.rmsnorm(x, w, 1e-5, zz, E // 8, False))
        io_n = 3 * Bz * L * E * esz
        res[f"rmsnorm gated fwd {name}"] = {"ms": t, "GB/s": io_n / t / 1e6}
        dyn = r(Bz * L, E).to(dt)
        tb = _bench(lambda: kn.rmsnorm_vjp(dyn, x, w, 1e-5, zz, E // 8, False))
        res[f"rmsnorm gated fwd+bwd {name}"] = {"ms": t + tb, "GB/s": (io_n + 5 * Bz * L * E * esz) / (t + tb) / 1e6}
        res2 = r(Bz * L, E)
        t = _bench(lambda: kn.add_rmsnorm(x, res2, w, 1e-5, True))
        res[f"add_rmsnorm fwd {name}"] = {"ms": t, "GB/s": (2 * esz + 8) * Bz * L * E / t / 1e6}
        cw, cb = r(E, K), r(E)
        t = _bench(lambda: kc.causal_conv1d(u, cw, cb, None, "silu"))
        io_c = 2 * Bz * L * E * esz
        res[f"conv1d fwd {name}"] = {"ms": t, "GB/s": io_c / t / 1e6}
        tb = _bench(lambda: kc.causal_conv1d_vjp((dy, None), u, cw, cb, None, "silu"))
        res[f"conv1d fwd+bwd {name}"] = {"ms": t + tb, "GB/s": (io_c + 3 * Bz * L * E * esz) / (t + tb) / 1e6}
        print(f"   norm/conv {name} done", flush=True)
    return res


def _scan_sweep():
    import torch

    from mamba_backend_torch_triton.kernels import selective_scan as ks

    Bz, L, E, N = 8, 2048, 2048, 16
    g = torch.Generator(device="cuda").manual_seed(1)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    u, delta, z, dy = r(Bz, L, E), r(Bz, L, E) * 0.5 - 2, r(Bz, L, E), r(Bz, L, E)
    A = -torch.exp(torch.rand(E, N, device="cuda"))
    Bm, Cm, D, db = r(Bz, L, 1, N), r(Bz, L, 1, N), r(E), r(E) * 0.1
    saved = {k: dict(v) for k, v in ks.CONFIG.items()}
    out = {}
    try:
        for T, BE, nw in ((16, 32, 8), (16, 16, 4), (32, 16, 8), (8, 32, 4), (32, 32, 8), (16, 64, 8)):
            ks.CONFIG["fwd"] = ks.CONFIG["fwd_f32"] = {"T": T, "BE": BE, "num_warps": nw}  # float32 reads fwd_f32
            ks.CONFIG["bwd"] = ks.CONFIG["bwd_f32"] = {"T": T, "BE": BE, "num_warps": nw}
            key = f"T={T},BE={BE},warps={nw}"
            try:
                tf = _bench(lambda: ks.selective_scan(u, delta, A, Bm, Cm, D, z, db, True), 30)
                tb = _bench(lambda: ks.selective_scan_vjp((dy, None), u, delta, A, Bm, Cm, D, z, db, True), 30)
                out[key] = {"fwd_ms": tf, "vjp_ms": tb}
                print(f"   {key}: fwd {tf:.3f} ms, vjp {tb:.3f} ms", flush=True)
            except Exception as exc:
                out[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                print(f"   {key}: {out[key]['error']}", flush=True)
    finally:
        ks.CONFIG.update(saved)
    return out


# ---- 3. decode ----------------------------------------------------------------------------
def _decode():
    import torch

    from mamba_backend_torch_triton.graphs import CudaGraphDecoder
    from mamba_core.models import lm
    from mamba_backend_torch_triton.backend import TorchTritonBackend

    be = TorchTritonBackend()  # direct: works without the plugin's entry point installed
    cfg = lm.LMConfig(d_model=1024, n_layer=48, vocab_size=50280,
                      ssm_cfg={"layer": "Mamba2", "d_state": 128, "headdim": 64, "expand": 2})
    t0 = time.time()
    np_params = lm.init_params(cfg, np.random.default_rng(0))
    nparams = sum(v.size for v in np_params.values())
    params = lm.to_backend(be, np_params, "bfloat16")
    del np_params
    print(f"   {nparams / 1e6:.0f}M params, init {time.time() - t0:.0f} s", flush=True)
    out = {"params_M": nparams / 1e6}
    for batch in (1, 16):
        ids = torch.randint(0, cfg.vocab_size, (batch,), device="cuda")
        entry = {}
        try:
            cache = lm.init_cache(be, cfg, batch, "bfloat16")
            eager_logits, _ = lm.step(be, params, cfg, ids, cache)
            t = _bench(lambda: lm.step(be, params, cfg, ids, cache), 200)
            entry["eager_ms"] = t
            entry["eager_tok_s"] = batch * 1e3 / t
        except Exception as exc:
            traceback.print_exc()
            entry["eager_error"] = f"{type(exc).__name__}: {exc}"[:300]
            eager_logits = None
        try:
            dec = CudaGraphDecoder(be, params, cfg, dtype="bfloat16")
            dec.capture(batch)
            dec.reset(batch)
            g_logits = dec.step(ids).clone()
            if eager_logits is not None:
                entry["graph_vs_eager_rel"] = _rel(g_logits.float(), eager_logits.float().cpu().double().numpy())
            t = _bench(lambda: dec.step(ids), 200)
            entry["graph_ms"] = t
            entry["graph_tok_s"] = batch * 1e3 / t
        except Exception as exc:
            traceback.print_exc()
            entry["graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
        out[f"batch {batch}"] = entry
        print(f"   batch {batch}: {entry}", flush=True)
    # floor: each step reads every parameter once (bf16)
    out["bytes_per_step_floor"] = 2 * out["params_M"] * 1e6
    return out


def run(out_dir: str) -> dict:
    import torch
    import triton

    os.makedirs(out_dir, exist_ok=True)
    results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
               "torch": torch.__version__, "triton": triton.__version__}
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        results["error"] = "no CUDA device"
    else:
        _part(results, "correctness", _correctness)
        _part(results, "op_timings", _op_timings)
        _part(results, "scan_sweep", _scan_sweep)
        _part(results, "decode", _decode)
    path = os.path.join(out_dir, "gpu_check_m1.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"\nwrote {path}")
    print(f"device: {results['device']}  torch {results['torch']}  triton {results['triton']}")
    corr = results.get("correctness", {})
    print(f"correctness: {'all within tolerance' if corr.get('all_ok') else corr.get('error', 'FAILURES (see above)')}")
    for k, v in (results.get("op_timings") or {}).items():
        if isinstance(v, dict) and "ms" in v:
            print(f"  {k:32s} {v['ms']:9.3f} ms  {v.get('GB/s', 0):8.0f} GB/s")
    for k, v in (results.get("decode") or {}).items():
        if isinstance(v, dict):
            print(f"  decode {k}: {v}")
    return results


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "gpu_check_out"))
