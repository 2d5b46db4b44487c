"""Case discovery: every module is imported; a broken module is an ERROR entry, not a crash."""

from __future__ import annotations

import sys
import textwrap

from mamba_conformance import run
from mamba_conformance.cases import IMPORT_ERROR, all_checks, discover

GOOD = '''
from mamba_conformance.check import Case, Check
CHECKS = [Check(name="op:fake_silu", kind="op", cases=(Case("n=4", {"n": 4}),),
                make_inputs=lambda case, rng: {"x": rng.standard_normal(case["n"])},
                forward=lambda be, inp: {"y": be.ops.silu(inp["x"])}, ops=("silu",))]
'''


def _package(tmp_path, name, modules):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for mod, src in modules.items():
        (pkg / f"{mod}.py").write_text(textwrap.dedent(src))
    sys.path.insert(0, str(tmp_path))
    return name


def test_real_cases_are_discovered():
    names = {c.name for c in all_checks()}
    assert {"op:silu", "op:rmsnorm", "op:causal_conv1d", "op:embedding"} <= names


def test_broken_module_becomes_an_error_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    pkg = _package(tmp_path, "fake_cases_a", {
        "good": GOOD,
        "broken": "import numpy\nraise RuntimeError('half-written case module')\n",
        "nochecks": "X = 1\n",
        "_private": "raise SystemError('never imported')\n",
    })
    found = discover(pkg)
    assert [c.name for c in found.checks] == ["op:fake_silu"]
    errors = {e.module: e.error for e in found.errors}
    assert errors == {
        "fake_cases_a.broken": "RuntimeError: half-written case module",
        "fake_cases_a.nochecks": "AttributeError: module fake_cases_a.nochecks defines no CHECKS list",
    }
    checks = all_checks(pkg)
    cert = run("cpu_numpy", checks=checks, dtypes=["float32"], modes=("forward",))
    bad = [e for e in cert.entries if e.kind == IMPORT_ERROR]
    assert len(bad) == 2 and all(e.verdict == "ERROR" for e in bad) and not cert.ok
    msg = next(e for e in bad if "broken" in e.check).message()
    assert "fake_cases_a.broken" in msg and "RuntimeError: half-written case module" in msg
    assert [e.verdict for e in cert.entries if e.check == "op:fake_silu"] == ["PASS"]


def test_module_added_later_is_picked_up(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    pkg = _package(tmp_path, "fake_cases_b", {"good": GOOD})
    assert [c.name for c in all_checks(pkg)] == ["op:fake_silu"]
    (tmp_path / pkg / "later.py").write_text(GOOD.replace("op:fake_silu", "op:fake_later"))
    assert [c.name for c in all_checks(pkg)] == ["op:fake_silu", "op:fake_later"]
