"""Checkpoints written by transformers itself load with identical logits and greedy decodes.

Tiny random-weight MambaForCausalLM / Mamba2ForCausalLM models are saved with transformers'
``save_pretrained`` and loaded with ours on every available backend; logits are compared with
transformers' own forward (fp32 relative error < 1e-4), greedy decoding (our prefill + step)
with transformers' ``generate``. Our HF writer is checked the other way: transformers loads it.
Needs: pip install transformers (with the CPU torch).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch, CPU build)")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")

from mamba_core.checkpoint import convert, from_pretrained, load_state, save_pretrained  # noqa: E402
from mamba_core.checkpoint import safetensors_io as stio  # noqa: E402
from mamba_core.errors import ConfigError  # noqa: E402
from mamba_core.models.config import LMConfig  # noqa: E402
from mamba_core.models.lm import MambaLM  # noqa: E402
from mamba_core.registry import installed  # noqa: E402

TOL = 1e-4
BACKENDS = sorted(n for n, b in installed().items() if b.available())
DTYPE = {"reference": "float64"}  # a backend that only computes in float64

MAMBA1 = dict(vocab_size=100, hidden_size=32, state_size=8, num_hidden_layers=2)
MAMBA2 = dict(vocab_size=100, hidden_size=32, state_size=8, num_hidden_layers=2, num_heads=8, head_dim=8,
              n_groups=2, chunk_size=16)
CASES = {
    "mamba-untied": ("mamba", dict(MAMBA1, tie_word_embeddings=False)),
    "mamba-tied": ("mamba", dict(MAMBA1, tie_word_embeddings=True)),
    "mamba-pad8-bias": ("mamba", dict(MAMBA1, vocab_size=104, pad_vocab_size_multiple=8, use_bias=True,
                                      time_step_rank=3)),
    "mamba2-groups2": ("mamba2", MAMBA2),
    "mamba2-tied-1group": ("mamba2", dict(MAMBA2, n_groups=1, tie_word_embeddings=True, chunk_size=8)),
}


#: Before 5.23, transformers' Mamba2 gated RMSNorm normalised over all of d_inner at once instead of
#: per group (mamba_ssm's definition, which its checkpoints were trained with and we follow); its own
#: forward therefore differs from the checkpoint's meaning when n_groups > 1.
GROUPED_NORM_SINCE = (5, 23)


def _version(v: str) -> tuple:
    return tuple(int(p) for p in v.split(".")[:2] if p.isdigit())


def needs_grouped_hf(case: str) -> None:
    kind, fields = CASES[case]
    if kind == "mamba2" and fields.get("n_groups", 1) > 1 and _version(transformers.__version__) < GROUPED_NORM_SINCE:
        pytest.skip(f"transformers {transformers.__version__} normalises Mamba2's gated norm across groups "
                    f"(fixed in 5.23); comparing n_groups>1 logits needs transformers>=5.23")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def hf_classes(kind):
    if kind == "mamba":
        return transformers.MambaConfig, transformers.MambaForCausalLM
    return transformers.Mamba2Config, transformers.Mamba2ForCausalLM


def make_hf(kind, fields, seed=0):
    conf_cls, model_cls = hf_classes(kind)
    torch.manual_seed(seed)
    m = model_cls(conf_cls(**fields)).eval()
    with torch.no_grad():  # bigger than the init's tiny values, so every parameter matters
        for n, p in m.named_parameters():
            if n.endswith("norm.weight") or n.endswith("norm_f.weight") or n.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
    return m


def hf_logits(m, ids):
    with torch.no_grad():
        return m(torch.tensor(ids)).logits.float().numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{case: (folder, transformers model)} written by transformers' save_pretrained."""
    out = {}
    for name, (kind, fields) in CASES.items():
        m = make_hf(kind, fields)
        d = tmp_path_factory.mktemp(name)
        m.save_pretrained(d)
        out[name] = (d, m)
    return out


IDS = np.random.default_rng(0).integers(0, 100, (2, 37))  # 37: not a multiple of the chunk


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(saved, case, backend):
    needs_grouped_hf(case)
    d, hf = saved[case]
    ours = from_pretrained(d, backend=backend, dtype=DTYPE.get(backend, "float32"))
    got, _ = ours.forward(IDS)
    got = ours.backend.to_numpy(got)
    ref = hf_logits(hf, IDS)
    assert got.shape == ref.shape
    err = rel_err(got, ref)
    print(f"{case} on {backend}: logits relative error {err:.2e}")
    assert err < TOL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["mamba-untied", "mamba2-groups2"])
def test_greedy_decode_matches_transformers_generate(saved, case, backend):
    needs_grouped_hf(case)
    d, hf = saved[case]
    ours = from_pretrained(d, backend=backend, dtype=DTYPE.get(backend, "float32"))
    prompt = IDS[:, :7]
    with torch.no_grad():  # no eos: min_new_tokens would forbid it, eos would stop a row
        want = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                           max_new_tokens=10, do_sample=False, eos_token_id=None).numpy()[:, 7:]
    logits, cache = ours.forward(prompt, last_only=True)
    toks = []
    for _ in range(10):
        t = np.argmax(ours.backend.to_numpy(logits), axis=-1)
        toks.append(t)
        logits, cache = ours.step(t, cache)
    got = np.stack(toks, 1)
    print(f"{case} on {backend}: greedy tokens {got.tolist()}")
    assert np.array_equal(got, want)


def test_sharded_transformers_checkpoint(tmp_path):
    hf = make_hf("mamba2", MAMBA2)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = from_pretrained(tmp_path, backend="cpu_numpy")
    assert rel_err(ours.forward(IDS)[0], hf_logits(hf, IDS)) < TOL


def test_bf16_transformers_checkpoint_is_widened_exactly(tmp_path):
    hf = make_hf("mamba", MAMBA1).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    st = load_state(tmp_path)
    assert st.dtype == "bfloat16"
    for k, t in hf.state_dict().items():
        k = k.replace("embeddings", "embedding")
        if k in st.params:
            assert np.array_equal(st.params[k], t.float().numpy()), k
    ref = transformers.MambaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert rel_err(from_pretrained(tmp_path, backend="cpu_numpy").forward(IDS)[0], hf_logits(ref, IDS)) < TOL


@pytest.mark.parametrize("layer, tie", [("Mamba1", True), ("Mamba2", False)])
def test_transformers_loads_what_we_write(tmp_path, layer, tie):
    ssm = {"layer": layer, "d_state": 8}
    if layer == "Mamba2":
        ssm.update(headdim=8, ngroups=2, chunk_size=8)
    cfg = LMConfig(d_model=32, n_layer=2, vocab_size=50, ssm_cfg=ssm, tie_embeddings=tie)  # padded to 56
    ours = MambaLM.random(cfg, backend="cpu_numpy", seed=2)
    save_pretrained(ours, tmp_path / "ms", layout="mamba_ssm")
    convert(tmp_path / "ms", tmp_path / "hf", "hf")
    cls = hf_classes("mamba" if layer == "Mamba1" else "mamba2")[1]
    hf = cls.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.vocab_size == 56
    assert rel_err(ours.forward(IDS % 50)[0], hf_logits(hf, IDS % 50)) < TOL


def test_hf_round_trip_through_mamba_ssm_is_bit_exact(saved, tmp_path):
    d, hf = saved["mamba2-groups2"]
    convert(d, tmp_path / "ms", "mamba_ssm")
    convert(tmp_path / "ms", tmp_path / "hf", "hf")
    a = stio.read_entries(stio.read_header(str(d / "model.safetensors"))[0].values())
    b = stio.read_entries(stio.read_header(str(tmp_path / "hf" / "model.safetensors"))[0].values())
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    back = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert np.array_equal(hf_logits(back, IDS), hf_logits(hf, IDS))


@pytest.mark.parametrize("field, value, match", [
    ("hidden_act", "gelu", r"hidden_act='gelu'"),
    ("layer_norm_epsilon", 1e-6, r"layer_norm_epsilon=1e-06: HF Mamba2 also uses it in the mixer's gated RMSNorm"),
    ("num_heads", 4, r"num_heads=4: num_heads \* head_dim = 32 must equal expand \* hidden_size = 64"),
    ("n_groups", 3, r"ngroups=3"),
    ("model_type", "jamba", r"model_type='jamba' is not supported"),
])
def test_unsupported_hf_fields_are_named(saved, tmp_path, field, value, match):
    import json
    import shutil

    d, _ = saved["mamba2-groups2"]
    shutil.copytree(d, tmp_path / "x")
    c = json.loads((tmp_path / "x" / "config.json").read_text())
    c[field] = value
    (tmp_path / "x" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ConfigError, match=match):
        from_pretrained(tmp_path / "x", backend="cpu_numpy")


def test_legacy_and_unknown_hf_fields_are_ignored_with_notes(saved, tmp_path):
    import json
    import shutil

    needs_grouped_hf("mamba2-groups2")
    d, hf = saved["mamba2-groups2"]
    shutil.copytree(d, tmp_path / "x")
    c = json.loads((tmp_path / "x" / "config.json").read_text())
    c.update(norm_before_gate=True, rms_norm=True, fused_add_norm=True, some_new_field=7)  # older hub configs
    (tmp_path / "x" / "config.json").write_text(json.dumps(c))
    ours = from_pretrained(tmp_path / "x", backend="cpu_numpy")
    notes = " | ".join(ours.checkpoint_info.notes)
    assert "norm_before_gate=True ignored" in notes and "some_new_field=7 ignored" in notes
    assert rel_err(ours.forward(IDS)[0], hf_logits(hf, IDS)) < TOL  # transformers ignores them too
