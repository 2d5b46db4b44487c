"""Saving forms (mamba_core/ops/saving.py): the op table's forward_saving / vjp_saved, the mixers'
use of them, the table's checks, and conformance certifying them (a wrong saving form fails)."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_conformance import run
from mamba_conformance.testing import broken_backend
from mamba_core.errors import ShapeError
from mamba_core.models import mamba1
from mamba_core.ops.saving import SAVABLE, SavingForm, check_saving_table
from mamba_core.registry import get_backend


def _saving_backend(forward_scale=1.0, grad_scale=1.0):
    """cpu_numpy with a saving form of selective_scan that records its calls; the scales plant
    bugs in its outputs (y) or its gradient of B."""
    be = broken_backend("cpu_numpy", "saving_probe", {})
    base = get_backend("cpu_numpy")
    log = {"forward": 0, "vjp": []}

    def forward(*args, **kwargs):
        log["forward"] += 1
        y, h = base.ops.selective_scan(*args, **kwargs)
        return (y * forward_scale, h), {"made_by": "saving_probe", "h": h}

    def vjp(residuals, cotangent, *args, **kwargs):
        log["vjp"].append(residuals["made_by"])
        g = dict(base.ops.selective_scan_vjp(cotangent, *args, **kwargs))
        g["B"] = g["B"] * grad_scale
        return g

    type(be).saving = {"selective_scan": SavingForm(forward, vjp)}
    return be, log


def _scan_args(rng, L=9):
    Bz, E, N = 2, 4, 3
    return (rng.standard_normal((Bz, L, E)), rng.uniform(0.1, 1.0, (Bz, L, E)),
            -np.exp(rng.standard_normal((E, N))), rng.standard_normal((Bz, L, 1, N)),
            rng.standard_normal((Bz, L, 1, N)))


def test_without_a_saving_form_the_plain_op_and_vjp_run():
    be = get_backend("reference")
    args = _scan_args(np.random.default_rng(0))
    assert not be.ops.saves("selective_scan")
    out, res = be.ops.forward_saving("selective_scan", *args)
    assert res is None
    want = be.ops.selective_scan(*args)
    assert all(np.array_equal(o, w) for o, w in zip(out, want))
    cot = (np.ones_like(want[0]), None)
    g = be.ops.vjp_saved("selective_scan", None, cot, *args)
    gw = be.ops.selective_scan_vjp(cot, *args)
    assert set(g) == set(gw) and all(np.array_equal(g[k], gw[k]) for k in g)


def test_a_saving_form_gets_its_residuals_and_is_validated():
    be, log = _saving_backend()
    args = _scan_args(np.random.default_rng(1))
    assert be.ops.saves("selective_scan")
    out, res = be.ops.forward_saving("selective_scan", *args)
    assert res["made_by"] == "saving_probe" and log["forward"] == 1
    g = be.ops.vjp_saved("selective_scan", res, (np.ones_like(out[0]), None), *args)
    assert log["vjp"] == ["saving_probe"] and set(g) == {"u", "delta", "A", "B", "C"}
    be.ops.vjp_saved("selective_scan", None, (np.ones_like(out[0]), None), *args)
    assert log["vjp"] == ["saving_probe"]  # residuals None: the plain VJP, not the form's
    bad = (args[0][:, :, :3],) + args[1:]  # u with 3 channels, delta with 4
    with pytest.raises(ShapeError, match="selective_scan"):
        be.ops.forward_saving("selective_scan", *bad)
    with pytest.raises(ShapeError, match="selective_scan"):
        be.ops.vjp_saved("selective_scan", res, (np.ones_like(out[0]), None), *bad)
    assert log["forward"] == 1 and log["vjp"] == ["saving_probe"]  # rejected before the form ran


def test_the_saving_table_is_checked():
    form = SavingForm(lambda *a: (None, None), lambda *a: {})
    assert check_saving_table({op: form for op in SAVABLE}, "x")
    with pytest.raises(ValueError, match="'silu'.*savable ops are selective_scan"):
        check_saving_table({"silu": form}, "x")
    with pytest.raises(TypeError, match="SavingForm"):
        check_saving_table({"ssd_scan": (form.forward, form.vjp)}, "x")


def test_mixer_training_keeps_residuals_and_inference_does_not():
    be, log = _saving_backend()
    cfg = mamba1.Config.from_dict(8, d_state=3, expand=2)
    rng = np.random.default_rng(2)
    p = mamba1.init_params(cfg, rng)
    u = rng.standard_normal((2, 5, 8)).astype(np.float32)
    y, _ = mamba1.forward(be, p, cfg, u)
    assert log["forward"] == 0  # inference keeps nothing
    y2, _, saved = mamba1.forward_train(be, p, cfg, u)
    assert log["forward"] == 1 and saved["scan_res"]["made_by"] == "saving_probe"
    np.testing.assert_array_equal(y, y2)
    dp, du, _ = mamba1.backward(be, p, cfg, saved, np.ones_like(y2))
    assert log["vjp"] == ["saving_probe"]
    plain = get_backend("cpu_numpy")
    _, _, saved0 = mamba1.forward_train(plain, p, cfg, u)
    dp0, du0, _ = mamba1.backward(plain, p, cfg, saved0, np.ones_like(y2))
    np.testing.assert_array_equal(du, du0)
    assert all(np.array_equal(dp[k], dp0[k]) for k in dp0)


def test_conformance_certifies_a_saving_form():
    be, log = _saving_backend()
    cert = run(be, only="op:selective_scan", dtypes=["float64"], modes=("grad",))
    assert cert.ok and log["vjp"]
    e = cert.entries[0]
    names = {o.name for o in e.outputs}
    assert {"saved.out0", "saved.out1", "saved.du", "saved.dB"} <= names and "dB" in names
    assert e.ops.get("selective_scan:saving") == "native"


@pytest.mark.parametrize("where,kw", [("saved.out0", dict(forward_scale=1.01)),
                                      ("saved.dB", dict(grad_scale=1.01))])
def test_conformance_fails_a_wrong_saving_form(where, kw):
    be, _ = _saving_backend(**kw)
    cert = run(be, only="op:selective_scan", dtypes=["float64"], modes=("grad",))
    assert not cert.ok
    for e in cert.failures:
        failed = {o.name for o in e.outputs if o.error > e.tolerance}
        assert failed == {where}, failed


def test_the_environment_turns_saving_forms_off(monkeypatch):
    be, log = _saving_backend()
    args = _scan_args(np.random.default_rng(3))
    monkeypatch.setenv("MAMBA_NO_SAVING_FORMS", "1")
    assert not be.ops.saves("selective_scan")
    out, res = be.ops.forward_saving("selective_scan", *args)
    assert res is None and log["forward"] == 0
    monkeypatch.setenv("MAMBA_NO_SAVING_FORMS", "0")
    assert be.ops.saves("selective_scan")


def test_the_backends_listing_names_the_saving_forms(capsys):
    from mamba_core.cli import main as core_main

    assert core_main(["backends"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("cpu_numpy "):].split("cpu_numpy_invariant", 1)[0]
    assert "saving forms (forward keeps residuals for the VJP): mamba3_scan, selective_scan, ssd_scan" in block
    ref = out[out.index("reference "):]
    assert "saving forms" not in ref.split("\n\n", 1)[0]


def test_the_cpu_ab_benchmark_runs(capsys):
    """benchmarks/cpu/saving_forms.py at tiny shapes: a row per op and model, both timings."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "cpu" / "saving_forms.py"
    spec = importlib.util.spec_from_file_location("saving_forms_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["cpu_numpy", "1", "--smoke"]) == 0
    table = [r.split("|")[1:-1] for r in capsys.readouterr().out.splitlines() if r.startswith("| ")]
    assert table[0][1].strip() == "saving forms on (ms)"
    rows = table[2:]  # past the header and its rule
    assert len(rows) == 6 and all(float(c) > 0 for r in rows for c in r[1:]), rows
