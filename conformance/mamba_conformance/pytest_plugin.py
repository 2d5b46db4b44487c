"""pytest plugin (entry point ``pytest11``): conformance entries as pytest items.

    pytest --mamba-backend cpu_numpy [--mamba-backend other] [--mamba-only 'op:*']
           [--mamba-dtype float32] [--mamba-mode step] [--mamba-case LABEL]

adds one item per (backend, check, case, mode, dtype); a failing item's message is the
certificate entry (op, dtype, error vs tolerance, first differing index, reproduction command).
The backend may also come from the environment variable MAMBA_CONFORMANCE_BACKEND (comma
separated). Without either, the plugin adds nothing: it is loaded in every pytest run.

In a third party's own tests:

    from mamba_conformance.pytest_plugin import assert_conforms
    def test_my_backend_conforms():
        assert_conforms(MyBackend(), only="op:*", dtypes=["float32"])
"""

from __future__ import annotations

import os

import pytest

ENV_VAR = "MAMBA_CONFORMANCE_BACKEND"


def assert_conforms(backend, **run_kwargs):
    """Run the suite on ``backend`` (name or Backend); raise AssertionError listing every failure.

    ``run_kwargs`` go to ``mamba_conformance.run`` (dtypes, only, modes, seed, case, ops...).
    Returns the Certificate when everything passes."""
    from mamba_conformance.runner import run

    cert = run(backend, **run_kwargs)
    if not cert.entries:
        raise AssertionError(f"{cert.backend}: no conformance entry matched {run_kwargs}")
    if not cert.ok:
        lines = [cert.summary(), ""]
        lines += [e.message() for e in cert.failures]
        raise AssertionError("\n".join(lines))
    return cert


def pytest_addoption(parser):
    group = parser.getgroup("mamba-conformance", "certify a mamba-core backend")
    group.addoption("--mamba-backend", action="append", default=None, metavar="NAME",
                    help=f"backend to certify (repeatable; default: ${ENV_VAR})")
    group.addoption("--mamba-only", action="append", default=None, metavar="NAME_OR_GLOB",
                    help="conformance checks to run (repeatable)")
    group.addoption("--mamba-dtype", action="append", default=None, metavar="DT",
                    help="dtypes to certify (repeatable; default: the backend's)")
    group.addoption("--mamba-mode", action="append", default=None, metavar="MODE",
                    help="forward, step, grad (repeatable; default forward and step)")
    group.addoption("--mamba-case", action="append", default=None, metavar="LABEL",
                    help="case labels or globs (repeatable)")


def _backend_names(config) -> list[str]:
    names = config.getoption("--mamba-backend", default=None)
    if not names:
        env = os.environ.get(ENV_VAR, "")
        names = [n.strip() for n in env.split(",") if n.strip()]
    return list(dict.fromkeys(names or ()))


def pytest_configure(config):
    if _backend_names(config):
        config.addinivalue_line("markers", "mamba_conformance: an entry of the mamba-core conformance suite")


class ConformanceItem(pytest.Item):
    def __init__(self, *, be, check, case, mode, dtype, truths, **kwargs):
        super().__init__(**kwargs)
        self.be, self.check, self.case, self.mode, self.dtype = be, check, case, mode, dtype
        self.truths = truths
        self.entry = None
        self.add_marker("mamba_conformance")

    def runtest(self):
        from mamba_conformance.runner import SKIP, run_entry

        self.entry = run_entry(self.be, self.check, self.case, self.mode, self.dtype, truths=self.truths)
        if self.entry.verdict == SKIP:
            pytest.skip(f"{self.entry.title}: {self.entry.note}")
        if self.entry.failed:
            raise ConformanceFailure(self.entry)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ConformanceFailure):
            return excinfo.value.entry.message()
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return "mamba-conformance", None, f"{self.be.name}: {self.check.name} [{self.case.label}] {self.mode} {self.dtype}"


class ConformanceFailure(Exception):
    def __init__(self, entry):
        super().__init__(entry.message())
        self.entry = entry


class ConformanceCollector(pytest.Collector):
    """The parent of one backend's items (node id ``mamba-conformance/<backend>``)."""

    def __init__(self, *, be, entries, truths, **kwargs):
        super().__init__(**kwargs)
        self.be, self.entries, self.truths = be, entries, truths

    def collect(self):
        out = []
        for check, case, mode, dtype in self.entries:
            out.append(ConformanceItem.from_parent(
                self, name=f"{check.name}[{case.label}|{mode}|{dtype}]", be=self.be, check=check,
                case=case, mode=mode, dtype=dtype, truths=self.truths,
            ))
        return out


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection sees the items
def pytest_collection_modifyitems(session, config, items):
    names = _backend_names(config)
    if not names:
        return
    from mamba_core.errors import MambaError
    from mamba_conformance.runner import DEFAULT_MODES, _Truths, plan, resolve_backend

    modes = tuple(config.getoption("--mamba-mode") or DEFAULT_MODES)
    truths = _Truths(0)  # inputs and reference outputs shared across backends, modes, dtypes
    for name in names:
        try:
            be = resolve_backend(name)
            entries = plan(be, config.getoption("--mamba-dtype"), config.getoption("--mamba-only"),
                           modes, config.getoption("--mamba-case"))
        except (MambaError, ValueError, ImportError) as exc:
            raise pytest.UsageError(f"--mamba-backend {name}: {exc}") from exc
        collector = ConformanceCollector.from_parent(
            session, name=f"mamba-conformance/{be.name}", be=be, entries=entries, truths=truths)
        added = collector.collect()
        # tell the reporters, as if pytest had collected them (keeps "collected N items" right)
        config.hook.pytest_collectreport(
            report=pytest.CollectReport(collector.nodeid, "passed", None, list(added)))
        items.extend(added)
