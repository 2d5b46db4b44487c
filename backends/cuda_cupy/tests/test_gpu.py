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


@pytest.mark.parametrize("split", ["0", "4"])  # MAMBA_CUPY_GEMV_SPLIT: one warp a row, 4 warps
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-4), ("float64", 1e-9)])
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("xs,N,has_b,layout", LINEAR_CASES)
def test_linear_kernel_against_numpy(xs, N, has_b, layout, force, dtype, tol, split, monkeypatch):
    be = _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import linear as lin

    monkeypatch.setenv(lin.SPLIT_ENV, split)

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


# ---- the chunked row scan (scan.cu row_scan_chunked) against the step kernel -----------------
# Both kernels (MAMBA_CUPY_ROW_SCAN=chunked | step) on identical inputs; the budget "tiny" forces
# short chunks and rings (many chunk and flush boundaries, L not a multiple of either) and, for
# the large-N cases, fewer warps per block. Tolerances: relative norm error per dtype.
ROW_SCAN_TOL = {"float32": 1e-6, "float64": 1e-12}
# (B, L, R, H, hpk, P, N, opts): opts letters -- a: Am per entry, s: Am per row (broadcast over
# n), c: coef, w: W (row reduction), i: init, r: reverse, q: no Q (no readout)
ROW_SCAN_CASES = [
    (2, 37, 1, 4, 2, 5, 16, "scwi"), (2, 37, 1, 4, 2, 5, 16, "scwir"),
    (1, 70, 4, 2, 1, 7, 5, "acwi"), (1, 70, 4, 2, 1, 7, 5, "awr"),
    (2, 33, 1, 2, 1, 64, 128, "scw"), (1, 45, 4, 2, 2, 9, 64, "cwir"),
    (1, 19, 2, 3, 3, 3, 200, "awi"), (1, 19, 1, 2, 1, 65, 200, "scr"),
    (1, 50, 1, 2, 1, 40, 16, "q"), (1, 1, 4, 2, 1, 6, 128, "cwi"), (1, 29, 1, 1, 1, 33, 1, "wi"),
]


def _row_scan_inputs(rng, B, L, R, H, hpk, P, N, opts):
    n = lambda *s: rng.standard_normal(s)
    kw = dict(dA=-np.abs(n(B, L, H, P)) * 0.3, V=n(B, L, R, H, P), K=n(B, L, R, H // hpk, N),
              hpk=hpk, reverse="r" in opts)
    if "q" not in opts:
        kw["Q"] = n(B, L, R, H // hpk, N)
    if "a" in opts:
        kw["Am"] = np.exp(n(H, P, N) * 0.3)
    if "s" in opts:  # one value per row, broadcast over n (the SSD layout: Am stride 0 on n)
        kw["Am"] = np.broadcast_to(np.exp(n(H, P, 1) * 0.3), (H, P, N))
    if "c" in opts:
        kw["coef"] = np.exp(n(B, L, H, P) * 0.3)
    if "w" in opts:
        kw["W"] = n(B, L, R, H, P)
    if "i" in opts:
        kw["init"] = n(B, H, P, N)
    return kw


def _tiny_budget(fits):
    """The smallest of a few budgets (bytes) that `fits` (budget -> bool) admits: short chunks
    and rings, so that L crosses many chunk and flush boundaries, without falling back."""
    for kib in (4, 6, 8, 12, 16, 24, 32, 48):
        if fits(kib * 1024):
            return kib * 1024
    return 48 * 1024


def _to_device(cp, kw, dtype):
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            if v.strides and 0 in v.strides:  # keep a broadcast view broadcast on the device
                # (every stride-0 axis stays stride 0: the tiled kernel's test reads them)
                one = tuple(slice(0, 1) if st == 0 else slice(None) for st in v.strides)
                base = cp.asarray(np.ascontiguousarray(v[one]), dtype)
                out[k] = cp.broadcast_to(base, v.shape)
            else:
                out[k] = cp.asarray(v, dtype)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("budget", ["default", "tiny"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ROW_SCAN_CASES)
def test_chunked_row_scan_matches_step_kernel(case, dtype, budget, monkeypatch):
    _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import _scan

    kw = _row_scan_inputs(np.random.default_rng(11), *case)
    B, L, R, H, hpk, P, N, _ = case
    item = np.dtype(dtype).itemsize
    plan = lambda b: _scan.chunk_config(P, N, R, L, item, "Q" in kw, "coef" in kw, "W" in kw, b)
    if budget == "tiny":
        monkeypatch.setattr(_scan, "CHUNK_SMEM_BUDGET", _tiny_budget(lambda b: plan(b) is not None))
    assert plan(_scan.CHUNK_SMEM_BUDGET) is not None  # the chunked kernel does run
    ckw = _to_device(cp, kw, dtype)
    out = {}
    for kind in ("step", "chunked"):
        monkeypatch.setenv(_scan.ROW_SCAN_ENV, kind)
        out[kind] = [None if a is None else cp.asnumpy(a) for a in _scan.row_scan(cp, **ckw)]
    want = _scan.row_scan(np, **kw)  # the NumPy emulation in float64: both must be near it too
    for name, a, b, w in zip(("Y", "Red", "fin"), out["chunked"], out["step"], want):
        assert (a is None) == (b is None) == (w is None), name
        if a is None:
            continue
        assert np.all(np.isfinite(a)), name
        assert gpu_check_rel(a, b) <= ROW_SCAN_TOL[dtype], (name, gpu_check_rel(a, b))
        assert gpu_check_rel(a, w) <= 1e3 * ROW_SCAN_TOL[dtype], name


def gpu_check_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    d = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (d if d > 0 else 1.0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_chunked_row_scan_is_deterministic(dtype, monkeypatch):
    _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import _scan

    monkeypatch.setenv(_scan.ROW_SCAN_ENV, "chunked")
    ckw = _to_device(cp, _row_scan_inputs(np.random.default_rng(12), 2, 70, 2, 4, 2, 64, 128,
                                          "scwi"), dtype)
    runs = [[cp.asnumpy(a) for a in _scan.row_scan(cp, **ckw)] for _ in range(2)]
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


# the tiled kernel (scan_tiled.cu): calls whose decay and coefficient are per head (SSD, Mamba-3)
TILED_CASES = [  # (B, L, R, H, hpk, P, N, opts): opts as ROW_SCAN_CASES ("s": Am per head)
    (2, 70, 1, 4, 2, 64, 128, "scwi"), (2, 70, 1, 4, 2, 64, 128, "swir"),
    (1, 37, 1, 2, 1, 5, 16, "scw"), (2, 33, 4, 2, 2, 9, 64, "cwi"), (1, 45, 2, 3, 3, 3, 200, "wir"),
    (1, 29, 1, 1, 1, 33, 1, "wi"), (1, 50, 1, 2, 1, 40, 16, "q"), (1, 1, 4, 2, 1, 6, 128, "cwi"),
    (1, 64, 1, 2, 1, 65, 128, "scw"), (1, 19, 3, 2, 1, 7, 5, "scwir"), (2, 40, 1, 2, 1, 128, 32, "sci"),
]
TILED_PLANS = ["", "npt=4,rp=4", "npt=8,rp=2", "npt=2,rp=1,warps=2", "npt=1,rp=8"]


def _tiled_inputs(rng, B, L, R, H, hpk, P, N, opts):
    """_row_scan_inputs with dA and coef the same on every row of a head (stride 0 along p) and
    Am one value per head: the calls row_scan_tiled takes."""
    kw = _row_scan_inputs(rng, B, L, R, H, hpk, P, N, opts.replace("s", ""))
    kw["dA"] = np.broadcast_to(kw["dA"][..., :1], (B, L, H, P))
    if "coef" in kw:
        kw["coef"] = np.broadcast_to(kw["coef"][..., :1], (B, L, H, P))
    if "s" in opts:
        kw["Am"] = np.broadcast_to(np.exp(rng.standard_normal((H, 1, 1)) * 0.3), (H, P, N))
    return kw


@pytest.mark.parametrize("plan", TILED_PLANS)
@pytest.mark.parametrize("budget", ["default", "tiny"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", TILED_CASES)
def test_tiled_row_scan_matches_chunked_kernel(case, dtype, budget, plan, monkeypatch):
    _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import _scan

    kw = _tiled_inputs(np.random.default_rng(15), *case)
    B, L, R, H, hpk, P, N, _ = case
    item = np.dtype(dtype).itemsize
    monkeypatch.setenv(_scan.TILED_ENV, plan)
    tplan = lambda b: _scan.tiled_config(P, N, R, L, item, "Q" in kw, "coef" in kw, "W" in kw, b)
    if budget == "tiny":
        monkeypatch.setattr(_scan, "CHUNK_SMEM_BUDGET", _tiny_budget(lambda b: tplan(b) is not None))
    assert tplan(_scan.CHUNK_SMEM_BUDGET) is not None  # the tiled kernel does run
    ckw = _to_device(cp, kw, dtype)
    assert _scan.tiled_applies(ckw["dA"], ckw.get("Am"), ckw.get("coef"))  # on these arrays
    out = {}
    for kind in ("chunked", "tiled"):
        monkeypatch.setenv(_scan.ROW_SCAN_ENV, kind)
        out[kind] = [None if a is None else cp.asnumpy(a) for a in _scan.row_scan(cp, **ckw)]
    want = _scan.row_scan(np, **kw)  # the NumPy emulation in float64
    for name, a, b, w in zip(("Y", "Red", "fin"), out["tiled"], out["chunked"], want):
        assert (a is None) == (b is None) == (w is None), name
        if a is None:
            continue
        assert np.all(np.isfinite(a)), name
        assert gpu_check_rel(a, b) <= 10 * ROW_SCAN_TOL[dtype], (name, gpu_check_rel(a, b))
        assert gpu_check_rel(a, w) <= 1e3 * ROW_SCAN_TOL[dtype], name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiled_row_scan_is_deterministic(dtype, monkeypatch):
    _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import _scan

    monkeypatch.setenv(_scan.ROW_SCAN_ENV, "tiled")
    ckw = _to_device(cp, _tiled_inputs(np.random.default_rng(16), 2, 70, 2, 4, 2, 64, 128,
                                       "scwi"), dtype)
    runs = [[cp.asnumpy(a) for a in _scan.row_scan(cp, **ckw)] for _ in range(2)]
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", [c for c in TILED_CASES if "r" not in c[-1]])
def test_decay_grad_from_the_tiled_scans_checkpoints(case, dtype, monkeypatch):
    """row_scan(checkpoints=True) under the tiled kernel writes decay_grad's checkpoints; the
    decay gradient from them (its forward jobs skipped) matches the one that makes its own."""
    _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import _scan

    rng = np.random.default_rng(19)
    kw = _tiled_inputs(rng, *case)
    B, L, R, H, hpk, P, N, _ = case
    fwd = {k: v for k, v in kw.items() if k in ("dA", "V", "K", "hpk", "Am", "coef", "init")}
    extra = dict(Vr=rng.standard_normal((B, L, R, H, P)),
                 Kr=rng.standard_normal((B, L, R, H // hpk, N)), dfin=rng.standard_normal((B, H, P, N)))
    cfwd, cextra = _to_device(cp, fwd, dtype), _to_device(cp, extra, dtype)
    assert _scan.tiled_applies(cfwd["dA"], cfwd.get("Am"), cfwd.get("coef"))
    monkeypatch.setenv(_scan.ROW_SCAN_ENV, "chunked")
    assert _scan.row_scan(cp, **cfwd, checkpoints=True)[3] is None  # only the tiled kernel writes them
    own = cp.asnumpy(_scan.decay_grad(cp, **cfwd, **cextra)[0])
    monkeypatch.setenv(_scan.ROW_SCAN_ENV, "tiled")
    ck = _scan.row_scan(cp, **cfwd, checkpoints=True)[3]
    want_ck = _scan.row_scan(np, **fwd, checkpoints=True)[3]
    assert ck is not None and ck.shape == want_ck.shape
    assert gpu_check_rel(cp.asnumpy(ck), want_ck) <= 1e3 * ROW_SCAN_TOL[dtype]
    monkeypatch.setenv(_scan.ROW_SCAN_ENV, "chunked")  # the decay kernel that takes them
    got = cp.asnumpy(_scan.decay_grad(cp, **cfwd, **cextra, ck=ck)[0])
    want = _scan.decay_grad(np, **fwd, **extra)[0]
    assert np.all(np.isfinite(got))
    assert gpu_check_rel(got, own) <= 10 * ROW_SCAN_TOL[dtype]
    assert gpu_check_rel(got, want) <= 1e3 * ROW_SCAN_TOL[dtype]


# the decay gradient (scan_bwd.cu): the chunked kernel against the step kernel
DECAY_CASES = [(2, 37, 1, 4, 2, 5, 16, "scwi"), (1, 70, 4, 2, 1, 7, 5, "acwi"),
               (2, 100, 1, 2, 1, 64, 128, "sc"), (1, 45, 4, 2, 2, 9, 64, "ai"),
               (1, 19, 2, 3, 3, 3, 200, "a"), (1, 1, 1, 2, 1, 6, 128, "ci")]


@pytest.mark.parametrize("budget", ["default", "tiny"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", DECAY_CASES)
def test_chunked_decay_grad_matches_step_kernel(case, dtype, budget, monkeypatch):
    _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import _scan

    rng = np.random.default_rng(13)
    kw = _row_scan_inputs(rng, *case)
    B, L, R, H, hpk, P, N, _ = case
    item = np.dtype(dtype).itemsize
    plan = lambda b: _scan.decay_config(P, N, R, item, "coef" in kw, b)
    if budget == "tiny":
        monkeypatch.setattr(_scan, "CHUNK_SMEM_BUDGET", _tiny_budget(lambda b: plan(b) is not None))
    assert plan(_scan.CHUNK_SMEM_BUDGET) is not None
    kw = {k: v for k, v in kw.items() if k in ("dA", "V", "K", "hpk", "Am", "coef", "init")}
    kw.update(Vr=rng.standard_normal((B, L, R, H, P)), Kr=rng.standard_normal((B, L, R, H // hpk, N)),
              dfin=rng.standard_normal((B, H, P, N)), want_dAm=True)
    ckw = _to_device(cp, kw, dtype)
    out = {}
    for kind in ("step", "chunked"):
        monkeypatch.setenv(_scan.ROW_SCAN_ENV, kind)
        out[kind] = [cp.asnumpy(a) for a in _scan.decay_grad(cp, **ckw)]
    want = _scan.decay_grad(np, **kw)
    for name, a, b, w in zip(("qa", "dAm"), out["chunked"], out["step"], want):
        assert np.all(np.isfinite(a)), name
        assert gpu_check_rel(a, b) <= ROW_SCAN_TOL[dtype], (name, gpu_check_rel(a, b))
        assert gpu_check_rel(a, w) <= 1e3 * ROW_SCAN_TOL[dtype], name


# the scans end to end under each kernel, against the float64 reference; "tiny" crosses chunks
SCAN_OPS = ["ssd_scan", "mamba3_scan", "selective_scan"]


@pytest.mark.parametrize("budget", ["default", "tiny"])
@pytest.mark.parametrize("kind", ["tiled", "chunked", "step"])
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-4), ("float64", 1e-9)])
@pytest.mark.parametrize("op", SCAN_OPS)
def test_scan_ops_under_each_row_scan_kernel(op, dtype, tol, kind, budget, monkeypatch):
    be = _backend_or_skip()
    import sys
    from pathlib import Path

    from mamba_backend_cuda_cupy.kernels import _scan

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import gpu_check

    monkeypatch.setenv(_scan.ROW_SCAN_ENV, kind)
    monkeypatch.setenv("MAMBA_CUPY_SS", "row")  # selective_scan through the row scan, not its own kernels
    if budget == "tiny":
        monkeypatch.setattr(_scan, "CHUNK_SMEM_BUDGET", 6 * 1024)
    rng = np.random.default_rng(14)
    args, kw = gpu_check._small_inputs(rng)[op]
    fwd = REGISTRY[op].reference(*args, **kw)
    cot = (tuple(rng.standard_normal(np.shape(o)) for o in fwd) if isinstance(fwd, tuple)
           else rng.standard_normal(np.shape(fwd)))
    cargs = [be.asarray(a, dtype) for a in args]
    ckw = {k: be.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    got = gpu_check._flat(getattr(be.ops, op)(*cargs, **ckw))
    want = gpu_check._flat(fwd)
    for k in want:
        assert gpu_check._rel(be.to_numpy(got[k]), want[k]) < tol, (op, "fwd", k)
    want = REGISTRY[op + "_vjp"].reference(cot, *args, **kw)
    ccot = (tuple(be.asarray(c, dtype) for c in cot) if isinstance(cot, tuple)
            else be.asarray(cot, dtype))
    got = getattr(be.ops, op + "_vjp")(ccot, *cargs, **ckw)
    assert set(got) == set(want)
    for k in want:
        assert gpu_check._rel(be.to_numpy(got[k]), want[k]) < tol, (op, "vjp", k)


# ---- Mamba-1 dedicated kernels (cuda/selective_scan.cu: ss_fwd, ss_bwd) -----------------------
# Forward and every VJP gradient against the float64 reference, per lanes-per-channel K
# (MAMBA_CUPY_SS_LANES; a K not allowed for N falls back to the default choice). Cases: z, D,
# bias, softplus on and off; G > 1; N = 16 and 5 (padded states), N = 1 and 64; L not a multiple
# of the chunks; initial_state; two blocks per group.
SS_GPU_TOL = {"float32": 2e-5, "float64": 1e-9}
SS_GPU_CASES = [  # (B, L, E, G, N, opts)
    (2, 37, 8, 2, 16, ("D", "z", "bias", "sp", "init")),
    (2, 37, 8, 2, 16, ()),
    (2, 53, 12, 3, 5, ("D", "z", "sp", "init")),
    (1, 70, 6, 1, 5, ("bias", "sp")),
    (1, 45, 4, 1, 64, ("D", "z", "bias", "sp", "init")),
    (1, 23, 4, 2, 1, ("z", "init")),
    (2, 41, 160, 1, 16, ("D", "z", "bias", "sp", "init")),
]


def _ss_gpu_inputs(rng, B, L, E, G, N, opts):
    args = (rng.standard_normal((B, L, E)), rng.standard_normal((B, L, E)) * 0.5,
            -np.exp(rng.standard_normal((E, N))), rng.standard_normal((B, L, G, N)),
            rng.standard_normal((B, L, G, N)))
    kw = {}
    if "D" in opts:
        kw["D"] = rng.standard_normal(E)
    if "z" in opts:
        kw["z"] = rng.standard_normal((B, L, E))
    if "bias" in opts:
        kw["delta_bias"] = rng.standard_normal(E) * 0.5
    if "sp" in opts:
        kw["delta_softplus"] = True
    else:  # dt > 0 without softplus: decays in (0, 1], as in a model
        args = (args[0], np.abs(args[1]) + 0.05) + args[2:]
        if "bias" in opts:
            kw["delta_bias"] = np.abs(kw["delta_bias"])
    if "init" in opts:
        kw["initial_state"] = rng.standard_normal((B, E, N))
    return args, kw


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", SS_GPU_CASES)
def test_selective_scan_dedicated_matches_reference(case, dtype, lanes, monkeypatch):
    be = _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import selective_scan as m1

    monkeypatch.setenv("MAMBA_CUPY_SS", "dedicated")
    monkeypatch.setenv("MAMBA_CUPY_SS_LANES", str(lanes))
    B, L, E, G, N, opts = case
    rng = np.random.default_rng(21)
    args, kw = _ss_gpu_inputs(rng, B, L, E, G, N, opts)
    cargs = [cp.asarray(a, dtype) for a in args]
    ckw = {k: cp.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    cfg = m1.dedicated_config(cargs[0], cargs[3])
    assert cfg is not None
    tol = SS_GPU_TOL[dtype]
    want = REGISTRY["selective_scan"].reference(*args, **kw)
    got = be.ops.selective_scan(*cargs, **ckw)
    for name, a, w in zip(("y", "final_state"), got, want):
        assert gpu_check_rel(cp.asnumpy(a), w) < tol, (name, cfg)
    cot = (rng.standard_normal((B, L, E)), rng.standard_normal((B, E, N)))
    for c in (cot, (cot[0], None), (None, cot[1])):
        want = REGISTRY["selective_scan_vjp"].reference(c, *args, **kw)
        cc = tuple(None if x is None else cp.asarray(x, dtype) for x in c)
        got = be.ops.selective_scan_vjp(cc, *cargs, **ckw)
        assert set(got) == set(want)
        for k in want:
            g = cp.asnumpy(got[k])
            assert g.dtype == np.dtype(dtype) and np.all(np.isfinite(g)), k
            err = gpu_check_rel(g, want[k])
            assert err < tol, (k, cfg, c[0] is None, err)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_selective_scan_dedicated_agrees_with_row_path(dtype, monkeypatch):
    # both kernel paths on one input (a strong-decay case, L across many chunks), and the
    # dedicated VJP is deterministic (bit-identical on a second run)
    be = _backend_or_skip()
    import cupy as cp

    B, L, E, G, N = 2, 300, 64, 1, 16
    rng = np.random.default_rng(22)
    args = (rng.standard_normal((B, L, E)), rng.uniform(0.5, 2.0, (B, L, E)),
            -rng.uniform(2.0, 8.0, (E, N)), rng.standard_normal((B, L, G, N)),
            rng.standard_normal((B, L, G, N)))
    kw = dict(D=rng.standard_normal(E), z=rng.standard_normal((B, L, E)),
              delta_bias=rng.uniform(0, 0.5, E), delta_softplus=True,
              initial_state=2 * rng.standard_normal((B, E, N)))
    cot = (rng.standard_normal((B, L, E)), rng.standard_normal((B, E, N)))
    cargs = [cp.asarray(a, dtype) for a in args]
    ckw = {k: cp.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    ccot = tuple(cp.asarray(c, dtype) for c in cot)
    want = REGISTRY["selective_scan_vjp"].reference(cot, *args, **kw)
    runs = {}
    for kind in ("dedicated", "row", "dedicated"):
        monkeypatch.setenv("MAMBA_CUPY_SS", kind)
        g = be.ops.selective_scan_vjp(ccot, *cargs, **ckw)
        g = {k: cp.asnumpy(v) for k, v in g.items()}
        if kind in runs:
            for k in g:
                assert np.array_equal(g[k], runs[kind][k]), k
        runs[kind] = g
    tol = 1e-5 if dtype == "float32" else 1e-9
    for k in want:
        assert gpu_check_rel(runs["dedicated"][k], want[k]) < tol, k
        assert gpu_check_rel(runs["dedicated"][k], runs["row"][k]) < 10 * tol, k


# ---- fused elementwise glue of the SSD wrapper (kernels/_fused.py): CuPy kernels against the
# NumPy compositions, every flag combination, D per head and per (head, channel)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("D_kind", [None, "h", "hp"])
@pytest.mark.parametrize("has_z", [False, True])
def test_fused_glue_matches_numpy(dtype, D_kind, has_z):
    _backend_or_skip()
    import cupy as cp

    from mamba_backend_cuda_cupy.kernels import _fused

    rng = np.random.default_rng(18)
    B, L, H, P = 2, 7, 3, 5
    n = lambda *s: rng.standard_normal(s).astype(dtype)
    y0, x, dy, GB, z = n(B, L, H, P), n(B, L, H, P), n(B, L, H, P), n(B, L, H, P), n(B, L, H, P) * 8
    dt = np.broadcast_to(np.abs(n(B, L, H, 1)), (B, L, H, P))
    D = None if D_kind is None else (n(H) if D_kind == "h" else n(H, P))
    z = z if has_z else None
    c = lambda a: None if a is None else cp.asarray(a)
    tol = 1e-6 if dtype == "float32" else 1e-13
    want = _fused.skip_gate(np, y0, x, D, z)
    got = _fused.skip_gate(cp, c(y0), c(x), c(D), c(z))
    assert got.dtype == np.dtype(dtype) and gpu_check_rel(cp.asnumpy(got), want) < tol
    dy0_w = _fused.gate_cotangent(np, dy, z)
    dy0 = _fused.gate_cotangent(cp, c(dy), c(z))
    assert gpu_check_rel(cp.asnumpy(dy0), dy0_w) < tol
    (dx_w, dz_w) = _fused.skip_gate_grads(np, dt, GB, x, dy0_w, D, y0, dy, z)
    dx, dz = _fused.skip_gate_grads(cp, cp.broadcast_to(cp.asarray(dt[..., :1]), dt.shape), c(GB),
                                    c(x), dy0, c(D), c(y0), c(dy), c(z))
    assert gpu_check_rel(cp.asnumpy(dx), dx_w) < tol
    assert (dz is None) == (dz_w is None)
    if dz is not None:
        assert gpu_check_rel(cp.asnumpy(dz), dz_w) < tol


# ---- causal conv1d (conv1d.cu): time tiles of CONV_TT with a register window; every K the
# kernels are instantiated for, L across several tiles and shorter than K, with and without an
# initial state, bias and silu, against the float64 reference (forward, final state, VJP)
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("L,opts", [(37, "bis"), (2, "is"), (16, ""), (33, "b"), (5, "bi")])
def test_conv1d_tiles_match_reference(dtype, tol, K, L, opts):
    be = _backend_or_skip()
    rng = np.random.default_rng(20)
    B, C = 2, 300
    x = rng.standard_normal((B, L, C))
    w = rng.standard_normal((C, K))
    kw = dict(bias=rng.standard_normal(C) if "b" in opts else None,
              initial_state=rng.standard_normal((B, C, K)) if "i" in opts else None,
              activation="silu" if "s" in opts else None)
    want_y, want_fin = REGISTRY["causal_conv1d"].reference(x, w, **kw)
    c = lambda a: None if a is None else be.asarray(a, dtype)
    ckw = {k: (c(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    y, fin = be.ops.causal_conv1d(c(x), c(w), **ckw)
    assert gpu_check_rel(be.to_numpy(y), want_y) < tol
    assert gpu_check_rel(be.to_numpy(fin), want_fin) < tol
    cot = (rng.standard_normal(want_y.shape), rng.standard_normal(want_fin.shape))
    want = REGISTRY["causal_conv1d_vjp"].reference(cot, x, w, **kw)
    got = be.ops.causal_conv1d_vjp((c(cot[0]), c(cot[1])), c(x), c(w), **ckw)
    assert set(got) == set(want)
    for k in want:
        assert gpu_check_rel(be.to_numpy(got[k]), want[k]) < tol, k


# ---- RMSNorm (norm.cu) with channels held in registers: wide groups with tails, every gate mode,
# the fused residual add, against the float64 reference (forward and VJP)
@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("E,gs", [(2000, 1000), (2048, 2048), (96, 32), (8192, 8192)])
@pytest.mark.parametrize("mode", ["plain", "gate", "gate_nbg"])
def test_rmsnorm_wide_groups_match_reference(dtype, tol, E, gs, mode):
    be = _backend_or_skip()
    rng = np.random.default_rng(21)
    x, w = rng.standard_normal((3, 2, E)), rng.standard_normal(E)
    kw = dict(eps=1e-5, group_size=gs, z=None if mode == "plain" else rng.standard_normal((3, 2, E)),
              norm_before_gate=mode == "gate_nbg")
    c = lambda a: None if a is None else be.asarray(a, dtype)
    ckw = {k: (c(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    want = REGISTRY["rmsnorm"].reference(x, w, **kw)
    assert gpu_check_rel(be.to_numpy(be.ops.rmsnorm(c(x), c(w), **ckw)), want) < tol
    dy = rng.standard_normal(x.shape)
    want = REGISTRY["rmsnorm_vjp"].reference(dy, x, w, **kw)
    got = be.ops.rmsnorm_vjp(c(dy), c(x), c(w), **ckw)
    assert set(got) == set(want)
    for k in want:
        assert gpu_check_rel(be.to_numpy(got[k]), want[k]) < tol, k
    # the fused residual add
    r = rng.standard_normal(x.shape)
    wy, wres = REGISTRY["add_rmsnorm"].reference(x, r, w, eps=1e-5)
    gy, gres = be.ops.add_rmsnorm(c(x), c(r), c(w), eps=1e-5)
    assert gpu_check_rel(be.to_numpy(gy), wy) < tol and gpu_check_rel(be.to_numpy(gres), wres) < tol
    cot = (dy, rng.standard_normal(x.shape))
    want = REGISTRY["add_rmsnorm_vjp"].reference(cot, x, r, w, eps=1e-5)
    got = be.ops.add_rmsnorm_vjp((c(cot[0]), c(cot[1])), c(x), c(r), c(w), eps=1e-5)
    for k in want:
        assert gpu_check_rel(be.to_numpy(got[k]), want[k]) < tol, k
