"""NumPy-specific kernels of the cpu_numpy backend.

Ops not listed here run the core's default compositions with ``xp = numpy``.
"""

from __future__ import annotations

import numpy as np


def embedding(ids, weight):
    """weight[ids] with NumPy fancy indexing (one gather, no reshape round trip)."""
    return weight[ids]


KERNELS = {
    "embedding": embedding,
}
