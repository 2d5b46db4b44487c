"""pluggy hook specifications: what a backend plugin must implement.

A plugin is any module (or object) named by an entry point in the group ``mamba_core.backends``.
It implements one hook, ``mamba_core_backends``. Example ``pyproject.toml`` of a plugin::

    [project.entry-points."mamba_core.backends"]
    my_backend = "my_backend_pkg.plugin"

and in ``my_backend_pkg/plugin.py``::

    from mamba_core.hookspecs import hookimpl

    @hookimpl
    def mamba_core_backends():
        from my_backend_pkg.backend import MyBackend
        return [MyBackend()]
"""

from __future__ import annotations

import pluggy

PROJECT = "mamba_core"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mamba_core_backends():
    """Return the backends this plugin provides.

    Must return a list (or tuple) of ``mamba_core.backend.Backend`` instances. Constructing a
    backend must be cheap and must not fail when its libraries or devices are missing: import
    heavy libraries lazily and report problems through ``Backend.available()`` instead, so that
    ``mamba-core backends`` can say what is wrong.
    """
