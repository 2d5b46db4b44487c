"""Training: AdamW/schedule/clipping, data, atomic checkpoints, bit-exact resume, NaN stop, errors."""

from __future__ import annotations

import json
import math
import os
import struct
import zlib

import numpy as np
import pytest

from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.registry import get_backend
from mamba_core.training import (CheckpointError, CheckpointMismatchError, DataError, NonFiniteError,
                                 TrainConfig, TrainConfigError, TrainingError, UnknownPresetError,
                                 get_preset, n_params, train)
from mamba_core.training import checkpoint as ckpt
from mamba_core.training import data as D
from mamba_core.training.optim import AdamW, clip_by_global_norm, decays, lr_at
from mamba_core.training.plot import loss_curve_png

BE = get_backend("cpu_numpy")


def micro(layer="Mamba3", d_model=32, n_layer=1):
    ssm = {"layer": layer, "d_state": 8} if layer == "Mamba1" else {
        "layer": layer, "d_state": 16, "headdim": 16, "chunk_size": 16}
    return LMConfig(d_model=d_model, n_layer=n_layer, vocab_size=256, ssm_cfg=ssm)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """60 kB of the bundled corpus, so that runs and validation are quick."""
    p = tmp_path_factory.mktemp("data") / "text.txt"
    p.write_bytes(D.load_bytes()[:60_000].tobytes())
    return str(p)


# ---- optimizer ------------------------------------------------------------------------------
def test_adamw_matches_textbook_formula():
    rng = np.random.default_rng(0)
    p0 = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    opt = AdamW(BE, dict(p0), {"w": True, "b": False}, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    params = dict(p0)
    ref = {k: v.astype(np.float64) for k, v in p0.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v_ = {k: np.zeros_like(v) for k, v in ref.items()}
    for t in range(1, 6):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p0.items()}
        lr = 0.01 * t
        params = opt.update(params, grads, lr)
        for k in ref:
            g = grads[k].astype(np.float64)
            m[k] = 0.9 * m[k] + 0.1 * g
            v_[k] = 0.95 * v_[k] + 0.05 * g * g
            wd = 0.1 if k == "w" else 0.0
            ref[k] = ref[k] * (1 - lr * wd) - lr * (m[k] / (1 - 0.9 ** t)) / (
                np.sqrt(v_[k] / (1 - 0.95 ** t)) + 1e-8)
    for k in ref:
        assert params[k].dtype == np.float32
        np.testing.assert_allclose(params[k], ref[k], rtol=2e-5, atol=1e-6)


def test_schedule_warmup_cosine():
    lr, warm, total = 1e-3, 10, 110
    assert lr_at(0, lr, warm, total) == pytest.approx(lr / 10)
    assert lr_at(9, lr, warm, total) == pytest.approx(lr)
    assert lr_at(10, lr, warm, total) == pytest.approx(lr)
    assert lr_at(60, lr, warm, total) == pytest.approx(lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99))))
    assert lr_at(total - 1, lr, warm, total) == pytest.approx(lr * 0.1)
    values = [lr_at(s, lr, warm, total) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_clip_by_global_norm():
    g = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}
    clipped, norm = clip_by_global_norm(np, g, 1.0)
    assert norm == pytest.approx(5.0)
    new_norm = math.sqrt(sum(float((v ** 2).sum()) for v in clipped.values()))
    assert new_norm == pytest.approx(1.0, rel=1e-5)
    same, _ = clip_by_global_norm(np, g, 10.0)
    assert same is g
    _, n = clip_by_global_norm(np, {"a": np.array([np.nan], np.float32)}, 1.0)
    assert math.isnan(n)


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2", "Mamba3"])
def test_no_decay_set(layer):
    cfg = micro(layer)
    cfg = LMConfig(**{**cfg.to_dict(), "d_intermediate": 64})
    names = lm.param_shapes(cfg)
    nd = {k for k in names if not decays(cfg, k)}
    assert decays(cfg, "backbone.embedding.weight")
    assert "backbone.norm_f.weight" in nd
    assert "backbone.layers.0.norm.weight" in nd and "backbone.layers.0.norm2.weight" in nd
    assert all(not decays(cfg, k) for k in names if k.endswith(".bias"))
    assert decays(cfg, "backbone.layers.0.mixer.in_proj.weight")
    assert decays(cfg, "backbone.layers.0.mixer.out_proj.weight")
    expected = {"Mamba1": ["A_log", "D"], "Mamba2": ["A_log", "D", "dt_bias"],
                "Mamba3": ["D", "dt_bias", "B_bias", "C_bias"]}[layer]
    for e in expected:
        assert f"backbone.layers.0.mixer.{e}" in nd


# ---- data -------------------------------------------------------------------------------------
def test_bundled_corpus_is_real_text():
    b = D.load_bytes()
    assert b.size > 500_000
    text = b.tobytes().decode("ascii")
    assert "To be, or not to be" in text and "Gutenberg" not in text
    assert 2.5 < D.unigram_entropy(b) < 4.0


def test_batches_deterministic_and_resumable():
    tok = np.arange(1000, dtype=np.uint8)
    a = D.Batches(tok, 4, 8, seed=3)
    for _ in range(3):
        a.next()
    st = json.loads(json.dumps(a.state()))
    want = [a.next() for _ in range(3)]
    b = D.Batches(tok, 4, 8, seed=3)
    b.load_state(st)
    got = [b.next() for _ in range(3)]
    for (x1, y1), (x2, y2) in zip(want, got):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
        assert np.array_equal(x1[:, 1:], y1[:, :-1])
    assert b.position == 6


# ---- checkpoints ------------------------------------------------------------------------------
def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    root = str(tmp_path / "checkpoints")
    p = {"w": np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)}
    o = {"m.w": p["w"] * 2, "v.w": p["w"] ** 2}
    for s in (1, 2, 3):
        ckpt.save(root, s, {"w": p["w"] + s}, o, {"note": s})
    assert sorted(d for d in os.listdir(root) if d.startswith("step-")) == ["step-00000002", "step-00000003"]
    path, p2, o2, st = ckpt.load(root)
    assert path.endswith("step-00000003") and st["step"] == 3 and st["note"] == 3
    assert np.array_equal(p2["w"], p["w"] + 3) and np.array_equal(o2["v.w"], o["v.w"])
    # A crash while writing step 4: a half-written temp dir, and a step dir with no state.json.
    os.makedirs(os.path.join(root, ".tmp-crash"))
    os.makedirs(os.path.join(root, "step-00000004"))
    assert ckpt.load(root)[3]["step"] == 3
    # A crash after the rename but before LATEST moved: still the previous one, then the new.
    os.remove(os.path.join(root, "LATEST"))
    assert ckpt.load(root)[3]["step"] == 3
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.load(str(tmp_path / "nothing"))


def test_loss_curve_png(tmp_path):
    path = str(tmp_path / "loss.png")
    loss_curve_png(path, [(i, 5.0 - i * 0.1) for i in range(1, 30)], [(10, 4.0), (20, 3.2)], 3.3)
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    n = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41:41 + n])
    assert len(raw) == h * (1 + 3 * w)
    img = np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w)[:, 1:].reshape(h, w, 3)
    assert (np.all(img == (31, 119, 180), axis=-1)).sum() > 100  # the train curve is drawn


# ---- training ---------------------------------------------------------------------------------
def test_training_beats_unigram_baseline(tmp_path, text_file):
    tc = TrainConfig(steps=60, seq_len=64, batch=8, lr=5e-3, val_every=30, val_windows=16)
    res = train(micro(d_model=64, n_layer=2), tc, str(tmp_path / "run"), data=text_file,
                backend=BE, quiet=True)
    first = np.mean([l for _, l in res.losses[:5]])
    assert first > 5.0  # starts near log(256) = 5.55
    assert res.val_loss < res.unigram - 0.4, (res.val_loss, res.unigram)
    assert os.path.getsize(tmp_path / "run" / "loss.png") > 1000
    m = json.load(open(tmp_path / "run" / "metrics.json"))
    assert m["val_loss"] == res.val_loss and m["tokens_per_s"] > 0


@pytest.mark.parametrize("layer,accum", [("Mamba3", 1), ("Mamba2", 2), ("Mamba1", 1)])
def test_resume_is_bit_exact(tmp_path, text_file, layer, accum):
    cfg = micro(layer)
    tc = TrainConfig(steps=8, seq_len=16, batch=2, grad_accum=accum, lr=1e-2, val_every=3,
                     val_windows=4, ckpt_every=100)
    straight = train(cfg, tc, str(tmp_path / "a"), data=text_file, backend=BE, quiet=True)
    half = train(cfg, tc, str(tmp_path / "b"), data=text_file, backend=BE, quiet=True, stop_at_step=4)
    assert half.stopped == "stop_at_step" and half.step == 4
    resumed = train(cfg, tc, str(tmp_path / "b"), data=text_file, backend=BE, quiet=True, resume=True)
    assert resumed.step == 8
    assert resumed.losses == straight.losses  # exact, not approximate
    assert resumed.val_losses == straight.val_losses
    for k in straight.params:
        assert np.array_equal(BE.to_numpy(resumed.params[k]), BE.to_numpy(straight.params[k])), k


def test_planted_nan_stops_with_checkpoint_intact(tmp_path, text_file):
    calls = {"n": 0}

    def poisoned(be, params, cfg, ids, targets):
        calls["n"] += 1
        loss, grads = lm.loss_and_grad(be, params, cfg, ids, targets)
        if calls["n"] == 5:
            grads = dict(grads)
            k = "backbone.layers.0.mixer.in_proj.weight"
            grads[k] = grads[k] * float("nan")
        return loss, grads

    out = str(tmp_path / "run")
    tc = TrainConfig(steps=10, seq_len=16, batch=2, val_windows=4, ckpt_every=2)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm at step 5") as ei:
        train(micro(), tc, out, data=text_file, backend=BE, quiet=True, loss_and_grad=poisoned)
    assert ei.value.step == 5 and ei.value.checkpoint.endswith("step-00000004")
    assert "intact" in str(ei.value) and "--resume" in str(ei.value)
    path, params, opt, state = ckpt.load(os.path.join(out, "checkpoints"))
    assert state["step"] == 4 and all(np.isfinite(v).all() for v in params.values())
    assert all(np.isfinite(v).all() for v in opt.values())
    # ... and the run continues from it.
    res = train(micro(), tc, out, data=text_file, backend=BE, quiet=True, resume=True)
    assert res.step == 10 and all(math.isfinite(l) for _, l in res.losses)


def test_nan_loss_is_caught_too(tmp_path, text_file):
    def nan_loss(be, params, cfg, ids, targets):
        _, grads = lm.loss_and_grad(be, params, cfg, ids, targets)
        return float("nan"), grads

    with pytest.raises(NonFiniteError, match="non-finite loss at step 1.*no checkpoint"):
        train(micro(), TrainConfig(steps=3, seq_len=16, batch=2), str(tmp_path / "r"),
              data=text_file, backend=BE, quiet=True, loss_and_grad=nan_loss)


def test_grad_accum_averages_micro_batches(tmp_path, text_file):
    seen = []

    def fake(be, params, cfg, ids, targets):
        seen.append(ids.shape)
        return float(len(seen)), {k: be.xp.zeros_like(v) for k, v in params.items()}

    res = train(micro(), TrainConfig(steps=2, seq_len=16, batch=3, grad_accum=3, val_windows=2),
                str(tmp_path / "r"), data=text_file, backend=BE, quiet=True, loss_and_grad=fake)
    assert seen == [(3, 16)] * 6
    assert res.losses == [(1, 2.0), (2, 5.0)]


# ---- errors -----------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(tmp_path, text_file):
    tc = TrainConfig(steps=2, seq_len=16, batch=2, val_windows=2)
    with pytest.raises(DataError, match="does not exist"):
        train(micro(), tc, str(tmp_path / "a"), data=str(tmp_path / "missing.txt"), backend=BE, quiet=True)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        train(micro(), tc, str(tmp_path / "a"), data=str(empty), backend=BE, quiet=True)
    short = tmp_path / "short.txt"
    short.write_bytes(b"too short")
    with pytest.raises(DataError, match="smaller --seq-len"):
        train(micro(), tc, str(tmp_path / "a"), data=str(short), backend=BE, quiet=True)
    for bad in (1, 0):
        with pytest.raises(TrainConfigError, match="seq_len.*>= 2"):
            train(micro(), TrainConfig(seq_len=bad), str(tmp_path / "a"), data=text_file, backend=BE)
    with pytest.raises(UnknownPresetError, match="mamba3-tiny"):
        get_preset("mamba4-huge")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(micro(), tc, str(tmp_path / "none"), data=text_file, backend=BE, quiet=True, resume=True)
    out = str(tmp_path / "run")
    train(micro(), tc, out, data=text_file, backend=BE, quiet=True)
    with pytest.raises(TrainingError, match="--resume"):
        train(micro(), tc, out, data=text_file, backend=BE, quiet=True)
    with pytest.raises(CheckpointMismatchError, match="another model.*d_model"):
        train(micro(d_model=64), tc, out, data=text_file, backend=BE, quiet=True, resume=True)
    with pytest.raises(CheckpointMismatchError, match="lr"):
        train(micro(), TrainConfig(steps=2, seq_len=16, batch=2, lr=1.0), out, data=text_file,
              backend=BE, quiet=True, resume=True)


def test_presets():
    from mamba_core.training import PRESETS

    for fam in ("mamba1", "mamba2", "mamba3"):
        assert 1e5 <= n_params(get_preset(f"{fam}-tiny")) <= 5e5
        assert 80e6 <= n_params(get_preset(f"{fam}-100m")) <= 120e6
    assert len(PRESETS) == 12


def test_cli_train_and_resume(tmp_path, text_file, capsys):
    from mamba_core.training.cli import main

    out = str(tmp_path / "run")
    args = ["train", "--preset", "mamba3-tiny", "--data", text_file, "--out", out, "--steps", "3",
            "--seq-len", "16", "--batch", "2", "--backend", "cpu_numpy", "--sample-tokens", "20"]
    assert main(args + ["--time-budget", "600"]) == 0
    assert "--- sample ---" in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "loss.png"))
    assert main(["train", "--out", out, "--resume", "--data", text_file, "--quiet",
                 "--sample-tokens", "0"]) == 0
    assert main(["train", "--preset", "mamba9-tiny", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["train", "--out", out, "--resume", "--preset", "mamba1-tiny", "--data", text_file]) == 2
    assert "another model" in capsys.readouterr().err
