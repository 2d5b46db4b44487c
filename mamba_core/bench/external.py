"""External rows: the tools users have today, timed in the same process, on the same inputs' sizes.

- ``hf-transformers`` (CPU): transformers' torch path, MambaForCausalLM (Mamba-1) and
  Mamba2ForCausalLM (Mamba-2) with random weights from a config matching ours; prefill and
  decode rows (decode through ``generate`` from a one-token prompt, greedy, fixed length).
- ``mamba3-ssm`` (CPU): the third-party PyPI package of that name (not by the Mamba authors; its
  recurrence and MIMO state differ from the official Mamba-3, so it is a speed reference only);
  prefill and decode rows for Mamba-3 SISO and MIMO.
- ``mamba_ssm`` (GPU): the official kernels where importable (e.g. a source checkout on
  PYTHONPATH): ``selective_scan_fn`` (Mamba-1), ``mamba_chunk_scan_combined`` (Mamba-2),
  ``selective_state_update`` (Mamba-1/2 step), ``mamba3_siso_combined`` (Mamba-3 SISO) when present.

Every row is marked external; a missing package or an unsupported row raises ``Skip`` with the
reason, which the report prints instead of a number. Every import is guarded.
"""

from __future__ import annotations

import importlib
import inspect
import os

import numpy as np


class Skip(Exception):
    """A row that cannot run here; the message says why."""


class ExternalTarget:
    name = "external"
    kind = "torch-cpu"
    external = True
    #: why the whole target cannot run here ("" when it can)
    unavailable = ""
    #: the rows it has: (level, family, mode) triples are kept when family in families and mode in modes
    families: tuple = ()
    modes: tuple = ()

    def applies(self, level, family, mode) -> bool:
        return level in self.levels and family in self.families and mode in self.modes

    levels: tuple = ()

    def op(self, bench, shapes, inputs):
        raise Skip("no op-level rows")

    def model(self, task):
        raise Skip("no model-level rows")


def _torch_cpu():
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"torch is not importable ({type(exc).__name__}: {exc})") from None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


# ---- HF transformers (CPU torch path) ---------------------------------------------------------
class HFTransformers(ExternalTarget):
    kind = "torch-cpu"
    levels, families, modes = ("model",), ("mamba1", "mamba2"), ("prefill", "decode")

    def __init__(self):
        self.name = "hf-transformers"
        try:
            tf = importlib.import_module("transformers")
            importlib.import_module("torch")
            self.name = f"hf-transformers {tf.__version__}"
        except Exception as exc:  # noqa: BLE001
            self.unavailable = (f"transformers is not importable ({type(exc).__name__}: {exc}); "
                                "pip install transformers (with a CPU torch) to add these rows")

    def _build(self, family, size):
        torch = _torch_cpu()
        import transformers as tf

        torch.manual_seed(0)
        common = dict(vocab_size=size.vocab_size, hidden_size=size.d_model, num_hidden_layers=size.n_layer,
                      expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True, tie_word_embeddings=True)
        if family == "mamba1":
            cfg = tf.MambaConfig(state_size=16, time_step_rank=-(-size.d_model // 16), **common)
            model = tf.MambaForCausalLM(cfg)
        elif family == "mamba2":
            N = size.d_state or 128
            P = size.headdim or 64
            cfg = tf.Mamba2Config(state_size=N, head_dim=P, num_heads=2 * size.d_model // P, n_groups=1,
                                  chunk_size=256, **common)
            model = tf.Mamba2ForCausalLM(cfg)
        else:
            raise Skip(f"transformers has no {family} model")
        model.eval()
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        return torch, model

    def model(self, task):
        if self.unavailable:
            raise Skip(self.unavailable)
        if task.task == "train":
            raise Skip("training step not measured for external rows")
        torch, model = self._build(task.family, task.size)
        rng = np.random.default_rng(1)
        if task.task == "prefill":
            ids = torch.from_numpy(rng.integers(1, task.size.vocab_size, (task.batch, task.length)))

            def run():
                with torch.no_grad():
                    return model(ids, logits_to_keep=1, use_cache=False).logits
            return run
        ids = torch.from_numpy(rng.integers(1, task.size.vocab_size, (task.batch, 1)))
        n = task.length

        def run():  # one-token prompt + (n - 1) cached steps = n forward calls
            with torch.no_grad():
                return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)
        return run


# ---- the third-party mamba3-ssm package (CPU) -------------------------------------------------
class Mamba3SSM(ExternalTarget):
    kind = "torch-cpu"
    levels, families, modes = ("model",), ("mamba3", "mamba3_mimo"), ("prefill", "decode")

    def __init__(self):
        self.name = "mamba3-ssm"
        try:
            from importlib.metadata import version

            importlib.import_module("mamba3_ssm")
            self.name = f"mamba3-ssm {version('mamba3-ssm')} (third-party)"
        except Exception as exc:  # noqa: BLE001
            self.unavailable = (f"the mamba3-ssm package is not importable ({type(exc).__name__}: {exc}); "
                                "pip install mamba3-ssm einops to add these rows")

    def model(self, task):
        if self.unavailable:
            raise Skip(self.unavailable)
        if task.family not in ("mamba3", "mamba3_mimo"):
            raise Skip("Mamba-3 only")
        if task.task == "train":
            raise Skip("training step not measured for external rows")
        torch = _torch_cpu()
        from mamba3_ssm import MambaConfig, MambaLMHeadModel

        torch.manual_seed(0)
        ssm = {"d_state": task.size.d_state or 128, "headdim": task.size.headdim or 64, "expand": 2}
        if task.family == "mamba3_mimo":
            ssm.update(is_mimo=True, mimo_rank=4)
        m = MambaLMHeadModel(MambaConfig(d_model=task.size.d_model, n_layer=task.size.n_layer,
                                         vocab_size=task.size.vocab_size, ssm_cfg=ssm)).eval()
        rng = np.random.default_rng(1)
        if task.task == "prefill":
            ids = torch.from_numpy(rng.integers(1, task.size.vocab_size, (task.batch, task.length)))

            def run():  # the package's forward, with the head on the last position only (as ours)
                with torch.no_grad():
                    x = m.embedding(ids)
                    for blk in m.layers:
                        x = blk(x)
                    return m.lm_head(m.norm_f(x[:, -1:]))
            return run
        toks = torch.from_numpy(rng.integers(1, task.size.vocab_size, (task.length, task.batch)))
        states = [list(blk.mixer.allocate_inference_cache(task.batch)) for blk in m.layers]

        def run():  # the layers' own step(), task.length tokens
            with torch.no_grad():
                logits = None
                for t in range(task.length):
                    x = m.embedding(toks[t])
                    for blk, st in zip(m.layers, states):
                        y, *new = blk.mixer.step(blk.norm(x), *st)
                        st[:] = new
                        x = x + y
                    logits = m.lm_head(m.norm_f(x))
                return logits
        return run


# ---- the official mamba_ssm kernels (GPU) ------------------------------------------------------
def _import(path, attr):
    try:
        return getattr(importlib.import_module(path), attr)
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"mamba_ssm: cannot import {path}.{attr} ({type(exc).__name__}: {exc})") from None


class MambaSSMOfficial(ExternalTarget):
    kind = "torch-cuda"
    levels, families, modes = ("op",), ("mamba1", "mamba2", "mamba3"), ("fwd", "fwd+bwd", "step")

    def __init__(self):
        self.name = "mamba_ssm (official)"
        try:
            torch = importlib.import_module("torch")
            if not torch.cuda.is_available():
                self.unavailable = "mamba_ssm rows need a CUDA GPU (none visible to torch)"
                return
            ms = importlib.import_module("mamba_ssm")
            self.name = f"mamba_ssm {getattr(ms, '__version__', '?')} (official)"
        except Exception as exc:  # noqa: BLE001
            self.unavailable = (f"mamba_ssm is not importable ({type(exc).__name__}: {exc}); put a source "
                                "checkout of state-spaces/mamba on PYTHONPATH (or pip install mamba-ssm)")

    def op(self, bench, s, a):
        if self.unavailable:
            raise Skip(self.unavailable)
        import torch

        dev = "cuda"
        grad = bench.mode == "fwd+bwd"

        def T(name, req=False, arr=None):
            t = torch.from_numpy(np.ascontiguousarray(a[name] if arr is None else arr)).to(dev)
            return t.requires_grad_(req and grad)

        fam, mode = bench.family, bench.mode
        if fam == "mamba1" and mode in ("fwd", "fwd+bwd"):
            fn = _import("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")
            # official layout is channels-first: u, delta, z (B, E, L); B, C (B, G, N, L)
            u = T("u", True, a["u"].transpose(0, 2, 1))
            dl = T("delta", True, a["delta"].transpose(0, 2, 1))
            z = T("z", True, a["z"].transpose(0, 2, 1))
            Bm = T("B", True, a["B"].transpose(0, 2, 3, 1))
            Cm = T("C", True, a["C"].transpose(0, 2, 3, 1))
            A, D, db = T("A", True), T("D", True), T("delta_bias", True)
            dy = T("dy", arr=a["dy"].transpose(0, 2, 1)) if grad else None

            def run():
                y = fn(u, dl, A, Bm, Cm, D, z=z, delta_bias=db, delta_softplus=True)
                if grad:
                    torch.autograd.backward(y, dy)
                return y
            return run
        if fam in ("mamba1", "mamba2") and mode == "step":
            fn = _import("mamba_ssm.ops.triton.selective_state_update", "selective_state_update")
            if fam == "mamba1":
                st, x, dt, A = T("state"), T("u"), T("delta"), T("A")
                Bm, Cm = T("B", arr=a["B"][:, 0]), T("C", arr=a["C"][:, 0])
                D, z, db = T("D"), T("z"), T("delta_bias")
            else:
                H, P, N = s.H, s.P, s.N
                st, x = T("state"), T("x")
                dt = T("dt", arr=np.repeat(a["dt"][..., None], P, axis=-1))
                A = T("A", arr=np.broadcast_to(a["A"][:, None, None], (H, P, N)).copy())
                Bm, Cm, z = T("B"), T("C"), None
                D = T("D", arr=np.repeat(a["D"][:, None], P, axis=-1))
                db = T("dt_bias", arr=np.repeat(a["dt_bias"][:, None], P, axis=-1))
            return lambda: fn(st, x, dt, A, Bm, Cm, D=D, z=z, dt_bias=db, dt_softplus=True)
        if fam == "mamba2" and mode in ("fwd", "fwd+bwd"):
            fn = _import("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")
            x, dt, A, Bm, Cm = T("x", True), T("dt", True), T("A", True), T("B", True), T("C", True)
            D, db = T("D", True), T("dt_bias", True)
            dy = T("dy") if grad else None

            def run():
                y = fn(x, dt, A, Bm, Cm, a["chunk"], D=D, dt_bias=db, dt_softplus=True)
                if grad:
                    torch.autograd.backward(y, dy)
                return y
            return run
        if fam == "mamba3" and mode in ("fwd", "fwd+bwd"):
            fn = _import("mamba_ssm.ops.triton.mamba3.mamba3_siso_combined", "mamba3_siso_combined")
            params = list(inspect.signature(fn).parameters)
            if "Trap" not in params:
                raise Skip(f"mamba_ssm: mamba3_siso_combined has an unrecognised signature {params[:12]}")
            H, N = s.H, s.N
            S = max(N // 4, 1)
            rng = np.random.default_rng(0)
            # Q, K: one B/C head (B, L, 1, N) (the kernel adds per-head biases and rotates inside)
            Q, K = T("C", True, a["C"][:, :, 0, :1]), T("B", True, a["B"][:, :, 0, :1])
            V = T("x", True)
            ADT = T("A", True, (a["A"] * a["dt"]).transpose(0, 2, 1))
            DT = T("dt", True, a["dt"].transpose(0, 2, 1))
            trap = T("trap", True, np.log(a["trap"] / (1 - a["trap"])).transpose(0, 2, 1))  # logits
            qb = T("qb", True, np.ones((H, N), np.float32))
            kb = T("kb", True, np.ones((H, N), np.float32))
            ang = T("ang", True, rng.uniform(-1, 1, (s.B, s.L, H, S)).astype(np.float32))
            D = T("D", True)
            dy = T("dy", arr=a["dy"][:, :, 0]) if grad else None

            def run():
                y = fn(Q, K, V, ADT, DT, trap, qb, kb, ang, D=D, chunk_size=a["chunk"])
                y = y[0] if isinstance(y, tuple) else y
                if grad:
                    torch.autograd.backward(y, dy)
                return y
            return run
        raise Skip(f"mamba_ssm: no official kernel wired for {bench.key}")


def targets(device_kinds: set[str]) -> list[ExternalTarget]:
    """The external targets that fit this run: GPU kernels when a CUDA backend is benchmarked."""
    out = [HFTransformers(), Mamba3SSM()]
    if "torch-cuda" in device_kinds or "cupy" in device_kinds:
        out.append(MambaSSMOfficial())
    return out
