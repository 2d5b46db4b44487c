"""cuda_cupy kernels run on the CPU: their CUDA source compiled by the host's g++ against
cpu_emulation/cuda_on_cpu.h (a std::thread per CUDA thread, barriers for __syncthreads and the
warp shuffles), so their index math, control flow and shared-memory protocol are tested where no
GPU is (CI). Float arithmetic is the host's: results are compared with a tolerance against
NumPy in float64; the GPU tests (test_gpu.py, test_mixer_steps_gpu.py) check the compiled
kernels on a device.

Covered: linear.cu's GEMV (every instance family, the group scales, and the split of a row's K
over several warps of a block, ``MAMBA_CUPY_GEMV_SPLIT``); mixer_step.cu's fused Mamba-2 decode
step, launched by the backend's own host code (kernels/mixer_steps.py ``mixer``, on NumPy arrays,
its ``function`` and ``launch`` routed to the CPU harness) against the float64 composition;
norm.cu's forward (the gated, grouped RMSNorm and add_rmsnorm: decode's norm kernel) against the
float64 references. With the GEMV, that is every kernel of cuda_cupy's Mamba-2 decode step."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mamba_backend_cuda_cupy.kernels import linear as lin

HERE = Path(__file__).parent / "cpu_emulation"
CUDA = Path(lin.__file__).resolve().parent.parent / "cuda"
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _build(tmp_path_factory, harness: str) -> Path:
    """cpu_emulation/HARNESS.cpp compiled with the host's g++ (skip, with the reason printed,
    where there is none, or one without C++20's <barrier>)."""
    cxx = shutil.which("g++")
    if cxx is None:
        print("SKIP: no g++ on this machine: the CPU emulation of the CUDA kernels needs a C++20 "
              "compiler (install g++ >= 11)")
        pytest.skip("no g++ on this machine: the CPU emulation of the CUDA kernels needs a C++20 "
                    "compiler (install g++ >= 11)")
    out = tmp_path_factory.mktemp("emu") / harness
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-I", str(CUDA), "-o", str(out),
           str(HERE / f"{harness}.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and "barrier" in res.stderr and "No such file" in res.stderr:
        print(f"SKIP: {cxx} has no C++20 <barrier> (g++ >= 11 needed)")
        pytest.skip(f"{cxx} has no C++20 <barrier> (g++ >= 11 needed): {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def gemv_binary(tmp_path_factory):
    return _build(tmp_path_factory, "linear_gemv_cpu")


@pytest.fixture(scope="module")
def step_binary(tmp_path_factory):
    return _build(tmp_path_factory, "mixer_step_cpu")


@pytest.fixture(scope="module")
def norm_binary(tmp_path_factory):
    return _build(tmp_path_factory, "norm_cpu")


_KINDS = {np.dtype(np.int32): 2, np.dtype(np.int64): 3, np.dtype(np.float32): 4,
          np.dtype(np.float64): 5}


def cpu_launch(binary, workdir, name, grid, block, args):
    """A kernel launch as kernels/_launch.py's ``launch`` takes it (NumPy arrays for CuPy
    arrays, NumPy scalars, np.uint64(0) for a null pointer), run by a launcher.h harness on the
    CPU. Arrays passed twice (the same memory) are one buffer; every array is written back."""
    grid = tuple(grid) + (1,) * (3 - len(grid))
    bufs, index, rows = [], {}, []
    for a in args:
        if isinstance(a, np.ndarray):
            assert a.flags.c_contiguous, "the launcher takes contiguous arrays"
            key = (a.__array_interface__["data"][0], a.nbytes)
            if key not in index:
                index[key] = len(bufs)
                bufs.append(a)
            rows.append((0, index[key]))
        elif isinstance(a, np.uint64) and int(a) == 0:
            rows.append((1, 0))
        else:
            kind = _KINDS[np.asarray(a).dtype]
            raw = (int(a) if kind <= 3
                   else int(np.frombuffer(np.float64(a).tobytes(), np.int64)[0]))
            rows.append((kind, raw))
    name_b = name.encode()
    head = [*grid, int(block[0]), len(bufs), len(rows), len(name_b)]
    fin, fout = Path(workdir) / "launch.in", Path(workdir) / "launch.out"
    with open(fin, "wb") as f:
        f.write(np.asarray(head, np.int64).tobytes() + name_b)
        for a in bufs:
            f.write(np.int64(a.nbytes).tobytes() + a.tobytes())
        f.write(np.asarray(rows, np.int64).reshape(-1).tobytes())
    res = subprocess.run([str(binary), str(fin), str(fout)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    data, off = fout.read_bytes(), 0
    for a in bufs:
        a[...] = np.frombuffer(data, a.dtype, a.size, off).reshape(a.shape)
        off += a.nbytes


def run_gemv(binary, tmp_path, X, W, bias=None, scales=None, mode="0", sms=132, ks=None,
             blocks=None):
    """linear's launches on the CPU, with the arguments kernels/linear.py ``_launch`` passes (its
    plan, vector width and FX). scales: None or (part, groups, skip, eps). ks / blocks override
    the plan's (to reach paths the plan does not take, e.g. a grid that walks several row batches
    a block)."""
    M, K = X.shape
    N = W.shape[0]
    dt = X.dtype
    it = dt.itemsize
    fx, part, groups, skip, eps, npart = 0, None, 1, 0, 0.0, 0
    if scales is not None:
        part, groups, skip, eps = scales
        npart = part.shape[1]
        fx = 1 if groups == 1 and skip == 0 else 2
    vec = lin.vec_width(it, K, (K, K, skip, (K - skip) // groups), (0, 0))
    Y = np.full((M, N), np.nan, dt)
    null, i32, i64 = np.uint64(0), np.int32, np.int64
    for m0, m, mr, nr, nblk, k in lin.plan(M, N, it, K // vec, sms, mode):
        k = k if ks is None else ks
        nblk = (max(1, -(-N // (lin.LINEAR_WARPS // k * nr))) if blocks is None else blocks)
        ym = np.ascontiguousarray(Y[m0:m0 + m])
        cpu_launch(binary, tmp_path, f"linear_gemv<{'float' if it == 4 else 'double'}, {vec}, "
                   f"{mr}, {nr}, {fx}, {k}>", (nblk,), (lin.LINEAR_WARPS * 32,),
                   (np.ascontiguousarray(X[m0:m0 + m]), W, null if bias is None else bias, ym,
                    i32(m), i32(N), i32(K), i64(K), i64(K), i64(N),
                    null if part is None else np.ascontiguousarray(part[m0:m0 + m]),
                    i32(npart), i32(groups), i32(skip), dt.type(eps)))
        Y[m0:m0 + m] = ym
    return Y


def _want(X, W, bias, scales):
    """X W^T + bias in float64, X's columns k >= skip scaled by their group's 1 / sqrt(sum of
    its partials / group size + eps) first when scales = (part, groups, skip, eps) is given."""
    X = X.astype(np.float64)
    if scales is not None:
        part, groups, skip, eps = scales
        M, K = X.shape
        gsz, npg = (K - skip) // groups, part.shape[1] // groups
        for g in range(groups):
            rs = 1.0 / np.sqrt(part[:, g * npg:(g + 1) * npg].astype(np.float64).sum(1) / gsz + eps)
            X[:, skip + g * gsz:skip + (g + 1) * gsz] *= rs[:, None]
    y = X @ W.astype(np.float64).T
    return y if bias is None else y + bias


def _rel(got, want):
    assert not np.any(np.isnan(got)), "an output the kernel never wrote"
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300)


# (M, N, K, scales: None / "row" (one group, FX 1) / (groups, skip) (FX 2)):
# the 370M Mamba-2's out_proj at batch 1 (N cut to 37: row groups past N in the last block), a
# K that is no multiple of 4 (scalar loads), several row tiles (20 = 16 + 4), MR 4 and 16
# (NR 2 and 4 rows a warp), K shorter than a round (per < 32 U: no full round)
CASES = [(1, 37, 2048, "row"), (1, 37, 2048, None), (3, 21, 1024, (4, 16)), (20, 9, 260, None),
         (16, 37, 512, (2, 0)), (2, 5, 24, (1, 8)), (8, 13, 72, "row")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ks", [1, 2, 4])
@pytest.mark.parametrize("M,N,K,sc", CASES)
def test_gemv_on_cpu_matches_numpy(gemv_binary, tmp_path, M, N, K, sc, ks, dtype):
    rng = np.random.default_rng(M * 1000 + K)
    X, W, b = rng.standard_normal((M, K)), rng.standard_normal((N, K)), rng.standard_normal(N)
    scales = None
    if sc == "row":
        scales = (rng.uniform(0.5, 3.0, (M, 8)), 1, 0, 1e-5)
    elif sc is not None:
        groups, skip = sc
        scales = (rng.uniform(0.5, 3.0, (M, 4 * groups)), groups, skip, 1e-5)
    cast = [None if a is None else np.asarray(a, dtype) for a in (X, W, b)]
    sc_cast = None if scales is None else (np.asarray(scales[0], dtype),) + scales[1:]
    got = run_gemv(gemv_binary, tmp_path, *cast, scales=sc_cast, mode=str(ks) if ks > 1 else "0")
    want = _want(cast[0], cast[1], cast[2], sc_cast)
    assert _rel(got, want) < TOL[dtype], (M, N, K, sc, ks)


@pytest.mark.parametrize("ks", [1, 2, 4])
def test_gemv_on_cpu_walks_several_row_batches_a_block(gemv_binary, tmp_path, ks):
    """A grid smaller than the rows: every block takes several trips (the shared partial sums
    of a split row are reused trip after trip, behind the block's barriers)."""
    rng = np.random.default_rng(7)
    M, N, K = 2, 45, 512
    X, W, b = rng.standard_normal((M, K)), rng.standard_normal((N, K)), rng.standard_normal(N)
    got = run_gemv(gemv_binary, tmp_path, X, W, b, ks=ks, blocks=3)
    assert _rel(got, _want(X, W, b, None)) < TOL[np.float64]


def test_gemv_split_on_cpu_is_the_auto_plan_at_decode_shapes(gemv_binary, tmp_path):
    """MAMBA_CUPY_GEMV_SPLIT=auto at the 370M model's batch-1 out_proj shape (float32, 2048
    inputs a row): the plan splits K over 2 warps, and the kernel's result agrees with ks = 1."""
    rng = np.random.default_rng(11)
    X, W = rng.standard_normal((1, 2048), np.float32), rng.standard_normal((64, 2048), np.float32)
    assert [p[-1] for p in lin.plan(1, 1024, 4, 2048 // 4, 132, "auto")] == [2]
    # 64 rows on "4 multiprocessors" keep the same warps per multiprocessor: ks = 2 again
    assert [p[-1] for p in lin.plan(1, 64, 4, 2048 // 4, 4, "auto")] == [2]
    split = run_gemv(gemv_binary, tmp_path, X, W, mode="auto", sms=4)
    one = run_gemv(gemv_binary, tmp_path, X, W, mode="0")
    want = _want(X, W, None, None)
    assert _rel(split, want) < TOL[np.float32] and _rel(one, want) < TOL[np.float32]


# ---- mixer_step.cu: the fused Mamba-2 decode step -------------------------------------------
from test_mixer_steps_gpu import CONFIGS, random_mixer, rel  # noqa: E402

from mamba_backend_cuda_cupy.kernels import mixer_steps as ms  # noqa: E402
from mamba_core.models import mamba2  # noqa: E402

STEP_TOL = {"float32": 3e-5, "float64": 1e-11}  # as test_mixer_steps_gpu's


def _out_proj(y, part, params, cfg):
    """out_proj after the fused step, in NumPy: linear_group_scaled's math (``_want``: the gated
    norm's division by each group's RMS from the kernel's per-block partial sums) or a plain
    product."""
    scales = None if part is None else (part, cfg.ngroups, cfg.d_mlp, ms._norm_eps())
    return _want(y, params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None, scales)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_step_on_cpu_matches_composition(step_binary, tmp_path, monkeypatch, name, batch,
                                               dtype, inplace):
    """Three consecutive steps: kernels/mixer_steps.py ``mixer`` (its plan, arguments, counters
    and in-place rule) with the kernel on the CPU, against ``mamba2.composed_step`` on the float64
    reference; in place, the cache arrays are the ones written."""
    from mamba_core.reference_backend import REFERENCE

    monkeypatch.setattr(ms, "function", lambda cu, name: name)
    monkeypatch.setattr(ms, "launch", lambda fn, grid, block, args:
                        cpu_launch(step_binary, tmp_path, fn, grid, block, args))
    cfg, params, cache, next_u = random_mixer(CONFIGS[name], batch)
    p = {k: v.astype(dtype) for k, v in params.items()}
    ref_cache = dict(cache)
    mine = {k: np.ascontiguousarray(v, dtype) for k, v in cache.items()}
    for _ in range(3):
        u = next_u()
        want, ref_cache = mamba2.composed_step(REFERENCE, params, cfg, u, ref_cache)
        zx = u.astype(dtype) @ p["in_proj.weight"].T
        if cfg.bias:
            zx = zx + p["in_proj.bias"]
        y, part, ncs, nss = ms.mixer(np.ascontiguousarray(zx, dtype), p, cfg, mine, inplace)
        if inplace:
            assert ncs is mine["conv_state"] and nss is mine["ssm_state"]
        got = _out_proj(y, part, p, cfg)
        mine = {"conv_state": ncs, "ssm_state": nss}
        for label, a, b in [("out", got, want), *((k, mine[k], ref_cache[k]) for k in mine)]:
            assert rel(a, b) < STEP_TOL[dtype], (name, label)


def test_cpu_harnesses_hold_the_launched_instances():
    """The harnesses' tables name every instance the host code launches."""
    text = (HERE / "mixer_step_cpu.cpp").read_text()
    for t in ("float", "double"):
        for npt in ms.NPTS:
            assert f'"mamba2_step<{t}, {npt}>"' in text, (t, npt)
    assert "LINEAR_INSTANCES(GEMV_ENTRY)" in (HERE / "linear_gemv_cpu.cpp").read_text()
    text = (HERE / "norm_cpu.cpp").read_text()
    for t, v in (("float", 1), ("float", 4), ("double", 1), ("double", 2)):
        assert f'"rmsnorm_fwd_v2<{t}, {v}>"' in text


# ---- norm.cu: the forward of the gated, grouped RMSNorm and of add_rmsnorm ------------------
from mamba_backend_cuda_cupy.kernels import norm as nk  # noqa: E402
from mamba_core.ops import REGISTRY  # noqa: E402


def run_norm(binary, tmp_path, x, residual, z, weight, eps, gs, nbg):
    """kernels/norm.py ``_fwd``'s launch on the CPU (its vector width, grid and threads):
    (Y, RO) for x (M, E)."""
    M, E = x.shape
    dt = x.dtype
    V = nk.vec_width(dt.itemsize, gs, E, [0])  # NumPy buffers: the harness aligns them to 64 B
    Y = np.zeros((M, E), dt)
    RO = np.zeros((M, E), dt) if residual is not None else None
    null = np.uint64(0)
    opt = lambda a: null if a is None else a  # noqa: E731
    cpu_launch(binary, tmp_path, f"rmsnorm_fwd_v2<{'float' if dt.itemsize == 4 else 'double'}, {V}>",
               (M, E // gs), (nk.fwd_threads(gs),),
               (x, opt(residual), opt(z), weight, Y, opt(RO), np.int32(E), np.int32(gs),
                dt.type(eps), np.int32(nbg)))
    return Y, RO


# (M, E, group size, residual, z, norm_before_gate): decode's add_rmsnorm (d_model 1024, 48 at
# batch 3), the gated norm of one and of 4 groups, either gate order, a group that is no
# multiple of 4 (scalar loads) and one wider than a block's 8 channels a thread x 32 threads
NORM_CASES = [(1, 1024, 1024, True, False, False), (3, 48, 48, True, False, False),
              (2, 256, 256, False, True, False), (3, 256, 64, False, True, True),
              (2, 60, 15, False, True, False), (1, 520, 520, False, False, False)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("M,E,gs,res,gate,nbg", NORM_CASES)
def test_norm_forward_on_cpu_matches_reference(norm_binary, tmp_path, M, E, gs, res, gate, nbg,
                                               dtype):
    rng = np.random.default_rng(M * 100 + E)
    x, w = rng.standard_normal((M, E)), rng.uniform(0.5, 1.5, E)
    r = rng.standard_normal((M, E)) if res else None
    z = rng.standard_normal((M, E)) if gate else None
    c = lambda a: None if a is None else np.ascontiguousarray(a, dtype)  # noqa: E731
    Y, RO = run_norm(norm_binary, tmp_path, c(x), c(r), c(z), c(w), 1e-5, gs, nbg)
    X, R, Z, W = (None if a is None else c(a).astype(np.float64) for a in (x, r, z, w))
    if res:
        want, want_r = REGISTRY["add_rmsnorm"].reference(X, R, W, 1e-5)
        assert _rel(RO, want_r) < STEP_TOL[dtype]
    else:
        want = REGISTRY["rmsnorm"].reference(X, W, 1e-5, z=Z, group_size=gs, norm_before_gate=nbg)
    assert _rel(Y, want) < STEP_TOL[dtype], (M, E, gs)
