"""Load and save language-model checkpoint folders in the mamba_ssm and HF layouts.

A folder holds ``config.json`` and the weights: ``model.safetensors``, or shards
``model-0000i-of-0000n.safetensors`` listed by ``model.safetensors.index.json``, or (only with
``allow_pickle=True``) ``pytorch_model.bin`` / its sharded index. Loading validates the config,
every header, and every tensor's presence, shape and dtype before reading any data, and builds
the model only from a complete, checked set: never a partial model. Saving writes a new folder
beside the target, fsyncs it, and renames it into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np

from mamba_core.checkpoint import layouts
from mamba_core.checkpoint import safetensors_io as stio
from mamba_core.checkpoint.errors import CheckpointError
from mamba_core.errors import ConfigError
from mamba_core.models import lm
from mamba_core.models.config import LMConfig

log = logging.getLogger("mamba_core.checkpoint")

CONFIG = "config.json"
ST_SINGLE = "model.safetensors"
ST_INDEX = "model.safetensors.index.json"
PT_SINGLE = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"
#: files a save writes (and replaces); anything else in an existing target folder is kept
_OWNED = re.compile(r"^(config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
                    r"pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json)$")

PICKLE_WHY = ("pickle files can run arbitrary code when loaded; load them only from a source you "
              "trust (pass allow_pickle=True / --allow-pickle), and convert them once to safetensors "
              "with `mamba-core convert`")


@dataclasses.dataclass
class Loaded:
    """What ``load_state`` returns: everything needed to build or re-save the model."""

    cfg: LMConfig
    params: dict            # our key -> NumPy array (float32, or float64 when stored so)
    layout: str             # "mamba_ssm" | "hf"
    dtype: str              # the stored float dtype ("float32", "bfloat16", ...), the most common one
    notes: list             # config fields dropped or ignored, and why
    extra: dict             # HF token ids etc., written again when saving to HF
    files: list             # the weight files read


# ---- config ---------------------------------------------------------------------------------
def _float_hook(obj):
    # transformers >= 5 writes non-finite floats as {"__float__": "Infinity"}
    if len(obj) == 1 and "__float__" in obj:
        return float(obj["__float__"])
    return obj


def read_config(path: str) -> dict:
    f = os.path.join(path, CONFIG)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a folder (a checkpoint is a folder with {CONFIG} and weights)")
    if not os.path.isfile(f):
        raise CheckpointError(f"{path}: missing {CONFIG}; found {sorted(os.listdir(path))[:12]}")
    try:
        with open(f, encoding="utf-8") as fh:
            d = json.load(fh, object_hook=_float_hook)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{f}: a JSON object expected, got {type(d).__name__}")
    return d


def detect_layout(path: str) -> str:
    """'hf' or 'mamba_ssm' for a checkpoint folder, from its config.json."""
    return layouts.detect(read_config(path), os.path.join(path, CONFIG))


def config_from_folder(path: str) -> tuple[LMConfig, str, list, dict]:
    d = read_config(path)
    where = os.path.join(path, CONFIG)
    layout = layouts.detect(d, where)
    try:
        if layout == "hf":
            cfg, notes, extra = layouts.config_from_hf(d)
        else:
            (cfg, notes), extra = layouts.config_from_mamba_ssm(d), {}
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where} ({layout} layout): {exc}") from None
    return cfg, layout, notes, extra


# ---- weights --------------------------------------------------------------------------------
def _index(path: str, name: str) -> dict:
    f = os.path.join(path, name)
    try:
        with open(f, encoding="utf-8") as fh:
            wm = json.load(fh).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{f}: not a valid index ({exc})") from None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError(f"{f}: 'weight_map' must map tensor names to file names")
    for shard in sorted(set(wm.values())):
        if os.path.basename(shard) != shard or not os.path.isfile(os.path.join(path, shard)):
            raise CheckpointError(f"{f}: lists shard {shard!r}, which is missing from {path}")
    return wm


def _safetensors_entries(path: str) -> tuple[dict, list]:
    """{file key: Entry} across the folder's safetensors file(s), headers validated."""
    if os.path.isfile(os.path.join(path, ST_INDEX)):
        wm = _index(path, ST_INDEX)
        files = sorted(set(wm.values()))
    else:
        wm, files = None, [ST_SINGLE]
    entries = {}
    for name in files:
        es, _ = stio.read_header(os.path.join(path, name))
        for k, e in es.items():
            if k in entries:
                raise CheckpointError(f"{path}: tensor {k!r} is stored twice ({os.path.basename(entries[k].path)} "
                                      f"and {name})")
            if wm is not None and wm.get(k) != name:
                raise CheckpointError(f"{path}/{ST_INDEX}: tensor {k!r} is in {name} but the index says "
                                      f"{wm.get(k)!r}")
            entries[k] = e
    if wm is not None:
        lost = sorted(set(wm) - set(entries))
        if lost:
            raise CheckpointError(f"{path}/{ST_INDEX}: lists {lost[:5]} but shard {wm[lost[0]]!r} "
                                  "does not contain it (corrupted or truncated shard)")
    return entries, [os.path.join(path, f) for f in files]


def _pickle_arrays(path: str) -> tuple[dict, list]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading {PT_SINGLE} needs torch (pip install torch); "
                              "or convert it to safetensors elsewhere") from None
    if os.path.isfile(os.path.join(path, PT_INDEX)):
        files = sorted(set(_index(path, PT_INDEX).values()))
    else:
        files = [PT_SINGLE]
    out = {}
    for name in files:
        f = os.path.join(path, name)
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a bad pickle
            raise CheckpointError(f"{f}: cannot be read as a torch state dict ({type(exc).__name__}: {exc})") from None
        if not isinstance(sd, dict):
            raise CheckpointError(f"{f}: expected a state dict, got {type(sd).__name__}")
        for k, t in sd.items():
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{f}: entry {k!r} is a {type(t).__name__}, not a tensor")
            if k in out:
                raise CheckpointError(f"{path}: tensor {k!r} is stored twice")
            out[k] = t
    return out, [os.path.join(path, f) for f in files]


def _torch_code(t) -> str:
    return {"torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16",
            "torch.bfloat16": "BF16"}.get(str(t.dtype), str(t.dtype))


def _check_tensors(cfg: LMConfig, found: dict, where: str) -> dict:
    """found: {file key: (shape, dtype code)} -> {our key: file key}; raises listing every problem."""
    want = lm.param_shapes(cfg)
    mapping, problems = {}, []
    for fk, (shape, code) in found.items():
        k = layouts.our_key(fk)
        if k in mapping:
            problems.append(f"the embedding is stored twice ({mapping[k]!r} and {fk!r})")
            continue
        if k == layouts.HEAD and cfg.tie_embeddings:
            # tied head stored anyway (mamba_ssm's state_dict): must be the embedding itself
            emb = want[layouts.EMB]
            if tuple(shape) != tuple(emb):
                problems.append(f"tensor {fk!r}: tie_embeddings is true, so it must equal the embedding "
                                f"(shape {tuple(emb)}), found shape {tuple(shape)}")
            mapping[k] = fk
            continue
        if k not in want:
            problems.append(f"unexpected tensor {fk!r} (shape {tuple(shape)}): the config does not have it")
            continue
        mapping[k] = fk
        if tuple(shape) != tuple(want[k]):
            problems.append(f"tensor {fk!r}: expected shape {tuple(want[k])}, found {tuple(shape)}")
        if code not in stio.FLOAT_CODES:
            problems.append(f"tensor {fk!r}: dtype {code} is not a float dtype ({'/'.join(stio.FLOAT_CODES)})")
    for k in want:
        if k not in mapping:
            problems.append(f"missing tensor {k!r} (expected shape {tuple(want[k])})")
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{where}: the weights do not match config.json "
                              f"({cfg.layer}, d_model={cfg.d_model}, n_layer={cfg.n_layer}):\n  {shown}")
    return mapping


_CODE_NAME = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def load_state(path, allow_pickle: bool = False) -> Loaded:
    """Read and validate a checkpoint folder (either layout) -> ``Loaded`` (NumPy params).

    F16 / BF16 tensors are widened to float32 exactly; F32 and F64 are kept. Raises ConfigError
    for config problems and CheckpointError for file and tensor problems; nothing is returned
    unless everything checked out."""
    path = os.fspath(path)
    cfg, layout, notes, extra = config_from_folder(path)
    have_st = any(os.path.isfile(os.path.join(path, n)) for n in (ST_SINGLE, ST_INDEX))
    have_pt = any(os.path.isfile(os.path.join(path, n)) for n in (PT_SINGLE, PT_INDEX))
    if have_st:
        entries, files = _safetensors_entries(path)
        mapping = _check_tensors(cfg, {k: (e.shape, e.dtype) for k, e in entries.items()}, path)
        arrays = stio.read_entries(entries[fk] for fk in mapping.values())
        codes = [entries[fk].dtype for fk in mapping.values()]
    elif have_pt:
        if not allow_pickle:
            raise CheckpointError(f"{path}: the weights are only in {PT_SINGLE} (a pickle); refused: {PICKLE_WHY}")
        tensors, files = _pickle_arrays(path)
        mapping = _check_tensors(cfg, {k: (tuple(t.shape), _torch_code(t)) for k, t in tensors.items()}, path)
        arrays = {}
        for fk in mapping.values():
            t = tensors[fk].detach()
            arrays[fk] = (t.double() if _torch_code(t) == "F64" else t.float()).contiguous().numpy().copy()
        codes = [_torch_code(tensors[fk]) for fk in mapping.values()]
        notes.append(f"loaded from a pickle ({PT_SINGLE}) because allow_pickle=True")
    else:
        raise CheckpointError(f"{path}: no weights; expected {ST_SINGLE}, {ST_INDEX} (+ shards) or "
                              f"{PT_SINGLE}; found {sorted(os.listdir(path))[:12]}")
    params = {}
    for k, fk in mapping.items():
        if k == layouts.HEAD and cfg.tie_embeddings:
            continue
        params[k] = arrays[fk]
    if cfg.tie_embeddings and layouts.HEAD in mapping:
        head, emb = arrays[mapping[layouts.HEAD]], params[layouts.EMB]
        if not np.array_equal(head, emb):
            raise CheckpointError(
                f"{path}: tie_embeddings is true but tensor 'lm_head.weight' differs from the embedding "
                f"(max abs difference {float(np.max(np.abs(head - emb))):.3g}); set the config's tie field "
                "to false if the head is separate")
    lm.check_params(cfg, params)
    dtype = _CODE_NAME[max(set(codes), key=codes.count)]
    for n in notes:
        log.info("%s: %s", path, n)
    return Loaded(cfg, params, layout, dtype, notes, extra, files)


def from_pretrained(path, backend=None, dtype: str = "float32", allow_pickle: bool = False):
    """A ``MambaLM`` from a checkpoint folder in the HF or mamba_ssm layout.

    backend: a name or Backend (None: ``$MAMBA_BACKEND`` or the best available); dtype: the
    compute dtype of the parameters on the backend (bf16 / f16 files are widened first).
    ``model.checkpoint_info`` keeps the layout, stored dtype, notes and HF extras."""
    from mamba_core.models.lm import MambaLM

    st = load_state(path, allow_pickle=allow_pickle)
    model = MambaLM(st.cfg, st.params, backend, dtype)
    model.checkpoint_info = dataclasses.replace(st, params={})
    return model


# ---- saving ---------------------------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _atomic_dir(target: str):
    """Yield a fresh temp folder beside ``target``; on success it replaces ``target`` (files of
    an existing target that a save does not own, e.g. a tokenizer, are carried over). On any
    failure the temp folder is removed and ``target`` is untouched."""
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise CheckpointError(f"{target}: exists and is not a folder")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    backup = None
    try:
        yield tmp
        if os.path.isdir(target):
            for name in os.listdir(target):
                src = os.path.join(target, name)
                if _OWNED.match(name) or os.path.exists(os.path.join(tmp, name)):
                    continue
                if os.path.isdir(src):
                    shutil.copytree(src, os.path.join(tmp, name))
                else:
                    try:
                        os.link(src, os.path.join(tmp, name))
                    except OSError:
                        shutil.copy2(src, os.path.join(tmp, name))
            backup = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
            os.rmdir(backup)
            os.rename(target, backup)
        _fsync_dir(tmp)
        try:
            os.rename(tmp, target)
        except BaseException:
            if backup is not None:
                os.rename(backup, target)
                backup = None
            raise
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _parse_size(s) -> int | None:
    if s is None:
        return None
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(s), re.I)
    if not m:
        raise CheckpointError(f"max_shard_size={s!r}: give bytes or a size like '5GB', '500MB'")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def _shards(tensors: dict, itemsize_of, limit: int | None) -> list:
    """Split tensor names (sorted) into shards of at most ``limit`` bytes (a tensor never splits)."""
    names = sorted(tensors)
    if limit is None:
        return [names]
    shards, cur, size = [], [], 0
    for k in names:
        n = itemsize_of(k) * int(np.prod(tensors[k].shape, dtype=np.int64))
        if cur and size + n > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += n
    if cur:
        shards.append(cur)
    return shards


def save_state(cfg: LMConfig, params: dict, path, layout: str = "mamba_ssm", dtype: str | None = None,
               max_shard_size=None, extra_config: dict | None = None) -> str:
    """Write ``params`` (NumPy arrays, our keys) and ``cfg`` as a checkpoint folder, atomically.

    layout: "mamba_ssm" or "hf"; dtype: None keeps each array's dtype, else "float32",
    "float64", "float16" or "bfloat16" (rounded to nearest even); max_shard_size: None (one
    ``model.safetensors``) or bytes / "500MB": shards plus ``model.safetensors.index.json``.
    Returns the folder's path."""
    if layout not in layouts.LAYOUTS:
        raise CheckpointError(f"layout={layout!r}: choose one of {list(layouts.LAYOUTS)}")
    path = os.fspath(path)
    params = {k: np.asarray(v) for k, v in params.items()}
    lm.check_params(cfg, params)
    stored = dtype or str(params[layouts.EMB].dtype)
    if layout == "hf":
        config = layouts.config_to_hf(cfg, extra_config, stored)
    else:
        config = layouts.config_to_mamba_ssm(cfg)
    keys = layouts.file_keys(cfg, params, layout)
    tensors = {fk: params[k] if k in params else params[layouts.EMB] for k, fk in keys.items()}
    limit = _parse_size(max_shard_size)

    def itemsize(k):
        if dtype == "bfloat16":
            return 2
        return np.dtype(dtype).itemsize if dtype else tensors[k].dtype.itemsize

    shards = _shards(tensors, itemsize, limit)
    with _atomic_dir(path) as tmp:
        _write_json(os.path.join(tmp, CONFIG), config)
        if len(shards) == 1:
            stio.write(os.path.join(tmp, ST_SINGLE), tensors, dtype)
        else:
            n = len(shards)
            weight_map, total = {}, 0
            for i, names in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                total += stio.write(os.path.join(tmp, fname), {k: tensors[k] for k in names}, dtype)
                weight_map.update({k: fname for k in names})
            _write_json(os.path.join(tmp, ST_INDEX), {"metadata": {"total_size": total}, "weight_map": weight_map})
    return os.path.abspath(path)


def save_pretrained(model, path, layout: str | None = None, dtype: str | None = None,
                    max_shard_size=None, extra_config: dict | None = None) -> str:
    """Save a ``MambaLM`` as a checkpoint folder (atomically; see ``save_state``).

    layout None: the layout the model was loaded from, else "mamba_ssm". HF token ids kept from
    loading are written again unless ``extra_config`` is given."""
    info = getattr(model, "checkpoint_info", None)
    if layout is None:
        layout = info.layout if info is not None else "mamba_ssm"
    if extra_config is None and info is not None:
        extra_config = info.extra
    be = model.backend
    params = {k: np.asarray(be.to_numpy(v)) for k, v in model.params.items()}
    return save_state(model.cfg, params, path, layout, dtype, max_shard_size, extra_config)


def convert(src, dst, to: str, dtype: str | None = None, max_shard_size=None, allow_pickle: bool = False) -> Loaded:
    """Rewrite checkpoint folder ``src`` as ``dst`` in layout ``to`` without a backend.

    dtype None keeps the stored dtype (a bf16 checkpoint stays bf16: exact both ways)."""
    st = load_state(src, allow_pickle=allow_pickle)
    save_state(st.cfg, st.params, dst, to, dtype or st.dtype, max_shard_size, st.extra if to == "hf" else None)
    return st
