"""Reading and writing safetensors files with NumPy only, validating everything first.

The format: an 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data buffer; offsets are relative to the buffer's start. We parse it ourselves (rather
than through ``safetensors.numpy``) so that BF16 tensors load without torch or ml_dtypes (they are
upcast to float32 exactly: a bfloat16 is the top half of a float32) and so that every header is
checked before any data is read: a truncated or corrupted file is an error naming the file and
the entry, never a partly filled dict.

``write`` writes the same format (tensors in name order, 8-byte aligned header, metadata
``{"format": "pt"}`` by default so transformers accepts the file) and fsyncs it.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from mamba_core.checkpoint.errors import CheckpointError

#: safetensors dtype code -> (NumPy storage dtype, name of the dtype we load it as)
DTYPES = {
    "F64": (np.dtype("<f8"), "float64"),
    "F32": (np.dtype("<f4"), "float32"),
    "F16": (np.dtype("<f2"), "float32"),
    "BF16": (np.dtype("<u2"), "float32"),
    "I64": (np.dtype("<i8"), "int64"),
    "I32": (np.dtype("<i4"), "int32"),
    "I16": (np.dtype("<i2"), "int16"),
    "I8": (np.dtype("i1"), "int8"),
    "U8": (np.dtype("u1"), "uint8"),
    "BOOL": (np.dtype("?"), "bool"),
}
FLOAT_CODES = ("F64", "F32", "F16", "BF16")

#: dtype name we may write -> safetensors code
WRITE_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


class Entry:
    """One tensor of a file's header: dtype code, shape, absolute byte range in the file."""

    __slots__ = ("name", "dtype", "shape", "begin", "end", "path")

    def __init__(self, name, dtype, shape, begin, end, path):
        self.name, self.dtype, self.shape, self.begin, self.end, self.path = name, dtype, shape, begin, end, path

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {self.dtype}, {self.shape})"


def read_header(path: str) -> tuple[dict, dict]:
    """Parse and validate ``path``'s header -> ({name: Entry}, metadata dict).

    Checks: the file is at least 8 bytes; the header length fits in the file; the header is a
    UTF-8 JSON object; every entry has a known dtype, a shape of non-negative ints and offsets
    whose length is prod(shape) * itemsize; entries tile the data buffer without gaps or overlaps
    and the buffer ends exactly at the end of the file (so a truncated file is caught here).
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes; a header needs 8)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{path}: corrupted or truncated safetensors file: the header claims {n} bytes but "
                    f"the file has {size - 8} after the length field")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupted safetensors header (not valid JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupted safetensors header (a JSON object expected)")
    meta = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    entries = {}
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: corrupted header entry {info!r}")
        code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if code not in DTYPES:
            raise CheckpointError(f"{where}: dtype {code!r} is not supported; expected one of {sorted(DTYPES)}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CheckpointError(f"{where}: corrupted shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise CheckpointError(f"{where}: corrupted data_offsets {offs!r}")
        want = int(np.prod(shape, dtype=np.int64)) * DTYPES[code][0].itemsize
        if offs[1] - offs[0] != want:
            raise CheckpointError(
                f"{where}: data_offsets {offs} hold {offs[1] - offs[0]} bytes but dtype {code} and shape "
                f"{tuple(shape)} need {want}")
        entries[name] = Entry(name, code, tuple(shape), data_start + offs[0], data_start + offs[1], path)
    pos = data_start
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != pos:
            raise CheckpointError(
                f"{path}: corrupted safetensors file: tensor {e.name!r} starts at byte {e.begin - data_start} "
                f"of the data buffer, expected {pos - data_start} (gap or overlap)")
        pos = e.end
    if pos != size:
        what = "truncated" if pos > size else "corrupted (trailing bytes)"
        raise CheckpointError(
            f"{path}: {what} safetensors file: the header describes {pos} bytes in all, the file has {size}")
    return entries, meta


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, rounding to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, np.uint16(0x7FC0), rounded)
    return rounded


def read_tensor(entry: Entry, f=None) -> np.ndarray:
    """Read one validated entry -> NumPy array (F16/BF16 widened to float32)."""
    storage, _ = DTYPES[entry.dtype]
    own = f is None
    if own:
        f = open(entry.path, "rb")
    try:
        f.seek(entry.begin)
        raw = f.read(entry.nbytes)
    finally:
        if own:
            f.close()
    if len(raw) != entry.nbytes:
        raise CheckpointError(f"{entry.path}: truncated while reading tensor {entry.name!r}")
    a = np.frombuffer(raw, dtype=storage).reshape(entry.shape)
    if entry.dtype == "BF16":
        return bf16_to_f32(a)
    if entry.dtype == "F16":
        return a.astype(np.float32)
    return a.astype(storage.newbyteorder("="), copy=True)


def read_entries(entries) -> dict:
    """{name: array} for the given entries (grouped by file, read in file order)."""
    out = {}
    by_file: dict[str, list] = {}
    for e in entries:
        by_file.setdefault(e.path, []).append(e)
    for path, es in by_file.items():
        try:
            with open(path, "rb") as f:
                for e in sorted(es, key=lambda e: e.begin):
                    out[e.name] = read_tensor(e, f)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc})") from None
    return out


def encode(tensors: dict, dtype: str | None = None, metadata: dict | None = None):
    """Serialise {name: NumPy array} -> (header bytes, list of data byte strings).

    ``dtype`` (None: keep each array's float dtype) converts floating arrays to float64,
    float32, float16 or bfloat16 (rounded to nearest even)."""
    if dtype is not None and dtype not in WRITE_CODES:
        raise CheckpointError(f"dtype={dtype!r}: can save as one of {sorted(WRITE_CODES)}")
    header, chunks, pos = {}, [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        kind = dtype or a.dtype.name
        if kind not in WRITE_CODES:
            raise CheckpointError(f"tensor {name!r}: dtype {a.dtype} cannot be saved; expected a float array")
        if kind == "bfloat16":
            data = f32_to_bf16(a.astype(np.float32)) if a.dtype.name != "bfloat16" else a.view(np.uint16)
        else:
            data = a.astype(np.dtype(kind).newbyteorder("<"))
        b = np.ascontiguousarray(data).tobytes()
        header[name] = {"dtype": WRITE_CODES[kind], "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}
        chunks.append(b)
        pos += len(b)
    header["__metadata__"] = {str(k): str(v) for k, v in (metadata or {"format": "pt"}).items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h, chunks


def write(path: str, tensors: dict, dtype: str | None = None, metadata: dict | None = None) -> int:
    """Write a safetensors file and fsync it. Returns the number of data bytes."""
    head, chunks = encode(tensors, dtype, metadata)
    with open(path, "wb") as f:
        f.write(head)
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    return sum(len(c) for c in chunks)
