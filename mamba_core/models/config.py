"""Language-model configuration, in the field names of mamba_ssm's MambaConfig."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from mamba_core.errors import ConfigError
from mamba_core.models import mixer_module
from mamba_core.models.mixer import known_fields, require


@dataclasses.dataclass
class LMConfig:
    """A Mamba language model: embedding, n_layer blocks, final norm, head.

    ssm_cfg holds the mixer's fields plus ``layer`` ("Mamba1", "Mamba2" or "Mamba3"; mamba_ssm
    defaults to "Mamba1"). d_intermediate > 0 adds a gated MLP sub-block to every block.
    """

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 256
    ssm_cfg: dict = dataclasses.field(default_factory=dict)
    d_intermediate: int = 0
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    attn_layer_idx: list = dataclasses.field(default_factory=list)
    attn_cfg: dict = dataclasses.field(default_factory=dict)
    norm_epsilon: float = 1e-5

    def __post_init__(self):
        for f in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            v = getattr(self, f)
            require(isinstance(v, int) and v > 0, f, v, "must be a positive integer")
        require(
            isinstance(self.d_intermediate, int) and self.d_intermediate >= 0,
            "d_intermediate", self.d_intermediate, "must be an integer >= 0 (0 means no MLP)",
        )
        require(self.rms_norm, "rms_norm", self.rms_norm,
                "LayerNorm blocks are not implemented; only rms_norm=True models are supported")
        require(not self.attn_layer_idx, "attn_layer_idx", self.attn_layer_idx,
                "hybrid attention layers need the MHA op, which mamba-core does not have yet; "
                "use a pure-SSM model (attn_layer_idx=[])")
        require(self.norm_epsilon > 0, "norm_epsilon", self.norm_epsilon, "must be > 0")
        self.ssm_cfg = dict(self.ssm_cfg)
        self.ssm_cfg.setdefault("layer", "Mamba1")
        self.mixer_config  # validate now, not at first use

    @property
    def layer(self) -> str:
        return self.ssm_cfg["layer"]

    @property
    def mixer(self):
        return mixer_module(self.layer)

    @property
    def mixer_config(self):
        """The mixer's validated Config, rebuilt only when d_model or ssm_cfg changed (every
        block reads it on every step)."""
        key = (self.d_model, repr(sorted(self.ssm_cfg.items())))
        cached = self.__dict__.get("_mixer_config")
        if cached is None or cached[0] != key:
            fields = {k: v for k, v in self.ssm_cfg.items() if k != "layer"}
            cached = (key, self.mixer.Config.from_dict(self.d_model, **fields))
            self.__dict__["_mixer_config"] = cached
        return cached[1]

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def mlp_hidden(self) -> int:
        """mamba_ssm's GatedMLP rounds d_intermediate up to a multiple of 128."""
        return (self.d_intermediate + 127) // 128 * 128 if self.d_intermediate else 0

    # ---- (de)serialisation in mamba_ssm's config.json layout ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        d = dict(d)
        known_fields(cls, {k: v for k, v in d.items() if k not in ("d_model",)}, "LMConfig")
        return cls(**d)

    @classmethod
    def from_json(cls, path) -> "LMConfig":
        with open(path) as f:
            try:
                return cls.from_dict(json.load(f))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not valid JSON ({exc})") from None
