"""The op registry: one ``OpSpec`` per op, holding its reference and its default composition.

Conventions every op follows:

- The **reference** (``<op>_ref``) takes NumPy arrays, computes in float64 with the plainest
  loops that state the math (a scan is a loop over time), and returns float64 NumPy arrays.
  It is the ground truth of the project.
- The **default composition** (``<op>``) takes the array namespace ``xp`` first, then the op's
  public arguments, and uses only array-API functions of ``xp``, so any backend inherits it.
- Both return the same structure: one array, or a tuple of arrays (an output and a final state).
- Layout is channels-last throughout: sequences are ``(B, L, ...)``.
- ``validate`` (optional) checks shapes before any implementation runs, so every backend
  gets the same early, clear errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    family: str
    reference: Callable[..., Any]
    default: Callable[..., Any]
    validate: Optional[Callable[..., None]] = None
    #: for a recurrent step op, the sequence op it unrolls
    step_of: Optional[str] = None
    #: for a vector-Jacobian product op ("<op>_vjp"), the op it differentiates
    vjp_of: Optional[str] = None

    @property
    def summary(self) -> str:
        doc = (self.default.__doc__ or self.reference.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"op {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec
