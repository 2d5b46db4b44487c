"""Where cuda_cupy's SSD and Mamba-3 time goes, per row-scan kernel, on one GPU (float32).

    python benchmarks/gpu/bench_cupy_scan.py OUT_DIR [--budget 150]

At the issue's shape (B=8, L=2048, H=32, P=64, N=128, G=1; Mamba-3 MIMO R=4):
  parts   the pieces of the SSD VJP one by one (forward sweep with readout; forward sweep with
          readout and row reduction; reverse sweep; decay gradient, computing its checkpoints
          and from the forward sweep's), under MAMBA_CUPY_ROW_SCAN
          = tiled and chunked, so the table shows which piece each kernel speeds up;
  plans   the tiled forward sweep under a few MAMBA_CUPY_TILED plans (npt, rp, warps);
  ops     ssd_scan and mamba3_scan (SISO, MIMO) forward and forward+backward, tiled and chunked.
BENCH_SCAN_KINDS (default "tiled,chunked") and BENCH_SCAN_PLANS (";"-separated, default
PLANS below) narrow a run.
Medians of CUDA-event timings (mamba_core.bench.timing, 3 warm-ups, 15 runs). Also checks that the
tiled and chunked kernels agree at this shape (relative difference of every output). Writes
OUT_DIR/bench_cupy_scan.json as it goes; stops adding rows when the budget (seconds) is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = dict(B=8, L=2048, H=32, P=64, N=128, R=4)
PLANS = ["npt=8,rp=4", "npt=8,rp=2", "npt=4,rp=4", "npt=4,rp=8", "npt=8,rp=1", "npt=4,rp=2",
         "npt=8,rp=4,warps=4", "npt=2,rp=4"]


def _timed(fn, reps=15):
    from mamba_core.bench.timing import time_call

    return round(1e3 * statistics.median(time_call(fn, "cupy", 3, reps)), 3)


def _rel(a, b):
    import cupy as cp

    d = float(cp.linalg.norm(b))
    return float(cp.linalg.norm(a - b)) / (d if d > 0 else 1.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--budget", type=float, default=150.0)
    args = ap.parse_args()
    import cupy as cp

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backends" / "cuda_cupy"))
    from mamba_backend_cuda_cupy.kernels import _scan
    from mamba_core.registry import get_backend

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"shape": SHAPE, "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
           "parts": {}, "plans": {}, "ops": {}, "agree": {}}

    def save():
        (out / "bench_cupy_scan.json").write_text(json.dumps(res, indent=1))

    def left():
        return args.budget - (time.perf_counter() - t_start)

    B, L, H, P, N, R = (SHAPE[k] for k in ("B", "L", "H", "P", "N", "R"))
    rng = np.random.default_rng(0)
    f = lambda *s: cp.asarray(rng.standard_normal(s), cp.float32)
    dt = cp.asarray(np.log1p(np.exp(rng.standard_normal((B, L, H)) - 3)), cp.float32)
    d4 = cp.broadcast_to(dt[..., None], (B, L, H, P))
    Ah = cp.asarray(-np.exp(rng.standard_normal(H) * 0.5), cp.float32)
    Am = cp.broadcast_to(Ah[:, None, None], (H, P, N))
    x, Bm, Cm, dy = f(B, L, 1, H, P), f(B, L, 1, 1, N), f(B, L, 1, 1, N), f(B, L, 1, H, P)
    la = cp.broadcast_to((dt * Ah)[..., None], (B, L, H, P))  # dt A per head, as the SSD VJP
    parts = {
        "fwd Y": lambda: _scan.row_scan(cp, dA=d4, V=x, K=Bm, hpk=H, Am=Am, coef=d4, Q=Cm),
        "fwd Y+Red": lambda: _scan.row_scan(cp, dA=d4, V=x, K=Bm, hpk=H, Am=Am, coef=d4, Q=Cm, W=dy,
                                            want_fin=False),
        "reverse Y+Red": lambda: _scan.row_scan(cp, dA=d4, V=dy, K=Cm, hpk=H, Am=Am, Q=Bm, W=x,
                                                reverse=True),
        "decay_grad": lambda: _scan.decay_grad(cp, dA=la, V=x, K=Bm, hpk=H, coef=d4, Vr=dy, Kr=Cm),
        # from the checkpoints of the forward sweep (tiled kernel; None under chunked: its own)
        "decay_grad ck": lambda: _scan.decay_grad(cp, dA=la, V=x, K=Bm, hpk=H, coef=d4, Vr=dy,
                                                  Kr=Cm, ck=ck_box[0]),
    }
    ck_box = [None]
    kinds = [k for k in os.environ.get("BENCH_SCAN_KINDS", "tiled,chunked").split(",") if k]
    plans = [p for p in os.environ.get("BENCH_SCAN_PLANS", ";".join(PLANS)).split(";") if p.strip()]
    for kind in kinds:
        os.environ[_scan.ROW_SCAN_ENV] = kind
        ck_box[0] = _scan.row_scan(cp, dA=d4, V=x, K=Bm, hpk=H, Am=Am, coef=d4, Q=Cm, W=dy,
                                   want_fin=False, checkpoints=True)[3]
        for name, fn in parts.items():
            if left() < 20:
                break
            try:
                res["parts"][f"{kind} {name}"] = _timed(fn)
            except Exception as exc:
                res["parts"][f"{kind} {name}"] = f"{type(exc).__name__}: {exc}"
            print(f"part {kind:8s} {name:14s} {res['parts'][f'{kind} {name}']}", flush=True)
            save()
    # the two kernels agree at this shape
    outs = {}
    for kind in ("tiled", "chunked"):
        os.environ[_scan.ROW_SCAN_ENV] = kind
        outs[kind] = [parts["fwd Y+Red"](), parts["reverse Y+Red"]()]
    for i, name in enumerate(("fwd", "reverse")):
        for j, what in enumerate(("Y", "Red", "fin")):
            a, b = outs["tiled"][i][j], outs["chunked"][i][j]
            if a is not None:
                res["agree"][f"{name} {what}"] = _rel(a, b)
    print("tiled vs chunked:", res["agree"], flush=True)
    del outs
    os.environ[_scan.ROW_SCAN_ENV] = "tiled"
    for plan in plans:
        if left() < 20:
            break
        os.environ[_scan.TILED_ENV] = plan
        try:
            res["plans"][plan] = {"fwd Y": _timed(parts["fwd Y"]),
                                  "fwd Y+Red": _timed(parts["fwd Y+Red"])}
        except Exception as exc:
            res["plans"][plan] = f"{type(exc).__name__}: {exc}"
        print(f"plan {plan:22s} {res['plans'][plan]}", flush=True)
        save()
    os.environ.pop(_scan.TILED_ENV, None)
    # the ops end to end
    be = get_backend("cuda_cupy")
    sp = lambda *s: cp.asarray(np.exp(rng.standard_normal(s) * 0.5) * 0.05, cp.float32)
    sig = lambda *s: cp.asarray(1 / (1 + np.exp(-rng.standard_normal(s))), cp.float32)
    xs = f(B, L, H, P)
    ops = {
        "ssd_scan": ("ssd_scan", (xs, f(B, L, H) - 3, -cp.exp(f(H) * 0.5), f(B, L, 1, N), f(B, L, 1, N)),
                     dict(chunk_size=256, D=f(H), z=f(B, L, H, P), dt_bias=f(H) * 0.1, dt_softplus=True)),
        "mamba3_siso": ("mamba3_scan", (xs, sp(B, L, H), -cp.exp(f(B, L, H) * 0.5), sig(B, L, H),
                                        f(B, L, 1, H, N), f(B, L, 1, H, N)), dict(D=f(H))),
        "mamba3_mimo": ("mamba3_scan", (xs, sp(B, L, H), -cp.exp(f(B, L, H) * 0.5), sig(B, L, H),
                                        f(B, L, R, H, N), f(B, L, R, H, N)),
                        dict(D=f(H), mimo_x=f(H, R, P) / R)),
    }
    for kind in kinds:
        os.environ[_scan.ROW_SCAN_ENV] = kind
        for name, (op, a, kw) in ops.items():
            if left() < 25:
                break
            fn, vjp = getattr(be.ops, op), getattr(be.ops, op + "_vjp")

            def fb(fn=fn, vjp=vjp, a=a, kw=kw):
                o = fn(*a, **kw)
                return vjp(tuple(o), *a, **kw)

            row = {}
            try:
                row["fwd_ms"] = _timed(lambda: fn(*a, **kw))
                row["fwd_bwd_ms"] = _timed(fb, reps=7)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            res["ops"][f"{kind} {name}"] = row
            print(f"op {kind:8s} {name:12s} {row}", flush=True)
            save()
            cp.get_default_memory_pool().free_all_blocks()
    os.environ.pop(_scan.ROW_SCAN_ENV, None)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
