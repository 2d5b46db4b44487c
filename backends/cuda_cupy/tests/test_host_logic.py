"""Host-side logic of the cuda_cupy backend that needs no GPU: launch configurations, the op
table, and the Mamba-1/2/3 wrappers' glue run on NumPy through the row-scan emulation, against
the float64 references (forward, step and the two-sweep VJPs)."""

import numpy as np
import pytest

from mamba_core.ops import REGISTRY

from mamba_backend_cuda_cupy._compile import disabled_ops, source
from mamba_backend_cuda_cupy.kernels import _scan, mamba3, ssd
from mamba_backend_cuda_cupy.kernels import selective_scan as m1
from mamba_backend_cuda_cupy.kernels.conv1d import blocks, v2_grid
from mamba_backend_cuda_cupy.kernels.norm import bwd_threads, fwd_threads

TOL = 1e-12  # float64 glue on the NumPy emulation


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("P,N,item", [(64, 128, 4), (64, 128, 8), (2048, 16, 4), (3, 5, 8),
                                      (1, 1, 4), (65, 256, 8), (7, 33, 4)])
def test_scan_config_covers_every_row_and_state(P, N, item):
    c = _scan.scan_config(P, N, item)
    assert c is not None
    assert c.lpc * c.nper >= N and c.lpc <= 32 and 32 % c.lpc == 0
    assert c.nper in (1, 2, 4, 8)
    assert c.tiles * c.rows_per_tile >= P > (c.tiles - 1) * c.rows_per_tile
    assert 1 <= c.warps <= _scan.MAX_WARPS
    assert c.smem <= _scan.SMEM_LIMIT


def test_scan_config_refuses_what_it_cannot_hold():
    assert _scan.scan_config(64, 257, 4) is None
    assert not _scan.supported(64, 1000)


def test_norm_and_conv_launch_sizes():
    assert fwd_threads(1) == 32 and fwd_threads(2048) == 256 and fwd_threads(100) == 32
    assert bwd_threads(2048) == 256 and bwd_threads(8192) == 1024 and bwd_threads(8193) is None
    assert blocks(0) == 1 and blocks(256) == 1 and blocks(257) == 2
    # conv's sequence grid: (B ceil(L / (8 tc)), ceil(C / 32)); its rows are the dw partials
    assert v2_grid(8, 2048, 2304, 32) == (64, 72) and v2_grid(1, 1, 1, 16) == (1, 1)
    assert v2_grid(2, 129, 33, 16) == (4, 2)


def test_decay_grad_instances_match_the_chunk():
    text = source("scan_bwd.cu")
    for t in ("float", "double"):
        for n in (1, 2, 4, 8):
            assert f"DECAY_GRAD_INST({t}, {n}, {_scan.DECAY_CHUNK})" in text


def test_loader_pastes_the_header():
    text = source("scan.cu")
    assert '#include "common.cuh"' not in text and "group_sum" in text


def test_disable_env(monkeypatch):
    monkeypatch.setenv("MAMBA_CUPY_DISABLE", "ssd_scan, rmsnorm")
    assert disabled_ops() == {"ssd_scan", "rmsnorm"}
    from mamba_backend_cuda_cupy import kernels

    table = kernels.collect()
    assert "ssd_scan" not in table and "rmsnorm" not in table
    assert "ssd_step" in table


def test_every_kernel_has_its_op_signature():
    import inspect

    from mamba_backend_cuda_cupy import kernels

    for name, fn in kernels.collect().items():
        ref = list(inspect.signature(REGISTRY[name].reference).parameters)
        assert list(inspect.signature(fn).parameters) == ref, name


def _rng():
    return np.random.default_rng(7)


def test_row_scan_emulation_reverse_is_the_adjoint():
    # <Y_fwd, dy> through the forward scan equals the reverse scan's readout pairing
    rng = _rng()
    B, L, R, H, P, N = 2, 6, 2, 3, 2, 4
    dA = -np.abs(rng.standard_normal((B, L, H, P)))
    V, K, Q = rng.standard_normal((B, L, R, H, P)), rng.standard_normal((B, L, R, H, N)), rng.standard_normal((B, L, R, H, N))
    Y, _, _ = _scan.row_scan(np, dA=dA, V=V, K=K, Q=Q)
    dY = rng.standard_normal(Y.shape)
    GK, _, _ = _scan.row_scan(np, dA=dA, V=dY, K=Q, Q=K, reverse=True)
    assert abs(np.sum(Y * dY) - np.sum(GK * V)) < 1e-10 * np.abs(np.sum(Y * dY)) + 1e-12


SSD_KW = [dict(), dict(D=True, z=True, dt_bias=True, dt_softplus=True, initial_state=True),
          dict(D="HP", dt_limit=(0.05, 2.0), dt_softplus=True)]


def _ssd_args(rng, B=2, L=9, H=4, P=3, G=2, N=5, opts=None):
    o = opts or {}
    x, dt = rng.standard_normal((B, L, H, P)), rng.standard_normal((B, L, H))
    A, Bm, Cm = -np.exp(rng.standard_normal(H)), rng.standard_normal((B, L, G, N)), rng.standard_normal((B, L, G, N))
    kw = {}
    if o.get("D"):
        kw["D"] = rng.standard_normal((H, P) if o["D"] == "HP" else H)
    for k, shape in (("z", (B, L, H, P)), ("dt_bias", (H,)), ("initial_state", (B, H, P, N))):
        if o.get(k):
            kw[k] = rng.standard_normal(shape)
    for k in ("dt_softplus", "dt_limit"):
        if k in o:
            kw[k] = o[k]
    return (x, dt, A, Bm, Cm), kw


@pytest.mark.parametrize("opts", SSD_KW)
def test_ssd_glue(opts):
    rng = _rng()
    args, kw = _ssd_args(rng, opts=opts)
    got, want = ssd._fwd(np, *args, **kw), REGISTRY["ssd_scan"].reference(*args, **kw)
    assert rel(got[0], want[0]) < TOL and rel(got[1], want[1]) < TOL
    cot = (rng.standard_normal(want[0].shape), rng.standard_normal(want[1].shape))
    for c in (cot, (cot[0], None), (None, cot[1])):
        g, w = ssd._vjp(np, c, *args, **kw), REGISTRY["ssd_scan_vjp"].reference(c, *args, **kw)
        assert set(g) == set(w)
        for k in w:
            assert rel(g[k], w[k]) < 1e-10, k


def test_ssd_glue_long_strong_decay():
    rng = _rng()
    args, kw = _ssd_args(rng, B=1, L=300, H=2, P=2, G=1, N=3)
    args = (args[0], args[1] + 4.0, -np.exp(np.array([3.0, 0.5]))) + args[3:]
    kw = dict(dt_softplus=True)
    g = ssd._vjp(np, (rng.standard_normal((1, 300, 2, 2)), None), *args, **kw)
    w = REGISTRY["ssd_scan_vjp"].reference((g["x"] * 0 + 1, None), *args, **kw)
    g = ssd._vjp(np, (g["x"] * 0 + 1, None), *args, **kw)
    for k in w:
        assert rel(g[k], w[k]) < 1e-9, k


@pytest.mark.parametrize("R,init,D", [(1, False, True), (3, True, True), (2, "k", False)])
def test_mamba3_glue(R, init, D):
    rng = _rng()
    B, L, H, P, N = 2, 8, 3, 4, 5
    x = rng.standard_normal((B, L, H, P))
    dt = np.exp(rng.standard_normal((B, L, H)) * 0.5)
    A = -np.exp(rng.standard_normal((B, L, H)))
    trap = 1 / (1 + np.exp(-rng.standard_normal((B, L, H))))
    Bm, Cm = rng.standard_normal((B, L, R, H, N)), rng.standard_normal((B, L, R, H, N))
    kw = {}
    if R > 1:
        kw["mimo_x"] = rng.standard_normal((H, R, P))
    if D:
        kw["D"] = rng.standard_normal(H)
    if init is True:
        kw.update(initial_state=rng.standard_normal((B, H, P, N)), initial_k=rng.standard_normal((B, R, H, N)),
                  initial_v=rng.standard_normal((B, H, P)))
    elif init == "k":
        kw["initial_k"] = rng.standard_normal((B, R, H, N))
    args = (x, dt, A, trap, Bm, Cm)
    got, want = mamba3._fwd(np, *args, **kw), REGISTRY["mamba3_scan"].reference(*args, **kw)
    for a, b in zip(got, want):
        assert rel(a, b) < TOL
    cot = (rng.standard_normal(want[0].shape), rng.standard_normal(want[1].shape),
           rng.standard_normal(want[2].shape), rng.standard_normal(want[3].shape))
    g, w = mamba3._vjp(np, cot, *args, **kw), REGISTRY["mamba3_scan_vjp"].reference(cot, *args, **kw)
    assert set(g) == set(w)
    for k in w:
        assert rel(g[k], w[k]) < 1e-10, k
    # the step is the scan with L = 1
    st = (rng.standard_normal((B, H, P, N)), rng.standard_normal((B, R, H, N)), rng.standard_normal((B, H, P)))
    y, S, _, _ = mamba3._fwd(np, *(a[:, :1] for a in args), initial_state=st[0], initial_k=st[1],
                             initial_v=st[2], **{k: v for k, v in kw.items() if k in ("D", "mimo_x")})
    ys, Ss, _, _ = REGISTRY["mamba3_step"].reference(*(a[:, 0] for a in args), *st,
                                                     **{k: v for k, v in kw.items() if k in ("D", "mimo_x")})
    assert rel(y[:, 0], ys) < TOL and rel(S, Ss) < TOL


def test_selective_scan_glue():
    rng = _rng()
    B, L, E, G, N = 2, 7, 6, 2, 4
    args = (rng.standard_normal((B, L, E)), rng.standard_normal((B, L, E)), -np.exp(rng.standard_normal((E, N))),
            rng.standard_normal((B, L, G, N)), rng.standard_normal((B, L, G, N)))
    kw = dict(D=rng.standard_normal(E), z=rng.standard_normal((B, L, E)), delta_bias=rng.standard_normal(E),
              delta_softplus=True, initial_state=rng.standard_normal((B, E, N)))
    got, want = m1._fwd(np, *args, **kw), REGISTRY["selective_scan"].reference(*args, **kw)
    assert rel(got[0], want[0]) < TOL and rel(got[1], want[1]) < TOL


def _m1_args(rng, B=2, L=7, E=6, G=2, N=4, strong=False):
    u, delta = rng.standard_normal((B, L, E)), rng.standard_normal((B, L, E))
    A = -np.exp(rng.standard_normal((E, N)))
    if strong:  # summed log-decay over L of several hundred
        delta, A = rng.uniform(0.5, 2.0, (B, L, E)), -rng.uniform(2.0, 8.0, (E, N))
    args = (u, delta, A, rng.standard_normal((B, L, G, N)), rng.standard_normal((B, L, G, N)))
    kw = dict(D=rng.standard_normal(E), z=rng.standard_normal((B, L, E)), delta_bias=rng.standard_normal(E),
              delta_softplus=True, initial_state=rng.standard_normal((B, E, N)))
    return args, kw


@pytest.mark.parametrize("L,strong", [(7, False), (70, False), (300, True)])
def test_selective_scan_vjp_glue(L, strong):
    # L = 70 and 300 cross several decay_grad checkpoint chunks (DECAY_CHUNK tokens each)
    rng = _rng()
    args, kw = _m1_args(rng, L=L, strong=strong)
    B, E, N = 2, 6, 4
    cot = (rng.standard_normal((B, L, E)), rng.standard_normal((B, E, N)))
    bare = {k: kw[k] for k in ("delta_softplus",)}
    for c, k in ((cot, kw), ((cot[0], None), kw), ((None, cot[1]), kw), (cot, bare)):
        g, w = m1._vjp(np, c, *args, **k), REGISTRY["selective_scan_vjp"].reference(c, *args, **k)
        assert set(g) == set(w)
        for name in w:
            assert rel(g[name], w[name]) < 1e-10, name


def test_decay_grad_emulation_is_the_pairing_of_states_and_adjoints():
    # qa and dAm against a direct loop over kept states (no checkpoints), L across 3 chunks
    rng = _rng()
    B, L, R, H, P, N = 2, 2 * _scan.DECAY_CHUNK + 5, 2, 3, 2, 4
    dA = rng.uniform(0.1, 1.0, (B, L, H, P))
    Am = -np.exp(rng.standard_normal((H, P, N)))
    coef = rng.standard_normal((B, L, H, P))
    V, K = rng.standard_normal((B, L, R, H, P)), rng.standard_normal((B, L, R, H, N))
    Vr, Kr = rng.standard_normal((B, L, R, H, P)), rng.standard_normal((B, L, R, H, N))
    init, dfin = rng.standard_normal((B, H, P, N)), rng.standard_normal((B, H, P, N))
    qa, dAm = _scan.decay_grad(np, dA=dA, V=V, K=K, Vr=Vr, Kr=Kr, Am=Am, coef=coef, init=init,
                               dfin=dfin, want_dAm=True)
    dec = np.exp(dA[..., None] * Am)  # (B, L, H, P, N)
    S, prev = init, []
    for t in range(L):
        prev.append(S)
        S = dec[:, t] * S + coef[:, t, :, :, None] * np.einsum("brhp,brhn->bhpn", V[:, t], K[:, t])
    G, want_qa, want_dAm = dfin, np.zeros_like(qa), np.zeros_like(dAm)
    for t in reversed(range(L)):
        G = G + np.einsum("brhp,brhn->bhpn", Vr[:, t], Kr[:, t])
        q = dec[:, t] * G * prev[t]
        want_qa[:, t] = np.sum(Am * q, axis=-1)
        want_dAm += dA[:, t, :, :, None] * q
        G = dec[:, t] * G
    assert rel(qa, want_qa) < TOL and rel(dAm, want_dAm) < TOL


def test_ssd_vjp_float32_strong_decay_keeps_dA():
    # the conformance case that failed on the GPU (strong-decay, L=256): the kernels' arithmetic
    # emulated in float32 must keep dA to float32 rounding; the cumulative-sum identity it
    # replaced lost ~3 digits here (rel err 3e-2 in this emulation, 5e-4 on the H100)
    rng = np.random.default_rng(0)
    B, L, H, P, G, N = 2, 256, 2, 2, 1, 3
    A, dt, bias = -rng.uniform(2.0, 8.0, H), rng.uniform(0.5, 2.0, (B, L, H)), rng.uniform(0.0, 0.5, H)
    args = (rng.standard_normal((B, L, H, P)), dt, A, rng.standard_normal((B, L, G, N)),
            rng.standard_normal((B, L, G, N)))
    kw = dict(D=rng.standard_normal(H), z=rng.standard_normal((B, L, H, P)), dt_bias=bias,
              dt_softplus=True, initial_state=2 * rng.standard_normal((B, H, P, N)))
    cot = (rng.standard_normal((B, L, H, P)), rng.standard_normal((B, H, P, N)))
    want = REGISTRY["ssd_scan_vjp"].reference(cot, *args, **kw)

    def f32(a):
        return a.astype(np.float32) if isinstance(a, np.ndarray) else a

    got = ssd._vjp(np, tuple(map(f32, cot)), *map(f32, args), **{k: f32(v) for k, v in kw.items()})
    for k in want:
        assert got[k].dtype == np.float32
        assert rel(got[k], want[k]) < 2e-6, k


def test_selective_scan_vjp_float32_strong_decay_keeps_dA():
    rng = _rng()
    args, kw = _m1_args(rng, L=256, strong=True)
    cot = (rng.standard_normal((2, 256, 6)), rng.standard_normal((2, 6, 4)))
    want = REGISTRY["selective_scan_vjp"].reference(cot, *args, **kw)

    def f32(a):
        return a.astype(np.float32) if isinstance(a, np.ndarray) else a

    got = m1._vjp(np, tuple(map(f32, cot)), *map(f32, args), **{k: f32(v) for k, v in kw.items()})
    for k in want:
        assert rel(got[k], want[k]) < 2e-6, k


def test_launch_bounds_cover_the_launches():
    # the kernels cap registers for these block sizes; a larger launch would fail on the device
    assert f"#define MAX_THREADS {_scan.MAX_WARPS * 32}" in source("scan.cu")
    assert f"#define DECAY_MAX_THREADS {_scan.MAX_WARPS * 32}" in source("scan_bwd.cu")
    norm = source("norm.cu")
    assert "#define NORM_MAX_THREADS 1024" in norm
    assert norm.count("void __launch_bounds__(NORM_MAX_THREADS)") == 2  # forward and backward
    assert fwd_threads(8192) == 1024 and fwd_threads(8193) is None  # wider groups: the composition


# ---- linear (cuda/linear.cu): dispatch rule, launch plan, index math ---------------------------
from mamba_backend_cuda_cupy.kernels import linear as lin  # noqa: E402


def test_linear_dispatch_rule():
    # decode-sized inputs always take the kernel; larger ones only inside a capture or gemv_only
    assert lin.use_kernel(1, False) and lin.use_kernel(lin.GEMV_ROWS, False)
    assert not lin.use_kernel(lin.GEMV_ROWS + 1, False)
    assert lin.use_kernel(10**6, True) and lin.use_kernel(10**6, False, forced=True)
    assert not lin.forced()
    with lin.gemv_only():
        assert lin.forced()
        with lin.gemv_only():
            assert lin.forced()
        assert lin.forced()
    assert not lin.forced()


class _Stream:
    def __init__(self, answer):
        self.answer, self.ptr = answer, 123

    def is_capturing(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class _Runtime:
    def __init__(self, answer):
        self.answer = answer

    def streamIsCapturing(self, ptr):
        assert ptr == 123
        return self.answer


def test_linear_capture_query():
    rt = _Runtime(False)
    assert lin.capturing(_Stream(True), rt) is True
    assert lin.capturing(_Stream(False), rt) is False
    # a refused query (legacy stream while another captures) counts as capturing: no cuBLAS
    assert lin.capturing(_Stream(RuntimeError("cudaErrorStreamCaptureImplicit")), rt) is True
    bare = type("Bare", (), {"ptr": 123})()  # a Stream without is_capturing: the runtime call
    assert lin.capturing(bare, _Runtime(1)) is True and lin.capturing(bare, _Runtime(0)) is False


@pytest.mark.parametrize("M", [1, 2, 3, 5, 16, 17, 33, 100])
@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("mode", ["0", "auto", "2", "4"])
def test_linear_plan_covers_every_row_and_output(M, itemsize, mode):
    N, nvec = 37, 512
    seen = np.zeros(M, int)
    for m0, m, mr, nr, blocks, ks in lin.plan(M, N, itemsize, nvec, 132, mode):
        assert 1 <= m <= mr <= lin.MAX_TILE and mr in lin.TILES and m > mr // 2
        assert nr == lin.rows_per_warp(mr, itemsize)
        assert ks in (1, 2, 4) and lin.LINEAR_WARPS % ks == 0 and nvec % ks == 0
        assert ks == 1 if mode == "0" else ks == int(mode) if mode != "auto" else True
        rows_a_block = lin.LINEAR_WARPS // ks * nr
        assert blocks * rows_a_block >= N > (blocks - 1) * rows_a_block
        seen[m0:m0 + m] += 1
    assert np.all(seen == 1)
    assert lin.plan(0, N, itemsize) == []


def test_linear_split_k_rule():
    # float32 decode shapes of the 370M Mamba-2 (d_model 1024, d_inner 2048, 4384 in_proj rows)
    # on 132 multiprocessors: (nvec, N, MR) -> ks
    want = {(512, 1024, 1): 2,     # out_proj, batch 1: two rounds of U = 8 become one
            (256, 4384, 1): 1,     # in_proj, batch 1: already one round a warp
            (256, 50280, 1): 1,    # lm_head
            (512, 1024, 16): 4,    # out_proj, batch 16 (NR 4, U 2): 256 warps -> 1024
            (256, 4384, 16): 2}    # in_proj, batch 16: 1096 warps -> 2192 (4384 is too many)
    for (nvec, N, mr), ks in want.items():
        nr = lin.rows_per_warp(mr, 4)
        assert lin.split_k(nvec, N, mr, nr, 132, "auto") == ks, (nvec, N, mr)
        assert lin.split_k(nvec, N, mr, nr, 132, "0") == 1
    # forced splits fall back to the largest that divides the row's vectors
    assert [lin.split_k(n, 8, 1, 1, 132, "4") for n in (512, 6, 7)] == [4, 2, 1]
    assert lin.split_k(6, 8, 1, 1, 132, "2") == 2 and lin.split_k(1, 8, 1, 1, 132, "2") == 1
    # auto never leaves a warp less than one full round of U vectors a lane
    for nvec in (32, 255, 256, 257, 511, 1024, 4096):
        for mr in lin.TILES:
            nr = lin.rows_per_warp(mr, 4)
            ks = lin.split_k(nvec, 8, mr, nr, 132, "auto")
            assert ks == 1 or nvec // ks >= 32 * lin.unroll(mr, nr)


def test_linear_split_mode_switch():
    assert lin.split_mode({}) == lin.SPLIT_DEFAULT == "auto"
    for raw, want in (("0", "0"), ("off", "0"), ("No", "0"), ("auto", "auto"), (" AUTO ", "auto"),
                      ("2", "2"), ("4", "4")):
        assert lin.split_mode({lin.SPLIT_ENV: raw}) == want
    for bad in ("3", "8", "yes", "1"):
        with pytest.raises(ValueError, match="MAMBA_CUPY_GEMV_SPLIT"):
            lin.split_mode({lin.SPLIT_ENV: bad})


def test_linear_vec_width():
    assert lin.vec_width(4, 64, (64, 128), (0, 512)) == 4
    assert lin.vec_width(8, 64, (64,), (1024,)) == 2
    assert lin.vec_width(4, 13, (13,), (0,)) == 1          # K not a multiple of 4
    assert lin.vec_width(4, 64, (66,), (0,)) == 1          # row stride
    assert lin.vec_width(4, 64, (64,), (8,)) == 1          # pointer not 16-byte aligned


@pytest.mark.parametrize("mode", ["0", "2", "4"])
@pytest.mark.parametrize("M,N,K,vec,bias", [(1, 5, 64, 4, True), (3, 70, 13, 1, False),
                                            (16, 9, 256, 2, True), (40, 33, 8, 4, True)])
def test_linear_emulation_matches_reference(M, N, K, vec, bias, mode):
    rng = _rng()
    X, W = rng.standard_normal((M, K)), rng.standard_normal((N, K))
    b = rng.standard_normal(N) if bias else None
    got = lin.emulate(X, W, b, vec, itemsize=8, mode=mode)
    assert not np.any(np.isnan(got))  # every output written
    assert rel(got, REGISTRY["linear"].reference(X, W, b)) < TOL


def test_linear_instances_match_the_plan():
    text = source("linear.cu")
    assert f"#define LINEAR_WARPS {lin.LINEAR_WARPS}" in text
    assert "LINEAR_MR(X, float, 1, 4) LINEAR_MR(X, float, 4, 4) LINEAR_MR(X, double, 1, 2)" in text
    assert "LINEAR_INSTANCES(LINEAR_INST)" in text
    for it, nr8 in ((4, 4), (8, 2)):
        assert [lin.rows_per_warp(mr, it) for mr in lin.TILES] == [1, 1, 2, nr8, nr8]
    assert lin.TILES[-1] == lin.MAX_TILE and lin.GEMV_ROWS <= lin.MAX_TILE
    # split_k's rounds are the kernel's: gemv_unroll and unroll agree
    assert "return mr * nr <= 2 ? 8 : (mr * nr <= 8 ? 4 : 2);" in text
    assert [lin.unroll(1, 1), lin.unroll(2, 1), lin.unroll(4, 2), lin.unroll(16, 4)] == [8, 8, 4, 2]


@pytest.mark.parametrize("limit", [(0.0, np.inf), (0.05, 2.0)])
def test_dt_transform_numpy_is_the_core_formula(limit):
    from mamba_backend_cuda_cupy.kernels._common import dt_transform
    from mamba_core.ops import ssd as ssd_ops

    rng = _rng()
    dt, bias = rng.standard_normal((2, 3, 4)) * 15, rng.standard_normal(4)
    got = dt_transform(np, dt, bias, True, limit, np.float64)
    want = ssd_ops._dt_ref(dt, bias, True, limit)
    assert rel(got, want) < TOL


# ---- the chunked row scan and decay gradient: shared-memory plans and the kernel switch -------
CHUNK_SHAPES = [(P, N) for P in (1, 3, 5, 33, 64, 65, 2048) for N in (1, 5, 16, 33, 64, 128, 200, 256)]


def _regions_ok(offsets, sizes, total):
    # the regions lie in order, without overlap, inside the total
    ends = [o + n for o, n in zip(offsets, sizes)]
    return all(e <= o2 for e, o2 in zip(ends, offsets[1:])) and max(ends) <= total


@pytest.mark.parametrize("budget", [_scan.SMEM_LIMIT, _scan.CHUNK_SMEM_BUDGET])
@pytest.mark.parametrize("item", [4, 8])
@pytest.mark.parametrize("R", [1, 2, 4])
def test_chunk_config_plans_every_supported_shape(R, item, budget):
    for P, N in CHUNK_SHAPES:
        for L in (1, 7, 64, 2048):
            for q, c, w in ((True, True, False), (True, True, True), (True, False, True),
                            (False, True, False), (False, False, True)):
                k = _scan.chunk_config(P, N, R, L, item, q, c, w, budget)
                assert k is not None, (P, N, R, L, item, q, c, w)
                assert k.smem <= budget
                assert k.lpc * k.nper >= N and 32 % k.lpc == 0 and k.nper in (1, 2, 4, 8)
                assert 1 <= k.warps <= _scan.MAX_WARPS
                assert k.tiles * k.rows_per_tile >= P > (k.tiles - 1) * k.rows_per_tile
                assert 1 <= k.steps <= 64 and k.steps <= max(1, 2 * L - 1)
                assert 1 <= k.ring <= 64 and (w or k.ring == 1)
                rows, npad = k.rows_per_tile, k.lpc * k.nper
                T, D = k.steps, k.ring
                sizes = (2 * T * R * npad, 2 * T * R * npad * q, 2 * T * rows, 2 * T * rows * c,
                         2 * T * R * rows, 2 * T * R * rows * w, 2 * T * R * rows * q,
                         2 * D * rows * npad * w)
                assert _regions_ok(k.offsets, sizes, k.smem // item)


def test_chunk_config_keeps_the_step_kernel_tiles_when_it_fits():
    # the benchmark shapes: same rows per block as row_scan (Red partials identical), long chunks
    for R, w in ((1, False), (1, True), (4, False), (4, True)):
        k = _scan.chunk_config(64, 128, R, 2048, 4, True, True, w)
        base = _scan.scan_config(64, 128, 4)
        assert (k.warps, k.tiles) == (base.warps, base.tiles)
        assert k.steps >= 4 and k.smem <= _scan.CHUNK_SMEM_BUDGET
    assert _scan.chunk_config(64, 128, 1, 2048, 4, True, True, False).steps >= 16
    assert _scan.chunk_config(64, 257, 1, 10, 4) is None


@pytest.mark.parametrize("budget", [_scan.SMEM_LIMIT, _scan.CHUNK_SMEM_BUDGET])
@pytest.mark.parametrize("item", [4, 8])
@pytest.mark.parametrize("R", [1, 4])
def test_decay_config_plans_every_supported_shape(R, item, budget):
    for P, N in CHUNK_SHAPES:
        for c in (True, False):
            k = _scan.decay_config(P, N, R, item, c, budget)
            assert k is not None, (P, N, R, item, c)
            assert k.smem <= budget and _scan.DECAY_CHUNK % k.steps == 0
            assert k.tiles * k.rows_per_tile >= P > (k.tiles - 1) * k.rows_per_tile
            rows, npad, T = k.rows_per_tile, k.lpc * k.nper, k.steps
            sizes = (2 * T * R * npad, 2 * T * R * rows, 2 * T * rows, 2 * T * rows * c, 2 * T * rows)
            assert _regions_ok(k.offsets, sizes, k.smem // item)


def test_row_scan_kind_env(monkeypatch):
    monkeypatch.delenv(_scan.ROW_SCAN_ENV, raising=False)
    assert _scan.row_scan_kind() == "tiled"
    monkeypatch.setenv(_scan.ROW_SCAN_ENV, " Step ")
    assert _scan.row_scan_kind() == "step"
    monkeypatch.setenv(_scan.ROW_SCAN_ENV, "fast")
    with pytest.raises(ValueError, match="tiled, chunked, step"):
        _scan.row_scan_kind()


TILED_SHAPES = [(64, 128), (1, 1), (3, 5), (33, 16), (65, 128), (5, 200), (128, 64), (7, 256),
                (64, 32)]


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("R", [1, 4])
@pytest.mark.parametrize("plan", ["", "npt=4,rp=4", "npt=1,rp=8,warps=2", "npt=8,rp=2"])
def test_tiled_config_fits_and_aligns(itemsize, R, plan, monkeypatch):
    monkeypatch.setenv(_scan.TILED_ENV, plan)
    align = 16 // itemsize
    for P, N in TILED_SHAPES:
        for q, c, w in ((True, True, False), (True, False, True), (False, True, True)):
            k = _scan.tiled_config(P, N, R, 70, itemsize, q, c, w)
            assert k is not None, (P, N, R, itemsize, plan)
            assert k.lg * k.npt == _scan._pow2(N) and 1 <= k.lg <= 32 and 32 % k.lg == 0
            assert k.npt in _scan.TILED_NPT and k.rp in _scan.TILED_RP and k.rp <= k.lg
            assert k.smem <= _scan.CHUNK_SMEM_BUDGET
            assert k.tiles * k.rows_per_tile >= P > (k.tiles - 1) * k.rows_per_tile
            assert all(o % align == 0 for o in k.offsets)  # 16-byte vector loads stay aligned
            assert k.rows_per_tile % k.rp == 0 and (k.lg * k.npt) % k.npt == 0
            rb, npad, T, D = k.rows_per_tile, k.lg * k.npt, k.steps, k.ring
            sizes = (2 * T * R * npad, 2 * T * R * npad * q, 2 * T, 2 * T * c, 2 * T * R * rb,
                     2 * T * R * rb * w, 2 * T * R * rb * q, 2 * D * k.warps * npad * w)
            assert _regions_ok(k.offsets, sizes, k.smem // itemsize)
            if not w:
                assert k.ring == 1


def test_tiled_default_plan_at_the_benchmark_shape(monkeypatch):
    monkeypatch.delenv(_scan.TILED_ENV, raising=False)
    k = _scan.tiled_config(64, 128, 1, 2048, 4, True, True, False)
    # N = 128: 4 entries a lane, a warp a row group, 8 rows a thread: one block a head
    assert (k.lg, k.npt, k.rp, k.warps, k.tiles) == (32, 4, 8, 8, 1)
    k = _scan.tiled_config(64, 128, 1, 2048, 8, True, True, False)
    assert (k.lg, k.npt, k.rp) == (16, 8, 2)


def test_tiled_env_is_checked(monkeypatch):
    for bad, msg in (("npt=3", "npt=3"), ("rows=4", "expected"), ("rp=16", "rp=16"),
                     ("warps=0", "warps=0"), ("npt=x", "expected")):
        monkeypatch.setenv(_scan.TILED_ENV, bad)
        with pytest.raises(ValueError, match=msg):
            _scan.tiled_config(64, 128, 1, 100, 4)


def test_tiled_applies_only_to_per_head_decay():
    B, L, H, P, N = 2, 5, 3, 4, 8
    per_head = np.broadcast_to(np.ones((B, L, H, 1)), (B, L, H, P))
    per_row = np.ones((B, L, H, P))
    am_head = np.broadcast_to(np.ones((H, 1, 1)), (H, P, N))
    am_row = np.broadcast_to(np.ones((H, P, 1)), (H, P, N))
    assert _scan.tiled_applies(per_head, None, None)
    assert _scan.tiled_applies(per_head, am_head, per_head)
    assert not _scan.tiled_applies(per_row, None, None)
    assert not _scan.tiled_applies(per_head, am_row, None)
    assert not _scan.tiled_applies(per_head, np.ones((H, P, N)), None)
    assert not _scan.tiled_applies(per_head, None, per_row)


def test_tiled_kernels_are_instantiated():
    text = source("scan_tiled.cu")
    for t in ("float", "double"):
        for n in _scan.TILED_NPT:
            assert f"ROW_SCAN_TILED_INST_RP({t}, {n})" in text
    for rp in _scan.TILED_RP:
        assert f"ROW_SCAN_TILED_INST(T, NPT, {rp})" in text


def test_chunked_kernels_are_instantiated():
    scan, bwd = source("scan.cu"), source("scan_bwd.cu")
    for t in ("float", "double"):
        for n in (1, 2, 4, 8):
            assert f"ROW_SCAN_CHUNKED_INST({t}, {n})" in scan
            assert f"DECAY_GRAD_CHUNKED_INST({t}, {n}, {_scan.DECAY_CHUNK})" in bwd


# ---- Mamba-1 dedicated kernels (cuda/selective_scan.cu): configuration and emulated contract ----
def _ss_kw(rng, B, L, E, G, N, opts):
    kw = {}
    if "D" in opts:
        kw["D"] = rng.standard_normal(E)
    if "z" in opts:
        kw["z"] = rng.standard_normal((B, L, E))
    if "bias" in opts:
        kw["delta_bias"] = rng.standard_normal(E)
    if "sp" in opts:
        kw["delta_softplus"] = True
    if "init" in opts:
        kw["initial_state"] = rng.standard_normal((B, E, N))
    return kw


@pytest.mark.parametrize("N", [1, 2, 3, 5, 8, 16, 17, 33, 64])
@pytest.mark.parametrize("item", [4, 8])
@pytest.mark.parametrize("lanes", [None, 1, 2, 4, 8])
def test_ss_config_covers_every_state_and_is_instantiated(N, item, lanes):
    text = source("selective_scan.cu")
    cfg = m1.ss_config(2, 50, 192, 3, N, item, lanes=lanes)
    assert cfg is not None
    K, nper = cfg.lanes, cfg.nper
    assert K in m1.SS_LANES and nper in m1.SS_NPERS and K * nper >= N > K * nper // 2 or N == 1
    if lanes in m1.allowed_lanes(N):
        assert K == lanes
    assert cfg.blocks * cfg.channels_per_block >= 192 // 3 > (cfg.blocks - 1) * cfg.channels_per_block
    assert cfg.fwd_chunk % K == 0 and cfg.bwd_chunk % K == 0
    assert cfg.bwd_chunk * cfg.channels_per_block >= m1.SS_THREADS  # the final sums' scratch
    assert m1.ss_smem_fwd(K, nper, cfg.fwd_chunk, item) <= m1.SS_SMEM_LIMIT
    assert m1.ss_smem_bwd(K, nper, cfg.bwd_chunk, item) <= m1.SS_SMEM_LIMIT
    c = "float" if item == 4 else "double"
    assert f"SS_INST({c}, {K}, {nper}, {cfg.fwd_chunk}, {cfg.bwd_chunk})" in text


def test_ss_config_refuses_and_picks():
    assert m1.ss_config(2, 10, 64, 1, 65, 4) is None  # N > 64: the row path
    assert m1.ss_config(2, 0, 64, 1, 16, 4) is None   # L = 0: the row path
    assert m1.ss_config(8, 2048, 2048, 1, 16, 4).lanes == 4  # the benchmark: 64k threads
    assert m1.ss_config(1, 16, 64, 1, 16, 4).lanes == 8      # small: most lanes
    assert m1.ss_config(64, 16, 4096, 1, 16, 4).lanes == 2
    text = source("selective_scan.cu")
    assert f"#define SS_THREADS {m1.SS_THREADS}" in text
    assert all(line in text for line in m1.ss_instances())
    assert text.count("\nSS_INST(") == len(m1.ss_instances())


def test_ss_kernel_choice(monkeypatch):
    u, B = np.zeros((2, 5, 8)), np.zeros((2, 5, 2, 16))
    monkeypatch.delenv("MAMBA_CUPY_SS", raising=False)
    assert m1.kernel_choice() == "dedicated" and m1.dedicated_config(u, B) is not None
    monkeypatch.setenv("MAMBA_CUPY_SS", "row")
    assert m1.kernel_choice() == "row" and m1.dedicated_config(u, B) is None
    monkeypatch.setattr(m1, "SS_KERNEL", "dedicated")
    assert m1.dedicated_config(u, B) is not None
    monkeypatch.setattr(m1, "SS_KERNEL", "bogus")
    with pytest.raises(ValueError, match="dedicated"):
        m1.kernel_choice()
    monkeypatch.setattr(m1, "SS_KERNEL", None)
    monkeypatch.setenv("MAMBA_CUPY_SS_LANES", "2")
    monkeypatch.setenv("MAMBA_CUPY_SS", "dedicated")
    assert m1.dedicated_config(u, B).lanes == 2


SS_CASES = [  # (B, L, E, G, N, opts): L crosses chunks and is not a multiple of them
    (2, 37, 6, 2, 5, ("D", "z", "bias", "sp", "init")),
    (2, 37, 6, 2, 5, ()),
    (1, 70, 8, 1, 16, ("z", "sp")),
    (2, 19, 12, 3, 16, ("D", "bias", "init")),
    (1, 9, 4, 1, 1, ("D", "z", "sp", "init")),
    (1, 40, 130, 1, 3, ("D", "z", "bias", "sp")),  # two blocks of a group at K <= 2
]


@pytest.mark.parametrize("lanes", [None, 1, 2, 8])
@pytest.mark.parametrize("case", SS_CASES)
def test_ss_dedicated_glue_matches_reference(case, lanes):
    B, L, E, G, N, opts = case
    rng = _rng()
    args = (rng.standard_normal((B, L, E)), rng.standard_normal((B, L, E)),
            -np.exp(rng.standard_normal((E, N))), rng.standard_normal((B, L, G, N)),
            rng.standard_normal((B, L, G, N)))
    kw = _ss_kw(rng, B, L, E, G, N, opts)
    cfg = m1.ss_config(B, L, E, G, N, 8, lanes=lanes)
    y, fin = m1._fwd_ss(np, cfg, *args, **kw)
    want = REGISTRY["selective_scan"].reference(*args, **kw)
    assert rel(y, want[0]) < TOL and rel(fin, want[1]) < TOL
    cot = (rng.standard_normal((B, L, E)), rng.standard_normal((B, E, N)))
    for c in (cot, (cot[0], None), (None, cot[1])):
        g = m1._vjp_ss(np, cfg, c, *args, **kw)
        w = REGISTRY["selective_scan_vjp"].reference(c, *args, **kw)
        assert set(g) == set(w)
        for k in w:
            assert g[k].shape == w[k].shape and rel(g[k], w[k]) < 1e-10, (k, c[0] is None)


def test_ss_dedicated_is_the_op(monkeypatch):
    # the public op takes the dedicated path on NumPy arrays (the glue) unless told otherwise
    rng = _rng()
    args, kw = _m1_args(rng, L=11)
    calls = []
    real = m1.ss_forward
    monkeypatch.setattr(m1, "ss_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.delenv("MAMBA_CUPY_SS", raising=False)
    got = m1.selective_scan(*args, **kw)
    want = REGISTRY["selective_scan"].reference(*args, **kw)
    assert calls and rel(got[0], want[0]) < TOL
    calls.clear()
    monkeypatch.setenv("MAMBA_CUPY_SS", "row")
    got = m1.selective_scan(*args, **kw)
    assert not calls and rel(got[0], want[0]) < TOL


def test_ss_dedicated_float32_strong_decay():
    # float32 emulation (exp2 with A log2(e), as the kernel) keeps every gradient to rounding
    rng = _rng()
    args, kw = _m1_args(rng, L=256, strong=True)
    cot = (rng.standard_normal((2, 256, 6)), rng.standard_normal((2, 6, 4)))
    want = REGISTRY["selective_scan_vjp"].reference(cot, *args, **kw)

    def f32(a):
        return a.astype(np.float32) if isinstance(a, np.ndarray) else a

    cfg = m1.ss_config(2, 256, 6, 2, 4, 4)
    got = m1._vjp_ss(np, cfg, tuple(map(f32, cot)), *map(f32, args), **{k: f32(v) for k, v in kw.items()})
    for k in want:
        assert got[k].dtype == np.float32
        assert rel(got[k], want[k]) < 5e-6, k
    y, fin = m1._fwd_ss(np, cfg, *map(f32, args), **{k: f32(v) for k, v in kw.items()})
    wy, wf = REGISTRY["selective_scan"].reference(*args, **kw)
    assert y.dtype == np.float32 and rel(y, wy) < 5e-6 and rel(fin, wf) < 5e-6


def test_row_scan_checkpoints_feed_decay_grad_emulated():
    """The emulated contract: row_scan(checkpoints=True) holds S_{t-1} at t = c DECAY_CHUNK, and
    decay_grad from them equals decay_grad computing its own (same arithmetic: exactly)."""
    rng = _rng()
    B, L, R, H, P, N = 1, 70, 2, 2, 3, 4
    kw = dict(dA=-np.abs(rng.standard_normal((B, L, H, P))), V=rng.standard_normal((B, L, R, H, P)),
              K=rng.standard_normal((B, L, R, H, N)), coef=rng.random((B, L, H, P)),
              init=rng.standard_normal((B, H, P, N)))
    Y, _, fin, ck = _scan.row_scan(np, Q=rng.standard_normal((B, L, R, H, N)), checkpoints=True, **kw)
    assert ck.shape == (B, 3, H, P, N)
    assert np.array_equal(ck[:, 0], kw["init"])
    _, _, S32 = _scan.row_scan(np, **{**kw, "dA": kw["dA"][:, :32], "V": kw["V"][:, :32],
                                      "K": kw["K"][:, :32], "coef": kw["coef"][:, :32]})
    assert np.allclose(ck[:, 1], S32, rtol=1e-12, atol=1e-12)
    extra = dict(Vr=rng.standard_normal((B, L, R, H, P)), Kr=rng.standard_normal((B, L, R, H, N)),
                 dfin=rng.standard_normal((B, H, P, N)))
    own = _scan.decay_grad(np, **kw, **extra)[0]
    given = _scan.decay_grad(np, **kw, **extra, ck=ck)[0]
    assert np.allclose(given, own, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="reverse"):
        _scan.row_scan(np, **kw, reverse=True, checkpoints=True)


def test_gpu_check_kernel_tables_only_when_asked(monkeypatch):
    """gpu_check.py's decode kernel tables (GPU_CHECK_DECODE_KERNELS=1) are off unless asked:
    then no graph is queued for them (none kept alive) and none is profiled."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_host", path)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    monkeypatch.delenv("GPU_CHECK_DECODE_KERNELS", raising=False)
    assert gc._kernel_tables_on() is False
    for off in ("0", "", "yes"):
        monkeypatch.setenv("GPU_CHECK_DECODE_KERNELS", off)
        assert gc._kernel_tables_on() is False
    monkeypatch.setenv("GPU_CHECK_DECODE_KERNELS", "1")
    assert gc._kernel_tables_on() is True
