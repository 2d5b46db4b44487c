"""Prefill and decode speed of cpu_numpy: one ~130M-sized layer per family, or the whole ~130M
language models against HF transformers, with the memory-bandwidth floor.

    python backends/cpu_numpy/perf.py [--default]
        one layer per family (d_model 768): prefill B=1 L=256, decode B=1; --default runs the
        core's default compositions instead (the backend without its kernels)
    python backends/cpu_numpy/perf.py --hf [--families mamba1,mamba2] [--repeats 5]
                                      [--backend cpu_numpy] [--no-hf] [--profile]
        the bench's ~130M random-weight models (d_model 768, 24 layers, vocab 50280; built by
        mamba_core.bench.models) against HF transformers' torch path (mamba_core.bench.external),
        in one process with the same thread count: prefill 1 x 512 (head on the last position,
        as HF's logits_to_keep=1) and decode batch 1, 64 tokens. Prints medians, the ratios and
        the floors: decode = fp32 weight bytes per token / copy bandwidth; prefill = projection
        flops / measured sgemm rate. --profile prints a cProfile of one decode run and one prefill.

    python backends/cpu_numpy/perf.py --decoder [--families mamba2] [--repeats 5] [--batch 1]
        decode of the same ~130M models, lm.step against the StaticDecoder (static_decoder.py),
        runs interleaved: median ms/token over 64 tokens, and the traced bytes per token.

Every figure is printed with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.registry import get_backend

FAMILIES = {
    "mamba1": {"layer": "Mamba1"},
    "mamba2": {"layer": "Mamba2"},
    "mamba3": {"layer": "Mamba3"},
}


def bandwidth() -> float:
    """Copy bandwidth (bytes read + written per second) of a 256 MiB np.copyto, best of 5."""
    a = np.ones(64 * 2**20, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    t = min(_time(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / t


def sgemm_rate(M=512, K=768, N=3352) -> float:
    """float32 matmul flops per second through NumPy's BLAS at a prefill-like shape, best of 5."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    w = rng.standard_normal((N, K), dtype=np.float32)
    x @ w.T
    t = min(_time(lambda: x @ w.T) for _ in range(5))
    return 2.0 * M * K * N / t


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def layer_main(default: bool):
    be = get_backend("cpu_numpy")
    if default:
        be.kernels = {"embedding": be.kernels["embedding"]}
        be.mixer_steps = {}
        be.__dict__.pop("ops", None)
    bw = bandwidth()
    print(f"bandwidth (np.copyto, read+write): {bw / 1e9:.1f} GB/s; {load()}")
    for fam, mix in FAMILIES.items():
        cfg = LMConfig(d_model=768, n_layer=1, vocab_size=1024, ssm_cfg=dict(mix))
        params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)))
        ids = np.random.default_rng(1).integers(0, 1024, size=(1, 256))
        lm.forward(be, params, cfg, ids[:, :8])  # warm-up (compile)
        t = min(_time(lambda: lm.forward(be, params, cfg, ids)) for _ in range(2))
        cache = lm.forward(be, params, cfg, ids[:, :8])[1]
        tok = ids[:, 0]
        for _ in range(3):
            _, cache = lm.step(be, params, cfg, tok, cache)
        n = 30
        t0 = time.perf_counter()
        for _ in range(n):
            _, cache = lm.step(be, params, cfg, tok, cache)
        td = (time.perf_counter() - t0) / n
        wbytes = sum(v.nbytes for k, v in params.items() if "embedding" not in k)
        floor = wbytes / bw
        print(f"{fam}: prefill {256 / t:8.0f} tok/s | decode {1 / td:7.1f} tok/s "
              f"({td * 1e3:.2f} ms/token; floor {floor * 1e3:.2f} ms = {wbytes / 1e6:.1f} MB / "
              f"{bw / 1e9:.1f} GB/s; {td / floor:.1f}x floor) | {load()}")


def _median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = [_time(fn) for _ in range(repeats)]
    return statistics.median(times), times


def _profile(fn, label, n=25):
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    print(f"---- cProfile: {label}")
    pstats.Stats(pr).sort_stats("tottime").print_stats(n)


def hf_main(args):
    from mamba_core.bench import external, models
    from mamba_core.bench.presets import MODEL_130M

    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    be = get_backend(args.backend)
    bw = bandwidth()
    gemm = sgemm_rate()
    print(f"machine: {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__}; backend {be.name}")
    print(f"copy bandwidth {bw / 1e9:.1f} GB/s, sgemm (512x768x3352) {gemm / 1e9:.1f} GFLOP/s; {load()}")
    hf = external.HFTransformers()
    rows = []
    for fam in args.families.split(","):
        for task in (models.ModelTask(fam, MODEL_130M, "prefill", 1, 512),
                     models.ModelTask(fam, MODEL_130M, "decode", 1, 64)):
            cfg = models.config(fam, MODEL_130M)
            counts = models.param_counts(cfg, models.numpy_params(fam, MODEL_130M))
            ours = models.prepare(be, task)
            if args.profile:
                _profile(ours, f"{fam} {task.label} (ours)")
            l0 = load()
            t_ours, all_ours = _median_time(ours, args.repeats)
            line = dict(family=fam, task=task.label, ours=t_ours, ours_all=all_ours, load_ours=l0)
            if not args.no_hf and fam in hf.families:
                ext = hf.model(task)
                l1 = load()
                t_hf, all_hf = _median_time(ext, args.repeats)
                line.update(hf=t_hf, hf_all=all_hf, load_hf=l1)
                del ext
            tok = task.tokens
            if task.task == "decode":
                wbytes = 4.0 * (counts["all"] - 0)  # every weight once per token (tied head included)
                floor = wbytes / bw
                line["floor"] = floor * tok
                line["floor_note"] = f"{wbytes / 1e6:.0f} MB fp32 weights / {bw / 1e9:.1f} GB/s = {floor * 1e3:.1f} ms/token"
            else:
                flops = 2.0 * counts["matmul"] * tok + 2.0 * counts["head"]
                line["floor"] = flops / gemm
                line["floor_note"] = f"{flops / 1e9:.1f} GFLOP projections / {gemm / 1e9:.0f} GFLOP/s sgemm"
            rows.append(line)
            _print_row(line, tok)
            del ours
    return rows


def decoder_main(args, n_tok=64):
    import tracemalloc

    from mamba_core.bench import models
    from mamba_core.bench.presets import MODEL_130M

    be = get_backend(args.backend)
    print(f"backend {be.name}, numpy {np.__version__}; decode batch {args.batch}, {n_tok} tokens "
          f"per run, {args.repeats} runs each, interleaved; {load()}")
    for fam in args.families.split(","):
        cfg = models.config(fam, MODEL_130M)
        params = lm.to_backend(be, models.numpy_params(fam, MODEL_130M), "float32")
        rng = np.random.default_rng(0)
        _, cache0 = lm.forward(be, params, cfg, rng.integers(0, cfg.vocab_size, (args.batch, 8)))
        toks = [rng.integers(0, cfg.vocab_size, args.batch) for _ in range(n_tok)]
        dec = be.static_decoder(params, cfg, "float32")

        def plain():
            cache = cache0
            for t in toks:
                _, cache = lm.step(be, params, cfg, t, cache)

        def static():
            dec.set_cache(cache0)
            for t in toks:
                dec.step(t)

        plain(), static()  # warm-up (compile, buffers)
        runs = {"lm.step": [], "StaticDecoder": []}
        loads = [load()]
        for _ in range(args.repeats):
            runs["lm.step"].append(_time(plain) / n_tok)
            runs["StaticDecoder"].append(_time(static) / n_tok)
            loads.append(load())
        traced = {}
        for name, one in (("lm.step", lambda: lm.step(be, params, cfg, toks[0], cache0)),
                          ("StaticDecoder", lambda: dec.step(toks[0]))):
            one()
            tracemalloc.start()
            tracemalloc.reset_peak()
            b = tracemalloc.get_traced_memory()[0]
            one()
            traced[name] = tracemalloc.get_traced_memory()[1] - b
            tracemalloc.stop()
        for name, ts in runs.items():
            print(f"{fam} {name:13s}: {statistics.median(ts) * 1e3:6.2f} ms/token median (runs "
                  + " ".join(f"{t * 1e3:.2f}" for t in ts)
                  + f"); traced peak per token {traced[name] / 1e6:.3f} MB")
        print(f"{fam} speed-up {statistics.median(runs['lm.step']) / statistics.median(runs['StaticDecoder']):.2f}x; "
              + "; ".join(loads), flush=True)


def _print_row(r, tok):
    s = (f"{r['family']} {r['task']}: ours {tok / r['ours']:8.1f} tok/s ({r['ours']:.3f} s, runs "
         + " ".join(f"{t:.3f}" for t in r["ours_all"]) + f"; {r['load_ours']})")
    if "hf" in r:
        s += (f" | HF {tok / r['hf']:8.1f} tok/s ({r['hf']:.3f} s, runs "
              + " ".join(f"{t:.3f}" for t in r["hf_all"]) + f"; {r['load_hf']}) | ours/HF {r['hf'] / r['ours']:.2f}x")
    s += f" | floor {r['floor']:.3f} s ({r['floor_note']}), ours {r['ours'] / r['floor']:.2f}x floor"
    print(s, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--default", action="store_true")
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--families", default="mamba1,mamba2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="cpu_numpy")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--decoder", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    if args.decoder:
        decoder_main(args)
    elif args.hf:
        hf_main(args)
    else:
        layer_main(args.default)


if __name__ == "__main__":
    sys.exit(main())
