"""The certificate: every (check, case, mode, dtype) entry with its error, tolerance and verdict.

``Certificate.render()`` is the terminal table (op x mode x dtype: max relative error,
tolerance, verdict, grouped by check, failures expanded below it); ``to_json(path)`` writes the
same data as JSON (atomically); ``ok``/``failures``/``summary()`` answer the questions a script
asks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
from typing import Optional

FORMAT = "mamba-conformance-certificate/1"
FAILING = ("FAIL", "ERROR")


@dataclasses.dataclass
class OutputError:
    """One named output of one entry."""

    name: str
    shape: list = dataclasses.field(default_factory=list)
    want_shape: list = dataclasses.field(default_factory=list)
    dtype: str = ""
    error: float = 0.0  # relative max error (inf/nan when the output is unusable)
    scale: float = 0.0  # max|want|
    first_index: Optional[list] = None  # first element whose error exceeds the tolerance
    got_value: Optional[float] = None
    want_value: Optional[float] = None
    worst_index: Optional[list] = None
    n_over: int = 0
    note: str = ""
    #: 16-bit dtypes: how far the reference itself moves (relative to scale) when its inputs move by
    #: one unit of the dtype's rounding; the output's tolerance is the dtype's plus this allowance.
    conditioning: float = 0.0

    def describe(self, tol: float) -> str:
        tol = tol + self.conditioning
        shape = "(" + ", ".join(str(s) for s in self.shape) + ")"
        head = f"output {self.name!r}: shape {shape} {self.dtype}".rstrip()
        if self.note:
            head += f", {self.note} (rel error {_e(self.error)}, tolerance {_e(tol)})"
        else:
            rel = "<=" if self.error <= tol else ">"
            head += f", rel error {_e(self.error)} {rel} tolerance {_e(tol)}"
            if self.conditioning:
                head += f" (incl. conditioning {_e(self.conditioning)})"
        if self.first_index is not None:
            idx = "(" + ", ".join(str(i) for i in self.first_index) + ")"
            head += f"; first differing index {idx}: got {self.got_value:.6g}, want {self.want_value:.6g}"
            if self.n_over:
                total = math.prod(self.shape) if self.shape else 1
                head += f" ({self.n_over} of {total} elements over)"
        return head


@dataclasses.dataclass
class Entry:
    """One certified (check, case, mode, dtype)."""

    check: str
    kind: str
    case: str
    dims: dict
    mode: str
    dtype: str
    tolerance: float
    verdict: str = "PASS"
    max_error: float = 0.0
    worst_output: str = ""
    outputs: list = dataclasses.field(default_factory=list)  # list[OutputError]
    ops: dict = dataclasses.field(default_factory=dict)  # op -> "native" | "default"
    repro: str = ""
    note: str = ""
    traceback: str = ""
    where: list = dataclasses.field(default_factory=list)  # last frames of an ERROR, one line each
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING

    @property
    def title(self) -> str:
        return f"{self.check} [{self.case}] {self.mode} {self.dtype}"

    def message(self) -> str:
        """What went wrong, for the failures section and pytest: op, dtype, error vs tolerance."""
        lines = [f"{self.title}: {self.verdict}"]
        if self.kind != "import-error":
            if self.verdict in ("PASS", "FAIL"):
                lines[0] += (f" (max rel error {_e(self.max_error)} in {self.worst_output!r}, "
                             f"tolerance {_e(self.tolerance)} for {self.dtype})")
            else:
                lines[0] += f" (tolerance {_e(self.tolerance)} for {self.dtype})"
        if self.note:
            lines.append(f"  {self.note}")
        for o in self.outputs:
            if self.verdict != "PASS":
                lines.append("  " + o.describe(self.tolerance))
        if self.ops:
            lines.append("  ops: " + ", ".join(f"{k} ({v})" for k, v in self.ops.items()))
        if self.dims and self.kind != "import-error":
            lines.append("  dims: " + ", ".join(f"{k}={v}" for k, v in self.dims.items()))
        if self.verdict == "ERROR" and self.where:
            lines.append("  raised at (innermost last):")
            lines.extend("    " + w for w in self.where)
        if self.repro:
            lines.append(f"  reproduce: {self.repro}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return _json_safe(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Entry":
        d = dict(d)
        d["outputs"] = [OutputError(**_json_floats(o)) for o in d.get("outputs", [])]
        return cls(**_json_floats(d))


@dataclasses.dataclass
class Certificate:
    backend: str
    description: str = ""
    header: dict = dataclasses.field(default_factory=dict)
    dtypes: list = dataclasses.field(default_factory=list)
    modes: list = dataclasses.field(default_factory=list)
    seed: int = 0
    entries: list = dataclasses.field(default_factory=list)  # list[Entry]
    seconds: float = 0.0

    @classmethod
    def new(cls, be, *, dtypes, modes, seed=0, header=None) -> "Certificate":
        return cls(backend=be.name, description=be.description, header=dict(header or {}),
                   dtypes=list(dtypes), modes=list(modes), seed=seed)

    # ---- questions ---------------------------------------------------------------------
    @property
    def failures(self) -> list:
        """Entries whose verdict is FAIL or ERROR."""
        return [e for e in self.entries if e.failed]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def not_certified(self) -> list:
        """Modes that exist but were not run (a certificate is partial without them)."""
        return [m for m in ("forward", "step", "grad") if m not in self.modes]

    def counts(self) -> dict:
        out = {"PASS": 0, "FAIL": 0, "ERROR": 0, "SKIP": 0}
        for e in self.entries:
            out[e.verdict] = out.get(e.verdict, 0) + 1
        return out

    def summary(self) -> str:
        c = self.counts()
        n_checks = len({e.check for e in self.entries})
        verdict = "CERTIFIED" if self.ok else "NOT CERTIFIED"
        if not self.entries:
            verdict = "NOTHING CERTIFIED (no entries)"
        s = (f"{self.backend}: {verdict} - {len(self.entries)} entries over {n_checks} checks: "
             f"{c['PASS']} PASS, {c['FAIL']} FAIL, {c['ERROR']} ERROR, {c['SKIP']} SKIP "
             f"(dtypes {', '.join(self.dtypes)}; modes {', '.join(self.modes)}")
        if self.not_certified:
            s += f"; {', '.join(self.not_certified)}: not run"
        return s + f"; {self.seconds:.1f} s)"

    # ---- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "backend": self.backend,
            "description": self.description,
            "header": self.header,
            "dtypes": self.dtypes,
            "modes": self.modes,
            "not_certified": self.not_certified,
            "seed": self.seed,
            "ok": self.ok,
            "counts": self.counts(),
            "summary": self.summary(),
            "seconds": round(self.seconds, 3),
            "entries": [e.to_dict() for e in self.entries],
        }

    def to_json(self, path) -> str:
        """Write the certificate as JSON; atomic (temp file + os.replace). ``"-"``: stdout.
        Returns the path written."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        if str(path) == "-":
            sys.stdout.write(text)
            return "-"
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".certificate-", suffix=".json.tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "Certificate":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document (format {d.get('format')!r})")
        return cls(backend=d["backend"], description=d.get("description", ""),
                   header=d.get("header", {}), dtypes=d.get("dtypes", []), modes=d.get("modes", []),
                   seed=d.get("seed", 0), entries=[Entry.from_dict(e) for e in d.get("entries", [])],
                   seconds=d.get("seconds", 0.0))

    @classmethod
    def from_json(cls, path) -> "Certificate":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    # ---- the table -----------------------------------------------------------------------
    def render(self, verbose: bool = False, failures: bool = True) -> str:
        """The readable certificate: header, one row per check x mode x dtype (with ``verbose``,
        one per case), then every failure expanded."""
        h = self.header
        v = h.get("versions", {})
        lines = [
            f"mamba-conformance certificate for backend {self.backend!r}",
            f"  {self.description}" if self.description else "",
            "  versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"  date: {h.get('date', '?')}   device: {h.get('device', '?')}",
            f"  platform: {h.get('platform', '?')}",
            f"  dtypes: {', '.join(self.dtypes)}   modes: {', '.join(self.modes)}   seed: {self.seed}"
            + (f"   {', '.join(self.not_certified)}: not run" if self.not_certified else ""),
            "  error = max|got - want| / max|want| against the float64 reference "
            "(inputs rounded to the dtype first)",
            "",
        ]
        lines = [ln for ln in lines if ln != ""] + [""]
        cols = ["check", "impl", "mode", "dtype", "cases", "max rel err", "tolerance", "verdict", "worst case"]
        rows = []
        groups: dict = {}
        for e in self.entries:
            groups.setdefault(e.check, {}).setdefault((e.mode, e.dtype), []).append(e)
        for check, by_md in groups.items():
            first = True
            for (mode, dtype), es in by_md.items():
                if verbose and len(es) > 1:
                    for e in es:
                        rows.append(self._row(check if first else "", [e], mode, dtype, e.case))
                        first = False
                else:
                    rows.append(self._row(check if first else "", es, mode, dtype, None))
                    first = False
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
        widths[-1] = len(cols[-1])
        fmt = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
        lines.append(fmt(cols))
        lines.append(fmt(["-" * w for w in widths]))
        for r in rows:
            lines.append(fmt(r))
        fails = self.failures
        if failures and fails:
            lines += ["", f"FAILURES ({len(fails)})"]
            for i, e in enumerate(fails, 1):
                msg = e.message().splitlines()
                lines.append(f"{i}. {msg[0]}")
                lines.extend("   " + m for m in msg[1:])
        lines += ["", self.summary()]
        return "\n".join(lines)

    @staticmethod
    def _row(check, es, mode, dtype, case_label):
        impls = {}
        for e in es:
            impls.update(e.ops)
        n_native = sum(1 for v in impls.values() if v == "native")
        if not impls:
            impl = "-"
        elif n_native == len(impls):
            impl = "native"
        elif n_native == 0:
            impl = "default"
        else:
            impl = f"{n_native}/{len(impls)} native"
        rank = {"ERROR": 3, "FAIL": 2, "PASS": 1, "SKIP": 0}
        verdict = max((e.verdict for e in es), key=lambda x: rank.get(x, 0))
        measured = [e for e in es if e.verdict in ("PASS", "FAIL")]
        worst = max(measured, key=lambda e: _key(e.max_error), default=None)
        n_pass = sum(e.verdict == "PASS" for e in es)
        err = _e(worst.max_error) if worst else "-"
        tol = _e(es[0].tolerance) if es[0].tolerance == es[0].tolerance else "-"
        bad = [e for e in es if e.failed]
        label = case_label if case_label is not None else (
            bad[0].case if bad else (worst.case if worst and len(es) > 1 else ""))
        if verdict == "SKIP":
            label = es[0].note
        cases = f"{n_pass}/{len(es)}"
        return [check, impl, mode, dtype, cases, err, tol, verdict, label]


def _key(x: float) -> float:
    return float("inf") if x != x else x


def _e(x) -> str:
    if x is None:
        return "-"
    if x != x:
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


_FLOAT_FIELDS = ("error", "scale", "got_value", "want_value", "tolerance", "max_error")


def _json_floats(d: dict) -> dict:
    d = dict(d)
    for k in _FLOAT_FIELDS:
        if isinstance(d.get(k), str):
            d[k] = float(d[k])
    return d
