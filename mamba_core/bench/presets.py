"""Named shape presets for ``mamba-core bench``.

Op level: one set of sizes shared by every op family (letters as in the ops: B batch, L length,
E = d_inner, H heads, P head dim, N state, G groups, R MIMO rank, K conv width). Mamba-1 uses its
own, smaller state size ``N1`` (its default is 16).

Model level: random-weight language models of each family at named sizes, with the lengths and
batches the model rows use. The ``gpu`` preset carries the issue's sizes (B=8, L=2048, d_inner
2048, H=32, P=64, N=128; ~130M and ~370M models); ``cpu`` keeps a full CPU run to a few minutes
on two cores (the ~130M models only, short training sequences); ``quick`` is the CI smoke test.
"""

from __future__ import annotations

import dataclasses

#: vocabulary of the official mamba_ssm language models (50277 padded to a multiple of 8)
VOCAB = 50280


@dataclasses.dataclass(frozen=True)
class OpShapes:
    B: int
    L: int
    E: int  # d_inner = H * P
    H: int
    P: int
    N: int  # Mamba-2/3 state size
    N1: int  # Mamba-1 state size
    G: int = 1
    R: int = 4  # MIMO rank
    K: int = 4  # conv width
    chunk_ssd: int = 256
    chunk_m3: int = 64

    def __post_init__(self):
        if self.H * self.P != self.E:
            raise ValueError(f"OpShapes: H * P = {self.H * self.P} must equal E = {self.E}")

    def describe(self) -> str:
        return (f"B={self.B} L={self.L} d_inner={self.E} H={self.H} P={self.P} N={self.N} "
                f"(Mamba-1 N={self.N1}) G={self.G} R={self.R} K={self.K}")


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """A language-model size: d_model, n_layer, vocabulary (the mixers keep their defaults,
    except d_state/headdim, which the preset sets for quick/cpu runs)."""

    name: str
    d_model: int
    n_layer: int
    vocab_size: int = VOCAB
    d_state: int | None = None  # Mamba-2/3; None keeps the mixer default (128)
    headdim: int | None = None  # Mamba-2/3; None keeps the default (64)


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    ops: OpShapes
    models: tuple[ModelSize, ...]
    prefill_batch: int
    prefill_lengths: tuple[int, ...]  # a sweep: the plot's x axis
    decode: tuple[tuple[int, int], ...]  # (batch, steps timed per run)
    train_batch: int
    train_length: int
    warmup: int
    repeats: int
    families: tuple[str, ...] = ("mamba1", "mamba2", "mamba3", "mamba3_mimo")


MODEL_130M = ModelSize("130m", 768, 24)
MODEL_370M = ModelSize("370m", 1024, 48)

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        ops=OpShapes(B=1, L=64, E=64, H=2, P=32, N=16, N1=8, R=2, chunk_ssd=32, chunk_m3=16),
        models=(ModelSize("tiny", 64, 2, vocab_size=256, d_state=16, headdim=32),),
        prefill_batch=1, prefill_lengths=(16, 64), decode=((1, 4), (4, 4)),
        train_batch=1, train_length=32, warmup=1, repeats=2,
    ),
    "cpu": Preset(
        name="cpu",
        ops=OpShapes(B=2, L=512, E=512, H=8, P=64, N=64, N1=16, R=4, chunk_ssd=128, chunk_m3=64),
        models=(MODEL_130M,),
        prefill_batch=1, prefill_lengths=(128, 512), decode=((1, 64), (16, 8)),
        train_batch=1, train_length=128, warmup=1, repeats=2,
    ),
    "gpu": Preset(
        name="gpu",
        ops=OpShapes(B=8, L=2048, E=2048, H=32, P=64, N=128, N1=16, R=4, chunk_ssd=256, chunk_m3=64),
        models=(MODEL_130M, MODEL_370M),
        prefill_batch=1, prefill_lengths=(512, 2048, 8192), decode=((1, 64), (16, 64)),
        train_batch=8, train_length=2048, warmup=3, repeats=10,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"no bench preset {name!r}; the presets are {', '.join(PRESETS)}") from None


def ssm_cfg(family: str, size: ModelSize) -> dict:
    """The LMConfig.ssm_cfg of one family at one size."""
    if family == "mamba1":
        return {"layer": "Mamba1"}
    cfg = {"layer": "Mamba2" if family == "mamba2" else "Mamba3"}
    if size.d_state is not None:
        cfg["d_state"] = size.d_state
    if size.headdim is not None:
        cfg["headdim"] = size.headdim
    if family == "mamba3_mimo":
        cfg.update(is_mimo=True, mimo_rank=4)
    return cfg


FAMILY_TITLES = {"mamba1": "Mamba-1", "mamba2": "Mamba-2", "mamba3": "Mamba-3 SISO",
                 "mamba3_mimo": "Mamba-3 MIMO (R=4)"}
