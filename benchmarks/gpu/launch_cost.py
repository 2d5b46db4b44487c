"""Where a short op's time goes: the GPU or the host. cuda_cupy beside torch_triton (float32).

    python benchmarks/gpu/launch_cost.py OUT_DIR [--ops rmsnorm_gated,add_rmsnorm,causal_conv1d] [--rounds 5]

gpu_check.py's bench times one call between two device events after a synchronize, so the GPU
is idle when the start event is recorded and the figure includes the host's work before the first
kernel is queued (argument checks, allocation, the launch). For ops of ~0.2 ms that share is
large and differs between backends. This script times each of gpu_check's bench rows (the same
inputs, forward and forward+VJP) three ways, the backends interleaved in every round:

    call      one call between two events after a synchronize (gpu_check's figure)
    queued    50 calls back to back between two events, per call: the device's time when the
              host keeps ahead of it
    host      wall time of 50 calls queued, per call, without waiting for the device: the host's
              cost (below ``queued`` the device is the bound; above it, the host)

Medians over the rounds (each round: the median of its repeats). Writes OUT_DIR/launch_cost.json.
--profile N: then cProfile over N calls of each row (host side; the device queue drained every
50 calls), the top functions by own time written to OUT_DIR/profile_<backend>_<op>_<mode>.txt.
Needs a CUDA GPU with cupy and torch_triton installed (exits with status 2 otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "backends" / "cuda_cupy"))

KINDS = {"cuda_cupy": "cupy", "torch_triton": "torch-cuda"}
QUEUED = 50


def _events(kind):
    if kind == "cupy":
        import cupy

        def pair():
            return cupy.cuda.Event(), cupy.cuda.Event()

        def elapsed(a, b):
            return cupy.cuda.get_elapsed_time(a, b)

        return pair, elapsed, cupy.cuda.Device().synchronize
    import torch

    def pair():
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    return pair, (lambda a, b: a.elapsed_time(b)), torch.cuda.synchronize


def _time(fn, kind, reps=20):
    """(call, queued, host) milliseconds, each the median of ``reps`` measurements."""
    pair, elapsed, sync = _events(kind)
    for _ in range(3):
        fn()
    sync()
    call, queued, host = [], [], []
    for _ in range(reps):
        a, b = pair()
        a.record()
        fn()
        b.record()
        b.synchronize()
        call.append(elapsed(a, b))
    for _ in range(max(3, reps // 5)):
        sync()
        a, b = pair()
        t0 = time.perf_counter()
        a.record()
        for _ in range(QUEUED):
            fn()
        t1 = time.perf_counter()
        b.record()
        b.synchronize()
        queued.append(elapsed(a, b) / QUEUED)
        host.append(1e3 * (t1 - t0) / QUEUED)
    med = statistics.median
    return med(call), med(queued), med(host)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ops", default="rmsnorm_gated,add_rmsnorm,causal_conv1d")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    a = ap.parse_args(argv)
    try:
        import cupy  # noqa: F401
        import numpy as np
        import torch

        from mamba_core.registry import get_backend

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        import gpu_check
    except Exception as exc:  # noqa: BLE001
        print(f"launch_cost: needs a CUDA GPU, cupy and torch_triton ({type(exc).__name__}: {exc})")
        return 2
    from mamba_core.ops import REGISTRY

    tasks = gpu_check._bench_tasks(np.random.default_rng(0))
    ops = [o for o in a.ops.split(",") if o in tasks]
    calls = {}
    for be_name in KINDS:
        be = get_backend(be_name)
        for name in ops:
            op, args, kw = tasks[name]
            xs = [be.asarray(x) for x in args]
            k = {n: be.asarray(v) if isinstance(v, np.ndarray) else v for n, v in kw.items()}
            fn, vjp = getattr(be.ops, op), getattr(be.ops, op + "_vjp", None)
            calls[(be_name, name, "fwd")] = (lambda fn=fn, xs=xs, k=k: fn(*xs, **k))
            if vjp is not None and op + "_vjp" in REGISTRY:
                def fb(fn=fn, vjp=vjp, xs=xs, k=k):
                    o = fn(*xs, **k)
                    return vjp(tuple(o) if isinstance(o, tuple) else o, *xs, **k)
                calls[(be_name, name, "fwd+bwd")] = fb
    rounds = {key: [] for key in calls}
    for r in range(a.rounds):
        for key, fn in calls.items():
            rounds[key].append(_time(fn, KINDS[key[0]]))
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    res = {"queued": QUEUED, "rounds": a.rounds, "rows": []}
    med = statistics.median
    for (be_name, name, mode), rs in rounds.items():
        row = {"backend": be_name, "op": name, "mode": mode,
               "call_ms": med(x[0] for x in rs), "queued_ms": med(x[1] for x in rs),
               "host_ms": med(x[2] for x in rs), "call_ms_rounds": [x[0] for x in rs]}
        res["rows"].append(row)
    print(f"{'op':16s} {'mode':8s} {'backend':13s} {'call':>8s} {'queued':>8s} {'host':>8s}"
          f"   (ms, medians of {a.rounds} rounds)")
    for row in res["rows"]:
        print(f"{row['op']:16s} {row['mode']:8s} {row['backend']:13s} {row['call_ms']:8.4f} "
              f"{row['queued_ms']:8.4f} {row['host_ms']:8.4f}")
    by = {(r["op"], r["mode"], r["backend"]): r for r in res["rows"]}
    print("cuda_cupy / torch_triton:")
    for name in ops:
        for mode in ("fwd", "fwd+bwd"):
            c, t = by.get((name, mode, "cuda_cupy")), by.get((name, mode, "torch_triton"))
            if c and t:
                print(f"  {name:16s} {mode:8s} call {c['call_ms'] / t['call_ms']:.2f}  "
                      f"queued {c['queued_ms'] / t['queued_ms']:.2f}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "launch_cost.json").write_text(json.dumps(res, indent=1))
    if a.profile > 0:
        _profile(calls, a.profile, Path(a.out))
    return 0


def _profile(calls, n, out: Path) -> None:
    """cProfile of n calls of each row: where the host time goes."""
    import cProfile
    import io
    import pstats

    for (be_name, name, mode), fn in calls.items():
        _, _, sync = _events(KINDS[be_name])
        prof = cProfile.Profile()
        for i in range(n):
            prof.enable()
            fn()
            prof.disable()
            if i % 50 == 49:
                sync()
        sync()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        path = out / f"profile_{be_name}_{name}_{mode.replace('+', '_')}.txt"
        path.write_text(buf.getvalue())
        print(f"profile {be_name} {name} {mode}: {path.name}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
