"""Prefill and decode speed of one ~130M-sized layer per family, and the memory-bandwidth floor.

    python backends/cpu_numpy/perf.py [--default]    (--default: the core's default compositions,
                                                      i.e. the backend without its kernels)
Prints prefill tokens/s (B=1, L=256), decode tokens/s (B=1) and the floor
(fp32 weight bytes per token / bandwidth measured with a large np.copyto).
"""

from __future__ import annotations

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
    a = np.ones(64 * 2**20, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    t = min(_time(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / t  # bytes read + written per second


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    be = get_backend("cpu_numpy")
    if "--default" in sys.argv:
        be.kernels = {"embedding": be.kernels["embedding"]}
        be.__dict__.pop("ops", None)
    bw = bandwidth()
    print(f"bandwidth (np.copyto, read+write): {bw / 1e9:.1f} GB/s")
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
              f"{bw / 1e9:.1f} GB/s; {td / floor:.1f}x floor)")


if __name__ == "__main__":
    main()
