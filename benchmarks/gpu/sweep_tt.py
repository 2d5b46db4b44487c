"""One-shot sweep of the torch_triton launch configs on one GPU (H100), in under 150 s.

    python benchmarks/gpu/sweep_tt.py OUT_DIR [--parts m1,ssd,decode] [--budget 125]

Parts (each writes OUT_DIR/sweep_tt.json when it ends, so a timeout keeps what was done):
  m1      Mamba-1 selective scan, bf16, B=8 L=2048 E=2048 N=16 (G=1), with z, D, delta_bias,
          softplus: the forward over a grid of (variant, T, BE, num_warps) of
          kernels/selective_scan.CONFIG["fwd"], then the VJP (which re-runs the forward to save
          chunk states, under CONFIG["bwd"]) over a grid of its own; fwd+bwd = best fwd + VJP.
          The transposed variants ("tr", "tr_scan": channels last, N states in-thread) come
          right after the baseline in both grids, so a short budget still measures them.
          Configs run in order of promise until the part's time share is spent; each config's
          y (and gradients) is compared with the baseline's, so a broken variant shows.
          SWEEP_M1_FWD / SWEEP_M1_BWD="variant:T:BE:warps[:maxnreg[:save_BE:save_warps]],..."
          replace the grids
          (maxnreg: CONFIG "maxnreg", the "lanes" VJP's register cap);
          SWEEP_M1_DTYPE=float32 sweeps the float32 configs (CONFIG["fwd_f32"], ["bwd_f32"]).
  ssd     Mamba-2 SSD scan, bf16, B=8 L=2048 H=32 P=64 N=128 G=1, D, dt_bias, softplus: forward
          and fwd+bwd at chunk_size 64 and 256 (256 runs as sub-chunks; the launch config each
          ended with is recorded).
  m3      Mamba-3 SISO scan, bf16, B=8 L=2048 H=32 P=64 N=128 R=1 (B, C per head, D): the
          forward over a grid of kernels/mamba3.CONFIG["fwd"] (SWEEP_M3_FWD, the same format
          as SWEEP_M3), then mamba3_scan_vjp over a grid of kernels/mamba3.CONFIG["bwd"]
          (chunk cap, num_warps, stages; "-" keeps the default), each config's gradients
          compared with the first's. SWEEP_M3_DTYPE=float32 sweeps the "fwd_ieee" / "bwd_ieee"
          entries instead; SWEEP_M3_R=4 times MIMO (R ranks, mimo_x). SWEEP_M3="chunk:warps:stages[:bp[:stride[:block]]],..." replaces the grid
          (block: the "blocked" backward, that many chunks a program);
          SWEEP_M3_WARM=1 only compiles (B=1; the kernels do not take B, so a later process
          at B=8 hits Triton's cache): one such process a config compiles the grid in parallel.
  bc      Mamba-3's B/C prologue kernels (kernels/mamba3_bc.py) at the m3 shape, G=1, S=32
          (B and C per group, float32 angles and biases): bc_heads_rope over a grid of
          CONFIG["bc"] (tokens T, warps, heads per program HB; "-" for HB: a whole group),
          then bc_heads_rope_vjp over CONFIG["bc_vjp"], each config's outputs compared with
          the first's. SWEEP_BC / SWEEP_BC_VJP="T:warps:HB,..." replace the grids;
          SWEEP_M3_WARM=1 only compiles, as for m3. Then mamba3_angles and its VJP over
          kernels/rope.CONFIG["angles_fwd"] / ["angles_bwd"] (L segments, heads per program,
          the forward's variant); SWEEP_ANGLES="segments:HB:T[:variant],..." replaces that grid.
  decode  ~370M random-weight Mamba-2 LM (d_model 1024, 48 layers, vocab 50280, d_state 128,
          headdim 64, bf16) through graphs.CudaGraphDecoder at batch 1 and 16: fused step on
          and off (MAMBA_NO_FUSED_STEP=1), ms/token and tokens/s, the fused logits against the
          unfused ones after the same tokens, then a few mixer_steps.CONFIG["mamba2"] variants.
Medians of triton.testing.do_bench (CUDA events). Configs are set in-process through the
modules' CONFIG dicts (nothing is edited on disk); the best ones are printed so they can be
written into the CONFIG defaults.

Needs a CUDA GPU; without one it says so and exits with status 2 (``--smoke`` runs the whole
script on the CPU under TRITON_INTERPRET=1 at tiny shapes, to test the script itself). With nothing installed:
PYTHONPATH=<repo>:<repo>/backends/torch_triton plus array_api_compat, numpy and pluggy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # yardstick: the benchmark's inputs

PARTS = ("m1", "ssd", "m3", "bc", "decode")
#: share of the time budget each part may use (what one part leaves goes to the next)
SHARE = {"m1": 0.45, "ssd": 0.17, "m3": 0.3, "bc": 0.15, "decode": 0.38}

# Mamba-1 forward configs, most promising first: (variant, T, BE, num_warps). The baseline
# (the current CONFIG default) comes first; variants (kernels/selective_scan.py docstring):
# "base" the chunked associative scan, "exp2" the same with exp2 and log2(e) folded into A,
# "seq" token by token in registers (no scan), "tr" channels last with the N states of a
# channel inside one thread (token by token, no shuffles), "tr_scan" the same with an in-thread
# associative scan along T. "tr" wants BE >= 32 num_warps (lanes and warps along the channels);
# BE = 32 num_warps is one channel a thread (80 registers at T=8 on sm_90), 64 num_warps two
# (255 registers); T=16 is at the register limit, T=32 spills (one entry to confirm it).
# Run 6 (2026-11-23, H100, bf16): tr_scan T=4 BE=32 w=1 1.26 ms, base 1.60, every "tr" 3.1-4.2;
# so tr_scan is the default now and its neighbours come next.
# BE < 32 at one warp (added after run 9): the [NP, BE] state tile then spreads n over
# 32 / BE lanes (BE = 8: 4 lanes a channel, 4 states each -- cuda_cupy's Mamba-1 layout, 4x the
# threads), at the price of a short shuffle sum for y.
# "tr_fold" (session 7): tr_scan with the carry folded into the first offset (fewer instructions).
M1_FWD = [
    ("tr_scan", 8, 8, 1), ("tr_fold", 8, 8, 1), ("tr_fold", 4, 8, 1), ("tr_fold", 16, 8, 1),
    ("tr_fold", 8, 16, 1), ("tr_fold", 16, 16, 1),
    ("tr_scan", 4, 32, 1), ("base", 8, 32, 4),
    ("tr_scan", 4, 8, 1), ("tr", 4, 8, 1), ("tr", 8, 8, 1), ("tr", 4, 16, 1), ("tr_scan", 2, 8, 1),
    ("tr_scan", 4, 8, 2), ("tr", 8, 16, 1), ("tr_scan", 8, 8, 1),
    ("tr_scan", 2, 32, 1), ("tr_scan", 8, 32, 1), ("tr_scan", 4, 64, 2), ("tr_scan", 4, 16, 1),
    ("tr", 8, 32, 1), ("tr", 8, 64, 2), ("tr", 8, 128, 4), ("tr", 16, 32, 1), ("tr", 4, 32, 1),
    ("tr", 8, 64, 1), ("tr", 8, 256, 8), ("tr", 32, 32, 1),
    ("exp2", 8, 32, 4), ("seq", 8, 32, 2), ("seq", 8, 16, 1),
    ("seq", 16, 32, 2), ("seq", 8, 64, 4), ("exp2", 8, 64, 4), ("exp2", 16, 32, 4),
    ("seq", 8, 32, 1), ("exp2", 4, 32, 4), ("exp2", 8, 32, 2), ("seq", 4, 16, 1),
    ("exp2", 8, 16, 2), ("seq", 16, 64, 4), ("exp2", 16, 64, 8), ("exp2", 4, 64, 4),
    ("seq", 8, 128, 4), ("exp2", 8, 64, 8), ("exp2", 16, 16, 2), ("exp2", 32, 32, 8),
    ("seq", 32, 32, 2), ("exp2", 8, 128, 8), ("base", 16, 32, 4), ("base", 8, 64, 4),
]
# VJP configs (the state-saving forward runs this variant too; "seq" keeps the exp2 backward).
# The "tr" VJP holds T*N recomputed states a thread (T=4..8; T=16 to confirm it spills) and
# sums dB/dC over the channels across lanes: one warp a program avoids shared memory there.
M1_BWD = [
    ("base", 8, 32, 4),
    ("lanes", 4, 8, 1, 160), ("lanes", 4, 8, 1, 128), ("lanes", 4, 8, 1), ("lanes", 2, 8, 1),
    ("lanes", 4, 32, 4, 160), ("lanes", 2, 32, 4),
    ("tr", 4, 8, 1), ("tr", 4, 16, 1), ("tr", 8, 8, 1),
    ("tr", 8, 32, 1), ("tr", 4, 32, 1), ("tr", 8, 64, 2), ("tr", 4, 64, 2), ("tr", 16, 32, 1),
    ("tr", 4, 128, 4),
    ("exp2", 8, 32, 4), ("seq", 8, 32, 4), ("exp2", 8, 16, 4),
    ("exp2", 16, 32, 8), ("exp2", 8, 32, 8), ("exp2", 4, 32, 4), ("seq", 8, 16, 2),
    ("exp2", 8, 64, 8), ("exp2", 16, 16, 4), ("exp2", 4, 16, 2), ("exp2", 8, 16, 2),
]


def _env_grid(name, default):
    """A grid from the environment: NAME="variant:T:BE:warps[:maxnreg[:save_BE:save_warps]],..."
    replaces the default list (e.g. SWEEP_M1_FWD="tr_scan:8:8:1,tr_scan:16:8:1" to time a few
    neighbours only; SWEEP_M1_BWD="lanes:4:8:1:160" caps the "lanes" VJP at 160 registers a
    thread; "lanes:4:16:1:-:32:4" runs its state-saving forward at 32 channels and 4 warps a
    program, "-" leaving the registers uncapped)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    grid = []
    for item in raw.split(","):
        v, T, BE, w, *rest = item.strip().split(":")
        grid.append((v, int(T), int(BE), int(w), *(0 if r == "-" else int(r) for r in rest[:3])))
    return grid


def _m1_entry(cfg):
    """(variant, T, BE, warps[, maxnreg[, save_BE, save_warps]]) -> the CONFIG entry it
    launches (the last two: the VJP's state-saving forward, selective_scan.CONFIG's keys)."""
    v, T, BE, w, *rest = cfg
    entry = {"T": T, "BE": BE, "num_warps": w, "variant": v}
    if rest and rest[0]:
        entry["maxnreg"] = rest[0]
    if len(rest) >= 3 and rest[1] and rest[2]:  # ("-" reads as 0: the VJP's own launch)
        entry["save_BE"], entry["save_warps"] = rest[1], rest[2]
    return entry


# Mamba-3 VJP launches (kernels/mamba3.CONFIG["bwd"]): (chunk cap, num_warps, stages), None =
# the default. The backward is one program per (batch, head) walking the chunks in reverse with
# the (P, N) state gradient in registers; at Qk = 64, N = 128 its tiles spill, so smaller
# chunks and other warp counts are the first things to try. Compiled for sm_90 on the CPU
# (Triton 3.9, bf16, P=64, N=128; SASS instructions, spill loads + stores): Qk=64 8 warps
# 11.1k, 1785; Qk=32 8 warps 6.0k, 448; Qk=16 8 warps 4.4k, 125; 16 warps (128 registers)
# Qk=32 4.5k, 729, Qk=16 3.2k, 356; 4 warps spill 2-4x more than 8 (not in the grid).
# Run 22 (H100, bf16) timed that grid: chunk 16, 8 warps, 2 stages 2.08 ms (the default since);
# chunk 64 3.42, chunk 32 2.62-2.94, 16 warps 7-14. The grid now looks around the default
# (chunk 16 is the smallest layout at R = 1: Qk R >= 16 rows).
M3_BWD = [(16, 4, 1), (16, 4, 1, 32), (16, 4, 1, 16), (16, 4, 1, None, 4), (16, 4, 1, 32, 4), (16, 4, 2),
          (16, 8, 1), (32, 4, 1)]
# Run 23 timed the grid above it: chunk 16, 4 warps, 1 stage 1.66 ms (the default since). A 4th
# entry is the state rows a program of the backward's state recompute ("recompute_bp", None:
# min(P, 64)); of the forward, "bp": B H P / bp programs instead of B H (256 at this shape). A 5th
# (backward) is "state_stride" K: every K-th entering state kept, the others recomputed in the
# backward (compiled for sm_90 at chunk 16 / 4 warps: 557 spill loads against 367 at K=1). A 6th
# (backward) runs the "blocked" variant with that many chunks a program (session 14, untimed).
# Forward launches (CONFIG["fwd"]): compiled for sm_90 the forward spills 329 loads and stores at
# chunk 64, 32 at chunk 32, none at 16 (8 warps); run 23 timed chunk 64 (the default) 0.449 ms,
# chunk 32 / 8 warps 0.440, chunk 16 / 8 warps 0.610.
# Compiled for sm_90 (bf16, Qk=64, 8 warps) the spill loads a chunk fall from 164 at bp=64 to 106
# at bp=32; chunk 32, 4 warps, bp=32: 55.
M3_FWD = [(None, None, None), (None, None, None, 32), (32, 8, None, 32), (32, 4, None, 32),
          (None, None, None, 16), (32, 8, None)]


def _m3_grid(name="SWEEP_M3", default=M3_BWD):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    conv = lambda v: None if v in ("-", "", "None") else int(v)  # noqa: E731
    return [tuple(conv(v) for v in item.strip().split(":")) for item in raw.split(",")]


# B/C prologue launches (kernels/mamba3_bc.CONFIG["bc"], ["bc_vjp"]): (T, num_warps, HB), HB
# None = a whole group. Compiled for sm_90 (bf16, N=128, S=32) the registers follow T N / warps:
# T=16 / 4 warps 184 (forward) and 255 (VJP), the session-8 default, 0.61 ms forward in run 23;
# T=8 / 8 warps 48 and 80; T=16 / 8 warps 87 and 140.
BC_FWD = [(8, 8, None), (16, 4, None), (16, 8, None), (8, 4, None), (8, 8, 4), (8, 8, 8), (4, 4, None),
          (16, 8, 4), (32, 8, None)]
BC_VJP = [(8, 8, None), (16, 4, None), (16, 8, None), (8, 4, None), (8, 8, 8), (4, 4, None), (16, 8, 8)]
# Angle scan launches (kernels/rope.CONFIG["angles_fwd"], ["angles_bwd"]): (segments, HB, T),
# None keeps the default; one segment was the layout of run 23 (0.119 / 0.245 ms). Segments are
# at least CONFIG's "min_seg" tokens (128: at L=2048 more than 16 segments run as 16). Compiled for
# sm_90 at T=64: the forward 159 registers (HB=1), the VJP 255 with 23 spill stores (HB=4).
# A 4th field names the forward's variant, "scan" or "seq" (rope.py; forward only: the VJP skips
# such rows); without it a row runs the default's variant ("seq" since run 38, at HB=8 T=8 unless
# the row says otherwise). Compiled for sm_90 on the CPU (Triton 3.6, benchmarks/sass_stats.py), the
# default "scan" forward and totals pass take ~157 instructions an element at 230 / 111
# registers; "seq" at T=8: ~116 (HB=4), ~84 (HB=8), ~67 (HB=16) at 29-64 registers.
ANGLES = [(16, None, None), (1, None, None), (8, None, None), (32, None, None), (16, 1, None), (16, 2, None),
          (16, 4, None), (16, None, 32), (32, None, 32), (32, 2, 32), (64, None, 16),
          (16, 8, 8, "seq"), (16, 16, 8, "seq"), (32, 8, 8, "seq"), (32, 16, 8, "seq"), (16, 4, 8, "seq"),
          (16, 2, 32, "scan")]  # the forward's default until run 38


M2_STEP = [{"BP": 8, "num_warps": 4}, {"BP": 32, "num_warps": 4}, {"BP": 64, "num_warps": 8},
           {"BP": 16, "num_warps": 2}]

RESULTS: dict = {"device": None, "parts": {}, "errors": {}, "best": {}}

#: the shapes timed; --smoke replaces them (and the device) with tiny ones for a CPU self-test
RUN = {
    "dev": "cuda", "smoke": False,
    "m1": dict(B=8, L=2048, E=2048, N=16),
    "ssd": dict(B=8, L=2048, H=32, P=64, N=128),
    "m3": dict(B=8, L=2048, H=32, P=64, N=128),
    "lm": dict(d_model=1024, n_layer=48, vocab_size=50280,
               ssm_cfg={"layer": "Mamba2", "d_state": 128, "headdim": 64, "expand": 2}),
    "batches": (1, 16),
}
SMOKE = {
    "dev": "cpu", "smoke": True,
    "m1": dict(B=1, L=12, E=8, N=4),
    "ssd": dict(B=1, L=40, H=2, P=4, N=8),
    "m3": dict(B=1, L=40, H=2, P=4, N=8),
    "lm": dict(d_model=16, n_layer=2, vocab_size=11,
               ssm_cfg={"layer": "Mamba2", "d_state": 8, "headdim": 4, "expand": 2}),
    "batches": (1, 2),
}


def _bench(fn, rep=60):
    if RUN["smoke"]:  # the interpreter: no CUDA events; one timed call (meaningless numbers)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median")


def _grid(configs):
    return configs[:3] if RUN["smoke"] else configs


def _rel(a, b):
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _save(out_dir=None):
    out_dir = out_dir or RUN.get("out_dir")
    if out_dir:
        with open(os.path.join(out_dir, "sweep_tt.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


# ---- (a) Mamba-1 selective scan -----------------------------------------------------------------
def part_m1(deadline):
    import torch

    import yardstick  # benchmarks/gpu: the benchmark's inputs

    from mamba_backend_torch_triton.kernels import selective_scan as SS

    B, L, E, N = (RUN["m1"][k] for k in ("B", "L", "E", "N"))
    # SWEEP_M1_DTYPE=float32 times the float32 configs (CONFIG["fwd_f32"], ["bwd_f32"])
    f32 = os.environ.get("SWEEP_M1_DTYPE", "bfloat16") == "float32"
    dev, bf = RUN["dev"], (torch.float32 if f32 else torch.bfloat16)
    fwd_key, bwd_key = ("fwd_f32", "bwd_f32") if f32 else ("fwd", "bwd")
    args, dy = yardstick.mamba1_inputs(B, L, E, N, bf, dev)
    saved = {k: dict(v) for k, v in SS.CONFIG.items()}
    out = {"shape": dict(B=B, L=L, E=E, N=N, dtype=str(bf).split(".")[-1]), "fwd": [], "bwd": []}
    RESULTS["parts"]["m1"] = out
    t_fwd_end = time.time() + 0.55 * (deadline - time.time())
    try:
        ref_y = None
        for cfg in _grid(_env_grid("SWEEP_M1_FWD", M1_FWD)):
            if time.time() > t_fwd_end:
                out["fwd_skipped"] = out.get("fwd_skipped", 0) + 1
                continue
            variant, T, BE, w = cfg[:4]
            SS.CONFIG["interpret" if RUN["smoke"] else fwd_key] = _m1_entry(cfg)
            entry = dict(_m1_entry(cfg))
            try:
                y, _ = SS.selective_scan(*args)
                if ref_y is None:
                    ref_y = y
                entry["rel_vs_baseline"] = _rel(y, ref_y)
                entry["ms"] = _bench(lambda: SS.selective_scan(*args))
            except Exception as exc:  # noqa: BLE001
                entry["error"] = f"{type(exc).__name__}: {exc}"[:200]
            out["fwd"].append(entry)
            _save()
            print(f"  m1 fwd {variant:5s} T={T:<3d} BE={BE:<4d} w={w}: "
                  f"{entry.get('ms', float('nan')):.3f} ms  rel {entry.get('rel_vs_baseline', float('nan')):.1e}"
                  f"  {entry.get('error', '')}", flush=True)
        ok = [e for e in out["fwd"] if "ms" in e and e["rel_vs_baseline"] < 2e-2]
        best_f = min(ok, key=lambda e: e["ms"]) if ok else None
        out["best_fwd"] = best_f
        ref_g = None
        for cfg in _grid(_env_grid("SWEEP_M1_BWD", M1_BWD)):
            if time.time() > deadline:
                out["bwd_skipped"] = out.get("bwd_skipped", 0) + 1
                continue
            variant, T, BE, w = cfg[:4]
            SS.CONFIG["interpret" if RUN["smoke"] else bwd_key] = _m1_entry(cfg)
            entry = dict(_m1_entry(cfg))
            try:
                gr = SS.selective_scan_vjp((dy, None), *args)
                if ref_g is None:
                    ref_g = gr
                entry["rel_vs_baseline"] = max(_rel(gr[k], ref_g[k]) for k in ref_g)
                entry["vjp_ms"] = _bench(lambda: SS.selective_scan_vjp((dy, None), *args))
                if best_f is not None:
                    entry["fwd_bwd_ms"] = best_f["ms"] + entry["vjp_ms"]
            except Exception as exc:  # noqa: BLE001
                entry["error"] = f"{type(exc).__name__}: {exc}"[:200]
            out["bwd"].append(entry)
            _save()
            save = f" save={entry['save_BE']}/{entry['save_warps']}" if "save_BE" in entry else ""
            print(f"  m1 vjp {variant:5s} T={T:<3d} BE={BE:<4d} w={w} r={entry.get('maxnreg', '-')}{save}: "
                  f"{entry.get('vjp_ms', float('nan')):.3f} ms  rel {entry.get('rel_vs_baseline', float('nan')):.1e}"
                  f"  {entry.get('error', '')}", flush=True)
        ok = [e for e in out["bwd"] if "vjp_ms" in e and e["rel_vs_baseline"] < 2e-2]
        out["best_bwd"] = min(ok, key=lambda e: e["vjp_ms"]) if ok else None
        RESULTS["best"]["m1_fwd_ms"] = best_f and best_f["ms"]
        if best_f and out["best_bwd"]:
            RESULTS["best"]["m1_fwd_bwd_ms"] = best_f["ms"] + out["best_bwd"]["vjp_ms"]
    finally:
        SS.CONFIG.clear()
        SS.CONFIG.update(saved)


# ---- (b) SSD ------------------------------------------------------------------------------------
def part_ssd(deadline):
    import torch

    from mamba_backend_torch_triton.kernels import _scan_common as SC
    from mamba_backend_torch_triton.kernels import ssd as SSD

    B, L, H, P, N = (RUN["ssd"][k] for k in ("B", "L", "H", "P", "N"))
    dev, bf = RUN["dev"], torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(B, L, H, P, device=dev, dtype=bf, generator=g)
    dt = (torch.rand(B, L, H, device=dev, generator=g) * 2 - 4).to(bf)
    A = -torch.rand(H, device=dev, generator=g) * 15 - 1
    Bm = torch.randn(B, L, 1, N, device=dev, dtype=bf, generator=g)
    Cm = torch.randn(B, L, 1, N, device=dev, dtype=bf, generator=g)
    D = torch.ones(H, device=dev)
    db = torch.rand(H, device=dev, generator=g) - 3
    dy = torch.randn(B, L, H, P, device=dev, dtype=bf, generator=g)
    out = {"shape": dict(B=B, L=L, H=H, P=P, N=N, G=1, dtype="bfloat16")}
    RESULTS["parts"]["ssd"] = out
    ys = {}
    for Q in (64, 256):
        if time.time() > deadline:
            out[f"chunk {Q}"] = "skipped (time)"
            continue
        args = (x, dt, A, Bm, Cm, Q, D, None, db, True)
        entry = {}
        try:
            before = set(SC._FITTED)
            ys[Q] = SSD.ssd_scan(*args)[0]
            entry["fwd_ms"] = _bench(lambda: SSD.ssd_scan(*args), rep=100)
            SSD.ssd_scan_vjp((dy, None), *args)
            entry["fwd_bwd_ms"] = _bench(lambda: (SSD.ssd_scan(*args), SSD.ssd_scan_vjp((dy, None), *args)), rep=100)
            entry["configs (Qk, stages)"] = {k[0]: v for k, v in SC._FITTED.items() if k not in before}
            if 64 in ys and Q != 64:
                entry["rel_vs_chunk64"] = _rel(ys[Q], ys[64])
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
            traceback.print_exc()
        out[f"chunk {Q}"] = entry
        RESULTS["best"][f"ssd_chunk{Q}"] = {k: entry.get(k) for k in ("fwd_ms", "fwd_bwd_ms")}
        print(f"  ssd chunk {Q}: {entry}", flush=True)


# ---- (c) Mamba-3 SISO VJP --------------------------------------------------------------------------
def part_m3(deadline):
    import torch

    from mamba_backend_torch_triton.kernels import mamba3 as M3

    B, L, H, P, N = (RUN["m3"][k] for k in ("B", "L", "H", "P", "N"))
    warm = os.environ.get("SWEEP_M3_WARM") == "1"
    if warm:
        B = 1
    R = int(os.environ.get("SWEEP_M3_R", "1"))
    dname = os.environ.get("SWEEP_M3_DTYPE", "bfloat16")
    if dname not in ("bfloat16", "float32"):
        raise ValueError(f"SWEEP_M3_DTYPE={dname!r}: expected bfloat16 or float32")
    dev, bf = RUN["dev"], getattr(torch, dname)
    g = torch.Generator(device=dev).manual_seed(3)
    x = torch.randn(B, L, H, P, device=dev, dtype=bf, generator=g)
    dt = torch.nn.functional.softplus(torch.rand(B, L, H, device=dev, generator=g) * 2 - 4)
    A = -(torch.rand(B, L, H, device=dev, generator=g) + 0.5)
    trap = torch.rand(B, L, H, device=dev, generator=g)
    Bm = torch.randn(B, L, R, H, N, device=dev, dtype=bf, generator=g)
    Cm = torch.randn(B, L, R, H, N, device=dev, dtype=bf, generator=g)
    D = torch.ones(H, device=dev)
    mx = torch.randn(H, R, P, device=dev, generator=g) / R if R > 1 else None
    dy = torch.randn(B, L, R, H, P, device=dev, dtype=bf, generator=g)
    args = (x, dt, A, trap, Bm, Cm, D, mx, 64)
    cot = (dy, None, None, None)
    # the CONFIG entries this dtype launches under (float32: "fwd_ieee" / "bwd_ieee")
    kf, kb = M3.conf_key("fwd", bf), M3.conf_key("bwd", bf)
    saved = dict(M3.CONFIG[kb])
    saved_f = dict(M3.CONFIG[kf])
    out = {"shape": dict(B=B, L=L, H=H, P=P, N=N, R=R, dtype=dname), "keys": [kf, kb], "fwd": [], "bwd": []}
    RESULTS["parts"]["m3"] = out
    try:
        _m3_launches(M3, kf, _m3_grid("SWEEP_M3_FWD", M3_FWD), lambda: M3.mamba3_scan(*args)[0], _rel,
                     deadline, warm, out["fwd"])
        M3.CONFIG[kf] = saved_f
        M3.mamba3_scan(*args)
        if not warm:
            out["fwd_ms"] = _bench(lambda: M3.mamba3_scan(*args))
        _m3_launches(M3, kb, _m3_grid(), lambda: M3.mamba3_scan_vjp(cot, *args),
                     lambda g, r: max(_rel(g[k], r[k]) for k in r), deadline, warm, out["bwd"])
        ok = [e for e in out["bwd"] if "ms" in e and e["rel_vs_first"] < 2e-2]
        out["best"] = min(ok, key=lambda e: e["ms"]) if ok else None
        if out["best"]:
            out["best"]["fwd_bwd_ms"] = out["fwd_ms"] + out["best"]["ms"]
            RESULTS["best"]["m3_vjp"] = out["best"]
    finally:
        M3.CONFIG[kb] = saved
        M3.CONFIG[kf] = saved_f


def _m3_launches(M3, kind, grid, call, rel_of, deadline, warm, entries):
    """Time ``call`` under each (chunk, warps, stages[, bp[, state_stride[, block]]]) of ``grid`` set in
    M3.CONFIG[kind] ("fwd", "bwd" or their "_ieee" float32 entries; the grid's chunk replaces the
    entry's "rows" cap); each result is compared with the first config's (rel_of); warm: only
    compile (first call)."""
    base = dict(M3.CONFIG[kind])
    ref = None
    bp_key = "bp" if kind.startswith("fwd") else "recompute_bp"
    for chunk, w, st, *rest in _grid(grid):
        if time.time() > deadline:
            continue
        bp = rest[0] if rest else None
        extra = {bp_key: bp}
        if kind.startswith("bwd"):
            extra["state_stride"] = rest[1] if len(rest) > 1 else None
            # a 6th field: the "blocked" backward, its block of chunks a program
            extra["variant"] = "blocked" if len(rest) > 2 and rest[2] else "serial"
            extra["block"] = rest[2] if len(rest) > 2 else None
        M3.CONFIG[kind] = dict(base, chunk=chunk, num_warps=w, stages=st, rows=None, **extra)
        entry = {"chunk": chunk, "num_warps": w, "stages": st, **extra}
        ref = _time_config(entry, call, rel_of, ref, warm)
        entries.append(entry)
        _save()
        print(f"  m3 {kind} chunk={chunk} warps={w} stages={st} {bp_key}={bp} "
              f"stride={extra.get('state_stride')} block={extra.get('block')}: "
              f"{entry.get('ms', float('nan')):.3f} ms  "
              f"rel {entry.get('rel_vs_first', float('nan')):.1e}  first call {entry.get('first_call_s')} s"
              f"  {entry.get('error', '')}", flush=True)
    M3.CONFIG[kind] = base


def _time_config(entry, call, rel_of, ref, warm):
    """One config of a launch grid: its first call (compiles; wall time recorded), then, unless
    warm, its result against ``ref`` (the first config's; this one's when None) and its median
    time. Fills ``entry`` (an exception is recorded there) and returns the reference to keep."""
    import torch

    try:
        t0 = time.time()
        got = call()
        if RUN["dev"] == "cuda":
            torch.cuda.synchronize()
        entry["first_call_s"] = round(time.time() - t0, 1)
        if not warm:
            ref = got if ref is None else ref
            entry["rel_vs_first"] = rel_of(got, ref)
            entry["ms"] = _bench(call)
    except Exception as exc:  # noqa: BLE001
        entry["error"] = f"{type(exc).__name__}: {exc}"[:200]
    return ref


# ---- (c') Mamba-3 B/C prologue ------------------------------------------------------------------
def part_bc(deadline):
    import torch

    from mamba_backend_torch_triton.kernels import mamba3_bc as BC

    B, L, H, N = (RUN["m3"][k] for k in ("B", "L", "H", "N"))
    S = N // 4
    warm = os.environ.get("SWEEP_M3_WARM") == "1"
    if warm:
        B = 1
    dev, bf = RUN["dev"], torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(4)
    Bg = torch.randn(B, L, 1, 1, N, device=dev, dtype=bf, generator=g)
    Cg = torch.randn(B, L, 1, 1, N, device=dev, dtype=bf, generator=g)
    phi = torch.rand(B, L, H, S, device=dev, generator=g) * 6.283
    bb = torch.randn(1, H, N, device=dev, generator=g)
    cb = torch.randn(1, H, N, device=dev, generator=g)
    dBh = torch.randn(B, L, 1, H, N, device=dev, dtype=bf, generator=g)
    dCh = torch.randn(B, L, 1, H, N, device=dev, dtype=bf, generator=g)
    out = {"shape": dict(B=B, L=L, H=H, N=N, S=S, G=1, R=1, dtype="bfloat16"), "fwd": [], "bwd": []}
    RESULTS["parts"]["bc"] = out
    saved = {k: dict(v) for k, v in BC.CONFIG.items()}

    def rel_of(got, ref):
        return max(_rel(a, b) for a, b in zip(got, ref) if a is not None)

    try:
        for kind, grid, call in (
                ("bc", _bc_grid("SWEEP_BC", BC_FWD), lambda: BC.bc_heads_rope(Bg, Cg, phi, bb, cb, H)),
                ("bc_vjp", _bc_grid("SWEEP_BC_VJP", BC_VJP),
                 lambda: BC.bc_heads_rope_vjp(dBh, dCh, Bg, Cg, phi, bb, cb))):
            ref = None
            for T, w, hb in _grid(grid):
                if time.time() > deadline:
                    continue
                BC.CONFIG[kind] = dict(saved[kind], T=T, num_warps=w, HB=hb)
                entry = {"T": T, "num_warps": w, "HB": hb}
                ref = _time_config(entry, call, rel_of, ref, warm)
                out["fwd" if kind == "bc" else "bwd"].append(entry)
                _save()
                print(f"  bc {kind} T={T} warps={w} HB={hb}: {entry.get('ms', float('nan')):.3f} ms  "
                      f"rel {entry.get('rel_vs_first', float('nan')):.1e}  first call {entry.get('first_call_s')} s"
                      f"  {entry.get('error', '')}", flush=True)
            BC.CONFIG[kind] = dict(saved[kind])
            ok = [e for e in out["fwd" if kind == "bc" else "bwd"] if "ms" in e and e["rel_vs_first"] < 2e-2]
            if ok:
                RESULTS["best"][kind] = min(ok, key=lambda e: e["ms"])
    finally:
        BC.CONFIG.update(saved)
    _angles_launches(B, L, H, S, deadline, warm, out)


def _angles_launches(B, L, H, S, deadline, warm, out):
    """mamba3_angles and its VJP under each (segments, HB, T) of ANGLES (None keeps the default)."""
    import torch

    from mamba_backend_torch_triton.kernels import rope as RK

    dev = RUN["dev"]
    g = torch.Generator(device=dev).manual_seed(5)
    ang = torch.randn(B, L, S, device=dev, generator=g)
    dtv = torch.nn.functional.softplus(torch.rand(B, L, H, device=dev, generator=g) * 2 - 4)
    dphi = torch.randn(B, L, H, S, device=dev, generator=g)
    saved = {k: dict(RK.CONFIG[k]) for k in ("angles_fwd", "angles_bwd", "interpret")}

    def rel_of(got, ref):  # phi lives mod 2 pi: compared through its cosine
        if isinstance(got, dict):
            return _rel(got["angles"], ref["angles"])
        return _rel(torch.cos(got), torch.cos(ref))

    try:
        for kind, call in (("angles_fwd", lambda: RK.mamba3_angles(ang, dtv)[0]),
                           ("angles_bwd", lambda: RK.mamba3_angles_vjp((dphi, None), ang, dtv))):
            rows = out.setdefault(kind, [])
            ref = None
            for cfg in _grid(_angles_grid()):
                nseg, hb, T = cfg[:3]
                variant = cfg[3] if len(cfg) > 3 else None
                if time.time() > deadline or (variant and kind == "angles_bwd"):
                    continue
                RK.CONFIG[kind] = dict(saved[kind], segments=nseg, **({} if hb is None else {"HB": hb}),
                                       **({} if T is None else {"T": T}),
                                       **({} if variant is None else {"variant": variant}))
                if RUN["smoke"]:  # the CPU reads "interpret": the row's variant runs there too
                    RK.CONFIG["interpret"] = dict(saved["interpret"], variant=RK.CONFIG[kind].get("variant", "scan"))
                entry = {"segments": nseg, "HB": RK.CONFIG[kind]["HB"], "T": RK.CONFIG[kind]["T"],
                         "variant": RK.CONFIG[kind].get("variant", "scan")}
                ref = _time_config(entry, call, rel_of, ref, warm)
                rows.append(entry)
                _save()
                print(f"  bc {kind} {entry['variant']} segments={nseg} HB={entry['HB']} T={entry['T']}: "
                      f"{entry.get('ms', float('nan')):.3f} ms  "
                      f"rel {entry.get('rel_vs_first', float('nan')):.1e}  {entry.get('error', '')}", flush=True)
            RK.CONFIG[kind] = dict(saved[kind])
            RK.CONFIG["interpret"] = dict(saved["interpret"])
            ok = [e for e in rows if "ms" in e and e["rel_vs_first"] < 1e-3]
            if ok:
                RESULTS["best"][kind] = min(ok, key=lambda e: e["ms"])
    finally:
        RK.CONFIG.update(saved)


def _angles_grid():
    """ANGLES, or SWEEP_ANGLES="segments:HB:T[:variant],..." ("-" keeps the default)."""
    raw = os.environ.get("SWEEP_ANGLES", "").strip()
    if not raw:
        return ANGLES
    conv = lambda v: None if v in ("-", "", "None") else int(v)  # noqa: E731
    grid = []
    for item in raw.split(","):
        f = item.strip().split(":")
        grid.append(tuple(conv(v) for v in f[:3]) + tuple(f[3:4]))
    return grid


def _bc_grid(name, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    conv = lambda v: None if v in ("-", "", "None") else int(v)  # noqa: E731
    return [tuple(conv(v) for v in item.strip().split(":")) for item in raw.split(",")]


# ---- (d) decode -----------------------------------------------------------------------------------
def part_decode(deadline):
    import numpy as np
    import torch

    from mamba_core.models import lm
    from mamba_core.models.config import LMConfig

    from mamba_backend_torch_triton.backend import TorchTritonBackend
    from mamba_backend_torch_triton.graphs import CudaGraphDecoder
    from mamba_backend_torch_triton.kernels import mixer_steps as MS

    be = TorchTritonBackend()
    cfg = LMConfig(**RUN["lm"])
    t0 = time.time()
    np_params = lm.init_params(cfg, np.random.default_rng(0))
    nparams = sum(v.size for v in np_params.values())
    params = lm.to_backend(be, np_params, "bfloat16")
    del np_params
    out = {"params_M": round(nparams / 1e6, 1), "init_s": round(time.time() - t0, 1)}
    RESULTS["parts"]["decode"] = out
    print(f"  decode: {nparams / 1e6:.0f}M params, init {time.time() - t0:.0f} s", flush=True)
    env_old = os.environ.get("MAMBA_NO_FUSED_STEP")

    def run(batch, fused, tokens=4):
        os.environ["MAMBA_NO_FUSED_STEP"] = "0" if fused else "1"
        dec = CudaGraphDecoder(be, params, cfg, dtype="bfloat16")
        ids = torch.arange(batch, device=RUN["dev"], dtype=torch.long) % cfg.vocab_size
        dec.capture(batch)
        dec.reset(batch)
        for t in range(tokens):  # the same tokens from a zero cache: comparable logits
            logits = dec.step((ids + 7 * t) % cfg.vocab_size).clone()
        ms = _bench(lambda: dec.step(ids), rep=100)
        del dec
        return ms, logits

    try:
        for batch in RUN["batches"]:
            key = f"batch {batch}"
            entry = {}
            out[key] = entry
            for fused in (True, False):
                if time.time() > deadline:
                    entry["skipped"] = "time"
                    break
                name = "fused" if fused else "unfused"
                try:
                    ms, logits = run(batch, fused)
                    entry[f"{name}_ms"] = ms
                    entry[f"{name}_tok_s"] = batch * 1e3 / ms
                    entry[f"_{name}_logits"] = logits
                except Exception as exc:  # noqa: BLE001
                    entry[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    traceback.print_exc()
            lf, lu = entry.pop("_fused_logits", None), entry.pop("_unfused_logits", None)
            if lf is not None and lu is not None:
                entry["fused_vs_unfused_logits_rel"] = _rel(lf, lu)
            RESULTS["best"][f"decode_b{batch}_ms"] = {k: entry.get(f"{k}_ms") for k in ("fused", "unfused")}
            print(f"  decode {key}: {entry}", flush=True)
            _save()
        saved = dict(MS.CONFIG["mamba2"])
        out["fused_configs"] = []
        try:
            for c in _grid(M2_STEP):
                if time.time() > deadline:
                    break
                MS.CONFIG["mamba2"] = dict(c)
                row = dict(c)
                for batch in RUN["batches"]:
                    try:
                        row[f"b{batch}_ms"] = run(batch, True, tokens=1)[0]
                    except Exception as exc:  # noqa: BLE001
                        row[f"b{batch}_error"] = f"{type(exc).__name__}: {exc}"[:200]
                out["fused_configs"].append(row)
                print(f"  decode fused {row}", flush=True)
        finally:
            MS.CONFIG["mamba2"] = saved
    finally:
        if env_old is None:
            os.environ.pop("MAMBA_NO_FUSED_STEP", None)
        else:
            os.environ["MAMBA_NO_FUSED_STEP"] = env_old


def _table():
    b = RESULTS["best"]
    lines = ["", "sweep_tt summary (ms, medians)"]
    m1 = RESULTS["parts"].get("m1", {})
    if m1.get("best_fwd"):
        f = m1["best_fwd"]
        base = next((e for e in m1["fwd"] if "ms" in e), None)
        lines.append(f"  Mamba-1 fwd       best {f['ms']:.3f}  ({f['variant']}, T={f['T']}, BE={f['BE']}, "
                     f"warps={f['num_warps']}); baseline {base['ms']:.3f}")
    if m1.get("best_bwd"):
        f = m1["best_bwd"]
        lines.append(f"  Mamba-1 VJP       best {f['vjp_ms']:.3f}  ({f['variant']}, T={f['T']}, BE={f['BE']}, "
                     f"warps={f['num_warps']}); fwd+bwd {b.get('m1_fwd_bwd_ms', float('nan')):.3f}")
    for Q in (64, 256):
        s = b.get(f"ssd_chunk{Q}")
        if s and s.get("fwd_ms") is not None:
            lines.append(f"  SSD chunk {Q:<4d}    fwd {s['fwd_ms']:.3f}   fwd+bwd {s.get('fwd_bwd_ms') or float('nan'):.3f}")
    m3 = RESULTS["parts"].get("m3", {})
    sh = m3.get("shape", {})
    tag = ("Mamba-3 SISO" if sh.get("R", 1) == 1 else f"Mamba-3 MIMO R={sh['R']}") + \
        ("" if sh.get("dtype", "bfloat16") == "bfloat16" else f" {sh['dtype']}")
    fw = [e for e in m3.get("fwd", []) if "ms" in e]
    if fw:
        f = min(fw, key=lambda e: e["ms"])
        lines.append(f"  {tag} fwd  best {f['ms']:.3f}  (chunk={f['chunk']}, warps={f['num_warps']}, "
                     f"stages={f['stages']}, bp={f.get('bp')}); first config {fw[0]['ms']:.3f}")
    if m3.get("best"):
        f = m3["best"]
        lines.append(f"  {tag} VJP  best {f['ms']:.3f}  (chunk={f['chunk']}, warps={f['num_warps']}, "
                     f"stages={f['stages']}, recompute_bp={f.get('recompute_bp')}, "
                     f"state_stride={f.get('state_stride')}); fwd {m3['fwd_ms']:.3f}, "
                     f"fwd+bwd {f['fwd_bwd_ms']:.3f}")
    for kind in ("angles_fwd", "angles_bwd"):
        f = b.get(kind)
        if f:
            first = RESULTS["parts"]["bc"][kind][0]
            lines.append(f"  {kind:<17s} best {f['ms']:.3f}  ({f.get('variant', 'scan')}, segments={f['segments']}, "
                         f"HB={f['HB']}, T={f['T']}); "
                         f"first config {first.get('ms', float('nan')):.3f}")
    for kind in ("bc", "bc_vjp"):
        f = b.get(kind)
        if f:
            first = RESULTS["parts"]["bc"]["fwd" if kind == "bc" else "bwd"][0]
            lines.append(f"  {kind:<17s} best {f['ms']:.3f}  (T={f['T']}, warps={f['num_warps']}, HB={f['HB']}); "
                         f"first config {first.get('ms', float('nan')):.3f}")
    for batch in RUN["batches"]:
        d = b.get(f"decode_b{batch}_ms")
        if d:
            fu, un = d.get("fused"), d.get("unfused")
            lines.append(f"  decode batch {batch:<3d} fused {fu if fu is None else f'{fu:.3f}'} ms/token   "
                         f"unfused {un if un is None else f'{un:.3f}'} ms/token")
    for row in RESULTS["parts"].get("decode", {}).get("fused_configs", []):
        lines.append(f"  decode fused cfg {row}")
    if RESULTS["errors"]:
        lines.append(f"  errors: {RESULTS['errors']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sweep_tt.py", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", help="folder for sweep_tt.json (created if missing)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    ap.add_argument("--budget", type=float, default=125.0,
                    help="seconds for the whole sweep (parts stop starting configs past their share)")
    ap.add_argument("--smoke", action="store_true",
                    help="self-test of this script on the CPU under TRITON_INTERPRET=1 at tiny "
                         "shapes (3 configs a grid; the timings mean nothing)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part(s) {bad}; the parts are {list(PARTS)}")
    try:
        import torch
    except ImportError:
        print("sweep_tt: torch is not installed; this sweep needs torch with CUDA and triton", file=sys.stderr)
        return 2
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            ap.error("--smoke runs the kernels in the Triton interpreter: set TRITON_INTERPRET=1 "
                     "before Python starts")
        RUN.update(SMOKE)
    elif not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        print("sweep_tt: no CUDA GPU visible to torch (or TRITON_INTERPRET=1): this sweep times "
              "compiled Triton kernels and needs one; run it on the device machine "
              "(or try --smoke on the CPU)", file=sys.stderr)
        return 2
    import triton

    os.makedirs(args.out_dir, exist_ok=True)
    RUN["out_dir"] = args.out_dir
    start = time.time()
    RESULTS["device"] = {"name": "cpu (--smoke)" if args.smoke else torch.cuda.get_device_name(),
                         "torch": torch.__version__, "triton": triton.__version__,
                         "budget_s": args.budget}
    fns = {"m1": part_m1, "ssd": part_ssd, "m3": part_m3, "bc": part_bc, "decode": part_decode}
    left_share = sum(SHARE[p] for p in parts)
    for p in parts:
        now = time.time()
        remaining = args.budget - (now - start)
        deadline = now + remaining * SHARE[p] / left_share
        left_share -= SHARE[p]
        t0 = time.time()
        print(f"[{p}] up to {deadline - now:.0f} s", flush=True)
        try:
            fns[p](deadline)
        except Exception as exc:  # noqa: BLE001
            RESULTS["errors"][p] = f"{type(exc).__name__}: {exc}"[:300]
            traceback.print_exc()
        RESULTS.setdefault("seconds", {})[p] = round(time.time() - t0, 1)
        _save(args.out_dir)
        print(f"[{p}] {time.time() - t0:.0f} s", flush=True)
    print(_table(), flush=True)
    _save(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
