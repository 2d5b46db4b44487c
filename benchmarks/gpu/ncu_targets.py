"""One call of a scan, forward and backward, between cudaProfilerStart/Stop: a target for Nsight
Compute (ncu), which reads the hardware counters of every kernel in that window.

    ncu --profile-from-start off --clock-control none --section SpeedOfLight ... \\
        python benchmarks/gpu/ncu_targets.py TARGET

Targets (the yardstick's shapes and inputs: B=8, L=2048; benchmarks/gpu/yardstick.py):
    m1_ours        torch_triton selective_scan + selective_scan_vjp, bf16 (E=2048, N=16)
    m3_ours        torch_triton Mamba-3 SISO whole op forward + backward, bf16 (angles,
                   mamba3_rope_scan, gate and their VJPs; H=32 P=64 N=128), as the yardstick
    m3_official    mamba_ssm's mamba3_siso_combined forward + backward on the same inputs (needs
                   the mamba_ssm source on PYTHONPATH; YARDSTICK_M3_AUTOTUNE=reduced as there)
    m3_f32_fwd     torch_triton mamba3_scan forward alone, float32 inputs (per-head B, C)

Each target runs twice first (Triton compiles and autotunes outside the window), then once
inside it. Prints the wall time of the profiled call (under ncu: replay time, not a timing).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yardstick as Y  # noqa: E402  (shapes, backend, the official autotune cut)


def _m1():
    be, dev, bf = Y.backend(), "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    B, L, E, N = Y.B, Y.L, Y.E, Y.N1
    u = torch.randn(B, L, E, device=dev, dtype=bf, generator=g)
    delta = (torch.rand(B, L, E, device=dev, generator=g) * 2 - 4).to(bf)
    A = -torch.exp(torch.randn(E, N, device=dev, generator=g) * 0.5)
    Bm = torch.randn(B, L, 1, N, device=dev, dtype=bf, generator=g)
    Cm = torch.randn(B, L, 1, N, device=dev, dtype=bf, generator=g)
    D = torch.ones(E, device=dev)
    z = torch.randn(B, L, E, device=dev, dtype=bf, generator=g)
    db = torch.rand(E, device=dev, generator=g) - 4
    dy = torch.randn(B, L, E, device=dev, dtype=bf, generator=g)
    args = (u, delta, A, Bm, Cm, D, z, db, True)
    return lambda: (be.ops.selective_scan(*args), be.ops.selective_scan_vjp((dy, None), *args))


def _m3_inputs(dtype=torch.bfloat16):
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(2)
    B, L, H, P, N = Y.B, Y.L, Y.H, Y.P, Y.N
    S = N // 4
    t = dict(
        q=torch.randn(B, L, 1, N, device=dev, dtype=dtype, generator=g),
        k=torch.randn(B, L, 1, N, device=dev, dtype=dtype, generator=g),
        v=torch.randn(B, L, H, P, device=dev, dtype=dtype, generator=g),
        dt=torch.nn.functional.softplus(torch.rand(B, L, H, device=dev, generator=g) * 2 - 4),
        A=-(torch.rand(B, L, H, device=dev, generator=g) + 0.5),
        trap=torch.rand(B, L, H, device=dev, generator=g),
        qb=torch.ones(H, N, device=dev), kb=torch.ones(H, N, device=dev),
        ang=torch.randn(B, L, S, device=dev, generator=g),
        D=torch.ones(H, device=dev),
        z=torch.randn(B, L, H, P, device=dev, dtype=dtype, generator=g),
        dy=torch.randn(B, L, 1, H, P, device=dev, dtype=dtype, generator=g))
    return t


def _m3_ours():
    be, t = Y.backend(), _m3_inputs()
    kw = dict(B_bias=t["kb"].unsqueeze(0), C_bias=t["qb"].unsqueeze(0), D=t["D"], chunk_size=64)

    def run():
        phi, _ = be.ops.mamba3_angles(t["ang"], t["dt"])
        rs = (t["v"], t["dt"], t["A"], t["trap"], t["k"].unsqueeze(2), t["q"].unsqueeze(2), phi)
        y = be.ops.mamba3_rope_scan(*rs, **kw)[0][:, :, 0]
        gg = be.ops.silu_gate_vjp(t["dy"][:, :, 0], y, t["z"])
        out = be.ops.silu_gate(y, t["z"])
        gr = be.ops.mamba3_rope_scan_vjp((gg["x"].unsqueeze(2), None, None, None), *rs, **kw)
        return out, be.ops.mamba3_angles_vjp((gr["phi"], None), t["ang"], t["dt"])
    return run


def _m3_official():
    import math

    Y._reduce_autotune()
    from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined

    t = _m3_inputs()
    B, L, H, S = Y.B, Y.L, Y.H, Y.N // 4
    ADT = (t["A"] * t["dt"]).transpose(1, 2).contiguous()
    DT = t["dt"].transpose(1, 2).contiguous()
    TR = torch.logit(t["trap"].clamp(1e-4, 1 - 1e-4)).transpose(1, 2).contiguous()
    angh = (torch.tanh(t["ang"]) * math.pi).unsqueeze(2).expand(B, L, H, S).contiguous()
    leaves = [x.detach().requires_grad_() if x.is_floating_point() else x
              for x in (t["q"], t["k"], t["v"], ADT, DT, TR, t["qb"], t["kb"], angh)]

    def run():
        y = mamba3_siso_combined(*leaves, D=t["D"], Z=t["z"], chunk_size=64)
        y.backward(t["dy"][:, :, 0])
    return run


def _m3_f32_fwd():
    be, t = Y.backend(), _m3_inputs(torch.float32)
    Bh = (t["k"] + t["kb"]).unsqueeze(2).contiguous()  # (B, L, 1, H, N): per head, as after rope
    Ch = (t["q"] + t["qb"]).unsqueeze(2).contiguous()
    args = (t["v"], t["dt"], t["A"], t["trap"], Bh, Ch, t["D"], None, 64)
    return lambda: be.ops.mamba3_scan(*args)


TARGETS = {"m1_ours": _m1, "m3_ours": _m3_ours, "m3_official": _m3_official, "m3_f32_fwd": _m3_f32_fwd}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in TARGETS:
        print(f"usage: ncu_targets.py TARGET, one of {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("ncu_targets: needs a CUDA GPU", file=sys.stderr)
        return 2
    fn = TARGETS[argv[0]]()
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
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
