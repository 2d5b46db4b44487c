"""The bugs named by the certification contract (wrong sign of D, off-by-one conv padding, rope
pairing swapped, missing initial state) each fail the certificate, at the op and at every model
level that uses the op."""

from __future__ import annotations

import pytest

from mamba_conformance import run
from mamba_conformance.testing import (
    broken_backend,
    conv_shifted_by_one,
    drop_argument,
    negate_argument,
    rope_pairing_swapped,
)


def _failed_checks(cert) -> set:
    return {e.check for e in cert.failures}


@pytest.mark.parametrize(
    "op, checks",
    [
        ("selective_scan", ["op:selective_scan", "mixer:mamba1", "lm:mamba1"]),
        ("ssd_scan", ["op:ssd_scan", "mixer:mamba2", "lm:mamba2"]),
        ("mamba3_scan", ["op:mamba3_scan", "mixer:mamba3", "mixer:mamba3_mimo", "lm:mamba3", "lm:mamba3_mimo"]),
    ],
)
def test_wrong_sign_of_D_fails(op, checks):
    be = broken_backend("cpu_numpy", f"broken_D_{op}", {op: negate_argument(op, "D")})
    cert = run(be, only=checks, modes=("forward",), dtypes=["float32"])
    assert _failed_checks(cert) == set(checks)
    assert all(e.verdict == "FAIL" and op in e.message() for e in cert.failures)


def test_conv_padding_off_by_one_fails_every_conv_model():
    checks = ["op:causal_conv1d", "mixer:mamba1", "mixer:mamba2", "lm:mamba1", "lm:mamba2"]
    be = broken_backend("cpu_numpy", "broken_conv_models", {"causal_conv1d": conv_shifted_by_one})
    cert = run(be, only=checks, modes=("forward",), dtypes=["float64"])
    assert _failed_checks(cert) == set(checks)


def test_rope_pairing_swapped_fails():
    checks = ["op:apply_rope", "mixer:mamba3", "mixer:mamba3_mimo", "lm:mamba3", "lm:mamba3_mimo"]
    be = broken_backend("cpu_numpy", "broken_rope", {"apply_rope": rope_pairing_swapped})
    cert = run(be, only=checks, modes=("forward", "step"), dtypes=["float32"])
    assert _failed_checks(cert) == set(checks)


@pytest.mark.parametrize(
    "op, checks",
    [
        ("ssd_scan", ["op:ssd_scan", "mixer:mamba2", "lm:mamba2"]),
        ("selective_scan", ["op:selective_scan", "mixer:mamba1", "lm:mamba1"]),
        ("mamba3_scan", ["op:mamba3_scan", "mixer:mamba3", "lm:mamba3"]),
    ],
)
def test_missing_initial_state_fails_only_where_a_state_is_given(op, checks):
    be = broken_backend("cpu_numpy", f"broken_init_{op}", {op: drop_argument(op, "initial_state")})
    cert = run(be, only=checks, modes=("forward",), dtypes=["float64"])
    assert _failed_checks(cert) == set(checks)
    # cases that start from zeros are unaffected: the bug is pinned to the state
    for e in cert.entries:
        if e.check.startswith("lm:") and e.case in ("B=2,L=11", "L=1"):
            assert e.verdict == "PASS", e.message()
