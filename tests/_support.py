"""What the core's tests share: the conformance tolerance table and its error metric.

pytest puts this folder on sys.path (tests/ has no __init__.py), so tests import it as
``from _support import TOLERANCES, rel``. When mamba-conformance is not installed the table is
read from this checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

try:
    from mamba_conformance.check import TOLERANCES
except ImportError:  # conformance not installed: the table lives in this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
    from mamba_conformance.check import TOLERANCES


def rel(got, want):
    """Relative max error, max|got - want| / max|want|: the metric conformance certifies with."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)


__all__ = ["TOLERANCES", "rel"]
