"""The ``mamba-conformance`` command: certify one backend, print the certificate, write JSON.

    mamba-conformance BACKEND [--dtype DT ...] [--only NAME_OR_GLOB ...] [--case LABEL]
                      [--mode forward|step|grad ...] [--ops OP ...] [--json PATH | --no-json]
                      [--quiet] [--verbose] [--seed N] [--list]

BACKEND is an installed backend's name (see ``mamba-core backends``) or 'module:attribute'
naming a Backend object or class (for a backend that is not registered yet).

Exit status: 0 when every entry passes, 1 when any entry fails or errors, 2 on a usage error or
an unknown/unavailable backend.
"""

from __future__ import annotations

import argparse
import os
import sys

from mamba_conformance.check import MODES, TOLERANCES

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mamba-conformance", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("backend", nargs="?", help="backend name (or module:attribute)")
    p.add_argument("--dtype", action="append", metavar="DT", choices=list(TOLERANCES),
                   help="dtype to certify (repeatable; default: the backend's dtypes with a tolerance)")
    p.add_argument("--only", action="append", metavar="NAME_OR_GLOB",
                   help="checks to run by name or glob, e.g. op:rmsnorm, 'mixer:*', rmsnorm (repeatable)")
    p.add_argument("--case", action="append", metavar="LABEL", help="case label or glob (repeatable)")
    p.add_argument("--mode", action="append", choices=list(MODES),
                   help="forward, step, grad (default: all three)")
    p.add_argument("--ops", action="append", metavar="OP", help="only the checks exercising this op (repeatable)")
    p.add_argument("--json", metavar="PATH",
                   help="where to write the JSON certificate (default BACKEND.certificate.json; - for stdout)")
    p.add_argument("--no-json", action="store_true", help="do not write the JSON certificate")
    p.add_argument("--seed", type=int, default=0, help="base seed of the inputs (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the failures and the summary line")
    p.add_argument("-v", "--verbose", action="store_true", help="one table row per case")
    p.add_argument("--list", action="store_true", help="list the checks and their cases, run nothing")
    return p


def _list(out) -> int:
    from mamba_conformance.cases import IMPORT_ERROR, all_checks

    status = EXIT_OK
    for c in all_checks():
        if c.kind == IMPORT_ERROR:
            print(f"{c.name}  BROKEN: {c.doc}", file=out)
            status = EXIT_FAIL
            continue
        modes = "forward" + (", step" if c.step else "")
        print(f"{c.name}  ({c.kind}; {modes}; ops: {', '.join(c.ops) or '-'})  {c.doc}", file=out)
        for case in c.cases:
            print(f"    {case.label}", file=out)
    return status


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.list:
        return _list(sys.stdout)
    if not args.backend:
        parser.print_usage(sys.stderr)
        print("mamba-conformance: error: name the backend to certify (see `mamba-core backends`)",
              file=sys.stderr)
        return EXIT_USAGE

    from mamba_core.errors import MambaError
    from mamba_conformance import runner

    try:
        be = runner.resolve_backend(args.backend)
    except (MambaError, ImportError, AttributeError, TypeError) as exc:
        print(f"mamba-conformance: {exc}", file=sys.stderr)
        return EXIT_USAGE

    modes = tuple(dict.fromkeys(args.mode)) if args.mode else runner.DEFAULT_MODES
    try:
        items = runner.plan(be, args.dtype, args.only, modes, args.case, args.ops)
    except (MambaError, ValueError) as exc:
        print(f"mamba-conformance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not items:
        from mamba_conformance.cases import all_checks

        names = ", ".join(c.name for c in all_checks())
        print(f"mamba-conformance: nothing matches --only {args.only or '*'} --case {args.case or '*'} "
              f"--ops {args.ops or '*'}; the checks are: {names} (see --list for their cases)",
              file=sys.stderr)
        return EXIT_USAGE

    to_stdout_json = args.json == "-"
    out = sys.stderr if to_stdout_json else sys.stdout
    progress = None
    if not args.quiet and sys.stderr.isatty():
        def progress(entry, done, total):
            line = f"[{done}/{total}] {entry.title}: {entry.verdict}"
            sys.stderr.write("\r" + line[:110].ljust(110))
            if done == total:
                sys.stderr.write("\r" + " " * 110 + "\r")
            sys.stderr.flush()

    cert = runner.run(be, args.dtype, args.only, modes, args.seed, progress, case=args.case, ops=args.ops)

    if args.quiet:
        for i, e in enumerate(cert.failures, 1):
            print(f"{i}. {e.message()}", file=out)
        print(cert.summary(), file=out)
    else:
        print(cert.render(verbose=args.verbose), file=out)

    if not args.no_json:
        path = args.json or f"{be.name}.certificate.json"
        try:
            written = cert.to_json(path)
        except OSError as exc:
            print(f"mamba-conformance: could not write the JSON certificate to {path}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if written != "-":
            print(f"certificate written to {os.path.relpath(written)}", file=out)
    return EXIT_OK if cert.ok else EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
