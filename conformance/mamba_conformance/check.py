"""What a conformance check is.

A ``Check`` certifies one op or one model. It makes float64 inputs for each adversarial ``Case``
and says how to run the thing on a backend:

- ``forward(be, inputs) -> {output name: backend array}``: the sequence form;
- ``step(be, inputs) -> {same names: backend array}``: the recurrent form unrolled over the
  sequence, token by token, returning the same outputs (and final state) as ``forward``;
- ``grad`` (optional): named gradients. When a check gives none, the rules of
  ``mamba_conformance.grads`` apply: ``op:X`` checks certify ``X_vjp`` on the op's recorded
  arguments, ``mixer:*`` checks the mixer's backward, ``lm:*`` checks the cross-entropy
  gradients of every parameter. Truth is the same function on the reference backend.

The runner calls ``forward`` on the ``reference`` backend with float64 inputs to get the truth
(rounded to the tested dtype first, so input rounding is not counted as error), then ``forward``
and ``step`` on the backend under test with inputs cast to the tested dtype, and compares every
named output with the relative max error ``max|got - want| / max|want|``.

Inputs are a dict: NumPy floating arrays are cast to the tested dtype, integer arrays are moved
as they are, everything else (python numbers, strings, tuples, configs) is passed unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

#: Relative max-error tolerances per compute dtype, the same for every backend and every mode.
TOLERANCES: dict[str, float] = {
    "float64": 1e-9,
    "float32": 2e-4,
    "float16": 5e-3,
    "bfloat16": 4e-2,
}

#: The columns of a certificate. "grad" is reserved: not certified yet.
MODES: tuple[str, ...] = ("forward", "step", "grad")


@dataclasses.dataclass(frozen=True)
class Case:
    """One adversarial configuration: a label for the certificate and the named sizes."""

    label: str
    dims: dict

    def __getitem__(self, key):
        return self.dims[key]

    def get(self, key, default=None):
        return self.dims.get(key, default)


Inputs = dict
Outputs = dict


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    kind: str  # "op" or "model"
    cases: tuple
    make_inputs: Callable[[Case, np.random.Generator], Inputs]
    forward: Callable[[Any, Inputs], Outputs]
    step: Optional[Callable[[Any, Inputs], Outputs]] = None
    #: ops the check exercises (so `--ops` can select it and the certificate can say native/default)
    ops: tuple = ()
    doc: str = ""
    #: named gradients; None means the default rule of mamba_conformance.grads
    grad: Optional[Callable[[Any, Inputs], Outputs]] = None
