"""StaticDecoder (static_decoder.py): lm.step over preallocated buffers.

The contract: after lm.forward's prefill, the decoder's logits and its (in-place) cache equal
lm.step's bit for bit (same kernels, same order of operations), for every mixer family with a
fused step, with and without the MLP sub-block, on both cpu_numpy backends; after warm-up a step
allocates nothing (tracemalloc); rows taken from the live cache continue exactly as lm.step on
the same rows.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.registry import get_backend

FAMILIES = {
    "mamba1": {"layer": "Mamba1"},
    "mamba2": {"layer": "Mamba2", "headdim": 16, "d_state": 16},
    "mamba2_dmlp": {"layer": "Mamba2", "headdim": 16, "d_state": 16, "d_ssm": 64, "ngroups": 2},
    "mamba3": {"layer": "Mamba3", "headdim": 16, "d_state": 16},
    "mamba3_mimo": {"layer": "Mamba3", "headdim": 16, "d_state": 16, "is_mimo": True,
                    "mimo_rank": 2, "is_outproj_norm": True},
}
VOCAB = 50  # padded to 56


def _model(family, backend="cpu_numpy", d_intermediate=0, seed=0):
    be = get_backend(backend)
    cfg = LMConfig(d_model=64, n_layer=2, vocab_size=VOCAB, ssm_cfg=dict(FAMILIES[family]),
                   d_intermediate=d_intermediate)
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(seed)))
    return be, cfg, params


def _assert_caches_equal(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys()
        for k in w:
            assert g[k].dtype == w[k].dtype, (i, k)
            np.testing.assert_array_equal(g[k], w[k], err_msg=f"layer {i} {k}")


def _decode_both(be, cfg, params, dec, ref_cache, rng, B, n):
    """n steps of the decoder and of lm.step from ref_cache on the same ids; compares each."""
    for _ in range(n):
        ids = rng.integers(0, VOCAB, size=B)
        want, ref_cache = lm.step(be, params, cfg, ids, ref_cache)
        got = dec.step(ids)
        np.testing.assert_array_equal(got, want)  # bit-identical: the same kernels, in order
        _assert_caches_equal(dec.cache(B), ref_cache)
    return ref_cache


@pytest.mark.parametrize("family,backend,d_int", [
    *[(f, "cpu_numpy", 0) for f in sorted(FAMILIES)],
    ("mamba1", "cpu_numpy", 96),
    ("mamba2", "cpu_numpy", 96),
    ("mamba3_mimo", "cpu_numpy", 96),
    ("mamba2", "cpu_numpy_invariant", 96),
    ("mamba3", "cpu_numpy_invariant", 0),
])
def test_decoder_equals_lm_step(family, backend, d_int):
    be, cfg, params = _model(family, backend, d_int)
    dec = be.static_decoder(params, cfg, "float32")
    rng = np.random.default_rng(1)
    B = 3
    prompt = rng.integers(0, VOCAB, size=(B, 5))
    _, cache = lm.forward(be, params, cfg, prompt)
    dec.set_cache(cache)
    _assert_caches_equal(dec.cache(B), cache)
    _decode_both(be, cfg, params, dec, cache, rng, B, n=6)


def test_decoder_float64():
    be, cfg, params = _model("mamba2")
    params = lm.to_backend(be, params, "float64")
    dec = be.static_decoder(params, cfg, "float64")
    rng = np.random.default_rng(2)
    _, cache = lm.forward(be, params, cfg, rng.integers(0, VOCAB, size=(2, 4)))
    dec.set_cache(cache)
    _decode_both(be, cfg, params, dec, cache, rng, 2, n=3)


@pytest.mark.parametrize("family", ["mamba1", "mamba2", "mamba3_mimo"])
def test_decoder_allocates_nothing_after_warmup(family):
    """2 warm-up steps, then 20 steps: the traced heap (Python, NumPy and numba's allocator)
    grows by nothing (net), and its peak only by the transient objects of one call (numba's
    unboxing of the kernel arguments, ~2.5 KB, freed on return; the same at any model size or
    step count), where lm.step allocates a whole new cache per token (printed for comparison)."""
    be, cfg, params = _model(family, d_intermediate=96)
    dec = be.static_decoder(params, cfg, "float32")
    rng = np.random.default_rng(3)
    B = 2
    _, cache = lm.forward(be, params, cfg, rng.integers(0, VOCAB, size=(B, 4)))
    dec.set_cache(cache)
    ids = [rng.integers(0, VOCAB, size=B) for _ in range(22)]
    for t in ids[:2]:
        dec.step(t)
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    for t in ids[2:]:
        dec.step(t)
    now, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    before_ref = tracemalloc.get_traced_memory()[0]
    lm.step(be, params, cfg, ids[0], cache)
    ref_peak = tracemalloc.get_traced_memory()[1] - before_ref
    tracemalloc.stop()
    net, peak = now - before, peak - before
    print(f"\n{family}: 20 decoder steps: net {net} B, peak above start {peak} B; "
          f"one lm.step: peak {ref_peak} B")
    assert net < 1024, net
    assert peak < 4096, peak


def test_set_cache_with_fewer_rows_continues_as_lm_step():
    """As generation does when rows finish: take rows of the live cache, set_cache the smaller
    batch, continue; equals lm.step on the same rows. reset() gives a fresh zero cache."""
    be, cfg, params = _model("mamba2", d_intermediate=96)
    dec = be.static_decoder(params, cfg, "float32")
    rng = np.random.default_rng(4)
    _, cache = lm.forward(be, params, cfg, rng.integers(0, VOCAB, size=(4, 5)))
    dec.set_cache(cache)
    cache = _decode_both(be, cfg, params, dec, cache, rng, 4, n=3)
    keep = np.array([0, 2, 3])
    taken = [{k: np.take(v, keep, axis=0) for k, v in layer.items()} for layer in dec.cache(4)]
    dec.set_cache(taken)
    ref = [{k: v[keep] for k, v in layer.items()} for layer in cache]
    _decode_both(be, cfg, params, dec, ref, rng, 3, n=4)
    dec.reset(3)
    _decode_both(be, cfg, params, dec, lm.init_cache(be, cfg, 3), rng, 3, n=2)


def test_decoder_errors_teach():
    be, cfg, params = _model("mamba1")
    dec = be.static_decoder(params, cfg, "float32")
    with pytest.raises(Exception, match=r"integer array of shape \(B,\)"):
        dec.step(np.zeros((1, 2), np.int64))
    with pytest.raises(IndexError, match=r"in \[0, 56\)"):
        dec.step(np.array([56]))
    with pytest.raises(Exception, match="layers"):
        dec.set_cache([])


def test_static_decoder_off_without_fused_steps(monkeypatch):
    be, cfg, params = _model("mamba1")
    monkeypatch.setenv("MAMBA_NO_FUSED_STEP", "1")
    assert be.static_decoder(params, cfg, "float32") is None
