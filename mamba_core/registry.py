"""Discovery and selection of backends.

Backends come from pluggy plugins named in the entry-point group ``mamba_core.backends``
(see ``mamba_core.hookspecs``). Selection: an explicit name wins, then the environment variable
``MAMBA_BACKEND``, then the available backend with the highest priority.
"""

from __future__ import annotations

import os
import threading

import pluggy

from mamba_core import hookspecs
from mamba_core.backend import Backend
from mamba_core.errors import BackendUnavailableError, UnknownBackendError

ENTRY_POINT_GROUP = "mamba_core.backends"
ENV_VAR = "MAMBA_BACKEND"

_lock = threading.Lock()
_backends: dict[str, Backend] | None = None
_load_errors: dict[str, str] = {}
_extra_plugins: list[object] = []


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _discover() -> dict[str, Backend]:
    global _backends
    with _lock:
        if _backends is not None:
            return _backends
        pm = _plugin_manager()
        _load_errors.clear()
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                pm.register(ep.load(), name=f"{ENTRY_POINT_GROUP}:{ep.name}")
            except Exception as exc:  # a broken plugin must not hide the others
                _load_errors[ep.name] = f"plugin failed to load ({type(exc).__name__}: {exc})"
        for plugin in _extra_plugins:
            pm.register(plugin)
        found: dict[str, Backend] = {}
        for result in pm.hook.mamba_core_backends():
            for be in result or ():
                if not isinstance(be, Backend):
                    raise TypeError(
                        f"a mamba_core_backends hook returned {be!r}; it must return "
                        "mamba_core.backend.Backend instances"
                    )
                found.setdefault(be.name, be)
        _backends = found
        return found


def register_plugin(plugin: object) -> None:
    """Register a plugin object in-process (tests, notebooks); same hook as an entry point."""
    with _lock:
        _extra_plugins.append(plugin)
    refresh()


def unregister_plugin(plugin: object) -> None:
    with _lock:
        if plugin in _extra_plugins:
            _extra_plugins.remove(plugin)
    refresh()


def refresh() -> None:
    """Forget what was discovered; the next call looks at the entry points again."""
    global _backends
    with _lock:
        _backends = None


def installed() -> dict[str, Backend]:
    """Every installed backend by name, available here or not."""
    return dict(_discover())


def load_errors() -> dict[str, str]:
    """Entry points that failed to load, with the reason."""
    _discover()
    return dict(_load_errors)


def get_backend(name: str | None = None) -> Backend:
    """The backend to use: ``name``, else ``$MAMBA_BACKEND``, else the best available one.

    Raises UnknownBackendError (listing the installed names) for a name no plugin provides,
    and BackendUnavailableError (with the backend's reason) for one that cannot run here.
    """
    backends = _discover()
    chosen = name or os.environ.get(ENV_VAR) or None
    if chosen:
        source = "argument" if name else f"environment variable {ENV_VAR}"
        if chosen not in backends:
            extra = ""
            if chosen in _load_errors:
                extra = f" Its plugin is installed but {_load_errors[chosen]}."
            raise UnknownBackendError(
                f"no backend named {chosen!r} (from the {source}).{extra} Installed backends: "
                f"{', '.join(sorted(backends)) or 'none'}. Install one, e.g. "
                "pip install -e backends/cpu_numpy, or pick one of the installed names."
            )
        be = backends[chosen]
        why = be.available()
        if not why:
            raise BackendUnavailableError(f"backend {chosen!r} is not available here: {why.reason}")
        return be
    ranked = sorted(backends.values(), key=lambda b: (-b.priority, b.name))
    reasons = []
    for be in ranked:
        why = be.available()
        if why:
            return be
        reasons.append(f"{be.name}: {why.reason}")
    raise BackendUnavailableError(
        "no available backend. " + ("; ".join(reasons) if reasons else "none is installed: "
                                   "pip install -e backends/cpu_numpy")
    )
