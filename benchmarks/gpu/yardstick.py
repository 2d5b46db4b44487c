"""Our torch_triton kernels against the official mamba_ssm kernels, in one process on one GPU.

    PYTHONPATH=<mamba_ssm source> python benchmarks/gpu/yardstick.py OUT_DIR

Shapes of the torch_triton issue: B=8, L=2048, d_inner 2048 (Mamba-1: N=16; Mamba-2/3: H=32,
P=64, N=128), bf16 activations, forward and forward+backward; batch-1 and batch-16 decode of a
~370M random-weight Mamba-2 LM in bf16 with CUDA graphs. Medians of triton.testing.do_bench.
Each figure is printed as ours / official (below 1 means we are faster). Every part runs in its
own try/except so one failure does not hide the rest. Writes OUT_DIR/yardstick.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback

import torch
import triton

B, L, E, H, P, N1, N = 8, 2048, 2048, 32, 64, 16, 128
RESULTS: dict = {"device": None, "rows": [], "errors": {}}


@contextlib.contextmanager
def _env(name, value):
    """The environment variable ``name`` set to ``value`` inside the block, then restored."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _config(table: dict, key: str, value):
    """``table[key]`` (a kernel module's CONFIG entry) set to ``value`` inside the block."""
    old = table[key]
    table[key] = value
    try:
        yield
    finally:
        table[key] = old


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def row(name, ours_ms, official_ms, note=""):
    ratio = ours_ms / official_ms if official_ms else float("nan")
    RESULTS["rows"].append({"name": name, "ours_ms": ours_ms, "official_ms": official_ms,
                            "ratio": ratio, "note": note})
    print(f"{name:<44} ours {ours_ms:8.3f} ms   official {official_ms if official_ms else float('nan'):8.3f} ms"
          f"   ratio {ratio:6.2f}  {note}", flush=True)


def fresh_backward(y, dy, leaves):
    """y.backward(dy) with every leaf's .grad cleared first (a training step's
    zero_grad(set_to_none=True)): each timed official call computes its gradients afresh, as
    ours returns new ones. Until session 13 of 2026-12-07 the official rows left .grad in place,
    so each call after the first also timed the adds accumulating into it (run 39: five bf16
    adds, ~0.2 ms of the official Mamba-1 forward+backward's 3.2 ms)."""
    for t in leaves:
        if isinstance(t, torch.Tensor):
            t.grad = None
    y.backward(dy)


def part(name, fn):
    t0 = time.time()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        RESULTS["errors"][name] = f"{type(exc).__name__}: {exc}"
        print(f"[{name}] FAILED: {exc}", flush=True)
        traceback.print_exc()
    print(f"[{name}] {time.time() - t0:.0f} s", flush=True)


def backend():
    from mamba_core.registry import get_backend

    return get_backend("torch_triton")


def _m1_configs():
    """YARDSTICK_M1_SWEEP=path/to/sweep_tt.json: time our Mamba-1 scan under the sweep's best
    forward and backward configs (set in-process, as the sweep does) instead of the defaults."""
    path = os.environ.get("YARDSTICK_M1_SWEEP")
    if not path or not os.path.exists(path):
        return None
    from mamba_backend_torch_triton.kernels import selective_scan as ks

    m1 = json.load(open(path))["parts"]["m1"]
    used = {}
    for kind in ("fwd", "bwd"):
        best = m1.get(f"best_{kind}")
        if best:
            cfg = {k: best[k] for k in ("variant", "T", "BE", "num_warps")}
            ks.CONFIG[kind] = cfg
            used[kind] = cfg
    RESULTS["m1_configs"] = used
    return used


def _bc_configs():
    """YARDSTICK_BC_SWEEP=path/to/sweep_tt.json: run torch_triton's B/C kernels and angle scans
    under the bc part's best forward and VJP launches (set in-process) instead of the defaults."""
    path = os.environ.get("YARDSTICK_BC_SWEEP")
    if not path or not os.path.exists(path):
        return None
    from mamba_backend_torch_triton.kernels import mamba3_bc as BC

    best = json.load(open(path)).get("best", {})
    used = {}
    for kind in ("bc", "bc_vjp"):
        if best.get(kind):
            BC.CONFIG[kind] = dict(BC.CONFIG[kind], **{k: best[kind][k] for k in ("T", "num_warps", "HB")})
            used[kind] = BC.CONFIG[kind]
    from mamba_backend_torch_triton.kernels import rope as RK

    for kind in ("angles_fwd", "angles_bwd"):
        if best.get(kind):
            RK.CONFIG[kind] = dict(RK.CONFIG[kind], **{k: best[kind][k] for k in ("segments", "HB", "T")})
            used[kind] = RK.CONFIG[kind]
    RESULTS["bc_configs"] = used
    print("B/C kernel launches from the sweep:", used, flush=True)
    return used


def mamba1_inputs(b=B, l=L, e=E, n=N1, dtype=torch.bfloat16, dev="cuda"):
    """The Mamba-1 benchmark inputs (seed 0): ((u, delta, A, B, C, D, z, delta_bias, True), dy)."""
    g = torch.Generator(device=dev).manual_seed(0)
    u = torch.randn(b, l, e, device=dev, dtype=dtype, generator=g)
    delta = (torch.rand(b, l, e, device=dev, generator=g) * 2 - 4).to(dtype)
    A = -torch.exp(torch.randn(e, n, device=dev, generator=g) * 0.5)
    Bm = torch.randn(b, l, 1, n, device=dev, dtype=dtype, generator=g)
    Cm = torch.randn(b, l, 1, n, device=dev, dtype=dtype, generator=g)
    D = torch.ones(e, device=dev)
    z = torch.randn(b, l, e, device=dev, dtype=dtype, generator=g)
    db = torch.rand(e, device=dev, generator=g) - 4
    dy = torch.randn(b, l, e, device=dev, dtype=dtype, generator=g)
    return (u, delta, A, Bm, Cm, D, z, db, True), dy


def mamba3_inputs(dtype=torch.bfloat16, dev="cuda"):
    """The Mamba-3 SISO benchmark inputs (seed 2), by name: q, k (B, L, 1, N), v, z (B, L, H, P),
    dt, A, trap (B, L, H; float32), qb, kb (H, N), ang (B, L, N / 4), D (H,), dy (B, L, 1, H, P)."""
    g = torch.Generator(device=dev).manual_seed(2)
    t = dict(q=torch.randn(B, L, 1, N, device=dev, dtype=dtype, generator=g),
             k=torch.randn(B, L, 1, N, device=dev, dtype=dtype, generator=g),
             v=torch.randn(B, L, H, P, device=dev, dtype=dtype, generator=g),
             dt=torch.nn.functional.softplus(torch.rand(B, L, H, device=dev, generator=g) * 2 - 4),
             A=-(torch.rand(B, L, H, device=dev, generator=g) + 0.5),
             trap=torch.rand(B, L, H, device=dev, generator=g),
             qb=torch.ones(H, N, device=dev), kb=torch.ones(H, N, device=dev),
             ang=torch.randn(B, L, N // 4, device=dev, generator=g),
             D=torch.ones(H, device=dev))
    t["z"] = torch.randn(B, L, H, P, device=dev, dtype=dtype, generator=g)
    t["dy"] = torch.randn(B, L, 1, H, P, device=dev, dtype=dtype, generator=g)
    return t



def mamba3_official_args(t):
    """mamba3_siso_combined's positional inputs for ``mamba3_inputs``' t: ADT, DT and the trap
    logits (the kernel applies sigmoid) as (B, H, L); the angles per head, raw, (B, L, H, S).

    The angles go in as mamba_ssm/modules/mamba3.py passes them: the raw float32 projections
    expanded over the heads (a stride-0 view; the op's angle kernel applies tanh(.) pi itself,
    mamba_ssm/ops/triton/mamba3/angle_dt.py). Until session 12 of 2026-12-07 this passed
    tanh(ang) pi, contiguous: tanh applied twice (the same work, other values) and a 67 MB
    float32 copy for the op's cast to bf16 to read instead of the 2 MB behind the view, so the
    official forward was timed with ~67 MB more traffic than the module gives it."""
    ADT = (t["A"] * t["dt"]).transpose(1, 2).contiguous()
    DT = t["dt"].transpose(1, 2).contiguous()
    TR = torch.logit(t["trap"].clamp(1e-4, 1 - 1e-4)).transpose(1, 2).contiguous()
    angh = t["ang"].unsqueeze(2).expand(B, L, H, N // 4)
    return (t["q"], t["k"], t["v"], ADT, DT, TR, t["qb"], t["kb"], angh)


def mamba3_gate_fb(be, y, z, do):
    """out = y silu(z) and its VJP (dy, dz) through the backend's ops, as the mixer runs them."""
    gg = be.ops.silu_gate_vjp(do, y, z)
    return be.ops.silu_gate(y, z), gg["x"], gg["z"]


def mamba3_whole_fb(be, t, saving=True):
    """Our Mamba-3 SISO whole op forward+backward on ``mamba3_inputs``' t, as the official's
    backward does it: angles, mamba3_rope_scan and the gate forward, then the gate's VJP,
    mamba3_rope_scan's VJP and mamba3_angles_vjp. B, C enter per group (B, L, R=1, G=1, N) with the
    per-head biases (R, H, N). ``saving``: the scan through its saving form, as the mixer's
    forward_train and backward run it (mamba_core/ops/saving.py), else the plain op and VJP."""
    kw = dict(B_bias=t["kb"].unsqueeze(0), C_bias=t["qb"].unsqueeze(0), D=t["D"], chunk_size=64)

    def run():
        phi, _ = be.ops.mamba3_angles(t["ang"], t["dt"])
        rs = (t["v"], t["dt"], t["A"], t["trap"], t["k"].unsqueeze(2), t["q"].unsqueeze(2), phi)
        if saving:
            out, res = be.ops.forward_saving("mamba3_rope_scan", *rs, **kw)
        else:
            out, res = be.ops.mamba3_rope_scan(*rs, **kw), None
        out, dyy, dz = mamba3_gate_fb(be, out[0][:, :, 0], t["z"], t["dy"][:, :, 0])
        gr = be.ops.vjp_saved("mamba3_rope_scan", res, (dyy.unsqueeze(2), None, None, None), *rs, **kw)
        return out, dz, gr, be.ops.mamba3_angles_vjp((gr["phi"], None), t["ang"], t["dt"])
    return run


def mamba1():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    from mamba_backend_torch_triton.kernels import selective_scan as SS

    be = backend()
    note = _m1_configs()
    args, dy = mamba1_inputs()
    u, delta, A, Bm, Cm, D, z, db, _ = args
    ours_f = bench(lambda: be.ops.selective_scan(*args))
    def ours_fb_fn():
        return be.ops.selective_scan(*args), be.ops.selective_scan_vjp((dy, None), *args)

    ours_fb = bench(ours_fb_fn)
    # official: channels-first layout, timed in its own layout
    ut, dt_, zt = (t.transpose(1, 2).contiguous() for t in (u, delta, z))
    Bt, Ct = (t[:, :, 0].transpose(1, 2).contiguous() for t in (Bm, Cm))
    dyt = dy.transpose(1, 2).contiguous()
    off_f = bench(lambda: selective_scan_fn(ut, dt_, A, Bt, Ct, D, zt, db, True))
    leaves = [t.detach().requires_grad_() for t in (ut, dt_, A, Bt, Ct, D, zt, db)]

    def off_fb():
        fresh_backward(selective_scan_fn(*leaves, True), dyt, leaves)

    off_fbt = bench(off_fb)
    row("Mamba-1 selective scan fwd", ours_f, off_f, f"ours: {note}" if note else "")
    row("Mamba-1 selective scan fwd+bwd", ours_fb, off_fbt, f"ours: {note}" if note else "")
    # the VJP's chunk states in bf16 (CONFIG "states16", off by default, untimed until then)
    with _config(SS.CONFIG, "bwd", dict(SS.CONFIG["bwd"], states16=True)):
        row("Mamba-1 selective scan fwd+bwd, bf16 chunk states", bench(ours_fb_fn), off_fbt,
            "ours: the VJP's states in bf16 (half the bytes)")
    # the saving form with its states kept (CONFIG "save", off by default: 8x u's memory in
    # float32 states at this shape), as the mixer's forward_train and backward would run it

    def saving_fb():
        out, res = be.ops.forward_saving("selective_scan", *args)
        return out, be.ops.vjp_saved("selective_scan", res, (dy, None), *args)

    with _config(SS.CONFIG, "save", {"states": True}):
        row("Mamba-1 selective scan fwd+bwd, states kept (saving form)", bench(saving_fb), off_fbt,
            "ours: the forward keeps the VJP's chunk states (537 MB here)")
        with _config(SS.CONFIG, "bwd", dict(SS.CONFIG["bwd"], states16=True)):
            row("Mamba-1 selective scan fwd+bwd, bf16 states kept (saving form)", bench(saving_fb),
                off_fbt, "ours: the forward keeps the VJP's chunk states in bf16 (268 MB here)")
    # (until session 13 also three diagnostic rows for the 16-bit VJP's upcast options, which
    # decided against upcasting: runs 29-30 and 39 in benchmarks/results/gpu-20261207-h100)


def mamba2():
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    be = backend()
    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(B, L, H, P, device=dev, dtype=bf, generator=g)
    dt = (torch.rand(B, L, H, device=dev, generator=g) * 2 - 4).to(bf)
    A = -torch.rand(H, device=dev, generator=g) * 15 - 1
    Bm = torch.randn(B, L, 1, N, device=dev, dtype=bf, generator=g)
    Cm = torch.randn(B, L, 1, N, device=dev, dtype=bf, generator=g)
    D = torch.ones(H, device=dev)
    db = torch.rand(H, device=dev, generator=g) - 3
    dy = torch.randn(B, L, H, P, device=dev, dtype=bf, generator=g)
    for Q in (64, 256):  # ours processes a chunk-256 request in sub-chunks that fit shared memory
        args = (x, dt, A, Bm, Cm, Q, D, None, db, True)
        ours_f = bench(lambda: be.ops.ssd_scan(*args))
        ours_fb = bench(lambda: (be.ops.ssd_scan(*args), be.ops.ssd_scan_vjp((dy, None), *args)))
        off_f = bench(lambda: mamba_chunk_scan_combined(x, dt, A, Bm, Cm, Q, D=D, dt_bias=db, dt_softplus=True))
        leaves = [t.detach().requires_grad_() for t in (x, dt, A, Bm, Cm, D, db)]

        def off_fb():
            xx, dd, AA, BB, CC, DD, bb = leaves
            y = mamba_chunk_scan_combined(xx, dd, AA, BB, CC, Q, D=DD, dt_bias=bb, dt_softplus=True)
            fresh_backward(y, dy, leaves)

        row(f"Mamba-2 SSD fwd (chunk {Q})", ours_f, off_f)
        row(f"Mamba-2 SSD fwd+bwd (chunk {Q})", ours_fb, bench(off_fb))


def _reduce_autotune():
    """Cut the official kernels' autotune spaces before their modules are imported.

    mamba_ssm's Mamba-3 kernels autotune over up to 81 configs each (stages 1-3 x warps 2/4/8 x
    maxnreg None/128/256, x chunk sizes); compiling them all outlasts a 10-minute device call.
    YARDSTICK_M3_AUTOTUNE=reduced keeps stages 2-3, warps 4/8 and maxnreg unset (every chunk
    size): 4 configs per chunk size. The official figure is then the best of that subset, which
    can only flatter us if their best config lies outside it (recorded with the results).
    Only modules under mamba_ssm.ops.triton.mamba3 are affected.
    """
    if os.environ.get("YARDSTICK_M3_AUTOTUNE", "full") != "reduced":
        return
    full = triton.autotune

    def autotune(configs, key, **kw):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if ".mamba3." in caller:  # only the Mamba-3 modules; Mamba-2's tuning stays whole
            configs = [c for c in configs if c.num_warps in (4, 8) and c.num_stages in (2, 3)
                       and getattr(c, "maxnreg", None) is None] or configs[:1]
        return full(configs, key, **kw)

    triton.autotune = autotune
    RESULTS["m3_autotune"] = "reduced: stages 2-3, warps 4/8, maxnreg None"


def mamba3():
    from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined

    be = backend()
    _bc_configs()
    bf = torch.bfloat16
    t = mamba3_inputs()
    q, k, v, dtv, Av, trap = (t[n] for n in ("q", "k", "v", "dt", "A", "trap"))
    qb, kb, ang, D, z, dy = (t[n] for n in ("qb", "kb", "ang", "D", "z", "dy"))
    # ours: the same work as the official entry point = angles, bias, rope on B and C, scan, gate;
    # B, C enter per group (B, L, R=1, G=1, N) with the per-head biases (R, H, N)
    kb3, qb3 = kb.unsqueeze(0), qb.unsqueeze(0)
    rs_kw = dict(B_bias=kb3, C_bias=qb3, D=D, chunk_size=64)

    def rs_args(phi_):
        """mamba3_rope_scan's positional arguments at these angles."""
        return (v, dtv, Av, trap, k.unsqueeze(2), q.unsqueeze(2), phi_)

    def ours_full():
        phi, _ = be.ops.mamba3_angles(ang, dtv)
        y = be.ops.mamba3_rope_scan(*rs_args(phi), **rs_kw)[0]
        return be.ops.silu_gate(y[:, :, 0], z)

    # the same through the separate ops (what the mixer ran before mamba3_rope_scan)
    def ours_separate():
        phi, _ = be.ops.mamba3_angles(ang, dtv)
        Bh = be.ops.apply_rope((k + kb.to(bf)).unsqueeze(2), phi.unsqueeze(2))
        Ch = be.ops.apply_rope((q + qb.to(bf)).unsqueeze(2), phi.unsqueeze(2))
        y = be.ops.mamba3_scan(v, dtv, Av, trap, Bh, Ch, D, None, 64)[0]
        return be.ops.silu_gate(y[:, :, 0], z)

    phi, _ = be.ops.mamba3_angles(ang, dtv)
    Bh = be.ops.apply_rope((k + kb.to(bf)).unsqueeze(2), phi.unsqueeze(2)).contiguous()
    Ch = be.ops.apply_rope((q + qb.to(bf)).unsqueeze(2), phi.unsqueeze(2)).contiguous()
    scan_args = (v, dtv, Av, trap, Bh, Ch, D, None, 64)
    ours_scan = bench(lambda: be.ops.mamba3_scan(*scan_args))
    ours_scan_fb = bench(lambda: (be.ops.mamba3_scan(*scan_args), be.ops.mamba3_scan_vjp((dy, None, None, None), *scan_args)))
    off_args = mamba3_official_args(t)
    off_f = bench(lambda: mamba3_siso_combined(*off_args, D=D, Z=z, chunk_size=64))
    leaves = [a.detach().requires_grad_() if a.is_floating_point() else a for a in off_args]
    # D and z as leaves too: ours returns their gradients (the scan's dD, the gate's dz)
    Dl, zl = D.detach().requires_grad_(), z.detach().requires_grad_()

    def off_fb():
        y = mamba3_siso_combined(*leaves, D=Dl, Z=zl, chunk_size=64)
        fresh_backward(y, dy[:, :, 0], leaves + [Dl, zl])

    off_fbt = bench(off_fb)
    from mamba_backend_torch_triton.kernels.mamba3_bc import bc_heads_rope as _bc_heads_rope

    # where our composition's time goes (each piece alone, on the inputs it sees in ours_full)
    kbh = (k + kb.to(bf)).unsqueeze(2)
    y0 = be.ops.mamba3_scan(*scan_args)[0]
    pieces = {
        "angles": lambda: be.ops.mamba3_angles(ang, dtv),
        "bias add (k + kb)": lambda: (k + kb.to(bf)).unsqueeze(2),
        "rope on B": lambda: be.ops.apply_rope(kbh, phi.unsqueeze(2)),
        "bc_heads_rope (B and C, one kernel)": lambda: _bc_heads_rope(k.unsqueeze(2), q.unsqueeze(2), phi, kb3, qb3,
                                                                      H),
        "scan": lambda: be.ops.mamba3_scan(*scan_args),
        "gate silu_gate(y, z)": lambda: be.ops.silu_gate(y0[:, :, 0], z),
    }
    RESULTS["m3_pieces_ms"] = {name: bench(fn) for name, fn in pieces.items()}
    print("Mamba-3 SISO forward pieces (ms):", {k_: round(v_, 4) for k_, v_ in RESULTS["m3_pieces_ms"].items()}, flush=True)
    phi0, _ = be.ops.mamba3_angles(ang, dtv)
    for sw in ("1", "0"):  # torch_triton's fused kernel, then its default (the composition)
        with _env("MAMBA_TRITON_FUSED_ROPE_SCAN", sw):
            RESULTS["m3_pieces_ms"][f"rope_scan (switch {sw})"] = bench(
                lambda: be.ops.mamba3_rope_scan(*rs_args(phi0), **rs_kw))
            print(f"  rope_scan (switch {sw}):", round(RESULTS["m3_pieces_ms"][f"rope_scan (switch {sw})"], 4), flush=True)
            row(f"Mamba-3 SISO fwd, fused kernel {'on' if sw == '1' else 'off'}", bench(ours_full), off_f,
                "ours: angles, mamba3_rope_scan, gate")
    row("Mamba-3 SISO fwd, separate ops", bench(ours_separate), off_f, "ours: angles, bias, 2 ropes, scan, gate")

    ours_full_fb = mamba3_whole_fb(be, t)  # the whole op both ways

    for sw in ("1", "0"):
        with _env("MAMBA_TRITON_FUSED_ROPE_SCAN", sw):
            row(f"Mamba-3 SISO fwd+bwd, whole op, fused kernel {'on' if sw == '1' else 'off'}",
                bench(ours_full_fb), off_fbt, "ours: angles, rope_scan (saving form), gate and their VJPs")
    row("Mamba-3 SISO fwd+bwd, whole op, no residuals", bench(mamba3_whole_fb(be, t, saving=False)),
        off_fbt, "ours: the plain rope_scan and VJP (it recomputes B/C and the states)")
    # the saving form's memory options (kernels/mamba3.py CONFIG "save"): half the states
    # (every other chunk's; the VJP recomputes the rest), or B/C alone
    from mamba_backend_torch_triton.kernels import mamba3 as M3

    for save, what in (({"states": True, "state_stride": 2}, "every other chunk's states kept (268 MB)"),
                       ({"states": False}, "per-head B/C kept, states recomputed")):
        with _config(M3.CONFIG, "save", save):
            row(f"Mamba-3 SISO fwd+bwd, whole op, {what}", bench(ours_full_fb), off_fbt,
                "ours: the saving form under that CONFIG")
    # the "blocked" backward (CONFIG "bwd" "variant"; session 14, untimed): its states every
    # 64 tokens come from the plain forward's launch (134 MB, as the official keeps)
    for block in (2, 4):
        with _config(M3.CONFIG, "bwd", dict(M3.CONFIG["bwd"], variant="blocked", block=block)):
            row(f"Mamba-3 SISO fwd+bwd, whole op, blocked backward ({block} chunks a program)",
                bench(ours_full_fb), off_fbt, "ours: the saving form, the blocked backward")
    # where the whole op's backward goes (each piece alone, on the inputs it sees there)
    cot0 = (dy, None, None, None)
    g0 = be.ops.mamba3_rope_scan_vjp(cot0, *rs_args(phi0), **rs_kw)
    bwd_pieces = {
        "mamba3_scan_vjp (per-head B, C)": lambda: be.ops.mamba3_scan_vjp(cot0, *scan_args),
        "mamba3_rope_scan_vjp": lambda: be.ops.mamba3_rope_scan_vjp(cot0, *rs_args(phi0), **rs_kw),
        "mamba3_angles_vjp": lambda: be.ops.mamba3_angles_vjp((g0["phi"], None), ang, dtv),
        "gate and its VJP": lambda: mamba3_gate_fb(be, y0[:, :, 0], z, dy[:, :, 0]),
    }
    RESULTS["m3_bwd_pieces_ms"] = {name: bench(fn) for name, fn in bwd_pieces.items()}
    print("Mamba-3 SISO backward pieces (ms):",
          {k_: round(v_, 4) for k_, v_ in RESULTS["m3_bwd_pieces_ms"].items()}, flush=True)
    row("Mamba-3 SISO scan only fwd", ours_scan, off_f, "official includes rope+gate")
    row("Mamba-3 SISO scan only fwd+bwd", ours_scan_fb, off_fbt, "official includes rope+gate")


def decode():
    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig
    import numpy as np

    from mamba_backend_torch_triton.graphs import CudaGraphDecoder

    be = backend()
    cfg = LMConfig(d_model=1024, n_layer=48, vocab_size=50280,
                   ssm_cfg={"layer": "Mamba2", "d_state": 128, "headdim": 64})
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)), "bfloat16")
    off_model = None
    try:
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

        off_model = MambaLMHeadModel(MambaConfig(d_model=1024, n_layer=48, vocab_size=50280,
                                                 ssm_cfg={"layer": "Mamba2"}),
                                     device="cuda", dtype=torch.bfloat16).eval()
    except Exception as exc:  # noqa: BLE001
        RESULTS["errors"]["official_model"] = f"{type(exc).__name__}: {exc}"
        print("official model unavailable:", exc, flush=True)
    for batch in (1, 16):
        dec = CudaGraphDecoder(be, params, cfg, "bfloat16")
        ids = torch.zeros(batch, dtype=torch.long, device="cuda")
        for _ in range(3):
            dec.step(ids)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = 100
        for _ in range(n):
            dec.step(ids)
        torch.cuda.synchronize()
        ours_ms = (time.perf_counter() - t0) / n * 1e3
        off_ms = None
        if off_model is not None:
            try:
                prompt = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
                with torch.no_grad():
                    # capture + warm up with the same max_length: mamba_ssm keys its graph cache on
                    # (batch, max_length), so a different length would re-capture inside the timing
                    off_model.generate(prompt, max_length=1 + n, cg=True, top_k=1)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    off_model.generate(prompt, max_length=1 + n, cg=True, top_k=1)
                    torch.cuda.synchronize()
                off_ms = (time.perf_counter() - t0) / n * 1e3
            except Exception as exc:  # noqa: BLE001
                RESULTS["errors"][f"official_decode_b{batch}"] = f"{type(exc).__name__}: {exc}"
                print("official decode failed:", exc, flush=True)
        row(f"Mamba-2 370M decode batch {batch} (ms/token)", ours_ms, off_ms,
            f"ours {batch * 1e3 / ours_ms:.0f} tok/s" + (f", official {batch * 1e3 / off_ms:.0f} tok/s" if off_ms else ""))


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    RESULTS["device"] = torch.cuda.get_device_name()
    RESULTS["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
    only = os.environ.get("YARDSTICK_PARTS", "mamba1,mamba2,mamba3,decode").split(",")
    _reduce_autotune()  # before anything imports mamba_ssm (its __init__ imports Mamba-3)
    for name in only:
        part(name, globals()[name])
        with open(os.path.join(out_dir, "yardstick.json"), "w") as f:  # after every part
            json.dump(RESULTS, f, indent=1)
    print("\n" + "\n".join(f"{r['name']:<44} {r['ratio']:6.2f}" for r in RESULTS["rows"]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
