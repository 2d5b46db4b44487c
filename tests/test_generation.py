"""Generation: each option's semantics, ragged batches, streaming, tokenizers, the CLI."""

import argparse
import sys

import numpy as np
import pytest

from mamba_core import generation as gen
from mamba_core.errors import ConfigError, ShapeError
from mamba_core.generation import GenerationConfig, generate, prefill, stream
from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.models.lm import MambaLM
from mamba_core.tokenizer import ByteTokenizer, HFTokenizer, TokenizerError, load_tokenizer

MIXERS = {
    "Mamba1": {"layer": "Mamba1", "d_state": 4},
    "Mamba2": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "chunk_size": 4},
    "Mamba3": {"layer": "Mamba3", "d_state": 8, "headdim": 8, "chunk_size": 4},
}
PROMPTS = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3], [5], [8, 9, 7, 9, 3, 2, 3], [8, 4, 6, 2, 6]]

_MODELS = {}


def model(layer="Mamba1", vocab=50, backend="reference"):
    """A small float64 model whose logits are spread out (untied head scaled up), so that
    greedy and sampling make visibly different choices. The float64 reference backend by default: on
    small shapes it is the fastest (no thread pool), and generation does not depend on it."""
    key = (layer, vocab, backend)
    if key not in _MODELS:
        cfg = LMConfig(d_model=16, n_layer=2, vocab_size=vocab, ssm_cfg=dict(MIXERS[layer]),
                       tie_embeddings=False)
        p = lm.init_params(cfg, np.random.default_rng(7))
        p["backbone.embedding.weight"] = p["backbone.embedding.weight"] * 20.0
        p["lm_head.weight"] = p["lm_head.weight"] * 4.0  # logits' std about 2.4
        _MODELS[key] = MambaLM(cfg, p, backend=backend, dtype="float64")
    return _MODELS[key]


def kept(logits):
    return set(np.flatnonzero(np.isfinite(logits[0])).tolist())


# ---- options' semantics on handcrafted logits ---------------------------------------------
def test_repetition_penalty_follows_ctrl_rule():
    z = np.array([[2.0, -2.0, 0.0, 3.0, -1.0]])
    seen = np.array([[True, True, True, False, False]])
    np.testing.assert_array_equal(gen.apply_repetition_penalty(z, seen, 2.0), [[1.0, -4.0, 0.0, 3.0, -1.0]])
    np.testing.assert_array_equal(gen.apply_repetition_penalty(z, seen, 0.5), [[4.0, -1.0, 0.0, 3.0, -1.0]])
    assert gen.apply_repetition_penalty(z, seen, 1.0) is z


def test_top_k_keeps_exactly_k_ties_to_lower_id():
    z = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert kept(gen.top_k_filter(z, 1)) == {1}
    assert kept(gen.top_k_filter(z, 2)) == {1, 2}
    assert kept(gen.top_k_filter(z, 4)) == {1, 2, 3, 4}
    assert kept(gen.top_k_filter(z, 0)) == kept(gen.top_k_filter(z, 99)) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    "probs, p, want",
    [
        ([0.5, 0.25, 0.125, 0.125], 0.5, {0}),          # reached exactly by the first
        ([0.5, 0.25, 0.125, 0.125], 0.6, {0, 1}),
        ([0.5, 0.25, 0.125, 0.125], 0.75, {0, 1}),       # reached exactly by two
        ([0.5, 0.25, 0.125, 0.125], 0.76, {0, 1, 2}),    # ties: the lower id goes first
        ([0.5, 0.25, 0.125, 0.125], 1.0, {0, 1, 2, 3}),
        ([0.125, 0.25, 0.5, 0.125], 0.8, {1, 2, 0}),     # order is by probability, not id
        ([0.25, 0.25, 0.25, 0.25], 0.5, {0, 1}),         # all tied: smallest set, lower ids
        ([0.25, 0.25, 0.25, 0.25], 1e-6, {0}),           # at least one
        ([0.1, 0.3, 0.3, 0.3], 0.5, {1, 2}),
        ([0.7, 0.3, 0.0, 0.0], 1.0, {0, 1}),             # p=1 keeps all, -inf stays dropped
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(probs, p, want):
    with np.errstate(divide="ignore"):
        z = np.log(np.array([probs]))
    assert kept(gen.top_p_filter(z, p)) == want


def test_top_p_matches_the_definition_on_random_logits():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 30)) * 2
    for p in (0.1, 0.5, 0.9, 0.99):
        probs = gen.softmax(z)
        keep = np.isfinite(gen.top_p_filter(z, p))
        for b in range(z.shape[0]):
            k = np.sort(probs[b][keep[b]])
            assert k.sum() >= p - 1e-12                        # reaches p
            assert k[1:].sum() < p                             # no smaller set of these does
            assert k[0] >= probs[b][~keep[b]].max(initial=0)   # and it is the most probable


def test_min_p_threshold():
    z = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    assert kept(gen.min_p_filter(z, 0.25)) == {0, 1, 2}  # threshold 0.125
    assert kept(gen.min_p_filter(z, 0.4)) == {0, 1}      # threshold 0.2
    assert kept(gen.min_p_filter(z, 1.0)) == {0}
    assert kept(gen.min_p_filter(z, 0.0)) == {0, 1, 2, 3}


def test_processing_order_temperature_before_top_p():
    # At T=1 the top id alone has 0.6 < 0.7; sharpened by T=0.25 it reaches 0.7 alone.
    z = np.log(np.array([[0.6, 0.3, 0.1]]))
    assert kept(gen.process_logits(z, GenerationConfig(temperature=1.0, top_p=0.7))) == {0, 1}
    assert kept(gen.process_logits(z, GenerationConfig(temperature=0.25, top_p=0.7))) == {0}


def test_draws_follow_the_probabilities_and_never_pick_zero():
    probs = np.array([0.5, 0.3, 0.2, 0.0])
    with np.errstate(divide="ignore"):
        z = np.tile(np.log(probs), (40000, 1))
    ids = gen.select_tokens(z, GenerationConfig(do_sample=True), np.random.default_rng(1))
    freq = np.bincount(ids, minlength=4) / len(ids)
    np.testing.assert_allclose(freq, probs, atol=0.01)
    assert freq[3] == 0


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"seed": -3}, "seed"),
        ({"stop_tokens": ["a"]}, "stop_tokens"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_invalid_options_name_the_argument(kw, name):
    with pytest.raises(ConfigError, match=rf"{name}="):
        GenerationConfig(**kw)
    with pytest.raises(ConfigError, match=rf"{name}="):
        generate(model(), [[1, 2]], **kw)


def test_unknown_option_lists_the_options():
    with pytest.raises(TypeError, match="top_q.*top_p"):
        generate(model(), [[1, 2]], top_q=0.5)


def test_greedy_unless_asked_to_sample():
    assert not GenerationConfig().sampling
    assert GenerationConfig(top_k=5).sampling and GenerationConfig(do_sample=True).sampling
    assert not GenerationConfig(temperature=0.0, top_k=5).sampling
    assert not GenerationConfig(temperature=0.7, do_sample=False).sampling


# ---- on a model ---------------------------------------------------------------------------
def test_top_k_1_and_tiny_temperature_equal_greedy():
    m = model()
    greedy = generate(m, PROMPTS, max_new_tokens=10)
    for seed in (0, 1):
        assert generate(m, PROMPTS, max_new_tokens=10, top_k=1, temperature=1.5, seed=seed) == greedy
    assert generate(m, PROMPTS, max_new_tokens=10, temperature=1e-6, seed=3) == greedy
    assert generate(m, PROMPTS, max_new_tokens=10, temperature=0.0, top_p=0.5) == greedy


def test_seed_reproducible_and_different_seeds_differ():
    m = model()
    a = generate(m, PROMPTS, max_new_tokens=12, temperature=2.0, seed=11)
    assert generate(m, PROMPTS, max_new_tokens=12, temperature=2.0, seed=11) == a
    assert generate(m, PROMPTS, max_new_tokens=12, temperature=2.0, seed=12) != a
    assert a != generate(m, PROMPTS, max_new_tokens=12)  # and sampling is not greedy here


def _manual_greedy(m, prompt, n, penalty):
    """Full forward over the whole sequence each time, CTRL penalty written out."""
    seq = list(prompt)
    for _ in range(n):
        logits, _ = m.forward(np.array([seq]))
        z = m.backend.to_numpy(logits)[0, -1, : m.cfg.vocab_size].copy()
        for t in set(seq):
            z[t] = z[t] / penalty if z[t] > 0 else z[t] * penalty
        seq.append(int(np.argmax(z)))
    return seq[len(prompt):]


def test_repetition_penalty_in_greedy_decoding():
    m = model()
    with_pen = generate(m, PROMPTS[:3], max_new_tokens=6, repetition_penalty=3.0)
    assert with_pen == [_manual_greedy(m, p, 6, 3.0) for p in PROMPTS[:3]]
    assert with_pen != generate(m, PROMPTS[:3], max_new_tokens=6)  # the test is not vacuous


def test_stop_token_ends_a_row_while_others_continue():
    m = model()
    full = generate(m, PROMPTS[:2], max_new_tokens=10)
    cands = [t for t in full[0][1:] if t not in full[1]]
    assert cands, "pick other prompts: no token of row 0 is absent from row 1"
    stop = cands[0]
    cut = full[0].index(stop) + 1
    out = generate(m, PROMPTS[:2], max_new_tokens=10, stop_tokens=[stop])
    assert out == [full[0][:cut], full[1]]
    assert len(out[0]) < 10


def test_finished_rows_are_dropped_from_the_batch():
    m = model()
    sizes = []

    class Spy:
        backend, cfg, forward = m.backend, m.cfg, m.forward

        def step(self, ids, cache):
            sizes.append(len(ids))
            return m.step(ids, cache)

    full = generate(m, PROMPTS[:2], max_new_tokens=8)
    stop = full[0][1]
    assert stop not in full[1]
    out = generate(Spy(), PROMPTS[:2], max_new_tokens=8, stop_tokens=[stop])
    assert out == [full[0][:2], full[1]]
    assert sizes == [2] + [1] * 6  # 7 steps for 8 tokens; row 0 dropped after its 2nd token


@pytest.mark.parametrize("layer, backend", [(k, "reference") for k in MIXERS] + [("Mamba3", "cpu_numpy")])
def test_ragged_batch_equals_each_prompt_alone(layer, backend):
    m = model(layer, backend=backend)
    batch = generate(m, PROMPTS, max_new_tokens=8)
    assert batch == [generate(m, [p], max_new_tokens=8)[0] for p in PROMPTS]
    assert len({tuple(r) for r in batch}) > 1


def _fast_backends():
    from mamba_core.registry import installed

    return sorted(n for n, b in installed().items() if n != "reference" and b.available())


@pytest.mark.parametrize("backend", _fast_backends())
@pytest.mark.parametrize("layer", list(MIXERS))
def test_static_decoder_generates_the_same_tokens(layer, backend, monkeypatch):
    # the backend's decoder over static caches (Backend.static_decoder) against plain lm.step,
    # with a stop token that ends one row early so the batch shrinks mid-way (set_cache again)
    base = model(layer)
    m = MambaLM(base.cfg, {k: base.backend.to_numpy(v) for k, v in base.params.items()}, backend=backend,
                dtype="float32")
    if m.backend.static_decoder(m.params, m.cfg, m.dtype) is None:
        pytest.skip(f"{backend} offers no static decoder (Backend.static_decoder returns None)")
    monkeypatch.setenv("MAMBA_NO_STATIC_DECODER", "1")
    plain = generate(m, PROMPTS, max_new_tokens=8)
    # a token some row produces after its first and another row never does: that row ends early
    stop = next(t for r in plain for t in r[1:] if any(t not in q for q in plain))
    plain = generate(m, PROMPTS, max_new_tokens=8, stop_tokens=[stop])
    assert min(len(r) for r in plain) < 8 == max(len(r) for r in plain)
    monkeypatch.delenv("MAMBA_NO_STATIC_DECODER")
    assert gen._static_decoder(m) is not None
    assert generate(m, PROMPTS, max_new_tokens=8, stop_tokens=[stop]) == plain


@pytest.mark.parametrize("layer", list(MIXERS))
def test_prefill_then_step_equals_full_forward(layer):
    m = model(layer)
    be = m.backend
    logits, cache = prefill(m, PROMPTS)
    nxt = np.array([7, 3, 11, 0, 42], dtype=np.int64)
    step_logits, _ = m.step(nxt, cache)
    for b, p in enumerate(PROMPTS):
        for got, seq in ((logits, p), (step_logits, p + [int(nxt[b])])):
            full, _ = m.forward(np.array([seq]))
            want = be.to_numpy(full)[0, -1]
            err = np.max(np.abs(be.to_numpy(got)[b] - want)) / np.max(np.abs(want))
            assert err < 1e-9, (b, err)


def test_streaming_yields_the_same_tokens_as_generate():
    m = model()
    kw = dict(max_new_tokens=9, temperature=1.3, top_p=0.9, seed=5, repetition_penalty=1.2)
    out = generate(m, PROMPTS, **kw)
    stop = out[1][2]
    out = generate(m, PROMPTS, stop_tokens=[stop], **kw)
    steps = list(stream(m, PROMPTS, stop_tokens=[stop], **kw))
    assert len(steps) == max(len(r) for r in out)
    for b, row in enumerate(out):
        assert [s[b] for s in steps if s[b] is not None] == row
        assert all(s[b] is None for s in steps[len(row):])


def test_streaming_text_pieces_join_to_the_decoded_output():
    m = model("Mamba1", vocab=256)
    tok = ByteTokenizer()
    prompts = ["héllo", "a ✓ b"]
    out = generate(m, prompts, tokenizer=tok, max_new_tokens=12, temperature=1.0, seed=2)
    pieces = list(stream(m, prompts, tokenizer=tok, max_new_tokens=12, temperature=1.0, seed=2))
    assert all(isinstance(x, str) for s in pieces for x in s)
    for b in range(2):
        assert "".join(s[b] for s in pieces) == tok.decode(out[b])


def test_stop_strings_need_a_tokenizer_and_end_the_row():
    m = model("Mamba1", vocab=256)
    tok = ByteTokenizer()
    full = generate(m, ["abc"], tokenizer=tok, max_new_tokens=10)[0]
    target = tok.decode(full[2:4])
    out = generate(m, ["abc"], tokenizer=tok, max_new_tokens=10, stop_strings=[target])[0]
    assert target in tok.decode(out) and target not in tok.decode(out[:-1])
    with pytest.raises(ConfigError, match="stop_strings needs a tokenizer"):
        generate(m, [[1, 2]], stop_strings=["x"])


class _PaddedVocabModel:
    """Logits whose padded-vocabulary entries (ids 50..55) are by far the largest."""

    def __init__(self):
        self.backend = model().backend
        self.cfg = model().cfg
        assert self.cfg.padded_vocab_size == 56

    def _logits(self, b):
        z = np.random.default_rng(b).standard_normal((b, 56))
        z[:, 50:] = 1e4
        return z

    def forward(self, ids, cache=None, last_only=False):
        return self._logits(len(ids)), [{"s": np.zeros((len(ids), 1))}]

    def step(self, ids, cache):
        return self._logits(len(ids)), cache


@pytest.mark.parametrize("kw", [{}, {"temperature": 5.0}, {"top_p": 1.0, "do_sample": True},
                                {"repetition_penalty": 0.1}])
def test_padded_vocabulary_is_never_produced(kw):
    out = generate(_PaddedVocabModel(), PROMPTS, max_new_tokens=20, **kw)
    assert max(max(r) for r in out) < 50


def test_prompt_forms_and_errors():
    m = model()
    assert generate(m, [3, 1, 4], max_new_tokens=4) == generate(m, [[3, 1, 4]], max_new_tokens=4)
    assert generate(m, np.array([[3, 1, 4]]), max_new_tokens=4) == generate(m, [[3, 1, 4]], max_new_tokens=4)
    assert generate(m, PROMPTS, max_new_tokens=0) == [[]] * len(PROMPTS)
    with pytest.raises(ShapeError, match="prompt 1 is empty"):
        generate(m, [[1], []])
    with pytest.raises(ShapeError, match=r"prompt 0.*\[60\].*0\.\.55"):
        generate(m, [[1, 60]])
    with pytest.raises(ConfigError, match="string but no tokenizer"):
        generate(m, ["hello"])


# ---- tokenizers ---------------------------------------------------------------------------
def test_byte_tokenizer_round_trip_and_invalid_utf8():
    tok = ByteTokenizer()
    text = "héllo ✓ 🐍\n"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode([0xFF, 0x41]) == "\ufffdA"
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # a character cut in the middle
    assert tok.decode([0x41, 300, 0x42]) == "A\ufffdB"  # not a byte
    assert tok.eos_token_id is None


def test_load_tokenizer_without_tokenizer_json_is_byte_level(tmp_path):
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_tokenizer_json_without_the_package_says_pip_install(tmp_path, monkeypatch):
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(TokenizerError, match="pip install tokenizers"):
        load_tokenizer(tmp_path)


def _bpe_folder(tmp_path):
    tokenizers = pytest.importorskip(
        "tokenizers", reason="the 'tokenizers' package is not installed: pip install tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["the state space model reads the sequence once", "héllo wörld ✓"] * 20
    tk.train_from_iterator(corpus, trainer)
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')
    return tk


def test_tokenizer_json_loads_through_the_tokenizers_package(tmp_path):
    raw = _bpe_folder(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_token_id == raw.token_to_id("<|endoftext|>") == 0
    text = "the state space model ✓ reads"
    ids = tok.encode(text)
    assert ids == raw.encode(text).ids and len(ids) < len(text.encode())  # merges were learnt
    assert tok.decode(ids) == text
    # generate with string prompts; the eos id is a stop token by default
    m = model("Mamba1", vocab=tok.vocab_size)
    out = generate(m, ["the model", "héllo"], tokenizer=tok, max_new_tokens=5)
    assert out == [generate(m, [tok.encode(p)], max_new_tokens=5, stop_tokens=[0])[0]
                   for p in ["the model", "héllo"]]


# ---- command line -------------------------------------------------------------------------
def _cli(argv):
    from mamba_core import generation_cli

    p = argparse.ArgumentParser(prog="mamba-core")
    generation_cli.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_generate_greedy_and_stream_agree(capsys):
    base = ["generate", "--model", "random", "--prompt", "Hi", "--max-new-tokens", "6", "--dtype", "float64",
            "--backend", "reference"]
    assert _cli(base) == 0
    plain = capsys.readouterr().out
    assert _cli(base + ["--stream"]) == 0
    streamed = capsys.readouterr().out
    assert plain == streamed and plain.startswith("Hi")
    assert _cli(base + ["--prompt", "Hello", "--top-k", "3", "--stream"]) == 0
    out = capsys.readouterr().out
    assert "--- [0] ---\nHi" in out and "--- [1] ---\nHello" in out


def test_cli_rejects_bad_options_by_name():
    with pytest.raises(ConfigError, match="top_p="):
        _cli(["generate", "--model", "random", "--prompt", "x", "--top-p", "2"])


def test_cli_loads_a_checkpoint_folder_and_its_tokenizer(tmp_path, capsys):
    _bpe_folder(tmp_path)
    tok = load_tokenizer(tmp_path)
    m = model("Mamba1", vocab=tok.vocab_size)
    m.save_pretrained(tmp_path)
    prompts = ["the model", "héllo wörld"]
    argv = ["generate", "--model", str(tmp_path), "--backend", "reference", "--dtype", "float64",
            "--max-new-tokens", "5", "--prompt", prompts[0], "--prompt", prompts[1]]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    want = generate(m, prompts, tokenizer=tok, max_new_tokens=5)
    for b, row in enumerate(want):
        text = prompts[b] + tok.decode([i for i in row if i != tok.eos_token_id])
        assert f"--- [{b}] ---\n{text}\n" in out
