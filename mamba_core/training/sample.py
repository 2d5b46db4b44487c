"""A small sampler for trained byte-level models: prefill with ``lm.forward``, then ``lm.step``.

(A fuller generation module with top-k/top-p/penalties is separate; this one is enough to show
what a freshly trained model writes.)
"""

from __future__ import annotations

import numpy as np

from mamba_core.models import lm


def generate(be, params: dict, cfg, prompt: bytes, n_new: int, temperature: float = 0.8,
             seed: int = 0) -> bytes:
    """``n_new`` bytes after ``prompt`` (temperature 0 = greedy). Only ids < vocab_size are drawn."""
    if not prompt:
        prompt = b"\n"
    rng = np.random.default_rng(seed)
    ids = be.asarray(np.frombuffer(prompt, np.uint8).astype(np.int64)[None])
    logits, cache = lm.forward(be, params, cfg, ids, last_only=True)
    out = bytearray()
    for _ in range(n_new):
        z = be.to_numpy(logits).astype(np.float64)[0, : cfg.vocab_size]
        if temperature <= 0:
            nxt = int(np.argmax(z))
        else:
            z = z / temperature
            p = np.exp(z - z.max())
            nxt = int(rng.choice(z.shape[0], p=p / p.sum()))
        out.append(nxt)
        logits, cache = lm.step(be, params, cfg, be.asarray(np.array([nxt], np.int64)), cache)
    return bytes(out)
