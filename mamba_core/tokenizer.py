"""Tokenizers behind one small interface, for ``mamba_core.generation`` and the command line.

    tok.encode(text: str) -> list[int]
    tok.decode(ids: list[int]) -> str
    tok.eos_token_id: int | None        the end-of-sequence id when the tokenizer knows it
    tok.name: str                       a short description for messages

Two implementations:

- ``ByteTokenizer``: UTF-8 bytes are the ids (0..255), as the byte-level models that
  ``mamba-core train`` makes. Decoding replaces invalid UTF-8 (a sequence cut in the middle of a
  character, ids that are not bytes) with U+FFFD instead of failing.
- ``HFTokenizer``: a ``tokenizer.json`` read with the ``tokenizers`` package (the fast
  tokenizers of Hugging Face; ``pip install tokenizers``). ``encode`` applies the file's
  post-processor (special tokens it adds, as transformers' fast tokenizers do by default).

``load_tokenizer(path)`` picks one for a checkpoint folder: ``PATH/tokenizer.json`` when it
exists (an error that says ``pip install tokenizers`` when the package is missing), else bytes.
"""

from __future__ import annotations

import json
import os
from typing import Protocol, Sequence

from mamba_core.errors import MambaError


class Tokenizer(Protocol):
    name: str
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class TokenizerError(MambaError, RuntimeError):
    """A tokenizer that cannot be loaded here (missing package, unreadable file)."""


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255. No end-of-sequence id."""

    name = "byte-level (UTF-8 bytes, ids 0..255)"
    eos_token_id: int | None = None
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes to text; invalid UTF-8 and ids outside 0..255 become U+FFFD."""
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
            else:
                out.append(run.decode("utf-8", errors="replace") + "\ufffd")
                run = bytearray()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` package."""

    def __init__(self, tokenizer, eos_token_id: int | None = None, name: str = "tokenizer.json"):
        self._tok = tokenizer
        self.eos_token_id = eos_token_id
        self.name = name
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike, eos_token_id: int | None = None) -> "HFTokenizer":
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise TokenizerError(
                f"{path} needs the 'tokenizers' package, which is not installed: "
                "pip install tokenizers (or pass a folder without tokenizer.json for byte-level tokens)"
            ) from None
        try:
            tok = _Tok.from_file(str(path))
        except Exception as exc:  # the Rust side raises its own exception type
            raise TokenizerError(f"{path}: cannot be read as a tokenizer.json ({exc})") from None
        if eos_token_id is None:
            eos_token_id = _find_eos(tok, os.path.dirname(os.path.abspath(path)))
        return cls(tok, eos_token_id, name=f"tokenizer.json ({path})")

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, eos_token_id={self.eos_token_id})"


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _find_eos(tok, folder: str) -> int | None:
    """The eos id as transformers would find it: tokenizer_config.json's ``eos_token``, then
    ``eos_token_id`` in generation_config.json or config.json. None when nothing says."""
    eos = _read_json(os.path.join(folder, "tokenizer_config.json")).get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if isinstance(eos, str):
        i = tok.token_to_id(eos)
        if i is not None:
            return int(i)
    for name in ("generation_config.json", "config.json"):
        i = _read_json(os.path.join(folder, name)).get("eos_token_id")
        if isinstance(i, list) and i:
            i = i[0]
        if isinstance(i, int) and not isinstance(i, bool):
            return i
    return None


def load_tokenizer(path: str | os.PathLike | None) -> Tokenizer:
    """The tokenizer of a checkpoint folder: ``PATH/tokenizer.json`` (or PATH itself when it is
    a tokenizer.json file) through ``tokenizers``; byte-level when the folder has none."""
    if path is None:
        return ByteTokenizer()
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(".json"):
        return HFTokenizer.from_file(path)
    f = os.path.join(path, "tokenizer.json")
    if os.path.isfile(f):
        return HFTokenizer.from_file(f)
    return ByteTokenizer()
