"""The checkpoint package's error (a candidate for mamba_core/errors.py)."""

from __future__ import annotations

from mamba_core.errors import MambaError


class CheckpointError(MambaError, ValueError):
    """A checkpoint folder or file that cannot be loaded or written as asked: a missing or
    corrupted file, a missing / unexpected / mis-shaped tensor, a refused pickle. The message
    names the file or tensor key, what was found and what was expected."""
