"""The runner and the certificate, on cpu_numpy and on hand-made outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mamba_conformance import Certificate, run
from mamba_core.backend import Backend
from mamba_conformance.cases import basic
from mamba_conformance.check import TOLERANCES, Case, Check
from mamba_conformance.runner import compare, make_inputs, round_to

BASIC = [c.name for c in basic.CHECKS]


@pytest.fixture(scope="module")
def basic_cert():
    return run("cpu_numpy", only=BASIC)


def test_basic_checks_pass_on_cpu_numpy(basic_cert):
    assert basic_cert.ok, basic_cert.render()
    assert set(basic_cert.dtypes) == {"float32", "float64"}
    got = {(e.check, e.mode, e.dtype) for e in basic_cert.entries}
    for name in BASIC:
        for dt in ("float32", "float64"):
            assert (name, "forward", dt) in got
    assert ("op:causal_conv1d", "step", "float32") in got
    assert ("op:silu", "step", "float32") not in got  # no recurrent form: no entry
    for e in basic_cert.entries:
        assert e.verdict == "PASS" and e.max_error <= TOLERANCES[e.dtype]
        assert e.repro.startswith("mamba-conformance cpu_numpy --only ")


def test_entry_records_outputs_ops_and_dims(basic_cert):
    e = next(e for e in basic_cert.entries if e.check == "op:add_rmsnorm" and e.dtype == "float32")
    assert {o.name for o in e.outputs} == {"y", "residual"}
    assert e.worst_output in ("y", "residual")
    from mamba_core.registry import get_backend

    assert e.ops == {"add_rmsnorm": "native" if "add_rmsnorm" in get_backend("cpu_numpy").kernels else "default"}
    emb = next(e for e in basic_cert.entries if e.check == "op:embedding")
    assert emb.ops == {"embedding": "native"}  # cpu_numpy's own kernel
    conv = next(e for e in basic_cert.entries if e.check == "op:causal_conv1d")
    assert conv.dims["K"] in (2, 4) and "--case" in conv.repro


def test_inputs_are_deterministic_per_check_and_case():
    check = next(c for c in basic.CHECKS if c.name == "op:causal_conv1d")
    case = check.cases[1]
    a, b = make_inputs(check, case, 0), make_inputs(check, case, 0)
    np.testing.assert_array_equal(a["x"], b["x"])
    other = make_inputs(check, check.cases[0], 0)
    assert not np.array_equal(a["weight"].ravel()[:3], other["weight"].ravel()[:3])
    assert not np.array_equal(a["x"], make_inputs(check, case, 1)["x"])


def test_round_to_dtypes():
    x = np.array([1.0 + 2.0**-12, 3.14159, -1e-3, 0.0])
    np.testing.assert_array_equal(round_to(x, "float32"), x.astype(np.float32).astype(np.float64))
    bf = round_to(x, "bfloat16")
    assert bf[0] == 1.0 and abs(bf[1] - 3.140625) < 1e-12  # 8 significant bits
    assert np.all(np.abs(bf - x) <= 2.0**-8 * np.abs(x))


def test_compare_relative_error_index_and_nan():
    want = np.arange(12.0).reshape(3, 4)
    got = want.copy()
    got[1, 2] += 0.011  # rel error 0.011 / 11 = 1e-3
    got[2, 3] += 0.022
    o = compare("y", got, want, tol=2e-4)
    assert math.isclose(o.error, 0.022 / 11)
    assert o.first_index == [1, 2] and o.worst_index == [2, 3] and o.n_over == 2
    got[0, 1] = np.nan
    o = compare("y", got, want, tol=2e-4)
    assert "NaN" in o.note and o.first_index == [0, 1]
    z = compare("s", np.full(3, 1e-12), np.zeros(3), tol=1e-9)  # all-zero truth: absolute error
    assert z.error == pytest.approx(1e-12)
    s = compare("y", np.zeros((2, 3)), np.zeros((3, 2)), tol=1e-9)
    assert "shape" in s.note and s.error == math.inf


def _toy_check(fwd):
    return Check(name="op:toy", kind="op", cases=(Case("n=5", {"n": 5}),),
                 make_inputs=lambda case, rng: {"x": rng.standard_normal(case["n"]), "k": 2},
                 forward=fwd, ops=("silu",))


def test_angles_compare_by_circular_distance():
    want = np.array([6.2831, 1.0, 3.0])
    got = np.array([0.0001, 1.0, 3.0])  # the same angles: one reduced on the other side of the cut
    o = compare("cache.1.angle_state", got, want, 1e-3)
    assert o.error < 1e-4, o.error
    assert compare("ssm_state", got, want, 1e-3).error > 0.9  # not an angle: plain distance
    off = compare("angle_state", np.array([0.5, 1.0, 3.0]), want, 1e-3)
    assert abs(off.error - (0.5 + 2 * np.pi - 6.2831) / 6.2831) < 1e-12


class _Bf16Numpy(Backend):
    """A stand-in 16-bit backend: NumPy float64 arrays holding bfloat16-rounded values."""

    name = "bf16_toy"
    dtypes = ("bfloat16",)

    def __init__(self, error):
        self.error = error  # {output: relative error to add}

    @property
    def xp(self):
        return np

    def asarray(self, a, dtype=None):
        return round_to(np.asarray(a, np.float64), "bfloat16") if dtype else np.asarray(a)

    def to_numpy(self, a):
        return np.asarray(a, np.float64)


def test_16bit_tolerance_allows_for_the_problems_conditioning():
    # d = a - b with a ~ b: one bf16 rounding unit on the inputs moves d by ~100%, so no bf16
    # implementation can hold it to 4e-2; s = a + b is well conditioned and keeps the plain tolerance.
    def make(case, rng):
        a = 1 + rng.random(8)
        return {"a": a, "b": a * (1 + 2.0**-6)}

    def fwd(be, inp):
        d, s = inp["a"] - inp["b"], inp["a"] + inp["b"]
        err = getattr(be, "error", {})
        return {"d": d + err.get("d", 0) * np.max(np.abs(d)), "s": s + err.get("s", 0) * np.max(np.abs(s))}

    check = Check(name="op:cancel", kind="op", cases=(Case("n=8", {"n": 8}),), make_inputs=make, forward=fwd)
    ok = run(_Bf16Numpy({"d": 0.3}), checks=[check], dtypes=["bfloat16"], modes=("forward",))
    (e,) = ok.entries
    cond = {o.name: o.conditioning for o in e.outputs}
    assert cond["d"] > 0.45 and cond["s"] < 2 * 2.0**-8, cond
    assert e.verdict == "PASS", e.message()
    bad = run(_Bf16Numpy({"s": 0.1}), checks=[check], dtypes=["bfloat16"], modes=("forward",))
    assert bad.entries[0].verdict == "FAIL" and bad.entries[0].worst_output == "s"
    assert "incl. conditioning" in bad.entries[0].message()
    f32 = run("cpu_numpy", checks=[check], dtypes=["float32"], modes=("forward",))
    assert all(o.conditioning == 0.0 for o in f32.entries[0].outputs)  # 32/64-bit: the plain tolerance


def test_backend_exception_is_error_with_text():
    def fwd(be, inputs):
        if be.name != "reference":
            raise RuntimeError("kernel exploded")
        return {"y": inputs["x"] * inputs["k"]}

    cert = run("cpu_numpy", checks=[_toy_check(fwd)], dtypes=["float32"], modes=("forward",))
    (e,) = cert.entries
    assert e.verdict == "ERROR" and "RuntimeError: kernel exploded" in e.note
    assert not cert.ok and cert.failures == [e]
    assert "kernel exploded" in cert.render()


def test_grad_mode_certifies_the_vjp_and_missing_modes_are_named():
    cert = run("cpu_numpy", only="op:silu", modes=("forward", "grad"), dtypes=["float64"])
    grads = [e for e in cert.entries if e.mode == "grad"]
    assert grads and all(e.verdict == "PASS" and [o.name for o in e.outputs] == ["dx"] for e in grads)
    assert cert.ok
    assert "step: not run" in cert.summary()


def test_a_wrong_vjp_fails_the_grad_column():
    from mamba_conformance.testing import broken_backend

    def doubled(impl, cot, x):
        return {"x": 2 * impl(cot, x)["x"]}

    cert = run(broken_backend("cpu_numpy", "bad_vjp", {"silu_vjp": doubled}), only="op:silu",
               dtypes=["float32"])
    assert {(e.mode, e.verdict) for e in cert.entries} >= {("forward", "PASS"), ("grad", "FAIL")}


def test_certificate_json_roundtrip_and_render(basic_cert, tmp_path):
    path = tmp_path / "sub" / "cert.json"
    basic_cert.to_json(path)
    assert [p.name for p in path.parent.iterdir()] == ["cert.json"]  # no temp file left behind
    data = json.loads(path.read_text())
    assert data["ok"] is True and data["backend"] == "cpu_numpy"
    assert data["header"]["versions"]["numpy"] == np.__version__
    assert data["not_certified"] == []  # forward, step and grad all ran
    assert len(data["entries"]) == len(basic_cert.entries)
    back = Certificate.from_json(path)
    assert back.ok and len(back.entries) == len(basic_cert.entries)
    text = basic_cert.render()
    for word in ("cpu_numpy", "mamba_core", "python", "op:rmsnorm", "tolerance", "PASS", "CERTIFIED"):
        assert word in text
