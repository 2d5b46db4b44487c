"""One decode step of a whole Mamba-2 language model with every RMSNorm folded into a projection.

    logits, new_cache = decode.step(be, params, cfg, ids (B,), cache)   # lm.step's contract

``lm.step`` runs, per layer, add_rmsnorm -> in_proj -> fused step -> out_proj (4 launches). At
batch 1 each launch costs a few microseconds of latency whatever it computes, and add_rmsnorm,
which moves 12 KB, costs as much as a projection of megabytes. Here a layer is 3 launches:

    in_proj    linear_group_scaled(u, W_in, ..., partials, 1, 0, eps): u = r w_norm comes from
               the previous layer; dividing by sqrt(mean(r^2) + eps) happens as u is loaded,
               the mean from the previous out_proj's per-block partial sums of squares
    step       kernels/mixer_steps.mixer (the gated norm's sums of squares per block)
    out_proj   linear_residual_epilogue: the gated norm's division as y is loaded (groups
               G, the gated-MLP slice skipped), then r' = out + r, u' = r' w_norm(next), and the
               partial sums of squares of r' per block, for the next in_proj (or, after the last
               layer, norm_f and the head's projection)

The first layer's add_rmsnorm (no residual yet) is the op itself; the head is one group-scaled
projection. Launches per token: 3 n_layer + 3 (embedding, first norm, head) instead of
4 n_layer + 3. Sums keep a fixed order (deterministic). Results equal ``lm.step``'s up to
rounding: the normalised input is never rounded to the model dtype before its projection.

Taken for (else ``lm.step`` runs): every layer Mamba-2 without an MLP (d_intermediate 0), the
fused Mamba-2 step enabled and taking the call (kernels/mixer_steps.takes), ids (B,) with
1 <= B, params and cache of one float dtype. ``MAMBA_CUPY_FUSED_LM=0`` turns it off (read at
each step; set it before building a GraphDecoder).
"""

from __future__ import annotations

import os

from mamba_core.models import lm
from mamba_core.models.mixer import fused_step

from mamba_backend_cuda_cupy.kernels import mixer_steps as ms
from mamba_backend_cuda_cupy.kernels.linear import linear_group_scaled, linear_residual_epilogue

ENV = "MAMBA_CUPY_FUSED_LM"


def enabled() -> bool:
    """False when ``MAMBA_CUPY_FUSED_LM=0`` (or false/off/no) asks for lm.step."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def unsupported(be, params: dict, cfg, ids, cache) -> str | None:
    """Why this call runs lm.step (a sentence), or None when the fused path takes it."""
    if not enabled():
        return f"{ENV}=0"
    if cfg.layer != "Mamba2":
        return f"layer={cfg.layer!r}: only Mamba-2 models"
    if cfg.d_intermediate:
        return f"d_intermediate={cfg.d_intermediate}: blocks with an MLP"
    if fused_step(be, "mamba2") is not ms.mamba2_step:
        return "the fused Mamba-2 step is off (MAMBA_CUPY_FUSED_STEP=0 or MAMBA_NO_FUSED_STEP=1)"
    if getattr(ids, "ndim", 0) != 1 or ids.shape[0] < 1 or cache is None or len(cache) != cfg.n_layer:
        return "ids must be (B,) with B >= 1 and the cache one entry a layer"
    emb = params["backbone.embedding.weight"]
    mcfg = cfg.mixer_config
    u = be.xp.broadcast_to(emb[0], (ids.shape[0], cfg.d_model))  # the normalised input's kind
    for i, layer in enumerate(lm._layers(params, cfg.n_layer)):
        mixer = {k[6:]: v for k, v in layer.items() if k.startswith("mixer.")}
        if layer["norm.weight"].dtype != emb.dtype or not ms.takes(mixer, mcfg, u, cache[i]):
            return f"layer {i}: the fused step does not take its params and cache"
    head = params["backbone.embedding.weight" if cfg.tie_embeddings else "lm_head.weight"]
    if params["backbone.norm_f.weight"].dtype != emb.dtype or head.dtype != emb.dtype:
        return "norm_f or the head in another dtype"
    return None


def step(be, params: dict, cfg, ids, cache: list):
    """lm.step(be, params, cfg, ids, cache) through the fused path when it takes the call."""
    lm._check_ids(ids, 1, "step")
    if unsupported(be, params, cfg, ids, cache) is not None:
        return lm.step(be, params, cfg, ids, cache)
    mcfg = cfg.mixer_config
    eps = float(cfg.norm_epsilon)
    layers = lm._layers(params, cfg.n_layer)
    hidden = be.ops.embedding(be.xp.reshape(ids, (-1, 1)), params["backbone.embedding.weight"])[:, 0]
    u, residual = be.ops.add_rmsnorm(hidden, None, layers[0]["norm.weight"], eps,
                                     cfg.residual_in_fp32)
    partials = None  # None: u is already normalised (layer 0)
    new_cache = []
    inplace = ms._INPLACE.get()
    for i, layer in enumerate(layers):
        b_in = layer["mixer.in_proj.bias"] if mcfg.bias else None
        if partials is None:
            zx = be.ops.linear(u, layer["mixer.in_proj.weight"], b_in)
        else:
            zx = linear_group_scaled(u, layer["mixer.in_proj.weight"], b_in, partials, 1, 0, eps)
        mixer = {k[6:]: v for k, v in layer.items() if k.startswith("mixer.")}
        y, mpart, ncs, nss = ms.mixer(zx, mixer, mcfg, cache[i], inplace)
        new_cache.append({"conv_state": ncs, "ssm_state": nss})
        nxt = layers[i + 1]["norm.weight"] if i + 1 < len(layers) else params["backbone.norm_f.weight"]
        scales = None if mpart is None else (mpart, mcfg.ngroups, mcfg.d_mlp, ms._norm_eps())
        b_out = layer["mixer.out_proj.bias"] if mcfg.bias else None
        residual, u, partials = linear_residual_epilogue(
            y, layer["mixer.out_proj.weight"], b_out, residual, nxt, scales)
    head = params["backbone.embedding.weight" if cfg.tie_embeddings else "lm_head.weight"]
    return linear_group_scaled(u, head, None, partials, 1, 0, eps), new_cache
