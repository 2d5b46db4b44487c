"""Errors of the training package. Each names what was received, what was expected, what to do."""

from __future__ import annotations

from mamba_core.errors import ConfigError, MambaError


class TrainingError(MambaError):
    """Base class of the errors ``mamba_core.training`` raises on purpose."""


class DataError(TrainingError, ValueError):
    """A training text that is missing, empty, or too short for the sequence length."""


class TrainConfigError(TrainingError, ConfigError):
    """A training setting outside what the loop supports (seq_len < 2, lr <= 0, ...)."""


class UnknownPresetError(TrainingError, LookupError):
    """A preset name that is not in ``mamba_core.training.presets.PRESETS``."""


class CheckpointError(TrainingError):
    """A checkpoint that is missing, incomplete or unreadable."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint written for another model or training configuration."""


class NonFiniteError(TrainingError, FloatingPointError):
    """The loss or the gradient norm became NaN or infinite; training stopped before updating.

    ``step`` is the step that failed; ``checkpoint`` the directory of the last good checkpoint
    (None when none was written yet), left untouched.
    """

    def __init__(self, message: str, step: int, checkpoint=None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
