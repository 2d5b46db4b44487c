"""Decoding with CUDA graphs captured through CuPy's stream capture.

    dec = GraphDecoder(be, params, cfg, batch=1)      # warm-up + capture of one lm.step
    dec.load_cache(cache)                             # optional: a prefilled cache (lm.forward)
    logits = dec.step(ids)                            # ids (batch,) ints -> logits (batch, V')

The decoder owns static buffers: the token ids, the per-layer cache (updated in place by the
graph) and the logits. The step is run (warm-up) and captured inside
``kernels.mixer_steps.inplace_cache()``: the fused Mamba-2 step writes its new states over the
static cache and returns those very arrays, so the graph holds no copy-back for them; a new cache
array that is not the static one (other mixers, ``MAMBA_CUPY_FUSED_STEP=0``, a fallback of the
fused step) is copied into it as the last captured work, as before. Every
allocation made while capturing comes from a memory pool private to the decoder and kept alive
with it, so the graph's intermediates are never handed to other code (a pool shared with the
rest of the process would give away blocks freed after capture while replays still write them).
A warm-up step under the same pool runs first, outside the capture: it compiles every NVRTC
module, fills the pool and allocates the fused step's ticket counters, so the capture itself
needs no cudaMalloc and no host sync. The warm-up's token (written in place) is undone after the
capture by loading the saved cache back.
Nothing captured may call cuBLAS or wait on the host: linear runs the GEMV kernel
(kernels/linear.py, forced by ``gemv_only`` in warm-up and capture alike) and the SSD step's dt
(bias, softplus, dt_limit) is one elementwise kernel (kernels/_common.py ``dt_transform``), not
the array-API clip, whose masked assignment reads a count back to the host.

The returned logits array is the static buffer: copy it if you keep it across steps.
"""

from __future__ import annotations

from mamba_core.models import lm

from mamba_backend_cuda_cupy.kernels.linear import gemv_only
from mamba_backend_cuda_cupy.kernels.mixer_steps import inplace_cache


def _leaves(cache):
    for layer in cache:
        for key in sorted(layer):
            yield layer[key]


def _copies(static, new):
    """(static leaf, new leaf) pairs still to copy: those the step did not update in place."""
    return [(dst, src) for dst, src in zip(_leaves(static), _leaves(new)) if src is not dst]


class GraphDecoder:
    def __init__(self, be, params: dict, cfg, batch: int, dtype: str = "float32", cache=None):
        import cupy as cp

        self.be, self.params, self.cfg, self.batch = be, params, cfg, batch
        self.pool = cp.cuda.MemoryPool()
        self.stream = cp.cuda.Stream(non_blocking=True)
        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            self.ids = cp.zeros((batch,), dtype=cp.int64)
            self.cache = lm.init_cache(be, cfg, batch, dtype) if cache is None else [
                {k: v.copy() for k, v in layer.items()} for layer in cache]
            saved = [{k: v.copy() for k, v in layer.items()} for layer in self.cache]
            # warm-up outside the capture (NVRTC compiles, pool blocks); linear runs its GEMV
            # kernel in both (gemv_only), since cuBLAS cannot be called while capturing
            with gemv_only():
                self._run()
                self.stream.synchronize()
                self.stream.begin_capture()
                try:
                    self.logits = self._run()
                finally:
                    self.graph = self.stream.end_capture()
            self.load_cache(saved)  # undo the warm-up's token
        self.stream.synchronize()

    def _run(self):
        import cupy as cp

        with inplace_cache():
            logits, new_cache = lm.step(self.be, self.params, self.cfg, self.ids, self.cache)
        for dst, src in _copies(self.cache, new_cache):
            cp.copyto(dst, src)
        return logits

    def load_cache(self, cache) -> None:
        """Copy a cache (list of per-layer dicts, same shapes) into the static buffers."""
        import cupy as cp

        with self.stream:
            for dst, src in zip(_leaves(self.cache), _leaves(cache)):
                cp.copyto(dst, src)

    def step(self, ids):
        """Replay the graph for one token per row; returns the static logits buffer (B, V')."""
        import cupy as cp

        with self.stream:
            cp.copyto(self.ids, cp.asarray(ids, dtype=cp.int64))
            self.graph.launch(self.stream)
        return self.logits

    def synchronize(self) -> None:
        self.stream.synchronize()
