"""The Mamba language model (mamba_ssm's ``MambaLMHeadModel``), over a flat dict of params.

token ids -> embedding -> [block] x n_layer -> add + final RMSNorm -> head -> logits

Params use the original mamba_ssm keys: ``backbone.embedding.weight`` (V', D),
``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.<name>``, ``backbone.norm_f.weight``,
and ``lm_head.weight`` (V', D) only when the head is not tied. V' is the padded vocabulary.
A cache is a list with one mixer cache (a dict of arrays) per layer.
"""

from __future__ import annotations

import math

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.models import block, init
from mamba_core.models.config import LMConfig


def _layer(i: int) -> str:
    return f"backbone.layers.{i}."


def _layers(params: dict, n_layer: int) -> list[dict]:
    """The blocks' parameters, unprefixed, in one pass over ``params`` (scope() per layer would
    walk every key once per layer: milliseconds per decoded token at 24+ layers)."""
    out: list[dict] = [{} for _ in range(n_layer)]
    pre = "backbone.layers."
    n = len(pre)
    for k, v in params.items():
        if k.startswith(pre):
            i, _, rest = k[n:].partition(".")
            out[int(i)][rest] = v
    return out


def param_shapes(cfg: LMConfig) -> dict:
    shapes = {"backbone.embedding.weight": (cfg.padded_vocab_size, cfg.d_model)}
    for i in range(cfg.n_layer):
        shapes.update({_layer(i) + k: v for k, v in block.param_shapes(cfg).items()})
    shapes["backbone.norm_f.weight"] = (cfg.d_model,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.padded_vocab_size, cfg.d_model)
    return shapes


def init_params(cfg: LMConfig, rng: np.random.Generator) -> dict:
    """Official initialisation: mixers' own init, embedding ~ N(0, 0.02), and the output
    projections of each residual branch (out_proj, fc2) rescaled by 1/sqrt(branches * n_layer)."""
    p = {"backbone.embedding.weight": (rng.standard_normal((cfg.padded_vocab_size, cfg.d_model)) * 0.02).astype(np.float32)}
    branches = 2 if cfg.d_intermediate else 1
    scale = 1.0 / math.sqrt(branches * cfg.n_layer)
    for i in range(cfg.n_layer):
        for k, v in block.init_params(cfg, rng).items():
            if k in ("mixer.out_proj.weight", "mlp.fc2.weight"):
                v = (v * scale).astype(np.float32)
            elif k.endswith(".bias") and k not in ("mixer.dt_proj.bias", "mixer.conv1d.bias"):
                v = np.zeros_like(v)  # mamba_ssm zeroes Linear biases
            p[_layer(i) + k] = v
    p["backbone.norm_f.weight"] = np.ones(cfg.d_model, np.float32)
    if not cfg.tie_embeddings:
        p["lm_head.weight"] = init.linear_weight(rng, cfg.padded_vocab_size, cfg.d_model)
    return p


def check_params(cfg: LMConfig, params: dict) -> None:
    """Every expected tensor present with its shape, nothing unexpected; errors name the key."""
    want = param_shapes(cfg)
    missing = sorted(set(want) - set(params))
    unexpected = sorted(set(params) - set(want))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} (expected shapes "
                         f"{[want[k] for k in missing[:5]]})")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise ShapeError("language-model parameters do not match the config: " + "; ".join(parts))
    for k, shape in want.items():
        got = tuple(params[k].shape)
        if got != tuple(shape):
            raise ShapeError(f"parameter {k!r}: expected shape {tuple(shape)}, found {got}")


def to_backend(be, params: dict, dtype: str = "float32") -> dict:
    """Move a dict of NumPy params onto a backend in ``dtype``."""
    return {k: be.asarray(v, dtype) for k, v in params.items()}


def init_cache(be, cfg: LMConfig, batch: int, dtype: str = "float32") -> list:
    mcfg = cfg.mixer_config
    return [cfg.mixer.init_cache(be, mcfg, batch, dtype) for _ in range(cfg.n_layer)]


def _head(be, params, cfg, hidden, residual):
    hidden, _ = be.ops.add_rmsnorm(
        hidden, residual, params["backbone.norm_f.weight"], cfg.norm_epsilon, cfg.residual_in_fp32
    )
    w = params["backbone.embedding.weight" if cfg.tie_embeddings else "lm_head.weight"]
    return be.ops.linear(hidden, w)


def _check_ids(ids, ndim: int, what: str):
    if getattr(ids, "ndim", None) != ndim or "int" not in str(getattr(ids, "dtype", "")):
        raise ShapeError(
            f"{what}: token ids must be an integer array of shape {'(B, L)' if ndim == 2 else '(B,)'}, "
            f"got {type(ids).__name__} with shape {getattr(ids, 'shape', None)} and dtype "
            f"{getattr(ids, 'dtype', None)}"
        )


def forward(be, params: dict, cfg: LMConfig, ids, cache: list | None = None, last_only: bool = False):
    """ids: (B, L) ints -> (logits (B, L, V') or (B, V') when last_only, new cache)."""
    _check_ids(ids, 2, "forward")
    if cache is not None and len(cache) != cfg.n_layer:
        raise ShapeError(f"forward: cache has {len(cache)} layers, the model has {cfg.n_layer}")
    hidden = be.ops.embedding(ids, params["backbone.embedding.weight"])
    residual = None
    new_cache = []
    layers = _layers(params, cfg.n_layer)
    for i in range(cfg.n_layer):
        hidden, residual, c = block.forward(
            be, layers[i], cfg, hidden, residual, None if cache is None else cache[i]
        )
        new_cache.append(c)
    if last_only:
        hidden, residual = hidden[:, -1], residual[:, -1]
    return _head(be, params, cfg, hidden, residual), new_cache


def step(be, params: dict, cfg: LMConfig, ids, cache: list):
    """ids: (B,) ints, the next token of each row -> (logits (B, V'), new cache)."""
    _check_ids(ids, 1, "step")
    if cache is None or len(cache) != cfg.n_layer:
        raise ShapeError(
            f"step: needs a cache with {cfg.n_layer} layers (from forward or init_cache), got "
            f"{None if cache is None else len(cache)}"
        )
    hidden = be.ops.embedding(be.xp.reshape(ids, (-1, 1)), params["backbone.embedding.weight"])[:, 0]
    residual = None
    new_cache = []
    layers = _layers(params, cfg.n_layer)
    for i in range(cfg.n_layer):
        hidden, residual, c = block.step(be, layers[i], cfg, hidden, residual, cache[i])
        new_cache.append(c)
    return _head(be, params, cfg, hidden, residual), new_cache


# ---- training: forward keeping what backward needs, backward, loss and gradients -------------
def forward_train(be, params: dict, cfg: LMConfig, ids, cache: list | None = None):
    """forward, also returning ``saved`` for backward. ids: (B, L) -> (logits, new cache, saved)."""
    _check_ids(ids, 2, "forward_train")
    emb = params["backbone.embedding.weight"]
    hidden = be.ops.embedding(ids, emb)
    residual = None
    new_cache, blocks = [], []
    layers = _layers(params, cfg.n_layer)
    for i in range(cfg.n_layer):
        hidden, residual, c, s = block.forward_train(
            be, layers[i], cfg, hidden, residual, None if cache is None else cache[i]
        )
        new_cache.append(c)
        blocks.append(s)
    hn, _ = be.ops.add_rmsnorm(hidden, residual, params["backbone.norm_f.weight"], cfg.norm_epsilon,
                               cfg.residual_in_fp32)
    logits = be.ops.linear(hn, params["backbone.embedding.weight" if cfg.tie_embeddings else "lm_head.weight"])
    saved = {"ids": ids, "hidden": hidden, "residual": residual, "hn": hn, "blocks": blocks}
    return logits, new_cache, saved


def backward(be, params: dict, cfg: LMConfig, saved: dict, dlogits, dcache: list | None = None):
    """dlogits: (B, L, V') -> (grads for every key of params, dcache_in per layer or None)."""
    head = "backbone.embedding.weight" if cfg.tie_embeddings else "lm_head.weight"
    grads = {}
    g = be.ops.linear_vjp(dlogits, saved["hn"], params[head])
    dhead = g["weight"]
    g = be.ops.add_rmsnorm_vjp((g["x"], None), saved["hidden"], saved["residual"],
                               params["backbone.norm_f.weight"], cfg.norm_epsilon, cfg.residual_in_fp32)
    grads["backbone.norm_f.weight"] = g["weight"]
    dhidden, dresidual = g["x"], g["residual"]
    dcache_in = [None] * cfg.n_layer
    layers = _layers(params, cfg.n_layer)
    for i in reversed(range(cfg.n_layer)):
        dlayer, dhidden, dresidual, dcache_in[i] = block.backward(
            be, layers[i], cfg, saved["blocks"][i], dhidden, dresidual,
            None if dcache is None else dcache[i],
        )
        grads.update({_layer(i) + k: v for k, v in dlayer.items()})
    demb = be.ops.embedding_vjp(dhidden, saved["ids"], params["backbone.embedding.weight"])["weight"]
    if cfg.tie_embeddings:
        grads["backbone.embedding.weight"] = demb + dhead
    else:
        grads["backbone.embedding.weight"] = demb
        grads["lm_head.weight"] = dhead
    return grads, (None if all(c is None for c in dcache_in) else dcache_in)


def loss_and_grad(be, params: dict, cfg: LMConfig, ids, targets, cache: list | None = None,
                  ignore_index: int = -100):
    """Mean next-token cross-entropy and its gradients.

    ids, targets: (B, L) ints (targets = the ids shifted by one; ``ignore_index`` entries do not
    count). Returns (loss as a Python float, grads: one array per key of params).
    """
    _check_ids(targets, 2, "loss_and_grad (targets)")
    logits, _, saved = forward_train(be, params, cfg, ids, cache)
    loss = be.ops.cross_entropy(logits, targets, ignore_index, "mean")
    dlogits = be.ops.cross_entropy_vjp(1.0, logits, targets, ignore_index, "mean")["logits"]
    grads, _ = backward(be, params, cfg, saved, dlogits)
    return float(loss), grads


class MambaLM:
    """A language model bound to a backend: config + params + the functions above."""

    def __init__(self, cfg: LMConfig, params: dict, backend=None, dtype: str = "float32"):
        from mamba_core.registry import get_backend

        self.backend = backend if backend is not None and not isinstance(backend, str) else get_backend(backend)
        self.cfg = cfg
        self.dtype = dtype
        check_params(cfg, params)
        self.params = to_backend(self.backend, params, dtype)

    @classmethod
    def random(cls, cfg: LMConfig, backend=None, dtype: str = "float32", seed: int = 0) -> "MambaLM":
        return cls(cfg, init_params(cfg, np.random.default_rng(seed)), backend, dtype)

    @classmethod
    def from_pretrained(cls, path, backend=None, dtype: str = "float32", allow_pickle: bool = False) -> "MambaLM":
        """Load a checkpoint folder (HF or mamba_ssm layout); see ``mamba_core.checkpoint``."""
        from mamba_core.checkpoint import from_pretrained

        return from_pretrained(path, backend=backend, dtype=dtype, allow_pickle=allow_pickle)

    def save_pretrained(self, path, layout: str | None = None, dtype: str | None = None, max_shard_size=None) -> str:
        """Save as a checkpoint folder, atomically; see ``mamba_core.checkpoint.save_pretrained``."""
        from mamba_core.checkpoint import save_pretrained

        return save_pretrained(self, path, layout=layout, dtype=dtype, max_shard_size=max_shard_size)

    def forward(self, ids, cache=None, last_only=False):
        return forward(self.backend, self.params, self.cfg, self.backend.asarray(ids), cache, last_only)

    def step(self, ids, cache):
        return step(self.backend, self.params, self.cfg, self.backend.asarray(ids), cache)

    def init_cache(self, batch: int):
        return init_cache(self.backend, self.cfg, batch, self.dtype)
