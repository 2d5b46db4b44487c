"""Helpers for testing the suite itself (and for a backend author's experiments): backends with
planted bugs, and in-process registration so the command line can find them.

    be = broken_backend("cpu_numpy", "broken_conv", {"causal_conv1d": shifted_conv})
    cert = mamba_conformance.run(be, only="op:causal_conv1d")
    assert not cert.ok

Each override is called as ``override(impl, *args, **kwargs)``, where ``impl`` is what the base
backend runs for that op (its native kernel, or the default composition bound to its ``xp``), so
a planted bug can wrap the correct implementation or replace it outright.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import types
from typing import Callable, Mapping

from mamba_core.backend import Backend


def broken_backend(base="cpu_numpy", name: str = "broken", overrides: Mapping[str, Callable] | None = None,
                   description: str | None = None) -> Backend:
    """A copy of ``base`` (a name or Backend) whose kernel table is the base's plus ``overrides``."""
    from mamba_conformance.runner import resolve_backend

    base_be = resolve_backend(base)
    overrides = dict(overrides or {})
    kernels = {op: base_be.kernels.get(op) for op in base_be.kernels}
    for op, fn in overrides.items():
        impl = getattr(base_be.ops, op)  # raises for an unknown op, naming the known ones
        kernels[op] = functools.wraps(fn)(functools.partial(fn, impl))
    cls = type(
        f"Broken{type(base_be).__name__}",
        (type(base_be),),
        {
            "name": name,
            "description": description or f"{base_be.name} with planted bugs in {', '.join(sorted(overrides)) or 'nothing'}",
            "kernels": kernels,
        },
    )
    be = copy.copy(base_be)
    be.__class__ = cls
    be.__dict__.pop("ops", None)  # the cached OpTable of the base
    if "kernels" in be.__dict__:
        be.__dict__["kernels"] = kernels
    return be


def plugin_for(*backends: Backend):
    """A pluggy plugin object providing ``backends`` (what an entry point's module would be);
    pass it to ``mamba_core.registry.register_plugin``."""
    from mamba_core.hookspecs import hookimpl

    fixed = list(backends)

    @hookimpl
    def mamba_core_backends():
        return list(fixed)

    return types.SimpleNamespace(mamba_core_backends=mamba_core_backends)


@contextlib.contextmanager
def registered(*backends: Backend):
    """Make ``backends`` visible to the registry (and so to the command line) inside the block."""
    from mamba_core import registry

    plugin = plugin_for(*backends)
    registry.register_plugin(plugin)
    try:
        yield backends[0] if len(backends) == 1 else backends
    finally:
        registry.unregister_plugin(plugin)


# ---- planted bugs used by the suite's own tests ---------------------------------------------
def conv_shifted_by_one(impl, x, weight, bias=None, initial_state=None, activation=None):
    """causal_conv1d off by one: the window ends one step early (y_t sees x_{t-K}..x_{t-1})."""
    import numpy as np

    head = np.zeros_like(x[:, :1]) if initial_state is None else np.asarray(initial_state)[:, :, -1][:, None, :]
    shifted = np.concatenate([head.astype(x.dtype), x[:, :-1]], axis=1)
    return impl(shifted, weight, bias, initial_state, activation=activation)


def rmsnorm_gate_sign(impl, x, weight, eps=1e-5, z=None, group_size=None, norm_before_gate=False):
    """rmsnorm gated by silu(-z) instead of silu(z)."""
    return impl(x, weight, eps, z=None if z is None else -z, group_size=group_size,
                norm_before_gate=norm_before_gate)


def _bound(op: str, args, kwargs):
    """The call's arguments by name, bound against the op's reference signature."""
    import inspect

    from mamba_core.ops import REGISTRY

    sig = inspect.signature(REGISTRY[op].reference)
    b = sig.bind(*args, **kwargs)
    return b.arguments


def negate_argument(op: str, argname: str):
    """A planted bug for ``op``: the argument ``argname`` is used with the wrong sign."""

    def bug(impl, *args, **kwargs):
        a = _bound(op, args, kwargs)
        if a.get(argname) is not None:
            a[argname] = -a[argname]
        return impl(**a)

    bug.__name__ = f"{op}_negated_{argname}"
    bug.__doc__ = f"{op} with the sign of {argname!r} flipped."
    return bug


def drop_argument(op: str, argname: str):
    """A planted bug for ``op``: the argument ``argname`` is ignored (as if None)."""

    def bug(impl, *args, **kwargs):
        a = _bound(op, args, kwargs)
        a[argname] = None
        return impl(**a)

    bug.__name__ = f"{op}_ignores_{argname}"
    bug.__doc__ = f"{op} ignoring {argname!r}."
    return bug


def rope_pairing_swapped(impl, x, phi, pairing="interleaved"):
    """apply_rope rotating the other pairing: halves where interleaved was asked, and back."""
    return impl(x, phi, pairing="halves" if pairing == "interleaved" else "interleaved")
