"""The ``mamba-core`` command line.

    mamba-core backends                 installed backends: available or why not, native ops, saving forms
    mamba-core conformance BACKEND ...  certify a backend (needs mamba-conformance installed)
    mamba-core demo [--backend NAME]    train a tiny Mamba-3 on the bundled corpus (~1 min), then
                                        generate from it (--random-weights: the quick graph check)
    mamba-core train ...                train a Mamba-1/2/3 byte-level LM (see mamba-core train -h)
    mamba-core generate --model PATH --prompt TEXT   sample from a checkpoint folder
    mamba-core convert SRC DST --to hf|mamba_ssm     convert a checkpoint between layouts
    mamba-core bench [--quick] [--backends a,b]      compare backends against their physical floors
    mamba-core new-backend NAME         scaffold a separately packaged backend
    mamba-core ops [--markdown]         the ops a backend may implement, with signatures
"""

from __future__ import annotations

import argparse
import importlib
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
        saving = sorted(getattr(be, "saving", {}) or {})
        if saving:
            print(f"  saving forms (forward keeps residuals for the VJP): {', '.join(saving)}")
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
    if not args.random_weights:
        from mamba_core.training import demo

        result = demo(seconds=args.seconds, backend=args.backend, seed=args.seed)
        return 0 if result is not None else 1
    return _random_weights_demo(args)


def _random_weights_demo(args) -> int:
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


def _cmd_new_backend(args) -> int:
    from mamba_core.scaffold import Names, new_backend, next_steps

    target = new_backend(args.name, args.out, dist=args.dist, package=args.package)
    print(next_steps(Names.of(args.name, dist=args.dist, package=args.package), target))
    return 0


def _cmd_ops(args) -> int:
    import inspect

    from mamba_core.ops import REGISTRY

    specs = sorted(REGISTRY.values(), key=lambda s: (s.family, s.vjp_of is not None, s.step_of is not None, s.name))
    if args.markdown:
        print("| op | family | kind | signature (after `xp` for the default) | shapes |")
        print("| --- | --- | --- | --- | --- |")
    for s in specs:
        kind = f"step of {s.step_of}" if s.step_of else (f"VJP of {s.vjp_of}" if s.vjp_of else "forward")
        sig = f"{s.name}{inspect.signature(s.reference)}"
        if args.markdown:
            summary = s.summary.replace("|", "\\|")
            print(f"| `{s.name}` | {s.family} | {kind} | `{sig}` | {summary} |")
        else:
            print(f"{sig}\n    [{s.family}; {kind}] {s.summary}")
    return 0


#: modules that each register one subcommand through ``add_parser(subparsers)``
SUBCOMMAND_MODULES = ("mamba_core.training.cli", "mamba_core.generation_cli", "mamba_core.checkpoint.cli",
                      "mamba_core.bench.cli")


def _unavailable(exc) -> int:
    print(f"mamba-core: this command is unavailable here: {exc}", file=sys.stderr)
    return 2


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

    d = sub.add_parser("demo", help="train a tiny Mamba-3 for about a minute, then generate from it")
    d.add_argument("--backend", default=None, help="backend name (default: $MAMBA_BACKEND or best available)")
    d.add_argument("--seconds", type=float, default=60.0, help="training time budget (default 60)")
    d.add_argument("--random-weights", action="store_true",
                   help="instead: a random-weight LM, parallel prefill then recurrent decode, checking "
                        "that step agrees with forward (the options below apply to this mode)")
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

    nb = sub.add_parser("new-backend", help="scaffold a separately packaged backend (see docs/writing-a-backend.md)")
    nb.add_argument("name", help="backend name: a lower-case Python identifier, e.g. my_backend")
    nb.add_argument("--out", default=None, metavar="DIR",
                    help="directory to create (default ./mamba-backend-NAME); must not exist")
    nb.add_argument("--dist", default=None, help="distribution name (default mamba-backend-NAME)")
    nb.add_argument("--package", default=None, help="import package name (default mamba_backend_NAME)")
    nb.set_defaults(func=_cmd_new_backend)

    for module in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # an optional part whose dependency is missing
            broken = sub.add_parser(module.rsplit(".", 1)[-1], help=f"(unavailable: {exc})")
            broken.set_defaults(func=lambda _args, _e=exc: _unavailable(_e))
            continue
        mod.add_parser(sub)

    o = sub.add_parser("ops", help="list the ops: signature, family, forward/step/VJP, shapes")
    o.add_argument("--markdown", action="store_true", help="as a Markdown table")
    o.set_defaults(func=_cmd_ops)
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
