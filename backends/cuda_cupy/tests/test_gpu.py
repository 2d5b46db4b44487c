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
       "mamba3_step", "rmsnorm", "add_rmsnorm", "causal_conv1d", "causal_conv1d_step"]


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
