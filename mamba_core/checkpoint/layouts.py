"""The two checkpoint layouts users arrive with, and how they map onto ``LMConfig`` + params.

**mamba_ssm** (the official ``MambaLMHeadModel.save_pretrained``): ``config.json`` is the
``MambaConfig`` dataclass {d_model, d_intermediate, n_layer, vocab_size, ssm_cfg {layer, ...},
attn_layer_idx, attn_cfg, rms_norm, residual_in_fp32, fused_add_norm, pad_vocab_size_multiple,
tie_embeddings}; tensor keys are ours: ``backbone.embedding.weight``, ``backbone.layers.{i}.*``,
``backbone.norm_f.weight``, ``lm_head.weight`` (present in ``state_dict()`` even when tied). The
embedding has the padded vocabulary V' rows.

**hf** (transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM``): ``config.json`` with
``model_type`` "mamba" or "mamba2" and transformers' field names; tensor keys are ours except
``backbone.embeddings.weight``; ``lm_head.weight`` is left out when tied. HF's ``vocab_size`` is
the embedding's row count (already padded).

Field mapping (HF -> ssm_cfg / LMConfig):

    hidden_size -> d_model, num_hidden_layers -> n_layer, vocab_size -> vocab_size (= V'),
    layer_norm_epsilon -> norm_epsilon, residual_in_fp32, tie_word_embeddings -> tie_embeddings,
    state_size -> d_state, conv_kernel -> d_conv, expand, use_bias -> bias,
    use_conv_bias -> conv_bias, time_step_min / time_step_max / time_step_floor ->
    dt_min / dt_max / dt_init_floor;
    mamba:  time_step_rank -> dt_rank, time_step_scale -> dt_scale,
            time_step_init_scheme -> dt_init;
    mamba2: head_dim -> headdim, n_groups -> ngroups, chunk_size, time_step_limit -> dt_limit,
            num_heads (checked: num_heads * head_dim == expand * hidden_size).

Math differences between transformers and mamba_ssm that decide what loads (checked against
transformers 5.23's modeling_mamba*.py):

* HF Mamba2's gated RMSNorm uses ``layer_norm_epsilon`` (mamba_ssm: a fixed 1e-5, as our mixer).
  Equal for every released checkpoint; any other value is refused (ConfigError naming the field).
* HF Mamba2 always computes ``rmsnorm(y * silu(z))`` grouped by ``n_groups`` (norm_before_gate
  False), whatever a config's ``norm_before_gate`` / ``rms_norm`` say: those fields are ignored
  with a note (``rms_norm: false`` is refused: the file would not say which math it wants).
  Older transformers releases normalised over the whole width, ignoring n_groups; checkpoints
  with n_groups > 1 (e.g. Mamba-Codestral, n_groups 8) gave different logits there. We follow
  mamba_ssm and current transformers (grouped).
* HF Mamba2's one-token decode step skips ``time_step_limit`` (as mamba_ssm's ``step`` does);
  our step applies it, so that decoding equals the parallel forward. Identical for the default
  limit (0, inf), which every released checkpoint uses.
* HF's blocks add the residual after the mixer, mamba_ssm before the next norm: the same sums.
  In fp32 identical; in bf16 HF rounds the residual stream to bf16 before each norm.

Policy for fields: a mamba_ssm ``ssm_cfg`` field our mixers do not know is dropped with a note
when it only picks a kernel or a place (use_fast_path, use_mem_eff_path, layer_idx, device,
dtype, process_group=None, sequence_parallel=False, n_layer) and raises ConfigError naming it
when it changes the math (learnable_init_states=True, activation other than silu/swish,
sequence_parallel=True, process_group set) or is unknown. An unknown top-level mamba_ssm field
raises. HF configs carry many generic PretrainedConfig fields: fields that do not touch the
forward are ignored (with a note when unknown to us); the math fields above are validated.
"""

from __future__ import annotations

import math

from mamba_core.errors import ConfigError
from mamba_core.models.config import LMConfig

LAYOUTS = ("mamba_ssm", "hf")
HF_MODEL_TYPES = {"mamba": "Mamba1", "mamba2": "Mamba2"}
HF_ARCH = {"Mamba1": "MambaForCausalLM", "Mamba2": "Mamba2ForCausalLM"}
EMB = "backbone.embedding.weight"
HF_EMB = "backbone.embeddings.weight"
HEAD = "lm_head.weight"
MIXER_NORM_EPS = 1e-5  # mamba_ssm's (and our) Mamba2 gated-norm epsilon

# transformers 5.23's defaults, used for fields a config.json leaves out
HF_DEFAULTS = {
    "mamba": dict(
        vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=32, layer_norm_epsilon=1e-5,
        expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True, hidden_act="silu",
        residual_in_fp32=True, time_step_rank="auto", time_step_scale=1.0, time_step_min=0.001,
        time_step_max=0.1, time_step_init_scheme="random", time_step_floor=1e-4, tie_word_embeddings=True,
    ),
    "mamba2": dict(
        num_heads=128, head_dim=64, vocab_size=32768, hidden_size=4096, state_size=128,
        num_hidden_layers=64, layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, n_groups=8,
        use_bias=False, use_conv_bias=True, hidden_act="silu", residual_in_fp32=True,
        time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4,
        time_step_limit=(0.0, float("inf")), chunk_size=256, tie_word_embeddings=False,
    ),
}
# HF fields with no effect on the forward pass (generic PretrainedConfig ones, init-only, kernels)
HF_IGNORED = {
    "architectures", "model_type", "bos_token_id", "eos_token_id", "pad_token_id", "dtype",
    "torch_dtype", "transformers_version", "initializer_range", "rescale_prenorm_residual",
    "use_cache", "use_mambapy", "use_associative_scan", "_name_or_path", "fused_add_norm",
    "pad_vocab_size_multiple", "intermediate_size", "n_layer", "rms_norm", "norm_before_gate",
    "time_step_rank", "time_step_scale", "time_step_init_scheme", "return_dict",
    "output_hidden_states", "output_attentions", "use_return_dict", "tie_encoder_decoder",
    "is_encoder_decoder", "chunk_size_feed_forward", "id2label", "label2id", "tokenizer_class",
    "problem_type", "vocab_file", "output_logits", "layer_types",
}
# mamba_ssm ssm_cfg fields our mixers lack: harmless values (dropped with a note) and why
SSM_HARMLESS = {
    "use_fast_path": (None, "picks a fused CUDA kernel"),
    "use_mem_eff_path": (None, "picks a fused CUDA kernel"),
    "layer_idx": (None, "indexes the inference cache"),
    "device": (None, "where torch allocates the parameters"),
    "dtype": (None, "the dtype torch allocates the parameters in (the file's tensors decide)"),
    "n_layer": (None, "bookkeeping"),
    "process_group": ((None,), "tensor parallelism"),
    "sequence_parallel": ((False,), "sequence parallelism"),
    "learnable_init_states": ((False,), "a learned initial SSM state"),
    "activation": (("silu", "swish"), "the conv activation (silu = swish is what the mixers compute)"),
}
MAMBA_SSM_FIELDS = ("d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
                    "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm",
                    "pad_vocab_size_multiple", "tie_embeddings")


def detect(config: dict, where: str = "config.json") -> str:
    """'hf' (a model_type field) or 'mamba_ssm' (d_model / n_layer); ConfigError otherwise."""
    if "model_type" in config:
        mt = config["model_type"]
        if mt not in HF_MODEL_TYPES:
            raise ConfigError(
                f"{where}: model_type={mt!r} is not supported; mamba-core loads HF model_type "
                f"{sorted(HF_MODEL_TYPES)} (MambaForCausalLM, Mamba2ForCausalLM) and mamba_ssm configs")
        return "hf"
    if "d_model" in config and "n_layer" in config:
        return "mamba_ssm"
    raise ConfigError(
        f"{where}: neither an HF transformers config (no 'model_type') nor a mamba_ssm config "
        f"(no 'd_model' / 'n_layer'); found fields {sorted(config)[:12]}")


# ---- mamba_ssm ------------------------------------------------------------------------------
def _clean_ssm_cfg(ssm_cfg: dict, notes: list) -> dict:
    from mamba_core.models import mixer_module
    import dataclasses

    if not isinstance(ssm_cfg, dict):
        raise ConfigError(f"ssm_cfg={ssm_cfg!r}: must be a JSON object")
    layer = ssm_cfg.get("layer", "Mamba1")
    known = {f.name for f in dataclasses.fields(mixer_module(layer).Config)}
    out = {}
    for k, v in ssm_cfg.items():
        if k == "layer" or k in known:
            out[k] = v
        elif k in SSM_HARMLESS:
            allowed, why = SSM_HARMLESS[k]
            if allowed is not None and v not in allowed:
                raise ConfigError(
                    f"ssm_cfg.{k}={v!r}: {why} is not supported by mamba-core's {layer} mixer "
                    f"(supported: {list(allowed)}); this changes the model's output, so it is refused")
            notes.append(f"ssm_cfg.{k}={v!r} dropped ({why}; no effect on the math)")
        else:
            out[k] = v  # the mixer's Config.from_dict names it as unknown
    return out


def config_from_mamba_ssm(d: dict) -> tuple[LMConfig, list]:
    """A mamba_ssm config.json dict -> (LMConfig, notes)."""
    notes: list = []
    d = dict(d)
    d["ssm_cfg"] = _clean_ssm_cfg(d.get("ssm_cfg") or {}, notes)
    d.pop("_name_or_path", None)
    if "dt_limit" in d["ssm_cfg"]:
        d["ssm_cfg"]["dt_limit"] = tuple(d["ssm_cfg"]["dt_limit"])
    if "A_init_range" in d["ssm_cfg"]:
        d["ssm_cfg"]["A_init_range"] = tuple(d["ssm_cfg"]["A_init_range"])
    return LMConfig.from_dict(d), notes


def config_to_mamba_ssm(cfg: LMConfig) -> dict:
    """LMConfig -> a config.json that mamba_ssm's ``MambaConfig(**json)`` accepts.

    ``norm_epsilon`` is not a mamba_ssm field (it always uses 1e-5); it is written only when it
    differs, for mamba-core to read back."""
    d = {k: getattr(cfg, k) for k in MAMBA_SSM_FIELDS}
    d["ssm_cfg"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.ssm_cfg.items()}
    d["attn_layer_idx"] = list(cfg.attn_layer_idx)
    d["attn_cfg"] = dict(cfg.attn_cfg)
    if cfg.norm_epsilon != 1e-5:
        d["norm_epsilon"] = cfg.norm_epsilon
    return d


# ---- HF transformers ------------------------------------------------------------------------
def _hf_get(d: dict, mt: str, k: str):
    return d[k] if k in d else HF_DEFAULTS[mt][k]


def config_from_hf(d: dict) -> tuple[LMConfig, list, dict]:
    """An HF MambaConfig / Mamba2Config dict -> (LMConfig, notes, extra).

    ``extra`` keeps the token ids so that saving back to HF writes them again."""
    mt = d.get("model_type")
    if mt not in HF_MODEL_TYPES:
        detect(d)
    g = lambda k: _hf_get(d, mt, k)  # noqa: E731
    notes: list = []
    if g("hidden_act") not in ("silu", "swish"):
        raise ConfigError(f"hidden_act={g('hidden_act')!r}: mamba-core's mixers use silu; other "
                          "activations are not supported")
    if d.get("rms_norm", True) is not True:
        raise ConfigError(f"rms_norm={d['rms_norm']!r}: transformers always uses RMSNorm for {mt}; "
                          "a config asking for LayerNorm is not supported")
    D, expand = g("hidden_size"), g("expand")
    ssm = {"layer": HF_MODEL_TYPES[mt], "d_state": g("state_size"), "d_conv": g("conv_kernel"),
           "expand": expand, "dt_min": g("time_step_min"), "dt_max": g("time_step_max"),
           "dt_init_floor": g("time_step_floor"), "bias": g("use_bias"), "conv_bias": g("use_conv_bias")}
    if mt == "mamba":
        ssm.update(dt_rank=g("time_step_rank"), dt_scale=g("time_step_scale"),
                   dt_init=g("time_step_init_scheme"))
        if "intermediate_size" in d and isinstance(D, int) and d["intermediate_size"] != int(expand * D):
            raise ConfigError(f"intermediate_size={d['intermediate_size']!r}: must equal expand * "
                              f"hidden_size = {int(expand * D)}")
    else:
        H, P = g("num_heads"), g("head_dim")
        if isinstance(H, int) and isinstance(P, int) and isinstance(D, int) and H * P != int(expand * D):
            raise ConfigError(f"num_heads={H!r}: num_heads * head_dim = {H * P} must equal expand * "
                              f"hidden_size = {int(expand * D)}")
        eps = g("layer_norm_epsilon")
        if eps != MIXER_NORM_EPS:
            raise ConfigError(
                f"layer_norm_epsilon={eps!r}: HF Mamba2 also uses it in the mixer's gated RMSNorm, which "
                f"mamba-core (like mamba_ssm) fixes at {MIXER_NORM_EPS}; only {MIXER_NORM_EPS} is supported")
        lim = g("time_step_limit")
        ssm.update(headdim=P, ngroups=g("n_groups"), chunk_size=g("chunk_size"),
                   dt_limit=tuple(lim) if isinstance(lim, (list, tuple)) else lim,
                   rmsnorm=True, norm_before_gate=False)
        if d.get("norm_before_gate") is True:
            notes.append("norm_before_gate=True ignored: transformers' Mamba2 always computes "
                         "rmsnorm(y * silu(z)) (norm_before_gate=False); loaded that way")
    V = g("vocab_size")
    pad = d.get("pad_vocab_size_multiple", 8)
    if not (isinstance(pad, int) and pad > 0 and isinstance(V, int) and V % pad == 0):
        pad = 1
    for k in sorted(set(d) - set(HF_DEFAULTS[mt]) - HF_IGNORED - {"num_heads", "head_dim"}):
        notes.append(f"config field {k}={d[k]!r} ignored (not a field transformers' {mt} model computes with)")
    cfg = LMConfig(d_model=D, n_layer=g("num_hidden_layers"), vocab_size=V, ssm_cfg=ssm,
                   residual_in_fp32=g("residual_in_fp32"), pad_vocab_size_multiple=pad,
                   tie_embeddings=g("tie_word_embeddings"), norm_epsilon=g("layer_norm_epsilon"))
    extra = {k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in d}
    return cfg, notes, extra


def hf_unsupported(cfg: LMConfig) -> str | None:
    """Why ``cfg`` has no transformers equivalent, or None."""
    if cfg.layer not in HF_ARCH:
        return (f"ssm_cfg.layer={cfg.layer!r}: transformers has no {cfg.layer} model; save it with "
                "layout='mamba_ssm'")
    if cfg.d_intermediate:
        return f"d_intermediate={cfg.d_intermediate}: transformers' Mamba blocks have no MLP"
    m = cfg.mixer_config
    if cfg.layer == "Mamba2":
        if m.d_ssm is not None and m.d_ssm != m.d_inner:
            return f"ssm_cfg.d_ssm={m.d_ssm}: transformers' Mamba2 has no gated-MLP slice (d_ssm < d_inner)"
        if m.D_has_hdim:
            return "ssm_cfg.D_has_hdim=True: transformers' Mamba2 has one D per head"
        if not m.rmsnorm or m.norm_before_gate:
            return ("ssm_cfg.rmsnorm / norm_before_gate: transformers' Mamba2 always computes "
                    "rmsnorm(y * silu(z)) (rmsnorm=True, norm_before_gate=False)")
        if cfg.norm_epsilon != MIXER_NORM_EPS:
            return (f"norm_epsilon={cfg.norm_epsilon}: transformers' Mamba2 would also use it in the "
                    f"mixer's gated norm (mamba-core uses {MIXER_NORM_EPS} there)")
    return None


def config_to_hf(cfg: LMConfig, extra: dict | None = None, dtype: str = "float32") -> dict:
    """LMConfig -> an HF config.json dict (ConfigError when transformers cannot express it)."""
    why = hf_unsupported(cfg)
    if why:
        raise ConfigError(why)
    m = cfg.mixer_config
    d = {"architectures": [HF_ARCH[cfg.layer]], "model_type": "mamba" if cfg.layer == "Mamba1" else "mamba2"}
    d.update(extra or {})
    d.update(vocab_size=cfg.padded_vocab_size, pad_vocab_size_multiple=cfg.pad_vocab_size_multiple,
             hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, state_size=m.d_state,
             expand=m.expand, conv_kernel=m.d_conv, use_bias=bool(m.bias), use_conv_bias=bool(m.conv_bias),
             hidden_act="silu", layer_norm_epsilon=cfg.norm_epsilon, residual_in_fp32=bool(cfg.residual_in_fp32),
             time_step_min=m.dt_min, time_step_max=m.dt_max, time_step_floor=m.dt_init_floor,
             tie_word_embeddings=bool(cfg.tie_embeddings), dtype=dtype)
    if cfg.layer == "Mamba1":
        d.update(intermediate_size=m.d_inner, time_step_rank=m.dt_rank_value, time_step_scale=m.dt_scale,
                 time_step_init_scheme=m.dt_init)
    else:
        d.update(num_heads=m.nheads, head_dim=m.headdim, n_groups=m.ngroups, chunk_size=m.chunk_size,
                 time_step_limit=list(m.dt_limit), time_step_rank=math.ceil(cfg.d_model / 16))
    return d


# ---- tensor keys ----------------------------------------------------------------------------
def file_keys(cfg: LMConfig, our_keys, layout: str) -> dict:
    """{our key: key in a ``layout`` file} for saving. mamba_ssm files carry lm_head.weight
    even when tied (as ``MambaLMHeadModel.state_dict()`` does); HF files leave it out."""
    out = {k: (HF_EMB if layout == "hf" and k == EMB else k) for k in our_keys}
    if layout == "mamba_ssm" and cfg.tie_embeddings:
        out[HEAD] = HEAD  # written from the embedding
    return out


def our_key(file_key: str) -> str:
    """A file's key -> ours (either spelling of the embedding is accepted, as transformers does)."""
    return EMB if file_key == HF_EMB else file_key
