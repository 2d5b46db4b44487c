"""The ``bench`` subcommand: ``add_parser(subparsers)`` registers it on mamba-core's parser."""

from __future__ import annotations

import shlex
import sys


def add_parser(subparsers):
    p = subparsers.add_parser(
        "bench", help="compare backends: op and model level, against physical floors",
        description="Run every selected backend (default: all available but 'reference') over the "
                    "op-level and model-level benches of a preset, in one process; print a table and "
                    "write JSON, Markdown, a text table and a PNG plot.")
    p.add_argument("--backends", default=None, help="comma-separated backend names (default: all available)")
    p.add_argument("--preset", default="cpu", choices=["quick", "cpu", "gpu"],
                   help="shape preset (default cpu; gpu: B=8 L=2048 d_inner 2048 N=128, 130M/370M models)")
    p.add_argument("--quick", action="store_true", help="the CI smoke preset (well under a minute)")
    p.add_argument("--baseline", default=None, help="backend the ratios divide by (default cpu_numpy)")
    p.add_argument("--level", default="ops,models", help="ops, models or both (default ops,models)")
    p.add_argument("--families", default=None, help="subset of mamba1,mamba2,mamba3,mamba3_mimo")
    p.add_argument("--no-external", action="store_true", help="leave out the external rows")
    p.add_argument("--out", default="benchmarks/results", help="output directory (default benchmarks/results)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
    return p


def _split(s):
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def main(args) -> int:
    from mamba_core.bench import report, runner

    cmd = "mamba-core " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "mamba-core bench"
    res = runner.run(_split(args.backends), args.preset, quick=args.quick, baseline=args.baseline,
                     levels=tuple(_split(args.level)), families=_split(args.families),
                     external=not args.no_external, seed=args.seed, progress=not args.no_progress, command=cmd)
    print(report.table(res))
    paths = report.write(res, args.out)
    print("\nwrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":  # python -m mamba_core.bench.cli ...
    import argparse

    ap = argparse.ArgumentParser(prog="mamba-core")
    add_parser(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args()
    sys.exit(a.func(a))
