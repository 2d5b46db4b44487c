"""The Mamba-3 mixer (mamba_ssm's ``Mamba3`` module, SISO and MIMO), written once against the ops.

Letters: B batch, L length, D d_model, E = expand * D (d_inner), H = E / P heads of P = headdim
channels, G = ngroups (the official ``num_bc_heads``; H divisible by G), N = d_state,
R = mimo_rank (1 unless is_mimo), S = num_rope_angles (split = int(N * rope_fraction), minus 1
if odd; S = split // 2).

Params (official mamba_ssm names and shapes):
    in_proj.weight (2E + 2RGN + 3H + S, D)
    dt_bias (H,)                            inverse softplus of dt ~ exp(U(log dt_min, log dt_max))
    B_bias, C_bias (H, R, N)                = 1 (per head, not per group)
    B_norm.weight, C_norm.weight (N,)       = 1 (one weight shared by all ranks and groups)
    D (H,)                                  = 1
    mimo_x, mimo_z, mimo_o (H, R, P)        when is_mimo: 1/R, 1, 1/R
    norm.weight (E,)                        when is_outproj_norm: 1
    out_proj.weight (D, E)

Forward (u: (B, L, D)):
    [z, x, Bm, Cm, dd_dt, dd_A, trap, angles] = split(in_proj(u), [E, E, RGN, RGN, H, H, H, S])
    A = -max(heavy_tail(dd_A), A_floor)        heavy_tail(v) = 1+v (v >= 0), 1/(1-v) (v < 0)
    dt = softplus(dd_dt + dt_bias); trap = sigmoid(trap)                 (B, L, H), >= float32
    Bm, Cm -> (B, L, R, G, N) -> rmsnorm over N (B_norm / C_norm, eps 1e-5)
           -> broadcast G -> H (head h uses group h // (H/G)) -> + bias (R, H, N)
    phi, angle_state = mamba3_angles(angles, dt, angle_state)           phi: (B, L, H, S)
    Bhat, Chat = apply_rope(., phi) with pairing "interleaved" (SISO) or "halves" (MIMO)
    y, ssm_state, k_state, v_state = mamba3_scan(x (B, L, H, P), dt, A, trap, Bhat, Chat, D,
                                                 mimo_x, chunk_size, cached states)
    y: (B, L, R, H, P); z_r = z * mimo_z[:, r] (SISO: z)
    y_r = y_r * silu(z_r), or with is_outproj_norm rmsnorm_per_head(y_r) * norm.weight * silu(z_r)
    y = sum_r y_r * mimo_o[:, r] (SISO: y_0); out = out_proj(y (B, L, E))
Cache: {"angle_state": (B, H, S), "ssm_state": (B, H, P, N)} float32 (float64 for float64),
       {"k_state": (B, R, H, N) (last Bhat), "v_state": (B, H, P) (last raw x)} in the model dtype.

Differences from the official module, on purpose: the cached angle is always reduced mod 2 pi
(the official decode step stores it unreduced; cos/sin are the same), ``forward`` continues from
a cache (the official prefill always starts from zeros), and ``step`` works for any G dividing H
(the official decode only for G = 1 or G = H).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from mamba_core.models import init
from mamba_core.models.mixer import known_fields, require

LAYER = "Mamba3"

NORM_EPS = 1e-5
ROPE_FRACTIONS = (0.5, 1.0)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def num_rope_angles(d_state: int, rope_fraction: float) -> int:
    """S: the official count of rotation angles (pairs) for d_state N and rope_fraction.

    split = int(N * rope_fraction), made even by subtracting 1 when odd; S = split // 2.
    N = 128, rope_fraction 0.5 -> 32; rope_fraction 1.0 -> 64.
    """
    split = int(d_state * rope_fraction)
    if split % 2:
        split -= 1
    return split // 2


@dataclasses.dataclass
class Config:
    """Mamba-3 mixer configuration, in the field names of mamba_ssm's ``Mamba3``.

    ``fuse_pregate_headwise_norm`` and ``dropout`` are accepted and ignored (the official module
    uses them only to pick a kernel path / absorb a keyword). ``mimo_rank`` is forced to 1 when
    ``is_mimo`` is false, as the official module does.
    """

    d_model: int
    d_state: int = 128
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    rope_fraction: float = 0.5
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_floor: float = 1e-4
    is_outproj_norm: bool = False
    is_mimo: bool = False
    mimo_rank: int = 4
    chunk_size: int = 64
    fuse_pregate_headwise_norm: bool = True
    dropout: float = 0.0

    def __post_init__(self):
        for f in ("d_model", "d_state", "headdim", "ngroups", "mimo_rank", "chunk_size"):
            v = getattr(self, f)
            require(_is_int(v) and v > 0, f, v, "must be a positive integer")
        require(_is_real(self.expand) and self.expand > 0, "expand", self.expand,
                "must be a positive number (d_inner = expand * d_model)")
        require(float(self.expand * self.d_model).is_integer(), "expand", self.expand,
                f"expand * d_model = {self.expand * self.d_model} must be a whole number of channels")
        E = self.d_inner
        require(E % self.headdim == 0, "headdim", self.headdim,
                f"must divide d_inner = expand * d_model = {E} (the channels are split into heads)")
        require(self.nheads % self.ngroups == 0, "ngroups", self.ngroups,
                f"must divide the number of heads nheads = d_inner / headdim = {self.nheads} "
                "(head h reads B/C group h // (nheads / ngroups))")
        require(_is_real(self.rope_fraction) and self.rope_fraction in ROPE_FRACTIONS, "rope_fraction",
                self.rope_fraction, f"must be one of {list(ROPE_FRACTIONS)} (as in the official Mamba3)")
        require(num_rope_angles(self.d_state, self.rope_fraction) > 0, "d_state", self.d_state,
                f"gives no rotation angle with rope_fraction={self.rope_fraction} "
                "(need int(d_state * rope_fraction) >= 2)")
        for f in ("is_outproj_norm", "is_mimo", "fuse_pregate_headwise_norm"):
            v = getattr(self, f)
            require(isinstance(v, (bool, np.bool_)), f, v, "must be true or false")
        if self.is_mimo:
            require(self.d_state % 2 == 0, "d_state", self.d_state,
                    "must be even for MIMO (its rotation pairs component i with i + d_state/2)")
        require(_is_real(self.dt_min) and self.dt_min > 0, "dt_min", self.dt_min, "must be > 0")
        require(_is_real(self.dt_max) and self.dt_max >= self.dt_min, "dt_max", self.dt_max,
                f"must be a number >= dt_min={self.dt_min!r}")
        require(_is_real(self.dt_init_floor) and self.dt_init_floor > 0, "dt_init_floor",
                self.dt_init_floor, "must be > 0 (dt is clamped below by it before inverse softplus)")
        require(_is_real(self.A_floor) and self.A_floor >= 0, "A_floor", self.A_floor,
                "must be a number >= 0 (A = -max(heavy_tail(dd_A), A_floor))")
        require(_is_real(self.dropout) and 0 <= self.dropout < 1, "dropout", self.dropout,
                "must be a number in [0, 1) (it is accepted and ignored, as in the official module)")
        if not self.is_mimo:
            self.mimo_rank = 1

    @classmethod
    def from_dict(cls, d_model: int, **fields) -> "Config":
        """Build and validate from an ssm_cfg dict (without its "layer" key)."""
        known_fields(cls, fields, "Mamba3 ssm_cfg")
        return cls(d_model=d_model, **fields)

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def num_rope_angles(self) -> int:
        return num_rope_angles(self.d_state, self.rope_fraction)

    @property
    def rope_pairing(self) -> str:
        """apply_rope's pairing: interleaved pairs for SISO, halves for MIMO (official kernels)."""
        return "halves" if self.is_mimo else "interleaved"

    @property
    def d_in_proj(self) -> int:
        E, H, R, G, N = self.d_inner, self.nheads, self.mimo_rank, self.ngroups, self.d_state
        return 2 * E + 2 * R * G * N + 3 * H + self.num_rope_angles


# ---- parameters ---------------------------------------------------------------------------
def param_shapes(cfg: Config) -> dict:
    D, E, H, P, N, R = cfg.d_model, cfg.d_inner, cfg.nheads, cfg.headdim, cfg.d_state, cfg.mimo_rank
    shapes = {
        "in_proj.weight": (cfg.d_in_proj, D),
        "dt_bias": (H,),
        "B_bias": (H, R, N),
        "C_bias": (H, R, N),
        "B_norm.weight": (N,),
        "C_norm.weight": (N,),
    }
    if cfg.is_mimo:
        shapes.update({"mimo_x": (H, R, P), "mimo_z": (H, R, P), "mimo_o": (H, R, P)})
    shapes["D"] = (H,)
    if cfg.is_outproj_norm:
        shapes["norm.weight"] = (E,)
    shapes["out_proj.weight"] = (D, E)
    return shapes


def init_params(cfg: Config, rng: np.random.Generator) -> dict:
    """mamba_ssm's initialisation of a ``Mamba3`` module, as float32 NumPy arrays.

    in_proj / out_proj keep torch's Linear default (U(+-1/sqrt(fan_in))); dt_bias: inverse
    softplus of dt ~ exp(U(log dt_min, log dt_max)), floored at dt_init_floor; B_bias = C_bias = 1;
    B_norm, C_norm and norm weights = 1; D = 1; mimo_x = mimo_o = 1/R, mimo_z = 1.
    """
    D, E, H, P, N, R = cfg.d_model, cfg.d_inner, cfg.nheads, cfg.headdim, cfg.d_state, cfg.mimo_rank
    p = {
        "in_proj.weight": init.linear_weight(rng, cfg.d_in_proj, D),
        "dt_bias": init.dt_bias(rng, H, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor),
        "B_bias": np.ones((H, R, N), np.float32),
        "C_bias": np.ones((H, R, N), np.float32),
        "B_norm.weight": np.ones(N, np.float32),
        "C_norm.weight": np.ones(N, np.float32),
    }
    if cfg.is_mimo:
        p["mimo_x"] = np.full((H, R, P), 1.0 / R, np.float32)
        p["mimo_z"] = np.ones((H, R, P), np.float32)
        p["mimo_o"] = np.full((H, R, P), 1.0 / R, np.float32)
    p["D"] = np.ones(H, np.float32)
    if cfg.is_outproj_norm:
        p["norm.weight"] = np.ones(E, np.float32)
    p["out_proj.weight"] = init.linear_weight(rng, D, E)
    return p


def no_weight_decay(name: str) -> bool:
    """dt_bias, D (mamba_ssm's ``_no_weight_decay``), the B/C biases and every norm weight."""
    return (name in ("dt_bias", "D", "B_bias", "C_bias") or name.endswith(".bias")
            or name in ("B_norm.weight", "C_norm.weight") or name.startswith("norm."))


# ---- cache --------------------------------------------------------------------------------
def cache_shapes(cfg: Config, batch: int) -> dict:
    H, P, N, R, S = cfg.nheads, cfg.headdim, cfg.d_state, cfg.mimo_rank, cfg.num_rope_angles
    return {
        "angle_state": (batch, H, S),
        "ssm_state": (batch, H, P, N),
        "k_state": (batch, R, H, N),
        "v_state": (batch, H, P),
    }


def _state_dtype_name(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


def init_cache(be, cfg: Config, batch: int, dtype: str = "float32") -> dict:
    """Zeros as backend arrays: angle and SSM states in float32 (float64 for float64), the K and
    V states (last Bhat, last x) in ``dtype``, as the official module keeps them."""
    dtype = str(dtype).replace("torch.", "")
    out = {}
    for k, s in cache_shapes(cfg, batch).items():
        name = _state_dtype_name(dtype) if k in ("angle_state", "ssm_state") else dtype
        out[k] = be.asarray(np.zeros(s, np.float32), name)
    return out


# ---- shared pieces ------------------------------------------------------------------------
def _wide(xp, dtype):
    return xp.float64 if dtype == xp.float64 else xp.float32


def heavy_tail(xp, v):
    """1 + v for v >= 0, 1 / (1 - v) for v < 0, written without overflow:
    max(v, 0) + 1 / (1 - min(v, 0)). Positive, continuous, slope 1 at 0."""
    zero = xp.asarray(0.0, dtype=v.dtype)
    return xp.maximum(v, zero) + 1.0 / (1.0 - xp.minimum(v, zero))


def decay_rate(xp, dd_A, A_floor: float):
    """A = -max(heavy_tail(dd_A), A_floor) < 0 (for A_floor > 0), in dd_A's dtype."""
    return -xp.maximum(heavy_tail(xp, dd_A), xp.asarray(A_floor, dtype=dd_A.dtype))


def _split_in(cfg: Config, zxbc):
    """[z, x, Bm, Cm, dd_dt, dd_A, trap, angles] along the last axis."""
    E, H, S = cfg.d_inner, cfg.nheads, cfg.num_rope_angles
    RGN = cfg.mimo_rank * cfg.ngroups * cfg.d_state
    sizes = (E, E, RGN, RGN, H, H, H, S)
    out, o = [], 0
    for n in sizes:
        out.append(zxbc[..., o:o + n])
        o += n
    return out


def _bc_heads(be, cfg: Config, v, norm_w, bias, lead: tuple):
    """v: lead + (R*G*N,) -> rmsnorm over N -> G -> H broadcast -> + bias: lead + (R, H, N)."""
    xp = be.xp
    R, G, H, N = cfg.mimo_rank, cfg.ngroups, cfg.nheads, cfg.d_state
    v = be.ops.rmsnorm(xp.reshape(v, lead + (R, G, N)), norm_w, NORM_EPS)
    if G != H:
        v = xp.broadcast_to(xp.expand_dims(v, axis=-2), lead + (R, G, H // G, N))
    v = xp.reshape(v, lead + (R, H, N))
    return v + xp.astype(xp.permute_dims(bias, (1, 0, 2)), v.dtype)


def _prep(be, params: dict, cfg: Config, u, lead: tuple):
    """in_proj and the per-token preprocessing shared by forward and step.

    lead = (B, L) for forward, (B,) for step. Returns z (lead, H, P), x (lead, H, P), Bb, Cb
    (lead, R, H, N; normed, biased, not rotated), dt, A, trap (lead, H; >= float32), angles
    (lead, S; raw).
    """
    xp = be.xp
    H, P = cfg.nheads, cfg.headdim
    wide = _wide(xp, u.dtype)
    z, x, Bm, Cm, dd_dt, dd_A, trap, angles = _split_in(cfg, be.ops.linear(u, params["in_proj.weight"]))
    A = decay_rate(xp, xp.astype(dd_A, wide), cfg.A_floor)
    dt = be.ops.softplus(xp.astype(dd_dt, wide) + xp.astype(params["dt_bias"], wide))
    trap = be.ops.sigmoid(xp.astype(trap, wide))
    Bb = _bc_heads(be, cfg, Bm, params["B_norm.weight"], params["B_bias"], lead)
    Cb = _bc_heads(be, cfg, Cm, params["C_norm.weight"], params["C_bias"], lead)
    z = xp.reshape(z, lead + (H, P))
    x = xp.reshape(x, lead + (H, P))
    return z, x, Bb, Cb, dt, A, trap, angles


def _finish(be, params: dict, cfg: Config, y, z):
    """Gate (or gated out-norm) per rank, MIMO down-projection, out_proj.

    y: lead + (R, H, P) from the scan; z: lead + (H, P). Returns lead + (D,).
    """
    xp = be.xp
    R, H, P, E = cfg.mimo_rank, cfg.nheads, cfg.headdim, cfg.d_inner
    lead = tuple(y.shape[:-3])
    z = xp.expand_dims(z, axis=-3)  # lead + (1, H, P)
    if cfg.is_mimo:
        z = z * xp.astype(xp.permute_dims(params["mimo_z"], (1, 0, 2)), z.dtype)  # lead + (R, H, P)
    else:
        z = xp.broadcast_to(z, lead + (R, H, P))
    if cfg.is_outproj_norm:
        y = be.ops.rmsnorm(xp.reshape(y, lead + (R, E)), params["norm.weight"], NORM_EPS,
                           z=xp.reshape(z, lead + (R, E)), group_size=P, norm_before_gate=True)
        y = xp.reshape(y, lead + (R, H, P))
    else:
        y = y * be.ops.silu(z)
    if cfg.is_mimo:
        y = xp.sum(y * xp.astype(xp.permute_dims(params["mimo_o"], (1, 0, 2)), y.dtype), axis=-3)
    else:
        y = y[..., 0, :, :]
    return be.ops.linear(xp.reshape(y, lead + (E,)), params["out_proj.weight"])


# ---- forward and step ---------------------------------------------------------------------
def forward(be, params: dict, cfg: Config, u, cache: dict | None = None):
    """u: (B, L, D) -> (out (B, L, D), new cache). With a cache, continues from it."""
    xp = be.xp
    Bsz, L = u.shape[0], u.shape[1]
    wide = _wide(xp, u.dtype)
    c = cache or {}
    z, x, Bb, Cb, dt, A, trap, angles = _prep(be, params, cfg, u, (Bsz, L))
    phi, angle_state = be.ops.mamba3_angles(angles, dt, c.get("angle_state"))
    phi = xp.expand_dims(phi, axis=2)  # (B, L, 1, H, S): the same angle for every rank
    Bh = be.ops.apply_rope(Bb, phi, pairing=cfg.rope_pairing)
    Ch = be.ops.apply_rope(Cb, phi, pairing=cfg.rope_pairing)
    y, ssm_state, k_state, v_state = be.ops.mamba3_scan(
        x, dt, A, trap, Bh, Ch, D=params["D"], mimo_x=params["mimo_x"] if cfg.is_mimo else None,
        chunk_size=cfg.chunk_size, initial_state=c.get("ssm_state"), initial_k=c.get("k_state"),
        initial_v=c.get("v_state"),
    )
    out = _finish(be, params, cfg, y, z)
    return out, {
        "angle_state": xp.astype(angle_state, wide),
        "ssm_state": xp.astype(ssm_state, wide),
        "k_state": xp.astype(k_state, u.dtype),
        "v_state": xp.astype(v_state, u.dtype),
    }


def step(be, params: dict, cfg: Config, u, cache: dict):
    """u: (B, D), one token -> (out (B, D), new cache). ``cache`` is not modified."""
    xp = be.xp
    Bsz = u.shape[0]
    wide = _wide(xp, u.dtype)
    z, x, Bb, Cb, dt, A, trap, angles = _prep(be, params, cfg, u, (Bsz,))
    phi, angle_state = be.ops.mamba3_angles(
        xp.expand_dims(angles, axis=1), xp.expand_dims(dt, axis=1), cache["angle_state"]
    )  # phi: (B, 1, H, S), broadcast over the R axis of Bb, Cb (B, R, H, N)
    Bh = be.ops.apply_rope(Bb, phi, pairing=cfg.rope_pairing)
    Ch = be.ops.apply_rope(Cb, phi, pairing=cfg.rope_pairing)
    y, ssm_state, k_state, v_state = be.ops.mamba3_step(
        x, dt, A, trap, Bh, Ch, cache["ssm_state"], cache["k_state"], cache["v_state"],
        D=params["D"], mimo_x=params["mimo_x"] if cfg.is_mimo else None,
    )
    out = _finish(be, params, cfg, y, z)
    return out, {
        "angle_state": xp.astype(angle_state, wide),
        "ssm_state": xp.astype(ssm_state, wide),
        "k_state": xp.astype(k_state, u.dtype),
        "v_state": xp.astype(v_state, u.dtype),
    }
