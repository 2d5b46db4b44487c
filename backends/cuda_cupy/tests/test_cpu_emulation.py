"""cuda_cupy kernels run on the CPU: their CUDA source compiled by the host's g++ against
cpu_emulation/cuda_on_cpu.h (a std::thread per CUDA thread, barriers for __syncthreads and the
warp shuffles), so their index math, control flow and shared-memory protocol are tested where no
GPU is (CI). Float arithmetic is the host's: results are compared with a tolerance against
NumPy in float64; the GPU tests (test_gpu.py, test_mixer_steps_gpu.py) check the compiled
kernels on a device.

Covered: linear.cu's GEMV (every instance family, the group scales, and the split of a row's K
over several warps of a block, ``MAMBA_CUPY_GEMV_SPLIT``)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mamba_backend_cuda_cupy.kernels import linear as lin

HERE = Path(__file__).parent / "cpu_emulation"
CUDA = Path(lin.__file__).resolve().parent.parent / "cuda"
TOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(scope="module")
def gemv_binary(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++ on this machine: the CPU emulation of the CUDA kernels needs a C++20 "
                    "compiler (install g++ >= 11)")
    out = tmp_path_factory.mktemp("emu") / "linear_gemv_cpu"
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-I", str(CUDA), "-o", str(out),
           str(HERE / "linear_gemv_cpu.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and "barrier" in res.stderr and "No such file" in res.stderr:
        pytest.skip(f"{cxx} has no C++20 <barrier> (g++ >= 11 needed): {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-4000:]
    return out


def run_gemv(binary, tmp_path, X, W, bias=None, scales=None, mode="0", sms=132, ks=None,
             blocks=None):
    """linear's launches (kernels/linear.py _launch: plan, vector width, FX) on the CPU.
    scales: None or (part, groups, skip, eps). ks / blocks override the plan's (to reach paths
    the plan does not take, e.g. a grid that walks several row batches a block)."""
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
    for m0, m, mr, nr, nblk, k in lin.plan(M, N, it, K // vec, sms, mode):
        k = k if ks is None else ks
        nblk = (max(1, -(-N // (lin.LINEAR_WARPS // k * nr))) if blocks is None else blocks)
        head = np.array([it, vec, mr, nr, fx, k, nblk, m, N, K, K, K, N, npart, groups, skip,
                         bias is not None, part is not None], np.int64)
        fin, fout = tmp_path / "in.bin", tmp_path / "out.bin"
        with open(fin, "wb") as f:
            f.write(head.tobytes() + np.float64(eps).tobytes())
            for a in (X[m0:m0 + m], W, bias, None if part is None else part[m0:m0 + m]):
                if a is not None:
                    f.write(np.ascontiguousarray(a, dt).tobytes())
        res = subprocess.run([str(binary), str(fin), str(fout)], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        Y[m0:m0 + m] = np.fromfile(fout, dt).reshape(m, N)
    return Y


def _want(X, W, bias, scales):
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
