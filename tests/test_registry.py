"""Backend discovery and selection: explicit name, then $MAMBA_BACKEND, then priority."""

import numpy as np
import pytest

from mamba_core import registry
from mamba_core.backend import Availability, Backend
from mamba_core.errors import BackendUnavailableError, OpNotSupportedError, ShapeError, UnknownBackendError
from mamba_core.hookspecs import hookimpl


class _Fake(Backend):
    def __init__(self, name, priority, ok=True, reason="", kernels=None):
        self.name, self.priority, self._ok, self._reason = name, priority, ok, reason
        self.kernels = kernels or {}

    def available(self):
        return Availability.yes() if self._ok else Availability.no(self._reason)

    @property
    def xp(self):
        return np


class _Plugin:
    def __init__(self, *backends):
        self.backends = list(backends)

    @hookimpl
    def mamba_core_backends(self):
        return self.backends


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    plugins = []

    def add(*backends):
        p = _Plugin(*backends)
        plugins.append(p)
        registry.register_plugin(p)
        return p

    yield add
    for p in plugins:
        registry.unregister_plugin(p)


def test_entry_points_provide_reference_and_cpu_numpy():
    names = set(registry.installed())
    assert {"reference", "cpu_numpy"} <= names


def test_highest_priority_available_backend_wins(plugin):
    plugin(_Fake("fast_but_missing", 1000, ok=False, reason="no device"), _Fake("good", 500))
    assert registry.get_backend().name == "good"


def test_explicit_name_beats_environment(plugin, monkeypatch):
    plugin(_Fake("a_be", 1), _Fake("b_be", 2))
    monkeypatch.setenv(registry.ENV_VAR, "a_be")
    assert registry.get_backend().name == "a_be"
    assert registry.get_backend("b_be").name == "b_be"


def test_unknown_name_lists_installed(plugin):
    with pytest.raises(UnknownBackendError) as e:
        registry.get_backend("no_such_backend")
    msg = str(e.value)
    assert "no_such_backend" in msg and "cpu_numpy" in msg and "reference" in msg


def test_unknown_name_from_environment_says_so(plugin, monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "typo_backend")
    with pytest.raises(UnknownBackendError, match="environment variable MAMBA_BACKEND"):
        registry.get_backend()


def test_unavailable_backend_gives_its_reason(plugin):
    plugin(_Fake("gpu_only", 5, ok=False, reason="no CUDA device visible"))
    with pytest.raises(BackendUnavailableError, match="gpu_only.*no CUDA device visible"):
        registry.get_backend("gpu_only")


def test_hook_returning_non_backend_is_rejected(plugin):
    with pytest.raises(TypeError, match="must return"):
        plugin("not a backend")
        registry.installed()
    registry.refresh()


def test_ops_fall_back_to_default_and_prefer_native(plugin):
    calls = []

    def my_silu(x):
        calls.append(x.shape)
        return x * 0 + 42.0

    be = _Fake("native_silu", 0, kernels={"silu": my_silu})
    x = np.linspace(-3, 3, 7)
    assert be.ops.is_native("silu") and not be.ops.is_native("softplus")
    assert np.all(be.ops.silu(x) == 42.0) and calls == [(7,)]
    np.testing.assert_allclose(be.ops.softplus(x), np.log1p(np.exp(x)), rtol=1e-12)


def test_unknown_op_lists_ops():
    be = registry.get_backend("cpu_numpy")
    with pytest.raises(OpNotSupportedError, match="no op named 'frobnicate'.*linear"):
        be.ops.frobnicate


def test_validation_runs_for_every_backend():
    be = registry.get_backend("cpu_numpy")
    with pytest.raises(ShapeError, match=r"'weight'.*\(C, K\)|'x'"):
        be.ops.causal_conv1d(np.zeros((2, 5)), np.zeros((3, 4)))
    with pytest.raises(ShapeError, match="K_in=7"):
        be.ops.linear(np.zeros((2, 8)), np.zeros((3, 7)))


def test_cpu_numpy_widens_low_precision_storage():
    be = registry.get_backend("cpu_numpy")
    a = be.asarray(np.ones(3, np.float16))
    assert a.dtype == np.float32
    with pytest.raises(OpNotSupportedError, match="does not compute in 'bfloat16'"):
        be.dtype("bfloat16")


def test_reference_backend_is_float64():
    be = registry.get_backend("reference")
    assert be.asarray(np.ones(2, np.float32)).dtype == np.float64
    assert be.asarray(np.arange(3)).dtype.kind == "i"
