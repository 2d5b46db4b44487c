"""``mamba-core bench``: compare backends side by side, against physical floors.

    from mamba_core.bench import run, write
    res = run(["cpu_numpy"], preset="cpu")      # or quick=True
    print(table(res)); write(res, "benchmarks/results")

See benchmarks/README.md for how to read a report.
"""

from mamba_core.bench.report import markdown, table, write
from mamba_core.bench.runner import run

__all__ = ["run", "write", "table", "markdown"]
