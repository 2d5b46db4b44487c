"""Programmatic dependent launch (mamba_backend_cuda_cupy/_launch.py).

Host tests (no GPU): the ctypes mirrors of cuda.h's launch structs, the argument marshalling and
its errors, the switch, and the contract's bookkeeping (only kernels that wait are launched so).
GPU tests (skipped, with the reason printed, without CuPy, a GPU, or on a GPU below sm_90): every
kernel launched with PDL gives bit-identical results to CuPy's plain launch, alone, in long
chains of dependent launches (where a missing wait would read stale data), and captured in the
CUDA-graph decoder.
"""

import ctypes
import re
from pathlib import Path

import numpy as np
import pytest

from mamba_backend_cuda_cupy import _launch
from mamba_backend_cuda_cupy._compile import source

from test_mixer_steps_gpu import _backend_or_skip  # the skip with its printed reason

PKG = Path(_launch.__file__).resolve().parent


# ---- host -------------------------------------------------------------------------------------
def test_structs_match_cuda_h():
    # CUlaunchConfig: 7 uints, a stream, an attribute pointer, a count (x86_64 / aarch64 ABI)
    assert ctypes.sizeof(_launch._Config) == 56
    assert (_launch._Config.hStream.offset, _launch._Config.attrs.offset,
            _launch._Config.numAttrs.offset) == (32, 40, 48)
    # CUlaunchAttribute: the id padded to 8 bytes, then the 64-byte value union
    assert ctypes.sizeof(_launch._Attr) == 72 and _launch._Attr.value.offset == 8
    assert _launch.ATTR_PROGRAMMATIC_STREAM_SERIALIZATION == 6


@pytest.mark.parametrize("value", [np.int32(-7), np.int64(1 << 40), np.uint64((1 << 64) - 1),
                                   np.float32(1.1), np.float64(-2.2)])
def test_scalar_arguments_keep_their_bytes(value):
    c = _launch.c_arg(value)
    assert ctypes.sizeof(c) == value.itemsize
    assert bytes(c) == value.tobytes()


@pytest.mark.parametrize("bad", [3, 1.5, np.float16(1), np.int8(1), np.zeros(3), "x"])
def test_other_arguments_are_refused_by_name(bad):
    with pytest.raises(TypeError, match="kernel argument"):
        _launch.c_arg(bad)


def test_dims():
    assert _launch.dims(5) == (5, 1, 1)
    assert _launch.dims((2, 3)) == (2, 3, 1)
    assert _launch.dims((2, 3, 4)) == (2, 3, 4)
    for bad in ((), (1, 2, 3, 4), (0,), (2, -1)):
        with pytest.raises(ValueError, match="launch dimensions"):
            _launch.dims(bad)


@pytest.mark.parametrize("raw,mode", [(None, "capture"), ("capture", "capture"), (" Capture ", "capture"),
                                      ("1", "always"), ("on", "always"), ("yes", "always"),
                                      ("0", "off"), ("off", "off"), ("False", "off"), ("no", "off")])
def test_switch(raw, mode, monkeypatch):
    if raw is None:
        monkeypatch.delenv(_launch.ENV, raising=False)
    else:
        monkeypatch.setenv(_launch.ENV, raw)
    assert _launch.mode() == mode
    assert _launch.enabled() is (mode != "off")


@pytest.mark.parametrize("raw,capturing,pdl", [("capture", False, False), ("capture", True, True),
                                               ("1", False, True), ("1", True, True),
                                               ("0", False, False), ("0", True, False)])
def test_capture_mode_launches_with_pdl_only_while_a_graph_is_captured(raw, capturing, pdl, monkeypatch):
    """The default: eager calls take CuPy's launch (less host time a call), captures get PDL."""
    monkeypatch.setenv(_launch.ENV, raw)
    monkeypatch.setattr(_launch, "_capturing", lambda: capturing)
    monkeypatch.setattr(_launch, "supported", lambda: True)
    ex, plain = [], []
    monkeypatch.setattr(_launch, "_launch_ex", lambda *a: ex.append(a) or 0)
    _launch.launch(lambda *a: plain.append(a), (2,), (32,), (np.int32(1),))
    assert _launch.active() is pdl
    assert (len(ex), len(plain)) == ((1, 0) if pdl else (0, 1))


def test_an_unsupported_device_never_launches_with_pdl(monkeypatch):
    monkeypatch.setenv(_launch.ENV, "1")
    monkeypatch.setattr(_launch, "supported", lambda: False)
    monkeypatch.setattr(_launch, "_launch_ex", lambda *a: pytest.fail("PDL launch on an unable device"))
    plain = []
    _launch.launch(lambda *a: plain.append(a), (2,), (32,), ())
    assert len(plain) == 1 and _launch.active() is False


def test_only_kernels_that_wait_are_launched_with_pdl():
    """The contract (_launch.py): a kernel launched through ``launch`` waits (pdl_wait) before it
    reads; so every module calling it is one of the reviewed ones, and their kernels wait."""
    callers = sorted(p.name for p in PKG.rglob("*.py")
                     if p.name != "_launch.py" and re.search(r"\blaunch\(fn\b", p.read_text()))
    assert callers == ["linear.py", "mixer_steps.py", "norm.py"]
    for cu, kernel in (("linear.cu", "linear_gemv"), ("mixer_step.cu", "mamba2_step"),
                       ("norm.cu", "rmsnorm_fwd_v2")):
        text = source(cu)
        body = text[text.index(f"{kernel}("):]
        body = body[:body.index("\n}\n")]
        wait = body.index("pdl_wait();")
        assert body.index("pdl_trigger();") > wait, kernel
        # before the wait: declarations and prefetches only, no shared memory barrier
        assert "__syncthreads" not in body[:wait], kernel


def test_a_refused_launch_runs_plainly_and_turns_pdl_off(monkeypatch):
    calls = []
    monkeypatch.setenv(_launch.ENV, "1")
    monkeypatch.setattr(_launch, "_device_id", lambda: 7)
    monkeypatch.setitem(_launch._DEVICES, 7, True)
    monkeypatch.setattr(_launch, "_launch_ex", lambda *a: 1)  # CUDA_ERROR_INVALID_VALUE
    fn = lambda grid, block, args: calls.append((grid, block, args))
    with pytest.warns(RuntimeWarning, match="launching without it"):
        _launch.launch(fn, (2,), (32,), (np.int32(1),))
    assert calls == [((2,), (32,), (np.int32(1),))]
    assert _launch.active() is False  # this device, from now on
    _launch.launch(fn, (3,), (32,), ())
    assert len(calls) == 2


# ---- GPU --------------------------------------------------------------------------------------
def _pdl_backend_or_skip():
    be = _backend_or_skip()
    if not _launch.supported():
        import cupy

        why = (f"the device (compute capability {cupy.cuda.Device().compute_capability}) or its "
               "driver takes no programmatic dependent launch (needs sm_90+ and cuLaunchKernelEx)")
        print(f"SKIP: {why}")
        pytest.skip(why)
    return be


def _both(monkeypatch, run):
    """run() with PDL off, then on -> (off, on) as NumPy arrays (a tuple each)."""
    import cupy as cp

    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv(_launch.ENV, flag)
        assert _launch.active() is (flag == "1")
        res = run()
        cp.cuda.get_current_stream().synchronize()
        out.append(tuple(cp.asnumpy(r) for r in res))
    return out


@pytest.mark.parametrize("split", ["0", "4"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 3, 16, 21])
def test_gemv_with_pdl_is_bit_identical(rows, dtype, split, monkeypatch):
    _pdl_backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import linear

    monkeypatch.setenv(linear.SPLIT_ENV, split)

    rng = np.random.default_rng(rows)
    x = cp.asarray(rng.standard_normal((rows, 96)), dtype)
    w = cp.asarray(rng.standard_normal((130, 96)), dtype)
    b = cp.asarray(rng.standard_normal(130), dtype)
    part = cp.asarray(rng.random((rows, 4)), dtype)
    with linear.gemv_only():
        off, on = _both(monkeypatch, lambda: (linear.linear(x, w, b),
                                              linear.linear_group_scaled(x, w, None, part, 2, 32, 1e-5)))
    for a, c in zip(off, on):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_norm_with_pdl_is_bit_identical(dtype, monkeypatch):
    be = _pdl_backend_or_skip()
    import cupy as cp

    rng = np.random.default_rng(0)
    x, r, z = (cp.asarray(rng.standard_normal((5, 256)), dtype) for _ in range(3))
    w = cp.asarray(rng.standard_normal(256), dtype)
    off, on = _both(monkeypatch, lambda: (*be.ops.add_rmsnorm(x, r, w, 1e-5),
                                          be.ops.rmsnorm(x, w, 1e-5, z=z, group_size=64)))
    for a, c in zip(off, on):
        assert np.array_equal(a, c)


def test_long_dependent_chain_with_pdl(monkeypatch):
    """200 launches, each reading what the one before wrote (GEMV -> norm -> GEMV ...): a kernel
    that read before its wait would see the previous round's values and drift."""
    be = _pdl_backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import linear

    rng = np.random.default_rng(1)
    ws = [cp.asarray(rng.standard_normal((512, 512)) / 16, cp.float32) for _ in range(4)]
    nw = cp.asarray(rng.random(512) + 0.5, cp.float32)
    x0 = cp.asarray(rng.standard_normal((2, 512)), cp.float32)

    def chain():
        h = x0
        for i in range(100):
            h = linear.linear(h, ws[i % 4])
            h = be.ops.rmsnorm(h, nw, 1e-5)
        return (h,)

    with linear.gemv_only():
        off, on = _both(monkeypatch, chain)
    assert np.array_equal(off[0], on[0])


def test_graph_decoder_with_pdl_is_bit_identical(monkeypatch):
    be = _pdl_backend_or_skip()
    import cupy as cp

    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig

    from mamba_backend_cuda_cupy import graphs

    cfg = LMConfig(d_model=64, n_layer=4, vocab_size=100,
                   ssm_cfg={"layer": "Mamba2", "d_state": 64, "headdim": 16})
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)))
    results, pdl_launches = {}, {}
    launch_ex = _launch._launch_ex
    for flag in ("0", "1", "capture"):
        monkeypatch.setenv(_launch.ENV, flag)  # read while the decoder captures its graph
        seen = []
        monkeypatch.setattr(_launch, "_launch_ex",
                            lambda *a, seen=seen: seen.append(_launch._capturing()) or launch_ex(*a))
        dec = graphs.GraphDecoder(be, params, cfg, batch=2)
        monkeypatch.setattr(_launch, "_launch_ex", launch_ex)
        pdl_launches[flag] = (seen.count(False), seen.count(True))  # (eager, captured)
        rng = np.random.default_rng(2)
        logits = []
        for _ in range(5):
            got = dec.step(cp.asarray(rng.integers(0, 100, 2), dtype=cp.int64))
            dec.synchronize()
            logits.append(cp.asnumpy(got))
        monkeypatch.setenv(_launch.ENV, "0")  # replays do not read it: the graph keeps its edges
        got = dec.step(cp.asarray([3, 4], dtype=cp.int64))
        dec.synchronize()
        logits.append(cp.asnumpy(got))
        results[flag] = (logits, [cp.asnumpy(v) for v in graphs._leaves(dec.cache)])
    # "1": the warm-up step and the capture launch with PDL; "capture": the capture alone
    assert pdl_launches["0"] == (0, 0)
    assert pdl_launches["1"][0] > 0 and pdl_launches["1"][1] > 0
    assert pdl_launches["capture"] == (0, pdl_launches["1"][1])
    for flag in ("1", "capture"):
        for a, c in zip(results["0"][0] + results["0"][1], results[flag][0] + results[flag][1]):
            assert np.array_equal(a, c), flag
