"""One call of a scan, forward and backward, between cudaProfilerStart/Stop: a target for Nsight
Compute (ncu), which reads the hardware counters of every kernel in that window.

    ncu --profile-from-start off --clock-control none --section SpeedOfLight ... \\
        python benchmarks/gpu/ncu_targets.py TARGET

Targets (the yardstick's shapes and inputs: B=8, L=2048; benchmarks/gpu/yardstick.py):
    m1_ours        torch_triton selective_scan + selective_scan_vjp, bf16 (E=2048, N=16)
    m1_official    mamba_ssm's selective_scan_fn forward + backward on the same inputs, in its
                   channels-first layout (needs its CUDA extension built:
                   benchmarks/gpu/build_official_ss.py)
    m3_ours        torch_triton Mamba-3 SISO whole op forward + backward, bf16 (angles,
                   mamba3_rope_scan's saving form, gate and their VJPs; H=32 P=64 N=128), as the
                   yardstick
    m3_official    mamba_ssm's mamba3_siso_combined forward + backward on the same inputs (needs
                   the mamba_ssm source on PYTHONPATH; YARDSTICK_M3_AUTOTUNE=reduced as there)
    m3_f32_fwd     torch_triton mamba3_scan forward alone, float32 inputs (per-head B, C)

Each target runs twice first (Triton compiles and autotunes outside the window), then once
inside it. Prints the wall time of the profiled call (under ncu: replay time, not a timing).

    python benchmarks/gpu/ncu_targets.py TARGET --kernels [REPS]

runs the target REPS times (default 20) under torch.profiler instead, no ncu needed, and prints
each kernel's device time per call (the sum over a call's launches of that kernel, averaged over
the calls), largest first, with the whole call's kernel time: where a target's time goes,
without Nsight's replay.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yardstick as Y  # noqa: E402  (shapes, inputs, backend, the official autotune cut)


def _m1():
    be = Y.backend()
    args, dy = Y.mamba1_inputs()
    return lambda: (be.ops.selective_scan(*args), be.ops.selective_scan_vjp((dy, None), *args))


def _m3_ours():
    return Y.mamba3_whole_fb(Y.backend(), Y.mamba3_inputs())


def _m3_official():
    Y._reduce_autotune()
    from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined

    t = Y.mamba3_inputs()
    leaves = [a.detach().requires_grad_() if a.is_floating_point() else a for a in Y.mamba3_official_args(t)]

    Dl, zl = t["D"].detach().requires_grad_(), t["z"].detach().requires_grad_()

    def run():  # as the yardstick times it: D and z leaves, no .grad accumulation
        y = mamba3_siso_combined(*leaves, D=Dl, Z=zl, chunk_size=64)
        Y.fresh_backward(y, t["dy"][:, :, 0], leaves + [Dl, zl])
    return run


def _m3_f32_fwd():
    be, t = Y.backend(), Y.mamba3_inputs(torch.float32)
    Bh = (t["k"] + t["kb"]).unsqueeze(2).contiguous()  # (B, L, 1, H, N): per head, as after rope
    Ch = (t["q"] + t["qb"]).unsqueeze(2).contiguous()
    args = (t["v"], t["dt"], t["A"], t["trap"], Bh, Ch, t["D"], None, 64)
    return lambda: be.ops.mamba3_scan(*args)


def _m1_official():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    (u, delta, A, Bm, Cm, D, z, db, _), dy = Y.mamba1_inputs()
    ut, dt_, zt = (t.transpose(1, 2).contiguous() for t in (u, delta, z))
    Bt, Ct = (t[:, :, 0].transpose(1, 2).contiguous() for t in (Bm, Cm))
    dyt = dy.transpose(1, 2).contiguous()
    leaves = [t.detach().requires_grad_() for t in (ut, dt_, A, Bt, Ct, D, zt, db)]

    def run():
        Y.fresh_backward(selective_scan_fn(*leaves, True), dyt, leaves)
    return run


def kernel_table(fn, reps: int = 20, device: str = "CUDA") -> list:
    """[(kernel name, us per call, launches per call)] of ``fn`` under torch.profiler, largest
    first (device time summed over a call's launches of each kernel, averaged over ``reps``).
    ``device="CPU"`` tables the CPU operators instead (the tests' check of the arithmetic)."""
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if device == "CUDA" else (lambda: None)
    sync()
    with profile(activities=[getattr(ProfilerActivity, device)]) as prof:
        for _ in range(reps):
            fn()
        sync()
    rows = {}
    for ev in prof.events():
        if ev.device_type.name != device:
            continue
        us, n = rows.get(ev.name, (0.0, 0))
        rows[ev.name] = (us + ev.time_range.elapsed_us(), n + 1)  # a kernel's own span
    return sorted(((k, us / reps, n / reps) for k, (us, n) in rows.items()), key=lambda r: -r[1])


TARGETS = {"m1_ours": _m1, "m1_official": _m1_official, "m3_ours": _m3_ours,
           "m3_official": _m3_official, "m3_f32_fwd": _m3_f32_fwd}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    table, reps = "--kernels" in argv, 20
    if table:
        i = argv.index("--kernels")
        argv = argv[:i] + argv[i + 1:]
        if i < len(argv) and argv[i].isdigit():
            reps = int(argv.pop(i))
    if len(argv) != 1 or argv[0] not in TARGETS:
        print(f"usage: ncu_targets.py TARGET [--kernels [REPS]], TARGET one of {', '.join(TARGETS)}",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("ncu_targets: needs a CUDA GPU", file=sys.stderr)
        return 2
    fn = TARGETS[argv[0]]()
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    if table:
        rows = kernel_table(fn, reps)
        print(f"{argv[0]}: {sum(r[1] for r in rows):.1f} us of kernels a call ({reps} calls)")
        for name, us, n in rows:
            print(f"  {us:9.1f} us  x{n:<5.1f} {name[:150]}")
        return 0
    cudart = torch.cuda.cudart()
    cudart.cudaProfilerStart()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    cudart.cudaProfilerStop()
    print(f"{argv[0]}: profiled call {1e3 * (time.perf_counter() - t0):.1f} ms wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
