"""Triton kernels of the activations and their VJPs (kernels/activations.py) against mamba-core's
float64 references, on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1), or on
CUDA when the interpreter is off.

Inputs span both signs, |x| up to 60 and softplus's threshold (20). Errors are elementwise,
relative to |want| -- stricter than a max-norm -- so the tails are checked too: softplus far below
zero (where log(1 + e) in float32 would lose e) and the gradients far from zero (where 1 - s
by subtraction would round to 0); near zero, where silu' has a root, errors are measured against
|want| + 1e-3 max|want| (see elementwise_rel): float32 under 1e-5, bfloat16 inputs under 1e-2 (one rounding of
the result) against the reference on the bf16-rounded inputs. float64 inputs, dy None and dy shaped unlike x run the default composition.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the torch_triton kernels need it")
pytest.importorskip("triton", reason="triton is not installed: the torch_triton kernels need it")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

from mamba_backend_torch_triton.kernels import activations as K  # noqa: E402
from mamba_core.ops import REGISTRY  # noqa: E402

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
TDT = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOL = {"float32": 1e-5, "bfloat16": 1e-2}
KINDS = ("sigmoid", "silu", "softplus")


def np64(t):
    return t.detach().to("cpu", torch.float64).numpy()


def inputs(dtype, shape=(3, 5, 700)):
    """x over [-60, 60] (past float32's exp range for 1 + e; not so far that sigmoid(x) is a
    float32 subnormal) with both signs, the threshold 20 and its neighbours; dy in [-2, 2]."""
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor([1.0, 8.0, 60.0]).reshape(
        3, 1, 1)
    x.view(-1)[:5] = torch.tensor([20.0, 19.99, 20.01, 0.0, -0.0], dtype=torch.float64)
    dy = torch.rand(shape, generator=g, dtype=torch.float64) * 4 - 2
    return x.to(DEV, TDT[dtype]), dy.to(DEV, TDT[dtype])


def elementwise_rel(got, want, x=None):
    """max |got - want| / max(|want|, 1e-30). With x given, elements with |x| < 5 are measured against
    |want| + 1e-3 max|want| instead: silu' has a root at x ~ -1.28, where any float32 evaluation
    loses its relative precision."""
    got, want = np64(got), np.asarray(want, np.float64)
    assert got.shape == want.shape and np.all(np.isfinite(got))
    den = np.maximum(np.abs(want), 1e-30)
    if x is not None:
        den = np.where(np.abs(np64(x)) < 5, np.abs(want) + 1e-3 * np.max(np.abs(want)), den)
    return float(np.max(np.abs(got - want) / den))


@pytest.mark.parametrize("dtype", sorted(TDT))
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_reference(kind, dtype):
    x, _ = inputs(dtype)
    y = K.KERNELS[kind](x)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    want = REGISTRY[kind].reference(np64(x))
    # a bf16 result is one rounding of the float32 value: relative 2^-8
    assert elementwise_rel(y, want) < TOL[dtype], kind


@pytest.mark.parametrize("dtype", sorted(TDT))
@pytest.mark.parametrize("kind", KINDS)
def test_vjp_matches_reference(kind, dtype):
    x, dy = inputs(dtype)
    got = K.KERNELS[kind + "_vjp"](dy, x)
    assert set(got) == {"x"} and got["x"].dtype == x.dtype and got["x"].shape == x.shape
    want = REGISTRY[kind + "_vjp"].reference(np64(dy), np64(x))["x"]
    assert elementwise_rel(got["x"], want, x) < TOL[dtype], kind


def test_non_contiguous_and_mixed_dtypes():
    """A transposed x is read as the same values; dy in float32 with x in bf16 gives dx in bf16."""
    x, dy = inputs("float32", (3, 6, 9))
    xt = x.transpose(0, 2)
    assert torch.equal(K.KERNELS["silu"](xt), K.KERNELS["silu"](xt.contiguous()))
    xb = x.to(torch.bfloat16)
    dx = K.KERNELS["silu_vjp"](dy, xb)["x"]
    assert dx.dtype == torch.bfloat16
    want = REGISTRY["silu_vjp"].reference(np64(dy), np64(xb))["x"]
    assert elementwise_rel(dx, want, xb) < 1e-2


def test_fallbacks_run_the_default_composition():
    """float64, dy None and a broadcast dy take the core's composition (FALLBACKS)."""
    x, dy = inputs("float32", (2, 8))
    x64 = x.double()
    np.testing.assert_allclose(np64(K.KERNELS["softplus"](x64)), REGISTRY["softplus"].reference(np64(x64)),
                               rtol=1e-12)
    z = K.KERNELS["silu_vjp"](None, x)["x"]
    assert z.shape == x.shape and not z.any()
    row = dy[:1]  # (1, 8) against (2, 8): the composition broadcasts
    got = K.KERNELS["sigmoid_vjp"](row, x)["x"]
    want = REGISTRY["sigmoid_vjp"].reference(np64(row), np64(x))["x"]
    # the composition's 1 - s cancels in the tails: compared against the largest gradient
    assert np.max(np.abs(np64(got) - want)) < 1e-6 * np.max(np.abs(want))
    assert "float64" in K.FALLBACKS


@pytest.mark.parametrize("dtype", sorted(TDT))
def test_silu_gate_and_vjp_match_reference(dtype):
    """x silu(z) and its VJP over the same z range as the activations (tails, threshold)."""
    z, dy = inputs(dtype)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(z.shape, generator=g, dtype=torch.float64).to(DEV, TDT[dtype])
    y = K.KERNELS["silu_gate"](x, z)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert elementwise_rel(y, REGISTRY["silu_gate"].reference(np64(x), np64(z))) < TOL[dtype]
    got = K.KERNELS["silu_gate_vjp"](dy, x, z)
    want = REGISTRY["silu_gate_vjp"].reference(np64(dy), np64(x), np64(z))
    assert set(got) == {"x", "z"} and got["x"].dtype == x.dtype and got["z"].dtype == z.dtype
    assert elementwise_rel(got["x"], want["x"]) < TOL[dtype]
    assert elementwise_rel(got["z"], want["z"], z) < TOL[dtype]


def test_silu_gate_fallbacks():
    """Mixed dtypes and dy None take the composition; shapes that differ are refused early."""
    z, dy = inputs("float32", (3, 6, 9))
    x = z.to(torch.bfloat16)
    want = REGISTRY["silu_gate"].reference(np64(x), np64(z))
    assert np.max(np.abs(np64(K.KERNELS["silu_gate"](x, z)) - want)) < 1e-2 * np.max(np.abs(want))
    zero = K.KERNELS["silu_gate_vjp"](None, z, z)
    assert set(zero) == {"x", "z"} and not zero["x"].any() and not zero["z"].any()
    from mamba_core.errors import ShapeError
    from mamba_core.registry import get_backend

    with pytest.raises(ShapeError, match="same shape"):
        get_backend("torch_triton").ops.silu_gate(z, z[:1])
