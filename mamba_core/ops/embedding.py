"""Token embedding lookup.

embedding(ids, weight): ids (B, L) integers in [0, V), weight (V, D) -> (B, L, D).

embedding_vjp(dy, ids, weight) -> {"weight": (V, D)}: the scatter-add
    dW[v] = sum over positions (b, l) with ids[b, l] = v of dy[b, l].
ids are integers and get no gradient.
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


def embedding_vjp_ref(dy, ids, weight):
    """VJP of embedding in float64: {"weight": scatter-add of dy rows into the ids' rows}."""
    ids = np.asarray(ids)
    w = np.asarray(weight, np.float64)
    dw = np.zeros(w.shape)
    if dy is None:
        return {"weight": dw}
    dy = np.asarray(dy, np.float64)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            dw[ids[b, t]] += dy[b, t]
    return {"weight": dw}


#: upper bound on the one-hot block (rows x tokens) that embedding_vjp builds at a time
ONEHOT_BLOCK = 1 << 22


def embedding_vjp(xp, dy, ids, weight):
    """VJP of embedding. dy: (B, L, D); ids: (B, L) ints; weight: (V, D) -> {"weight": (V, D)}.

    The array API has no scatter-add, so this builds, for a block of Vc vocabulary rows at a
    time, the one-hot matrix (Vc, M) of which of the M = B*L tokens hit each row, and multiplies
    it by dy (M, D). Exact (each row sums only its own tokens, in >= float32) but costs
    O(V * M * D) flops and O(ONEHOT_BLOCK) extra memory; a backend with a scatter-add
    (np.add.at, torch.index_add_, cupy atomics) should override ``embedding_vjp`` natively.
    """
    V, D = weight.shape
    if dy is None:
        return {"weight": xp.zeros_like(weight)}
    wide = xp.float64 if weight.dtype == xp.float64 else xp.float32
    flat = xp.reshape(ids, (1, -1))  # (1, M)
    M = flat.shape[1]
    dy2 = xp.astype(xp.reshape(dy, (M, D)), wide)
    rows = max(1, min(V, ONEHOT_BLOCK // max(M, 1)))
    blocks = []
    for v0 in range(0, V, rows):
        vocab = xp.reshape(xp.arange(v0, min(V, v0 + rows), dtype=flat.dtype), (-1, 1))
        onehot = xp.astype(vocab == flat, wide)  # (Vc, M)
        blocks.append(xp.matmul(onehot, dy2))
    dw = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)
    return {"weight": xp.astype(dw, weight.dtype)}


def validate_embedding(ids, weight):
    d = Dims("embedding")
    d.check("weight", weight, ("V", "D"))
    if ids.ndim != 2:
        raise ShapeError(f"embedding: 'ids' must have shape (B, L), got shape {tuple(ids.shape)}")
    kind = str(ids.dtype)
    if "int" not in kind:
        raise ShapeError(f"embedding: 'ids' must be an integer array, got dtype {kind}")


register(OpSpec("embedding", "embedding", embedding_ref, embedding, validate_embedding))
register(OpSpec("embedding_vjp", "embedding", embedding_vjp_ref, embedding_vjp, vjp_of="embedding"))
