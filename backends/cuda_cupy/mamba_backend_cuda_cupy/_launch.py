"""Kernel launches with programmatic dependent launch (PDL) where the device allows it.

    launch(fn, grid, block, args)     # as fn(grid, block, args), with the PDL attribute when on

Why: a decode step is a chain of small kernels (per layer: the norm, in_proj, the fused step,
out_proj), each bound by latency. In stream order a kernel starts only after the one before it
has drained, and only then sends its first weight requests to DRAM: about a microsecond lost at
each of the ~200 boundaries of a 370M model's token. With PDL (sm_90+: H100, H200) the next kernel
is launched while the one before still runs; it prefetches its weights and states into L2, then
waits (``griddepcontrol.wait``) until the one before has completed.

Contract of the kernels launched here (cuda/common.cuh ``pdl_wait``): before the wait a kernel
issues only L2 prefetches, never a load it uses and never a store, so the results are those of
stream order whatever the kernel before it writes; each calls ``pdl_trigger`` only after its own
wait. Kernels without that code must never be launched through ``launch`` with PDL on. The users:
the GEMV (kernels/linear.py), the fused Mamba-2 step (kernels/mixer_steps.py) and the norm forward
(kernels/norm.py).

CuPy launches kernels with cuLaunchKernel, which takes no launch attributes, so a PDL launch goes
through the driver's ``cuLaunchKernelEx`` (ctypes, libcuda) with
CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION on CuPy's current stream; a stream being
captured records it as a programmatic edge of the CUDA graph. Arguments: CuPy arrays (their data
pointer) and NumPy scalars (int32, int64, uint64, float32, float64), as CuPy's own launch takes
them.

A launch the driver refuses (a non-zero CUresult) is made again plainly, with a RuntimeWarning,
and PDL stays off on that device for the rest of the process.

Where (``MAMBA_CUPY_PDL``, read at each launch; set it before building a GraphDecoder):
    capture   (the default, ``DEFAULT``) PDL only while the current stream is capturing a CUDA
              graph (graphs.GraphDecoder); other launches go through CuPy's own launch
    1 / on    every launch through ``launch`` (eager calls too)
    0 / off   never (also false/no)
PDL pays where kernels follow each other with no host between them: graph replays (certified and
timed on an H100 on 2026-12-07, runs 16-19 of benchmarks/results/gpu-20261207-h100: every
cuda_cupy GPU test and the certificate pass with it, decode graphs are bit-identical with and
without it, batch-1 decode 1.19 against 1.37 ms a token). In eager calls the host is the bound
of a short kernel, and the ctypes launch costs it more than CuPy's: run 33 timed the gated norm's
forward at 0.103 ms of host time a call with PDL on every launch and 0.060 through CuPy (0.245
against 0.193 ms a call, torch_triton 0.186), so ``capture`` keeps eager launches on CuPy's path. PDL is also off below compute capability 9.0 and where libcuda has no
cuLaunchKernelEx (drivers before CUDA 12).
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings

import numpy as np

ENV = "MAMBA_CUPY_PDL"
# cuda.h: CUlaunchAttributeID CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
ATTR_PROGRAMMATIC_STREAM_SERIALIZATION = 6
MIN_CC = 90

_SCALARS = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


class _AttrValue(ctypes.Union):  # CUlaunchAttributeValue: a 64-byte union
    _fields_ = [("pad", ctypes.c_char * 64), ("flag", ctypes.c_int)]


class _Attr(ctypes.Structure):  # CUlaunchAttribute
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", _AttrValue)]


class _Config(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attr)), ("numAttrs", ctypes.c_uint)]


#: the switch's value when unset
DEFAULT = "capture"
_OFF = ("0", "false", "off", "no")


def mode() -> str:
    """``MAMBA_CUPY_PDL`` (default ``DEFAULT``) as "off", "capture" or "always" (any other
    value: 1, on, true...)."""
    raw = os.environ.get(ENV, DEFAULT).strip().lower()
    if raw in _OFF:
        return "off"
    return "capture" if raw == "capture" else "always"


def enabled() -> bool:
    """Whether ``MAMBA_CUPY_PDL`` asks for PDL anywhere (anything but 0/false/off/no)."""
    return mode() != "off"


def _capturing() -> bool:
    """Whether CuPy's current stream is capturing a CUDA graph (False where the query fails: a
    launch there fails on its own, with CUDA's message)."""
    import cupy

    try:
        return bool(cupy.cuda.get_current_stream().is_capturing())
    except Exception:  # noqa: BLE001
        return False


def dims(d) -> tuple:
    """A grid or block as CuPy takes it (an int or a tuple of 1 to 3) -> (x, y, z)."""
    t = (int(d),) if np.isscalar(d) else tuple(int(v) for v in d)
    if not 1 <= len(t) <= 3 or any(v < 1 for v in t):
        raise ValueError(f"launch dimensions {d!r}: expected 1 to 3 positive ints")
    return t + (1,) * (3 - len(t))


def c_arg(a):
    """One kernel argument as the ctypes value whose bytes the kernel receives."""
    if isinstance(a, np.generic):
        ct = _SCALARS.get(a.dtype)
        if ct is None:
            raise TypeError(f"kernel argument of dtype {a.dtype}: expected one of "
                            f"{sorted(str(k) for k in _SCALARS)}")
        return ct(a.item())
    data = getattr(a, "data", None)
    if type(a).__module__.split(".")[0] == "cupy" and hasattr(data, "ptr"):
        return ctypes.c_uint64(int(data.ptr))
    raise TypeError(f"kernel argument of type {type(a).__name__}: expected a CuPy array or a "
                    "NumPy scalar (int32, int64, uint64, float32, float64)")


_DEVICES: dict = {}    # device id -> whether PDL can be used there


@functools.lru_cache(maxsize=None)
def _driver():
    """libcuda's cuLaunchKernelEx, or None when there is no libcuda or it lacks the call."""
    try:
        fn = getattr(ctypes.CDLL("libcuda.so.1"), "cuLaunchKernelEx", None)
    except OSError:
        return None
    if fn is not None:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(_Config), ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    return fn


def _device_id() -> int:
    import cupy

    return int(cupy.cuda.Device().id)


def supported() -> bool:
    """Whether the current device and driver take PDL launches (compute capability >= 9.0 and a
    driver with cuLaunchKernelEx)."""
    dev = _device_id()
    ok = _DEVICES.get(dev)
    if ok is None:
        import cupy

        ok = int(cupy.cuda.Device(dev).compute_capability) >= MIN_CC and _driver() is not None
        _DEVICES[dev] = ok
    return ok


def active() -> bool:
    """Whether ``launch`` uses PDL now: the switch asks for it (always, or while the current
    stream captures a graph) and the device and driver take it."""
    m = mode()
    if m == "off" or (m == "capture" and not _capturing()):
        return False
    return supported()


@functools.lru_cache(maxsize=None)
def _attr():
    """A pointer to the one PDL attribute every launch passes (the driver copies it); the pointer
    object keeps the struct alive."""
    a = _Attr()
    a.id = ATTR_PROGRAMMATIC_STREAM_SERIALIZATION
    a.value.flag = 1
    return ctypes.pointer(a)


def _launch_ex(fn, grid, block, args) -> int:
    """The PDL launch; returns the driver's CUresult (0: launched)."""
    import cupy

    ex = _driver()
    kernel = getattr(fn, "kernel", fn)  # RawKernel -> its Function on the current device
    vals = [c_arg(a) for a in args]
    params = (ctypes.c_void_p * max(1, len(vals)))(*map(ctypes.addressof, vals))
    g, b = dims(grid), dims(block)
    cfg = _Config(g[0], g[1], g[2], b[0], b[1], b[2], 0,
                  int(cupy.cuda.get_current_stream().ptr), _attr(), 1)
    return ex(ctypes.byref(cfg), int(kernel.ptr), params, None)


def launch(fn, grid, block, args) -> None:
    """``fn(grid, block, args)``; with PDL when ``active()``. fn: a CuPy RawKernel whose code
    keeps the contract of the module docstring."""
    if active():
        res = _launch_ex(fn, grid, block, args)
        if res == 0:
            return
        # refused (a launch-configuration error, not a sticky one): this device launches plainly
        # from now on, and says so once
        _DEVICES[_device_id()] = False
        warnings.warn(f"cuda_cupy: cuLaunchKernelEx with programmatic dependent launch returned "
                      f"CUresult {res} for {getattr(fn, 'name', fn)!r}; launching without it on "
                      f"this device from now on (set {ENV}=0 to silence this)", RuntimeWarning,
                      stacklevel=2)
    fn(grid, block, args)
