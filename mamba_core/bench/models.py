"""Model-level benchmarks: prefill tokens/s (a sweep over lengths), decode tokens/s (at each
decode batch), and a training step's tokens/s (loss and gradients of every parameter), for
random-weight language models of each family built with ``mamba_core.models.lm.init_params``.

Floors (float32, 4 bytes; P_mm = the weights of the projections (in/x/dt/out_proj, MLP fc1/fc2),
P_all = every parameter, V' x D = the tied head, T = tokens, S(T) = one layer's scan flops from
``mamba_core.bench.ops``' formulas):
    prefill:  flops = 2 P_mm T + 2 V' D B + n_layer S(T)        (the head on the last position only)
              bytes = 4 P_all                                   (every weight read once)
    decode:   per step, flops = 2 (P_mm + V' D) b + n_layer S_step(b)
              bytes = 4 (P_all + 2 cache)                        (weights read, cache read and written)
    train:    flops = 3 (2 (P_mm + V' D) T + n_layer S(T))      (backward ~ 2x forward)
              bytes = 4 * 3 P_all                                (weights read twice, gradients written)
Activations are left out of the bytes, so these floors are lower bounds.

Decode runs through the backend's decoder over static caches when it offers one
(``Backend.static_decoder``: what generation uses), else ``lm.step``; set
``MAMBA_NO_STATIC_DECODER=1`` to time plain steps.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mamba_core.backend import static_decoder_of
from mamba_core.bench.presets import ModelSize, Preset, ssm_cfg
from mamba_core.models import lm
from mamba_core.models.config import LMConfig


@dataclasses.dataclass(frozen=True)
class ModelTask:
    family: str
    size: ModelSize
    task: str  # prefill | decode | train
    batch: int
    length: int  # prefill/train: sequence length; decode: steps timed

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    @property
    def label(self) -> str:
        if self.task == "decode":
            return f"decode b={self.batch} x{self.length} steps"
        return f"{self.task} {self.batch}x{self.length}"


def tasks(preset: Preset, families=None) -> list[ModelTask]:
    out = []
    for size in preset.models:
        for fam in families or preset.families:
            for L in preset.prefill_lengths:
                out.append(ModelTask(fam, size, "prefill", preset.prefill_batch, L))
            for b, steps in preset.decode:
                out.append(ModelTask(fam, size, "decode", b, steps))
            out.append(ModelTask(fam, size, "train", preset.train_batch, preset.train_length))
    return out


def config(family: str, size: ModelSize) -> LMConfig:
    return LMConfig(d_model=size.d_model, n_layer=size.n_layer, vocab_size=size.vocab_size,
                    ssm_cfg=ssm_cfg(family, size))


_PARAMS: dict = {}


def numpy_params(family: str, size: ModelSize, seed: int = 0) -> dict:
    """Random float32 weights (the official init), built once per (family, size) and shared."""
    key = (family, size.name, seed)
    if key not in _PARAMS:
        _PARAMS.clear()  # one model's weights in memory at a time
        _PARAMS[key] = lm.init_params(config(family, size), np.random.default_rng(seed))
    return _PARAMS[key]


def param_counts(cfg: LMConfig, params: dict) -> dict:
    """n_params (all), matmul (projection weights), head (V' x D) and embedding counts."""
    total = sum(int(np.prod(v.shape)) for v in params.values())
    mm = sum(int(np.prod(v.shape)) for k, v in params.items()
             if k.endswith("proj.weight") or k.endswith("fc1.weight") or k.endswith("fc2.weight"))
    return {"all": total, "matmul": mm, "head": cfg.padded_vocab_size * cfg.d_model}


def _scan_flops(cfg: LMConfig, T: int, step: bool) -> float:
    """One layer's scan flops over T tokens (the formulas of bench.ops, recurrent form)."""
    m = cfg.mixer_config
    if cfg.layer == "Mamba1":
        return 7 * T * m.d_inner * m.d_state + 11 * T * m.d_inner
    H, P, N = m.nheads, m.headdim, m.d_state
    if cfg.layer == "Mamba2":
        return 5 * T * H * P * N + 3 * T * H * P
    R = m.mimo_rank if m.is_mimo else 1
    return (5 + 4 * R) * T * H * P * N + 3 * R * T * H * P


def _cache_elems(cfg: LMConfig, batch: int) -> int:
    shapes = cfg.mixer.cache_shapes(cfg.mixer_config, batch)
    return cfg.n_layer * sum(int(np.prod(s)) for s in shapes.values())


def cost(t: ModelTask, cfg: LMConfig, counts: dict) -> tuple[float, float]:
    """(bytes, flops) of one timed run of the task (see the module docstring)."""
    n = cfg.n_layer
    if t.task == "prefill":
        T = t.tokens
        return 4.0 * counts["all"], 2.0 * counts["matmul"] * T + 2.0 * counts["head"] * t.batch + n * _scan_flops(cfg, T, False)
    if t.task == "decode":
        per = 2.0 * (counts["matmul"] + counts["head"]) * t.batch + n * _scan_flops(cfg, t.batch, True)
        return t.length * 4.0 * (counts["all"] + 2 * _cache_elems(cfg, t.batch)), t.length * per
    T = t.tokens
    return 12.0 * counts["all"], 3.0 * (2.0 * (counts["matmul"] + counts["head"]) * T + n * _scan_flops(cfg, T, False))


def ids_for(t: ModelTask, cfg: LMConfig, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return rng.integers(1, cfg.vocab_size, size=(t.batch, t.length + 1), dtype=np.int64)


def prepare(be, t: ModelTask, seed: int = 0):
    """A zero-argument callable running the task once on backend ``be`` (weights moved there)."""
    cfg = config(t.family, t.size)
    params = lm.to_backend(be, numpy_params(t.family, t.size, seed), "float32")
    ids_np = ids_for(t, cfg, seed)
    if t.task == "prefill":
        ids = be.asarray(ids_np[:, : t.length])
        return lambda: lm.forward(be, params, cfg, ids, last_only=True)[0]
    if t.task == "train":
        ids, tgt = be.asarray(ids_np[:, :-1]), be.asarray(ids_np[:, 1:])
        return lambda: lm.loss_and_grad(be, params, cfg, ids, tgt)[1]
    # decode: a short prompt fills the cache once (untimed), then each run takes t.length steps
    prompt = be.asarray(ids_np[:, :8])
    _, cache0 = lm.forward(be, params, cfg, prompt, last_only=True)
    steps = [be.asarray(np.ascontiguousarray(ids_np[:, i % ids_np.shape[1]])) for i in range(t.length)]
    dec = static_decoder_of(be, params, cfg, "float32")
    if dec is not None:  # what generation decodes through (CUDA graphs, preallocated buffers)
        dec.set_cache(cache0)

        def run_static():
            logits = None
            for tok in steps:
                logits = dec.step(tok)
            return logits

        return run_static
    state = {"cache": cache0}

    def run():
        cache = state["cache"]
        logits = None
        for tok in steps:
            logits, cache = lm.step(be, params, cfg, tok, cache)
        state["cache"] = cache
        return logits

    return run


def describe(size: ModelSize, family: str) -> str:
    cfg = config(family, size)
    counts = param_counts(cfg, numpy_params(family, size))
    return f"{family} {size.name}: d_model {size.d_model}, {size.n_layer} layers, {counts['all'] / 1e6:.1f}M params"
