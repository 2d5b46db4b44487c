"""The language model graph: config validation, parameter layout, forward/step agreement."""

import numpy as np
import pytest

from mamba_core.errors import ConfigError, ShapeError
from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.registry import get_backend

MIXERS = {
    "Mamba1": {"layer": "Mamba1", "d_state": 4},
    "Mamba2": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "chunk_size": 4},
    "Mamba3": {"layer": "Mamba3", "d_state": 8, "headdim": 8, "chunk_size": 4},
    "Mamba3-MIMO": {"layer": "Mamba3", "d_state": 8, "headdim": 8, "chunk_size": 4, "is_mimo": True, "mimo_rank": 2},
}


def small(layer="Mamba1", **kw):
    return LMConfig(d_model=16, n_layer=2, vocab_size=50, ssm_cfg=dict(MIXERS[layer]), **kw)


def test_vocab_is_padded_and_tied_head_has_no_lm_head():
    cfg = small()
    assert cfg.padded_vocab_size == 56
    shapes = lm.param_shapes(cfg)
    assert shapes["backbone.embedding.weight"] == (56, 16)
    assert "lm_head.weight" not in shapes
    assert "lm_head.weight" in lm.param_shapes(small(tie_embeddings=False))


def test_mlp_adds_norm2_and_rounds_hidden_to_128():
    cfg = small(d_intermediate=24)
    shapes = lm.param_shapes(cfg)
    assert shapes["backbone.layers.1.mlp.fc1.weight"] == (256, 16)
    assert shapes["backbone.layers.1.norm2.weight"] == (16,)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"n_layer": 0}, "n_layer"),
        ({"rms_norm": False}, "rms_norm"),
        ({"attn_layer_idx": [1]}, "attn_layer_idx"),
        ({"ssm_cfg": {"layer": "Mamba9"}}, "ssm_cfg.layer"),
        ({"d_intermediate": -1}, "d_intermediate"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    base = dict(d_model=16, n_layer=2, vocab_size=50, ssm_cfg={"layer": "Mamba1"})
    base.update(kw)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        LMConfig(**base)


def test_unknown_config_field_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown field.*n_layers.*known fields"):
        LMConfig.from_dict({"d_model": 16, "n_layers": 2})


def test_init_follows_mamba_ssm():
    cfg = small()
    p = lm.init_params(cfg, np.random.default_rng(0))
    lm.check_params(cfg, p)
    emb = p["backbone.embedding.weight"]
    assert abs(emb.std() - 0.02) < 0.003
    assert np.all(p["backbone.norm_f.weight"] == 1)


def test_check_params_names_the_key_and_shapes():
    cfg = small()
    p = lm.init_params(cfg, np.random.default_rng(0))
    p["backbone.norm_f.weight"] = np.ones(3, np.float32)
    with pytest.raises(ShapeError, match=r"backbone\.norm_f\.weight.*\(16,\).*\(3,\)"):
        lm.check_params(cfg, p)
    del p["backbone.norm_f.weight"]
    with pytest.raises(ShapeError, match="missing.*norm_f"):
        lm.check_params(cfg, p)


@pytest.mark.parametrize("layer", list(MIXERS))
@pytest.mark.parametrize("d_intermediate", [0, 8])
def test_step_matches_forward(layer, d_intermediate):
    be = get_backend("cpu_numpy")
    cfg = small(layer, d_intermediate=d_intermediate)
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(1)), "float64")
    ids = np.random.default_rng(2).integers(0, 50, size=(2, 9))
    logits, cache = lm.forward(be, params, cfg, ids[:, :5])
    assert logits.shape == (2, 5, 56)
    outs = []
    for t in range(5, 9):
        lt, cache = lm.step(be, params, cfg, ids[:, t], cache)
        outs.append(lt)
    full, full_cache = lm.forward(be, params, cfg, ids)
    np.testing.assert_allclose(np.stack(outs, 1), full[:, 5:], rtol=1e-9, atol=1e-9)
    for a, b in zip(cache, full_cache):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-10, err_msg=k)


def test_ids_must_be_integers():
    be = get_backend("cpu_numpy")
    cfg = small()
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)))
    with pytest.raises(ShapeError, match=r"integer array of shape \(B, L\)"):
        lm.forward(be, params, cfg, np.zeros((1, 3), np.float32))
