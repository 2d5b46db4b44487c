"""References of the small op families against SPEC.md's formulas, written independently here."""

import numpy as np
import pytest

from mamba_core.errors import ShapeError
from mamba_core.ops import activations as act
from mamba_core.ops.conv1d import causal_conv1d_ref, causal_conv1d_step_ref
from mamba_core.ops.embedding import embedding_ref
from mamba_core.ops.norm import add_rmsnorm_ref, rmsnorm_ref
from mamba_core.registry import get_backend

rng = np.random.default_rng(0)


def test_softplus_matches_torch_threshold_rule():
    x = np.array([-50.0, -1.0, 0.0, 1.0, 19.9, 20.0, 20.1, 80.0])
    want = np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))
    np.testing.assert_allclose(act.softplus_ref(x), want, rtol=1e-15)
    assert act.softplus_ref(np.array([1000.0]))[0] == 1000.0  # no overflow


def test_inverse_softplus_inverts():
    y = np.array([1e-4, 1e-3, 0.05, 0.1, 3.0])
    np.testing.assert_allclose(act.softplus_ref(act.inverse_softplus_ref(y)), y, rtol=1e-12)


def test_silu_and_sigmoid_extremes():
    x = np.array([-800.0, -5.0, 0.0, 5.0, 800.0])
    s = act.sigmoid_ref(x)
    assert s[0] == 0.0 and s[-1] == 1.0 and s[2] == 0.5
    np.testing.assert_allclose(act.silu_ref(x)[1:4], x[1:4] / (1 + np.exp(-x[1:4])), rtol=1e-14)


def test_rmsnorm_formula():
    x, w = rng.standard_normal((3, 8)), rng.standard_normal(8)
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(rmsnorm_ref(x, w), want, rtol=1e-13)


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_grouped_rmsnorm(norm_before_gate):
    x, z, w = rng.standard_normal((2, 12)), rng.standard_normal((2, 12)), rng.standard_normal(12)
    gate = z / (1 + np.exp(-z))
    v = x if norm_before_gate else x * gate
    g = v.reshape(2, 3, 4)
    normed = (g / np.sqrt((g**2).mean(-1, keepdims=True) + 1e-5)).reshape(2, 12) * w
    want = normed * gate if norm_before_gate else normed
    got = rmsnorm_ref(x, w, 1e-5, z=z, group_size=4, norm_before_gate=norm_before_gate)
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_add_rmsnorm_returns_sum_and_norm():
    x, r, w = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 3, 8)), rng.standard_normal(8)
    y, res = add_rmsnorm_ref(x, r, w)
    np.testing.assert_allclose(res, x + r, rtol=1e-15)
    np.testing.assert_allclose(y, rmsnorm_ref(x + r, w), rtol=1e-15)
    y0, res0 = add_rmsnorm_ref(x, None, w)
    np.testing.assert_array_equal(res0, x)


def test_add_rmsnorm_keeps_residual_in_fp32():
    be = get_backend("cpu_numpy")
    x = rng.standard_normal((2, 8))
    y, res = be.ops.add_rmsnorm(x.astype(np.float32), None, np.ones(8, np.float32), 1e-5, True)
    assert y.dtype == np.float32 and res.dtype == np.float32


def test_causal_conv1d_formula_and_left_padding():
    x, w, b = rng.standard_normal((2, 6, 3)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    y, state = causal_conv1d_ref(x, w, b)
    xp = np.concatenate([np.zeros((2, 3, 3)), x], axis=1)  # K-1 zeros on the left
    want = np.stack([(xp[:, t : t + 4] * w.T).sum(1) for t in range(6)], axis=1) + b
    np.testing.assert_allclose(y, want, rtol=1e-13)
    np.testing.assert_array_equal(state, np.transpose(x[:, -4:], (0, 2, 1)))
    # y_0 sees only x_0 and the padding: an off-by-one in the padding would change it
    np.testing.assert_allclose(y[:, 0], x[:, 0] * w[:, 3] + b, rtol=1e-13)


def test_causal_conv1d_initial_state_and_step_agree():
    x, w = rng.standard_normal((2, 5, 3)), rng.standard_normal((3, 4))
    st = rng.standard_normal((2, 3, 4))
    y, final = causal_conv1d_ref(x, w, None, st, "silu")
    s = st
    for t in range(5):
        yt, s = causal_conv1d_step_ref(x[:, t], s, w, None, "silu")
        np.testing.assert_allclose(yt, y[:, t], rtol=1e-13)
    np.testing.assert_array_equal(s, final)


def test_causal_conv1d_shorter_than_kernel_keeps_old_inputs_in_state():
    x, w = rng.standard_normal((1, 2, 3)), rng.standard_normal((3, 4))
    st = rng.standard_normal((1, 3, 4))
    _, final = causal_conv1d_ref(x, w, None, st)
    np.testing.assert_array_equal(final[..., :2], st[..., 2:])
    np.testing.assert_array_equal(final[..., 2:], np.transpose(x, (0, 2, 1)))


def test_embedding_out_of_range_is_clear():
    with pytest.raises(ShapeError, match=r"\[0, 4\).*vocab_size"):
        embedding_ref(np.array([[1, 4]]), np.zeros((4, 2)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_defaults_match_references(dtype):
    be = get_backend("cpu_numpy")
    tol = {"float32": 2e-6, "float64": 1e-13}[dtype]
    x, z, w = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 8)), rng.standard_normal(8)
    cast = lambda a: be.asarray(a, dtype)  # noqa: E731
    got = be.ops.rmsnorm(cast(x), cast(w), 1e-5, z=cast(z), group_size=4)
    np.testing.assert_allclose(got, rmsnorm_ref(x.astype(dtype), w.astype(dtype), 1e-5, z.astype(dtype), 4),
                               rtol=tol * 10, atol=tol)
    assert got.dtype == np.dtype(dtype)
