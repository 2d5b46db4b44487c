"""GPU check of the torch_triton SSD and Mamba-3 kernels: correctness at small shapes against
mamba_core's float64 references, then timings at the benchmark shapes (median of
triton.testing.do_bench) against the floor (bytes / 3 TB/s, flops / 790 TFLOP/s).

    python backends/torch_triton/gpu_check.py OUT_DIR        (or import run_ssd_mamba3(out_dir))

Every part runs in its own try/except: an error is printed and recorded, and the rest goes on.
Writes OUT_DIR/ssd_mamba3.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

HBM = 3.0e12
TC = 790e12


def _rel(got, want):
    got = got.detach().double().cpu().numpy()
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not np.all(np.isfinite(got)):
        return float("nan")
    s = np.abs(want).max()
    return float(np.abs(got - want).max() / (s if s > 0 else 1.0))


def _checks(torch, results):
    from mamba_core.ops import REGISTRY

    from mamba_backend_torch_triton.kernels import mamba3 as M3
    from mamba_backend_torch_triton.kernels import ssd as SSD

    dev = "cuda"
    rng = np.random.default_rng(0)

    def T(a, dt=torch.float32):
        return torch.from_numpy(a).to(dev, dt) if isinstance(a, np.ndarray) and a.dtype == np.float64 \
            else (torch.from_numpy(a).to(dev) if isinstance(a, np.ndarray) else a)

    def rounded(d, dt):
        """inputs rounded to dt, back in float64 NumPy (the truth sees what the kernel sees)"""
        return {k: (T(v, dt).double().cpu().numpy() if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
                for k, v in d.items()}

    def ssd_case(Bs, L, H, P, G, N, Q, seq=False):
        a = dict(x=rng.standard_normal((Bs, L, H, P)), dt=rng.standard_normal((Bs, L, H)),
                 A=-np.exp(rng.uniform(-1, 1.5, H)), B=rng.standard_normal((Bs, L, G, N)),
                 C=rng.standard_normal((Bs, L, G, N)), chunk_size=Q, D=rng.standard_normal(H),
                 z=rng.standard_normal((Bs, L, H, P)), dt_bias=0.5 * rng.standard_normal(H),
                 dt_softplus=True, initial_state=rng.standard_normal((Bs, H, P, N)))
        if seq:
            s = np.zeros((Bs, L), np.int64)
            s[:, L // 3:] += 1
            s[:, (2 * L) // 3:] += 1
            a["seq_idx"] = s
        return a

    def m3_case(Bs, L, H, P, N, R, Q):
        tr = 1 / (1 + np.exp(-2 * rng.standard_normal((Bs, L, H))))
        a = dict(x=rng.standard_normal((Bs, L, H, P)), dt=np.exp(rng.uniform(np.log(1e-3), np.log(0.5), (Bs, L, H))),
                 A=-np.exp(rng.uniform(-2, 1.5, (Bs, L, H))), trap=tr,
                 B=rng.standard_normal((Bs, L, R, H, N)), C=rng.standard_normal((Bs, L, R, H, N)),
                 D=1 + 0.5 * rng.standard_normal(H), chunk_size=Q,
                 initial_state=rng.standard_normal((Bs, H, P, N)),
                 initial_k=rng.standard_normal((Bs, R, H, N)), initial_v=rng.standard_normal((Bs, H, P)))
        if R > 1:
            a["mimo_x"] = 1 / R + 0.5 * rng.standard_normal((H, R, P))
        return a

    cases = [
        ("ssd_scan", SSD.ssd_scan, SSD.ssd_scan_vjp, ssd_case(2, 300, 4, 64, 2, 128, 64, seq=True), 2),
        ("ssd_scan", SSD.ssd_scan, SSD.ssd_scan_vjp, ssd_case(2, 77, 4, 24, 1, 40, 32), 2),
        ("mamba3_scan SISO", M3.mamba3_scan, M3.mamba3_scan_vjp, m3_case(2, 200, 3, 64, 128, 1, 64), 4),
        ("mamba3_scan MIMO R=2", M3.mamba3_scan, M3.mamba3_scan_vjp, m3_case(2, 150, 2, 32, 64, 2, 64), 4),
        ("mamba3_scan MIMO R=4", M3.mamba3_scan, M3.mamba3_scan_vjp, m3_case(2, 99, 2, 16, 32, 4, 16), 4),
    ]
    for label, fwd, vjp, args, nout in cases:
        op = "ssd_scan" if label.startswith("ssd") else "mamba3_scan"
        for dtn, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            key = f"check {label} {dtn} L={args['x'].shape[1]}"
            try:
                r64 = rounded(args, dt)
                ref = REGISTRY[op].reference(**r64)
                targs = {k: T(v, dt) for k, v in args.items()}
                got = fwd(**targs)
                torch.cuda.synchronize()
                errs = {f"out{i}": _rel(g, r) for i, (g, r) in enumerate(zip(got, ref))}
                cot = tuple(rng.standard_normal(np.shape(r)) for r in ref)
                cot = tuple(T(c, dt) for c in cot)
                cot64 = tuple(c.double().cpu().numpy() for c in cot)
                gref = REGISTRY[op + "_vjp"].reference(cot64, **r64)
                g = vjp(cot, **targs)
                torch.cuda.synchronize()
                errs.update({f"d{k}": _rel(g[k], gref[k]) for k in gref})
                results[key] = errs
                print(key, "max rel err %.2e" % max(errs.values()), flush=True)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    # steps
    for label in ("ssd_step", "mamba3_step"):
        try:
            if label == "ssd_step":
                a = dict(x=rng.standard_normal((4, 8, 64)), dt=rng.standard_normal((4, 8)),
                         A=-np.exp(rng.uniform(-1, 1, 8)), B=rng.standard_normal((4, 2, 128)),
                         C=rng.standard_normal((4, 2, 128)), state=rng.standard_normal((4, 8, 64, 128)),
                         D=rng.standard_normal(8), z=rng.standard_normal((4, 8, 64)),
                         dt_bias=rng.standard_normal(8), dt_softplus=True)
                fn = SSD.ssd_step
            else:
                a = dict(x=rng.standard_normal((4, 8, 64)), dt=rng.uniform(0.01, 0.5, (4, 8)),
                         A=-rng.uniform(0.1, 3, (4, 8)), trap=rng.uniform(0, 1, (4, 8)),
                         B=rng.standard_normal((4, 2, 8, 128)), C=rng.standard_normal((4, 2, 8, 128)),
                         state=rng.standard_normal((4, 8, 64, 128)), k_state=rng.standard_normal((4, 2, 8, 128)),
                         v_state=rng.standard_normal((4, 8, 64)), D=rng.standard_normal(8),
                         mimo_x=rng.standard_normal((8, 2, 64)))
                fn = M3.mamba3_step
            r64 = rounded(a, torch.float32)
            ref = REGISTRY[label].reference(**r64)
            got = fn(**{k: T(v) for k, v in a.items()})
            results[f"check {label} float32"] = {f"out{i}": _rel(g, r) for i, (g, r) in enumerate(zip(got, ref))}
            print(label, results[f"check {label} float32"], flush=True)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results[f"check {label}"] = {"error": f"{type(exc).__name__}: {exc}"}


def _floors(kind, Bs, L, H, P, N, G, R, Q, elt):
    tok = Bs * L
    if kind == "ssd":
        byt = tok * H * P * elt * 2 + tok * H * 4 + 2 * tok * G * N * elt + Bs * H * P * N * 4
        flo = tok * H * (2 * Q * N / (H // G) + 2 * Q * P + 4 * P * N)
    else:
        byt = tok * H * P * elt * (1 + R) + 3 * tok * H * 4 + 2 * tok * R * H * N * elt + Bs * H * P * N * 4
        flo = tok * H * (2 * Q * R * R * N + 2 * Q * R * R * P + 4 * R * P * N)
    return byt, flo


def _timings(torch, results):
    import triton.testing

    from mamba_backend_torch_triton.kernels import mamba3 as M3
    from mamba_backend_torch_triton.kernels import ssd as SSD

    Bs, L, H, P, N = 8, 2048, 32, 64, 128
    dev, bf = "cuda", torch.bfloat16

    def rnd(*shape, dtype=bf):
        return torch.randn(*shape, device=dev, dtype=torch.float32).to(dtype)

    jobs = []
    for Q in (64, 128):
        def ssd_inputs(Q=Q):
            return dict(x=rnd(Bs, L, H, P), dt=rnd(Bs, L, H, dtype=torch.float32) - 2.0,
                        A=-torch.rand(H, device=dev) * 4 - 0.5, B=rnd(Bs, L, 1, N), C=rnd(Bs, L, 1, N),
                        chunk_size=Q, D=rnd(H, dtype=torch.float32), dt_bias=rnd(H, dtype=torch.float32),
                        dt_softplus=True)
        jobs.append((f"ssd_scan fwd bf16 Q={Q}", "ssd", Q, 1, ssd_inputs, lambda a: SSD.ssd_scan(**a), False))
        jobs.append((f"ssd_scan fwd+z bf16 Q={Q}", "ssd", Q, 1,
                     lambda f=ssd_inputs: {**f(), "z": rnd(Bs, L, H, P)}, lambda a: SSD.ssd_scan(**a), False))
        jobs.append((f"ssd_scan_vjp bf16 Q={Q}", "ssd", Q, 1, ssd_inputs,
                     lambda a: SSD.ssd_scan_vjp((torch.randn_like(a["x"]), None), **a), True))
    for R in (1, 2, 4):
        def m3_inputs(R=R):
            a = dict(x=rnd(Bs, L, H, P), dt=torch.rand(Bs, L, H, device=dev) * 0.1,
                     A=-torch.rand(Bs, L, H, device=dev) * 4, trap=torch.rand(Bs, L, H, device=dev),
                     B=rnd(Bs, L, R, H, N), C=rnd(Bs, L, R, H, N), D=rnd(H, dtype=torch.float32),
                     chunk_size=64)
            if R > 1:
                a["mimo_x"] = rnd(H, R, P, dtype=torch.float32)
            return a
        jobs.append((f"mamba3_scan fwd bf16 R={R}", "m3", 64, R, m3_inputs, lambda a: M3.mamba3_scan(**a), False))
        jobs.append((f"mamba3_scan_vjp bf16 R={R}", "m3", 64, R, m3_inputs,
                     lambda a: M3.mamba3_scan_vjp((torch.randn(*a["x"].shape[:2], a["B"].shape[2], H, P,
                                                               device=dev, dtype=bf), None, None, None), **a), True))

    for label, kind, Q, R, make, fn, is_bwd in jobs:
        try:
            a = make()
            fn(a)
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(lambda: fn(a), warmup=50, rep=300, return_mode="median")
            byt, flo = _floors(kind, Bs, L, H, P, N, 1, R, Q, 2)
            if is_bwd:
                byt, flo = 2 * byt, 3 * flo
            floor_us = max(byt / HBM, flo / TC) * 1e6
            results[f"time {label}"] = {"median_us": ms * 1e3, "floor_us": floor_us,
                                        "bytes_floor_us": byt / HBM * 1e6, "flops_floor_us": flo / TC * 1e6,
                                        "x_floor": ms * 1e3 / floor_us}
            print(f"{label:34s} {ms * 1e3:10.1f} us   floor {floor_us:8.1f} us   x{ms * 1e3 / floor_us:5.1f}",
                  flush=True)
            del a
            torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results[f"time {label}"] = {"error": f"{type(exc).__name__}: {exc}"}
    # decode step
    try:
        x = rnd(Bs * 8, H, P)
        st = torch.randn(Bs * 8, H, P, N, device=dev)
        a = dict(x=x, dt=torch.rand(Bs * 8, H, device=dev), A=-torch.rand(H, device=dev), B=rnd(Bs * 8, 1, N),
                 C=rnd(Bs * 8, 1, N), state=st, D=rnd(H, dtype=torch.float32))
        ms = triton.testing.do_bench(lambda: SSD.ssd_step(**a), warmup=25, rep=100, return_mode="median")
        byt = st.numel() * 4 * 2
        results["time ssd_step B=64"] = {"median_us": ms * 1e3, "floor_us": byt / HBM * 1e6}
        print(f"ssd_step B=64 {ms * 1e3:.1f} us floor {byt / HBM * 1e6:.1f} us", flush=True)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        results["time ssd_step"] = {"error": f"{type(exc).__name__}: {exc}"}


def run_ssd_mamba3(out_dir):
    """Check and time the SSD / Mamba-3 kernels on the GPU; writes out_dir/ssd_mamba3.json."""
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.makedirs(out_dir, exist_ok=True)
    try:
        import torch
        import triton

        results["device"] = torch.cuda.get_device_name(0)
        results["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
        results["tf32"] = os.environ.get("MAMBA_TRITON_TF32") == "1"
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        results["error"] = f"{type(exc).__name__}: {exc}"
        _write(out_dir, results)
        return results
    for part in (_checks, _timings):
        try:
            part(torch, results)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results[part.__name__] = {"error": f"{type(exc).__name__}: {exc}"}
        _write(out_dir, results)
    return results


def _write(out_dir, results):
    with open(os.path.join(out_dir, "ssd_mamba3.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    run_ssd_mamba3(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "."))
