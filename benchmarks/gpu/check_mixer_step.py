"""Check and time cuda_cupy's fused Mamba-2 decode step on one GPU (CuPy only, no torch).

    python benchmarks/gpu/check_mixer_step.py [OUT_DIR]

Parts, in order (each prints its table; ~60 s on an H100 with the NVRTC cache cold):
  check   the fused step (kernels/mixer_steps.py) against mamba2.composed_step on the float64
          reference backend and on cuda_cupy itself, the configs and tolerances of
          backends/cuda_cupy/tests/test_mixer_steps_gpu.py (a subset), batch 1 and 3, float32
          and float64, in place and not, 3 consecutive steps: max relative norm error, PASS/FAIL;
  decode  a ~370M Mamba-2 LM (d_model 1024, 48 layers, d_state 128, headdim 64, vocab 50280,
          random weights, float32; gpu_check.py part_decode's model): graphs.GraphDecoder with
          the fused step on and off (MAMBA_CUPY_FUSED_STEP), batch 1 and 16. Checks: 4 tokens
          from a zero cache, the fused graph's logits and last-layer states against the
          unfused graph's, and at batch 1 against eager lm.step (PASS/FAIL). Times: median
          ms/token over 100 replays after 10 warm-up ones, against the bandwidth floor
          (weights + states read and written once a token);
  kernels the GEMV (kernels/linear.py) at the decode shapes and the fused step kernel alone at
          the model's shapes, each captured in a graph over enough distinct weights / caches to
          defeat L2 (as decoding through 48 layers does): us a call and GB/s (skipped when the
          budget of 80 s is spent); the GEMV under each MAMBA_CUPY_GEMV_SPLIT of
          CHECK_GEMV_SPLITS (default "0,auto").
Exit status 1 when any check FAILs. With OUT_DIR, writes OUT_DIR/check_mixer_step.json.
Its torch_triton column is a recorded figure, not measured here (torch_triton on an H100 in
float32 with CUDA graphs, 2026-11-23: 1.190 ms/token at batch 1, 3.453 at 16); gpu_check.py's
decode part times both backends in one process.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "backends" / "cuda_cupy" / "tests"))

BUDGET_S = 80.0
CHECK_CONFIGS = ["g1", "mlp-nbg-limit", "g4-nonorm-k1", "n256-p64"]
DECODE = dict(d_model=1024, n_layer=48, vocab_size=50280, d_state=128, headdim=64)
TORCH_TRITON_MS = {1: 1.190, 16: 3.453}  # H100, float32, CUDA graphs, recorded 2026-11-23
T0 = time.perf_counter()
REPORT: dict = {"fails": []}


def log(*a):
    print(*a, flush=True)


def elapsed() -> float:
    return time.perf_counter() - T0


def peak_bandwidth(cp) -> float:
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
    REPORT["device"] = name
    for key, bw in (("H200", 4.8e12), ("H100", 3.35e12), ("A100", 2.0e12)):
        if key in name:
            return bw
    return 3.0e12


def verdict(label: str, err: float, tol: float) -> str:
    ok = bool(np.isfinite(err) and err < tol)
    if not ok:
        REPORT["fails"].append(f"{label}: {err:.2e} >= {tol:.0e}")
    return "PASS" if ok else "FAIL"


# ---- 1. the fused step against the composition -------------------------------------------------
def part_check(be):
    import test_mixer_steps_gpu as T
    from mamba_core.models import mamba2
    from mamba_core.reference_backend import REFERENCE

    from mamba_backend_cuda_cupy.kernels import mixer_steps as ms

    rows = []
    log(f"{'config':<16} {'B':>2} {'dtype':<8} {'in place':<8} {'vs reference':>12} "
        f"{'vs composition':>14}  verdict")
    for name in CHECK_CONFIGS:
        for batch in (1, 3):
            for dtype in ("float32", "float64"):
                for inplace in (False, True):
                    cfg, params, cache, next_u = T.random_mixer(T.CONFIGS[name], batch)
                    cparams = {k: be.asarray(v, dtype) for k, v in params.items()}
                    ref_cache = dict(cache)
                    cmp_cache = {k: be.asarray(v, dtype) for k, v in cache.items()}
                    fz_cache = {k: be.asarray(v, dtype) for k, v in cache.items()}
                    e_ref = e_cmp = 0.0
                    same = True
                    for _ in range(3):
                        u = next_u()
                        cu = be.asarray(u, dtype)
                        want, ref_cache = mamba2.composed_step(REFERENCE, params, cfg, u, ref_cache)
                        comp, cmp_cache = mamba2.composed_step(be, cparams, cfg, cu, cmp_cache)
                        with ms.inplace_cache(inplace):
                            got, new = ms.mamba2_step(be, cparams, cfg, cu, fz_cache)
                        same &= all((new[k] is fz_cache[k]) == inplace for k in new)
                        fz_cache = new
                        pairs = [(got, want, comp)]
                        pairs += [(new[k], ref_cache[k], cmp_cache[k]) for k in new]
                        for a, w, c in pairs:
                            a = be.to_numpy(a)
                            e_ref = max(e_ref, T.rel(a, w))
                            e_cmp = max(e_cmp, T.rel(a, be.to_numpy(c)))
                    label = f"check {name} B={batch} {dtype} inplace={inplace}"
                    v = verdict(label, max(e_ref, e_cmp), T.TOL[dtype])
                    if not same:
                        v = "FAIL"
                        REPORT["fails"].append(f"{label}: in-place arrays not as asked")
                    rows.append(dict(config=name, batch=batch, dtype=dtype, inplace=inplace,
                                     err_reference=e_ref, err_composition=e_cmp, verdict=v))
                    log(f"{name:<16} {batch:>2} {dtype:<8} {str(inplace):<8} {e_ref:12.2e} "
                        f"{e_cmp:14.2e}  {v}")
    return rows


# ---- 2. the ~370M model through the graph decoder -----------------------------------------------
def _decode_run(be, params, cfg, batch, fused: bool, ids_seq, reps: int):
    """A GraphDecoder with the fused step on or off: logits and last-layer states after the
    tokens ids_seq from a zero cache, then ms/token (median of reps replays)."""
    import cupy as cp

    from mamba_core.bench.timing import time_call

    from mamba_backend_cuda_cupy.graphs import GraphDecoder
    from mamba_backend_cuda_cupy.kernels import mixer_steps as ms

    os.environ[ms.ENV] = "1" if fused else "0"
    try:
        t = time.perf_counter()
        dec = GraphDecoder(be, params, cfg, batch)
        build_s = time.perf_counter() - t
        for ids in ids_seq:
            logits = dec.step(ids)
        dec.synchronize()
        out = {"logits": cp.asnumpy(logits),
               **{k: cp.asnumpy(v) for k, v in dec.cache[-1].items()}}
        with dec.stream:
            times = time_call(lambda: dec.step(ids_seq[-1]), "cupy", 10, reps)
        ms_tok = 1e3 * statistics.median(times)
        del dec
        cp.get_default_memory_pool().free_all_blocks()
        return out, ms_tok, build_s
    finally:
        os.environ.pop(ms.ENV, None)


def part_decode(be, bw):
    import cupy as cp
    import test_mixer_steps_gpu as T

    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig

    d = DECODE
    cfg = LMConfig(d_model=d["d_model"], n_layer=d["n_layer"], vocab_size=d["vocab_size"],
                   ssm_cfg={"layer": "Mamba2", "d_state": d["d_state"], "headdim": d["headdim"]})
    t = time.perf_counter()
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)))
    log(f"model: {sum(int(v.size) for v in params.values()) / 1e6:.1f}M params, "
        f"built in {time.perf_counter() - t:.1f} s")
    weight_bytes = sum(int(v.nbytes) for v in params.values())
    mcfg = cfg.mixer_config
    res = {"weights_bytes": weight_bytes, "rows": []}
    rng = np.random.default_rng(1)
    for batch in (1, 16):
        ids_seq = [cp.asarray(rng.integers(0, d["vocab_size"], batch), dtype=cp.int64)
                   for _ in range(4)]
        got, ms_on, b_on = _decode_run(be, params, cfg, batch, True, ids_seq, 100)
        want, ms_off, b_off = _decode_run(be, params, cfg, batch, False, ids_seq, 100)
        state_bytes = 4 * cfg.n_layer * batch * (mcfg.nheads * mcfg.headdim * mcfg.d_state
                                                 + mcfg.conv_dim * mcfg.d_conv)
        floor_ms = 1e3 * (weight_bytes + 2 * state_bytes) / bw
        errs = {k: T.rel(got[k], want[k]) for k in got}
        v = verdict(f"decode B={batch} fused graph vs unfused graph", max(errs.values()), 1e-4)
        log(f"decode batch {batch}: fused graph vs unfused graph after 4 tokens: "
            + ", ".join(f"{k} {e:.2e}" for k, e in errs.items()) + f"  {v}")
        if batch == 1:  # the graph against eager lm.step (which runs the fused step too)
            cache = lm.init_cache(be, cfg, batch)
            for ids in ids_seq:
                eager, cache = lm.step(be, params, cfg, ids, cache)
            e = T.rel(got["logits"], cp.asnumpy(eager))
            ve = verdict("decode B=1 fused graph vs eager lm.step", e, 1e-4)
            log(f"decode batch 1: fused graph vs eager lm.step logits {e:.2e}  {ve}")
            res["graph_vs_eager"] = e
            del cache, eager
        res["rows"].append(dict(batch=batch, fused_ms=ms_on, unfused_ms=ms_off, floor_ms=floor_ms,
                                build_s=[b_on, b_off], errors=errs, verdict=v))
    log(f"\n{'batch':>5} {'fused ms/tok':>12} {'unfused':>8} {'speed-up':>8} {'tok/s':>8} "
        f"{'floor ms':>8} {'x floor':>7} {'torch_triton (H100)':>20}")
    for r in res["rows"]:
        b = r["batch"]
        log(f"{b:>5} {r['fused_ms']:12.3f} {r['unfused_ms']:8.3f} "
            f"{r['unfused_ms'] / r['fused_ms']:8.2f} {b * 1e3 / r['fused_ms']:8.0f} "
            f"{r['floor_ms']:8.3f} {r['fused_ms'] / r['floor_ms']:7.2f} {TORCH_TRITON_MS[b]:20.3f}")
    log(f"(floor: {weight_bytes / 1e9:.2f} GB of weights + the states read and written, at "
        f"{bw / 1e12:.2f} TB/s)")
    return res


# ---- 3. the kernels alone, in graphs -------------------------------------------------------------
def _graph_us(calls) -> float:
    """us a call of ``calls``, captured once in a graph (private pool): median of 20 replays."""
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels.linear import gemv_only

    pool = cp.cuda.MemoryPool()
    s = cp.cuda.Stream(non_blocking=True)
    with cp.cuda.using_allocator(pool.malloc), s, gemv_only():
        keep = [c() for c in calls]  # warm-up: compiles, fills the pool
        keep += [c() for c in calls]
        del keep
        s.synchronize()
        s.begin_capture()
        try:
            for c in calls:
                c()
        finally:
            g = s.end_capture()
        g.launch(s)
        s.synchronize()
        times = []
        for _ in range(20):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record(s)
            g.launch(s)
            b.record(s)
            b.synchronize()
            times.append(cp.cuda.get_elapsed_time(a, b) * 1e3 / len(calls))
    return statistics.median(times)


def part_kernels(be, bw):
    import cupy as cp

    from mamba_core.models import mamba2

    from mamba_backend_cuda_cupy.kernels import linear as lin
    from mamba_backend_cuda_cupy.kernels import mixer_steps as ms

    cfg = mamba2.Config(d_model=DECODE["d_model"], d_state=DECODE["d_state"],
                        headdim=DECODE["headdim"])
    V = DECODE["vocab_size"]
    rows = []
    log(f"\n{'kernel':<26} {'B':>3} {'us/call':>8} {'GB/s':>7} {'% peak':>7}")
    rs = cp.random.RandomState(0)
    shapes = {"in_proj": (cfg.d_in_proj, cfg.d_model), "out_proj": (cfg.d_model, cfg.d_inner),
              "lm_head": (V, cfg.d_model)}
    for name, (N, K) in shapes.items():
        copies = max(1, -(-200_000_000 // (4 * N * K)))  # > 200 MB of distinct weights: not from L2
        ws = [rs.standard_normal((N, K), dtype=cp.float32) for _ in range(copies)]
        for batch in (1, 16):
            x = rs.standard_normal((batch, K), dtype=cp.float32)
            # MAMBA_CUPY_GEMV_SPLIT: one warp a row ("0"), then the auto split of K over warps
            # (kernels/linear.py), captured (the graph reads it at capture) one after the other;
            # CHECK_GEMV_SPLITS="0,auto,2,4" adds forced splits
            for split in os.environ.get("CHECK_GEMV_SPLITS", "0,auto").split(","):
                os.environ[lin.SPLIT_ENV] = split
                try:
                    ks = lin.plan(batch, N, 4, K // 4, lin._sms(cp), split)[0][-1]
                    us = _graph_us([lambda w=w: lin.linear(x, w) for w in ws])
                finally:
                    os.environ.pop(lin.SPLIT_ENV, None)
                gbs = (4 * N * K + 4 * batch * (N + K)) / (us * 1e-6) / 1e9
                rows.append(dict(kernel=f"linear {name} {N}x{K}", batch=batch, split=split, ks=ks,
                                 us=us, gbs=gbs))
                log(f"{'linear ' + name + f' ks={ks}':<26} {batch:>3} {us:8.2f} {gbs:7.0f} "
                    f"{1e11 * gbs / bw:6.0f}%")
        del ws
    # the fused step kernel alone: 48 layers' caches, in place (as the decoder runs it)
    p = {k: cp.asarray(v) for k, v in mamba2.init_params(cfg, np.random.default_rng(0)).items()}
    for batch in (1, 16):
        zx = rs.standard_normal((batch, cfg.d_in_proj), dtype=cp.float32)
        caches = [{k: cp.zeros(s, cp.float32) for k, s in mamba2.cache_shapes(cfg, batch).items()}
                  for _ in range(DECODE["n_layer"])]

        us = _graph_us([lambda c=c: ms.mixer(zx, p, cfg, c, inplace=True) for c in caches])
        moved = (2 * sum(int(v.nbytes) for v in caches[0].values())
                 + 4 * batch * (cfg.d_in_proj + cfg.d_inner))
        gbs = moved / (us * 1e-6) / 1e9
        rows.append(dict(kernel="mamba2_step (fused)", batch=batch, us=us, gbs=gbs))
        log(f"{'mamba2_step (fused)':<26} {batch:>3} {us:8.2f} {gbs:7.0f} {1e11 * gbs / bw:6.0f}%")
    return rows


def main() -> int:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    import cupy as cp

    from mamba_core.registry import get_backend

    be = get_backend("cuda_cupy")
    bw = peak_bandwidth(cp)
    log(f"device: {REPORT['device']} (peak {bw / 1e12:.2f} TB/s), cupy {cp.__version__}")
    for name, fn in (("check", lambda: part_check(be)), ("decode", lambda: part_decode(be, bw)),
                     ("kernels", lambda: part_kernels(be, bw))):
        if name == "kernels" and elapsed() > BUDGET_S:
            log(f"\n--- {name}: skipped (budget of {BUDGET_S:.0f} s spent)")
            continue
        log(f"\n--- {name} ({elapsed():.1f} s)")
        try:
            REPORT[name] = fn()
        except Exception as exc:  # keep going: report it as a failure
            traceback.print_exc()
            REPORT[name] = {"error": f"{type(exc).__name__}: {exc}"}
            REPORT["fails"].append(f"{name}: {type(exc).__name__}: {exc}")
    REPORT["seconds"] = round(elapsed(), 1)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "check_mixer_step.json").write_text(json.dumps(REPORT, indent=1, default=str))
    log(f"\n{'FAIL' if REPORT['fails'] else 'PASS'} in {REPORT['seconds']} s"
        + "".join(f"\n  {f}" for f in REPORT["fails"]))
    return 1 if REPORT["fails"] else 0


if __name__ == "__main__":
    sys.exit(main())
