"""``python -m mamba_conformance BACKEND ...``: the same as the ``mamba-conformance`` command."""

import sys

from mamba_conformance.cli import main

sys.exit(main())
