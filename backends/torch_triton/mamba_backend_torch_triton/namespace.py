"""The backend's array namespace: array_api_compat.torch with creation on the backend's device.

The array API leaves ``zeros``/``arange``/... on the library's default device, which for torch
is the CPU; the core's default compositions create scratch arrays that way, so on CUDA they must
land on the GPU. This namespace fills in ``device=`` for creation functions when the caller did
not give one, and forwards everything else unchanged.
"""

from __future__ import annotations

import functools

_CREATION = ("zeros", "ones", "empty", "full", "arange", "eye", "linspace")


class DeviceNamespace:
    def __init__(self, xp, device):
        self._xp = xp
        self._device = device
        for name in _CREATION:
            setattr(self, name, self._on_device(getattr(xp, name)))

    def _on_device(self, fn):
        @functools.wraps(fn)
        def create(*args, **kwargs):
            kwargs.setdefault("device", self._device)
            return fn(*args, **kwargs)

        return create

    def asarray(self, obj, *args, **kwargs):
        import torch

        if not isinstance(obj, torch.Tensor):
            kwargs.setdefault("device", self._device)
        return self._xp.asarray(obj, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._xp, name)
