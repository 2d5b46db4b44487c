"""`mamba-core new-backend`: scaffold -> pip install -e -> mamba-conformance -> green, and the
worked example (examples/backend_numba) certified end to end, and failing usefully when broken.

These tests install packages into the running interpreter's environment
(``python -m pip install --no-deps -e DIR``) and uninstall them afterwards, exactly as the guide
(docs/writing-a-backend.md) tells a backend author to.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from mamba_core.cli import main as core_main
from mamba_core.scaffold import Names, ScaffoldError, new_backend, render

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "backend_numba"
EXAMPLE_DIST = "mamba-backend-example-numba"


# ---- helpers ----------------------------------------------------------------------------------
def _run(cmd, env=None, timeout=300, cwd=None):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("MAMBA_BACKEND", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


def _script(name: str) -> list[str]:
    """The console script next to this interpreter, else ``python -m`` of its module."""
    exe = shutil.which(name, path=str(Path(sys.executable).parent))
    if exe:
        return [exe]
    return [sys.executable, "-m", {"mamba-conformance": "mamba_conformance", "mamba-core": "mamba_core"}[name]]


def _pip_or_skip():
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not available in this environment; these tests pip-install the scaffold")


def _pip_install_editable(path: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    if _setuptools_version() >= (68,):  # what the pyprojects require: no download needed
        cmd.append("--no-build-isolation")
    r = _run(cmd + ["-e", str(path)])
    assert r.returncode == 0, f"pip install -e {path} failed:\n{r.stdout}\n{r.stderr}"


def _setuptools_version() -> tuple:
    try:
        v = distribution("setuptools").version
    except PackageNotFoundError:
        return ()
    return tuple(int(p) for p in v.split(".")[:2] if p.isdigit())


def _pip_uninstall(dist: str) -> None:
    _run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "--disable-pip-version-check", dist])
    from mamba_core import registry

    registry.refresh()


def _is_installed(dist: str) -> bool:
    try:
        distribution(dist)
    except PackageNotFoundError:
        return False
    return True


# ---- the scaffold's files ---------------------------------------------------------------------
def test_scaffold_files_follow_the_contract():
    names = Names.of("my_backend")
    assert (names.package, names.dist, names.cls) == ("mamba_backend_my_backend", "mamba-backend-my-backend",
                                                      "MyBackendBackend")
    files = render(names)
    assert set(files) == {
        "pyproject.toml", "README.md", ".gitignore", "mamba_backend_my_backend/__init__.py",
        "mamba_backend_my_backend/backend.py", "mamba_backend_my_backend/kernels.py",
        "mamba_backend_my_backend/plugin.py", "tests/test_my_backend_conformance.py",
    }
    py = files["pyproject.toml"]
    assert '[project.entry-points."mamba_core.backends"]' in py
    assert 'my_backend = "mamba_backend_my_backend.plugin"' in py
    assert 'name = "mamba-backend-my-backend"' in py
    assert "@hookimpl" in files["mamba_backend_my_backend/plugin.py"]
    assert '"silu": silu' in files["mamba_backend_my_backend/kernels.py"]
    assert "assert_conforms(" in files["tests/test_my_backend_conformance.py"]
    for path, text in files.items():
        assert "{{" not in text, path
        if path.endswith(".py"):
            compile(text, path, "exec")


def test_scaffolded_silu_is_a_correct_native_kernel(tmp_path, monkeypatch):
    """The generated package imports and certifies in-process, before any installation."""
    target = new_backend("inproc_probe", tmp_path / "pkg", check_installed=False)
    monkeypatch.syspath_prepend(str(target))
    mod = __import__("mamba_backend_inproc_probe.backend", fromlist=["InprocProbeBackend"])
    be = mod.InprocProbeBackend()
    assert be.available() and be.ops.is_native("silu") and not be.ops.is_native("ssd_scan")
    from mamba_conformance import run

    cert = run(be, only=["op:silu", "op:selective_scan"], dtypes=["float32", "float64"])
    assert cert.ok, cert.render()
    assert {e.ops.get("silu") for e in cert.entries if e.check == "op:silu" and e.mode != "grad"} == {"native"}
    # its gradient is not overridden: grad rows name the VJP op and say it ran the default
    assert {e.ops.get("silu_vjp") for e in cert.entries if e.check == "op:silu" and e.mode == "grad"} == {"default"}


# ---- name and target validation ---------------------------------------------------------------
@pytest.mark.parametrize("bad", ["My-Backend", "my-backend", "9lives", "has space", "", "MyBackend", "_private"])
def test_names_that_are_not_lowercase_identifiers_are_refused(bad, tmp_path):
    with pytest.raises(ScaffoldError, match="not a valid name: use a lower-case Python identifier"):
        new_backend(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_keyword_is_refused(tmp_path):
    with pytest.raises(ScaffoldError, match="keyword"):
        new_backend("class", tmp_path / "x")


@pytest.mark.parametrize("taken", ["cpu_numpy", "reference"])
def test_name_of_an_installed_backend_is_refused(taken, tmp_path):
    with pytest.raises(ScaffoldError) as info:
        new_backend(taken, tmp_path / "x")
    msg = str(info.value)
    assert f"a backend named {taken!r} is already installed" in msg and "pick another name" in msg
    assert not (tmp_path / "x").exists()


def test_existing_target_is_refused(tmp_path):
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "keep.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="already exists; the scaffold never overwrites"):
        new_backend("fresh_name_xyz", tmp_path / "there")
    assert (tmp_path / "there" / "keep.txt").read_text() == "mine"


def test_cli_reports_bad_names_with_exit_2(tmp_path, capsys):
    assert core_main(["new-backend", "Bad-Name", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "mamba-core: error:" in err and "'Bad-Name'" in err and "e.g. 'bad_name'" in err
    assert core_main(["new-backend", "cpu_numpy", "--out", str(tmp_path / "y")]) == 2
    assert "already installed" in capsys.readouterr().err


def test_cli_ops_lists_every_op():
    from mamba_core.ops import REGISTRY

    r = _run(_script("mamba-core") + ["ops", "--markdown"])
    assert r.returncode == 0, r.stderr
    for name in REGISTRY:
        assert f"| `{name}` |" in r.stdout


# ---- scaffold -> install -> certify -------------------------------------------------------------
@pytest.fixture(scope="module")
def installed_scaffold(tmp_path_factory):
    _pip_or_skip()
    name = f"scaffold_t{uuid.uuid4().hex[:8]}"
    target = tmp_path_factory.mktemp("scaffold") / f"mamba-backend-{name}"
    r = _run(_script("mamba-core") + ["new-backend", name, "--out", str(target)])
    assert r.returncode == 0, r.stderr
    assert "pip install -e" in r.stdout and f"mamba-conformance {name}" in r.stdout
    dist = Names.of(name).dist
    try:
        _pip_install_editable(target)
        yield name, target
    finally:
        _pip_uninstall(dist)


def test_scaffold_installs_and_passes_conformance(installed_scaffold):
    name, _ = installed_scaffold
    r = _run(_script("mamba-core") + ["backends"])
    assert r.returncode == 0 and name in r.stdout, r.stdout + r.stderr
    line = r.stdout[r.stdout.index(name):].split("native ops", 1)[1].splitlines()[0]
    assert line.endswith(": silu"), line
    r = _run(_script("mamba-conformance") + [name, "--only", "op:*", "--dtype", "float32", "--no-json"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert f"{name}: CERTIFIED" in r.stdout


def test_scaffolds_own_test_passes(installed_scaffold):
    _, target = installed_scaffold
    r = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target / "tests"),
              "-k", "not models"], cwd=target)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "3 passed" in r.stdout


# ---- the worked example: examples/backend_numba -------------------------------------------------
@pytest.fixture(scope="module")
def installed_example():
    if importlib.util.find_spec("numba") is None:
        pytest.skip("examples/backend_numba needs numba, which is not installed: pip install numba")
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"numba is installed but cannot be imported here ({exc})")
    _pip_or_skip()
    was_installed = _is_installed(EXAMPLE_DIST)
    if not was_installed:
        _pip_install_editable(EXAMPLE)
    try:
        yield "example_numba"
    finally:
        if not was_installed:
            _pip_uninstall(EXAMPLE_DIST)


def test_example_is_certified_end_to_end(installed_example, tmp_path):
    out = tmp_path / "example_numba.certificate.json"
    r = _run(_script("mamba-conformance") + [installed_example, "--json", str(out)])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
    assert "example_numba: CERTIFIED" in r.stdout
    cert = json.loads(out.read_text())
    assert cert["ok"] and cert["dtypes"] == ["float64", "float32"]
    assert {"selective_scan", "selective_scan_step", "silu"} <= set(cert["header"]["native_ops"])
    scan = [e for e in cert["entries"] if e["check"] == "op:selective_scan"]
    assert scan and all(e["verdict"] == "PASS" for e in scan)
    # forward and step rows ran the example's kernel; grad rows name the VJP op it did not override
    assert all(e["ops"]["selective_scan"] == "native" for e in scan if e["mode"] != "grad")
    assert all(e["ops"]["selective_scan_vjp"] == "default" for e in scan if e["mode"] == "grad")
    assert {"forward", "step"} <= {e["mode"] for e in scan}


def test_example_wrong_override_fails_with_a_useful_certificate(installed_example, tmp_path):
    out = tmp_path / "broken.json"
    r = _run(_script("mamba-conformance") + [installed_example, "--only", "op:selective_scan",
                                             "--dtype", "float32", "--mode", "forward", "--mode", "step",
                                             "--json", str(out)],
             env={"MAMBA_EXAMPLE_NUMBA_BUG": "d_sign"})
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr
    text = r.stdout
    assert "NOT CERTIFIED" in text and "FAILURES (" in text
    failures = text[text.index("FAILURES ("):]
    for part in (
        "op:selective_scan [",  # the check and case
        "selective_scan (native)",  # the op, and that it is the backend's own kernel
        "forward float32: FAIL",  # mode and dtype
        "output 'y': shape (",  # the failing output's shape and dtype
        "> tolerance 2.00e-04",  # error vs tolerance
        "first differing index (",  # where
        "dims: B=",  # the case's sizes
        "reproduce: mamba-conformance example_numba --only op:selective_scan --case",
    ):
        assert part in failures, (part, failures[:2000])
    cert = json.loads(out.read_text())
    bad = {(e["case"], e["mode"]) for e in cert["entries"] if e["verdict"] == "FAIL"}
    with_D = {(e["case"], e["mode"]) for e in cert["entries"] if e["dims"].get("D")}
    assert bad == with_D  # exactly the cases that pass D fail; the others still pass
    assert all(e["verdict"] == "PASS" for e in cert["entries"] if not e["dims"].get("D"))
