"""Initialisers shared by the mixers, matching torch's defaults and the official mamba_ssm ones.

All return float32 NumPy arrays drawn from the given ``numpy.random.Generator``.
"""

from __future__ import annotations

import math

import numpy as np

from mamba_core.ops.activations import inverse_softplus_ref


def uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def linear_weight(rng, out_features: int, in_features: int) -> np.ndarray:
    """torch.nn.Linear's default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in_features))."""
    return uniform(rng, (out_features, in_features), 1.0 / math.sqrt(in_features))


def conv1d_weight(rng, channels: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """torch.nn.Conv1d(groups=channels) defaults: weight (C, 1, K) and bias (C,), U(+-1/sqrt(K))."""
    bound = 1.0 / math.sqrt(width)
    return uniform(rng, (channels, 1, width), bound), uniform(rng, (channels,), bound)


def dt_bias(rng, n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> np.ndarray:
    """Inverse softplus of dt ~ exp(U(log dt_min, log dt_max)), dt clamped below by the floor."""
    dt = np.exp(rng.uniform(size=n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = np.maximum(dt, dt_init_floor)
    return inverse_softplus_ref(dt).astype(np.float32)
