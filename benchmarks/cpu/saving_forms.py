"""The scans' saving forms on a CPU backend, A/B in one process: each scan op's forward+backward
and a language model's training step (lm.loss_and_grad), with the saving forms on and off
(MAMBA_NO_SAVING_FORMS=1, read at each call), alternated, medians of REPEATS.

    python benchmarks/cpu/saving_forms.py [BACKEND] [REPEATS] [--smoke]   (default cpu_numpy, 9)

--smoke: tiny shapes, to check that the script runs (tests/test_saving_forms.py does).

Prints a Markdown table: ms with and without, and their ratio. The forward+backward of an op is
what a mixer's forward_train and backward run: forward_saving then vjp_saved (the plain op and
VJP when the forms are off).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.registry import get_backend


def _median_ms(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3


def _ab(fn, repeats):
    """(ms with the saving forms, ms without), alternating the two so drift hits both."""
    on, off = [], []
    fn()  # compile / warm
    for _ in range(repeats):
        os.environ.pop("MAMBA_NO_SAVING_FORMS", None)
        on.append(_median_ms(fn, 1))
        os.environ["MAMBA_NO_SAVING_FORMS"] = "1"
        off.append(_median_ms(fn, 1))
    os.environ.pop("MAMBA_NO_SAVING_FORMS", None)
    return float(np.median(on)), float(np.median(off))


def _op_cases(rng, smoke=False, f=np.float32):
    B, L = (1, 70) if smoke else (2, 1024)
    E, N = (8, 4) if smoke else (256, 16)
    ss = ((rng.standard_normal((B, L, E)).astype(f), rng.standard_normal((B, L, E)).astype(f),
           -np.exp(rng.standard_normal((E, N))).astype(f), rng.standard_normal((B, L, 1, N)).astype(f),
           rng.standard_normal((B, L, 1, N)).astype(f)),
          dict(D=rng.standard_normal(E).astype(f), z=rng.standard_normal((B, L, E)).astype(f),
               delta_bias=rng.standard_normal(E).astype(f), delta_softplus=True))
    H, P, N = (2, 4, 4) if smoke else (8, 32, 32)
    x = rng.standard_normal((B, L, H, P)).astype(f)
    ssd = ((x, rng.standard_normal((B, L, H)).astype(f), -np.exp(rng.standard_normal(H)).astype(f),
            rng.standard_normal((B, L, 1, N)).astype(f), rng.standard_normal((B, L, 1, N)).astype(f)),
           dict(D=rng.standard_normal(H).astype(f), dt_softplus=True))
    m3 = ((x, rng.uniform(0.01, 0.2, (B, L, H)).astype(f), -rng.uniform(0.5, 2, (B, L, H)).astype(f),
           rng.uniform(0, 1, (B, L, H)).astype(f), rng.standard_normal((B, L, 1, H, N)).astype(f),
           rng.standard_normal((B, L, 1, H, N)).astype(f)), dict(D=rng.standard_normal(H).astype(f)))
    return {f"selective_scan (B={B} L={L} E={E} N={ss[0][2].shape[1]})": ("selective_scan", *ss),
            f"ssd_scan (B={B} L={L} H={H} P={P} N={N})": ("ssd_scan", *ssd),
            f"mamba3_scan (B={B} L={L} H={H} P={P} N={N})": ("mamba3_scan", *m3)}


def _lm_cases(smoke=False):
    d = 16 if smoke else 256
    base = dict(d_model=d, n_layer=2, vocab_size=64 if smoke else 512)
    return {f"{layer} LM training step (d_model {d}, 2 layers, B=2 L={70 if smoke else 512})":
            LMConfig(**base, ssm_cfg={"layer": layer, **extra})
            for layer, extra in (("Mamba1", {}), ("Mamba2", {"headdim": 8 if smoke else 32}),
                                 ("Mamba3", {"headdim": 8 if smoke else 32}))}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    smoke = "--smoke" in argv
    argv = [a for a in argv if a != "--smoke"]
    be = get_backend(argv[0] if argv else "cpu_numpy")
    repeats = int(argv[1]) if len(argv) > 1 else 9
    L_lm = 70 if smoke else 512
    rng = np.random.default_rng(0)
    rows = []
    for name, (op, args, kw) in _op_cases(rng, smoke).items():
        out = getattr(be.ops, op)(*args, **kw)
        cot = tuple(np.ones_like(o) if o is not None else None for o in out)

        def fb(op=op, args=args, kw=kw, cot=cot):
            _, res = be.ops.forward_saving(op, *args, **kw)
            return be.ops.vjp_saved(op, res, cot, *args, **kw)

        rows.append((name, *_ab(fb, repeats)))
    for name, cfg in _lm_cases(smoke).items():
        params = {k: be.asarray(v) for k, v in lm.init_params(cfg, np.random.default_rng(1)).items()}
        ids = rng.integers(0, cfg.vocab_size, (2, L_lm))
        targets = np.roll(ids, -1, axis=1)
        rows.append((name, *_ab(lambda: lm.loss_and_grad(be, params, cfg, ids, targets), repeats)))
    print(f"backend {be.name}, medians of {repeats} (alternated)\n")
    print("| forward+backward | saving forms on (ms) | off (ms) | on / off |")
    print("| --- | ---: | ---: | ---: |")
    for name, on, off in rows:
        print(f"| {name} | {on:.1f} | {off:.1f} | {on / off:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
