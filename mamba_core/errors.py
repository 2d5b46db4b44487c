"""Errors raised by mamba_core. Each one says what was received, what was expected, what to do."""

from __future__ import annotations


class MambaError(Exception):
    """Base class of every error mamba_core raises on purpose."""


class UnknownBackendError(MambaError, LookupError):
    """A backend name that no installed plugin provides."""


class BackendUnavailableError(MambaError, RuntimeError):
    """A backend that is installed but cannot run here (missing library, no device)."""


class OpNotSupportedError(MambaError, NotImplementedError):
    """A backend was asked for an op or dtype it cannot compute."""


class ShapeError(MambaError, ValueError):
    """An argument whose shape or dtype does not match the op's contract."""


class ConfigError(MambaError, ValueError):
    """A model configuration field with a value outside what the model supports."""
