"""Model graphs written once against the ops: mixers, the residual block, the language model."""

from __future__ import annotations

import importlib

from mamba_core.errors import ConfigError

MIXER_MODULES = {
    "Mamba1": "mamba_core.models.mamba1",
    "Mamba2": "mamba_core.models.mamba2",
    "Mamba3": "mamba_core.models.mamba3",
}


def mixer_module(layer: str):
    """The module implementing the mixer named ``layer`` (the ssm_cfg "layer" value)."""
    if layer not in MIXER_MODULES:
        raise ConfigError(
            f"ssm_cfg.layer={layer!r}: unknown mixer; choose one of {sorted(MIXER_MODULES)}"
        )
    return importlib.import_module(MIXER_MODULES[layer])
