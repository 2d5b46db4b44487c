"""The gradient column: how each kind of check is differentiated.

- ``op:X`` checks certify ``X_vjp``: the check's forward is run once with the op calls recorded,
  and the VJP is called on the recorded arguments with fixed pseudo-random cotangents. For an op
  that may have a saving form (``mamba_core.ops.saving.SAVABLE``) the entry also names the
  outputs and gradients through the backend's saving form (``saved.out<i>``, ``saved.d<arg>``:
  ``forward_saving`` then ``vjp_saved`` on the same arguments and cotangents), certified against
  the same truth; a backend without one repeats its plain outputs and VJP there, at no cost.
- ``mixer:*`` checks certify the mixer's ``forward_train``/``backward`` with cotangents for the
  output and every final-cache entry: gradients of every parameter, the input and the initial
  cache.
- ``lm:*`` checks certify the language model's cross-entropy gradients (``lm.loss_and_grad``),
  for every parameter.

Cotangents are drawn from a generator seeded by the output's name and shape, in float64, so the
reference and the backend under test see the same values (rounded to the tested dtype).
A check may also pass its own ``grad`` function; it wins over these rules.
"""

from __future__ import annotations

import zlib

import numpy as np

from mamba_core.ops import REGISTRY
from mamba_core.ops.saving import SAVABLE


def unpack(inputs: dict, prefix: str) -> dict:
    """The entries 'prefix<name>' of a check's inputs, as {name: value}."""
    n = len(prefix)
    return {k[n:]: v for k, v in inputs.items() if k.startswith(prefix)}


def cotangent(be, name: str, like):
    """A fixed pseudo-random array shaped like ``like`` (its dtype), the same on every backend."""
    shape = tuple(like.shape)
    seed = zlib.crc32(f"{name}:{shape}".encode())
    values = np.random.default_rng(seed).standard_normal(shape)
    return be.asarray(values, str(like.dtype).replace("torch.", ""))


class _Recorder:
    """Forwards everything to a backend; records the first call of one op through ``ops``."""

    def __init__(self, be, op: str):
        self._be, self._op, self.call = be, op, None
        outer = self

        class _Ops:
            def __getattr__(self, name):
                fn = getattr(be.ops, name)
                if name != op:
                    return fn

                def recording(*args, **kwargs):
                    out = fn(*args, **kwargs)
                    if outer.call is None:
                        outer.call = (args, kwargs, out)
                    return out

                return recording

        self.ops = _Ops()

    def __getattr__(self, name):
        return getattr(self._be, name)


def op_grad(op: str, forward):
    """The grad function of an ``op:<op>`` check whose forward is ``forward``; None when the op
    has no VJP."""
    if f"{op}_vjp" not in REGISTRY:
        return None

    def grad(be, inputs) -> dict:
        rec = _Recorder(be, op)
        forward(rec, inputs)
        if rec.call is None:
            raise RuntimeError(f"the check's forward never called {op}")
        args, kwargs, out = rec.call
        if isinstance(out, tuple):
            cot = tuple(None if o is None else cotangent(be, f"{op}.out{i}", o) for i, o in enumerate(out))
        else:
            cot = cotangent(be, f"{op}.out", out)
        grads = getattr(be.ops, f"{op}_vjp")(cot, *args, **kwargs)
        result = {f"d{k}": v for k, v in grads.items()}
        if op in SAVABLE:
            result.update(_through_saving(be, op, args, kwargs, cot, out, grads))
        return result

    return grad


def _through_saving(be, op: str, args, kwargs, cot, out, grads) -> dict:
    """``saved.out<i>`` and ``saved.d<arg>`` of an op grad entry (see the module docstring)."""
    if be.ops.saves(op):
        out, res = be.ops.forward_saving(op, *args, **kwargs)
        grads = be.ops.vjp_saved(op, res, cot, *args, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    result = {f"saved.out{i}": o for i, o in enumerate(outs) if o is not None}
    result.update({f"saved.d{k}": v for k, v in grads.items()})
    return result


def mixer_grad(be, inputs) -> dict:
    """Gradients of a mixer check: every parameter, the input u, and the initial cache."""
    from mamba_conformance.mixers import split_inputs

    cfg, mod, params, cache = split_inputs(inputs)
    y, new_cache, saved = mod.forward_train(be, params, cfg, inputs["u"], cache)
    dy = cotangent(be, "y", y)
    dcache = {k: cotangent(be, f"cache.{k}", v) for k, v in new_cache.items()}
    dparams, du, dcache_in = mod.backward(be, params, cfg, saved, dy, dcache)
    out = {"du": du}
    out.update({f"d:{k}": v for k, v in dparams.items()})
    if cache is not None:
        out.update({f"dcache:{k}": v for k, v in (dcache_in or {}).items()})
    return out


def lm_grad(be, inputs) -> dict:
    """Cross-entropy loss of a language-model check and its gradient for every parameter."""
    from mamba_core.models import lm

    cfg = inputs["cfg"]
    params = unpack(inputs, "param:")
    ids = inputs["ids"]
    prefix = inputs["prefix"]
    cache = lm.forward(be, params, cfg, prefix)[1] if prefix.shape[1] else None
    targets = be.asarray(inputs["targets"])
    _, grads = lm.loss_and_grad(be, params, cfg, ids, targets, cache)
    return {f"d:{k}": v for k, v in grads.items()}


def grad_function(check):
    """The grad function of a check, by the rules in this module's docstring (None: no gradient)."""
    if check.grad is not None:
        return check.grad
    kind, _, name = check.name.partition(":")
    if kind == "op":
        return op_grad(name, check.forward)
    if kind == "mixer":
        return mixer_grad
    if kind == "lm":
        return lm_grad
    return None
