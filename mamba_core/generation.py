"""Text generation: batched prompts of different lengths, greedy or sampled, streaming.

    generate(model, prompts, config=None, *, tokenizer=None, **options) -> list[list[int]]
    stream(model, prompts, config=None, *, tokenizer=None, as_text=None, **options)
        -> iterator over steps; each step is a list with one entry per prompt
    GenerationConfig(max_new_tokens, do_sample, temperature, top_k, top_p, min_p,
                     repetition_penalty, seed, stop_tokens, stop_strings)
    prefill(model, prompts) -> (logits (B, V'), cache)

``model`` is a ``mamba_core.models.lm.MambaLM`` (anything with ``backend``, ``cfg``,
``forward(ids, cache, last_only)`` and ``step(ids, cache)``). ``prompts`` are lists of token
ids, or strings when a ``tokenizer`` (``mamba_core.tokenizer``) is given; a single prompt (one
string, or one flat list of ids) is taken as a batch of one.

**Prefill, then steps.** An SSM has no attention mask, so a padding token would leak into the
state. Prompts are therefore never padded: prompts of equal length are prefilled together with
the parallel ``forward(..., last_only=True)``, each group separately, and the per-layer caches
(batch-first arrays) are concatenated along the batch in prompt order. Decoding then runs
``step`` on the whole batch. A row ends when it produces a stop token, when its decoded text
contains a stop string, or after ``max_new_tokens``; finished rows are **dropped** from the
batch (their cache rows are taken out with ``xp.take``), so they cost nothing afterwards and
cannot influence anything. No step is run after the last token anyone needs. When the backend
offers a decoder over static caches (``Backend.static_decoder``: CUDA graphs on torch_triton,
preallocated buffers on cpu_numpy), the steps run through it; ``MAMBA_NO_STATIC_DECODER=1``
runs plain ``step`` instead. The tokens are the same either way.

**Logits processing on the host.** At each step the (B, V') logits are moved to NumPy with
``be.to_numpy`` and processed there. Why NumPy rather than ``be.xp``: the logits are small
(one row per prompt); the host needs the chosen ids anyway (stop tokens, streaming, the next
step's input), so the copy happens regardless; sampling must use a seeded NumPy Generator so
that a seed gives the same draws on every backend; and sort / cumulative sum / take_along_axis
with stable tie-breaking behave the same everywhere. Only the first ``vocab_size`` logits are
kept: ids of the padded vocabulary (vocab_size..V'-1) are never produced.

**Order of processing** (as transformers): repetition penalty, then (sampling only)
temperature, top-k, top-p, min-p, then a draw. Greedy (``do_sample`` false, or temperature 0)
takes the argmax after the repetition penalty. The penalty is applied in the logits' precision
(float32 for float32/bf16/fp16 models, as transformers casts to float32; float64 for float64);
everything after it runs in float64.

- repetition penalty r (CTRL rule): for every id present in the row's prompt or generated so
  far, a logit s > 0 becomes s / r and s <= 0 becomes s * r. r = 1 does nothing.
- temperature T: logits / T (after subtracting the row maximum, which changes no probability).
- top-k: keep the k largest logits, exactly k: ties at the boundary go to the lower id (the
  argmax convention), so top_k=1 is greedy. (transformers keeps every id tied with the k-th.)
  0 disables it. Being order-based it commutes with the temperature.
- top-p: sort by probability (ties: lower id first), keep the smallest prefix whose cumulative
  probability reaches p (up to a 1e-12 rounding allowance), always at least one id. p=1 keeps
  all.
- min-p m: drop ids whose probability is below m times the top probability. 0 disables it.
- draw: one uniform number per active row from ``numpy.random.default_rng(seed)``, inverted
  through the cumulative distribution; an id of probability zero is never drawn.

**Defaults.** Greedy unless asked to sample: ``do_sample=None`` means "sample when any of
temperature, top_k, top_p or min_p is given", and temperature 0 is always greedy.
``seed=0`` by default, so sampling is reproducible; ``seed=None`` draws fresh entropy.
``stop_tokens=None`` means the tokenizer's eos id when a tokenizer is given, else none.
The returned ids are the new tokens only; a stop token that ended a row is included (as in
transformers' output).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Iterator, Sequence

import numpy as np

from mamba_core.backend import static_decoder_of, static_decoders_enabled
from mamba_core.errors import ConfigError, ShapeError

__all__ = [
    "GenerationConfig", "generate", "stream", "prefill",
    "apply_repetition_penalty", "apply_temperature", "top_k_filter", "top_p_filter",
    "min_p_filter", "softmax", "process_logits", "select_tokens",
]


# ---- configuration ---------------------------------------------------------------------------
def _bad(name: str, value, why: str) -> ConfigError:
    return ConfigError(f"generation option {name}={value!r}: {why}")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What to generate and how. See the module docstring for each option's exact meaning.

    max_new_tokens      >= 0, new tokens per prompt at most
    do_sample           None (sample iff temperature/top_k/top_p/min_p given), True, False
    temperature         >= 0 (None: 1.0 when sampling); 0 means greedy
    top_k               >= 0 (None or 0: off)
    top_p               in (0, 1] (None or 1: off)
    min_p               in [0, 1] (None or 0: off)
    repetition_penalty  > 0 (1: off); applies to greedy decoding too
    seed                int >= 0, or None for fresh entropy
    stop_tokens         ids that end a row (None: the tokenizer's eos id, if any)
    stop_strings        texts that end a row once its decoded output contains one (needs a tokenizer)
    """

    max_new_tokens: int = 32
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = 0
    stop_tokens: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self):
        if not (_is_int(self.max_new_tokens) and self.max_new_tokens >= 0):
            raise _bad("max_new_tokens", self.max_new_tokens, "must be an integer >= 0")
        if self.do_sample not in (None, True, False):
            raise _bad("do_sample", self.do_sample, "must be True, False or None (automatic)")
        if self.temperature is not None and not (_is_real(self.temperature) and self.temperature >= 0):
            raise _bad("temperature", self.temperature, "must be a finite number >= 0 (0 means greedy)")
        if self.top_k is not None and not (_is_int(self.top_k) and self.top_k >= 0):
            raise _bad("top_k", self.top_k, "must be an integer >= 0 (0 disables it)")
        if self.top_p is not None and not (_is_real(self.top_p) and 0 < self.top_p <= 1):
            raise _bad("top_p", self.top_p, "must be in (0, 1] (1 disables it)")
        if self.min_p is not None and not (_is_real(self.min_p) and 0 <= self.min_p <= 1):
            raise _bad("min_p", self.min_p, "must be in [0, 1] (0 disables it)")
        if not (_is_real(self.repetition_penalty) and self.repetition_penalty > 0):
            raise _bad("repetition_penalty", self.repetition_penalty, "must be a finite number > 0 (1 disables it)")
        if self.seed is not None and not (_is_int(self.seed) and self.seed >= 0):
            raise _bad("seed", self.seed, "must be an integer >= 0, or None for fresh entropy")
        if self.stop_tokens is not None:
            st = (self.stop_tokens,) if _is_int(self.stop_tokens) else tuple(self.stop_tokens)
            if not all(_is_int(t) and t >= 0 for t in st):
                raise _bad("stop_tokens", self.stop_tokens, "must be token ids (integers >= 0)")
            object.__setattr__(self, "stop_tokens", tuple(int(t) for t in st))
        ss = (self.stop_strings,) if isinstance(self.stop_strings, str) else tuple(self.stop_strings)
        if not all(isinstance(s, str) and s for s in ss):
            raise _bad("stop_strings", self.stop_strings, "must be non-empty strings")
        object.__setattr__(self, "stop_strings", ss)

    @property
    def sampling(self) -> bool:
        """True when tokens are drawn, False for greedy argmax."""
        if self.temperature == 0 or self.do_sample is False:
            return False
        if self.do_sample:
            return True
        return any(v is not None for v in (self.temperature, self.top_k, self.top_p, self.min_p))


def _config(config: GenerationConfig | None, options: dict) -> GenerationConfig:
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown generation option(s) {unknown}; the options are {sorted(names)}")
    if config is None:
        return GenerationConfig(**options)
    return dataclasses.replace(config, **options) if options else config


# ---- logits processors (NumPy, rows = batch) -------------------------------------------------
def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL rule. logits: (B, V) float; seen: (B, V) bool, ids present in prompt + output.
    Seen logits s > 0 become s / penalty, s <= 0 become s * penalty; others are unchanged."""
    if penalty == 1.0:
        return logits
    p = logits.dtype.type(penalty)
    return np.where(seen, np.where(logits > 0, logits / p, logits * p), logits)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(logits - row max) / temperature, temperature > 0. The shift changes no probability
    and keeps small temperatures from overflowing."""
    m = np.max(logits, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (logits - m) / temperature


def _order(scores: np.ndarray) -> np.ndarray:
    """Per row, ids from the largest score down; ties keep the lower id first."""
    return np.argsort(-scores, axis=-1, kind="stable")


def top_k_filter(logits: np.ndarray, k: int | None) -> np.ndarray:
    """Keep exactly the k largest logits per row (ties: lower id), the rest -> -inf."""
    if not k or k >= logits.shape[-1]:
        return logits
    drop = _order(logits)[:, k:]
    out = logits.copy()
    np.put_along_axis(out, drop, -np.inf, axis=-1)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64; -inf logits get probability exactly 0."""
    z = logits.astype(np.float64)
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


_TOP_P_ROUNDING = 1e-12


def top_p_filter(logits: np.ndarray, p: float | None) -> np.ndarray:
    """Keep, per row, the smallest set of most probable ids whose total probability reaches p
    (ties: lower id first; at least one id); the rest -> -inf. p = 1 keeps everything."""
    if p is None or p >= 1:
        return logits
    probs = softmax(logits)
    order = _order(probs)
    sp = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sp, axis=-1) - sp  # probability mass ranked strictly above each id
    before[:, 0] = 0.0
    keep_sorted = before < p - _TOP_P_ROUNDING
    keep_sorted[:, 0] = True
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def min_p_filter(logits: np.ndarray, min_p: float | None) -> np.ndarray:
    """Drop ids whose probability is below min_p times the row's top probability."""
    if not min_p:
        return logits
    probs = softmax(logits)
    keep = probs >= min_p * np.max(probs, axis=-1, keepdims=True)
    return np.where(keep, logits, -np.inf)


def process_logits(logits: np.ndarray, config: GenerationConfig, seen: np.ndarray | None = None) -> np.ndarray:
    """The full chain on (B, V) logits: penalty, then for sampling temperature, top-k, top-p,
    min-p. Returns float64 logits with -inf for dropped ids (greedy: the penalised logits)."""
    if config.repetition_penalty != 1.0:
        if seen is None:
            raise ValueError("process_logits: repetition_penalty needs `seen` (B, V) bool")
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    logits = logits.astype(np.float64)
    if not config.sampling:
        return logits
    logits = top_k_filter(logits, config.top_k)  # order-based: commutes with the temperature
    t = 1.0 if config.temperature is None else float(config.temperature)
    logits = apply_temperature(logits, t)
    logits = top_p_filter(logits, config.top_p)
    return min_p_filter(logits, config.min_p)


def select_tokens(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator,
                  seen: np.ndarray | None = None) -> np.ndarray:
    """(B, V) logits -> (B,) int64 ids: argmax for greedy, else one draw per row from ``rng``."""
    z = process_logits(logits, config, seen)
    if not config.sampling:
        return np.argmax(z, axis=-1).astype(np.int64)
    probs = softmax(z)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(z.shape[0]) * cdf[:, -1]
    idx = np.sum(cdf <= u[:, None], axis=-1)  # the first id whose cdf exceeds u
    last = z.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)  # rounding guard
    return np.minimum(idx, last).astype(np.int64)


# ---- prompts ---------------------------------------------------------------------------------
def _as_id_list(p, i: int, tokenizer) -> list[int]:
    if isinstance(p, str):
        if tokenizer is None:
            raise ConfigError(
                f"prompt {i} is a string but no tokenizer was given: pass tokenizer= "
                "(mamba_core.tokenizer.load_tokenizer(path), or ByteTokenizer() for byte-level models)"
            )
        return list(tokenizer.encode(p))
    arr = np.asarray(p)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ShapeError(f"prompt {i}: expected a string or a flat sequence of token ids, got {type(p).__name__} "
                         f"with shape {arr.shape} and dtype {arr.dtype}")
    return [int(t) for t in arr]


def _prompts(prompts, tokenizer, vocab: int) -> tuple[list[list[int]], bool]:
    """-> (list of id lists, whether the prompts were text)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif isinstance(prompts, np.ndarray):
        prompts = list(prompts) if prompts.ndim == 2 else [prompts]
    else:
        prompts = list(prompts)
        if prompts and all(_is_int(t) or isinstance(t, np.integer) for t in prompts):
            prompts = [prompts]
    if not prompts:
        raise ShapeError("generate: no prompts given; pass a list of prompts (strings or lists of ids)")
    text = all(isinstance(p, str) for p in prompts)
    out = [_as_id_list(p, i, tokenizer) for i, p in enumerate(prompts)]
    for i, ids in enumerate(out):
        if not ids:
            raise ShapeError(f"prompt {i} is empty: a prompt needs at least one token (e.g. a BOS or newline id)")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ShapeError(f"prompt {i}: token id(s) {bad[:5]} outside the model's vocabulary 0..{vocab - 1}")
    return out, text


# ---- prefill and the decoding loop -----------------------------------------------------------
def _take_rows(be, cache: list, rows) -> list:
    idx = be.asarray(np.asarray(rows, dtype=np.int64))
    return [{k: be.xp.take(v, idx, axis=0) for k, v in layer.items()} for layer in cache]


def prefill(model, prompts: Sequence[Sequence[int]]):
    """Run the parallel forward over prompts of any lengths without padding.

    prompts: B lists of ids. Equal lengths are prefilled together with
    ``forward(ids (b, L), last_only=True)``; the groups' caches are concatenated along the batch
    in prompt order. Returns (logits of each prompt's last position (B, V'), cache for step)."""
    be, xp = model.backend, model.backend.xp
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    rows, logits, caches = [], [], []
    for length in sorted(groups):
        members = groups[length]
        ids = np.array([list(prompts[i]) for i in members], dtype=np.int64)
        lg, c = model.forward(ids, last_only=True)
        rows += members
        logits.append(lg)
        caches.append(c)
    if len(caches) == 1:
        lg, cache = logits[0], caches[0]
    else:
        lg = xp.concat(logits, axis=0)
        cache = [{k: xp.concat([c[li][k] for c in caches], axis=0) for k in caches[0][li]}
                 for li in range(len(caches[0]))]
    if rows != list(range(len(rows))):
        inverse = np.argsort(np.asarray(rows))
        lg = xp.take(lg, be.asarray(inverse.astype(np.int64)), axis=0)
        cache = _take_rows(be, cache, inverse)
    return lg, cache


def _host_logits(be, logits, vocab: int) -> np.ndarray:
    """(B, V') backend logits -> (B, vocab) NumPy float32 (float64 for float64 models). The
    padded ids are cut and low precisions widened on the backend, before the copy (NumPy has
    no bfloat16, and torch's .numpy() refuses it)."""
    logits = logits[:, :vocab]
    if str(logits.dtype).replace("torch.", "") not in ("float32", "float64"):
        logits = be.xp.astype(logits, be.xp.float32)
    z = be.to_numpy(logits)
    return z.astype(np.float64 if z.dtype == np.float64 else np.float32, copy=False)


def _static_decoder(model):
    """The backend's decoder over static caches for this model (made once, kept on the model),
    or None: when the backend has none, or ``MAMBA_NO_STATIC_DECODER=1``."""
    if not hasattr(model, "params") or not hasattr(model, "dtype"):
        return None  # a model-like object without parameters (the contract asks for less)
    if not static_decoders_enabled():  # checked here too: a decoder may be cached on the model
        return None
    dec = model.__dict__.get("_static_decoder")
    if dec is None:
        dec = static_decoder_of(model.backend, model.params, model.cfg, model.dtype)
        if dec is None:
            return None
        model.__dict__["_static_decoder"] = dec
    return dec


def _steps(model, prompts: list[list[int]], config: GenerationConfig, tokenizer,
           stop_tokens: frozenset) -> Iterator[tuple[list, set]]:
    """Yield, per step, (new id per prompt or None, set of prompts that finished this step)."""
    B, n_new = len(prompts), config.max_new_tokens
    if n_new == 0:
        return
    be, vocab = model.backend, model.cfg.vocab_size
    rng = np.random.default_rng(config.seed)
    seen = None
    if config.repetition_penalty != 1.0:
        seen = np.zeros((B, vocab), dtype=bool)
        for b, p in enumerate(prompts):
            seen[b, [t for t in p if t < vocab]] = True
    generated: list[list[int]] = [[] for _ in range(B)]
    active = np.arange(B)
    logits, cache = prefill(model, prompts)
    dec = _static_decoder(model)
    if dec is not None:
        dec.set_cache(cache)
    for t in range(n_new):
        z = _host_logits(be, logits, vocab)
        tok = select_tokens(z, config, rng, None if seen is None else seen[active])
        out: list = [None] * B
        done, finished = [], set()
        for j, (b, k) in enumerate(zip(active.tolist(), tok.tolist())):
            generated[b].append(k)
            out[b] = k
            if seen is not None:
                seen[b, k] = True
            stop = k in stop_tokens or t == n_new - 1
            if not stop and config.stop_strings:
                text = tokenizer.decode(generated[b])
                stop = any(s in text for s in config.stop_strings)
            if stop:
                done.append(j)
                finished.add(b)
        yield out, finished
        if len(done) == len(active):
            return
        if done:
            keep = np.setdiff1d(np.arange(len(active)), done)
            if dec is not None:
                cache = dec.cache(len(active))
            active, tok = active[keep], tok[keep]
            cache = _take_rows(be, cache, keep)
            if dec is not None:
                dec.set_cache(cache)
        if dec is not None:
            logits = dec.step(tok)
        else:
            logits, cache = model.step(tok, cache)


def _setup(model, prompts, config, tokenizer, options):
    cfg = _config(config, options)
    ids, text = _prompts(prompts, tokenizer, model.cfg.padded_vocab_size)
    if cfg.stop_strings and tokenizer is None:
        raise ConfigError("generation option stop_strings needs a tokenizer: pass tokenizer=")
    stop = cfg.stop_tokens
    if stop is None:
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        stop = () if eos is None else (int(eos),)
    return cfg, ids, text, frozenset(stop)


def generate(model, prompts, config: GenerationConfig | None = None, *, tokenizer=None,
             **options) -> list[list[int]]:
    """New token ids for each prompt (a stop token that ended a row is included).

    prompts: a list of prompts, each a list of ids (or a string, with ``tokenizer``).
    options: GenerationConfig fields (max_new_tokens, temperature, top_k, top_p, min_p,
    repetition_penalty, seed, stop_tokens, stop_strings, do_sample), overriding ``config``.
    """
    cfg, ids, _, stop = _setup(model, prompts, config, tokenizer, options)
    out: list[list[int]] = [[] for _ in ids]
    for step, _ in _steps(model, ids, cfg, tokenizer, stop):
        for b, k in enumerate(step):
            if k is not None:
                out[b].append(k)
    return out


def stream(model, prompts, config: GenerationConfig | None = None, *, tokenizer=None,
           as_text: bool | None = None, **options) -> Iterator[list]:
    """Generate step by step. Each item is a list with one entry per prompt:

    - tokens (default for id prompts): the new id, or None for a prompt that has finished;
    - text (``as_text=True``; the default when the prompts are strings; needs ``tokenizer``):
      the new text piece, '' when there is none yet or the prompt has finished. Stop tokens
      give no text; a piece ending in an incomplete UTF-8 character is held back until it
      completes (or the row ends).

    The tokens are exactly those ``generate`` returns for the same arguments.
    """
    cfg, ids, text, stop = _setup(model, prompts, config, tokenizer, options)
    as_text = text if as_text is None else as_text
    if as_text and tokenizer is None:
        raise ConfigError("stream(as_text=True) needs a tokenizer: pass tokenizer=")
    if not as_text:
        for step, _ in _steps(model, ids, cfg, tokenizer, stop):
            yield step
        return
    toks: list[list[int]] = [[] for _ in ids]
    emitted = [0] * len(ids)
    for step, finished in _steps(model, ids, cfg, tokenizer, stop):
        pieces = [""] * len(ids)
        for b, k in enumerate(step):
            if k is None:
                continue
            if k not in stop:
                toks[b].append(k)
            s = tokenizer.decode(toks[b])
            if s.endswith("\ufffd") and b not in finished:
                continue  # maybe a character cut in the middle: wait for its next bytes
            pieces[b] = s[emitted[b]:]
            emitted[b] = len(s)
        yield pieces
