"""Cross-entropy of logits against integer targets (the language-model loss).

cross_entropy(logits, targets, ignore_index=-100, reduction="mean") -> loss
    logits: (..., V) floating; targets: (...) integers in [0, V) or equal to ignore_index.
    Per position: l = logsumexp(logits) - logits[target], with a max-shifted (stable)
    log-softmax computed in float32 at least. Positions whose target is ignore_index count
    for nothing. reduction "sum": the sum of l; "mean": that sum divided by the number of
    non-ignored positions. Returns a 0-d array in logits' dtype.

    All targets ignored under "mean" is 0/0. torch returns nan there; mamba-core raises a
    ShapeError instead (saying what happened and what to do), because a silent nan poisons
    every parameter through the optimizer. The check reads one count back to the host (one
    device sync per call with reduction "mean"); reduction "sum" never syncs and returns 0.

cross_entropy_vjp(dloss, logits, targets, ignore_index=-100, reduction="mean")
    -> {"logits": (..., V)}: dloss * (softmax(logits) - onehot(target)) on non-ignored rows,
    zero on ignored rows, divided by the count under "mean". targets get no gradient.
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.ops.spec import OpSpec, register

REDUCTIONS = ("mean", "sum")


def _all_ignored_error(ignore_index):
    return ShapeError(
        f"cross_entropy: every target equals ignore_index ({ignore_index}), so the mean over "
        "non-ignored targets is 0/0 (torch would return nan); pass reduction='sum' (which gives "
        "0), or leave this batch out"
    )


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ShapeError(f"cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")


# ---- reference (float64 NumPy) ------------------------------------------------------------
def _rows_ref(logits, targets, ignore_index):
    """(V,) rows and their targets, with target range checked."""
    z = np.asarray(logits, np.float64)
    t = np.asarray(targets)
    V = z.shape[-1]
    z2, t2 = z.reshape(-1, V), t.reshape(-1)
    bad = (t2 != ignore_index) & ((t2 < 0) | (t2 >= V))
    if bad.any():
        raise ShapeError(
            f"cross_entropy: targets must lie in [0, {V}) or equal ignore_index ({ignore_index}), "
            f"got {t2[bad][:5].tolist()}; check the labels match the model's vocab_size"
        )
    return z2, t2


def cross_entropy_ref(logits, targets, ignore_index=-100, reduction="mean"):
    """Cross-entropy in float64, one position at a time."""
    _check_reduction(reduction)
    z2, t2 = _rows_ref(logits, targets, ignore_index)
    total, count = 0.0, 0
    for i in range(z2.shape[0]):
        if t2[i] == ignore_index:
            continue
        m = z2[i].max()
        lse = m + np.log(np.sum(np.exp(z2[i] - m)))
        total += lse - z2[i, t2[i]]
        count += 1
    if reduction == "sum":
        return np.asarray(total)
    if count == 0:
        raise _all_ignored_error(ignore_index)
    return np.asarray(total / count)


def cross_entropy_vjp_ref(dloss, logits, targets, ignore_index=-100, reduction="mean"):
    """VJP of cross_entropy in float64: {"logits": dloss * (softmax - onehot) / count}."""
    _check_reduction(reduction)
    z2, t2 = _rows_ref(logits, targets, ignore_index)
    dz = np.zeros(z2.shape)
    count = int(np.sum(t2 != ignore_index))
    if reduction == "mean" and count == 0:
        raise _all_ignored_error(ignore_index)
    if dloss is None:
        return {"logits": dz.reshape(np.shape(logits))}
    scale = float(dloss) / (count if reduction == "mean" else 1)
    for i in range(z2.shape[0]):
        if t2[i] == ignore_index:
            continue
        p = np.exp(z2[i] - z2[i].max())
        p /= p.sum()
        p[t2[i]] -= 1.0
        dz[i] = scale * p
    return {"logits": dz.reshape(np.shape(logits))}


# ---- default compositions (array API) -----------------------------------------------------
def _prepare(xp, logits, targets, ignore_index):
    """Flattened wide logits (M, V), validity mask (M,), safe targets (M,) and log-sum-exp."""
    V = logits.shape[-1]
    wide = xp.float64 if logits.dtype == xp.float64 else xp.float32
    z = xp.astype(xp.reshape(logits, (-1, V)), wide)
    t = xp.astype(xp.reshape(targets, (-1,)), xp.int64)
    valid = t != ignore_index
    safe = xp.where(valid, t, xp.zeros_like(t))
    m = xp.max(z, axis=-1, keepdims=True)
    lse = m[:, 0] + xp.log(xp.sum(xp.exp(z - m), axis=-1))
    return z, valid, safe, lse, wide


def _count(xp, valid, wide):
    return xp.sum(xp.astype(valid, wide))


def cross_entropy(xp, logits, targets, ignore_index=-100, reduction="mean"):
    """Mean (or sum) cross-entropy. logits: (..., V); targets: (...) ints -> 0-d loss.

    Gathers the target logits with a flat ``xp.take`` (O(M) extra memory), log-sum-exp with the
    row max subtracted, all in >= float32.
    """
    _check_reduction(reduction)
    z, valid, safe, lse, wide = _prepare(xp, logits, targets, ignore_index)
    M, V = z.shape
    picked = xp.take(xp.reshape(z, (-1,)), xp.arange(M, dtype=xp.int64) * V + safe)
    per = xp.where(valid, lse - picked, xp.zeros_like(lse))
    total = xp.sum(per)
    if reduction == "mean":
        count = _count(xp, valid, wide)
        if float(count) == 0.0:
            raise _all_ignored_error(ignore_index)
        total = total / count
    return xp.astype(total, logits.dtype)


def cross_entropy_vjp(xp, dloss, logits, targets, ignore_index=-100, reduction="mean"):
    """VJP of cross_entropy. dloss: 0-d (or None); -> {"logits": (..., V) in logits' dtype}.

    softmax minus the one-hot of the target (a comparison with arange(V)), zeroed on ignored
    rows, scaled by dloss (/ count under "mean"); computed in >= float32.
    """
    _check_reduction(reduction)
    z, valid, safe, lse, wide = _prepare(xp, logits, targets, ignore_index)
    count = _count(xp, valid, wide)
    if reduction == "mean" and float(count) == 0.0:
        raise _all_ignored_error(ignore_index)
    if dloss is None:
        return {"logits": xp.zeros_like(logits)}
    M, V = z.shape
    p = xp.exp(z - xp.expand_dims(lse, axis=1))
    onehot = xp.astype(xp.arange(V, dtype=xp.int64) == xp.expand_dims(safe, axis=1), wide)
    scale = float(dloss) if isinstance(dloss, (int, float)) else xp.astype(dloss, wide)
    if reduction == "mean":
        scale = scale / count
    dz = xp.where(xp.expand_dims(valid, axis=1), (p - onehot) * scale, xp.zeros_like(p))
    return {"logits": xp.astype(xp.reshape(dz, tuple(logits.shape)), logits.dtype)}


# ---- validation ---------------------------------------------------------------------------
def validate_cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    _check_reduction(reduction)
    if logits.ndim < 1:
        raise ShapeError("cross_entropy: 'logits' must have shape (..., V), got a 0-d array")
    lname = str(logits.dtype).replace("torch.", "")
    if "float" not in lname:
        raise ShapeError(f"cross_entropy: 'logits' must be a floating array, got dtype {lname}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ShapeError(
            f"cross_entropy: 'targets' must have logits' shape without the vocab axis, "
            f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    tname = str(targets.dtype)
    if "int" not in tname:
        raise ShapeError(f"cross_entropy: 'targets' must be an integer array, got dtype {tname}")


register(
    OpSpec("cross_entropy", "cross_entropy", cross_entropy_ref, cross_entropy, validate_cross_entropy)
)
register(
    OpSpec(
        "cross_entropy_vjp", "cross_entropy", cross_entropy_vjp_ref, cross_entropy_vjp,
        vjp_of="cross_entropy",
    )
)
