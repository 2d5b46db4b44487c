"""torch.nn.Module front of mamba-core: Mamba1, Mamba2, Mamba3 mixers and MambaLM.

    import torch
    from mamba_backend_torch_triton.modules import Mamba2, MambaLM
    mixer = Mamba2(d_model=256, d_state=64, headdim=32).cuda()     # ssm_cfg fields as kwargs
    y = mixer(u)                       # u: (B, L, D) -> (B, L, D)
    y.sum().backward()                 # mamba-core's explicit backward, through autograd
    torch.optim.AdamW(mixer.parameters()).step()

Parameters are ``nn.Parameter``s laid out in nested submodules that reproduce mamba-core's
(and the official mamba_ssm's) names: ``mixer.in_proj.weight``, ``mixer.A_log``,
``lm.backbone.layers.3.mixer.conv1d.weight``..., so ``state_dict()`` keys are the checkpoint keys
and ``load_state_dict`` takes an official state dict. They are initialised by the core's
``init_params`` (the official initialisation) from ``seed``.

Autograd: ``forward`` runs one ``torch.autograd.Function`` whose forward calls the core's
``forward_train`` (ops through the torch_triton backend: Triton kernels where they exist,
default compositions elsewhere; the scans' saving forms keep their residuals, such as Mamba-3's
chunk states) and whose backward calls the core's ``backward`` with the
``saved`` dict, returning the gradients of the input and of every parameter. Under
``torch.no_grad()`` (or with nothing that requires grad) ``forward`` runs the core's ``forward``
instead, which saves nothing. Nothing inside is
recorded by autograd; ``saved`` lives on the autograd context until backward runs (no
double-backward; the saved tensors are not version-checked, so do not modify the input or the
parameters in place between forward and backward).

Dtypes: parameters are float32 by default; ``.to(torch.bfloat16)`` works (bf16 inputs, float32
states and accumulation inside the kernels). Devices: CUDA, or CPU (Triton kernels only under
TRITON_INTERPRET=1, default compositions otherwise).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mamba_core.models import lm as _lm
from mamba_core.models import mamba1 as _m1
from mamba_core.models import mamba2 as _m2
from mamba_core.models import mamba3 as _m3
from mamba_core.models.config import LMConfig


def _backend():
    from mamba_backend_torch_triton.backend import TorchTritonBackend

    global _BE
    try:
        return _BE
    except NameError:
        _BE = TorchTritonBackend()
        return _BE


def _register(root: nn.Module, name: str, value: np.ndarray, dtype, device) -> None:
    """Register ``name`` ('a.b.weight') as a parameter of nested submodules of ``root``."""
    *path, leaf = name.split(".")
    mod = root
    for part in path:
        if not hasattr(mod, part) or not isinstance(getattr(mod, part), nn.Module):
            mod.add_module(part, nn.Module())
        mod = getattr(mod, part)
    mod.register_parameter(leaf, nn.Parameter(torch.as_tensor(np.asarray(value), dtype=dtype, device=device)))


def _needs_grad(x, params: dict) -> bool:
    """Whether autograd would record a call on ``x`` and ``params`` (grad mode on and a tensor
    that requires grad); without it the modules run the core's forward, which keeps nothing."""
    return torch.is_grad_enabled() and (
        (x is not None and x.requires_grad) or any(p.requires_grad for p in params.values()))


class _CoreFn(torch.autograd.Function):
    """y = core forward_train(params, x); backward = the core's backward (see the module doc)."""

    @staticmethod
    def forward(ctx, run, names, x, *params):
        p = dict(zip(names, params))
        y, saved = run.forward(p, x)
        ctx.run, ctx.names, ctx.p, ctx.saved = run, names, p, saved
        return y

    @staticmethod
    def backward(ctx, dy):
        dx, dparams = ctx.run.backward(ctx.p, ctx.saved, dy.contiguous())
        ctx.saved = None
        return (None, None, dx, *[dparams[n] for n in ctx.names])


class _MixerRun:
    def __init__(self, mixer, cfg):
        self.mixer, self.cfg = mixer, cfg

    def forward(self, p, u):
        y, _, saved = self.mixer.forward_train(_backend(), p, self.cfg, u)
        return y, saved

    def backward(self, p, saved, dy):
        dparams, du, _ = self.mixer.backward(_backend(), p, self.cfg, saved, dy)
        return du, dparams


class _LMRun:
    def __init__(self, cfg):
        self.cfg = cfg

    def forward(self, p, ids):
        logits, _, saved = _lm.forward_train(_backend(), p, self.cfg, ids)
        return logits, saved

    def backward(self, p, saved, dlogits):
        grads, _ = _lm.backward(_backend(), p, self.cfg, saved, dlogits)
        return None, grads


class _CoreModule(nn.Module):
    def _init_from(self, params: dict, dtype, device):
        self._names = tuple(params)
        for name, value in params.items():
            _register(self, name, value, dtype, device)

    def core_params(self) -> dict:
        """The flat dict {core name: parameter} that mamba-core functions take."""
        return {n: self.get_parameter(n) for n in self._names}


class _Mixer(_CoreModule):
    _mixer = None  # the mamba_core.models module

    def __init__(self, d_model: int, *, seed: int = 0, device=None, dtype=torch.float32, **ssm_cfg):
        super().__init__()
        self.cfg = self._mixer.Config.from_dict(d_model, **ssm_cfg)
        self._init_from(self._mixer.init_params(self.cfg, np.random.default_rng(seed)), dtype, device)
        self._run = _MixerRun(self._mixer, self.cfg)

    def forward(self, u):
        """u: (B, L, D) -> (B, L, D), differentiable through the core's backward (without
        gradients to take, the core's forward: nothing saved)."""
        params = self.core_params()
        if not _needs_grad(u, params):
            return self._mixer.forward(_backend(), params, self.cfg, u)[0]
        return _CoreFn.apply(self._run, self._names, u, *params.values())

    @torch.no_grad()
    def init_cache(self, batch: int, dtype: str = "float32") -> dict:
        return self._mixer.init_cache(_backend(), self.cfg, batch, dtype)

    @torch.no_grad()
    def step(self, u, cache: dict):
        """u: (B, D), one token -> (y (B, D), new cache). Inference only (no autograd)."""
        return self._mixer.step(_backend(), self.core_params(), self.cfg, u, cache)


class Mamba1(_Mixer):
    """The Mamba-1 mixer (mamba_ssm ``Mamba``); kwargs are mamba_core.models.mamba1.Config fields."""

    _mixer = _m1


class Mamba2(_Mixer):
    """The Mamba-2 mixer (mamba_ssm ``Mamba2``); kwargs are mamba_core.models.mamba2.Config fields."""

    _mixer = _m2


class Mamba3(_Mixer):
    """The Mamba-3 mixer (SISO or MIMO); kwargs are mamba_core.models.mamba3.Config fields."""

    _mixer = _m3


class MambaLM(_CoreModule):
    """The language model (mamba_ssm ``MambaLMHeadModel``): forward(ids (B, L)) -> logits (B, L, V').

    cfg: an LMConfig, or a dict of its fields. Parameter names are the original mamba_ssm keys
    (``backbone.embedding.weight``, ``backbone.layers.{i}.mixer.*``, ...).
    """

    def __init__(self, cfg, *, seed: int = 0, device=None, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg if isinstance(cfg, LMConfig) else LMConfig(**cfg)
        self._init_from(_lm.init_params(self.cfg, np.random.default_rng(seed)), dtype, device)
        self._run = _LMRun(self.cfg)

    def forward(self, ids):
        """ids: (B, L) int64 -> logits (B, L, V'), differentiable wrt every parameter (without
        gradients to take, the core's forward: nothing saved)."""
        params = self.core_params()
        if not _needs_grad(None, params):
            return _lm.forward(_backend(), params, self.cfg, ids)[0]
        return _CoreFn.apply(self._run, self._names, ids, *params.values())

    @torch.no_grad()
    def init_cache(self, batch: int, dtype: str = "float32") -> list:
        return _lm.init_cache(_backend(), self.cfg, batch, dtype)

    @torch.no_grad()
    def step(self, ids, cache: list):
        """ids: (B,) -> (logits (B, V'), new cache). Inference only."""
        return _lm.step(_backend(), self.core_params(), self.cfg, ids, cache)
