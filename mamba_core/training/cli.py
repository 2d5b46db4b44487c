"""``mamba-core train``: the command, registered by ``add_parser(subparsers)``.

    mamba-core train --preset mamba3-tiny --steps 300 --seq-len 128 --batch 8 --lr 3e-3 \\
                     --out runs/tiny [--data FILE] [--resume] [--backend NAME] [--time-budget S]

Writes checkpoints, loss.png and metrics.json into --out, then prints a short sample.
With --resume, options left out take the checkpoint's values.
"""

from __future__ import annotations

import argparse
import json
import os

from mamba_core.training import loop
from mamba_core.training.presets import PRESETS


def add_parser(subparsers) -> argparse.ArgumentParser:
    t = subparsers.add_parser(
        "train", help="train a Mamba-1/2/3 byte-level LM on a text file or the bundled corpus",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--preset", default=None, metavar="NAME",
                   help=f"model preset (default mamba3-tiny): {', '.join(PRESETS)}")
    t.add_argument("--data", default=None, metavar="FILE",
                   help="text file to train on (bytes are the tokens); default: the bundled corpus")
    t.add_argument("--out", required=True, metavar="DIR", help="run directory (checkpoints, loss.png)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--backend", default=None, help="backend name (default: $MAMBA_BACKEND or best available)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default 200, or sized "
                   "to --time-budget when only that is given)")
    t.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop (with a checkpoint) after this many seconds")
    t.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 128)")
    t.add_argument("--batch", type=int, default=None, help="sequences per micro-batch (default 8)")
    t.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3)")
    t.add_argument("--warmup", type=int, default=None, help="warmup steps (default 10%% of steps, <= 100)")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0.1)")
    t.add_argument("--clip", type=float, default=None, help="global gradient-norm clip (default 1.0; 0 = off)")
    t.add_argument("--seed", type=int, default=None, help="seed of init and batches (default 0)")
    t.add_argument("--dtype", default=None, choices=["float32", "float64"])
    t.add_argument("--val-every", type=int, default=None, help="steps between validation losses")
    t.add_argument("--sample-tokens", type=int, default=200, help="bytes to generate at the end (0: none)")
    t.add_argument("--prompt", default="HAMLET.\n", help="prompt of the final sample")
    t.add_argument("--temperature", type=float, default=0.8)
    t.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    t.set_defaults(func=run)
    return t


_TRAIN_FIELDS = {"steps": "steps", "seq_len": "seq_len", "batch": "batch", "grad_accum": "grad_accum",
                 "lr": "lr", "warmup": "warmup", "weight_decay": "weight_decay", "clip": "clip",
                 "seed": "seed", "dtype": "dtype", "val_every": "val_every", "time_budget": "time_budget"}


def run(args) -> int:
    from mamba_core.models.config import LMConfig
    from mamba_core.training import checkpoint as ckpt
    from mamba_core.training.presets import get_preset

    given = {f: getattr(args, a) for a, f in _TRAIN_FIELDS.items() if getattr(args, a) is not None}
    preset = args.preset
    if args.resume:
        root = os.path.join(args.out, "checkpoints")
        name = ckpt.latest_name(root)
        if name is None:
            ckpt.load(root)  # raises the CheckpointError that says what to do
        with open(os.path.join(root, name, "state.json")) as f:
            saved = json.load(f)
        base = {k: v for k, v in saved["train_config"].items() if k in loop.TRAJECTORY}
        for k in ("steps", "warmup"):  # the schedule comes from the checkpoint
            base.pop(k, None) if k in given else None
        tcfg = loop.TrainConfig(**{**base, **given})
        if preset is None:
            preset = saved.get("preset")
            model_cfg = get_preset(preset) if preset else LMConfig.from_dict(saved["model_config"])
        else:
            model_cfg = get_preset(preset)
    else:
        preset = preset or "mamba3-tiny"
        model_cfg = get_preset(preset)
        if "steps" not in given and "time_budget" not in given:
            given["steps"] = 200
        given.setdefault("steps", None)
        tcfg = loop.TrainConfig(**given)
    res = loop.train(model_cfg, tcfg, args.out, data=args.data, backend=args.backend,
                     resume=args.resume, quiet=args.quiet, preset=preset)
    if not args.quiet:
        print(f"{res.step}/{res.train_config.steps} steps ({res.stopped}), {res.tokens_per_s:,.0f} "
              f"tokens/s on {res.backend}; checkpoint {res.checkpoint}")
        if res.val_loss is not None:
            print(f"validation loss {res.val_loss:.3f} nats/byte; unigram baseline {res.unigram:.3f}; "
                  f"loss curve {os.path.join(args.out, 'loss.png')}")
    if args.sample_tokens > 0:
        from mamba_core.registry import get_backend
        from mamba_core.training.sample import generate

        be = get_backend(res.backend)
        text = generate(be, res.params, model_cfg, args.prompt.encode(), args.sample_tokens,
                        args.temperature, 0)
        print(f"--- sample ---\n{args.prompt}{text.decode('utf-8', 'replace')}")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (``python -m mamba_core.training.cli``) until the main CLI wires it in."""
    import sys

    from mamba_core.errors import MambaError

    p = argparse.ArgumentParser(prog="mamba-core")
    sub = p.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except MambaError as exc:
        print(f"mamba-core: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
