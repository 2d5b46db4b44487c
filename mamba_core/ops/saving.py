"""Saving forms: a forward that leaves residuals to its op's VJP.

An op's VJP (``<op>_vjp``) takes only the forward's arguments, so it recomputes what the forward
computed (chunk states, per-head copies of B and C, ...). For the scans that recompute is a
forward pass of its own. A backend may give such an op a *saving form*, a pair of callables:

    forward(*args, **attrs)                          -> (outputs, residuals)
    vjp(residuals, cotangent, *args, **attrs)        -> dict, exactly as <op>_vjp

``outputs`` are the op's outputs (the same structure, the same values up to the op's rounding:
a saving forward may run another launch shape than the plain one). ``residuals`` are opaque to
everything but the backend that made them: any object, or None (nothing saved: the op table
then calls the plain VJP). The VJP is called with arguments equal to the forward's (the same
values: a caller may pass fresh views, or arrays recomputed the same way, such as A = -exp(A_log)).
It must not modify the residuals, so a backward may run twice from one forward.
Residuals live as long as the caller keeps them (the models keep them in ``saved`` until their
backward), so a saving form trades memory for time; say in its docstring how much it keeps.

Only the ops in ``SAVABLE`` have saving forms; a backend offering one for another op is an error
when its table is read. Callers go through the backend's op table, which falls back to the plain
op and VJP when the backend has no saving form:

    outputs, res = be.ops.forward_saving("selective_scan", u, delta, A, B, C, ...)
    grads = be.ops.vjp_saved("selective_scan", res, (dy, dh), u, delta, A, B, C, ...)

``MAMBA_NO_SAVING_FORMS=1`` in the environment turns every saving form off (read at each call),
to time or debug against the plain ops.

The conformance suite certifies a backend's saving forms in the gradient column of the op's
checks (outputs and gradients through the pair, beside the plain VJP's); the mixers' and the
language model's gradient checks run through them, since ``forward_train``/``backward`` do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

#: the ops a backend may give a saving form: the scans, whose VJPs recompute a forward
SAVABLE: tuple[str, ...] = ("selective_scan", "ssd_scan", "mamba3_scan", "mamba3_rope_scan")


@dataclasses.dataclass(frozen=True)
class SavingForm:
    """A backend's saving form of one op (see the module docstring)."""

    forward: Callable[..., tuple[Any, Any]]
    vjp: Callable[..., dict]


def check_saving_table(table: dict, backend_name: str) -> dict:
    """``table`` (op name -> SavingForm), checked: savable ops only, SavingForm values."""
    for name, form in table.items():
        if name not in SAVABLE:
            raise ValueError(
                f"{backend_name}: a saving form for {name!r}, which has none in the contract; "
                f"the savable ops are {', '.join(SAVABLE)} (mamba_core/ops/saving.py)")
        if not isinstance(form, SavingForm):
            raise TypeError(
                f"{backend_name}: the saving form of {name!r} is a {type(form).__name__}; "
                "expected mamba_core.ops.saving.SavingForm(forward, vjp)")
    return table
