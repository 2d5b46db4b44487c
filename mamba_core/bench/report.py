"""The outputs of a bench run: a terminal table, JSON, a Markdown report and a PNG plot.

Columns: time (median of the repeats), tokens/s (B*L per fwd run, B per step, batch*steps per
decode run), floor (max(bytes / bandwidth, flops / peak), with the ceilings measured at the
start of the run) and "x floor" (time / floor: 1.0 is the physical limit), bound (which
ceiling sets the floor), "vs base" (baseline time / time: > 1 is faster than the baseline),
and peak memory ("-" where it cannot be measured: torch on the CPU).
"""

from __future__ import annotations

import json
import os
import re

from mamba_core.bench.presets import FAMILY_TITLES


def _t(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _num(x):
    if x is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _mem(b):
    if b is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b} B"


HEAD = ["row", "backend", "time", "tokens/s", "floor", "x floor", "bound", "vs base", "peak mem"]


def _cells(r):
    name = f"{r['family']} {r['name']} {r['mode']}" if r["level"] == "op" else \
        f"{r['family']} {r.get('size', '')} {r['name']}"
    be = r["backend"] + (" [ext]" if r["external"] else "")
    if "time_s" not in r:
        return [name, be, "skipped", "-", _t(r.get("floor_s")), "-", r.get("bound", "-"), "-", "-"]
    return [name, be, _t(r["time_s"]), _num(r["tokens_per_s"]), _t(r.get("floor_s")),
            f"{r['x_floor']:.1f}x" if "x_floor" in r else "-", r.get("bound", "-"),
            f"{r['vs_baseline']:.2f}" if "vs_baseline" in r else "-", _mem(r.get("peak_mem_bytes"))]


def _sections(res):
    rows = res["rows"]
    for level, title in (("op", "Op level"), ("model", "Model level")):
        sel = [r for r in rows if r["level"] == level]
        if sel:
            yield title, sel


def table(res) -> str:
    """The terminal table (plain text, aligned columns)."""
    m = res["meta"]
    lines = [f"mamba-core bench  preset {m['preset']}  {m['date']}  baseline {m['baseline']}",
             f"machine: {m['machine'].get('cpu_model', '?')}, {m['machine'].get('nproc')} cores"
             + (f", GPU {m['machine']['gpu']}" if m["machine"].get("gpu") else ""),
             f"op shapes: {m['op_shapes']}"]
    for d, c in res["ceilings"].items():
        lines.append(f"ceilings {d}: bandwidth {c['bandwidth_Bps'] / 1e9:.1f} GB/s, "
                     f"float32 peak {c['peak_flops'] / 1e9:.1f} GFLOP/s")
    for title, sel in _sections(res):
        cells = [HEAD] + [_cells(r) for r in sel]
        w = [max(len(c[i]) for c in cells) for i in range(len(HEAD))]
        lines += ["", title]
        for i, c in enumerate(cells):
            lines.append("  ".join(x.ljust(w[j]) if j < 2 else x.rjust(w[j]) for j, x in enumerate(c)))
            if i == 0:
                lines.append("  ".join("-" * x for x in w))
    skipped = [r for r in res["rows"] if "skipped" in r]
    if skipped:
        lines += ["", "Skipped rows (reason):"]
        seen = set()
        for r in skipped:
            k = (r["backend"], r["skipped"])
            if k not in seen:
                seen.add(k)
                lines.append(f"  {r['backend']}: {r['skipped']}")
    for name, why in res["meta"]["skipped_backends"].items():
        lines.append(f"  backend {name} not run: {why}")
    return "\n".join(lines)


def markdown(res, png_name: str | None = None) -> str:
    m = res["meta"]
    mc = m["machine"]
    out = [f"# mamba-core bench: preset `{m['preset']}`, {m['date']}", "",
           "| | |", "| --- | --- |",
           f"| machine | {mc.get('cpu_model', '?')}, {mc.get('nproc')} cores ({mc.get('platform')})"
           + (f"; GPU {mc['gpu']}" if mc.get("gpu") else "") + " |",
           f"| software | Python {mc.get('python')}, NumPy {mc.get('numpy')}"
           + (f", torch {mc['torch']} ({mc.get('torch_threads')} threads)" if mc.get("torch") else "") + " |",
           f"| commit | `{m['commit']}` |", f"| command | `{m['command']}` |",
           f"| backends | {', '.join(m['backends'])} (baseline **{m['baseline']}**) |",
           f"| op shapes | {m['op_shapes']} |",
           f"| models | " + "; ".join(f"{s['name']}: d_model {s['d_model']}, {s['n_layer']} layers, vocab {s['vocab_size']}"
                                     for s in m["models"]) + " |",
           f"| timing | warm-up {m['warmup']}, median of {m['repeats']} repeats, seed {m['seed']} |",
           f"| load average | start {_load(m['loadavg_start'])}, end {_load(m['loadavg_end'])} |", ""]
    out += ["## Ceilings (measured at the start of the run)", "", "| device | copy bandwidth | float32 matmul peak |",
            "| --- | --- | --- |"]
    for d, c in res["ceilings"].items():
        out.append(f"| {d} | {c['bandwidth_Bps'] / 1e9:.1f} GB/s | {c['peak_flops'] / 1e9:.1f} GFLOP/s |")
    out += ["", "floor = max(bytes / bandwidth, flops / peak); x floor = time / floor; vs base = baseline time / "
            "time (> 1 is faster than the baseline). `[ext]` marks external rows.", ""]
    if png_name:
        out += [f"![prefill tokens/s by backend and length]({png_name})", ""]
    for title, sel in _sections(res):
        out += [f"## {title}", "", "| " + " | ".join(HEAD) + " |", "|" + " --- |" * len(HEAD)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in sel]
        out.append("")
    skipped = {(r["backend"], r["skipped"]) for r in res["rows"] if "skipped" in r}
    if skipped or m["skipped_backends"]:
        out += ["## Skipped", ""]
        out += [f"- {b}: {why}" for b, why in sorted(skipped)]
        out += [f"- backend {b}: {why}" for b, why in m["skipped_backends"].items()]
        out.append("")
    return "\n".join(out)


def _load(x):
    return "-" if not x else ", ".join(f"{v:.2f}" for v in x)


def plot(res, path) -> str | None:
    """PNG: prefill tokens/s against length, one panel per family, one line per backend (external
    rows dashed); without model rows, forward tokens/s of each op by backend. Returns the reason
    when it cannot plot (matplotlib missing), else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001
        return f"matplotlib is not importable ({type(exc).__name__}: {exc}); pip install matplotlib"
    pre = [r for r in res["rows"] if r["level"] == "model" and r["mode"] == "prefill" and "time_s" in r]
    if pre:
        panels = sorted({(r["family"], r["size"]) for r in pre}, key=lambda k: (k[1], list(FAMILY_TITLES).index(k[0])))
        n = len(panels)
        cols = min(n, 4)
        rows_ = -(-n // cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.4 * rows_), squeeze=False)
        for ax, (fam, size) in zip(axes.flat, panels):
            sel = [r for r in pre if r["family"] == fam and r["size"] == size]
            for be in dict.fromkeys(r["backend"] for r in sel):
                pts = sorted((r["length"], r["tokens_per_s"]) for r in sel if r["backend"] == be)
                ext = any(r["external"] for r in sel if r["backend"] == be)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "--o" if ext else "-o",
                        label=be + (" [ext]" if ext else ""))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{FAMILY_TITLES.get(fam, fam)} {size}: prefill")
            ax.set_xlabel("length (tokens)")
            ax.set_ylabel("tokens/s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
    else:
        fwd = [r for r in res["rows"] if r["level"] == "op" and r["mode"] == "fwd" and "time_s" in r]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        keys = list(dict.fromkeys(f"{r['family']}\n{r['name']}" for r in fwd))
        bes = list(dict.fromkeys(r["backend"] for r in fwd))
        wdt = 0.8 / max(len(bes), 1)
        for i, be in enumerate(bes):
            vals = {f"{r['family']}\n{r['name']}": r["tokens_per_s"] for r in fwd if r["backend"] == be}
            ax.bar([k + i * wdt for k in range(len(keys))], [vals.get(k, 0) for k in keys], wdt, label=be)
        ax.set_xticks([k + 0.4 - wdt / 2 for k in range(len(keys))], keys, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel(f"tokens/s (L={fwd[0]['length'] if fwd else '?'})")
        ax.legend(fontsize=7)
    fig.suptitle(f"mamba-core bench ({res['meta']['preset']}, {res['meta']['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def stem(res) -> str:
    """bench-<preset>-<YYYYmmdd-HHMM>-<device>: dated and device-stamped."""
    m = res["meta"]
    dev = m["machine"].get("gpu") or f"cpu{m['machine'].get('nproc')}"
    date = re.sub(r"[^0-9]", "", m["date"])[:12]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"bench-{m['preset']}-{date[:8]}-{date[8:12]}-{dev}")


def write(res, out_dir, log=print) -> dict:
    """Write <stem>.json, .md, .txt (the table) and .png into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem(res))
    paths = {"json": base + ".json", "markdown": base + ".md", "table": base + ".txt", "png": base + ".png"}
    why = plot(res, paths["png"])
    if why:
        log(f"PNG skipped: {why}")
        paths.pop("png")
    with open(paths["json"], "w") as f:
        json.dump(res, f, indent=1, default=float)
    with open(paths["table"], "w") as f:
        f.write(table(res) + "\n")
    with open(paths["markdown"], "w") as f:
        f.write(markdown(res, os.path.basename(paths["png"]) if "png" in paths else None))
    return paths
