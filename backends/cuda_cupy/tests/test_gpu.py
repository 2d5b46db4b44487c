"""GPU tests of the cuda_cupy backend: every native op against the float64 reference, and the
CUDA-graph decoder against eager steps. Skipped, with the reason printed, without CuPy or a GPU."""

import numpy as np
import pytest

from mamba_core.ops import REGISTRY


def _backend_or_skip():
    from mamba_backend_cuda_cupy.backend import CudaCupyBackend

    be = CudaCupyBackend()
    ok = be.available()
    if not ok:
        print(f"SKIP: cuda_cupy not available: {ok.reason}")
        pytest.skip(f"cuda_cupy not available: {ok.reason}")
    return be


OPS = ["selective_scan", "selective_scan_step", "ssd_scan", "ssd_step", "mamba3_scan",
       "mamba3_step", "rmsnorm", "add_rmsnorm", "causal_conv1d", "causal_conv1d_step", "linear"]


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-4), ("float64", 1e-9)])
@pytest.mark.parametrize("op", OPS)
def test_native_op_matches_reference(op, dtype, tol):
    be = _backend_or_skip()
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import gpu_check

    args, kw = gpu_check._small_inputs(np.random.default_rng(3))[op]
    want = gpu_check._flat(REGISTRY[op].reference(*args, **kw))
    cargs = [be.asarray(a, dtype) for a in args]
    ckw = {k: be.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    got = gpu_check._flat(getattr(be.ops, op)(*cargs, **ckw))
    for k in want:
        assert gpu_check._rel(be.to_numpy(got[k]), want[k]) < tol, (op, k)


VJPS = ["selective_scan", "ssd_scan", "mamba3_scan", "rmsnorm", "add_rmsnorm", "causal_conv1d"]


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-4), ("float64", 1e-9)])
@pytest.mark.parametrize("op", VJPS)
def test_native_vjp_matches_reference(op, dtype, tol):
    be = _backend_or_skip()
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import gpu_check

    rng = np.random.default_rng(4)
    args, kw = gpu_check._small_inputs(rng)[op]
    fwd = REGISTRY[op].reference(*args, **kw)
    cot = (tuple(rng.standard_normal(np.shape(o)) for o in fwd) if isinstance(fwd, tuple)
           else rng.standard_normal(np.shape(fwd)))
    want = REGISTRY[op + "_vjp"].reference(cot, *args, **kw)
    cargs = [be.asarray(a, dtype) for a in args]
    ckw = {k: be.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    ccot = (tuple(be.asarray(c, dtype) for c in cot) if isinstance(cot, tuple)
            else be.asarray(cot, dtype))
    got = getattr(be.ops, op + "_vjp")(ccot, *cargs, **ckw)
    assert set(got) == set(want)
    for k in want:
        assert gpu_check._rel(be.to_numpy(got[k]), want[k]) < tol, (op, k)


def test_graph_decoder_matches_eager():
    be = _backend_or_skip()
    import cupy as cp

    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig

    from mamba_backend_cuda_cupy.graphs import GraphDecoder

    cfg = LMConfig(d_model=64, n_layer=2, vocab_size=100,
                   ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16})
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)))
    dec = GraphDecoder(be, params, cfg, batch=2)
    cache = lm.init_cache(be, cfg, 2)
    for tok in ([1, 2], [3, 4], [5, 6]):
        ids = cp.asarray(tok, dtype=cp.int64)
        want, cache = lm.step(be, params, cfg, ids, cache)
        got = dec.step(ids)
        dec.synchronize()
        np.testing.assert_allclose(cp.asnumpy(got), cp.asnumpy(want), rtol=1e-4, atol=1e-5)


# (x shape, K_out, bias, weight layout): vector and scalar loads (K_in % 4), 1..16 rows (one
# launch), 17 and 40 rows (cuBLAS outside a capture; several launches when forced), a transposed
# (copied) and a row-strided (in place) weight, a float32 x with a float64 weight
LINEAR_CASES = [((1, 64), 96, True, "c"), ((3, 13), 7, False, "c"), ((2, 8, 32), 33, True, "c"),
                ((16, 100), 50, True, "T"), ((17, 64), 40, True, "c"), ((40, 36), 70, False, "rows"),
                ((5,), 9, True, "c")]


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-4), ("float64", 1e-9)])
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("xs,N,has_b,layout", LINEAR_CASES)
def test_linear_kernel_against_numpy(xs, N, has_b, layout, force, dtype, tol):
    be = _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import linear as lin

    rng = np.random.default_rng(5)
    K = xs[-1]
    x = rng.standard_normal(xs)
    w_full = rng.standard_normal((N, 2 * K) if layout == "rows" else (K, N) if layout == "T" else (N, K))
    w = w_full[:, :K] if layout == "rows" else w_full.T if layout == "T" else w_full
    b = rng.standard_normal(N) if has_b else None
    want = REGISTRY["linear"].reference(x, w, b)
    cw = cp.asarray(w_full, dtype)
    cw = cw[:, :K] if layout == "rows" else cw.T if layout == "T" else cw
    args = (cp.asarray(x, dtype), cw, None if b is None else cp.asarray(b, dtype))
    if force:
        with lin.gemv_only():
            got = lin.linear(*args)
    else:
        got = be.ops.linear(*args)
    assert got.shape == want.shape and got.dtype == np.dtype(dtype)
    err = np.max(np.abs(cp.asnumpy(got) - want)) / max(np.max(np.abs(want)), 1e-300)
    assert err < tol, (xs, N, layout, err)


def test_linear_is_captured_without_cublas():
    # 40 rows > GEMV_ROWS: outside a capture this is cuBLAS; inside, the kernel must take it
    _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import linear as lin

    rng = np.random.default_rng(6)
    x, w, b = (cp.asarray(rng.standard_normal(s), cp.float32) for s in ((40, 64), (48, 64), (48,)))
    want = REGISTRY["linear"].reference(cp.asnumpy(x), cp.asnumpy(w), cp.asnumpy(b))
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        lin.linear(x, w, b)  # compile outside the capture
        with lin.gemv_only():
            lin.linear(x, w, b)
        s.synchronize()
        s.begin_capture()
        try:
            assert lin.capturing()
            y = lin.linear(x, w, b)
        finally:
            g = s.end_capture()
        g.launch(s)
        s.synchronize()
    assert not lin.capturing()
    err = np.max(np.abs(cp.asnumpy(y) - want)) / np.max(np.abs(want))
    assert err < 2e-4


def test_ssd_step_dt_limit_is_captured():
    # the SSD step's dt (bias, softplus, dt_limit) must not read back to the host in a capture
    be = _backend_or_skip()
    import cupy as cp

    rng = np.random.default_rng(8)
    B, H, P, G, N = 2, 4, 8, 1, 16
    args = [rng.standard_normal(s) for s in ((B, H, P), (B, H), (H,), (B, G, N), (B, G, N), (B, H, P, N))]
    args[2] = -np.exp(args[2])
    kw = dict(D=rng.standard_normal(H), dt_bias=rng.standard_normal(H), dt_softplus=True,
              dt_limit=(0.1, 1.5))
    want = REGISTRY["ssd_step"].reference(*args, **kw)
    cargs = [cp.asarray(a, cp.float64) for a in args]
    ckw = {k: cp.asarray(v, cp.float64) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        be.ops.ssd_step(*cargs, **ckw)
        s.synchronize()
        s.begin_capture()
        try:
            got = be.ops.ssd_step(*cargs, **ckw)
        finally:
            g = s.end_capture()
        g.launch(s)
        s.synchronize()
    for a, b in zip(got, want):
        assert np.max(np.abs(cp.asnumpy(a) - b)) <= 1e-9 * max(np.max(np.abs(b)), 1.0)
