"""The ``mamba-core`` command line.

    mamba-core backends                 installed backends: available or why not, native ops
    mamba-core conformance BACKEND ...  certify a backend (needs mamba-conformance installed)
    mamba-core demo [--backend NAME]    a small random-weight Mamba-3 LM: prefill, then decode
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mamba_core.errors import MambaError


def _cmd_backends(args) -> int:
    from mamba_core.ops import REGISTRY
    from mamba_core.registry import installed, load_errors

    backends = installed()
    if not backends and not load_errors():
        print("no backends installed; pip install -e backends/cpu_numpy")
        return 1
    n_ops = len(REGISTRY)
    for name, be in sorted(backends.items(), key=lambda kv: (-kv[1].priority, kv[0])):
        why = be.available()
        state = "available" if why else f"NOT available: {why.reason}"
        native = [op for op in be.native_ops() if op in REGISTRY]
        print(f"{name:<14} priority {be.priority:>4}  {state}")
        if be.description:
            print(f"  {be.description}")
        print(f"  dtypes: {', '.join(be.dtypes)}")
        caps = be.capabilities
        print(f"  capabilities: cuda_graphs={caps.cuda_graphs} batch_invariant={caps.batch_invariant} "
              f"deterministic={caps.deterministic}")
        print(f"  native ops ({len(native)}/{n_ops}): {', '.join(native) or 'none (all default compositions)'}")
    for name, err in sorted(load_errors().items()):
        print(f"{name:<14} BROKEN: {err}")
    return 0


def _cmd_conformance(args) -> int:
    try:
        from mamba_conformance.cli import main as conformance_main
    except ImportError:
        print("mamba-conformance is not installed: pip install -e conformance", file=sys.stderr)
        return 2
    return conformance_main(args.rest)


def _cmd_demo(args) -> int:
    from mamba_core.models.config import LMConfig
    from mamba_core.models.lm import MambaLM

    ssm = {"layer": args.layer}
    if args.layer != "Mamba1":
        ssm.update(d_state=args.d_state, headdim=args.headdim)
    if args.layer == "Mamba2":
        ssm.update(chunk_size=64)
    if args.layer == "Mamba3" and args.mimo_rank > 1:
        ssm.update(is_mimo=True, mimo_rank=args.mimo_rank)
    cfg = LMConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=256, ssm_cfg=ssm)
    model = MambaLM.random(cfg, backend=args.backend, dtype=args.dtype, seed=args.seed)
    be = model.backend
    n_params = sum(int(np.prod(v.shape)) for v in model.params.values())
    print(f"backend {be.name} ({be.description}); dtype {args.dtype}")
    print(f"random-weight {args.layer} LM: d_model {cfg.d_model}, {cfg.n_layer} layers, "
          f"{n_params / 1e6:.2f}M params, ssm_cfg {ssm}")
    prompt = np.frombuffer(args.prompt.encode("utf-8"), dtype=np.uint8).astype(np.int64)[None]
    t0 = time.perf_counter()
    logits, cache = model.forward(prompt)
    t_prefill = time.perf_counter() - t0
    print(f"prefill {prompt.shape[1]} tokens: {t_prefill * 1e3:.1f} ms "
          f"({prompt.shape[1] / t_prefill:.0f} tokens/s)")

    # Decode greedily, and check on the way that step agrees with the parallel forward.
    last = be.to_numpy(logits[:, -1])
    tokens = list(prompt[0])
    t0 = time.perf_counter()
    for _ in range(args.new_tokens):
        nxt = int(np.argmax(last[0, :256]))
        tokens.append(nxt)
        logits_t, cache = model.step(np.array([nxt], dtype=np.int64), cache)
        last = be.to_numpy(logits_t)
    t_decode = time.perf_counter() - t0
    print(f"decode {args.new_tokens} tokens: {t_decode * 1e3:.1f} ms "
          f"({args.new_tokens / max(t_decode, 1e-9):.0f} tokens/s)")
    full, _ = model.forward(np.array([tokens], dtype=np.int64))
    full = be.to_numpy(full)[0, -1]
    err = float(np.max(np.abs(full - last[0])) / max(np.max(np.abs(full)), 1e-30))
    print(f"step vs parallel forward over the whole sequence: max relative error {err:.2e}")
    text = bytes(t for t in tokens[prompt.shape[1]:]).decode("utf-8", errors="replace")
    print(f"greedy continuation (random weights, so gibberish): {text!r}")
    tol = 1e-3 if args.dtype == "float32" else 1e-9
    if not err < tol:
        print(f"FAILED: step and forward disagree beyond {tol}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mamba-core", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("backends", help="list installed backends, availability, native ops")
    b.set_defaults(func=_cmd_backends)

    c = sub.add_parser("conformance", help="certify a backend (same as mamba-conformance)",
                       add_help=False)
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=_cmd_conformance)

    d = sub.add_parser("demo", help="random-weight Mamba-3 LM: prefill then decode on a backend")
    d.add_argument("--backend", default=None, help="backend name (default: $MAMBA_BACKEND or best available)")
    d.add_argument("--layer", default="Mamba3", choices=["Mamba1", "Mamba2", "Mamba3"])
    d.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    d.add_argument("--d-model", type=int, default=128)
    d.add_argument("--n-layer", type=int, default=4)
    d.add_argument("--d-state", type=int, default=32)
    d.add_argument("--headdim", type=int, default=32)
    d.add_argument("--mimo-rank", type=int, default=1)
    d.add_argument("--new-tokens", type=int, default=32)
    d.add_argument("--prompt", default="The state space model reads ")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MambaError as exc:
        print(f"mamba-core: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
