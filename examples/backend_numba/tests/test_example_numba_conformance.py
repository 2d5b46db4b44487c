"""The example_numba backend's own tests: the certificate as pytest tests, and the planted bug.

Run (after pip install -e examples/backend_numba):  python -m pytest -q examples/backend_numba
"""

import pytest

numba = pytest.importorskip("numba", reason="example_numba needs numba: pip install numba")

from mamba_conformance import run  # noqa: E402
from mamba_conformance.pytest_plugin import assert_conforms  # noqa: E402

from mamba_backend_example_numba import ExampleNumbaBackend  # noqa: E402
from mamba_backend_example_numba.kernels import BUG_ENV  # noqa: E402


def test_the_entry_point_registers_the_backend():
    from mamba_core.registry import installed

    assert "example_numba" in installed(), "the entry point is not installed: pip install -e examples/backend_numba"


def test_native_ops_and_fallbacks():
    be = ExampleNumbaBackend()
    assert be.available()
    assert {"silu", "selective_scan", "selective_scan_step"} <= set(be.native_ops())
    assert not be.ops.is_native("ssd_scan")  # runs the default composition on NumPy


def test_ops_conform():
    assert_conforms("example_numba", only="op:*")


def test_models_conform():
    assert_conforms("example_numba", only=["mixer:*", "lm:*"])


def test_wrong_D_sign_fails_with_a_useful_message(monkeypatch):
    monkeypatch.setenv(BUG_ENV, "d_sign")
    cert = run(ExampleNumbaBackend(), only="op:selective_scan", dtypes=["float32"], modes=["forward"])
    assert not cert.ok
    failed = {e.case for e in cert.failures}
    with_D = {e.case for e in cert.entries if e.dims.get("D")}
    assert failed == with_D  # exactly the cases that pass D
    msg = cert.failures[0].message()
    for part in ("op:selective_scan", "selective_scan (native)", "float32", "tolerance 2.00e-04",
                 "first differing index (", "reproduce: mamba-conformance example_numba --only op:selective_scan"):
        assert part in msg, (part, msg)
