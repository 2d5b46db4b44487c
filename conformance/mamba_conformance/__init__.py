"""mamba_conformance: certify a mamba-core backend against the float64 reference.

    mamba-conformance BACKEND                 the certificate, as a table and JSON
    pytest --mamba-backend BACKEND            one pytest item per (check, case, mode, dtype)
    mamba_conformance.run("cpu_numpy")        a Certificate, from Python
    mamba_conformance.pytest_plugin.assert_conforms(backend)   in a third party's own tests

Checks live in ``mamba_conformance.cases``; ``check.py`` defines what a check is and the
per-dtype tolerances, the same for every backend.
"""

from mamba_conformance.certificate import Certificate, Entry, OutputError
from mamba_conformance.check import MODES, TOLERANCES, Case, Check
from mamba_conformance.runner import run

__all__ = ["run", "Certificate", "Entry", "OutputError", "Case", "Check", "TOLERANCES", "MODES"]
