"""Run the conformance checks on a backend and collect a ``Certificate``.

For each check, case and dtype the runner

1. makes the case's float64 inputs from a seed fixed by (seed, check name, case label), so every
   dtype and every backend sees the same numbers;
2. rounds the floating inputs to the tested dtype (kept as float64) and runs ``check.forward`` on
   the ``reference`` backend: that is the truth, and input rounding is not counted as error;
3. casts the floating inputs with ``be.asarray(arr, dtype)`` (integers with ``be.asarray(arr)``,
   anything else passed unchanged), runs ``check.forward`` (mode "forward") or ``check.step``
   (mode "step") on the backend, and compares every named output of the truth with the relative
   max error ``max|got - want| / max|want|`` (absolute when the truth is all zeros).

Verdicts: PASS (error <= tolerance for every output), FAIL (an output is off, has the wrong
shape, is missing, or holds NaN/inf where the truth is finite), ERROR (the backend raised, or the
check's own inputs/reference could not be built), SKIP (a mode the check has no form for).
Tolerances are ``TOLERANCES[dtype]``, the same for every backend (for 16-bit dtypes plus each
output's measured conditioning, see ``_Truths.conditioning``; angles compare by circular
distance, see ``PERIODIC``), except for a case whose dims
hold ``"exact": True`` (a bit-identity property such as batch invariance: tolerance 0). A case
whose dims hold ``"requires": "<capability>"`` is SKIP on a backend whose ``capabilities`` do
not claim it.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import platform
import shlex
import sys
import time
import traceback
import zlib
from typing import Any, Callable, Iterable, Optional

import numpy as np

from mamba_conformance.cases import IMPORT_ERROR, all_checks
from mamba_conformance.certificate import Certificate, Entry, OutputError
from mamba_conformance.grads import grad_function
from mamba_conformance.check import MODES, TOLERANCES, Case, Check

DEFAULT_MODES = ("forward", "step", "grad")

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"


# ---- backends and selection ---------------------------------------------------------------
def resolve_backend(backend):
    """A Backend object from a name (registry), a 'module:attribute' path, or the object itself."""
    from mamba_core.backend import Backend

    if isinstance(backend, Backend):
        return backend
    from mamba_core.registry import get_backend, installed

    if isinstance(backend, str) and ":" in backend and backend not in installed():
        import importlib

        modname, _, attr = backend.partition(":")
        obj = getattr(importlib.import_module(modname), attr)
        be = obj() if isinstance(obj, type) else obj
        if not isinstance(be, Backend):
            raise TypeError(f"{backend!r} is {be!r}, not a mamba_core.backend.Backend")
        why = be.available()
        if not why:
            from mamba_core.errors import BackendUnavailableError

            raise BackendUnavailableError(f"backend {be.name!r} is not available here: {why.reason}")
        return be
    return get_backend(backend)


def reference_backend():
    from mamba_core.reference_backend import REFERENCE

    return REFERENCE


def default_dtypes(be) -> list[str]:
    """The backend's dtypes that have a tolerance, in TOLERANCES order (float64 first)."""
    return [d for d in TOLERANCES if d in be.dtypes]


def _matches(check: Check, patterns) -> bool:
    short = check.name.split(":", 1)[-1]
    return any(fnmatch.fnmatchcase(check.name, p) or fnmatch.fnmatchcase(short, p) for p in patterns)


def select(checks: Iterable[Check], only=None, ops=None) -> list[Check]:
    """Checks whose name (or the part after 'kind:') matches a glob of ``only`` and, when
    ``ops`` is given, that exercise one of those ops. Import-error placeholders are kept when
    there is no filter (a broken case module must show) or when their name matches."""
    if isinstance(only, str):
        only = [only]
    if isinstance(ops, str):
        ops = [ops]
    out = []
    for c in checks:
        if c.kind == IMPORT_ERROR:
            if (not only and not ops) or (only and _matches(c, only)):
                out.append(c)
            continue
        if only and not _matches(c, only):
            continue
        if ops and not any(fnmatch.fnmatchcase(o, p) for o in c.ops for p in ops):
            continue
        out.append(c)
    return out


def select_cases(check: Check, case=None) -> list[Case]:
    if not case:
        return list(check.cases)
    pats = [case] if isinstance(case, str) else list(case)
    return [c for c in check.cases if any(c.label == p or fnmatch.fnmatchcase(c.label, p) for p in pats)]


# ---- inputs ---------------------------------------------------------------------------------
def case_seed(seed: int, check_name: str, case_label: str) -> list[int]:
    """A deterministic seed sequence for one (check, case), the same for every dtype and run."""
    return [int(seed), zlib.crc32(f"{check_name}\x00{case_label}".encode())]


def make_inputs(check: Check, case: Case, seed: int = 0) -> dict:
    return check.make_inputs(case, np.random.default_rng(case_seed(seed, check.name, case.label)))


def _is_float_array(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "f"


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (round to nearest even), returned as a new float64 array."""
    a = np.asarray(a, np.float64)
    if dtype == "float64":
        return a.copy()
    if dtype == "bfloat16":
        try:
            import ml_dtypes

            return a.astype(ml_dtypes.bfloat16).astype(np.float64)
        except ImportError:  # round float32 bits to the top 16, nearest even
            f = a.astype(np.float32)
            bits = f.view(np.uint32).astype(np.uint64)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            out = bits.astype(np.uint32).view(np.float32).astype(np.float64)
            return np.where(np.isfinite(f), out, f.astype(np.float64))
    return a.astype(np.dtype(dtype)).astype(np.float64)


def rounded_inputs(inputs: dict, dtype: str) -> dict:
    """Floating arrays rounded to ``dtype`` (as float64); everything else as it is."""
    return {k: round_to(v, dtype) if _is_float_array(v) else v for k, v in inputs.items()}


def cast_inputs(be, inputs: dict, dtype: str | None) -> dict:
    """Top-level NumPy arrays moved into ``be``: floating ones cast to ``dtype``, others as they are."""
    out = {}
    for k, v in inputs.items():
        if _is_float_array(v):
            out[k] = be.asarray(np.array(v, copy=True), dtype)
        elif isinstance(v, np.ndarray):
            out[k] = be.asarray(np.array(v, copy=True))
        else:
            out[k] = v
    return out


def to_float64(be, a) -> np.ndarray:
    """A backend array as a float64 NumPy array (low-precision arrays widened on the device)."""
    try:
        host = be.to_numpy(a)
    except (TypeError, RuntimeError, ValueError):
        host = be.to_numpy(be.xp.astype(a, be.xp.float32))
    return np.asarray(host, dtype=np.float64)


# ---- comparison -----------------------------------------------------------------------------
def _fmt_idx(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")"


#: unit roundoff of the dtypes whose tolerance allows for the problem's own conditioning
#: (see ``_Truths.conditioning``), and how many perturbed reference runs measure it.
UNIT_ROUNDOFF = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
CONDITIONING_DRAWS = 2

#: outputs that hold angles reduced mod 2 pi (matched on the name's last dotted part): their error is
#: the circular distance, since 6.2831 and 0.0001 are the same angle (a reduction on either side
#: of the cut is not an error).
PERIODIC = {"angle_state": 2 * np.pi}


def _period(name: str):
    return PERIODIC.get(name.rsplit(".", 1)[-1])


def compare(name: str, got: np.ndarray, want: np.ndarray, tol: float, got_dtype: str = "") -> OutputError:
    """Relative max error of one output and, when it is off, where it first differs.

    Outputs named in ``PERIODIC`` (angles) are compared by circular distance.
    """
    out = OutputError(name=name, shape=list(got.shape), want_shape=list(want.shape), dtype=got_dtype)
    if got.shape != want.shape:
        out.error = float("inf")
        out.note = f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        return out
    if got.size == 0:
        out.error = 0.0
        return out
    finite_want = np.isfinite(want)
    scale = float(np.max(np.abs(want[finite_want]))) if finite_want.any() else 0.0
    out.scale = scale
    denom = scale if scale > 0 else 1.0  # all-zero truth: absolute error
    same_special = ~finite_want & ((got == want) | (np.isnan(got) & np.isnan(want)))
    bad_special = ~finite_want & ~same_special
    nonfinite = finite_want & ~np.isfinite(got)
    diff = np.where(finite_want & np.isfinite(got), np.abs(got - want), 0.0)
    period = _period(name)
    if period is not None:
        diff = np.mod(diff, period)
        diff = np.minimum(diff, period - diff)
    out.error = float(np.max(diff)) / denom
    if nonfinite.any() or bad_special.any():
        mask = nonfinite | bad_special
        n_nan = int(np.isnan(got[mask]).sum())
        out.error = float("inf") if not n_nan else float("nan")
        first = np.unravel_index(int(np.argmax(mask)), got.shape)
        out.first_index = [int(i) for i in first]
        out.got_value, out.want_value = float(got[first]), float(want[first])
        out.note = (f"{int(mask.sum())} non-finite value(s) where the reference is finite "
                    f"({n_nan} NaN, {int(mask.sum()) - n_nan} inf), first at {_fmt_idx(first)}")
        return out
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    out.worst_index = [int(i) for i in worst]
    over = diff > tol * denom
    if over.any():
        first = np.unravel_index(int(np.argmax(over)), got.shape)
        out.first_index = [int(i) for i in first]
        out.got_value, out.want_value = float(got[first]), float(want[first])
        out.n_over = int(over.sum())
    return out


def _passes(o: OutputError, tol: float) -> bool:
    return not o.note and o.error == o.error and o.error <= tol + o.conditioning


# ---- one entry ------------------------------------------------------------------------------
def repro_command(backend_name: str, check: str, case: str, dtype: str, mode: str = "forward") -> str:
    cmd = ["mamba-conformance", backend_name, "--only", check, "--case", case, "--dtype", dtype]
    if mode != "forward":
        cmd += ["--mode", mode]
    return " ".join(shlex.quote(c) for c in cmd)


def _op_impls(be, check: Check, mode: str = "forward") -> dict:
    """native/default for each op the entry exercises: the sequence ops in forward mode, the step
    ops too in step mode, and the ops' VJPs in grad mode (there a saving form, which the grad
    entry certifies too, adds "<op>:saving": "native")."""
    from mamba_core.ops import REGISTRY

    out = {}
    for op in check.ops:
        spec = REGISTRY.get(op)
        is_step = spec is not None and spec.step_of is not None
        if mode == "forward" and is_step or mode == "grad" and is_step:
            continue
        name = f"{op}_vjp" if mode == "grad" and f"{op}_vjp" in REGISTRY else op
        try:
            out[name] = "native" if be.ops.is_native(name) else "default"
            if mode == "grad" and be.ops.saves(op):
                out[f"{op}:saving"] = "native"
        except Exception:  # noqa: BLE001
            out[name] = "unknown"
    return out


def _exc_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _where(exc: BaseException, n: int = 4) -> list:
    """The last ``n`` frames of an exception outside the import machinery, one line each."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen") and "importlib" not in f.filename]
    return [f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}" for f in frames[-n:]]


class _Truths:
    """Inputs and reference outputs per (check, case, dtype), computed once per run."""

    def __init__(self, seed: int):
        self.seed = seed
        self._inputs: dict = {}
        self._truth: dict = {}

    def inputs(self, check: Check, case: Case) -> dict:
        key = (check.name, case.label)
        if key not in self._inputs:
            self._inputs[key] = make_inputs(check, case, self.seed)
        return self._inputs[key]

    def truth(self, check: Check, case: Case, dtype: str, mode: str = "forward") -> dict:
        """The reference's outputs (forward and step modes) or gradients (grad mode)."""
        kind = "grad" if mode == "grad" else "forward"
        key = (check.name, case.label, dtype, kind)
        if key not in self._truth:
            ref = reference_backend()
            rounded = rounded_inputs(self.inputs(check, case), dtype)
            fn = grad_function(check) if kind == "grad" else check.forward
            outs = fn(ref, cast_inputs(ref, rounded, None))
            self._truth[key] = {k: None if v is None else to_float64(ref, v) for k, v in outs.items()}
        return self._truth[key]

    def conditioning(self, check: Check, case: Case, dtype: str, mode: str = "forward") -> dict:
        """{output: relative spread} of the truth under one-rounding-unit input perturbations.

        Only for the 16-bit dtypes (``UNIT_ROUNDOFF``); empty otherwise. A backend computing in
        such a dtype rounds every intermediate it stores to 8 (bf16) or 11 (f16) bits; where an
        output is ill-conditioned at that precision (a gradient that is a small difference of
        large terms, an angle accumulated over many tokens) no implementation can match the
        float64 truth to the dtype's tolerance. The reference is run again, ``CONDITIONING_DRAWS``
        times, with every floating input multiplied by (1 +- u) (u the dtype's unit roundoff,
        signs random but seeded), and the largest move of each output relative to its scale is
        the allowance added to that output's tolerance. Well-conditioned outputs get ~u, so a
        wrong kernel still fails them.
        """
        u = UNIT_ROUNDOFF.get(dtype)
        if u is None:
            return {}
        kind = "grad" if mode == "grad" else "forward"
        key = (check.name, case.label, dtype, kind, "conditioning")
        if key not in self._truth:
            truth = self.truth(check, case, dtype, mode)
            ref = reference_backend()
            fn = grad_function(check) if kind == "grad" else check.forward
            rounded = rounded_inputs(self.inputs(check, case), dtype)
            rng = np.random.default_rng(case_seed(self.seed + 1, check.name, case.label))
            spread: dict = {}
            for _ in range(CONDITIONING_DRAWS):
                moved = {k: v * (1 + u * rng.choice((-1.0, 1.0), size=np.shape(v))) if _is_float_array(v) else v
                         for k, v in rounded.items()}
                outs = fn(ref, cast_inputs(ref, moved, None))
                for k, want in truth.items():
                    if want is None or outs.get(k) is None or not np.isfinite(want).all():
                        continue
                    scale = float(np.max(np.abs(want))) if want.size else 0.0
                    d = np.abs(to_float64(ref, outs[k]) - want)
                    period = _period(k)
                    if period is not None:
                        d = np.mod(d, period)
                        d = np.minimum(d, period - d)
                    rel = float(np.max(d)) / scale if scale > 0 and d.size else 0.0
                    spread[k] = max(spread.get(k, 0.0), rel)
            self._truth[key] = spread
        return self._truth[key]


def run_entry(be, check: Check, case: Case, mode: str, dtype: str, *, seed: int = 0,
              truths: Optional[_Truths] = None, backend_label: Optional[str] = None) -> Entry:
    """Certify one (check, case, mode, dtype) on ``be``."""
    truths = truths or _Truths(seed)
    tol = TOLERANCES.get(dtype, float("nan"))
    name = backend_label or be.name
    entry = Entry(
        check=check.name, kind=check.kind, case=case.label, dims=_jsonable(case.dims), mode=mode,
        dtype=dtype, tolerance=tol, ops=_op_impls(be, check, mode),
        repro=repro_command(name, check.name, case.label, dtype, mode),
    )
    if check.kind == IMPORT_ERROR:
        entry.verdict = ERROR
        entry.note = check.doc
        entry.traceback = case.get("traceback", "")
        entry.where = case.get("where", [])
        entry.repro = f"python -c 'import {case['module']}'"
        return entry
    needs = case.get("requires")  # a capability the backend must claim, else SKIP
    if needs and not getattr(getattr(be, "capabilities", None), needs, False):
        entry.verdict, entry.note = SKIP, f"{be.name} does not claim capabilities.{needs}"
        return entry
    exact = bool(case.get("exact"))  # a bit-identity property: every output's truth is 0
    if exact:
        entry.tolerance = tol = 0.0
    fn = {"forward": check.forward, "step": check.step, "grad": grad_function(check)}[mode]
    if fn is None:
        why = "has no VJP op" if mode == "grad" else f"has no {mode} form"
        entry.verdict, entry.note = SKIP, f"{check.name} {why}"
        return entry
    t0 = time.perf_counter()
    try:
        want = None if exact else truths.truth(check, case, dtype, mode)
        allow = {} if exact else truths.conditioning(check, case, dtype, mode)
    except Exception as exc:  # noqa: BLE001 - the check itself is broken
        entry.verdict = ERROR
        entry.note = f"the check's inputs or reference failed (a bug in the case, not the backend): {_exc_text(exc)}"
        entry.traceback = traceback.format_exc()
        entry.where = _where(exc)
        return entry
    try:
        inputs = cast_inputs(be, truths.inputs(check, case), dtype)
        outs = fn(be, inputs)
        if exact:
            want = {k: np.zeros(np.shape(to_float64(be, v))) for k, v in outs.items()}
        got = {}
        got_dtype = {}
        for k in want:
            if k in outs and outs[k] is not None:
                got_dtype[k] = str(getattr(outs[k], "dtype", "")).replace("torch.", "")
                got[k] = to_float64(be, outs[k])
            else:
                got[k] = outs.get(k)
    except Exception as exc:  # noqa: BLE001 - the backend raised
        entry.verdict = ERROR
        entry.note = f"the backend raised {_exc_text(exc)}"
        entry.traceback = traceback.format_exc()
        entry.where = _where(exc)
        entry.seconds = time.perf_counter() - t0
        return entry
    entry.seconds = time.perf_counter() - t0
    for k, w in want.items():
        g = got[k]
        if w is None or g is None:
            o = OutputError(name=k, dtype=got_dtype.get(k, ""))
            if (w is None) != (g is None):
                o.error = float("inf")
                o.note = ("the backend returned no output" if g is None else
                          "the backend returned an array where the reference returns None")
            else:
                o.error = 0.0
            entry.outputs.append(o)
            continue
        o = compare(k, g, w, tol + allow.get(k, 0.0), got_dtype.get(k, ""))
        o.conditioning = allow.get(k, 0.0)
        entry.outputs.append(o)
    worst = max(entry.outputs, key=_err_key, default=None)
    entry.worst_output = worst.name if worst else ""
    entry.max_error = _err_key(worst) if worst else 0.0
    entry.verdict = PASS if all(_passes(o, tol) for o in entry.outputs) else FAIL
    return entry


def _err_key(o: OutputError) -> float:
    return float("inf") if o.error != o.error else o.error


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    return repr(v)


# ---- the run --------------------------------------------------------------------------------
def plan(be, dtypes=None, only=None, modes=DEFAULT_MODES, case=None, ops=None, checks=None):
    """The (check, case, mode, dtype) tuples a run would certify, in certificate order."""
    dtypes = list(dtypes) if dtypes else default_dtypes(be)
    bad = [d for d in dtypes if d not in be.dtypes]
    if bad:
        from mamba_core.errors import OpNotSupportedError

        raise OpNotSupportedError(
            f"backend {be.name!r} does not compute in {bad}; it supports {list(be.dtypes)}"
        )
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; the modes are {list(MODES)}")
    checks = select(all_checks() if checks is None else checks, only, ops)
    items = []
    for check in checks:
        if check.kind == IMPORT_ERROR:
            items.append((check, check.cases[0], "import", "-"))
            continue
        for c in select_cases(check, case):
            for mode in modes:
                if mode == "step" and check.step is None:
                    continue
                for dtype in dtypes:
                    items.append((check, c, mode, dtype))
    return items


def run(backend, dtypes=None, only=None, modes=DEFAULT_MODES, seed=0, progress=None, *,
        case=None, ops=None, checks=None) -> Certificate:
    """Certify ``backend`` (a name or a Backend object).

    dtypes:   dtype names (default: the backend's dtypes that have a tolerance);
    only:     check names or globs ("op:rmsnorm", "mixer:*", "rmsnorm");
    modes:    any of "forward", "step", "grad" (gradients against the reference VJPs);
    seed:     base seed; each (check, case) derives its own, identical across dtypes;
    progress: called as progress(entry, done, total) after each entry;
    case:     case label(s) or globs; ops: keep the checks exercising these ops;
    checks:   a list of Check to run instead of the discovered ones.
    """
    be = resolve_backend(backend)
    modes = tuple(modes or DEFAULT_MODES)
    dtypes = list(dtypes) if dtypes else default_dtypes(be)
    items = plan(be, dtypes, only, modes, case, ops, checks)
    truths = _Truths(seed)
    cert = Certificate.new(be, dtypes=dtypes, modes=modes, seed=seed, header=_header(be))
    t0 = time.perf_counter()
    for i, (check, c, mode, dtype) in enumerate(items):
        entry = run_entry(be, check, c, mode, dtype, seed=seed, truths=truths)
        cert.entries.append(entry)
        if progress is not None:
            progress(entry, i + 1, len(items))
    cert.seconds = time.perf_counter() - t0
    return cert


def _header(be) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist):
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    device = getattr(be, "device", None)
    device_name = None
    try:
        if device is not None and "cuda" in str(device):
            import torch  # noqa: F401 - only where the backend already uses it

            device_name = torch.cuda.get_device_name(device)
    except Exception:  # noqa: BLE001
        device_name = None
    return {
        "backend": be.name,
        "description": be.description,
        "backend_class": f"{type(be).__module__}.{type(be).__qualname__}",
        "native_ops": list(be.native_ops()),
        "versions": {
            "mamba_core": ver("mamba-core"),
            "mamba_conformance": ver("mamba-conformance"),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device_name or device or "cpu"),
        "platform": f"{platform.platform()} ({platform.machine()}, {platform.processor() or 'cpu'})",
        "argv": list(sys.argv),
    }


__all__ = [
    "run", "run_entry", "plan", "select", "select_cases", "resolve_backend", "default_dtypes",
    "make_inputs", "round_to", "rounded_inputs", "cast_inputs", "compare", "repro_command",
    "DEFAULT_MODES", "PASS", "FAIL", "ERROR", "SKIP",
]
