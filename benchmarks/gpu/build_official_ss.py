"""Build the official Mamba-1 CUDA selective scan (``selective_scan_cuda``) for the yardstick.

    python benchmarks/gpu/build_official_ss.py [SRC_ROOT] [BUILD_DIR]

SRC_ROOT (default ``.official``) is a mamba_ssm source tree holding ``csrc/selective_scan``
(not part of this repository: export it from the state-spaces/mamba repository); BUILD_DIR
(default ``/tmp/ss_build``) receives ``selective_scan_cuda*.so``, importable once BUILD_DIR is on
PYTHONPATH (benchmarks/gpu/run_device.sh puts it there). Compiled for the visible GPU's
architecture only, with the flags of mamba_ssm's setup.py, every .cu file in parallel
(MAX_JOBS, default the CPU count): about two minutes for sm_90 on 16 cores.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time


def main(argv: list[str]) -> int:
    src = os.path.abspath(argv[1] if len(argv) > 1 else ".official")
    build = os.path.abspath(argv[2] if len(argv) > 2 else "/tmp/ss_build")
    csrc = os.path.join(src, "csrc", "selective_scan")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cu"))) + [os.path.join(csrc, "selective_scan.cpp")]
    if not os.path.isdir(csrc) or len(sources) < 2:
        print(f"no mamba_ssm selective_scan sources under {csrc}: export csrc/selective_scan of "
              "state-spaces/mamba there first", file=sys.stderr)
        return 2
    import torch
    from torch.utils.cpp_extension import load

    if not torch.cuda.is_available():
        print("no CUDA device: the build targets the visible GPU's architecture", file=sys.stderr)
        return 2
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    os.makedirs(build, exist_ok=True)
    t0 = time.time()
    mod = load(
        name="selective_scan_cuda",
        sources=sources,
        extra_include_paths=[csrc],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=[
            "-O3", "-std=c++17",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
            "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
            f"-gencode=arch=compute_{arch},code=sm_{arch}",
        ],
        build_directory=build,
        verbose=False,
    )
    # load() leaves the .so in the build directory under the module's name: importable from there
    so = mod.__file__
    if os.path.dirname(os.path.abspath(so)) != build:
        shutil.copy(so, build)
    print(f"built {so} for sm_{arch} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
