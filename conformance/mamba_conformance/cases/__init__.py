"""The conformance cases, discovered module by module.

Every public module of this package (name not starting with ``_``) exports ``CHECKS: list[Check]``.
``all_checks()`` imports them all, every time it is called, so a module added while a session
runs is picked up. A module that fails to import (or exports no valid ``CHECKS``) does not stop
the run: it becomes a placeholder check of kind ``"import-error"`` that the runner reports as one
ERROR entry naming the module and the exception.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import traceback

from mamba_conformance.check import Case, Check

IMPORT_ERROR = "import-error"


@dataclasses.dataclass(frozen=True)
class ModuleError:
    """A case module that could not contribute its checks."""

    module: str
    error: str  # "ExceptionType: message"
    traceback: str = ""
    where: tuple = ()


@dataclasses.dataclass(frozen=True)
class Discovery:
    checks: list
    errors: list  # list[ModuleError]


def discover(package: str = __name__) -> Discovery:
    """Import every public module of ``package`` and collect their ``CHECKS``."""
    importlib.invalidate_caches()
    pkg = importlib.import_module(package)
    checks: list[Check] = []
    errors: list[ModuleError] = []
    seen: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        modname = f"{package}.{info.name}"
        try:
            mod = importlib.import_module(modname)
            found = getattr(mod, "CHECKS", None)
            if found is None:
                raise AttributeError(f"module {modname} defines no CHECKS list")
            found = list(found)
            bad = [c for c in found if not isinstance(c, Check)]
            if bad:
                raise TypeError(
                    f"{modname}.CHECKS must hold mamba_conformance.check.Check objects, got {bad[0]!r}"
                )
        except Exception as exc:  # noqa: BLE001 - a broken module must not hide the others
            frames = [f for f in traceback.extract_tb(exc.__traceback__)
                      if not f.filename.startswith("<frozen") and "importlib" not in f.filename]
            where = tuple(f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}" for f in frames[-4:])
            errors.append(ModuleError(modname, f"{type(exc).__name__}: {exc}", traceback.format_exc(), where))
            continue
        for c in found:
            if c.name in seen:
                errors.append(ModuleError(
                    modname, f"ValueError: check name {c.name!r} is also defined in {seen[c.name]}; "
                    "rename one of them"))
                continue
            seen[c.name] = modname
            checks.append(c)
    return Discovery(checks, errors)


def _raise(message: str):
    def fail(*_args, **_kwargs):
        raise ImportError(message)

    return fail


def error_check(err: ModuleError) -> Check:
    """A placeholder check standing for a module that failed to import."""
    message = f"case module {err.module} failed to import: {err.error}"
    return Check(
        name=f"import:{err.module.rsplit('.', 1)[-1]}",
        kind=IMPORT_ERROR,
        cases=(Case("import", {"module": err.module, "error": err.error, "traceback": err.traceback,
                                 "where": list(err.where)}),),
        make_inputs=_raise(message),
        forward=_raise(message),
        doc=message,
    )


def all_checks(package: str = __name__) -> list[Check]:
    """Every check of every case module, plus one placeholder per module that failed to import."""
    found = discover(package)
    return list(found.checks) + [error_check(e) for e in found.errors]


__all__ = ["all_checks", "discover", "error_check", "Discovery", "ModuleError", "IMPORT_ERROR"]
