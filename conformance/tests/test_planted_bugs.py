"""Backends with planted bugs must fail the certificate, with messages that point at the bug."""

from __future__ import annotations

import numpy as np

from mamba_conformance import run
from mamba_conformance.testing import broken_backend, conv_shifted_by_one, rmsnorm_gate_sign


def _assert_messages_name_the_bug(cert, op):
    assert cert.failures
    for e in cert.failures:
        msg = e.message()
        assert op in msg and e.dtype in msg
        assert "tolerance" in msg and f"{e.tolerance:.2e}" in msg
        assert f"{e.max_error:.2e}" in msg
        assert "first differing index" in msg
        assert f"--dtype {e.dtype}" in e.repro
    text = cert.render()
    assert "FAILURES" in text and "NOT CERTIFIED" in text


def test_broken_backend_keeps_the_base_kernels():
    be = broken_backend("cpu_numpy", "broken_nothing", {})
    assert be.name == "broken_nothing" and be.ops.is_native("embedding")
    assert run(be, only=["op:embedding", "op:linear"], dtypes=["float32"]).ok


def test_conv_off_by_one_fails_causal_conv1d():
    be = broken_backend("cpu_numpy", "broken_conv", {"causal_conv1d": conv_shifted_by_one})
    assert be.ops.is_native("causal_conv1d")  # the broken override; the step op is untouched
    cert = run(be, only="op:causal_conv1d")
    assert not cert.ok
    failed = {(e.mode, e.dtype) for e in cert.failures}
    assert failed == {("forward", "float32"), ("forward", "float64")}  # step runs the correct op
    assert all(e.verdict == "FAIL" for e in cert.failures)
    _assert_messages_name_the_bug(cert, "causal_conv1d")
    e = cert.failures[0]
    assert e.ops["causal_conv1d"] == "native" and "causal_conv1d (native)" in e.message()
    assert "broken_conv" in e.repro


def test_rmsnorm_gate_sign_fails_only_gated_cases():
    be = broken_backend("cpu_numpy", "broken_gate", {"rmsnorm": rmsnorm_gate_sign})
    cert = run(be, only="op:rmsnorm")
    assert not cert.ok
    assert {e.case for e in cert.failures} == {e.case for e in cert.entries if e.case.startswith("gated")}
    assert all(e.verdict == "PASS" for e in cert.entries if e.case.startswith("plain"))
    _assert_messages_name_the_bug(cert, "rmsnorm")


def test_nan_output_is_a_failure_with_a_note():
    def nan_silu(impl, x):
        y = impl(x)
        return np.where(np.arange(y.size).reshape(y.shape) == 0, np.nan, y).astype(y.dtype)

    cert = run(broken_backend("cpu_numpy", "nan_silu", {"silu": nan_silu}), only="op:silu", dtypes=["float32"],
               modes=("forward",))
    assert len(cert.failures) == len(cert.entries)
    for e in cert.failures:
        assert "NaN" in e.message() and e.outputs[0].first_index is not None
