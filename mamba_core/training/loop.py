"""The training loop: ``train(model_cfg, train_cfg, out_dir, ...)``.

Each step: ``grad_accum`` micro-batches through ``lm.loss_and_grad`` (gradients averaged),
global-norm clipping, a NaN/inf check (stop before the update, naming the step, the last good
checkpoint untouched), AdamW at the scheduled learning rate. Validation loss on the held-out end
of the text every ``val_every`` steps; checkpoints every ``ckpt_every`` steps, at the end, at a
time-budget stop and on Ctrl-C. A resumed run continues bit-exactly: parameters and moments are
saved exactly, and the batch generator's state and position are restored.

Run directory: ``checkpoints/`` (see :mod:`.checkpoint`), ``loss.png``, ``metrics.json``,
``config.json`` (the model's, mamba_ssm layout).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

import numpy as np

from mamba_core.errors import ShapeError
from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.training import checkpoint as ckpt
from mamba_core.training import data as D
from mamba_core.training.errors import (CheckpointMismatchError, NonFiniteError, TrainConfigError,
                                        TrainingError)
from mamba_core.training.optim import AdamW, clip_by_global_norm, decays, lr_at


@dataclasses.dataclass
class TrainConfig:
    """Training settings. ``steps=None`` with a ``time_budget`` sizes the run to the budget."""

    steps: int | None = 200
    seq_len: int = 128
    batch: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int | None = None          # None: 10% of the steps, at most 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0                  # <= 0: no clipping
    seed: int = 0
    val_fraction: float = 0.05
    dtype: str = "float32"
    # not part of the trajectory (free to change on resume):
    val_every: int | None = None       # None: about 10 evaluations per run
    val_windows: int = 32
    ckpt_every: int | None = None      # None: = val_every
    time_budget: float | None = None   # seconds of this run, evaluations included

    def check(self) -> None:
        D.check_seq_len(self.seq_len)
        bad = []
        for f in ("batch", "grad_accum", "val_windows"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                bad.append(f"{f}={v!r} (must be a positive integer)")
        if self.steps is None and self.time_budget is None:
            bad.append("steps=None needs a time_budget")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            bad.append(f"steps={self.steps!r} (must be a positive integer)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad.append(f"lr={self.lr!r} (must be a finite number > 0)")
        if self.time_budget is not None and not self.time_budget > 0:
            bad.append(f"time_budget={self.time_budget!r} (seconds, must be > 0)")
        if self.dtype not in ("float32", "float64"):
            bad.append(f"dtype={self.dtype!r} (train in 'float32' or 'float64')")
        if bad:
            raise TrainConfigError("invalid training settings: " + "; ".join(bad))


#: fields that change what a run computes; a resumed run must have the same values.
TRAJECTORY = ("steps", "seq_len", "batch", "grad_accum", "lr", "min_lr_ratio", "warmup",
              "weight_decay", "beta1", "beta2", "eps", "clip", "seed", "val_fraction", "dtype")


@dataclasses.dataclass
class TrainResult:
    out_dir: str
    step: int                      # optimizer steps done in total
    losses: list                   # [(step, train loss)] of the whole run (resumes included)
    val_losses: list               # [(step, validation loss)]
    unigram: float                 # entropy (nats) of the byte frequencies of the train split
    tokens_per_s: float            # of this invocation's training steps
    n_params: int
    backend: str
    stopped: str                   # "done", "time budget", "stop_at_step", "interrupted"
    checkpoint: str | None
    params: dict = dataclasses.field(repr=False, default_factory=dict)
    train_config: TrainConfig | None = None

    @property
    def val_loss(self) -> float | None:
        return self.val_losses[-1][1] if self.val_losses else None


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; degrade to log lines
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")


def evaluate(be, params: dict, cfg: LMConfig, ids: np.ndarray, targets: np.ndarray, batch: int) -> float:
    """Mean cross-entropy (nats per token) over fixed windows, ``batch`` rows at a time."""
    total, count = 0.0, 0
    for i in range(0, ids.shape[0], batch):
        x, y = ids[i: i + batch], targets[i: i + batch]
        logits, _ = lm.forward(be, params, cfg, be.asarray(x))
        total += float(be.ops.cross_entropy(logits, be.asarray(y), -100, "mean")) * y.size
        count += y.size
    return total / count


def _resolve_backend(backend):
    if backend is None or isinstance(backend, str):
        from mamba_core.registry import get_backend

        return get_backend(backend)
    return backend


def train(model_cfg: LMConfig, tcfg: TrainConfig, out_dir: str, *, data: str | None = None,
          backend=None, resume: bool = False, quiet: bool = False, progress: bool | None = None,
          stop_at_step: int | None = None, preset: str | None = None,
          loss_and_grad: Callable | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train (or, with ``resume``, continue) a byte-level LM; see the module docstring.

    data: text file (None = the bundled corpus). backend: name, Backend, or None (best).
    progress: tqdm bar (default: when stderr is a TTY and not quiet). stop_at_step: stop and
    checkpoint once this many steps are done (an "interrupt" for tests). loss_and_grad: the
    gradient function (default ``lm.loss_and_grad``; tests plant NaNs through it).
    """
    tcfg = dataclasses.replace(tcfg)
    tcfg.check()
    be = _resolve_backend(backend)
    loss_and_grad = loss_and_grad or lm.loss_and_grad
    say = (lambda s: None) if quiet else log
    t_start = time.perf_counter()

    tokens = D.load_bytes(data)
    source = repr(data) if data else "the bundled corpus"
    train_tok, val_tok = D.split(tokens, tcfg.seq_len, tcfg.val_fraction, source)
    unigram = D.unigram_entropy(train_tok)
    if model_cfg.vocab_size < 256:
        raise TrainConfigError(f"vocab_size={model_cfg.vocab_size}: byte-level training needs >= 256")
    val_x, val_y = D.val_windows(val_tok, tcfg.seq_len, tcfg.val_windows)

    root = os.path.join(out_dir, "checkpoints")
    os.makedirs(out_dir, exist_ok=True)
    state = None
    if resume:
        ck_path, p_np, opt_np, state = ckpt.load(root)
        _check_resume(model_cfg, tcfg, state, ck_path)
        tcfg = dataclasses.replace(tcfg, steps=state["train_config"]["steps"],
                                   warmup=state["train_config"]["warmup"])
        try:
            lm.check_params(model_cfg, p_np)
        except ShapeError as exc:
            raise CheckpointMismatchError(f"checkpoint {ck_path!r}: {exc}") from None
    else:
        existing = ckpt.latest_name(root)
        if existing is not None:
            raise TrainingError(
                f"{out_dir!r} already holds a run (checkpoint {existing}); pass --resume to "
                "continue it, or choose a new --out directory"
            )
        p_np = lm.init_params(model_cfg, np.random.default_rng(tcfg.seed))
    params = lm.to_backend(be, p_np, tcfg.dtype)
    n_params = int(sum(int(np.prod(v.shape)) for v in p_np.values()))

    opt = AdamW(be, params, {k: decays(model_cfg, k) for k in params},
                betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps, weight_decay=tcfg.weight_decay)
    batches = D.Batches(train_tok, tcfg.batch, tcfg.seq_len, tcfg.seed)
    history = {"train": [], "val": []}
    step = 0
    if state is not None:
        opt.load_state(state["optimizer_step"], opt_np)
        batches.load_state(state["data"])
        history = state["history"]
        step = int(state["step"])

    tokens_per_step = tcfg.batch * tcfg.grad_accum * tcfg.seq_len
    if tcfg.steps is None:  # size the run to the time budget with a probe that changes nothing
        x, y = val_x[: tcfg.batch], val_y[: tcfg.batch]
        loss_and_grad(be, params, model_cfg, be.asarray(x), be.asarray(y))  # warm-up / compile
        t = time.perf_counter()
        loss_and_grad(be, params, model_cfg, be.asarray(x), be.asarray(y))
        per_step = (time.perf_counter() - t) * tcfg.grad_accum * (tcfg.batch / max(x.shape[0], 1))
        left = tcfg.time_budget - (time.perf_counter() - t_start)
        tcfg.steps = max(int(0.85 * left / max(per_step, 1e-6)), 1)
        say(f"time budget {tcfg.time_budget:.0f} s: one step takes ~{per_step * 1e3:.0f} ms, "
            f"so the schedule is {tcfg.steps} steps")
    if tcfg.warmup is None:
        tcfg.warmup = min(100, max(tcfg.steps // 10, 1))
    val_every = tcfg.val_every or max(tcfg.steps // 10, 1)
    ckpt_every = tcfg.ckpt_every or val_every

    def ck_state(at_step, bstate, opt_t, hist):
        return {"step": at_step, "model_config": model_cfg.to_dict(), "preset": preset,
                "train_config": dataclasses.asdict(tcfg), "optimizer_step": opt_t, "data": bstate,
                "history": hist, "unigram": unigram, "backend": be.name,
                "data_source": os.path.abspath(data) if data else "bundled:" + D.BUNDLED_NAME}

    last_ckpt = os.path.join(root, ckpt.latest_name(root)) if ckpt.latest_name(root) else None

    def save(at_step, p, m, v, opt_t, bstate, hist):
        nonlocal last_ckpt
        arrays = {f"m.{k}": be.to_numpy(a) for k, a in m.items()}
        arrays.update({f"v.{k}": be.to_numpy(a) for k, a in v.items()})
        last_ckpt = ckpt.save(root, at_step, {k: be.to_numpy(a) for k, a in p.items()}, arrays,
                              ck_state(at_step, bstate, opt_t, hist))

    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model_cfg.to_dict(), f, indent=1)
    say(f"{n_params / 1e6:.2f}M params on backend {be.name}; {train_tok.size:,} train / "
        f"{val_tok.size:,} validation bytes from {source}; unigram baseline {unigram:.3f} nats")
    if state is not None:
        say(f"resumed from {last_ckpt} at step {step}/{tcfg.steps}")

    show_bar = (not quiet) and (progress if progress is not None else sys.stderr.isatty())
    bar = _bar(tcfg.steps, step, show_bar)
    log_every = max(tcfg.steps // 20, 1)
    good = (step, params, dict(opt.m), dict(opt.v), opt.t, batches.state(), len(history["train"]))
    stopped, t_train, tokens_run = "done", 0.0, 0
    try:
        while step < tcfg.steps:
            if stop_at_step is not None and step >= stop_at_step:
                stopped = "stop_at_step"
                break
            if tcfg.time_budget is not None and time.perf_counter() - t_start > tcfg.time_budget:
                stopped = "time budget"
                break
            t0 = time.perf_counter()
            lr = lr_at(step, tcfg.lr, tcfg.warmup, tcfg.steps, tcfg.min_lr_ratio)
            grads, loss = None, 0.0
            for _ in range(tcfg.grad_accum):
                x, y = batches.next()
                l_, g = loss_and_grad(be, params, model_cfg, be.asarray(x), be.asarray(y))
                loss += l_
                grads = g if grads is None else {k: grads[k] + g[k] for k in grads}
            if tcfg.grad_accum > 1:
                loss /= tcfg.grad_accum
                grads = {k: v * (1.0 / tcfg.grad_accum) for k, v in grads.items()}
            grads, gnorm = clip_by_global_norm(be.xp, grads, tcfg.clip)
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                what = "loss" if not math.isfinite(loss) else "gradient norm"
                where = (f"the last good checkpoint {last_ckpt} is intact" if last_ckpt else
                         "no checkpoint had been written yet")
                raise NonFiniteError(
                    f"non-finite {what} at step {step + 1} (loss={loss}, grad norm={gnorm}); "
                    f"training stopped before applying this update and {where}. Lower --lr or "
                    "--clip and continue with --resume, or check the data.",
                    step=step + 1, checkpoint=last_ckpt)
            params = opt.update(params, grads, lr)
            step += 1
            history["train"].append([step, loss])
            dt = time.perf_counter() - t0
            t_train += dt
            tokens_run += tokens_per_step
            good = (step, params, dict(opt.m), dict(opt.v), opt.t, batches.state(), len(history["train"]))
            tps = tokens_run / max(t_train, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"loss {loss:.3f}, {tps:,.0f} tok/s", refresh=False)
            elif step % log_every == 0 or step == tcfg.steps:
                eta = (tcfg.steps - step) * t_train / max(tokens_run // tokens_per_step, 1)
                say(f"step {step}/{tcfg.steps}  loss {loss:.3f}  lr {lr:.2e}  {tps:,.0f} tok/s  "
                    f"ETA {eta:.0f} s")
            if step % val_every == 0 or step == tcfg.steps:
                v = evaluate(be, params, model_cfg, val_x, val_y, tcfg.batch)
                history["val"].append([step, v])
                msg = f"step {step}: validation loss {v:.3f} nats (unigram {unigram:.3f})"
                (bar.write(msg) if bar is not None else say(msg))
            if step % ckpt_every == 0 or step == tcfg.steps:
                save(step, params, opt.m, opt.v, opt.t, batches.state(), history)
    except KeyboardInterrupt:
        stopped = "interrupted"
        s, p, m, v, t, bstate, n_hist = good
        hist = {"train": history["train"][:n_hist], "val": [e for e in history["val"] if e[0] <= s]}
        save(s, p, m, v, t, bstate, hist)
        say(f"\ninterrupted: checkpoint at step {s} saved in {last_ckpt}; continue with --resume")
    finally:
        if bar is not None:
            bar.close()
    if stopped in ("stop_at_step", "time budget"):
        save(step, params, opt.m, opt.v, opt.t, batches.state(), history)
    if stopped == "time budget" and (not history["val"] or history["val"][-1][0] != step):
        v = evaluate(be, params, model_cfg, val_x, val_y, tcfg.batch)
        history["val"].append([step, v])

    from mamba_core.training.plot import loss_curve_png

    loss_curve_png(os.path.join(out_dir, "loss.png"), history["train"], history["val"], unigram)
    tps = tokens_run / t_train if t_train else 0.0
    result = TrainResult(out_dir=out_dir, step=step, losses=[tuple(e) for e in history["train"]],
                         val_losses=[tuple(e) for e in history["val"]], unigram=unigram,
                         tokens_per_s=tps, n_params=n_params, backend=be.name, stopped=stopped,
                         checkpoint=last_ckpt, params=params, train_config=tcfg)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({"step": step, "steps": tcfg.steps, "stopped": stopped, "backend": be.name,
                   "n_params": n_params, "tokens_per_s": tps, "unigram": unigram,
                   "val_loss": result.val_loss, "train_loss": history["train"][-1][1] if history["train"] else None,
                   "checkpoint": last_ckpt}, f, indent=1)
    return result


def _check_resume(model_cfg: LMConfig, tcfg: TrainConfig, state: dict, path: str) -> None:
    saved_m = state.get("model_config", {})
    now_m = model_cfg.to_dict()
    diff = sorted(k for k in set(saved_m) | set(now_m) if saved_m.get(k) != now_m.get(k))
    if diff:
        parts = ", ".join(f"{k}: checkpoint {saved_m.get(k)!r} vs now {now_m.get(k)!r}" for k in diff[:6])
        raise CheckpointMismatchError(
            f"checkpoint {path!r} was written for another model ({parts}"
            f"{' ...' if len(diff) > 6 else ''}). Resume with the same preset "
            f"({state.get('preset') or 'as saved'}) or start a new run with another --out."
        )
    saved_t = state.get("train_config", {})
    now_t = dataclasses.asdict(tcfg)
    diff = [k for k in TRAJECTORY
            if now_t.get(k) is not None and saved_t.get(k) is not None and now_t[k] != saved_t[k]]
    if diff:
        parts = ", ".join(f"{k}: checkpoint {saved_t[k]!r} vs now {now_t[k]!r}" for k in diff)
        raise CheckpointMismatchError(
            f"checkpoint {path!r} was written with other training settings ({parts}); a resumed "
            "run must keep them to continue the same run. Drop those options (the checkpoint's "
            "values are used) or start a new run with another --out."
        )
