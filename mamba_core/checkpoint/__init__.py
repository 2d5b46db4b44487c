"""Language-model checkpoints: the HF transformers and original mamba_ssm folder layouts.

    from_pretrained(path, backend=None, dtype="float32", allow_pickle=False) -> MambaLM
    save_pretrained(model, path, layout=None, dtype=None, max_shard_size=None) -> path
    load_state(path, allow_pickle=False) -> Loaded(cfg, params, layout, dtype, notes, extra, files)
    save_state(cfg, params, path, layout="mamba_ssm", dtype=None, max_shard_size=None) -> path
    convert(src, dst, to, dtype=None, max_shard_size=None, allow_pickle=False)
    detect_layout(path) -> "hf" | "mamba_ssm"

See ``layouts`` for the field and key mappings and the HF-vs-mamba_ssm math differences.
"""

from mamba_core.checkpoint.errors import CheckpointError
from mamba_core.checkpoint.pretrained import (
    Loaded,
    convert,
    detect_layout,
    from_pretrained,
    load_state,
    save_pretrained,
    save_state,
)

__all__ = ["CheckpointError", "Loaded", "convert", "detect_layout", "from_pretrained", "load_state",
           "save_pretrained", "save_state"]
