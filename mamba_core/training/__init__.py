"""Training for mamba_core language models: AdamW, schedule, clipping, resumable checkpoints.

    from mamba_core.training import train, TrainConfig, get_preset
    result = train(get_preset("mamba3-tiny"), TrainConfig(steps=300), "runs/tiny")

``demo(seconds=60)`` trains mamba3-tiny on the bundled corpus within a time budget and prints a
sample; ``cli.add_parser(subparsers)`` registers ``mamba-core train``.
"""

from mamba_core.training.errors import (CheckpointError, CheckpointMismatchError, DataError,
                                        NonFiniteError, TrainConfigError, TrainingError,
                                        UnknownPresetError)
from mamba_core.training.loop import TrainConfig, TrainResult, evaluate, train
from mamba_core.training.presets import PRESETS, get_preset, n_params
from mamba_core.training.demo import demo

__all__ = ["train", "TrainConfig", "TrainResult", "evaluate", "PRESETS", "get_preset", "n_params",
           "demo", "TrainingError", "DataError", "TrainConfigError", "UnknownPresetError",
           "CheckpointError", "CheckpointMismatchError", "NonFiniteError"]
