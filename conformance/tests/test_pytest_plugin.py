"""The pytest plugin: nothing without --mamba-backend; one item per entry with it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mamba_conformance.pytest_plugin import assert_conforms
from mamba_conformance.testing import broken_backend, conv_shifted_by_one

CONFTEST = textwrap.dedent('''
    from mamba_core import registry
    from mamba_conformance.testing import broken_backend, plugin_for, rmsnorm_gate_sign
    registry.register_plugin(plugin_for(
        broken_backend("cpu_numpy", "broken_gate_pt", {"rmsnorm": rmsnorm_gate_sign})))
''')


def _pytest(tmp_path, *args, env=None):
    (tmp_path / "test_own.py").write_text("def test_own():\n    assert True\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    e = {k: v for k, v in os.environ.items() if k != "MAMBA_CONFORMANCE_BACKEND"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=e)


def test_plugin_adds_nothing_without_a_backend(tmp_path):
    r = _pytest(tmp_path, "--co")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 test collected" in r.stdout and "conformance" not in r.stdout


def test_plugin_collects_one_item_per_entry_and_reports_failures(tmp_path):
    r = _pytest(tmp_path, "--mamba-backend", "cpu_numpy", "--mamba-backend", "broken_gate_pt",
                "--mamba-only", "op:rmsnorm", "--mamba-dtype", "float32", "--mamba-mode", "forward")
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "4 failed, 13 passed" in out  # 8 cases x 2 backends + test_own; 4 gated cases fail
    assert "broken_gate_pt::op:rmsnorm[gated" in out
    assert "tolerance 2.00e-04" in out and "first differing index" in out


def test_plugin_reads_the_environment_variable(tmp_path):
    r = _pytest(tmp_path, "--co", "--mamba-only", "op:silu", "--mamba-dtype", "float64", "--mamba-mode", "forward",
                env={"MAMBA_CONFORMANCE_BACKEND": "cpu_numpy"})
    assert "5 tests collected" in r.stdout, r.stdout + r.stderr  # 4 silu cases + test_own


def test_assert_conforms():
    cert = assert_conforms("cpu_numpy", only="op:linear", dtypes=["float32"], modes=("forward", "step"))
    assert cert.ok and len(cert.entries) == 4
    be = broken_backend("cpu_numpy", "broken_conv_ac", {"causal_conv1d": conv_shifted_by_one})
    with pytest.raises(AssertionError, match=r"causal_conv1d.*float64.*tolerance 1.00e-09"):
        assert_conforms(be, only="op:causal_conv1d", dtypes=["float64"])
