"""The Mamba-1 mixer (mamba_ssm's ``Mamba`` module), written once against the ops.

Letters: B batch, L length, D d_model, E = expand * D (d_inner), N d_state, K d_conv,
R = dt_rank (``"auto"`` -> ceil(D / 16)).

Params (official mamba_ssm names and shapes):
    in_proj.weight (2E, D)      [in_proj.bias (2E,) when bias]
    conv1d.weight (E, 1, K)     [conv1d.bias (E,) when conv_bias]
    x_proj.weight (R + 2N, E)
    dt_proj.weight (E, R), dt_proj.bias (E,)
    A_log (E, N), D (E,)
    out_proj.weight (D, E)      [out_proj.bias (D,) when bias]

Forward (u: (B, L, D)):
    [x, z] = split(in_proj(u))                          x, z: (B, L, E)
    x = silu(causal_conv1d(x))                          conv_state <- last K inputs x
    [dt_r, Bm, Cm] = split(x_proj(x))                   (B, L, R), (B, L, N), (B, L, N)
    delta = dt_r dt_proj.weight^T                       dt = softplus(delta + dt_proj.bias)
    y, ssm_state = selective_scan(x, delta, A = -exp(A_log), Bm, Cm, D, z, dt_proj.bias,
                                  delta_softplus=True)  (B and C as one group, G = 1)
    out = out_proj(y)
Cache: {"conv_state": (B, E, K), "ssm_state": (B, E, N)}, both float32 (float64 for float64).

Training: forward_train(be, params, cfg, u, cache=None) -> (y, new_cache, saved) is forward
keeping each op's inputs; backward(be, params, cfg, saved, dy, dcache=None) ->
(dparams, du, dcache_in) runs the ops' VJPs in reverse (see mamba_core/models/mixer.py).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from mamba_core.models import init
from mamba_core.models.mixer import fused_step, known_fields, require, scan_call, zero_cache
from mamba_core.ops._dtypes import wide as _wide

LAYER = "Mamba1"

DT_INITS = ("random", "constant")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass
class Config:
    """Mamba-1 mixer configuration, in the field names of mamba_ssm's ``Mamba``."""

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False

    def __post_init__(self):
        for f in ("d_model", "d_state", "d_conv"):
            v = getattr(self, f)
            require(_is_int(v) and v > 0, f, v, "must be a positive integer")
        require(_is_real(self.expand) and self.expand > 0, "expand", self.expand,
                "must be a positive number (d_inner = expand * d_model)")
        require(float(self.expand * self.d_model).is_integer(), "expand", self.expand,
                f"expand * d_model = {self.expand * self.d_model} must be a whole number of channels")
        require(self.dt_rank == "auto" or (_is_int(self.dt_rank) and self.dt_rank > 0),
                "dt_rank", self.dt_rank, "must be 'auto' (ceil(d_model / 16)) or a positive integer")
        require(_is_real(self.dt_min) and self.dt_min > 0, "dt_min", self.dt_min, "must be > 0")
        require(_is_real(self.dt_max) and self.dt_max >= self.dt_min, "dt_max", self.dt_max,
                f"must be a number >= dt_min={self.dt_min!r}")
        require(self.dt_init in DT_INITS, "dt_init", self.dt_init, f"must be one of {list(DT_INITS)}")
        require(_is_real(self.dt_scale) and self.dt_scale > 0, "dt_scale", self.dt_scale, "must be > 0")
        require(_is_real(self.dt_init_floor) and self.dt_init_floor > 0, "dt_init_floor",
                self.dt_init_floor, "must be > 0 (dt is clamped below by it before inverse softplus)")
        for f in ("conv_bias", "bias"):
            v = getattr(self, f)
            require(isinstance(v, (bool, np.bool_)), f, v, "must be true or false")

    @classmethod
    def from_dict(cls, d_model: int, **fields) -> "Config":
        """Build and validate from an ssm_cfg dict (without its "layer" key)."""
        known_fields(cls, fields, "Mamba1 ssm_cfg")
        return cls(d_model=d_model, **fields)

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def dt_rank_value(self) -> int:
        """dt_rank as an integer ("auto" resolved to ceil(d_model / 16))."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


# ---- parameters ---------------------------------------------------------------------------
def param_shapes(cfg: Config) -> dict:
    D, E, N, K, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank_value
    shapes = {"in_proj.weight": (2 * E, D)}
    if cfg.bias:
        shapes["in_proj.bias"] = (2 * E,)
    shapes["conv1d.weight"] = (E, 1, K)
    if cfg.conv_bias:
        shapes["conv1d.bias"] = (E,)
    shapes.update({
        "x_proj.weight": (R + 2 * N, E),
        "dt_proj.weight": (E, R),
        "dt_proj.bias": (E,),
        "A_log": (E, N),
        "D": (E,),
        "out_proj.weight": (D, E),
    })
    if cfg.bias:
        shapes["out_proj.bias"] = (D,)
    return shapes


def init_params(cfg: Config, rng: np.random.Generator) -> dict:
    """mamba_ssm's initialisation of a ``Mamba`` module, as float32 NumPy arrays.

    Linear and conv layers keep torch's defaults (U(+-1/sqrt(fan_in))), except
    dt_proj.weight: U(+-R^-0.5 * dt_scale) ("random") or that constant ("constant");
    dt_proj.bias: inverse softplus of dt ~ exp(U(log dt_min, log dt_max)), floored;
    A_log[e, n] = log(n + 1); D = 1.
    """
    D, E, N, K, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv, cfg.dt_rank_value
    p = {"in_proj.weight": init.linear_weight(rng, 2 * E, D)}
    if cfg.bias:
        p["in_proj.bias"] = init.uniform(rng, (2 * E,), 1.0 / math.sqrt(D))
    conv_w, conv_b = init.conv1d_weight(rng, E, K)
    p["conv1d.weight"] = conv_w
    if cfg.conv_bias:
        p["conv1d.bias"] = conv_b
    p["x_proj.weight"] = init.linear_weight(rng, R + 2 * N, E)
    std = R ** -0.5 * cfg.dt_scale
    if cfg.dt_init == "random":
        p["dt_proj.weight"] = init.uniform(rng, (E, R), std)
    else:
        p["dt_proj.weight"] = np.full((E, R), std, np.float32)
    p["dt_proj.bias"] = init.dt_bias(rng, E, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)
    p["A_log"] = np.log(np.broadcast_to(np.arange(1, N + 1, dtype=np.float32), (E, N))).astype(np.float32)
    p["D"] = np.ones(E, np.float32)
    p["out_proj.weight"] = init.linear_weight(rng, D, E)
    if cfg.bias:
        p["out_proj.bias"] = init.uniform(rng, (D,), 1.0 / math.sqrt(E))
    return p


def no_weight_decay(name: str) -> bool:
    """A_log, D (mamba_ssm's ``_no_weight_decay``) and every bias are kept out of weight decay."""
    return name in ("A_log", "D") or name.endswith(".bias")


# ---- cache --------------------------------------------------------------------------------
def cache_shapes(cfg: Config, batch: int) -> dict:
    return {
        "conv_state": (batch, cfg.d_inner, cfg.d_conv),
        "ssm_state": (batch, cfg.d_inner, cfg.d_state),
    }


def init_cache(be, cfg: Config, batch: int, dtype: str = "float32") -> dict:
    """Zero states (float32, or float64 when dtype is float64) as backend arrays."""
    return zero_cache(be, cache_shapes(cfg, batch), dtype)


# ---- forward and step ---------------------------------------------------------------------


def _pieces(be, params, cfg):
    """What forward and step share: conv weight (E, K), biases, A = -exp(A_log)."""
    xp = be.xp
    conv_w = xp.reshape(params["conv1d.weight"], (cfg.d_inner, cfg.d_conv))
    conv_b = params["conv1d.bias"] if cfg.conv_bias else None
    A_log = params["A_log"]
    A = -xp.exp(xp.astype(A_log, _wide(xp, A_log.dtype)))
    return conv_w, conv_b, A


def _split_xdbl(cfg, x_dbl):
    R, N = cfg.dt_rank_value, cfg.d_state
    return x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]


def forward(be, params: dict, cfg: Config, u, cache: dict | None = None):
    """u: (B, L, D) -> (out (B, L, D), new cache). With a cache, continues from it."""
    out, new_cache, _ = forward_train(be, params, cfg, u, cache, residuals=False)
    return out, new_cache


def forward_train(be, params: dict, cfg: Config, u, cache: dict | None = None, *,
                  residuals: bool = True):
    """``forward``, also returning ``saved``: the inputs of each op call, for ``backward``.

    u: (B, L, D) -> (out (B, L, D), new cache, saved). ``saved`` names:
        u (B, L, D)         input of in_proj
        xz (B, L, 2E)       output of in_proj: x (input of the conv) and z (the gate)
        x_conv (B, L, E)    silu(conv1d(x)): input of x_proj and of the scan
        x_dbl (B, L, R+2N)  output of x_proj: dt_r (input of dt_proj), Bm, Cm
        delta (B, L, E)     output of dt_proj (the scan adds dt_proj.bias and takes softplus)
        y (B, L, E)         output of the scan: input of out_proj
        conv_state, ssm_state: the initial cache when one was given (else absent)
        scan_res            the scan's residuals for its VJP (mixer.scan_call: None unless
                            the backend has a saving form of selective_scan and residuals is
                            True; without them its VJP recomputes the states)
    """
    xp = be.xp
    Bsz, L = u.shape[0], u.shape[1]
    E, N = cfg.d_inner, cfg.d_state
    wide = _wide(xp, u.dtype)
    conv_w, conv_b, A = _pieces(be, params, cfg)

    xz = be.ops.linear(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None)
    x, z = xz[..., :E], xz[..., E:]
    x_conv, conv_state = be.ops.causal_conv1d(
        x, conv_w, conv_b, None if cache is None else cache["conv_state"], activation="silu"
    )
    x_dbl = be.ops.linear(x_conv, params["x_proj.weight"])
    dt_r, Bm, Cm = _split_xdbl(cfg, x_dbl)
    delta = be.ops.linear(dt_r, params["dt_proj.weight"])
    (y, ssm_state), scan_res = scan_call(
        be, residuals, "selective_scan",
        x_conv, delta, A, xp.reshape(Bm, (Bsz, L, 1, N)), xp.reshape(Cm, (Bsz, L, 1, N)),
        D=params["D"], z=z, delta_bias=params["dt_proj.bias"], delta_softplus=True,
        initial_state=None if cache is None else cache["ssm_state"],
    )
    out = be.ops.linear(y, params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None)
    new_cache = {"conv_state": xp.astype(conv_state, wide), "ssm_state": xp.astype(ssm_state, wide)}
    saved = {"u": u, "xz": xz, "x_conv": x_conv, "x_dbl": x_dbl, "delta": delta, "y": y,
             "scan_res": scan_res}
    if cache is not None:
        saved["conv_state"] = cache["conv_state"]
        saved["ssm_state"] = cache["ssm_state"]
    return out, new_cache, saved


def backward(be, params: dict, cfg: Config, saved: dict, dy, dcache: dict | None = None):
    """Gradients of ``forward_train`` from its ``saved`` -> (dparams, du, dcache_in).

    dy: (B, L, D), gradient of out. dcache: None or a dict with some of "conv_state" (B, E, K)
    and "ssm_state" (B, E, N): gradients of the final cache. Returns dparams (every key of
    params, same shape and dtype), du (B, L, D) and dcache_in (gradients of the initial cache,
    same keys, when forward_train was given one; else None). Each op's VJP in reverse order:
        out_proj -> selective_scan (ssm_state) -> dt_proj -> x_proj -> + scan's dx ->
        causal_conv1d (conv_state) -> concat(dx, dz) -> in_proj
    Glue: A = -exp(A_log) gives dA_log = dA * A; splits become concats of their gradients.
    """
    xp = be.xp
    dcache = {} if dcache is None else dcache
    u, xz, x_conv, x_dbl, delta, y = (saved[k] for k in ("u", "xz", "x_conv", "x_dbl", "delta", "y"))
    has_cache = "ssm_state" in saved
    Bsz, L = u.shape[0], u.shape[1]
    E, N, K = cfg.d_inner, cfg.d_state, cfg.d_conv
    conv_w, conv_b, A = _pieces(be, params, cfg)
    x, z = xz[..., :E], xz[..., E:]
    dt_r, Bm, Cm = _split_xdbl(cfg, x_dbl)
    g = {}

    # out = linear(y, out_proj)
    d = be.ops.linear_vjp(dy, y, params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None)
    dy_scan = d["x"]
    g["out_proj.weight"] = d["weight"]
    if cfg.bias:
        g["out_proj.bias"] = d["bias"]

    # y, ssm_state = selective_scan(x_conv, delta, A, Bm, Cm, D, z, dt_proj.bias, softplus)
    d = be.ops.vjp_saved(
        "selective_scan", saved.get("scan_res"), (dy_scan, dcache.get("ssm_state")),
        x_conv, delta, A, xp.reshape(Bm, (Bsz, L, 1, N)), xp.reshape(Cm, (Bsz, L, 1, N)),
        D=params["D"], z=z, delta_bias=params["dt_proj.bias"], delta_softplus=True,
        initial_state=saved["ssm_state"] if has_cache else None,
    )
    dx_conv, dz = d["u"], d["z"]
    g["D"] = d["D"]
    g["dt_proj.bias"] = d["delta_bias"]
    g["A_log"] = d["A"] * A  # A = -exp(A_log): dA/dA_log = -exp(A_log) = A
    dssm_in = d["initial_state"] if has_cache else None
    dBm, dCm = xp.reshape(d["B"], (Bsz, L, N)), xp.reshape(d["C"], (Bsz, L, N))

    # delta = linear(dt_r, dt_proj)
    d = be.ops.linear_vjp(d["delta"], dt_r, params["dt_proj.weight"])
    g["dt_proj.weight"] = d["weight"]

    # x_dbl = linear(x_conv, x_proj); [dt_r, Bm, Cm] = split(x_dbl)
    dx_dbl = xp.concat([d["x"], xp.astype(dBm, x_dbl.dtype), xp.astype(dCm, x_dbl.dtype)], axis=-1)
    d = be.ops.linear_vjp(dx_dbl, x_conv, params["x_proj.weight"])
    g["x_proj.weight"] = d["weight"]
    dx_conv = dx_conv + d["x"]  # x_conv feeds both x_proj and the scan

    # x_conv, conv_state = silu(causal_conv1d(x, conv_w, conv_b, conv_state))
    d = be.ops.causal_conv1d_vjp(
        (dx_conv, dcache.get("conv_state")), x, conv_w, conv_b,
        saved["conv_state"] if has_cache else None, activation="silu",
    )
    g["conv1d.weight"] = xp.reshape(d["weight"], (E, 1, K))
    if cfg.conv_bias:
        g["conv1d.bias"] = d["bias"]
    dconv_in = d["initial_state"] if has_cache else None

    # xz = linear(u, in_proj); [x, z] = split(xz)
    dxz = xp.concat([d["x"], xp.astype(dz, xz.dtype)], axis=-1)
    d = be.ops.linear_vjp(dxz, u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None)
    g["in_proj.weight"] = d["weight"]
    if cfg.bias:
        g["in_proj.bias"] = d["bias"]
    du = d["x"]

    dparams = {k: xp.astype(g[k], params[k].dtype) for k in params}
    dcache_in = None
    if has_cache:
        dcache_in = {
            "conv_state": xp.astype(dconv_in, saved["conv_state"].dtype),
            "ssm_state": xp.astype(dssm_in, saved["ssm_state"].dtype),
        }
    return dparams, xp.astype(du, u.dtype), dcache_in


def step(be, params: dict, cfg: Config, u, cache: dict):
    """u: (B, D), one token -> (out (B, D), new cache). ``cache`` is not modified."""
    fused = fused_step(be, "mamba1")
    if fused is not None:
        return fused(be, params, cfg, u, cache)
    return composed_step(be, params, cfg, u, cache)


def composed_step(be, params: dict, cfg: Config, u, cache: dict):
    """``step`` as the composition of ops, whatever fused step the backend offers (a fused step
    falls back to this for cases it does not cover)."""
    xp = be.xp
    Bsz = u.shape[0]
    E, N = cfg.d_inner, cfg.d_state
    wide = _wide(xp, u.dtype)
    conv_w, conv_b, A = _pieces(be, params, cfg)

    xz = be.ops.linear(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None)
    x, z = xz[..., :E], xz[..., E:]
    x, conv_state = be.ops.causal_conv1d_step(x, cache["conv_state"], conv_w, conv_b, activation="silu")
    dt_r, Bm, Cm = _split_xdbl(cfg, be.ops.linear(x, params["x_proj.weight"]))
    delta = be.ops.linear(dt_r, params["dt_proj.weight"])
    y, ssm_state = be.ops.selective_scan_step(
        x, delta, A, xp.reshape(Bm, (Bsz, 1, N)), xp.reshape(Cm, (Bsz, 1, N)), cache["ssm_state"],
        D=params["D"], z=z, delta_bias=params["dt_proj.bias"], delta_softplus=True,
    )
    out = be.ops.linear(y, params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None)
    return out, {"conv_state": xp.astype(conv_state, wide), "ssm_state": xp.astype(ssm_state, wide)}
