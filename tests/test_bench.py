"""mamba-core bench: the --quick run writes all four outputs; floors are positive; ratios are
computed; an external row is skipped with a reason when its package is missing.

The runs here use an in-process backend with no kernels (NumPy + the core's default
compositions), so the test does not wait for any backend's JIT compilation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os

import numpy as np
import pytest

from mamba_core import registry
from mamba_core.backend import Backend
from mamba_core.bench import cli as bench_cli
from mamba_core.bench import external, floors, ops, runner
from mamba_core.bench.presets import get_preset
from mamba_core.hookspecs import hookimpl


class _PlainNumpy(Backend):
    name = "bench_test_numpy"
    priority = -1000
    description = "NumPy with the default compositions only (test backend)"

    @property
    def xp(self):
        return np


class _Plugin:
    @hookimpl
    def mamba_core_backends(self):
        return [_PlainNumpy()]


@pytest.fixture(scope="module")
def plain_backend():
    plugin = _Plugin()
    registry.register_plugin(plugin)
    yield "bench_test_numpy"
    registry.unregister_plugin(plugin)


def _cli(argv):
    p = argparse.ArgumentParser(prog="mamba-core")
    bench_cli.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def quick_run(plain_backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = _cli(["bench", "--quick", "--backends", plain_backend, "--families", "mamba2,mamba3",
               "--no-external", "--no-progress", "--out", str(out)])
    return rc, out


def test_quick_writes_all_four_outputs(quick_run):
    rc, out = quick_run
    assert rc == 0
    files = sorted(os.listdir(out))
    for ext in (".json", ".md", ".txt", ".png"):
        hits = [f for f in files if f.endswith(ext)]
        assert len(hits) == 1, (ext, files)
        assert os.path.getsize(out / hits[0]) > 0
    stem = files[0].rsplit(".", 1)[0]
    assert stem.startswith("bench-quick-") and "cpu" in stem  # dated and device-stamped
    res = json.loads((out / (stem + ".json")).read_text())
    levels = {(r["level"], r["mode"]) for r in res["rows"] if "time_s" in r}
    for want in [("op", "fwd"), ("op", "fwd+bwd"), ("op", "step"), ("model", "prefill"),
                 ("model", "decode"), ("model", "train")]:
        assert want in levels, want
    md = (out / (stem + ".md")).read_text()
    assert "Ceilings" in md and "x floor" in md and res["meta"]["commit"] in md
    assert (out / (stem + ".png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_floors_positive_and_rows_against_them(quick_run):
    _, out = quick_run
    res = json.loads(next(out.glob("*.json")).read_text())
    for c in res["ceilings"].values():
        assert c["bandwidth_Bps"] > 0 and c["peak_flops"] > 0
    timed = [r for r in res["rows"] if "time_s" in r]
    assert timed
    for r in timed:
        assert r["bytes"] > 0 and r["flops"] > 0 and r["floor_s"] > 0
        assert r["x_floor"] == pytest.approx(r["time_s"] / r["floor_s"])
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["time_s"])
        assert r["time_s"] > 0 and len(r["times_s"]) == get_preset("quick").repeats


def test_ratios_against_the_baseline(quick_run):
    _, out = quick_run
    res = json.loads(next(out.glob("*.json")).read_text())
    assert res["meta"]["baseline"] == "bench_test_numpy"
    for r in res["rows"]:
        if "time_s" in r:
            assert r["vs_baseline"] == pytest.approx(1.0)  # the baseline against itself
    # two rows of different backends on the same key: ratio = baseline time / time
    rows = [{"key": "k", "backend": "a", "time_s": 2.0}, {"key": "k", "backend": "b", "time_s": 0.5},
            {"key": "k", "backend": "c", "skipped": "why"}]
    runner._ratios(rows, "a")
    assert rows[0]["vs_baseline"] == 1.0 and rows[1]["vs_baseline"] == 4.0 and "vs_baseline" not in rows[2]


def test_floor_is_the_larger_of_memory_and_compute_time():
    c = floors.Ceilings("cpu", bandwidth=1e10, peak=1e11, copy_bytes=0, matmul_n=0)
    assert c.floor(1e10, 1e9) == pytest.approx(1.0) and c.bound(1e10, 1e9) == "memory"
    assert c.floor(1e6, 1e12) == pytest.approx(10.0) and c.bound(1e6, 1e12) == "compute"
    measured = floors.measure("numpy", quick=True)
    assert measured.bandwidth > 0 and measured.peak > 0


@pytest.mark.parametrize("bench", ops.all_benches(), ids=lambda b: b.key)
def test_op_benches_have_positive_costs_and_nonzero_inputs(bench):
    s = get_preset("quick").ops
    by, fl = bench.cost(s)
    assert by > 0 and fl > 0 and bench.tokens(s) > 0
    arrays = [v for v in bench.inputs(s, np.random.default_rng(0)).values() if isinstance(v, np.ndarray)]
    assert arrays and all(np.any(a != 0) for a in arrays)


def test_external_row_skipped_with_reason_without_transformers(plain_backend, monkeypatch):
    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real(name, *a, **k)

    monkeypatch.setattr(external.importlib, "import_module", fake_import)
    logs = []
    res = runner.run([plain_backend], quick=True, levels=("models",), families=("mamba1",), progress=False,
                     log=logs.append)
    hf = [r for r in res["rows"] if r["backend"].startswith("hf-transformers")]
    assert hf and all(r["external"] for r in hf)
    assert all("skipped" in r and "transformers is not importable" in r["skipped"] for r in hf)
    assert any("hf-transformers" in line and "skipped" in line for line in logs)  # printed, with the reason
    ours = [r for r in res["rows"] if r["backend"] == plain_backend]
    assert ours and all("time_s" in r for r in ours)
