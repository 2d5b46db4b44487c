"""benchmarks/gpu/sweep_tt.py (the one-shot H100 sweep) works as a script before it meets a GPU:
it imports, its arguments are checked, without CUDA it exits with status 2 and says why, and
``--smoke`` runs its Mamba-1 and SSD parts on the CPU under the interpreter and writes JSON."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from conftest import load_benchmark_script

pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("triton", reason="triton is not installed")


@pytest.fixture
def sweep():
    return load_benchmark_script("gpu/sweep_tt.py")


def test_arguments_are_checked(sweep, capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--help"])
    assert e.value.code == 0 and "OUT_DIR" in capsys.readouterr().out.upper()
    with pytest.raises(SystemExit) as e:
        sweep.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        sweep.main(["out", "--parts", "m1,nope"])
    assert e.value.code == 2 and "unknown part" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="checks the no-GPU exit")
def test_without_a_gpu_it_says_so(sweep, tmp_path, capsys):
    assert sweep.main([str(tmp_path / "o")]) == 2
    assert "needs one" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="--smoke needs the interpreter")
def test_smoke_run_writes_json(sweep, tmp_path):
    assert sweep.main([str(tmp_path), "--smoke", "--parts", "m1,ssd"]) == 0
    res = json.loads((tmp_path / "sweep_tt.json").read_text())
    assert not res["errors"]
    assert res["parts"]["m1"]["best_fwd"]["ms"] > 0 and res["parts"]["m1"]["best_bwd"]["vjp_ms"] > 0
    assert res["parts"]["ssd"]["chunk 256"]["fwd_ms"] > 0


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="--smoke needs the interpreter")
def test_smoke_m1_vjp_grid_from_the_environment(sweep, tmp_path, monkeypatch):
    """SWEEP_M1_BWD with a register cap (variant:T:BE:warps:maxnreg) and a launch of the
    state-saving forward of its own (...:save_BE:save_warps, "-" for no cap): the "lanes" VJP
    runs, its entries record them, and its gradients agree with the base kernel's."""
    monkeypatch.setenv("SWEEP_M1_FWD", "base:8:8:1")
    monkeypatch.setenv("SWEEP_M1_BWD", "base:8:8:1,lanes:2:8:1:160,lanes:4:8:1:-:2:1")  # (3 under --smoke)
    assert sweep.main([str(tmp_path), "--smoke", "--parts", "m1"]) == 0
    res = json.loads((tmp_path / "sweep_tt.json").read_text())
    rows = res["parts"]["m1"]["bwd"]
    assert [(r["variant"], r["T"], r.get("maxnreg"), r.get("save_BE")) for r in rows] == [
        ("base", 8, None, None), ("lanes", 2, 160, None), ("lanes", 4, None, 2)]
    assert all(r["vjp_ms"] > 0 and r["rel_vs_baseline"] < 1e-4 for r in rows), rows


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="--smoke needs the interpreter")
def test_smoke_bc_part_writes_json(sweep, tmp_path):
    """The B/C prologue part runs its forward and VJP grids (on the CPU every config runs the
    interpreter's launch, so the outputs agree exactly)."""
    assert sweep.main([str(tmp_path), "--smoke", "--parts", "bc"]) == 0
    res = json.loads((tmp_path / "sweep_tt.json").read_text())
    assert not res["errors"]
    for kind in ("fwd", "bwd"):
        rows = res["parts"]["bc"][kind]
        assert len(rows) == 3 and all(r["ms"] > 0 and r["rel_vs_first"] == 0 for r in rows), rows
    assert res["best"]["bc"]["ms"] > 0 and res["best"]["bc_vjp"]["ms"] > 0


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="--smoke needs the interpreter")
def test_smoke_angle_grid_from_the_environment(sweep, tmp_path, monkeypatch):
    """SWEEP_ANGLES with a variant field ("scan" against the default "seq"): such a row runs for
    the forward only (the VJP has one variant), and its phi agrees with the default's."""
    monkeypatch.setenv("SWEEP_ANGLES", "4:-:-,4:8:8:scan")
    monkeypatch.setenv("SWEEP_BC", "8:4:-")
    monkeypatch.setenv("SWEEP_BC_VJP", "8:4:-")
    assert sweep.main([str(tmp_path), "--smoke", "--parts", "bc"]) == 0
    res = json.loads((tmp_path / "sweep_tt.json").read_text())
    fwd, bwd = res["parts"]["bc"]["angles_fwd"], res["parts"]["bc"]["angles_bwd"]
    assert [r["variant"] for r in fwd] == ["seq", "scan"] and [r["variant"] for r in bwd] == ["scan"]
    assert fwd[1]["ms"] > 0 and fwd[1]["rel_vs_first"] < 1e-4, fwd


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="--smoke needs the interpreter")
def test_smoke_m3_grid_with_the_blocked_backward(sweep, tmp_path, monkeypatch):
    """SWEEP_M3 rows with a 6th field run the "blocked" backward with that block; its gradients
    agree with the serial backward's (the first row) to bf16 rounding (the sweep's inputs are
    bf16; the block-end state gradients are kept in bf16 as the states are)."""
    monkeypatch.setenv("SWEEP_M3_FWD", "-:-:-")
    monkeypatch.setenv("SWEEP_M3", "16:4:1,16:4:1:-:-:2")
    assert sweep.main([str(tmp_path), "--smoke", "--parts", "m3"]) == 0
    rows = json.loads((tmp_path / "sweep_tt.json").read_text())["parts"]["m3"]["bwd"]
    assert [(r["variant"], r["block"]) for r in rows] == [("serial", None), ("blocked", 2)]
    assert all(r["ms"] > 0 and r["rel_vs_first"] < 2e-2 for r in rows), rows
