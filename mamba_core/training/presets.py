"""Named model sizes for training: ``mamba{1,2,3}-{tiny,small,medium,100m}``, byte vocabulary.

    tiny    d_model 128, 2 layers    ~0.25M params   the demo and the tests
    small   d_model 256, 4 layers    ~1.5-2M
    medium  d_model 512, 8 layers    ~12-14M
    100m    d_model 768, 24 layers   ~90-100M        (the layout of mamba-130m, byte vocabulary)

``get_preset(name)`` returns an :class:`~mamba_core.models.config.LMConfig`; an unknown name
raises UnknownPresetError listing the known ones. ``n_params(cfg)`` counts parameters.
"""

from __future__ import annotations

import math

from mamba_core.models.config import LMConfig
from mamba_core.training.errors import UnknownPresetError

VOCAB = 256  # byte-level tokens

_SIZES = {  # size -> (d_model, n_layer, d_state of Mamba-2/3, headdim of Mamba-2/3)
    "tiny": (128, 2, 32, 32),
    "small": (256, 4, 64, 64),
    "medium": (512, 8, 64, 64),
    "100m": (768, 24, 128, 64),
}
_LAYERS = {"mamba1": "Mamba1", "mamba2": "Mamba2", "mamba3": "Mamba3"}


def _make(family: str, size: str) -> dict:
    d_model, n_layer, d_state, headdim = _SIZES[size]
    layer = _LAYERS[family]
    if layer == "Mamba1":
        ssm = {"layer": layer, "d_state": 16}
    elif layer == "Mamba2":
        ssm = {"layer": layer, "d_state": d_state, "headdim": headdim, "chunk_size": 64}
    else:
        ssm = {"layer": layer, "d_state": d_state, "headdim": headdim, "chunk_size": 64}
    return {"d_model": d_model, "n_layer": n_layer, "vocab_size": VOCAB, "ssm_cfg": ssm}


PRESETS: dict[str, dict] = {f"{fam}-{size}": _make(fam, size) for fam in _LAYERS for size in _SIZES}


def get_preset(name: str) -> LMConfig:
    """The LMConfig of a preset name such as ``"mamba3-tiny"``."""
    if name not in PRESETS:
        raise UnknownPresetError(
            f"unknown preset {name!r}; the presets are: {', '.join(PRESETS)} "
            "(family mamba1/mamba2/mamba3, size tiny/small/medium/100m)"
        )
    d = PRESETS[name]
    return LMConfig(**{**d, "ssm_cfg": dict(d["ssm_cfg"])})


def n_params(cfg: LMConfig) -> int:
    from mamba_core.models import lm

    return sum(math.prod(s) for s in lm.param_shapes(cfg).values())
