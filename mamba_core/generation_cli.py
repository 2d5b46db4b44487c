"""``mamba-core generate``: text from a checkpoint folder, greedy or sampled, optionally streamed.

    mamba-core generate --model PATH --prompt TEXT [--prompt TEXT ...] [--max-new-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--min-p M] [--repetition-penalty R]
        [--seed S] [--stop TEXT ...] [--stream] [--backend NAME] [--dtype DT]

The tokenizer is PATH/tokenizer.json read with the ``tokenizers`` package when the folder has
one, else byte-level (UTF-8 bytes = ids 0..255). ``--model random`` uses a small random-weight
byte-level Mamba-3 model (for trying the command without a checkpoint).

Wired into ``mamba_core.cli`` with ``generation_cli.add_parser(subparsers)``.
"""

from __future__ import annotations

import os
import sys
import time

from mamba_core.errors import MambaError


def add_parser(subparsers):
    g = subparsers.add_parser(
        "generate", help="generate text from a checkpoint (greedy unless a sampling option is given)",
        description=__doc__.split("\n\n")[0] + " Greedy unless --temperature, --top-k, --top-p, "
        "--min-p or --sample is given; --temperature 0 is always greedy.",
    )
    g.add_argument("--model", required=True, metavar="PATH",
                   help="checkpoint folder (config.json + weights [+ tokenizer.json]), or 'random'")
    g.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="a prompt; repeat for a batch of prompts (any lengths)")
    g.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    g.add_argument("--temperature", type=float, default=None, metavar="T")
    g.add_argument("--top-k", type=int, default=None, metavar="K")
    g.add_argument("--top-p", type=float, default=None, metavar="P")
    g.add_argument("--min-p", type=float, default=None, metavar="M")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R")
    g.add_argument("--sample", action="store_true", help="sample (temperature 1) even with no other option")
    g.add_argument("--seed", type=int, default=0, metavar="S")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop a prompt's generation once its output contains TEXT (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the tokenizer's eos token")
    g.add_argument("--stream", action="store_true",
                   help="print text as it is generated (with several prompts: each as soon as it ends)")
    g.add_argument("--backend", default=None, help="backend name (default: $MAMBA_BACKEND or best available)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    g.set_defaults(func=run)
    return g


def _random_model(backend, dtype: str):
    from mamba_core.models.config import LMConfig
    from mamba_core.models.lm import MambaLM

    cfg = LMConfig(d_model=64, n_layer=2, vocab_size=256,
                   ssm_cfg={"layer": "Mamba3", "d_state": 16, "headdim": 16, "chunk_size": 16})
    return MambaLM.random(cfg, backend=backend, dtype=dtype, seed=0)


def load_model(path: str, backend=None, dtype: str = "float32"):
    """A MambaLM from a checkpoint folder through ``mamba_core.checkpoint.from_pretrained``."""
    if path == "random":
        return _random_model(backend, dtype)
    if not os.path.exists(path):
        raise MambaError(f"--model {path}: no such file or folder (give a checkpoint folder, or 'random')")
    try:
        from mamba_core.checkpoint import from_pretrained
    except ImportError as exc:
        raise MambaError(f"cannot load {path}: this mamba-core has no checkpoint loader "
                         f"(mamba_core.checkpoint.from_pretrained: {exc}); use --model random to "
                         "try the command") from None
    return from_pretrained(path, backend=backend, dtype=dtype)


def run(args) -> int:
    from mamba_core.generation import GenerationConfig, generate, stream
    from mamba_core.tokenizer import ByteTokenizer, load_tokenizer

    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        seed=args.seed, stop_strings=tuple(args.stop), do_sample=True if args.sample else None,
        stop_tokens=() if args.ignore_eos else None,
    )  # validated here, before the model is loaded
    tok = ByteTokenizer() if args.model == "random" else load_tokenizer(args.model)
    model = load_model(args.model, args.backend, args.dtype)
    if isinstance(tok, ByteTokenizer) and model.cfg.vocab_size != 256:
        print(f"warning: {args.model} has no tokenizer.json; using byte-level tokens (ids 0..255) "
              f"for a model with vocab_size {model.cfg.vocab_size}", file=sys.stderr)
    mode = "greedy" if not config.sampling else f"sampling (seed {config.seed})"
    print(f"# {args.model}: {model.cfg.layer}, {model.cfg.n_layer} layers, d_model {model.cfg.d_model}; "
          f"backend {model.backend.name}, {args.dtype}; tokenizer {tok.name}; {mode}", file=sys.stderr)

    prompts = args.prompt
    stop = set(config.stop_tokens if config.stop_tokens is not None else
               ([] if tok.eos_token_id is None else [tok.eos_token_id]))
    t0 = time.perf_counter()
    n_tokens = 0
    if args.stream and len(prompts) == 1:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()
        for step in stream(model, prompts, config, tokenizer=tok, as_text=True):
            n_tokens += 1
            if step[0]:
                sys.stdout.write(step[0])
                sys.stdout.flush()
        sys.stdout.write("\n")
    elif args.stream:  # several prompts: print each one as soon as it has ended
        ids: list[list[int]] = [[] for _ in prompts]
        printed = [False] * len(prompts)
        for step in stream(model, prompts, config, tokenizer=tok, as_text=False):
            for b, k in enumerate(step):
                if k is not None:
                    ids[b].append(k)
                    n_tokens += 1
                elif not printed[b]:
                    _print_row(b, prompts[b], tok.decode([i for i in ids[b] if i not in stop]), len(prompts))
                    printed[b] = True
        for b in range(len(prompts)):
            if not printed[b]:
                _print_row(b, prompts[b], tok.decode([i for i in ids[b] if i not in stop]), len(prompts))
    else:
        out = generate(model, prompts, config, tokenizer=tok)
        for b, row in enumerate(out):
            _print_row(b, prompts[b], tok.decode([i for i in row if i not in stop]), len(prompts))
        n_tokens = sum(len(row) for row in out)
    dt = time.perf_counter() - t0
    print(f"# {n_tokens} new tokens in {dt:.2f} s ({n_tokens / max(dt, 1e-9):.1f} tokens/s, "
          f"prefill included)", file=sys.stderr)
    return 0


def _print_row(b: int, prompt: str, text: str, n: int) -> None:
    if n > 1:
        print(f"--- [{b}] ---")
    print(prompt + text, flush=True)
