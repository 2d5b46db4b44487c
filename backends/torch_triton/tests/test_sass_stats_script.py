"""benchmarks/sass_stats.py (static SASS cost of a Triton kernel, compiled on the CPU) works
with the installed Triton: it compiles a kernel for sm_90 without a GPU and reports its
registers and instruction counts. It runs in a process of its own without TRITON_INTERPRET
(interpreted kernels cannot be compiled), as CI's torch_triton tests set it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import BENCHMARKS, load_benchmark_script

pytest.importorskip("triton", reason="triton is not installed")


@pytest.fixture
def tool():
    return load_benchmark_script("sass_stats.py")


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(BENCHMARKS / "sass_stats.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_compiles_a_kernel_for_sm90_on_the_cpu(tool, tmp_path):
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        get_ptxas(90)
    except Exception as exc:  # noqa: BLE001
        print(f"SKIP: this Triton has no NVIDIA toolchain to compile with: {exc}")
        pytest.skip(f"this Triton has no NVIDIA toolchain to compile with: {exc}")
    res = _run("selective_scan:_ss_step_kernel", "BE=32", "NP=16", "HAS_D=True", "HAS_Z=True",
               "HAS_BIAS=False", "SOFTPLUS=True", "--warps", "4", "--ints", "N,Eg",  # S: a pointer
               "--dump", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    line = res.stdout.strip().splitlines()[-1]
    got = dict(re.findall(r"(\w+)=(\d+)", line))
    assert int(got["registers"]) > 0 and int(got["sass"]) > 50 and int(got["mufu"]) > 0, line
    assert 0 <= int(got["loop"]) < int(got["sass"]), line  # the step kernel has no token loop
    assert "sm_90" in line and (tmp_path / "_ss_step_kernel.sass").read_text().count("MUFU") > 0


def test_names_what_is_wrong(tool):
    with pytest.raises(SystemExit, match="MODULE:KERNEL"):
        tool.main(["selective_scan"])
    res = _run("selective_scan:_ss_step_kernel", "--warps", "4")
    assert res.returncode != 0 and "no default" in res.stderr
    res = _run("selective_scan:_ss_step_kernel", "BE=32", "NP=16", "HAS_D=True", "HAS_Z=True",
               "HAS_BIAS=False", "SOFTPLUS=True", "BOGUS=1")
    assert res.returncode != 0 and "not constexpr parameters" in res.stderr
    res = subprocess.run([sys.executable, str(BENCHMARKS / "sass_stats.py"),
                          "selective_scan:_ss_step_kernel"], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert res.returncode != 0 and "run without it" in res.stderr
