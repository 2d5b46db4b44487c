"""Decoding over preallocated buffers: ``lm.step`` that allocates nothing per token.

    dec = StaticDecoder(backend, params, cfg, dtype="float32")   # or backend.static_decoder(...)
    dec.set_cache(cache)              # e.g. the cache returned by lm.forward over the prompt
    logits = dec.step(ids)            # ids: (B,) ints -> logits (B, V'); the cache advances
    dec.cache(B)                      # the current cache of batch size B (per-layer dicts)
    dec.reset(B)                      # zero it (a fresh sequence)

``lm.step`` is functional: it returns a new cache and leaves its input alone, so every token
allocates a whole cache (3 MB for a 130M Mamba-1, 20 MB for Mamba-2/3) plus the logits and every
intermediate. This decoder keeps, per batch size, a *slot*: two sets of cache arrays, the
hidden / residual / projection / MLP buffers and the logits buffer, all made on the first
``step`` (or ``set_cache``) of that batch size. A step then writes only into them:

    ids -> embedding.take(ids, out=residual)
    per layer:  residual += hidden (not on layer 0); hn = rmsnorm(residual)       numba, out=
                zx = in_proj(hn)                          np.matmul(out=) or the fixed-order linear
                the fused mixer kernel of decode.py: reads zx and the current cache set, writes
                the new states into the other set and its output into y
                hidden = out_proj(y)
                [MLP: residual += hidden; hn = rmsnorm; h = fc1(hn); y = a silu(g); hidden = fc2(y)]
    residual += hidden; hn = rmsnorm(residual, norm_f); logits = hn @ head^T    (out=)
    the other cache set becomes the current one

Why two cache sets rather than updating in place (which the kernels would allow: each reads a
state element before writing it): with input and output the same memory, the vectorised state
update (``S_new[n] = a S[n] + b B[n]``) fails LLVM's runtime overlap check and runs scalar;
measured per layer at d_model 768: Mamba-2 207 us in place vs 159 us into the other set, Mamba-3
311 vs 294 us. The cost is one more cache per batch size (20 MB for a 130M Mamba-2).

The kernels and their order of operations are the ones ``lm.step`` runs (decode.py's fused steps,
norm.py's rmsnorm, the backend's linear, NumPy's ufuncs for the MLP gate), so the logits and
the cache are bit-identical to ``lm.step``'s. With ``cpu_numpy_invariant`` the projections go
through its fixed-order linear, so the decoder is batch-invariant as the backend is.

The returned logits are the slot's buffer: the next ``step`` of the same batch size overwrites
them (copy them to keep them). Parameters must stay the same arrays (update them in place): the
decoder holds references (and, for the invariant linear, the transposed copies keyed by them).
The mixer kernels' work arrays are the decoder's too (``decode.scratch``). What is still
allocated per token: transient Python objects of the calls (numba unboxing the kernel's array
arguments: ~2.5 KB, freed on return) and, with cpu_numpy_invariant, its linear's 4 x 32 accumulator tile
per column strip (numba's allocator); nothing is retained.
"""

from __future__ import annotations

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.models import lm
from mamba_core.models.mixer import scope

from mamba_backend_cpu_numpy import decode as _dec
from mamba_backend_cpu_numpy import linear as _linear
from mamba_backend_cpu_numpy import norm as _norm


class StaticDecoder:
    """lm.step over per-batch-size preallocated buffers (see the module doc).

    backend: a cpu_numpy backend (``cpu_numpy`` or ``cpu_numpy_invariant``); params: the model's
    parameters as backend arrays (lm.to_backend, all in ``dtype``); cfg: the LMConfig; dtype:
    the compute dtype name ("float32" or "float64").
    """

    def __init__(self, backend, params: dict, cfg, dtype: str = "float32"):
        self.backend, self.params, self.cfg, self.dtype = backend, params, cfg, dtype
        self.family = cfg.mixer.LAYER.lower()
        if self.family not in _dec.MIXER_STEPS:
            raise NotImplementedError(
                f"StaticDecoder: no fused step for mixer {cfg.mixer.LAYER!r}; it supports "
                f"{sorted(_dec.MIXER_STEPS)} (use lm.step for this model)")
        self.kernel = {"mamba1": _dec._m1, "mamba2": _dec._m2, "mamba3": _dec._m3}[self.family]
        self.wide = np.float64 if dtype == "float64" else np.float32
        self.mcfg = cfg.mixer_config
        self.eps = float(cfg.norm_epsilon)
        lin = backend.kernels.get("linear")
        if lin is None:
            self._fixed_order = False  # lm.step's linear: the default composition (BLAS)
        elif lin is _linear.linear:
            self._fixed_order = True
        else:
            raise NotImplementedError(
                f"StaticDecoder: backend {backend.name!r} has its own linear kernel {lin!r}; the "
                "decoder knows NumPy's matmul and cpu_numpy_invariant's fixed-order linear")
        self.layers = [self._layer(scope(params, f"backbone.layers.{i}."))
                       for i in range(cfg.n_layer)]
        self.norm_f = params["backbone.norm_f.weight"]
        self.emb = params["backbone.embedding.weight"]
        self.head = self._proj(params["backbone.embedding.weight" if cfg.tie_embeddings
                                      else "lm_head.weight"], None)
        #: the mixer kernel's work arrays (decode.scratch), shared by every layer and slot
        self.scratch = _dec.scratch(self.family, self.mcfg, self.wide)
        self._slots: dict[int, dict] = {}

    # ---- per-layer constants (params-derived kernel arguments, as decode.py builds them) -----
    def _proj(self, w, b):
        """(weight, weight^T view, bias): what one projection needs."""
        return (w, w.T, b)

    def _layer(self, p: dict) -> dict:
        m, cfg, wide = self.mcfg, self.cfg, self.wide
        c = _dec.c
        bias = getattr(m, "bias", False)
        L = {
            "norm": p["norm.weight"],
            "in": self._proj(p["mixer.in_proj.weight"], p["mixer.in_proj.bias"] if bias else None),
            "out": self._proj(p["mixer.out_proj.weight"], p["mixer.out_proj.bias"] if bias else None),
        }
        dummy = np.zeros(1, wide)  # stands for absent optional vectors (same numba type)
        if self.family == "mamba1":
            E, K = m.d_inner, m.d_conv
            cb = p["mixer.conv1d.bias"] if m.conv_bias else None
            L["consts"] = (c(p["mixer.conv1d.weight"].reshape(E, K), wide),
                           c(cb, wide) if cb is not None else dummy, cb is not None,
                           c(p["mixer.x_proj.weight"], wide), c(p["mixer.dt_proj.weight"], wide),
                           c(p["mixer.dt_proj.bias"], wide), c(p["mixer.A_log"], wide),
                           c(p["mixer.D"], wide))
        elif self.family == "mamba2":
            H, P, X, K = m.nheads, m.headdim, m.conv_dim, m.d_conv
            cb = p["mixer.conv1d.bias"] if m.conv_bias else None
            lo, hi = (float(v) for v in m.dt_limit)
            L["consts"] = (c(p["mixer.conv1d.weight"].reshape(X, K), wide),
                           c(cb, wide) if cb is not None else dummy, cb is not None,
                           c(p["mixer.dt_bias"], wide), c(p["mixer.A_log"], wide),
                           np.broadcast_to(c(p["mixer.D"], wide).reshape(H, -1), (H, P)),
                           c(p["mixer.norm.weight"], wide) if m.rmsnorm else dummy)
            L["flags"] = (m.d_mlp, m.ssm_width, m.ngroups, lo, hi,
                          (lo, hi) != (0.0, float("inf")), bool(m.rmsnorm),
                          bool(m.norm_before_gate))
        else:  # mamba3
            one = np.zeros((1, 1, 1), wide)
            L["consts"] = (
                c(p["mixer.dt_bias"], wide), c(p["mixer.B_norm.weight"], wide),
                c(p["mixer.C_norm.weight"], wide), c(p["mixer.B_bias"], wide),
                c(p["mixer.C_bias"], wide), c(p["mixer.D"], wide),
                *[c(p["mixer." + k], wide) if m.is_mimo else one
                  for k in ("mimo_x", "mimo_z", "mimo_o")],
                bool(m.is_mimo), bool(m.is_outproj_norm),
                c(p["mixer.norm.weight"], wide) if m.is_outproj_norm else dummy,
                float(m.A_floor), m.ngroups, bool(m.is_mimo))
        if cfg.d_intermediate:
            L["norm2"] = p["norm2.weight"]
            L["fc1"] = self._proj(p["mlp.fc1.weight"], None)
            L["fc2"] = self._proj(p["mlp.fc2.weight"], None)
        return L

    # ---- slots: every buffer of one batch size ---------------------------------------------
    def _slot(self, batch: int) -> dict:
        slot = self._slots.get(batch)
        if slot is not None:
            return slot
        B, wide, cfg, m = batch, self.wide, self.cfg, self.mcfg
        D = cfg.d_model
        n_in = self.layers[0]["in"][0].shape[0]
        s = {
            "ids": np.zeros(B, np.intp),
            "resid": np.zeros((B, D), wide), "hn": np.zeros((B, D), wide),
            "h": np.zeros((B, D), wide),
            "zx": np.zeros((B, n_in), wide), "y": np.zeros((B, m.d_inner), wide),
            "logits": np.zeros((B, cfg.padded_vocab_size), wide),
            "caches": [lm.init_cache(self.backend, cfg, B, self.dtype) for _ in range(2)],
            "cur": 0,  # the set holding the current state; the kernels write the other one
        }
        if cfg.d_intermediate:
            F = cfg.mlp_hidden
            s["fc1"] = np.zeros((B, 2 * F), wide)
            s["a"], s["g"] = s["fc1"][:, :F], s["fc1"][:, F:]
            s["e"], s["d"], s["s"] = (np.zeros((B, F), wide) for _ in range(3))
            s["mask"] = np.zeros((B, F), bool)
            s["gy"] = np.zeros((B, F), wide)
        # the mixer kernel's full argument tuple per (current set, layer): zx, the current set's
        # cache (read), y and the other set's cache (written)
        s["kargs"] = [[self._kernel_args(L, s["zx"], cin, cout, s["y"])
                       for L, cin, cout in zip(self.layers, s["caches"][cur], s["caches"][1 - cur])]
                      for cur in (0, 1)]
        s["rms"] = _norm._rms if B >= _norm.PARALLEL_ROWS else _norm._rms_serial
        self._slots[batch] = s
        return s

    def _kernel_args(self, L, zx, cin, cout, y) -> tuple:
        k, w = L["consts"], self.scratch
        if self.family == "mamba1":  # _m1(xz, conv, <consts>, ssm, y, conv_new, ssm_new, <work>)
            return (zx, cin["conv_state"], *k, cin["ssm_state"], y, cout["conv_state"],
                    cout["ssm_state"], *w)
        if self.family == "mamba2":  # _m2(zx, conv, <consts>, ssm, <flags>, y, conv_new, ...)
            return (zx, cin["conv_state"], *k, cin["ssm_state"], *L["flags"], y,
                    cout["conv_state"], cout["ssm_state"], *w)
        # _m3(zx, <consts>, angle, ssm, k, v, y, angle_new, ssm_new, k_new, v_new, <work>)
        names = ("angle_state", "ssm_state", "k_state", "v_state")
        return (zx, *k, *(cin[n] for n in names), y, *(cout[n] for n in names), *w)

    def cache(self, batch: int) -> list:
        """The current cache of batch size ``batch`` (a list of per-layer dicts of the slot's
        arrays). Valid until the next ``step`` of that batch size, which writes the slot's other
        set and makes it current: read or copy it before. To change it, ``set_cache``."""
        s = self._slot(batch)
        return s["caches"][s["cur"]]

    def set_cache(self, cache: list) -> None:
        """Copy ``cache`` (e.g. from lm.forward over the prompt, or rows taken from ``cache``)
        into the slot of its batch size; the next ``step`` of that size continues from it."""
        if len(cache) != self.cfg.n_layer:
            raise ShapeError(f"set_cache: cache has {len(cache)} layers, the model has "
                             f"{self.cfg.n_layer}")
        batch = int(next(iter(cache[0].values())).shape[0])
        static = self.cache(batch)
        for i, (dst, src) in enumerate(zip(static, cache)):
            if set(dst) != set(src):
                raise ShapeError(f"set_cache: layer {i} has keys {sorted(src)}, expected "
                                 f"{sorted(dst)} (a {self.cfg.mixer.LAYER} cache)")
            for k, v in dst.items():
                if tuple(src[k].shape) != v.shape:
                    raise ShapeError(f"set_cache: layer {i} {k!r} has shape {tuple(src[k].shape)},"
                                     f" expected {v.shape} (all layers one batch size)")
                np.copyto(v, src[k])

    def reset(self, batch: int) -> None:
        """Zero the cache of batch size ``batch`` (a fresh sequence)."""
        for layer in self.cache(batch):
            for v in layer.values():
                v.fill(0)

    # ---- the step --------------------------------------------------------------------------
    def _linear(self, x, proj, out):
        w, wt, b = proj
        if self._fixed_order:
            _linear.linear_into(x, w, b, out)
        else:
            np.matmul(x, wt, out=out)
            if b is not None:
                np.add(out, b, out=out)

    def step(self, ids) -> np.ndarray:
        """ids: (B,) ints, the next token of each row -> logits (B, V') (the slot's buffer,
        overwritten by the next step of batch size B); the cache of batch size B advances."""
        if getattr(ids, "ndim", None) != 1 or getattr(ids, "dtype", np.dtype(float)).kind not in "iu":
            raise ShapeError(f"StaticDecoder.step: token ids must be an integer array of shape "
                             f"(B,), got {type(ids).__name__} with shape "
                             f"{getattr(ids, 'shape', None)} and dtype {getattr(ids, 'dtype', None)}")
        s = self._slot(ids.shape[0])
        V = self.emb.shape[0]
        if ids.min() < 0 or ids.max() >= V:
            raise IndexError(f"StaticDecoder.step: token ids must be in [0, {V}), got "
                             f"{ids.min()}..{ids.max()}")
        np.copyto(s["ids"], ids, casting="unsafe")
        resid, hn, h, rms, eps = s["resid"], s["hn"], s["h"], s["rms"], self.eps
        # mode "clip": the range was checked above ("raise" would buffer ``out``); the method with
        # positional arguments: np.take(..., out=, mode=) leaves ~120 B objects behind per call
        self.emb.take(s["ids"], 0, resid, "clip")
        kernel, kargs = self.kernel, s["kargs"][s["cur"]]
        E = resid.shape[1]
        for i, L in enumerate(self.layers):
            if i:
                np.add(resid, h, out=resid)
            rms(resid, L["norm"], resid, False, E, False, eps, hn)
            self._linear(hn, L["in"], s["zx"])
            kernel(*kargs[i])
            self._linear(s["y"], L["out"], h)
            if "fc1" in L:
                self._mlp(s, L)
        np.add(resid, h, out=resid)
        rms(resid, self.norm_f, resid, False, E, False, eps, hn)
        self._linear(hn, self.head, s["logits"])
        s["cur"] = 1 - s["cur"]
        return s["logits"]

    def _mlp(self, s, L):
        """residual += hidden; hn = rmsnorm; hidden = fc2(a * silu(g)), [a, g] = fc1(hn), with
        silu's default composition (x sigmoid(x), sigmoid = where(x >= 0, 1/(1+e), e/(1+e)),
        e = exp(-|x|)) in NumPy ufuncs with out=, as lm.step computes it."""
        resid, hn, h = s["resid"], s["hn"], s["h"]
        np.add(resid, h, out=resid)
        s["rms"](resid, L["norm2"], resid, False, resid.shape[1], False, self.eps, hn)
        self._linear(hn, L["fc1"], s["fc1"])
        a, g, e, d, sg = s["a"], s["g"], s["e"], s["d"], s["s"]
        np.abs(g, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)                  # e = exp(-|g|)
        np.add(e, 1.0, out=d)             # 1 + e
        np.divide(1.0, d, out=sg)         # 1 / (1 + e)
        np.divide(e, d, out=e)            # e / (1 + e)
        np.greater_equal(g, 0, out=s["mask"])
        np.copyto(e, sg, where=s["mask"])  # sigmoid(g)
        np.multiply(g, e, out=e)          # silu(g)
        np.multiply(a, e, out=s["gy"])
        self._linear(s["gy"], L["fc2"], h)
