"""``mamba-core convert SRC DST --to {hf,mamba_ssm}``: rewrite a checkpoint folder in the other layout.

Wire it in with ``add_parser(subparsers)``; the handler returns the exit status.
"""

from __future__ import annotations

import sys


def _cmd_convert(args) -> int:
    from mamba_core.checkpoint.errors import CheckpointError
    from mamba_core.checkpoint.pretrained import convert, detect_layout

    to = args.to
    if to is None:
        to = "mamba_ssm" if detect_layout(args.src) == "hf" else "hf"
    try:
        st = convert(args.src, args.dst, to, dtype=args.dtype, max_shard_size=args.max_shard_size,
                     allow_pickle=args.allow_pickle)
    except OSError as exc:  # e.g. an unwritable destination: nothing was written
        raise CheckpointError(f"cannot write {args.dst}: {exc}") from None
    for note in st.notes:
        print(f"note: {note}", file=sys.stderr)
    n = sum(int(v.size) for v in st.params.values())
    print(f"{args.src} ({st.layout}, {st.cfg.layer}, {st.cfg.n_layer} layers, {n:,} parameters, "
          f"{st.dtype}) -> {args.dst} ({to}, {args.dtype or st.dtype})")
    return 0


def add_parser(subparsers):
    """Register ``convert`` on an argparse subparsers object; returns the parser."""
    c = subparsers.add_parser(
        "convert", help="rewrite a checkpoint folder between the HF and mamba_ssm layouts (safetensors)")
    c.add_argument("src", help="checkpoint folder (config.json + weights), either layout")
    c.add_argument("dst", help="folder to write (replaced atomically; other files in it are kept)")
    c.add_argument("--to", choices=["hf", "mamba_ssm"], default=None,
                   help="target layout (default: the other one)")
    c.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"], default=None,
                   help="stored dtype (default: the source's)")
    c.add_argument("--max-shard-size", default=None, metavar="SIZE",
                   help="split into shards of at most SIZE (e.g. 2GB) with an index.json")
    c.add_argument("--allow-pickle", action="store_true",
                   help="read pytorch_model.bin (a pickle: it can run arbitrary code; only for trusted files)")
    c.set_defaults(func=_cmd_convert)
    return c
