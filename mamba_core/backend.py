"""The Backend contract.

A backend is a small object that tells mamba_core how to hold arrays and, optionally, how to
compute some ops faster than the core's default compositions:

- ``name``, ``priority`` (higher wins when nothing is asked for by name) and ``available()``,
  which answers yes, or no with the reason and the fix;
- ``xp``: an array-API namespace (``numpy``, ``array_api_compat.torch``, ``cupy``, ...);
- ``asarray`` / ``to_numpy`` to move data in and out (the defaults go through ``xp`` and
  DLPack/``__array__``);
- ``dtypes``: the floating dtypes it computes in (``"float32"``, ``"float64"``, ``"bfloat16"``...);
- ``capabilities``: flags such as CUDA graphs, batch invariance and determinism;
- ``kernels``: a table ``op name -> callable`` of native implementations;
- ``mixer_steps`` (optional): a table ``family -> callable`` of fused one-token decode steps
  (``"mamba1"``, ``"mamba2"``, ``"mamba3"``), each with the signature of that family's
  ``mamba_core.models.<family>.step`` and the same results; conformance's mixer and LM step
  checks run through it. ``MAMBA_NO_FUSED_STEP=1`` turns every one off (for A/B timing);
- ``static_decoder(params, cfg, dtype)`` (optional): an object that decodes token by token over
  caches it owns (CUDA graphs, preallocated buffers): ``set_cache(cache)``, ``step(ids) ->
  logits`` (the cache advances in place; the logits buffer is reused by the next step),
  ``cache(batch)`` (the live cache), ``reset(batch)``. Generation uses it when offered;
  ``MAMBA_NO_STATIC_DECODER=1`` turns it off. Its logits must equal ``lm.step``'s.

Every op a backend does not implement falls back to the default composition that
``mamba_core.ops`` writes in array-API terms, so a new backend can start with nothing but
``xp`` and grow kernel by kernel. ``backend.ops.<name>(...)`` resolves native-or-default.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import numpy as np

from mamba_core.errors import OpNotSupportedError


@dataclasses.dataclass(frozen=True)
class Availability:
    """Whether a backend can run here; falsy with a ``reason`` that says how to fix it."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def yes(cls) -> "Availability":
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> "Availability":
        return cls(False, reason)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend promises beyond equality with the reference.

    cuda_graphs:      the language-model step can be captured and replayed as a CUDA graph.
    batch_invariant:  a row's results are bit-identical whatever else is in the batch.
    deterministic:    two runs with the same inputs give bit-identical results.
    """

    cuda_graphs: bool = False
    batch_invariant: bool = False
    deterministic: bool = True


class Backend:
    """Base class of every backend. Subclasses set the class attributes and ``xp``."""

    name: str = "unnamed"
    priority: int = 0
    description: str = ""
    dtypes: tuple[str, ...] = ("float32", "float64")
    capabilities: Capabilities = Capabilities()
    #: op name -> callable with the op's public signature (see ``mamba_core.ops``).
    kernels: Mapping[str, Callable[..., Any]] = {}
    #: mixer family -> fused step(be, params, cfg, u, cache) -> (out, new_cache) (optional).
    mixer_steps: Mapping[str, Callable[..., Any]] = {}
    #: op name -> SavingForm(forward, vjp): a forward that leaves residuals to the op's VJP
    #: (optional; only the ops in mamba_core.ops.saving.SAVABLE).
    saving: Mapping[str, Any] = {}

    # ---- availability and arrays -------------------------------------------------------
    def available(self) -> Availability:
        return Availability.yes()

    @property
    def xp(self):  # pragma: no cover - every concrete backend overrides it
        raise OpNotSupportedError(
            f"backend {self.name!r} defines no array namespace; set the 'xp' property to an "
            "array-API namespace such as numpy or array_api_compat.torch"
        )

    def dtype(self, name: str):
        """The ``xp`` dtype object for a dtype name this backend computes in."""
        if name not in self.dtypes:
            raise OpNotSupportedError(
                f"backend {self.name!r} does not compute in {name!r}; it supports {list(self.dtypes)}"
            )
        return getattr(self.xp, name)

    def asarray(self, a, dtype: str | None = None):
        """Bring ``a`` (NumPy array, scalar, or a foreign array) into this backend.

        ``dtype`` is a dtype name; ``None`` keeps floating arrays' dtype when the backend
        computes in it and upcasts low-precision storage (bf16/f16) to float32.
        """
        xp = self.xp
        if dtype is None:
            kind = _float_kind(a)
            if kind is not None and kind not in self.dtypes:
                dtype = "float32"
        if dtype is None:
            return xp.asarray(a)
        if isinstance(a, np.ndarray) and a.dtype.name == "bfloat16":
            a = a.astype(np.float32)  # ml_dtypes storage: widen on the host first
        return xp.asarray(a, dtype=self.dtype(dtype))

    def static_decoder(self, params: dict, cfg, dtype: str):
        """A decoder over static caches (see the module doc), or None: then generation runs
        ``lm.step``. Backends that have one override this."""
        return None

    def to_numpy(self, a) -> np.ndarray:
        """A NumPy copy (or view) of a backend array."""
        return np.asarray(a)

    # ---- ops -----------------------------------------------------------------------------
    @functools.cached_property
    def ops(self) -> "OpTable":
        return OpTable(self)

    def native_ops(self) -> list[str]:
        return sorted(self.kernels)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def static_decoders_enabled() -> bool:
    """False when ``MAMBA_NO_STATIC_DECODER=1`` asks for plain ``lm.step`` decoding."""
    return os.environ.get("MAMBA_NO_STATIC_DECODER", "") in ("", "0")


def static_decoder_of(be, params: dict, cfg, dtype: str):
    """``be.static_decoder(params, cfg, dtype)``, or None when the backend has none or
    ``MAMBA_NO_STATIC_DECODER=1`` is set (generation and the bench decode through this)."""
    if not static_decoders_enabled():
        return None
    make = getattr(be, "static_decoder", None)
    return None if make is None else make(params, cfg, dtype)


def _float_kind(a) -> str | None:
    dt = getattr(a, "dtype", None)
    if dt is None:
        return None
    name = str(dt).replace("torch.", "")
    if name in ("float16", "bfloat16", "float32", "float64"):
        return name
    return None


class OpTable:
    """``backend.ops.<name>``: the backend's kernel for that op, else the default composition.

    Default compositions take the array namespace as their first argument; the table binds it,
    so both forms are called with the op's public signature.
    """

    def __init__(self, backend: Backend):
        self._backend = backend
        self._cache: dict[str, Callable[..., Any]] = {}
        self._saving_table: dict | None = None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._cache[name]
        except KeyError:
            pass
        from mamba_core.ops import REGISTRY

        spec = REGISTRY.get(name)
        kernel = self._backend.kernels.get(name)
        if kernel is None:
            if spec is None:
                raise OpNotSupportedError(
                    f"no op named {name!r}; the ops are: {', '.join(sorted(REGISTRY))}"
                )
            kernel = functools.partial(spec.default, self._backend.xp)
        if spec is not None and spec.validate is not None:
            kernel = _validated(spec.validate, kernel)
        self._cache[name] = kernel
        return kernel

    def is_native(self, name: str) -> bool:
        return name in self._backend.kernels

    # ---- saving forms (mamba_core/ops/saving.py) ------------------------------------------
    def saves(self, name: str) -> bool:
        """Whether the backend has a saving form of op ``name``."""
        return name in self._saving()

    def forward_saving(self, name: str, *args, **kwargs):
        """Op ``name``'s forward -> (outputs, residuals for ``vjp_saved``): the backend's saving
        form, else the plain op with residuals None. Arguments as the op's."""
        form = self._saving().get(name)
        if form is None:
            return getattr(self, name)(*args, **kwargs), None
        self._validate(name, *args, **kwargs)
        return form.forward(*args, **kwargs)

    def vjp_saved(self, name: str, residuals, cotangent, *args, **kwargs) -> dict:
        """Op ``name``'s VJP from ``forward_saving``'s residuals, called with the forward's
        arguments: the saving form's VJP, else (or with residuals None) the plain ``<name>_vjp``."""
        form = self._saving().get(name)
        if form is None or residuals is None:
            return getattr(self, f"{name}_vjp")(cotangent, *args, **kwargs)
        self._validate(f"{name}_vjp", cotangent, *args, **kwargs)
        return form.vjp(residuals, cotangent, *args, **kwargs)

    def _saving(self) -> dict:
        if os.environ.get("MAMBA_NO_SAVING_FORMS", "") not in ("", "0"):
            return {}  # every saving form off: the plain ops and VJPs (A/B timing, debugging)
        if self._saving_table is None:
            from mamba_core.ops.saving import check_saving_table

            self._saving_table = check_saving_table(dict(self._backend.saving), self._backend.name)
        return self._saving_table

    def _validate(self, name: str, *args, **kwargs) -> None:
        from mamba_core.ops import REGISTRY

        spec = REGISTRY.get(name)
        if spec is None:
            raise OpNotSupportedError(f"no op named {name!r}; the ops are: {', '.join(sorted(REGISTRY))}")
        if spec.validate is not None:
            spec.validate(*args, **kwargs)


def _validated(validate: Callable[..., None], kernel: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args, **kwargs):
        validate(*args, **kwargs)
        return kernel(*args, **kwargs)

    call.__wrapped__ = kernel  # type: ignore[attr-defined]
    return call


def collect_kernels(package, backend_name: str, import_errors: dict | None = None,
                    table_name: str = "KERNELS") -> dict:
    """Merge the ``KERNELS`` tables (or the tables named ``table_name``, such as ``SAVING``) of
    every public module of ``package`` (a kernels/ package).

    A module whose import fails with ImportError (its GPU library is missing) contributes
    nothing and is recorded in ``import_errors``; two modules claiming one op is an error.
    """
    import importlib
    import pkgutil

    table: dict = {}
    for m in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if m.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{package.__name__}.{m.name}")
        except ImportError as exc:
            if import_errors is not None:
                import_errors[m.name] = f"{type(exc).__name__}: {exc}"
            continue
        for name, fn in getattr(mod, table_name, {}).items():
            if name in table:
                raise RuntimeError(f"{backend_name}: op {name!r} has {table_name} entries in two modules")
            table[name] = fn
    return table
