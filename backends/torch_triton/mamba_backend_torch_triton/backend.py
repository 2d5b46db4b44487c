"""The torch_triton backend object.

Arrays are torch tensors on the first CUDA device, or on the CPU when TRITON_INTERPRET=1 (the
Triton interpreter, used by CI). Ops with a Triton kernel (``kernels/``) run it; every other op
runs the core's default composition through ``array_api_compat.torch``. ``mixer_steps``
offers fused one-token decode steps for Mamba-1 and Mamba-2 (kernels/mixer_steps.py).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np

from mamba_core.backend import Availability, Backend, Capabilities

from mamba_backend_torch_triton import kernels as _kernels


class TorchTritonBackend(Backend):
    name = "torch_triton"
    priority = 30
    description = "torch tensors on CUDA (CPU under TRITON_INTERPRET=1); Triton kernels, default compositions elsewhere"
    #: bfloat16: the Triton kernels take bf16 inputs (float32 accumulation and states, outputs in
    #: bf16); float64 always runs the default compositions (see kernels/_glue.py).
    dtypes = ("float32", "float64", "bfloat16")

    @property
    def capabilities(self) -> Capabilities:
        """cuda_graphs only on a CUDA device (graphs.CudaGraphDecoder captures lm.step)."""
        return Capabilities(cuda_graphs=self.device.type == "cuda", batch_invariant=False,
                            deterministic=True)

    @property
    def kernels(self):
        if not hasattr(self, "_kernel_table"):
            self._kernel_table = _kernels.collect()
        return self._kernel_table

    @property
    def saving(self):
        """Saving forms (mamba_core/ops/saving.py): mamba3_scan, mamba3_rope_scan (per-head B/C
        and chunk states kept), selective_scan (chunk states, when its CONFIG "save" asks)."""
        if not hasattr(self, "_saving_forms"):
            self._saving_forms = _kernels.collect("SAVING")
        return self._saving_forms

    @property
    def mixer_steps(self):
        """Fused one-token decode steps (kernels/mixer_steps.py): mamba1, mamba2."""
        if not hasattr(self, "_mixer_steps"):
            try:
                from mamba_backend_torch_triton.kernels.mixer_steps import MIXER_STEPS
            except ImportError as exc:  # no triton: the composition runs
                _kernels.IMPORT_ERRORS["mixer_steps"] = f"{type(exc).__name__}: {exc}"
                MIXER_STEPS = {}
            self._mixer_steps = dict(MIXER_STEPS)
        return self._mixer_steps

    def static_decoder(self, params: dict, cfg, dtype: str):
        """Generation's decoder: lm.step captured as a CUDA graph per batch size (graphs.py); on
        the CPU (TRITON_INTERPRET=1) the same object steps eagerly over its static cache."""
        from mamba_backend_torch_triton.graphs import CudaGraphDecoder

        with warnings.catch_warnings():  # the no-CUDA notice is for direct users, not generation
            warnings.simplefilter("ignore", RuntimeWarning)
            return CudaGraphDecoder(self, params, cfg, dtype)

    def available(self) -> Availability:
        if importlib.util.find_spec("torch") is None:
            return Availability.no(
                "torch is not installed: pip install -e backends/torch_triton (and torch for your platform)"
            )
        if importlib.util.find_spec("array_api_compat") is None:
            return Availability.no("array-api-compat is not installed: pip install array-api-compat")
        if self._interpret:
            return Availability.yes()
        import torch

        if not torch.cuda.is_available():
            return Availability.no(
                "no CUDA device visible to torch; set TRITON_INTERPRET=1 to run on the CPU "
                "through the Triton interpreter"
            )
        return Availability.yes()

    @property
    def _interpret(self) -> bool:
        return os.environ.get("TRITON_INTERPRET") == "1"

    @property
    def device(self):
        import torch

        return torch.device("cpu" if self._interpret or not torch.cuda.is_available() else "cuda")

    @property
    def xp(self):
        import array_api_compat.torch as xp

        from mamba_backend_torch_triton.namespace import DeviceNamespace

        dev = self.device
        cached = getattr(self, "_xp_cache", None)
        if cached is None or cached[0] != dev:
            self._xp_cache = (dev, DeviceNamespace(xp, dev))
        return self._xp_cache[1]

    def asarray(self, a, dtype=None):
        import torch

        if isinstance(a, np.ndarray) and a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        if isinstance(a, np.ndarray):
            a = torch.from_numpy(np.ascontiguousarray(a))
        t = torch.as_tensor(a, device=self.device)
        if dtype is None and t.is_floating_point() and str(t.dtype).replace("torch.", "") not in self.dtypes:
            dtype = "float32"
        if dtype is not None:
            t = t.to(self.dtype(dtype))
        return t

    def to_numpy(self, a) -> np.ndarray:
        import torch

        a = a.detach().to("cpu")
        if a.dtype == torch.bfloat16:  # NumPy has no bfloat16: widen (exactly) to float32
            a = a.to(torch.float32)
        return a.numpy()
