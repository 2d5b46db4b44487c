"""The Mamba-2 mixer (mamba_ssm's ``Mamba2`` module), written once against the ops.

Letters: B batch, L length, D d_model, E = expand * D (d_inner), S = d_ssm (E unless set),
M = E - S (the gated-MLP width, usually 0), H = S / P heads of P = headdim channels,
G = ngroups, N = d_state, K = d_conv, X = S + 2 G N (the conv channels xBC).

Params (official mamba_ssm names and shapes):
    in_proj.weight (2E + 2GN + H, D)    [in_proj.bias when bias]
    conv1d.weight (X, 1, K)             [conv1d.bias (X,) when conv_bias]
    dt_bias (H,), A_log (H,), D (H,) or (S,) when D_has_hdim
    norm.weight (S,)                    when rmsnorm
    out_proj.weight (D, E)              [out_proj.bias (D,) when bias]

Forward (u: (B, L, D)):
    [z0, x0, z, xBC, dt] = split(in_proj(u), [M, M, S, X, H])
    xBC = silu(causal_conv1d(xBC))                      conv_state <- last K inputs xBC
    [x, Bm, Cm] = split(xBC, [S, GN, GN])               x -> (B, L, H, P); Bm, Cm -> (B, L, G, N)
    y, ssm_state = ssd_scan(x, dt, A = -exp(A_log), Bm, Cm, chunk_size, D,
                            z = None if rmsnorm else z, dt_bias, dt_softplus=True, dt_limit)
    y = rmsnorm(y, norm.weight, eps=1e-5, z=z, group_size=S/G, norm_before_gate)  when rmsnorm
    y = concat([silu(z0) * x0, y])                      when M > 0
    out = out_proj(y)
Cache: {"conv_state": (B, X, K), "ssm_state": (B, H, P, N)}, float32 (float64 for float64).

Unlike the official ``Mamba2.step`` (which skips dt_limit), ``step`` applies dt_limit exactly as
``forward`` does, so that prefill followed by decoding equals one forward.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from mamba_core.models import init
from mamba_core.models.mixer import fused_step, known_fields, require, scan_call, zero_cache
from mamba_core.ops._dtypes import wide as _wide

LAYER = "Mamba2"

NORM_EPS = 1e-5


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)


def _is_pair(v) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_real(e) for e in v)


@dataclasses.dataclass
class Config:
    """Mamba-2 mixer configuration, in the field names of mamba_ssm's ``Mamba2``."""

    d_model: int
    d_state: int = 128
    d_conv: int = 4
    conv_init: float | None = None
    expand: int = 2
    headdim: int = 64
    d_ssm: int | None = None
    ngroups: int = 1
    A_init_range: tuple = (1, 16)
    D_has_hdim: bool = False
    rmsnorm: bool = True
    norm_before_gate: bool = False
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple = (0.0, float("inf"))
    bias: bool = False
    conv_bias: bool = True
    chunk_size: int = 256

    def __post_init__(self):
        for f in ("d_model", "d_state", "d_conv", "headdim", "ngroups", "chunk_size"):
            v = getattr(self, f)
            require(_is_int(v) and v > 0, f, v, "must be a positive integer")
        require(_is_real(self.expand) and math.isfinite(self.expand) and self.expand > 0, "expand",
                self.expand, "must be a positive number (d_inner = expand * d_model)")
        require(float(self.expand * self.d_model).is_integer(), "expand", self.expand,
                f"expand * d_model = {self.expand * self.d_model} must be a whole number of channels")
        E = self.d_inner
        require(self.d_ssm is None or (_is_int(self.d_ssm) and 0 < self.d_ssm <= E), "d_ssm",
                self.d_ssm, f"must be None (= d_inner) or an integer in 1..d_inner={E}")
        S = self.ssm_width
        require(S % self.headdim == 0, "headdim", self.headdim,
                f"must divide d_ssm={S} (the SSM channels are split into heads of headdim)")
        require(self.nheads % self.ngroups == 0, "ngroups", self.ngroups,
                f"must divide the number of heads nheads = d_ssm / headdim = {self.nheads}")
        require(self.conv_init is None or (_is_real(self.conv_init) and self.conv_init > 0),
                "conv_init", self.conv_init, "must be None (torch's default) or a positive bound")
        require(_is_pair(self.A_init_range) and 0 < self.A_init_range[0] <= self.A_init_range[1],
                "A_init_range", self.A_init_range, "must be a pair (lo, hi) with 0 < lo <= hi")
        self.A_init_range = tuple(self.A_init_range)
        require(_is_real(self.dt_min) and self.dt_min > 0, "dt_min", self.dt_min, "must be > 0")
        require(_is_real(self.dt_max) and self.dt_max >= self.dt_min, "dt_max", self.dt_max,
                f"must be a number >= dt_min={self.dt_min!r}")
        require(_is_real(self.dt_init_floor) and self.dt_init_floor > 0, "dt_init_floor",
                self.dt_init_floor, "must be > 0 (dt is clamped below by it before inverse softplus)")
        require(_is_pair(self.dt_limit) and 0 <= self.dt_limit[0] < self.dt_limit[1], "dt_limit",
                self.dt_limit, "must be a pair (lo, hi) with 0 <= lo < hi; (0.0, inf) means no limit")
        self.dt_limit = (float(self.dt_limit[0]), float(self.dt_limit[1]))
        for f in ("D_has_hdim", "rmsnorm", "norm_before_gate", "bias", "conv_bias"):
            v = getattr(self, f)
            require(isinstance(v, (bool, np.bool_)), f, v, "must be true or false")

    @classmethod
    def from_dict(cls, d_model: int, **fields) -> "Config":
        """Build and validate from an ssm_cfg dict (without its "layer" key)."""
        known_fields(cls, fields, "Mamba2 ssm_cfg")
        return cls(d_model=d_model, **fields)

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def ssm_width(self) -> int:
        """d_ssm resolved (None -> d_inner): the channels that go through the SSM."""
        return self.d_inner if self.d_ssm is None else int(self.d_ssm)

    @property
    def d_mlp(self) -> int:
        """Width of the gated-MLP slice (z0, x0) in front, d_inner - d_ssm."""
        return self.d_inner - self.ssm_width

    @property
    def nheads(self) -> int:
        return self.ssm_width // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.ssm_width + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads


# ---- parameters ---------------------------------------------------------------------------
def param_shapes(cfg: Config) -> dict:
    D, E, S, H, X, K = cfg.d_model, cfg.d_inner, cfg.ssm_width, cfg.nheads, cfg.conv_dim, cfg.d_conv
    shapes = {"in_proj.weight": (cfg.d_in_proj, D)}
    if cfg.bias:
        shapes["in_proj.bias"] = (cfg.d_in_proj,)
    shapes["conv1d.weight"] = (X, 1, K)
    if cfg.conv_bias:
        shapes["conv1d.bias"] = (X,)
    shapes.update({
        "dt_bias": (H,),
        "A_log": (H,),
        "D": (S,) if cfg.D_has_hdim else (H,),
    })
    if cfg.rmsnorm:
        shapes["norm.weight"] = (S,)
    shapes["out_proj.weight"] = (D, E)
    if cfg.bias:
        shapes["out_proj.bias"] = (D,)
    return shapes


def init_params(cfg: Config, rng: np.random.Generator) -> dict:
    """mamba_ssm's initialisation of a ``Mamba2`` module, as float32 NumPy arrays.

    Linear layers keep torch's defaults (U(+-1/sqrt(fan_in))); conv1d too, except that the
    weight is U(+-conv_init) when conv_init is set; dt_bias: inverse softplus of
    dt ~ exp(U(log dt_min, log dt_max)), floored; A_log = log(U(A_init_range)); D = 1;
    norm.weight = 1.
    """
    D, E, S, H, X, K = cfg.d_model, cfg.d_inner, cfg.ssm_width, cfg.nheads, cfg.conv_dim, cfg.d_conv
    p = {"in_proj.weight": init.linear_weight(rng, cfg.d_in_proj, D)}
    if cfg.bias:
        p["in_proj.bias"] = init.uniform(rng, (cfg.d_in_proj,), 1.0 / math.sqrt(D))
    conv_w, conv_b = init.conv1d_weight(rng, X, K)
    if cfg.conv_init is not None:
        conv_w = init.uniform(rng, (X, 1, K), float(cfg.conv_init))
    p["conv1d.weight"] = conv_w
    if cfg.conv_bias:
        p["conv1d.bias"] = conv_b
    p["dt_bias"] = init.dt_bias(rng, H, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)
    lo, hi = cfg.A_init_range
    p["A_log"] = np.log(rng.uniform(lo, hi, size=H)).astype(np.float32)
    p["D"] = np.ones(S if cfg.D_has_hdim else H, np.float32)
    if cfg.rmsnorm:
        p["norm.weight"] = np.ones(S, np.float32)
    p["out_proj.weight"] = init.linear_weight(rng, D, E)
    if cfg.bias:
        p["out_proj.bias"] = init.uniform(rng, (D,), 1.0 / math.sqrt(E))
    return p


def no_weight_decay(name: str) -> bool:
    """A_log, D, dt_bias (mamba_ssm's ``_no_weight_decay``), norms and every bias."""
    return name in ("A_log", "D", "dt_bias") or name.endswith(".bias") or name.startswith("norm.")


# ---- cache --------------------------------------------------------------------------------
def cache_shapes(cfg: Config, batch: int) -> dict:
    return {
        "conv_state": (batch, cfg.conv_dim, cfg.d_conv),
        "ssm_state": (batch, cfg.nheads, cfg.headdim, cfg.d_state),
    }


def init_cache(be, cfg: Config, batch: int, dtype: str = "float32") -> dict:
    """Zero states (float32, or float64 when dtype is float64) as backend arrays."""
    return zero_cache(be, cache_shapes(cfg, batch), dtype)


# ---- forward and step ---------------------------------------------------------------------


def _pieces(be, params, cfg):
    """What forward and step share: conv weight (X, K) and bias, A = -exp(A_log), D."""
    xp = be.xp
    conv_w = xp.reshape(params["conv1d.weight"], (cfg.conv_dim, cfg.d_conv))
    conv_b = params["conv1d.bias"] if cfg.conv_bias else None
    A_log = params["A_log"]
    A = -xp.exp(xp.astype(A_log, _wide(xp, A_log.dtype)))
    D = params["D"]
    if cfg.D_has_hdim:
        D = xp.reshape(D, (cfg.nheads, cfg.headdim))
    return conv_w, conv_b, A, D


def _split_in(cfg, zxbcdt):
    """[z0, x0, z, xBC, dt] along the last axis."""
    M, S, X = cfg.d_mlp, cfg.ssm_width, cfg.conv_dim
    o = [0, M, 2 * M, 2 * M + S, 2 * M + S + X, 2 * M + S + X + cfg.nheads]
    return [zxbcdt[..., o[i]:o[i + 1]] for i in range(5)]


def _split_xbc(cfg, xBC):
    S, GN = cfg.ssm_width, cfg.ngroups * cfg.d_state
    return xBC[..., :S], xBC[..., S:S + GN], xBC[..., S + GN:]


def _gate(be, params, cfg, y, z, z0, x0):
    """Gated norm and gated-MLP slice: out_proj's input (..., E). y, z: (..., S); z0, x0: (..., M)."""
    if cfg.rmsnorm:
        y = be.ops.rmsnorm(y, params["norm.weight"], NORM_EPS, z=z,
                           group_size=cfg.ssm_width // cfg.ngroups,
                           norm_before_gate=cfg.norm_before_gate)
    if cfg.d_mlp > 0:
        y = be.xp.concat([be.ops.silu_gate(x0, z0), y], axis=-1)
    return y


def _finish(be, params, cfg, y, z, z0, x0):
    """Gated norm, gated-MLP slice, out_proj. y, z: (..., S); z0, x0: (..., M)."""
    y = _gate(be, params, cfg, y, z, z0, x0)
    return be.ops.linear(y, params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None)


def forward(be, params: dict, cfg: Config, u, cache: dict | None = None):
    """u: (B, L, D) -> (out (B, L, D), new cache). With a cache, continues from it."""
    out, new_cache, _ = forward_train(be, params, cfg, u, cache, residuals=False)
    return out, new_cache


def forward_train(be, params: dict, cfg: Config, u, cache: dict | None = None, *,
                  residuals: bool = True):
    """``forward``, also returning ``saved``: the inputs of the op calls that backward needs.

    u: (B, L, D) -> (out (B, L, D), new cache, saved) with saved =
        "u"           (B, L, D)         in_proj's input
        "zxbcdt"      (B, L, 2M+S+X+H)  in_proj's output: z0, x0 (gate), z (norm or scan gate),
                                        xBC (conv1d's input), dt (the scan's dt)
        "xBC_conv"    (B, L, X)         conv1d's output: the scan's x, B, C
        "y_scan"      (B, L, S)         the scan's output (the gated norm's input)
        "y_gated"     (B, L, E)         out_proj's input
        "conv_state", "ssm_state"       the initial cache, when one was given
        "scan_res"                      ssd_scan's residuals for its VJP (mixer.scan_call: None
                                        unless the backend has a saving form and residuals is
                                        True; without them ssd_scan_vjp recomputes the states)
    """
    xp = be.xp
    Bsz, L = u.shape[0], u.shape[1]
    H, P, G, N = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
    wide = _wide(xp, u.dtype)
    conv_w, conv_b, A, D = _pieces(be, params, cfg)

    zxbcdt = be.ops.linear(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None)
    z0, x0, z, xBC, dt = _split_in(cfg, zxbcdt)
    xBC_conv, conv_state = be.ops.causal_conv1d(
        xBC, conv_w, conv_b, None if cache is None else cache["conv_state"], activation="silu"
    )
    x, Bm, Cm = _split_xbc(cfg, xBC_conv)
    (y, ssm_state), scan_res = scan_call(
        be, residuals, "ssd_scan", xp.reshape(x, (Bsz, L, H, P)), dt, A, xp.reshape(Bm, (Bsz, L, G, N)),
        xp.reshape(Cm, (Bsz, L, G, N)), chunk_size=cfg.chunk_size, D=D,
        z=None if cfg.rmsnorm else xp.reshape(z, (Bsz, L, H, P)), dt_bias=params["dt_bias"],
        dt_softplus=True, dt_limit=cfg.dt_limit,
        initial_state=None if cache is None else cache["ssm_state"],
    )
    y_scan = xp.reshape(y, (Bsz, L, H * P))
    y_gated = _gate(be, params, cfg, y_scan, z, z0, x0)
    out = be.ops.linear(y_gated, params["out_proj.weight"], params["out_proj.bias"] if cfg.bias else None)
    saved = {"u": u, "zxbcdt": zxbcdt, "xBC_conv": xBC_conv, "y_scan": y_scan, "y_gated": y_gated,
             "scan_res": scan_res}
    if cache is not None:
        saved["conv_state"] = cache["conv_state"]
        saved["ssm_state"] = cache["ssm_state"]
    new_cache = {"conv_state": xp.astype(conv_state, wide), "ssm_state": xp.astype(ssm_state, wide)}
    return out, new_cache, saved


def step(be, params: dict, cfg: Config, u, cache: dict):
    """u: (B, D), one token -> (out (B, D), new cache). ``cache`` is not modified."""
    fused = fused_step(be, "mamba2")
    if fused is not None:
        return fused(be, params, cfg, u, cache)
    return composed_step(be, params, cfg, u, cache)


def composed_step(be, params: dict, cfg: Config, u, cache: dict):
    """``step`` as the composition of ops, whatever fused step the backend offers (a fused step
    falls back to this for cases it does not cover)."""
    xp = be.xp
    Bsz = u.shape[0]
    H, P, G, N = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
    wide = _wide(xp, u.dtype)
    conv_w, conv_b, A, D = _pieces(be, params, cfg)

    zxbcdt = be.ops.linear(u, params["in_proj.weight"], params["in_proj.bias"] if cfg.bias else None)
    z0, x0, z, xBC, dt = _split_in(cfg, zxbcdt)
    xBC, conv_state = be.ops.causal_conv1d_step(xBC, cache["conv_state"], conv_w, conv_b, activation="silu")
    x, Bm, Cm = _split_xbc(cfg, xBC)
    y, ssm_state = be.ops.ssd_step(
        xp.reshape(x, (Bsz, H, P)), dt, A, xp.reshape(Bm, (Bsz, G, N)), xp.reshape(Cm, (Bsz, G, N)),
        cache["ssm_state"], D=D, z=None if cfg.rmsnorm else xp.reshape(z, (Bsz, H, P)),
        dt_bias=params["dt_bias"], dt_softplus=True, dt_limit=cfg.dt_limit,
    )
    out = _finish(be, params, cfg, xp.reshape(y, (Bsz, H * P)), z, z0, x0)
    return out, {"conv_state": xp.astype(conv_state, wide), "ssm_state": xp.astype(ssm_state, wide)}


# ---- backward -----------------------------------------------------------------------------
def backward(be, params: dict, cfg: Config, saved: dict, dy, dcache: dict | None = None):
    """The reverse of ``forward_train``, composed from the ops' VJPs.

    dy: (B, L, D) the gradient of out (None: zero); dcache: None or a dict with some of
    {"conv_state", "ssm_state"}: gradients of the final cache.
    Returns (dparams {name: same shape and dtype as params[name]}, du (B, L, D),
    dcache_in {"conv_state", "ssm_state"} when forward_train was given a cache, else None).

        out = out_proj(y_gated)                 -> d y_gated, d out_proj.weight [, bias]
        y_gated = [silu(z0) x0, norm(y_scan, z)] -> silu_gate_vjp: d z0, d x0; rmsnorm_vjp -> d y_scan, d z, d norm.weight
        y_scan, S_L = ssd_scan(x, dt, A, Bm, Cm, D, [z], dt_bias, S_0)
                                                -> d x, d dt, d A, d Bm, d Cm, d D, [d z], d dt_bias, d S_0
        A = -exp(A_log)                         -> d A_log = d A * A
        xBC_conv, conv_L = conv1d(xBC, w, b, conv_0) -> d xBC, d w, d b, d conv_0
        zxbcdt = in_proj(u)                     -> du, d in_proj.weight [, bias]
    Splits go back as concats of the pieces' gradients.
    """
    xp = be.xp
    u, zxbcdt, xBC_conv = saved["u"], saved["zxbcdt"], saved["xBC_conv"]
    y_scan, y_gated = saved["y_scan"], saved["y_gated"]
    has_cache = "ssm_state" in saved
    Bsz, L = u.shape[0], u.shape[1]
    H, P, G, N, S, M = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state, cfg.ssm_width, cfg.d_mlp
    conv_w, conv_b, A, D = _pieces(be, params, cfg)
    dcache = dcache or {}
    dparams = {}

    # out = out_proj(y_gated)
    if dy is None:
        dy = xp.zeros((Bsz, L, cfg.d_model), dtype=u.dtype)
    g = be.ops.linear_vjp(dy, y_gated, params["out_proj.weight"],
                          params["out_proj.bias"] if cfg.bias else None)
    dparams["out_proj.weight"] = g["weight"]
    if cfg.bias:
        dparams["out_proj.bias"] = g["bias"]
    d_gated = g["x"]

    # y_gated = concat([silu(z0) * x0, norm(y_scan, z)])
    z0, x0, z, xBC, dt = _split_in(cfg, zxbcdt)
    pieces = []  # the gradients of zxbcdt's slices, in order
    if M > 0:
        d_mlp, d_norm = d_gated[..., :M], d_gated[..., M:]
        gg = be.ops.silu_gate_vjp(d_mlp, x0, z0)
        pieces.append(gg["z"])  # d z0
        pieces.append(gg["x"])  # d x0
    else:
        d_norm = d_gated
    dz = None
    if cfg.rmsnorm:
        g = be.ops.rmsnorm_vjp(d_norm, y_scan, params["norm.weight"], NORM_EPS, z,
                               cfg.ssm_width // cfg.ngroups, cfg.norm_before_gate)
        dparams["norm.weight"] = g["weight"]
        d_scan, dz = g["x"], g["z"]
    else:
        d_scan = d_norm

    # y_scan, ssm_state = ssd_scan(...)
    x, Bm, Cm = _split_xbc(cfg, xBC_conv)
    g = be.ops.vjp_saved(
        "ssd_scan", saved.get("scan_res"), (xp.reshape(d_scan, (Bsz, L, H, P)), dcache.get("ssm_state")),
        xp.reshape(x, (Bsz, L, H, P)), dt, A, xp.reshape(Bm, (Bsz, L, G, N)),
        xp.reshape(Cm, (Bsz, L, G, N)), chunk_size=cfg.chunk_size, D=D,
        z=None if cfg.rmsnorm else xp.reshape(z, (Bsz, L, H, P)), dt_bias=params["dt_bias"],
        dt_softplus=True, dt_limit=cfg.dt_limit,
        initial_state=saved["ssm_state"] if has_cache else None,
    )
    if not cfg.rmsnorm:
        dz = xp.reshape(g["z"], (Bsz, L, S))
    A_log = params["A_log"]
    dparams["A_log"] = xp.astype(g["A"] * A, A_log.dtype)  # A = -exp(A_log): dA/dA_log = A
    dparams["D"] = xp.reshape(g["D"], params["D"].shape)
    dparams["dt_bias"] = g["dt_bias"]
    d_conv_out = xp.concat([
        xp.reshape(g["x"], (Bsz, L, S)), xp.reshape(g["B"], (Bsz, L, G * N)),
        xp.reshape(g["C"], (Bsz, L, G * N)),
    ], axis=-1)
    d_ssm_state = g.get("initial_state")
    ddt = g["dt"]

    # xBC_conv, conv_state = causal_conv1d(xBC, w, b, conv_state_0, "silu")
    g = be.ops.causal_conv1d_vjp(
        (d_conv_out, dcache.get("conv_state")), xBC, conv_w, conv_b,
        saved["conv_state"] if has_cache else None, activation="silu",
    )
    dparams["conv1d.weight"] = xp.reshape(g["weight"], params["conv1d.weight"].shape)
    if cfg.conv_bias:
        dparams["conv1d.bias"] = g["bias"]
    d_conv_state = g.get("initial_state")
    pieces += [xp.astype(dz, zxbcdt.dtype), g["x"], ddt]

    # zxbcdt = in_proj(u)
    d_zxbcdt = xp.concat([xp.astype(p, zxbcdt.dtype) for p in pieces], axis=-1)
    g = be.ops.linear_vjp(d_zxbcdt, u, params["in_proj.weight"],
                          params["in_proj.bias"] if cfg.bias else None)
    dparams["in_proj.weight"] = g["weight"]
    if cfg.bias:
        dparams["in_proj.bias"] = g["bias"]

    dparams = {k: xp.astype(dparams[k], params[k].dtype) for k in params}
    dcache_in = None
    if has_cache:
        dcache_in = {
            "conv_state": xp.astype(d_conv_state, saved["conv_state"].dtype),
            "ssm_state": xp.astype(d_ssm_state, saved["ssm_state"].dtype),
        }
    return dparams, xp.astype(g["x"], u.dtype), dcache_in
