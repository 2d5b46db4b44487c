"""Decoding with CUDA graphs: capture the whole language-model step once per batch size.

    dec = CudaGraphDecoder(backend, params, cfg, dtype="bfloat16")
    dec.set_cache(cache)              # e.g. the cache returned by lm.forward over the prompt
    logits = dec.step(ids)            # ids: (B,) ints -> logits (B, V'); the cache advances
    dec.cache(B)                      # the current (static) cache of batch size B

One token of ``mamba_core.models.lm.step`` is dozens of small launches per layer (a 48-layer
model: over a thousand); at batch 1 the GPU would idle between them. The decoder keeps, per
batch size, static tensors for the token ids and every layer's cache, captures one call of
``lm.step`` over them into a ``torch.cuda.CUDAGraph`` (after warm-up calls that compile the
Triton kernels outside the capture), and copies the step's new cache arrays back into the
static ones inside the captured region. A step is then: copy the ids in, replay.

Mixers with a fused step (kernels/mixer_steps.py: Mamba-1, Mamba-2) are captured inside
``mixer_steps.inplace_cache()``: their kernels write the new states over the static cache, so
the graph holds no copy-back for them (the copy below is skipped when a step returned the static
array itself); other mixers' new caches are copied back as before. The warm-up calls run
without it and leave the static cache untouched.

The returned logits are the graph's static output tensor: the next ``step`` of the same batch
size overwrites them (clone them to keep them). Parameters must stay the same tensors (update
them in place, never rebind) for replays to see new values.

Not on CUDA (CPU, TRITON_INTERPRET=1, no GPU): CUDA graphs do not exist there. The decoder
then says so once (a RuntimeWarning naming the reason) and runs ``lm.step`` eagerly on the same
static cache, so code written against it runs everywhere; ``dec.enabled`` tells which.
"""

from __future__ import annotations

import warnings

import torch

from mamba_core.models import lm

try:  # the fused steps need triton; without it every mixer's new cache is copied back
    from mamba_backend_torch_triton.kernels.mixer_steps import inplace_cache
except ImportError:  # pragma: no cover
    from contextlib import nullcontext as inplace_cache


class CudaGraphDecoder:
    """lm.step captured as a CUDA graph per batch size, replayed per token (see the module doc).

    backend: the torch_triton backend (or any backend whose arrays are torch tensors);
    params: the model's parameters as backend arrays (lm.to_backend); cfg: the LMConfig;
    dtype: the compute dtype name the params are in (the cache is made for it);
    warmup: eager calls before capture (they compile and autotune the kernels).
    """

    def __init__(self, backend, params: dict, cfg, dtype: str = "float32", warmup: int = 2):
        self.backend = backend
        self.params = params
        self.cfg = cfg
        self.dtype = dtype
        self.warmup = warmup
        self._slots: dict[int, dict] = {}
        device = next(iter(params.values())).device
        self.device = device
        if device.type == "cuda" and torch.cuda.is_available():
            self.enabled, self.reason = True, ""
        else:
            self.enabled = False
            self.reason = (
                f"CUDA graphs need a CUDA device; the parameters are on {device.type!r}"
                + (" (TRITON_INTERPRET=1)" if device.type == "cpu" else "")
                + ": CudaGraphDecoder falls back to eager lm.step (same results, no capture)"
            )
            warnings.warn(self.reason, RuntimeWarning, stacklevel=2)

    # ---- static buffers ------------------------------------------------------------------
    def _slot(self, batch: int) -> dict:
        slot = self._slots.get(batch)
        if slot is None:
            slot = {
                "ids": torch.zeros((batch,), dtype=torch.int64, device=self.device),
                "cache": lm.init_cache(self.backend, self.cfg, batch, self.dtype),
                "graph": None,
                "logits": None,
            }
            self._slots[batch] = slot
        return slot

    def cache(self, batch: int) -> list:
        """The static cache of batch size ``batch`` (a list of per-layer dicts), live."""
        return self._slot(batch)["cache"]

    def set_cache(self, cache: list) -> None:
        """Copy ``cache`` (e.g. from lm.forward over the prompt) into the static buffers."""
        batch = next(iter(cache[0].values())).shape[0]
        static = self._slot(batch)["cache"]
        if len(cache) != len(static):
            raise ValueError(f"set_cache: cache has {len(cache)} layers, the model has {len(static)}")
        for dst, src in zip(static, cache):
            for k, v in dst.items():
                v.copy_(src[k])

    def reset(self, batch: int) -> None:
        """Zero the static cache of batch size ``batch`` (a fresh sequence)."""
        for layer in self._slot(batch)["cache"]:
            for v in layer.values():
                v.zero_()

    # ---- capture and replay ----------------------------------------------------------------
    def _eager(self, slot):
        logits, new = lm.step(self.backend, self.params, self.cfg, slot["ids"], slot["cache"])
        return logits, new

    def _capture(self, slot) -> None:
        # warm up on a side stream (kernels compile, allocator settles); the static cache is
        # not touched: lm.step returns new arrays and nothing is copied back here
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, self.warmup)):
                self._eager(slot)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with inplace_cache():
                logits, new = self._eager(slot)
            _copy_back(slot["cache"], new)
        slot["graph"], slot["logits"] = graph, logits

    def capture(self, batch: int) -> None:
        """Capture the step for ``batch`` now (otherwise the first ``step`` does)."""
        if self.enabled:
            slot = self._slot(batch)
            if slot["graph"] is None:
                self._capture(slot)

    def step(self, ids):
        """ids: (B,) ints -> logits (B, V'), advancing the static cache of batch size B."""
        ids = torch.as_tensor(ids, device=self.device)
        slot = self._slot(int(ids.shape[0]))
        slot["ids"].copy_(ids)
        if not self.enabled:
            with inplace_cache():
                logits, new = self._eager(slot)
            _copy_back(slot["cache"], new)
            return logits
        if slot["graph"] is None:
            self._capture(slot)
        slot["graph"].replay()
        return slot["logits"]


def _copy_back(static: list, new: list) -> None:
    """Copy each layer's new cache into the static one, skipping arrays updated in place."""
    for dst, src in zip(static, new):
        for k, v in dst.items():
            if src[k] is not v:
                v.copy_(src[k])
