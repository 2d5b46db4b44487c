"""Byte-level text data: loading, train/validation split, deterministic resumable batches.

Tokens are the bytes of the file (vocabulary 256). The bundled corpus (``BUNDLED``) is real
public-domain text: nine plays of Shakespeare, see ``mamba_core/data/README.md``.

Batches are drawn by :class:`Batches` from a NumPy ``Generator`` seeded once; its exact state and
the number of batches drawn (the data position) go into every checkpoint, so a resumed run
draws the very batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import os
from importlib import resources

import numpy as np

from mamba_core.training.errors import DataError, TrainConfigError

BUNDLED_NAME = "shakespeare.txt"


def bundled_path() -> str:
    """Path of the bundled corpus file inside the installed package."""
    return str(resources.files("mamba_core") / "data" / BUNDLED_NAME)


def load_bytes(path: str | os.PathLike | None = None) -> np.ndarray:
    """The bytes of ``path`` (the bundled corpus when None) as a (T,) uint8 array."""
    p = bundled_path() if path is None else os.fspath(path)
    if not os.path.exists(p):
        raise DataError(f"training text {p!r} does not exist; pass an existing text file with "
                        "--data FILE, or leave --data out to use the bundled corpus")
    if os.path.isdir(p):
        raise DataError(f"training text {p!r} is a directory; pass a text file")
    with open(p, "rb") as f:
        data = f.read()
    if not data:
        raise DataError(f"training text {p!r} is empty (0 bytes); pass a file with text in it")
    return np.frombuffer(data, dtype=np.uint8).copy()


def check_seq_len(seq_len) -> None:
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise TrainConfigError(
            f"seq_len={seq_len!r}: the sequence length must be an integer >= 2 (a model learns "
            "from predicting token t+1 from tokens <= t); try --seq-len 128"
        )


def split(tokens: np.ndarray, seq_len: int, val_fraction: float = 0.05,
          source: str = "the text") -> tuple[np.ndarray, np.ndarray]:
    """(train, val): the last ``val_fraction`` of the text is held out (at least one window).

    Raises DataError when either part is shorter than one window of seq_len + 1 tokens."""
    check_seq_len(seq_len)
    if not 0.0 < val_fraction < 1.0:
        raise TrainConfigError(f"val_fraction={val_fraction!r}: must be in (0, 1)")
    T = int(tokens.shape[0])
    n_val = max(int(math.ceil(T * val_fraction)), seq_len + 1)
    if T - n_val < seq_len + 1:
        raise DataError(
            f"{source} has {T} bytes; with seq_len={seq_len} it needs at least {2 * (seq_len + 1)} "
            f"(one window of {seq_len + 1} bytes for training and one for validation). Use a "
            "longer text or a smaller --seq-len"
        )
    return tokens[: T - n_val], tokens[T - n_val:]


def unigram_entropy(tokens: np.ndarray, vocab: int = 256) -> float:
    """Entropy in nats of the byte frequencies: the loss of the best context-free model."""
    counts = np.bincount(tokens, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class Batches:
    """Random windows of a token array: ``next()`` -> (ids, targets), each (B, L) int64.

    ``state()`` / ``from_state`` carry the generator's exact state and the position (batches
    drawn so far) for checkpoints.
    """

    def __init__(self, tokens: np.ndarray, batch: int, seq_len: int, seed: int):
        check_seq_len(seq_len)
        if not isinstance(batch, int) or batch < 1:
            raise TrainConfigError(f"batch={batch!r}: must be a positive integer")
        self.tokens = tokens
        self.batch, self.seq_len = batch, seq_len
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.position = 0

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        L = self.seq_len
        starts = self.rng.integers(0, self.tokens.shape[0] - L, size=self.batch)
        win = self.tokens[starts[:, None] + np.arange(L + 1)[None, :]].astype(np.int64)
        self.position += 1
        return win[:, :-1], win[:, 1:]

    def state(self) -> dict:
        return {"position": self.position, "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.position = int(state["position"])


def val_windows(tokens: np.ndarray, seq_len: int, max_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive non-overlapping windows from the start of the validation part (fixed)."""
    L = seq_len
    n = min(max((tokens.shape[0] - 1) // L, 1), max_windows)
    starts = np.arange(n) * L
    win = tokens[starts[:, None] + np.arange(L + 1)[None, :]].astype(np.int64)
    return win[:, :-1], win[:, 1:]
