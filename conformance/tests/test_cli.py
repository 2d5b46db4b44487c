"""The mamba-conformance command: exit codes, JSON, and the registry's messages."""

from __future__ import annotations

import json
import subprocess
import sys

from mamba_conformance.cli import main
from mamba_conformance.testing import broken_backend, registered, rmsnorm_gate_sign


def test_pass_exits_0_and_writes_default_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["cpu_numpy", "--only", "op:silu", "--only", "rmsnorm", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "op:silu" in out and "op:rmsnorm" in out and "CERTIFIED" in out
    data = json.loads((tmp_path / "cpu_numpy.certificate.json").read_text())
    assert data["ok"] and data["dtypes"] == ["float32"]
    assert {e["check"] for e in data["entries"]} == {"op:silu", "op:rmsnorm"}


def test_json_to_stdout_and_case_filter(capsys):
    assert main(["cpu_numpy", "--only", "op:causal_conv1d", "--case", "L=1,K=4", "--dtype", "float64",
                 "--mode", "step", "--json", "-"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [(e["case"], e["mode"]) for e in data["entries"]] == [("L=1,K=4", "step")]
    assert "op:causal_conv1d" in captured.err  # the table goes to stderr when JSON takes stdout


def test_failure_exits_1_with_the_failure_expanded(tmp_path, capsys):
    be = broken_backend("cpu_numpy", "broken_gate_cli", {"rmsnorm": rmsnorm_gate_sign})
    with registered(be):
        code = main(["broken_gate_cli", "--only", "op:rmsnorm", "--dtype", "float32", "--quiet",
                     "--json", str(tmp_path / "out" / "c.json")])
    assert code == 1
    out = capsys.readouterr().out
    assert "rmsnorm" in out and "float32" in out and "tolerance 2.00e-04" in out
    assert "mamba-conformance broken_gate_cli --only op:rmsnorm --case" in out
    assert json.loads((tmp_path / "out" / "c.json").read_text())["ok"] is False


def test_unknown_backend_exits_2_listing_installed(capsys):
    assert main(["no_such_backend", "--no-json"]) == 2
    err = capsys.readouterr().err
    assert "no_such_backend" in err and "cpu_numpy" in err and "reference" in err


def test_usage_errors_exit_2(capsys):
    assert main(["cpu_numpy", "--only", "op:does_not_exist", "--no-json"]) == 2
    assert "op:silu" in capsys.readouterr().err  # lists the checks
    assert main(["cpu_numpy", "--dtype", "float16", "--no-json"]) == 2
    assert "float16" in capsys.readouterr().err
    assert main(["cpu_numpy", "--mode", "sideways"]) == 2
    assert main([]) == 2


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "mamba_conformance", "no_such_backend", "--no-json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Installed backends" in r.stderr and "cpu_numpy" in r.stderr
