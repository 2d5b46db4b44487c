"""``mamba-core new-backend NAME``: scaffold a separately packaged backend.

The scaffold is a complete distribution that installs with ``pip install -e`` and passes
conformance at once, because every op it does not implement falls back to the core's default
composition on its array namespace::

    mamba-backend-NAME/                      (``--out`` chooses another directory)
      pyproject.toml                         distribution mamba-backend-NAME, entry point NAME
      README.md                              the next steps
      mamba_backend_NAME/__init__.py
      mamba_backend_NAME/backend.py          the Backend subclass: name, xp, dtypes, available()
      mamba_backend_NAME/kernels.py          KERNELS = {"silu": silu}: the first native op
      mamba_backend_NAME/plugin.py           the pluggy hook the entry point names
      tests/test_NAME_conformance.py         assert_conforms(...) over ops and models

The templates are strings in this module, so they ship with the package. See
docs/writing-a-backend.md for the contract the generated code follows.
"""

from __future__ import annotations

import dataclasses
import keyword
import os
import re
from pathlib import Path

from mamba_core.errors import MambaError

#: Backend names: a lower-case Python identifier (it becomes part of the package name).
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


class ScaffoldError(MambaError, ValueError):
    """A backend name or target directory that the scaffold cannot use."""


@dataclasses.dataclass(frozen=True)
class Names:
    """Every name the scaffold derives from the backend name."""

    name: str  # backend name, entry-point name: my_backend
    package: str  # import package: mamba_backend_my_backend
    dist: str  # distribution: mamba-backend-my-backend
    cls: str  # Backend subclass: MyBackendBackend

    @classmethod
    def of(cls, name: str, dist: str | None = None, package: str | None = None) -> "Names":
        camel = "".join(part.capitalize() for part in name.split("_") if part)
        return cls(
            name=name,
            package=package or f"mamba_backend_{name}",
            dist=dist or "mamba-backend-" + name.replace("_", "-"),
            cls=f"{camel}Backend",
        )


# ---- validation -----------------------------------------------------------------------------
def check_name(name: str) -> None:
    """Raise ScaffoldError unless ``name`` is a usable backend name (syntax only)."""
    if not isinstance(name, str) or not name.isidentifier() or not NAME_PATTERN.match(name):
        suggestion = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_")
        if suggestion and suggestion[0].isdigit():
            suggestion = "b_" + suggestion
        hint = f", e.g. {suggestion!r}" if suggestion and NAME_PATTERN.match(suggestion) else ""
        raise ScaffoldError(
            f"backend name {name!r} is not a valid name: use a lower-case Python identifier "
            f"(a-z, 0-9 and '_', starting with a letter){hint}. It becomes the entry-point name "
            "and part of the package name mamba_backend_<name>."
        )
    if keyword.iskeyword(name):
        raise ScaffoldError(f"backend name {name!r} is a Python keyword; pick another name")


def check_not_installed(names: Names) -> None:
    """Raise ScaffoldError when the backend name, package or distribution already exists here."""
    from importlib.metadata import PackageNotFoundError, distribution, entry_points
    import importlib.util

    from mamba_core.registry import ENTRY_POINT_GROUP, installed, load_errors

    taken = set(installed()) | set(load_errors())
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if names.name in taken or names.name in eps:
        where = ""
        ep = eps.get(names.name)
        if ep is not None:
            dist = getattr(getattr(ep, "dist", None), "name", None)
            where = f" (entry point {ep.value!r}" + (f" of distribution {dist}" if dist else "") + ")"
            fix = f"; or uninstall it first: pip uninstall {dist}" if dist else ""
        else:
            fix = ""
            be = installed().get(names.name)
            if be is not None:
                where = f" ({type(be).__module__}.{type(be).__qualname__})"
        raise ScaffoldError(
            f"a backend named {names.name!r} is already installed{where}. Backend names must be "
            f"unique: pick another name{fix}. Installed backends: {', '.join(sorted(taken))}."
        )
    try:
        distribution(names.dist)
    except PackageNotFoundError:
        pass
    else:
        raise ScaffoldError(
            f"a distribution named {names.dist!r} is already installed; pick another backend name "
            f"or pass --dist, or uninstall it first: pip uninstall {names.dist}"
        )
    if importlib.util.find_spec(names.package) is not None:
        raise ScaffoldError(
            f"a Python package named {names.package!r} is already importable here; pick another "
            "backend name or pass --package"
        )


def check_target(target: Path) -> None:
    if target.exists():
        raise ScaffoldError(
            f"target directory {str(target)!r} already exists; the scaffold never overwrites. "
            "Choose another directory with --out, or remove that one first."
        )


# ---- templates ------------------------------------------------------------------------------
_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{{dist}}"
version = "0.1.0"
description = "mamba-core backend {{name}}"
requires-python = ">=3.10"
dependencies = ["mamba-core", "numpy>=2.1"]

[project.optional-dependencies]
test = ["mamba-conformance", "pytest>=8"]

# This is what makes the backend exist: mamba-core discovers backends through the entry-point
# group "mamba_core.backends". The entry-point name is the backend's name; the value is the module
# holding the pluggy hook. Reinstall (pip install -e .) after changing it.
[project.entry-points."mamba_core.backends"]
{{name}} = "{{package}}.plugin"

[tool.setuptools.packages.find]
include = ["{{package}}*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

_README = '''\
# {{dist}}

A [mamba-core](https://github.com/) backend named `{{name}}`, generated by
`mamba-core new-backend {{name}}`. See mamba-core's docs/writing-a-backend.md for the contract.

```bash
pip install -e .                                # registers the entry point "{{name}}"
mamba-core backends                             # {{name}}: available, native ops: silu
mamba-conformance {{name}}                      # the certificate (exit 0 = certified)
python -m pytest -q                             # the same, as this package's own test
```

Grow it kernel by kernel: add a function with an op's public signature to
`{{package}}/kernels.py` and list it in `KERNELS` (`mamba-core ops` lists the ops and their
signatures), then run `mamba-conformance {{name}} --ops OP` to certify just that op.
'''

_INIT = '''\
"""mamba-core backend {{name}}."""

from {{package}}.backend import {{cls}}

__all__ = ["{{cls}}"]
'''

_PLUGIN = '''\
"""Entry point of the {{name}} backend (group ``mamba_core.backends``, see pyproject.toml)."""

from mamba_core.hookspecs import hookimpl


@hookimpl
def mamba_core_backends():
    # Import lazily and construct cheaply: a backend whose library or device is missing must
    # still load, and say why through available().
    from {{package}}.backend import {{cls}}

    return [{{cls}}()]
'''

_BACKEND = '''\
"""The {{name}} backend object: what mamba-core needs to know about it."""

from __future__ import annotations

from mamba_core.backend import Availability, Backend, Capabilities

from {{package}} import kernels


class {{cls}}(Backend):
    name = "{{name}}"
    #: higher wins when nobody names a backend (cpu_numpy has 10, reference -100)
    priority = 0
    description = "{{name}}: NumPy arrays; native silu, default compositions for the rest"
    #: the dtypes it computes in; conformance certifies each one that has a tolerance
    dtypes = ("float32", "float64")
    capabilities = Capabilities(cuda_graphs=False, batch_invariant=False, deterministic=True)
    #: op name -> native kernel; every other op runs the core's default composition on xp
    kernels = kernels.KERNELS

    def available(self) -> Availability:
        # Say no with the reason and the fix when a library or device is missing, e.g.
        #   return Availability.no("mylib is not installed: pip install mylib")
        return Availability.yes()

    @property
    def xp(self):
        """The array-API namespace the default compositions run on."""
        return kernels.xp

    # asarray(a, dtype=None) and to_numpy(a) are inherited: they go through xp.asarray and
    # numpy.asarray. Override them when your arrays live on a device (use DLPack where you can).
'''

_KERNELS = '''\
"""Native kernels of the {{name}} backend.

``KERNELS`` maps an op name (``mamba-core ops`` lists them) to a callable with that op's public
signature: the default composition's arguments without the leading ``xp``. Every op not listed
runs the core's default composition on ``xp``, so the backend is complete from the start.
Certify one op while you write it:  mamba-conformance {{name}} --ops silu
"""

from __future__ import annotations

import numpy as xp  # the backend's array namespace (backend.py returns this module as .xp)


def silu(x):
    """silu(x) = x * sigmoid(x), x of any shape; computed in >= float32, returned in x's dtype."""
    wide = xp.float64 if x.dtype == xp.float64 else xp.float32
    xw = xp.astype(x, wide)
    e = xp.exp(-xp.abs(xw))  # never overflows: sigmoid from exp(-|x|)
    s = xp.where(xw >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return xp.astype(xw * s, x.dtype)


KERNELS = {
    "silu": silu,
}
'''

_TEST = '''\
"""The {{name}} backend's own conformance test: the certificate as a pytest test.

Run:  python -m pytest -q   (or the command line: mamba-conformance {{name}})
"""

from mamba_conformance.pytest_plugin import assert_conforms

from {{package}} import {{cls}}


def test_the_entry_point_registers_the_backend():
    from mamba_core.registry import installed

    assert "{{name}}" in installed(), "the entry point is not installed: pip install -e ."


def test_silu_is_native_and_the_rest_falls_back():
    be = {{cls}}()
    assert be.ops.is_native("silu")
    assert not be.ops.is_native("selective_scan")  # runs the default composition on be.xp


def test_ops_conform():
    assert_conforms("{{name}}", only="op:*")


def test_models_conform():
    assert_conforms("{{name}}", only=["mixer:*", "lm:*"])
'''

_GITIGNORE = '''\
__pycache__/
*.egg-info/
build/
dist/
*.certificate.json
'''


def render(names: Names) -> dict[str, str]:
    """The scaffold's files, relative path -> text."""
    subst = {
        "{{name}}": names.name,
        "{{package}}": names.package,
        "{{dist}}": names.dist,
        "{{cls}}": names.cls,
    }

    def fill(text: str) -> str:
        for k, v in subst.items():
            text = text.replace(k, v)
        return text

    pkg = names.package
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        ".gitignore": _GITIGNORE,
        f"{pkg}/__init__.py": _INIT,
        f"{pkg}/backend.py": _BACKEND,
        f"{pkg}/kernels.py": _KERNELS,
        f"{pkg}/plugin.py": _PLUGIN,
        f"tests/test_{names.name}_conformance.py": _TEST,
    }
    return {path: fill(text) for path, text in files.items()}


def default_target(names: Names, parent: str | os.PathLike | None = None) -> Path:
    return Path(parent or ".") / names.dist


def new_backend(name: str, out: str | os.PathLike | None = None, *, dist: str | None = None,
                package: str | None = None, check_installed: bool = True) -> Path:
    """Write the scaffold of backend ``name`` into ``out`` (default ``./mamba-backend-NAME``).

    Raises ScaffoldError for a name that is not a lower-case identifier, that an installed
    backend (or distribution, or package) already uses, or a target directory that exists.
    Returns the directory written.
    """
    check_name(name)
    names = Names.of(name, dist=dist, package=package)
    if not names.package.isidentifier():
        raise ScaffoldError(f"package name {names.package!r} is not a Python identifier")
    if check_installed:
        check_not_installed(names)
    target = Path(out) if out is not None else default_target(names)
    check_target(target)
    files = render(names)
    target.mkdir(parents=True)
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def next_steps(names: Names, target: Path) -> str:
    steps = [
        (f"pip install -e {target}", f"registers the entry point {names.name!r}"),
        ("mamba-core backends", f"{names.name}: available, native ops: silu"),
        (f"mamba-conformance {names.name}", "certify it (exit status 0 = certified)"),
        (f"python -m pytest -q {target}", "the same, as the package's own tests"),
    ]
    width = max(len(cmd) for cmd, _ in steps)
    return "\n".join(
        [f"created backend {names.name!r} in {target}/ (distribution {names.dist}, package {names.package})",
         "", "next:"]
        + [f"  {cmd.ljust(width)}   # {why}" for cmd, why in steps]
        + [f"then add kernels to {target / names.package / 'kernels.py'} (`mamba-core ops` lists the ops);",
           "see docs/writing-a-backend.md."]
    )


__all__ = ["new_backend", "render", "check_name", "check_not_installed", "check_target", "Names",
           "ScaffoldError", "next_steps"]
