"""The compute-width rule every op and mixer follows, in one place."""

from __future__ import annotations


def wide(xp, *dtypes):
    """float64 when any of ``dtypes`` is float64; everything narrower computes in float32."""
    return xp.float64 if any(d == xp.float64 for d in dtypes) else xp.float32
