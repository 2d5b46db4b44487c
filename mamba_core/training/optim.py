"""AdamW with decoupled weight decay, warmup + cosine schedule, global-norm clipping.

Everything runs on backend arrays through ``be.xp`` (array API), so any backend trains with
the same code. Python floats multiply arrays, which keeps their dtype (NumPy >= 2, torch, CuPy).

AdamW (Loshchilov & Hutter; torch.optim.AdamW's arithmetic), for step t = 1, 2, ...:
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    p = p (1 - lr wd)  -  (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
with wd = 0 for the parameters of the no-decay set (:func:`decays`).
"""

from __future__ import annotations

import math
import re

from mamba_core.training.errors import TrainConfigError

_LAYER_MIXER = re.compile(r"^backbone\.layers\.\d+\.mixer\.(.+)$")


def decays(cfg, name: str) -> bool:
    """Whether parameter ``name`` of an LM with config ``cfg`` gets weight decay.

    No decay: every ``*.bias``, every norm weight (``norm``, ``norm2``, ``norm_f``) and what the
    mixer module's ``no_weight_decay`` names (A_log, D, dt_bias, B/C biases and norms, ...).
    The embedding (and an untied head) and all other weights decay, as in mamba_ssm.
    """
    if name.endswith(".bias"):
        return False
    if name == "backbone.norm_f.weight" or re.fullmatch(r"backbone\.layers\.\d+\.norm2?\.weight", name):
        return False
    m = _LAYER_MIXER.match(name)
    if m and cfg.mixer.no_weight_decay(m.group(1)):
        return False
    return True


def lr_at(step: int, lr: float, warmup: int, total: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps
    to ``lr``, then a cosine from ``lr`` down to ``lr * min_lr_ratio`` at step ``total - 1``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - 1 - warmup, 1)
    frac = min(max((step - warmup) / span, 0.0), 1.0)
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def global_norm(xp, grads: dict) -> float:
    """sqrt(sum of squares of every gradient), summed in sorted-key order (deterministic)."""
    sq = [xp.sum(grads[k] * grads[k]) for k in sorted(grads)]
    return float(xp.sqrt(xp.sum(xp.stack(sq))))


def clip_by_global_norm(xp, grads: dict, max_norm: float | None) -> tuple[dict, float]:
    """Scale all gradients by min(1, max_norm / norm). Returns (grads, norm before clipping).

    A non-finite norm is returned as is with the gradients unscaled (the caller stops)."""
    norm = global_norm(xp, grads)
    if max_norm is None or max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return grads, norm
    scale = max_norm / (norm + 1e-6)
    return {k: g * scale for k, g in grads.items()}, norm


class AdamW:
    """AdamW over a dict of backend arrays. ``state`` is (step, m, v) with m, v like params."""

    def __init__(self, be, params: dict, decay: dict, *, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise TrainConfigError(f"betas={tuple(betas)!r}: each must be in [0, 1)")
        if eps <= 0 or weight_decay < 0:
            raise TrainConfigError(f"eps={eps!r}, weight_decay={weight_decay!r}: eps must be > 0 "
                                   "and weight_decay >= 0")
        self.be = be
        self.b1, self.b2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decay = dict(decay)
        xp = be.xp
        self.t = 0
        self.m = {k: xp.zeros_like(v) for k, v in params.items()}
        self.v = {k: xp.zeros_like(v) for k, v in params.items()}

    def update(self, params: dict, grads: dict, lr: float) -> dict:
        """One step: new params (the old dict is not modified)."""
        xp = self.be.xp
        self.t += 1
        b1, b2 = self.b1, self.b2
        step_size = lr / (1.0 - b1 ** self.t)
        root_bc2 = math.sqrt(1.0 - b2 ** self.t)
        new = {}
        for k, p in params.items():
            g = grads[k]
            m = self.m[k] * b1 + g * (1.0 - b1)
            v = self.v[k] * b2 + (g * g) * (1.0 - b2)
            self.m[k], self.v[k] = m, v
            if self.decay.get(k, True) and self.weight_decay:
                p = p * (1.0 - lr * self.weight_decay)
            new[k] = p - (m / (xp.sqrt(v) / root_bc2 + self.eps)) * step_size
        return new

    # ---- state for checkpoints (arrays go out as NumPy, exactly) --------------------------
    def state_arrays(self) -> dict:
        be = self.be
        out = {f"m.{k}": be.to_numpy(v) for k, v in self.m.items()}
        out.update({f"v.{k}": be.to_numpy(v) for k, v in self.v.items()})
        return out

    def load_state(self, t: int, arrays: dict) -> None:
        missing = [k for k in self.m if f"m.{k}" not in arrays or f"v.{k}" not in arrays]
        if missing:
            from mamba_core.training.errors import CheckpointMismatchError

            raise CheckpointMismatchError(
                f"optimizer state lacks moments for {missing[:5]}; the checkpoint was written for "
                "another model. Start a new run (another --out) or resume with the same preset."
            )
        self.t = int(t)
        for k in self.m:
            dt = str(self.m[k].dtype).replace("torch.", "")
            self.m[k] = self.be.asarray(arrays[f"m.{k}"], dt)
            self.v[k] = self.be.asarray(arrays[f"v.{k}"], dt)
