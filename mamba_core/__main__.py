import sys

from mamba_core.cli import main

sys.exit(main())
