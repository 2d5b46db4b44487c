"""Training checkpoints, written atomically: safetensors for arrays, JSON for the rest.

Layout of a run directory's ``checkpoints/``::

    step-00000200/model.safetensors       parameters (mamba_ssm key names), exact
    step-00000200/optimizer.safetensors   AdamW moments "m.<name>", "v.<name>", exact
    step-00000200/state.json              step, configs, data position, RNG state, history
    LATEST                                the name of the newest complete checkpoint

A checkpoint is written into a temporary directory beside the others, every file fsynced, then
renamed into place; only then is ``LATEST`` replaced (write, fsync, ``os.replace``), and only
after that are checkpoints older than the previous one deleted. A crash at any point leaves the
last good checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import numpy as np

from mamba_core.training.errors import CheckpointError

FORMAT = "mamba-core-train/1"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


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


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(path: str, arrays: dict) -> None:
    from safetensors.numpy import save

    _write(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def _load_tensors(path: str) -> dict:
    from safetensors.numpy import load_file

    return load_file(path)


def save(ckpt_root: str, step: int, params: dict, optimizer: dict, state: dict,
         keep: int = 2) -> str:
    """Write checkpoint ``step`` under ``ckpt_root`` (NumPy arrays in, nothing modified).

    Returns the checkpoint's directory. ``keep`` complete checkpoints are kept (at least 2)."""
    os.makedirs(ckpt_root, exist_ok=True)
    name = f"step-{step:08d}"
    final = os.path.join(ckpt_root, name)
    if latest_name(ckpt_root) == name:
        return final  # already the newest checkpoint (e.g. saved again right after resuming)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=ckpt_root)
    try:
        _save_tensors(os.path.join(tmp, "model.safetensors"), params)
        _save_tensors(os.path.join(tmp, "optimizer.safetensors"), optimizer)
        doc = {"format": FORMAT, "step": int(step), **state, "complete": True}
        _write(os.path.join(tmp, "state.json"), json.dumps(doc, indent=1).encode())
        _fsync_dir(tmp)
        if os.path.exists(final):  # a stale, unreferenced directory of the same step
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(ckpt_root)
    pointer = os.path.join(ckpt_root, "LATEST")
    _write(pointer + ".tmp", name.encode())
    os.replace(pointer + ".tmp", pointer)
    _fsync_dir(ckpt_root)
    # Only now may old checkpoints go: keep the newest `keep` (the previous good one included).
    steps = sorted(d for d in os.listdir(ckpt_root) if _STEP_DIR.match(d))
    for d in steps[: max(len(steps) - max(keep, 2), 0)]:
        if d != name:
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)
    for d in os.listdir(ckpt_root):
        if d.startswith(".tmp-"):
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)
    return final


def latest_name(ckpt_root: str) -> str | None:
    """Name of the newest complete checkpoint: LATEST's, else the highest complete step dir."""
    if not os.path.isdir(ckpt_root):
        return None
    pointer = os.path.join(ckpt_root, "LATEST")
    if os.path.exists(pointer):
        with open(pointer) as f:
            name = f.read().strip()
        if _complete(os.path.join(ckpt_root, name)):
            return name
    for d in sorted((d for d in os.listdir(ckpt_root) if _STEP_DIR.match(d)), reverse=True):
        if _complete(os.path.join(ckpt_root, d)):
            return d
    return None


def _complete(path: str) -> bool:
    try:
        with open(os.path.join(path, "state.json")) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return bool(doc.get("complete")) and all(
        os.path.exists(os.path.join(path, n)) for n in ("model.safetensors", "optimizer.safetensors"))


def load(ckpt_root: str) -> tuple[str, dict, dict, dict]:
    """The newest complete checkpoint: (its directory, params, optimizer arrays, state dict)."""
    name = latest_name(ckpt_root)
    if name is None:
        raise CheckpointError(
            f"no complete checkpoint under {ckpt_root!r}; run without --resume to start a new run "
            "there, or point --out at the directory of the run to continue"
        )
    path = os.path.join(ckpt_root, name)
    try:
        params = _load_tensors(os.path.join(path, "model.safetensors"))
        opt = _load_tensors(os.path.join(path, "optimizer.safetensors"))
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad checkpoint
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({type(exc).__name__}: {exc}); "
                              "delete it to fall back to the previous one") from exc
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r} has format {state.get('format')!r}, expected "
                              f"{FORMAT!r}")
    return path, params, opt, state
