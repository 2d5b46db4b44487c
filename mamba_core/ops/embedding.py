"""Token embedding lookup.

embedding(ids, weight): ids (B, L) integers in [0, V), weight (V, D) -> (B, L, D).
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops._checks import Dims
from mamba_core.ops.spec import OpSpec, register


def embedding_ref(ids, weight):
    """weight[ids] in float64; raises on ids outside [0, V)."""
    ids = np.asarray(ids)
    w = np.asarray(weight, np.float64)
    if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
        raise ShapeError(
            f"embedding: token ids must lie in [0, {w.shape[0]}), got values from {ids.min()} to "
            f"{ids.max()}; check the tokenizer matches the model's vocab_size"
        )
    return w[ids]


def embedding(xp, ids, weight):
    """weight[ids]. ids: (B, L) ints; weight: (V, D) -> (B, L, D)."""
    flat = xp.reshape(ids, (-1,))
    out = xp.take(weight, flat, axis=0)
    return xp.reshape(out, tuple(ids.shape) + (weight.shape[-1],))


def validate_embedding(ids, weight):
    d = Dims("embedding")
    d.check("weight", weight, ("V", "D"))
    if ids.ndim != 2:
        raise ShapeError(f"embedding: 'ids' must have shape (B, L), got shape {tuple(ids.shape)}")
    kind = str(ids.dtype)
    if "int" not in kind:
        raise ShapeError(f"embedding: 'ids' must be an integer array, got dtype {kind}")


register(OpSpec("embedding", "embedding", embedding_ref, embedding, validate_embedding))
