"""Checkpoint folders: both layouts round trip bit-exactly; every bad input is a clear error.

(The comparison with files written by transformers itself is in test_checkpoint_hf.py.)
"""

import argparse
import json
import os
import struct

import numpy as np
import pytest

from mamba_core.checkpoint import (CheckpointError, convert, detect_layout, from_pretrained, load_state,
                                   save_pretrained, save_state)
from mamba_core.checkpoint import pretrained, safetensors_io as stio
from mamba_core.checkpoint.cli import add_parser
from mamba_core.errors import ConfigError
from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.models.lm import MambaLM

MIXERS = {
    "Mamba1": {"layer": "Mamba1", "d_state": 4},
    "Mamba2": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 4},
    "Mamba3": {"layer": "Mamba3", "d_state": 8, "headdim": 8, "chunk_size": 4},
    "Mamba3-MIMO": {"layer": "Mamba3", "d_state": 8, "headdim": 8, "chunk_size": 4, "is_mimo": True,
                    "mimo_rank": 2, "is_outproj_norm": True},
}
IDS = np.random.default_rng(1).integers(0, 50, (2, 9))


def small(layer="Mamba1", **kw):
    return LMConfig(d_model=16, n_layer=2, vocab_size=50, ssm_cfg=dict(MIXERS[layer]), **kw)


def model(layer="Mamba1", seed=0, **kw):
    return MambaLM.random(small(layer, **kw), backend="cpu_numpy", seed=seed)


def params_np(m):
    return {k: np.asarray(m.backend.to_numpy(v)) for k, v in m.params.items()}


def assert_bit_exact(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k


# ---- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", list(MIXERS))
@pytest.mark.parametrize("tie", [True, False])
def test_mamba_ssm_round_trip_is_bit_exact(tmp_path, layer, tie):
    m = model(layer, tie_embeddings=tie)
    save_pretrained(m, tmp_path / "ck", layout="mamba_ssm")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["ssm_cfg"]["layer"] == MIXERS[layer]["layer"] and "norm_epsilon" not in cfg
    assert set(cfg) == set(pretrained.layouts.MAMBA_SSM_FIELDS)  # what mamba_ssm's MambaConfig takes
    entries, meta = stio.read_header(str(tmp_path / "ck" / "model.safetensors"))
    assert "lm_head.weight" in entries and "backbone.embedding.weight" in entries  # as state_dict()
    assert meta == {"format": "pt"}
    assert detect_layout(tmp_path / "ck") == "mamba_ssm"
    m2 = from_pretrained(tmp_path / "ck", backend="cpu_numpy")
    assert m2.cfg == m.cfg
    assert_bit_exact(params_np(m), params_np(m2))  # same cfg and bits: the same model
    if layer == "Mamba1":
        assert np.array_equal(m.forward(IDS)[0], m2.forward(IDS)[0])


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
@pytest.mark.parametrize("tie", [True, False])
def test_hf_round_trip_is_bit_exact_and_pads_vocab(tmp_path, layer, tie):
    m = model(layer, tie_embeddings=tie)
    save_pretrained(m, tmp_path / "hf", layout="hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == {"Mamba1": "mamba", "Mamba2": "mamba2"}[layer]
    assert cfg["vocab_size"] == 56 and cfg["tie_word_embeddings"] == tie  # HF vocab = padded rows
    entries, _ = stio.read_header(str(tmp_path / "hf" / "model.safetensors"))
    assert "backbone.embeddings.weight" in entries and ("lm_head.weight" in entries) == (not tie)
    m2 = from_pretrained(tmp_path / "hf", backend="cpu_numpy")
    assert m2.checkpoint_info.layout == "hf"
    assert_bit_exact(params_np(m), params_np(m2))
    assert np.array_equal(m.forward(IDS)[0], m2.forward(IDS)[0])
    # and through the other layout and back: hf -> mamba_ssm -> hf, tensors untouched
    convert(tmp_path / "hf", tmp_path / "ms", "mamba_ssm")
    convert(tmp_path / "ms", tmp_path / "hf2", "hf")
    a = stio.read_entries(stio.read_header(str(tmp_path / "hf" / "model.safetensors"))[0].values())
    b = stio.read_entries(stio.read_header(str(tmp_path / "hf2" / "model.safetensors"))[0].values())
    assert_bit_exact(a, b)
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == (tmp_path / "hf2" / "model.safetensors").read_bytes()


def test_mamba3_has_no_hf_layout(tmp_path):
    with pytest.raises(ConfigError, match=r"layer='Mamba3'.*layout='mamba_ssm'"):
        save_pretrained(model("Mamba3"), tmp_path / "x", layout="hf")
    assert not (tmp_path / "x").exists() and os.listdir(tmp_path) == []


def test_sharded_save_writes_index_and_loads_bit_exact(tmp_path):
    m = model("Mamba2", tie_embeddings=False)
    save_pretrained(m, tmp_path / "ck", layout="hf", max_shard_size="8KB")
    files = sorted(os.listdir(tmp_path / "ck"))
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 2 and "model.safetensors.index.json" in files and "model.safetensors" not in files
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    m2 = from_pretrained(tmp_path / "ck", backend="cpu_numpy")
    assert_bit_exact(params_np(m), params_np(m2))


def test_bf16_save_rounds_and_convert_keeps_bf16_exactly(tmp_path):
    m = model("Mamba1")
    save_pretrained(m, tmp_path / "bf", layout="hf", dtype="bfloat16")
    entries, _ = stio.read_header(str(tmp_path / "bf" / "model.safetensors"))
    assert {e.dtype for e in entries.values()} == {"BF16"}
    st = load_state(tmp_path / "bf")
    assert st.dtype == "bfloat16"
    for k, v in params_np(m).items():
        want = stio.bf16_to_f32(stio.f32_to_bf16(v))
        assert st.params[k].dtype == np.float32 and np.array_equal(st.params[k], want), k
        assert np.max(np.abs(st.params[k] - v)) <= np.max(np.abs(v)) * 2 ** -8
    convert(tmp_path / "bf", tmp_path / "ms", "mamba_ssm")  # stays bf16: no widening, no loss
    convert(tmp_path / "ms", tmp_path / "bf2", "hf")
    assert (tmp_path / "bf" / "model.safetensors").read_bytes() == (tmp_path / "bf2" / "model.safetensors").read_bytes()


def test_bf16_rounding_is_nearest_even():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, np.inf, np.nan], np.float32)
    got = stio.bf16_to_f32(stio.f32_to_bf16(x))
    assert np.array_equal(got[:5], [1.0, 1.0, 1.0 + 2 ** -6, -2.5, np.inf]) and np.isnan(got[5])


def test_save_into_existing_folder_keeps_other_files(tmp_path):
    d = tmp_path / "ck"
    save_pretrained(model("Mamba1"), d, layout="hf", max_shard_size="8KB")
    (d / "tokenizer.json").write_text("{}")
    save_pretrained(model("Mamba1", seed=3), d, layout="mamba_ssm")
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "tokenizer.json"]  # old shards gone
    assert detect_layout(d) == "mamba_ssm"
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp or backup folders left


# ---- failed saves leave nothing -----------------------------------------------------------------
def test_exception_mid_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    m = model("Mamba2")
    save_pretrained(m, tmp_path / "old", layout="mamba_ssm")
    before = {f: (tmp_path / "old" / f).read_bytes() for f in os.listdir(tmp_path / "old")}
    real = stio.write
    calls = []

    def failing(path, tensors, dtype=None, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second shard: a half-written file, then the failure
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real(path, tensors, dtype, metadata)

    monkeypatch.setattr(stio, "write", failing)
    for target in ("new", "old"):
        calls.clear()
        with pytest.raises(OSError, match="No space"):
            save_pretrained(model("Mamba2", seed=5), tmp_path / target, layout="hf", max_shard_size="8KB")
    assert sorted(os.listdir(tmp_path)) == ["old"]  # no "new", no temp folder
    assert {f: (tmp_path / "old" / f).read_bytes() for f in os.listdir(tmp_path / "old")} == before


def test_target_under_a_file_is_an_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):
        save_pretrained(model(), tmp_path / "f" / "ck")
    with pytest.raises(CheckpointError, match="exists and is not a folder"):
        save_pretrained(model(), tmp_path / "f")
    assert os.listdir(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_parent_is_an_error_and_leaves_nothing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OSError):
            save_pretrained(model(), ro / "ck")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


# ---- clear errors, never a partial model --------------------------------------------------------
@pytest.fixture
def ck(tmp_path):
    m = model("Mamba1", tie_embeddings=False)
    d = tmp_path / "ck"
    save_pretrained(m, d, layout="mamba_ssm")
    return d


def rewrite(d, fn):
    """Apply fn to the folder's {key: array} and write it back."""
    p = d / "model.safetensors"
    t = stio.read_entries(stio.read_header(str(p))[0].values())
    fn(t)
    stio.write(str(p), t)


def test_missing_config_and_missing_weights(tmp_path, ck):
    with pytest.raises(CheckpointError, match="not a folder"):
        load_state(tmp_path / "nope")
    os.remove(ck / "config.json")
    with pytest.raises(CheckpointError, match=r"missing config\.json; found \['model\.safetensors'\]"):
        load_state(ck)
    save_pretrained(model(), ck)
    os.remove(ck / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"no weights; expected model\.safetensors"):
        load_state(ck)


@pytest.mark.parametrize("edit, err, match", [
    (lambda c: c.update(d_model=-3), ConfigError, r"d_model=-3"),
    (lambda c: c.update(hidden=1), ConfigError, r"unknown field\(s\) \['hidden'\]"),
    (lambda c: c["ssm_cfg"].update(d_state="big"), ConfigError, r"d_state='big'"),
    (lambda c: c["ssm_cfg"].update(layer="Mamba9"), ConfigError, r"layer='Mamba9'"),
    (lambda c: c["ssm_cfg"].update(learnable_init_states=True), ConfigError, r"ssm_cfg\.learnable_init_states=True"),
    (lambda c: c["ssm_cfg"].update(activation="relu"), ConfigError, r"ssm_cfg\.activation='relu'"),
    (lambda c: c["ssm_cfg"].update(bogus=1), ConfigError, r"unknown field\(s\) \['bogus'\]"),
    (lambda c: c.update(model_type="falcon_mamba"), ConfigError, r"model_type='falcon_mamba' is not supported"),
    (lambda c: c.clear(), ConfigError, r"neither an HF transformers config"),
])
def test_wrong_config_field_names_it(ck, edit, err, match):
    c = json.loads((ck / "config.json").read_text())
    edit(c)
    (ck / "config.json").write_text(json.dumps(c))
    with pytest.raises(err, match=match):
        from_pretrained(ck, backend="cpu_numpy")


def test_harmless_ssm_cfg_fields_are_dropped_with_a_note(ck):
    c = json.loads((ck / "config.json").read_text())
    c["ssm_cfg"].update(use_fast_path=True, layer_idx=3, learnable_init_states=False)
    (ck / "config.json").write_text(json.dumps(c))
    st = load_state(ck)
    assert len(st.notes) == 3 and any("use_fast_path=True dropped" in n for n in st.notes)


def test_config_not_json(ck):
    (ck / "config.json").write_text("{d_model: 16")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_state(ck)


def test_missing_tensor_names_key_and_shape(ck):
    rewrite(ck, lambda t: t.pop("backbone.layers.1.mixer.A_log"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'backbone\.layers\.1\.mixer\.A_log' \(expected shape \(32, 4\)\)"):
        from_pretrained(ck, backend="cpu_numpy")


def test_unexpected_tensor_names_key_and_shape(ck):
    rewrite(ck, lambda t: t.update({"backbone.layers.2.norm.weight": np.ones(16, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'backbone\.layers\.2\.norm\.weight' \(shape \(16,\)\)"):
        load_state(ck)


def test_misshaped_tensor_names_key_expected_and_found(ck):
    rewrite(ck, lambda t: t.update({"backbone.layers.0.mixer.x_proj.weight": np.ones((10, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=r"tensor 'backbone\.layers\.0\.mixer\.x_proj\.weight': "
                                              r"expected shape \(9, 32\), found \(10, 32\)"):
        load_state(ck)


def test_all_problems_are_listed_at_once(ck):
    def edit(t):
        t.pop("backbone.norm_f.weight")
        t["backbone.layers.0.mixer.D"] = np.ones(7, np.float32)
    rewrite(ck, edit)
    with pytest.raises(CheckpointError) as e:
        load_state(ck)
    assert "missing tensor 'backbone.norm_f.weight'" in str(e.value)
    assert "'backbone.layers.0.mixer.D': expected shape (32,), found (7,)" in str(e.value)


def test_tied_head_that_differs_is_refused(tmp_path):
    save_pretrained(model("Mamba1"), tmp_path / "ck", layout="mamba_ssm")
    rewrite(tmp_path / "ck", lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1}))
    with pytest.raises(CheckpointError, match="tie_embeddings is true but tensor 'lm_head.weight' differs"):
        load_state(tmp_path / "ck")


def test_truncated_safetensors(ck):
    p = ck / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"truncated safetensors file: the header describes \d+ bytes in all"):
        from_pretrained(ck, backend="cpu_numpy")
    p.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_state(ck)


@pytest.mark.parametrize("corrupt, match", [
    (lambda d: struct.pack("<Q", 10 ** 12) + d[8:], "header claims"),
    (lambda d: d[:8] + b"#" + d[9:], "not valid JSON"),
    (lambda d: d[:8] + d[8:].replace(b'"F32"', b'"Q32"', 1), "dtype 'Q32' is not supported"),
    (lambda d: d[:8] + d[8:].replace(b'"shape":[16]', b'"shape":[17]', 1), "hold 64 bytes but dtype F32"),
])
def test_corrupted_safetensors_header(ck, corrupt, match):
    p = ck / "model.safetensors"
    p.write_bytes(corrupt(p.read_bytes()))
    with pytest.raises(CheckpointError, match=match):
        load_state(ck)


def test_missing_or_corrupted_shard(tmp_path):
    d = tmp_path / "ck"
    save_pretrained(model("Mamba1"), d, max_shard_size="8KB")
    shard = sorted(f for f in os.listdir(d) if f.startswith("model-"))[1]
    data = (d / shard).read_bytes()
    (d / shard).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{shard}: truncated"):
        load_state(d)
    os.remove(d / shard)
    with pytest.raises(CheckpointError, match=f"lists shard '{shard}', which is missing"):
        load_state(d)


# ---- pickles only when asked ----------------------------------------------------------------------
def test_pytorch_model_bin_needs_allow_pickle(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is needed to write and read pytorch_model.bin")
    m = model("Mamba2")
    d = tmp_path / "ms"
    save_pretrained(m, d, layout="mamba_ssm")
    sd = {k: torch.from_numpy(v.copy()).to(torch.bfloat16 if "in_proj" in k else torch.float32)
          for k, v in params_np(m).items()}
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # tied: state_dict() has both names
    torch.save(sd, d / "pytorch_model.bin")
    os.remove(d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin \(a pickle\); refused: pickle files can run arbitrary code"):
        from_pretrained(d, backend="cpu_numpy")
    m2 = from_pretrained(d, backend="cpu_numpy", allow_pickle=True)
    p = params_np(m)
    for k, v in params_np(m2).items():
        want = sd[k].float().numpy()
        assert np.array_equal(v, want), k
        if "in_proj" not in k:
            assert np.array_equal(v, p[k]), k
    assert any("pickle" in n for n in m2.checkpoint_info.notes)


# ---- the command ----------------------------------------------------------------------------------
def test_convert_command(tmp_path, capsys):
    m = model("Mamba2", tie_embeddings=False)
    save_pretrained(m, tmp_path / "ms", layout="mamba_ssm")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["convert", str(tmp_path / "ms"), str(tmp_path / "hf"), "--max-shard-size", "10KB"])
    assert args.func(args) == 0
    assert "-> " in capsys.readouterr().out
    assert detect_layout(tmp_path / "hf") == "hf"  # default target: the other layout
    assert_bit_exact(params_np(m), params_np(from_pretrained(tmp_path / "hf", backend="cpu_numpy")))
