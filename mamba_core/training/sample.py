"""A sample from a freshly trained byte-level model, through ``mamba_core.generation``.

Training holds (backend, params, cfg) rather than a ``MambaLM``; this wraps them and asks the
one sampler the project has for ``n_new`` bytes (temperature 0 = greedy, no stop tokens).
"""

from __future__ import annotations

from mamba_core.generation import generate as _generate
from mamba_core.models.lm import MambaLM


def generate(be, params: dict, cfg, prompt: bytes, n_new: int, temperature: float = 0.8,
             seed: int = 0) -> bytes:
    """``n_new`` bytes after ``prompt``. Only ids < vocab_size are ever drawn."""
    dtype = str(next(iter(params.values())).dtype).replace("torch.", "")
    model = MambaLM(cfg, params, be, dtype)
    ids = _generate(model, [list(prompt or b"\n")], max_new_tokens=n_new,
                    temperature=temperature, seed=seed, stop_tokens=())[0]
    return bytes(ids)  # byte-level presets: vocab_size 256, and generation never draws beyond it
