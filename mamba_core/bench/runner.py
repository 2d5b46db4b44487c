"""One run of the benchmark: every selected backend (and the external rows) over the op-level
and model-level benches of a preset, in one process, with the device ceilings measured first."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time

import numpy as np

from mamba_core.bench import external as ext
from mamba_core.bench import floors, models, ops, timing
from mamba_core.bench.presets import FAMILY_TITLES, get_preset

#: backends left out unless named: the float64 ground truth is slow on purpose
SLOW_BY_DESIGN = {"reference": "the float64 ground truth (Python loops, slow on purpose); name it to include it"}


class _Progress:
    """tqdm when installed, else one line per row."""

    def __init__(self, total, enabled):
        self.enabled, self.n, self.total, self.bar = enabled, 0, total, None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="row", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                self.bar = None

    def step(self, label):
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description(label[:60])
            self.bar.update(1)
        else:
            print(f"[{self.n}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"nproc": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return info


def commit() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        head = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def select_backends(names=None):
    """([(name, backend)], {name: reason skipped})."""
    from mamba_core.registry import installed, load_errors

    inst = installed()
    chosen, skipped = [], {}
    for name, err in load_errors().items():
        skipped[name] = err
    wanted = list(names) if names else sorted(inst, key=lambda n: (-inst[n].priority, n))
    for name in wanted:
        if name not in inst:
            skipped[name] = f"not installed (installed: {', '.join(sorted(inst))})"
            continue
        if not names and name in SLOW_BY_DESIGN:
            skipped[name] = SLOW_BY_DESIGN[name]
            continue
        why = inst[name].available()
        if not why:
            skipped[name] = why.reason
            continue
        chosen.append((name, inst[name]))
    return chosen, skipped


class _OurTarget:
    external = False

    def __init__(self, name, be):
        self.name, self.be, self.kind = name, be, timing.backend_kind(be)


def run(backends=None, preset: str = "cpu", *, quick: bool = False, baseline: str | None = None,
        levels=("ops", "models"), families=None, external: bool = True, seed: int = 0,
        progress: bool = True, command: str | None = None, log=print) -> dict:
    """Run the benchmark and return the results dict (see ``mamba_core.bench.report`` for outputs).

    backends: names (default: every available backend except ``reference``); preset: "quick",
    "cpu" or "gpu" (``quick=True`` forces "quick"); baseline: the backend the ratios divide by
    (default cpu_numpy when selected, else the first); levels: "ops" and/or "models";
    families: a subset of mamba1, mamba2, mamba3, mamba3_mimo (ops rmsnorm/conv1d always run).
    """
    pre = get_preset("quick" if quick else preset)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    chosen, skipped_backends = select_backends(backends)
    if not chosen:
        raise RuntimeError("no backend to benchmark: " + "; ".join(f"{k}: {v}" for k, v in skipped_backends.items()))
    for name, why in skipped_backends.items():
        log(f"backend {name} skipped: {why}")
    targets = [_OurTarget(n, be) for n, be in chosen]
    names = [t.name for t in targets]
    base = baseline or ("cpu_numpy" if "cpu_numpy" in names else names[0])
    if base not in names:
        raise RuntimeError(f"baseline {base!r} is not among the benchmarked backends {names}")
    externals = []
    if external:
        for t in ext.targets({t.kind for t in targets}):
            if t.unavailable:
                log(f"external {t.name} skipped: {t.unavailable}")
            externals.append(t)
    fams = tuple(families) if families else pre.families

    # ---- ceilings, once per device, at the start ---------------------------------------------
    device_of, ceilings = {}, {}
    for kind in sorted({t.kind for t in targets} | {t.kind for t in externals if not t.unavailable}):
        c = next((c for k, c in device_of.items() if _same_device(k, kind)), None)
        if c is None:
            log(f"measuring the ceilings of the {kind} device (copy bandwidth, matmul peak)...")
            c = floors.measure(kind, quick=pre.name == "quick")
            ceilings[c.device] = c
        device_of[kind] = c
    for c in ceilings.values():
        log(f"  {c.device}: bandwidth {c.bandwidth / 1e9:.1f} GB/s, float32 peak {c.peak / 1e9:.1f} GFLOP/s")

    # ---- the rows to run ---------------------------------------------------------------------
    jobs = []
    if "ops" in levels:
        for b in ops.all_benches():
            if b.family in ("mamba1", "mamba2", "mamba3", "mamba3_mimo") and b.family not in fams:
                continue
            for t in targets + [e for e in externals if e.applies("op", b.family, b.mode)]:
                jobs.append(("op", b, t))
    if "models" in levels:
        for task in models.tasks(pre, fams):
            for t in targets + [e for e in externals if e.applies("model", task.family, task.task)]:
                jobs.append(("model", task, t))

    rows = []
    bar = _Progress(len(jobs), progress)
    for level, item, t in jobs:
        label = f"{t.name}: {item.key if level == 'op' else item.family + ' ' + item.size.name + ' ' + item.label}"
        t0 = time.perf_counter()
        rows.append(_run_row(level, item, t, pre, device_of, seed))
        rows[-1]["wall_s"] = time.perf_counter() - t0  # the row's whole cost: setup, warm-up, repeats
        bar.step(label)
    bar.close()
    _ratios(rows, base)
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None
    now = _dt.datetime.now(_dt.timezone.utc)
    return {
        "meta": {
            "date": now.strftime("%Y-%m-%d %H:%M UTC"), "preset": pre.name, "op_shapes": pre.ops.describe(),
            "models": [{"name": s.name, "d_model": s.d_model, "n_layer": s.n_layer, "vocab_size": s.vocab_size}
                       for s in pre.models],
            "families": {f: FAMILY_TITLES[f] for f in fams},
            "machine": machine(), "commit": commit(), "command": command or "mamba_core.bench.run(...)",
            "backends": names, "skipped_backends": skipped_backends, "baseline": base, "seed": seed,
            "warmup": pre.warmup, "repeats": pre.repeats, "loadavg_start": load0, "loadavg_end": load1,
            "externals": {e.name: (e.unavailable or "ran") for e in externals},
        },
        "ceilings": {d: {"bandwidth_Bps": c.bandwidth, "peak_flops": c.peak, "copy_bytes": c.copy_bytes,
                         "matmul_n": c.matmul_n} for d, c in ceilings.items()},
        "rows": rows,
    }


def _same_device(k1, k2):
    cpu = {"numpy", "torch-cpu", "other"}
    return (k1 in cpu and k2 in cpu) or k1 == k2


def _run_row(level, item, t, pre, device_of, seed):
    row = {"level": level, "backend": t.name, "external": t.external, "kind": t.kind}
    if level == "op":
        s = pre.ops
        row.update(family=item.family, name=item.op, mode=item.mode, key=item.key,
                   batch=s.B, length=1 if item.mode == "step" else s.L, tokens=item.tokens(s))
        by, fl = item.cost(s)
    else:
        cfg = models.config(item.family, item.size)
        counts = models.param_counts(cfg, models.numpy_params(item.family, item.size, seed))
        row.update(family=item.family, name=item.label, mode=item.task, size=item.size.name,
                   params=counts["all"], key=f"{item.family}/{item.size.name}/{item.label}",
                   batch=item.batch, length=item.length, tokens=item.tokens)
        by, fl = models.cost(item, cfg, counts)
    c = device_of.get(t.kind)
    row.update(bytes=by, flops=fl)
    if c is not None:
        row.update(device=c.device, floor_s=c.floor(by, fl), bound=c.bound(by, fl))
    try:
        if level == "op":
            inputs = item.inputs(pre.ops, np.random.default_rng(seed))
            if t.external:
                fn = t.op(item, pre.ops, inputs)
            else:
                a = ops.to_backend(t.be, inputs)
                fn = lambda: item.call(t.be, a)  # noqa: E731
        else:
            fn = t.model(item) if t.external else models.prepare(t.be, item, seed)
        warm = pre.warmup
        mem = None
        if t.kind == "numpy":  # the first warm-up run also measures the peak (tracemalloc)
            mem = timing.peak_memory(fn, t.kind)
            warm = max(warm - 1, 0)
        times = timing.time_call(fn, t.kind, warm, pre.repeats)
        if t.kind != "numpy":
            mem = timing.peak_memory(fn, t.kind)
    except ext.Skip as exc:
        row["skipped"] = str(exc)
        return row
    except Exception as exc:  # noqa: BLE001 - one failing row must not end the run
        row["skipped"] = f"error: {type(exc).__name__}: {exc}"
        return row
    med = timing.median(times)
    row.update(time_s=med, times_s=times, tokens_per_s=row["tokens"] / med, peak_mem_bytes=mem)
    if row.get("floor_s"):
        row["x_floor"] = med / row["floor_s"]
    return row


def _ratios(rows, base):
    """speedup vs the baseline backend on the same row: baseline time / time (> 1 is faster)."""
    ref = {r["key"]: r["time_s"] for r in rows if r["backend"] == base and "time_s" in r}
    for r in rows:
        if "time_s" in r and r["key"] in ref:
            r["vs_baseline"] = ref[r["key"]] / r["time_s"]
