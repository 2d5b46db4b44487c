"""The demo: train mamba3-tiny on the bundled Shakespeare for a time budget, then write a sample."""

from __future__ import annotations

import tempfile
from typing import Callable


def demo(seconds: float = 60.0, backend=None, out_dir: str | None = None, seed: int = 0,
         seq_len: int = 128, batch: int = 8, lr: float = 3e-3, prompt: str = "HAMLET.\n",
         new_tokens: int = 300, temperature: float = 0.8, quiet: bool = False,
         progress: bool | None = None, log: Callable[[str], None] = print):
    """Train ``mamba3-tiny`` for about ``seconds`` on the best available backend (or ``backend``),
    print validation loss against the unigram baseline, then a sample. Returns the TrainResult
    with ``.sample`` (bytes) added."""
    from mamba_core.training.loop import TrainConfig, train
    from mamba_core.training.presets import get_preset
    from mamba_core.training.sample import generate

    say = (lambda s: None) if quiet else log
    cfg = get_preset("mamba3-tiny")
    out_dir = out_dir or tempfile.mkdtemp(prefix="mamba-core-demo-")
    tcfg = TrainConfig(steps=None, time_budget=seconds, seq_len=seq_len, batch=batch, lr=lr, seed=seed,
                       val_windows=16)
    res = train(cfg, tcfg, out_dir, backend=backend, quiet=quiet, progress=progress,
                preset="mamba3-tiny", log=log)
    from mamba_core.registry import get_backend

    be = get_backend(res.backend)
    say(f"trained {res.step} steps ({res.stopped}) at {res.tokens_per_s:,.0f} tokens/s on {res.backend}")
    if res.val_loss is not None:
        say(f"validation loss {res.val_loss:.3f} nats/byte vs unigram baseline {res.unigram:.3f} "
            f"({res.val_loss / res.unigram:.0%} of it); loss curve: {out_dir}/loss.png")
    text = generate(be, res.params, cfg, prompt.encode(), new_tokens, temperature, seed)
    res.sample = text
    say("sample (temperature %.1f):\n%s%s" % (temperature, prompt, text.decode("utf-8", "replace")))
    return res
