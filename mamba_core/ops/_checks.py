"""Shape and dtype checks shared by the ops' ``validate`` functions.

They read only ``.shape``/``.ndim``/``.dtype``, so they work on every array library.
A dimension given as a string is a named size: its first occurrence binds it, later ones must
agree, and the error says which argument set it.
"""

from __future__ import annotations

from mamba_core.errors import ShapeError


class Dims:
    """Named sizes bound while checking one call's arguments."""

    def __init__(self, op: str):
        self.op = op
        self.sizes: dict[str, tuple[int, str]] = {}

    def check(self, argname: str, arr, expected: tuple, *, optional: bool = False):
        """Check ``arr.shape`` against ``expected`` (ints, names, or None for 'any')."""
        if arr is None:
            if optional:
                return
            raise ShapeError(f"{self.op}: argument {argname!r} is required, got None")
        shape = tuple(getattr(arr, "shape", ()))
        pretty = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        if len(shape) != len(expected):
            raise ShapeError(
                f"{self.op}: {argname!r} must have shape {pretty} ({len(expected)} dims), "
                f"got shape {shape}"
            )
        for got, want in zip(shape, expected):
            if want is None:
                continue
            if isinstance(want, str):
                if want in self.sizes:
                    bound, by = self.sizes[want]
                    if got != bound:
                        raise ShapeError(
                            f"{self.op}: {argname!r} has shape {shape}, expected {pretty} with "
                            f"{want}={bound} (set by {by!r})"
                        )
                else:
                    self.sizes[want] = (int(got), argname)
            elif got != want:
                raise ShapeError(f"{self.op}: {argname!r} must have shape {pretty}, got {shape}")

    def __getitem__(self, name: str) -> int:
        return self.sizes[name][0]


def check_floating(op: str, argname: str, arr) -> None:
    if arr is None:
        return
    name = str(getattr(arr, "dtype", "")).replace("torch.", "")
    if not any(k in name for k in ("float", "bfloat")):
        raise ShapeError(f"{op}: {argname!r} must be a floating array, got dtype {name or type(arr)}")


def check_divides(op: str, what: str, a: int, b: int, hint: str = "") -> None:
    if b == 0 or a % b:
        raise ShapeError(f"{op}: {what}: {a} is not divisible by {b}. {hint}".rstrip())
