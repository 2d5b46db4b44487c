"""GPU check of the cuda_cupy backend: compile, kernel checks, certificate, benchmarks, decode.

    python backends/cuda_cupy/gpu_check.py OUT_DIR        (or: from gpu_check import run; run(dir))

Writes OUT_DIR/cuda_cupy.certificate.json (mamba_conformance.run) and
OUT_DIR/cuda_cupy_gpu_check.json (everything else). Each part runs in its own try/except: an error
is printed and recorded, and the next part runs. Parts (set GPU_CHECK_PARTS=compile,kernels,...
to run a subset): compile, kernels, conformance, bench, decode.
Timings: cupy.cuda.Event pairs, median of repeats after warm-up; torch_triton rows (when that
backend is installed and available) with torch.cuda.Event, on the same inputs and dtype
(float32). GPU_CHECK_BENCH_BACKENDS=cuda_cupy (default: cuda_cupy,torch_triton) limits the bench
and decode parts to the named backends; GPU_CHECK_BENCH_OPS=selective_scan,... to the named rows,
in that order; GPU_CHECK_TT_OPS likewise for torch_triton's rows alone.
GPU_CHECK_BENCH_B sets the batch; GPU_CHECK_BENCH_COMPILE_ONLY=1 runs each row's forward and VJP
once (JIT/NVRTC compiles) and times nothing: a warm-up beside other timed work.
GPU_CHECK_DECODE_KERNELS=1 adds, for each backend's batch-1 graph (and cuda_cupy's graph
without PDL, whose kernels do not overlap), its kernels' device times inside the graph replays
(torch.profiler through benchmarks/gpu/ncu_targets.py's kernel_table; needs torch and this
checkout's benchmarks/), taken after every timing: where a token's time goes, kernel by kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

# benchmark shapes of the issue
BENCH = dict(B=8, L=2048, E=2048, N1=16, H=32, P=64, N=128, G=1, R=4, K=4)
#: GPU_CHECK_BENCH_B overrides the batch (B=1 with GPU_CHECK_BENCH_COMPILE_ONLY=1 compiles a
#: backend's kernels for the B=8 rows without timing anything: the kernels do not take B)
BENCH["B"] = int(os.environ.get("GPU_CHECK_BENCH_B", BENCH["B"]))
DECODE = dict(d_model=1024, n_layer=48, vocab_size=50280, d_state=128, headdim=64)


def _log(*a):
    print("[gpu_check]", *a, flush=True)


def _part(report, name, fn):
    parts = os.environ.get("GPU_CHECK_PARTS")
    if parts and name not in parts.split(","):
        return
    t0 = time.perf_counter()
    _log(f"--- {name}")
    try:
        report[name] = fn()
    except Exception as exc:  # keep going: every part is independent
        traceback.print_exc()
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    report.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)


def _backend():
    from mamba_core.registry import get_backend

    return get_backend("cuda_cupy")


# ---- compile every kernel instance NVRTC may be asked for ------------------------------------
def part_compile():
    from mamba_backend_cuda_cupy._compile import function
    from mamba_backend_cuda_cupy.kernels._scan import DECAY_CHUNK
    from mamba_backend_cuda_cupy.kernels.linear import TILES, rows_per_warp

    names = {"scan.cu": [f"{k}<{t}, {n}, {a}>" for k in ("row_scan", "row_scan_chunked")
                         for t in ("float", "double") for n in (1, 2, 4, 8) for a in ("true", "false")],
             "scan_bwd.cu": [f"{k}<{t}, {n}, {a}, {DECAY_CHUNK}>" for k in ("decay_grad", "decay_grad_chunked")
                             for t in ("float", "double") for n in (1, 2, 4, 8) for a in ("true", "false")],
             "norm.cu": [f"rmsnorm_{d}<{t}>" for t in ("float", "double") for d in ("fwd", "bwd")],
             "conv1d.cu": [f"conv1d_{k}<{t}>" for t in ("float", "double")
                           for k in ("fwd", "step", "bwd_du", "bwd_dx", "bwd_dw")],
             "linear.cu": [f"linear_gemv<{t}, {v}, {mr}, {rows_per_warp(mr, it)}>"
                           for t, it in (("float", 4), ("double", 8)) for v in (1, 16 // it)
                           for mr in TILES]}
    out = {}
    for f, exprs in names.items():
        for e in exprs:
            try:
                fn = function(f, e)
                out[e] = {"ok": True, "num_regs": int(fn.num_regs), "local_bytes": int(fn.local_size_bytes)}
            except Exception as exc:
                out[e] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                _log("compile FAILED", e, exc)
    return out


# ---- each native op against the float64 reference at small shapes ---------------------------
def _small_inputs(rng):
    B, L, H, P, G, N, R, E, K = 2, 37, 4, 5, 2, 16, 2, 12, 4
    n = lambda *s: rng.standard_normal(s)
    sp = lambda *s: np.exp(rng.standard_normal(s) * 0.5) * 0.5
    sig = lambda *s: 1 / (1 + np.exp(-rng.standard_normal(s)))
    return {
        "selective_scan": ((n(B, L, E), n(B, L, E), -np.exp(n(E, N)), n(B, L, G, N), n(B, L, G, N)),
                           dict(D=n(E), z=n(B, L, E), delta_bias=n(E), delta_softplus=True,
                                initial_state=n(B, E, N))),
        "selective_scan_step": ((n(B, E), n(B, E), -np.exp(n(E, N)), n(B, G, N), n(B, G, N), n(B, E, N)),
                                dict(D=n(E), z=n(B, E), delta_bias=n(E), delta_softplus=True)),
        "ssd_scan": ((n(B, L, H, P), n(B, L, H), -np.exp(n(H)), n(B, L, G, N), n(B, L, G, N)),
                     dict(D=n(H), z=n(B, L, H, P), dt_bias=n(H), dt_softplus=True,
                          initial_state=n(B, H, P, N))),
        "ssd_step": ((n(B, H, P), n(B, H), -np.exp(n(H)), n(B, G, N), n(B, G, N), n(B, H, P, N)),
                     dict(D=n(H), z=n(B, H, P), dt_bias=n(H), dt_softplus=True)),
        "mamba3_scan": ((n(B, L, H, P), sp(B, L, H), -np.exp(n(B, L, H)), sig(B, L, H),
                         n(B, L, R, H, N), n(B, L, R, H, N)),
                        dict(D=n(H), mimo_x=n(H, R, P), initial_state=n(B, H, P, N),
                             initial_k=n(B, R, H, N), initial_v=n(B, H, P))),
        "mamba3_step": ((n(B, H, P), sp(B, H), -np.exp(n(B, H)), sig(B, H), n(B, R, H, N),
                         n(B, R, H, N), n(B, H, P, N), n(B, R, H, N), n(B, H, P)),
                        dict(D=n(H), mimo_x=n(H, R, P))),
        "rmsnorm": ((n(B, L, E), 1 + 0.1 * n(E)), dict(eps=1e-5, z=n(B, L, E), group_size=E // 2)),
        "add_rmsnorm": ((n(B, L, E), n(B, L, E), 1 + 0.1 * n(E)), dict(eps=1e-5)),
        "causal_conv1d": ((n(B, L, E), n(E, K), n(E), n(B, E, K)), dict(activation="silu")),
        "causal_conv1d_step": ((n(B, E), n(B, E, K), n(E, K), n(E)), dict(activation="silu")),
        "linear": ((n(B, 3, E), n(3 * E + 1, E)), dict(bias=n(3 * E + 1))),  # 6 rows: the GEMV kernel
    }


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    d = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / (d if d > 0 else 1.0)) if np.all(np.isfinite(got)) else float("nan")


def _flat(out):
    if isinstance(out, dict):
        return {k: out[k] for k in sorted(out)}
    if isinstance(out, (tuple, list)):
        return {str(i): o for i, o in enumerate(out)}
    return {"0": out}


def part_kernels():
    from mamba_core.ops import REGISTRY

    be = _backend()
    rng = np.random.default_rng(0)
    res = {}
    cases = _small_inputs(rng)
    for op, (args, kw) in cases.items():
        for dtype in ("float32", "float64"):
            try:
                ref = _flat(REGISTRY[op].reference(*args, **kw))
                cargs = [be.asarray(a, dtype) for a in args]
                ckw = {k: be.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
                got = _flat(getattr(be.ops, op)(*cargs, **ckw))
                errs = {k: _rel(be.to_numpy(got[k]), ref[k]) for k in ref}
                res[f"{op}/{dtype}"] = {"native": be.ops.is_native(op), "rel_err": errs}
            except Exception as exc:
                res[f"{op}/{dtype}"] = {"error": f"{type(exc).__name__}: {exc}"}
            # gradient of the sequence ops
            vjp = op + "_vjp"
            if vjp in REGISTRY and op in ("ssd_scan", "mamba3_scan", "rmsnorm", "add_rmsnorm",
                                          "causal_conv1d", "selective_scan"):
                try:
                    fwd = REGISTRY[op].reference(*args, **kw)
                    cot = (tuple(rng.standard_normal(np.shape(o)) for o in fwd)
                           if isinstance(fwd, tuple) else rng.standard_normal(np.shape(fwd)))
                    ref = REGISTRY[vjp].reference(cot, *args, **kw)
                    ccot = (tuple(be.asarray(c, dtype) for c in cot) if isinstance(cot, tuple)
                            else be.asarray(cot, dtype))
                    got = getattr(be.ops, vjp)(ccot, *cargs, **ckw)
                    errs = {k: _rel(be.to_numpy(got[k]), ref[k]) for k in ref}
                    res[f"{vjp}/{dtype}"] = {"native": be.ops.is_native(vjp), "rel_err": errs}
                except Exception as exc:
                    res[f"{vjp}/{dtype}"] = {"error": f"{type(exc).__name__}: {exc}"}
            worst = max([v for v in res.get(f"{op}/{dtype}", {}).get("rel_err", {}).values()] or [-1])
            _log(f"{op}/{dtype}: worst rel err {worst:.2e}")
    return res


# ---- the certificate ---------------------------------------------------------------------------
def part_conformance(out_dir):
    import mamba_conformance

    cert = mamba_conformance.run("cuda_cupy", modes=("forward", "step", "grad"))
    d = cert.to_dict()
    (Path(out_dir) / "cuda_cupy.certificate.json").write_text(json.dumps(d, indent=1, default=str))
    _log(cert.summary())
    return {"ok": bool(cert.ok), "counts": cert.counts(), "summary": cert.summary(),
            "failures": [e.message().splitlines()[0] for e in cert.failures][:200]}


# ---- op benchmarks -----------------------------------------------------------------------------
def _timer(kind):
    """Median milliseconds of a call with device events: mamba_core.bench's timer (one place)."""
    from mamba_core.bench.timing import time_call

    def timed(fn, warmup=3, reps=20):
        return 1e3 * statistics.median(time_call(fn, kind, warmup, reps))

    return timed


_time_cupy = _timer("cupy")
_time_torch = _timer("torch-cuda")


def _bench_tasks(rng):
    s = BENCH
    B, L, E, H, P, N, G, R, K, N1 = (s[k] for k in ("B", "L", "E", "H", "P", "N", "G", "R", "K", "N1"))
    f = lambda *sh: rng.standard_normal(sh).astype(np.float32)
    sp = lambda *sh: (np.exp(rng.standard_normal(sh) * 0.5) * 0.05).astype(np.float32)
    sig = lambda *sh: (1 / (1 + np.exp(-rng.standard_normal(sh)))).astype(np.float32)
    C = E + 2 * G * N
    return {
        "selective_scan": ("selective_scan", (f(B, L, E), f(B, L, E) - 3, -np.exp(f(E, N1) * 0.1),
                                              f(B, L, G, N1), f(B, L, G, N1)),
                           dict(D=f(E), z=f(B, L, E), delta_bias=f(E) * 0.1, delta_softplus=True)),
        "ssd_scan": ("ssd_scan", (f(B, L, H, P), f(B, L, H) - 3, -np.exp(f(H) * 0.5), f(B, L, G, N),
                                  f(B, L, G, N)),
                     dict(chunk_size=256, D=f(H), z=f(B, L, H, P), dt_bias=f(H) * 0.1, dt_softplus=True)),
        "mamba3_siso": ("mamba3_scan", (f(B, L, H, P), sp(B, L, H), -np.exp(f(B, L, H) * 0.5),
                                        sig(B, L, H), f(B, L, 1, H, N), f(B, L, 1, H, N)),
                        dict(D=f(H))),
        "mamba3_mimo": ("mamba3_scan", (f(B, L, H, P), sp(B, L, H), -np.exp(f(B, L, H) * 0.5),
                                        sig(B, L, H), f(B, L, R, H, N), f(B, L, R, H, N)),
                        dict(D=f(H), mimo_x=f(H, R, P) / R)),
        "rmsnorm_gated": ("rmsnorm", (f(B, L, E), f(E)), dict(eps=1e-5, z=f(B, L, E), group_size=E // G)),
        "add_rmsnorm": ("add_rmsnorm", (f(B, L, E), f(B, L, E), f(E)), dict(eps=1e-5)),
        "causal_conv1d": ("causal_conv1d", (f(B, L, C), f(C, K), f(C)), dict(activation="silu")),
    }


def _bench_one(be, op, args, kw, timer):
    from mamba_core.ops import REGISTRY

    a = [be.asarray(x) for x in args]
    k = {n: be.asarray(v) if isinstance(v, np.ndarray) else v for n, v in kw.items()}
    fn = getattr(be.ops, op)
    row = {"native_fwd": be.ops.is_native(op)}
    t0 = time.perf_counter()
    fn(*a, **k)  # the first call compiles (JIT, NVRTC): its wall time is recorded apart
    row["first_call_s"] = round(time.perf_counter() - t0, 2)
    if os.environ.get("GPU_CHECK_BENCH_COMPILE_ONLY") == "1":  # warm the JIT caches, time nothing
        vjp = op + "_vjp"
        if vjp in REGISTRY:
            out = fn(*a, **k)
            t0 = time.perf_counter()
            getattr(be.ops, vjp)(tuple(out) if isinstance(out, tuple) else out, *a, **k)
            row["vjp_first_call_s"] = round(time.perf_counter() - t0, 2)
        return row
    row["fwd_ms"] = timer(lambda: fn(*a, **k))
    out = fn(*a, **k)
    vjp = op + "_vjp"
    if vjp in REGISTRY:
        cot = tuple(o for o in out) if isinstance(out, tuple) else out
        row["native_bwd"] = be.ops.is_native(vjp)
        g = getattr(be.ops, vjp)

        def fb():
            o = fn(*a, **k)
            return g(tuple(o) if isinstance(o, tuple) else o, *a, **k)

        try:
            row["fwd_bwd_ms"] = timer(fb)
        except Exception as exc:
            row["fwd_bwd_error"] = f"{type(exc).__name__}: {exc}"
        del cot
    return row


def _bench_backends() -> list[str]:
    return os.environ.get("GPU_CHECK_BENCH_BACKENDS", "cuda_cupy,torch_triton").split(",")


def part_bench():
    rng = np.random.default_rng(0)
    tasks = _bench_tasks(rng)
    only = os.environ.get("GPU_CHECK_BENCH_OPS")
    if only:
        tasks = {k: tasks[k] for k in only.split(",") if k in tasks}  # in the order given
    res = {"shapes": BENCH, "cuda_cupy": {}, "torch_triton": {}, "env": {
        k: v for k, v in os.environ.items() if k.startswith("MAMBA_CUPY")}}
    be = _backend()
    for name, (op, args, kw) in tasks.items():
        if "cuda_cupy" not in _bench_backends():
            break
        try:
            res["cuda_cupy"][name] = _bench_one(be, op, args, kw, _time_cupy)
            _log(f"cuda_cupy {name}: {res['cuda_cupy'][name]}")
        except Exception as exc:
            res["cuda_cupy"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            _log(f"cuda_cupy {name}: ERROR {exc}")
        import cupy as cp

        cp.get_default_memory_pool().free_all_blocks()
    if "torch_triton" not in _bench_backends():
        return res
    try:
        from mamba_core.registry import get_backend

        tt = get_backend("torch_triton")
        if not tt.available():
            raise RuntimeError(f"torch_triton not available: {tt.available().reason}")
        tt_only = os.environ.get("GPU_CHECK_TT_OPS")
        tt_tasks = {k: tasks[k] for k in tt_only.split(",") if k in tasks} if tt_only else tasks
        for name, (op, args, kw) in tt_tasks.items():
            try:
                res["torch_triton"][name] = _bench_one(tt, op, args, kw, _time_torch)
                _log(f"torch_triton {name}: {res['torch_triton'][name]}")
            except Exception as exc:
                res["torch_triton"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:
        res["torch_triton"] = {"error": f"{type(exc).__name__}: {exc}"}
    return res


# ---- decode of a ~370M random-weight Mamba-2 LM ---------------------------------------------------
def part_decode():
    import cupy as cp

    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig

    from mamba_backend_cuda_cupy import _launch
    from mamba_backend_cuda_cupy.graphs import GraphDecoder

    be = _backend()
    d = DECODE
    cfg = LMConfig(d_model=d["d_model"], n_layer=d["n_layer"], vocab_size=d["vocab_size"],
                   ssm_cfg={"layer": "Mamba2", "d_state": d["d_state"], "headdim": d["headdim"]})
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)))
    n_params = int(sum(int(np.prod(v.shape)) for v in params.values()))
    res = {"config": d, "params": n_params}
    late = []  # (row, key, stream context, step): kernel tables taken after every timing
    tables = _kernel_tables_on()
    for batch in (1, 16):
        row = {}
        ids = cp.asarray(np.random.default_rng(1).integers(0, d["vocab_size"], batch), dtype=cp.int64)
        try:
            cache = lm.init_cache(be, cfg, batch)

            def eager():
                nonlocal cache
                _, cache = lm.step(be, params, cfg, ids, cache)

            ms = _time_cupy(eager, warmup=3, reps=20)
            row["eager_ms_per_token"] = ms
            row["eager_tokens_per_s"] = batch * 1000.0 / ms
        except Exception as exc:
            row["eager_error"] = f"{type(exc).__name__}: {exc}"
        try:
            # the graph with PDL where the device takes it, whatever the default (_launch.py)
            dec = _graph_with_pdl(_launch.supported(), GraphDecoder, be, params, cfg, batch)
            # graph vs eager on the same cache: one step each, logits compared
            cache0 = lm.init_cache(be, cfg, batch)
            want, _ = lm.step(be, params, cfg, ids, cache0)
            dec.load_cache(lm.init_cache(be, cfg, batch))
            got = dec.step(ids)
            dec.synchronize()
            row["graph_vs_eager_rel_err"] = _rel(cp.asnumpy(got), cp.asnumpy(want))
            with dec.stream:
                ms = _time_cupy(lambda: dec.step(ids), warmup=3, reps=50)
            row["graph_ms_per_token"] = ms
            row["graph_tokens_per_s"] = batch * 1000.0 / ms
            row["pdl"] = _launch.supported()  # the graph above was captured with PDL
            if tables and batch == 1:  # profiled after every timing (CUPTI slows what follows)
                late.append((row, "kernel_table", dec.stream, lambda dec=dec, ids=ids: dec.step(ids)))
        except Exception as exc:
            traceback.print_exc()
            row["graph_error"] = f"{type(exc).__name__}: {exc}"
        if row.get("pdl"):
            # the same graph captured without programmatic dependent launch (_launch.py): its
            # time, and its logits against the PDL graph's (the same kernels: bit-identical)
            try:
                plain = _graph_with_pdl(False, GraphDecoder, be, params, cfg, batch)
                first = []
                for g in (dec, plain):
                    g.load_cache(lm.init_cache(be, cfg, batch))
                    out = g.step(ids)
                    g.synchronize()  # its stream does not order with the one asnumpy uses
                    first.append(cp.asnumpy(out))
                row["graph_nopdl_bit_identical"] = bool(np.array_equal(first[0], first[1]))
                with plain.stream:
                    ms = _time_cupy(lambda: plain.step(ids), warmup=3, reps=50)
                row["graph_nopdl_ms_per_token"] = ms
                if tables and batch == 1:  # no PDL overlap: durations, not spans
                    late.append((row, "kernel_table_nopdl", plain.stream,
                                 lambda plain=plain, ids=ids: plain.step(ids)))
                del plain
            except Exception as exc:
                traceback.print_exc()
                row["graph_nopdl_error"] = f"{type(exc).__name__}: {exc}"
        if "graph_ms_per_token" in row:
            # the same graph under the other GEMV split (MAMBA_CUPY_GEMV_SPLIT, kernels/linear.py:
            # GPU_CHECK_SPLIT_OTHER, else "0", one warp a row, when the default splits K over
            # warps, else "auto"): its time,
            # and its logits against the graph above (the same sums in another order: close, not
            # bit-identical). Keys graph_split_*: that other graph; graph_plain_*: the default's.
            try:
                from mamba_backend_cuda_cupy.kernels.linear import SPLIT_ENV, split_mode

                other = (os.environ.get("GPU_CHECK_SPLIT_OTHER")
                         or ("auto" if split_mode() == "0" else "0"))
                row["graph_split_mode"] = other
                split = _graph_with_pdl(_launch.supported(), GraphDecoder, be, params, cfg, batch,
                                        **{SPLIT_ENV: other})
                first = []
                for g in (dec, split):
                    g.load_cache(lm.init_cache(be, cfg, batch))
                    out = g.step(ids)
                    g.synchronize()
                    first.append(cp.asnumpy(out))
                row["graph_split_rel_err"] = _rel(first[1], first[0])
                for rep in range(2):  # other, default, other, default: drift shows up as a trend
                    for name, g in (("split", split), ("plain", dec)):
                        with g.stream:
                            ms = _time_cupy(lambda g=g: g.step(ids), warmup=3, reps=50)
                        row.setdefault(f"graph_{name}_ms_per_token_reps", []).append(ms)
                row["graph_split_ms_per_token"] = min(row["graph_split_ms_per_token_reps"])
                del split
            except Exception as exc:
                traceback.print_exc()
                row["graph_split_error"] = f"{type(exc).__name__}: {exc}"
        res[f"batch{batch}"] = row
        _log(f"decode batch {batch}: {row}")
    if "torch_triton" in _bench_backends():
        res["torch_triton"] = _decode_torch_triton(cfg, late if tables else None)
    for row, key, stream, step in late:  # empty unless GPU_CHECK_DECODE_KERNELS=1
        with stream:
            row[key] = _decode_kernels(step)
    return res


def _kernel_tables_on() -> bool:
    return os.environ.get("GPU_CHECK_DECODE_KERNELS") == "1"


def _decode_kernels(step, reps=20, top=12):
    """{"us_per_token": kernel time a replay, "kernels": the ``top`` largest as [name, us a
    token, launches a token]} of ``step`` (one graph replay), from torch.profiler (CUPTI sees
    every kernel of the process, CuPy's too). Under PDL neighbouring kernels overlap, so the sum
    can exceed the token's wall time."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"))
    import ncu_targets

    rows = ncu_targets.kernel_table(step, reps)
    return {"us_per_token": sum(r[1] for r in rows),
            "kernels": [[n[:120], round(us, 2), round(k, 2)] for n, us, k in rows[:top]]}


def _graph_with_pdl(on: bool, build, *args, **env):
    """build(*args) (a GraphDecoder: its capture reads the switches) with MAMBA_CUPY_PDL set to
    on / off, and any other variables in env, for the build only; the caller's settings are
    restored after."""
    from mamba_backend_cuda_cupy import _launch

    env = {_launch.ENV: "1" if on else "0", **env}
    prev = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return build(*args)
    finally:
        for k, v in prev.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _decode_torch_triton(cfg, late=None):
    """torch_triton's CUDA-graph decoder on the same model in float32 (the dtype cuda_cupy runs);
    its batch-1 graph joins ``late`` when given (kernel tables, taken after the timings)."""
    try:
        import torch

        from mamba_core.models import lm
        from mamba_core.registry import get_backend
        from mamba_backend_torch_triton.graphs import CudaGraphDecoder

        tt = get_backend("torch_triton")
        params = lm.to_backend(tt, lm.init_params(cfg, np.random.default_rng(0)), "float32")
        res = {}
        for batch in (1, 16):
            dec = CudaGraphDecoder(tt, params, cfg, "float32")
            ids = torch.zeros(batch, dtype=torch.long, device="cuda")
            ms = _time_torch(lambda: dec.step(ids), warmup=3, reps=50)
            res[f"batch{batch}"] = {"graph_ms_per_token": ms, "graph_tokens_per_s": batch * 1000.0 / ms}
            if late is not None and batch == 1:
                late.append((res["batch1"], "kernel_table", contextlib.nullcontext(),
                             lambda dec=dec, ids=ids: dec.step(ids)))
            _log(f"torch_triton float32 decode batch {batch}: {res[f'batch{batch}']}")
        return res
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def _env():
    info = {"python": sys.version.split()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        import cupy as cp

        info["cupy"] = cp.__version__
        props = cp.cuda.runtime.getDeviceProperties(0)
        info["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        info["driver"] = cp.cuda.runtime.driverGetVersion()
    except Exception as exc:
        info["cupy_error"] = f"{type(exc).__name__}: {exc}"
    return info


def run(out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"env": _env()}
    _log(report["env"])
    _part(report, "compile", part_compile)
    _part(report, "kernels", part_kernels)
    _part(report, "conformance", lambda: part_conformance(out))
    _part(report, "bench", part_bench)
    _part(report, "decode", part_decode)
    path = out / "cuda_cupy_gpu_check.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    _log(f"wrote {path}")
    return report


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "gpu_check_out"))
