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
On a backend with mamba3_rope_scan natively, forward and forward_train run the broadcast, bias,
rotation and scan as that one op, on the per-group normed B, C (the backend reads them once per
group), and backward runs its VJP.
Cache: {"angle_state": (B, H, S), "ssm_state": (B, H, P, N)} float32 (float64 for float64),
       {"k_state": (B, R, H, N) (last Bhat), "v_state": (B, H, P) (last raw x)} in the model dtype.

Training: forward_train(be, params, cfg, u, cache=None) -> (y, new_cache, saved) is forward that
also names the op inputs backward needs (no scan state); backward(be, params, cfg, saved, dy,
dcache=None) -> (dparams, du, dcache_in) composes the ops' VJPs (mamba3_scan_vjp,
apply_rope_vjp, mamba3_angles_vjp, rmsnorm_vjp, ...) with the glue's gradients written out:
the G -> H broadcast sums the heads of each group, A = -max(heavy_tail(dd_A), A_floor) passes
gradient only where heavy_tail(dd_A) > A_floor.

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
from mamba_core.models.mixer import fused_step, known_fields, require, scan_call, zero_cache
from mamba_core.ops._dtypes import wide as _wide
from mamba_core.ops.mamba3_fused import heads, heads_vjp

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


def init_cache(be, cfg: Config, batch: int, dtype: str = "float32") -> dict:
    """Zeros as backend arrays: angle and SSM states in float32 (float64 for float64), the K and
    V states (last Bhat, last x) in ``dtype``, as the official module keeps them."""
    dtype = str(dtype).replace("torch.", "")
    shapes = cache_shapes(cfg, batch)
    out = zero_cache(be, {k: shapes[k] for k in ("angle_state", "ssm_state")}, dtype)
    out.update({k: be.asarray(np.zeros(shapes[k], np.float32), dtype) for k in ("k_state", "v_state")})
    return {k: out[k] for k in shapes}


# ---- shared pieces ------------------------------------------------------------------------
def heavy_tail(xp, v):
    """1 + v for v >= 0, 1 / (1 - v) for v < 0, written without overflow:
    max(v, 0) + 1 / (1 - min(v, 0)). Positive, continuous, slope 1 at 0.

    max(v, 0) = (v + |v|) / 2 and min(v, 0) = (v - |v|) / 2 exactly, and need no scalar array
    (a host-to-device copy, which a CUDA-graph capture must not contain)."""
    a = xp.abs(v)
    return (v + a) / 2 + 1.0 / (1.0 - (v - a) / 2)


def decay_rate(xp, dd_A, A_floor: float):
    """A = -max(heavy_tail(dd_A), A_floor) < 0 (for A_floor > 0), in dd_A's dtype."""
    h = heavy_tail(xp, dd_A)
    return -xp.where(h > A_floor, h, xp.zeros_like(h) + A_floor)


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


def _bc_normed(be, cfg: Config, v, norm_w, lead: tuple):
    """v: lead + (R*G*N,) -> rmsnorm over N: lead + (R, G, N) (per group, before bias/rotation)."""
    R, G, N = cfg.mimo_rank, cfg.ngroups, cfg.d_state
    return be.ops.rmsnorm(be.xp.reshape(v, lead + (R, G, N)), norm_w, NORM_EPS)


def _bc_heads(be, cfg: Config, v, norm_w, bias, lead: tuple):
    """v: lead + (R*G*N,) -> rmsnorm over N -> G -> H broadcast -> + bias: lead + (R, H, N)."""
    xp = be.xp
    return heads(xp, _bc_normed(be, cfg, v, norm_w, lead), cfg.nheads, xp.permute_dims(bias, (1, 0, 2)))


def _prep_from(be, params: dict, cfg: Config, zxbc, lead: tuple, per_group: bool = False):
    """The per-token preprocessing of in_proj's output zxbc (lead + (d_in_proj,)).

    lead = (B, L) for forward, (B,) for step. Returns z (lead, H, P), x (lead, H, P), Bb, Cb
    (lead, R, H, N; normed, biased, not rotated -- or, per_group, lead + (R, G, N): normed
    only, for mamba3_rope_scan), dt, A, trap (lead, H; >= float32), angles (lead, S; raw).
    """
    xp = be.xp
    H, P = cfg.nheads, cfg.headdim
    wide = _wide(xp, zxbc.dtype)
    z, x, Bm, Cm, dd_dt, dd_A, trap, angles = _split_in(cfg, zxbc)
    A = decay_rate(xp, xp.astype(dd_A, wide), cfg.A_floor)
    dt = be.ops.softplus(xp.astype(dd_dt, wide) + xp.astype(params["dt_bias"], wide))
    trap = be.ops.sigmoid(xp.astype(trap, wide))
    if per_group:
        Bb = _bc_normed(be, cfg, Bm, params["B_norm.weight"], lead)
        Cb = _bc_normed(be, cfg, Cm, params["C_norm.weight"], lead)
    else:
        Bb = _bc_heads(be, cfg, Bm, params["B_norm.weight"], params["B_bias"], lead)
        Cb = _bc_heads(be, cfg, Cm, params["C_norm.weight"], params["C_bias"], lead)
    z = xp.reshape(z, lead + (H, P))
    x = xp.reshape(x, lead + (H, P))
    return z, x, Bb, Cb, dt, A, trap, angles


def _prep(be, params: dict, cfg: Config, u, lead: tuple):
    """in_proj and the per-token preprocessing shared by forward and step (see _prep_from)."""
    return _prep_from(be, params, cfg, be.ops.linear(u, params["in_proj.weight"]), lead)


def _gate_z(be, params: dict, cfg: Config, z):
    """The per-rank gate input z_r = z * mimo_z[:, r] (SISO: z). z: lead + (H, P) -> lead + (R, H, P)."""
    xp = be.xp
    R, H, P = cfg.mimo_rank, cfg.nheads, cfg.headdim
    lead = tuple(z.shape[:-2])
    z = xp.expand_dims(z, axis=-3)  # lead + (1, H, P)
    if cfg.is_mimo:
        return z * xp.astype(xp.permute_dims(params["mimo_z"], (1, 0, 2)), z.dtype)  # lead + (R, H, P)
    return xp.broadcast_to(z, lead + (R, H, P))


def _gate(be, params: dict, cfg: Config, y, zr):
    """y_r * silu(z_r), or rmsnorm_per_head(y_r) * norm.weight * silu(z_r) with is_outproj_norm.

    y, zr: lead + (R, H, P) -> lead + (R, H, P).
    """
    xp = be.xp
    R, H, P, E = cfg.mimo_rank, cfg.nheads, cfg.headdim, cfg.d_inner
    lead = tuple(y.shape[:-3])
    if cfg.is_outproj_norm:
        y = be.ops.rmsnorm(xp.reshape(y, lead + (R, E)), params["norm.weight"], NORM_EPS,
                           z=xp.reshape(zr, lead + (R, E)), group_size=P, norm_before_gate=True)
        return xp.reshape(y, lead + (R, H, P))
    return be.ops.silu_gate(y, zr)


def _mix(be, params: dict, cfg: Config, g):
    """MIMO down-projection sum_r g_r * mimo_o[:, r] (SISO: g_0). g: lead + (R, H, P) -> lead + (E,)."""
    xp = be.xp
    lead = tuple(g.shape[:-3])
    if cfg.is_mimo:
        g = xp.sum(g * xp.astype(xp.permute_dims(params["mimo_o"], (1, 0, 2)), g.dtype), axis=-3)
    else:
        g = g[..., 0, :, :]
    return xp.reshape(g, lead + (cfg.d_inner,))


def _finish(be, params: dict, cfg: Config, y, z):
    """Gate (or gated out-norm) per rank, MIMO down-projection, out_proj.

    y: lead + (R, H, P) from the scan; z: lead + (H, P). Returns lead + (D,).
    """
    g = _gate(be, params, cfg, y, _gate_z(be, params, cfg, z))
    return be.ops.linear(_mix(be, params, cfg, g), params["out_proj.weight"])


CACHE_KEYS = ("angle_state", "ssm_state", "k_state", "v_state")


def _new_cache(be, u, angle_state, ssm_state, k_state, v_state) -> dict:
    xp = be.xp
    wide = _wide(xp, u.dtype)
    return {
        "angle_state": xp.astype(angle_state, wide),
        "ssm_state": xp.astype(ssm_state, wide),
        "k_state": xp.astype(k_state, u.dtype),
        "v_state": xp.astype(v_state, u.dtype),
    }


# ---- forward and step ---------------------------------------------------------------------
def forward(be, params: dict, cfg: Config, u, cache: dict | None = None):
    """u: (B, L, D) -> (out (B, L, D), new cache). With a cache, continues from it.

    ``forward_train`` without what it saves (saving keeps references, computes nothing)."""
    out, new_cache, _ = forward_train(be, params, cfg, u, cache, residuals=False)
    return out, new_cache


def _rope_scan(be, params: dict, cfg: Config, x, dt, A, trap, Bn, Cn, phi, c: dict, residuals: bool):
    """mamba3_rope_scan on the per-group normed B, C (the biases per head, (R, H, N))
    -> (outputs, residuals) (mixer.scan_call)."""
    xp = be.xp
    return scan_call(
        be, residuals, "mamba3_rope_scan", x, dt, A, trap, Bn, Cn, phi, B_bias=xp.permute_dims(params["B_bias"], (1, 0, 2)),
        C_bias=xp.permute_dims(params["C_bias"], (1, 0, 2)), D=params["D"],
        mimo_x=params["mimo_x"] if cfg.is_mimo else None, chunk_size=cfg.chunk_size,
        initial_state=c.get("ssm_state"), initial_k=c.get("k_state"), initial_v=c.get("v_state"),
        pairing=cfg.rope_pairing,
    )


def forward_train(be, params: dict, cfg: Config, u, cache: dict | None = None, *,
                  residuals: bool = True):
    """``forward``, also returning ``saved``: the inputs of the op calls that backward needs.

    u: (B, L, D) -> (out (B, L, D), new cache, saved) with saved =
        "u"        (B, L, D)              in_proj's input
        "zxbc"     (B, L, d_in_proj)      in_proj's output: z (gate), x (scan), Bm, Cm (rmsnorm
                                          inputs), dd_dt (softplus), dd_A, trap (sigmoid), angles
        "dt", "A", "trap"  (B, L, H)      the scan's dt, A, trap (>= float32); dt also the angles'
        "phi"      (B, L, 1, H, S)        apply_rope's angle (>= float32)
        "Bb", "Cb" (B, L, R, H, N)        apply_rope's inputs (normed, biased)
        "Bh", "Ch" (B, L, R, H, N)        the scan's B, C (rotated)
        "y_scan"   (B, L, R, H, P)        the scan's output (the gate's input)
        "y_gated"  (B, L, E)              out_proj's input
        "angle_state", "ssm_state", "k_state", "v_state"   the initial cache, when one was given
    On a backend with mamba3_rope_scan natively, the B/C prologue (groups -> heads, bias,
    rotation) runs inside that op and "phi" is (B, L, H, S), "Bn", "Cn" (B, L, R, G, N) (normed,
    per group) replace "Bb", "Cb", "Bh", "Ch": backward then runs mamba3_rope_scan_vjp.
        "scan_res"                        the scan op's residuals for its VJP (mixer.scan_call:
                                          None unless the backend has a saving form of it and
                                          residuals is True; without them the VJP recomputes)
    """
    xp = be.xp
    Bsz, L = u.shape[0], u.shape[1]
    c = {k: v for k, v in (cache or {}).items() if v is not None}
    zxbc = be.ops.linear(u, params["in_proj.weight"])
    fused = be.ops.is_native("mamba3_rope_scan")
    z, x, Bb, Cb, dt, A, trap, angles = _prep_from(be, params, cfg, zxbc, (Bsz, L), per_group=fused)
    phi, angle_state = be.ops.mamba3_angles(angles, dt, c.get("angle_state"))
    if fused:
        (y, ssm_state, k_state, v_state), scan_res = _rope_scan(
            be, params, cfg, x, dt, A, trap, Bb, Cb, phi, c, residuals)
        rope = {"Bn": Bb, "Cn": Cb}
    else:
        phi = xp.expand_dims(phi, axis=2)  # (B, L, 1, H, S): the same angle for every rank
        Bh = be.ops.apply_rope(Bb, phi, pairing=cfg.rope_pairing)
        Ch = be.ops.apply_rope(Cb, phi, pairing=cfg.rope_pairing)
        (y, ssm_state, k_state, v_state), scan_res = scan_call(
            be, residuals, "mamba3_scan", x, dt, A, trap, Bh, Ch, D=params["D"], mimo_x=params["mimo_x"] if cfg.is_mimo else None,
            chunk_size=cfg.chunk_size, initial_state=c.get("ssm_state"), initial_k=c.get("k_state"),
            initial_v=c.get("v_state"),
        )
        rope = {"Bb": Bb, "Cb": Cb, "Bh": Bh, "Ch": Ch}
    y_gated = _mix(be, params, cfg, _gate(be, params, cfg, y, _gate_z(be, params, cfg, z)))
    out = be.ops.linear(y_gated, params["out_proj.weight"])
    saved = {"u": u, "zxbc": zxbc, "dt": dt, "A": A, "trap": trap, "phi": phi, **rope,
             "y_scan": y, "y_gated": y_gated, "scan_res": scan_res}
    saved.update({k: c[k] for k in CACHE_KEYS if k in c})
    return out, _new_cache(be, u, angle_state, ssm_state, k_state, v_state), saved


def step(be, params: dict, cfg: Config, u, cache: dict):
    """u: (B, D), one token -> (out (B, D), new cache). ``cache`` is not modified."""
    fused = fused_step(be, "mamba3")
    if fused is not None:
        return fused(be, params, cfg, u, cache)
    return composed_step(be, params, cfg, u, cache)


def composed_step(be, params: dict, cfg: Config, u, cache: dict):
    """``step`` as the composition of ops, whatever fused step the backend offers (a fused step
    falls back to this for cases it does not cover)."""
    xp = be.xp
    Bsz = u.shape[0]
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
    return out, _new_cache(be, u, angle_state, ssm_state, k_state, v_state)


# ---- backward -----------------------------------------------------------------------------
def decay_rate_grad(xp, dd_A, A_floor: float):
    """dA / d dd_A for A = -max(heavy_tail(dd_A), A_floor): -heavy_tail'(dd_A) where
    heavy_tail(dd_A) > A_floor, else 0 (torch's rule for max). heavy_tail'(v) = 1 for v >= 0,
    1 / (1 - v)^2 for v < 0. In dd_A's dtype."""
    zero = xp.zeros_like(dd_A)
    one = xp.ones_like(dd_A)
    w = 1.0 - xp.minimum(dd_A, zero)
    slope = xp.where(dd_A >= zero, one, 1.0 / (w * w))
    return xp.where(heavy_tail(xp, dd_A) > A_floor, -slope, zero)


def _sum_bl(xp, a):
    """Sum over the two leading axes (B, L)."""
    return xp.sum(a, axis=(0, 1))


def _bc_norm_vjp(be, cfg: Config, dn, v, norm_w):
    """The reverse of _bc_normed. dn: (B, L, R, G, N) gradient of its output; v: its input
    (B, L, R*G*N). Returns (dv_in (B, L, R*G*N), dnorm_w (N,))."""
    xp = be.xp
    R, G, N = cfg.mimo_rank, cfg.ngroups, cfg.d_state
    lead = tuple(v.shape[:-1])
    g = be.ops.rmsnorm_vjp(xp.astype(dn, v.dtype), xp.reshape(v, lead + (R, G, N)), norm_w, NORM_EPS)
    return xp.reshape(g["x"], lead + (R * G * N,)), xp.astype(g["weight"], norm_w.dtype)


def _bc_heads_vjp(be, cfg: Config, dv, v, norm_w, bias):
    """The reverse of _bc_heads. dv: (B, L, R, H, N) gradient of its output; v: its input
    (B, L, R*G*N). Returns (dv_in (B, L, R*G*N), dnorm_w (N,), dbias (H, R, N))."""
    xp = be.xp
    dn, dbias = heads_vjp(xp, dv, cfg.ngroups)  # G -> H: each group's heads summed; bias (R, H, N)
    dv_in, dnorm_w = _bc_norm_vjp(be, cfg, dn, v, norm_w)
    return dv_in, dnorm_w, xp.astype(xp.permute_dims(dbias, (1, 0, 2)), bias.dtype)  # bias <- (H, R, N)


def backward(be, params: dict, cfg: Config, saved: dict, dy, dcache: dict | None = None):
    """The reverse of ``forward_train``, composed from the ops' VJPs.

    dy: (B, L, D) the gradient of out (None: zero); dcache: None or a dict with some of
    {"angle_state", "ssm_state", "k_state", "v_state"}: gradients of the final cache.
    Returns (dparams {name: same shape and dtype as params[name]}, du (B, L, D),
    dcache_in {same keys as the cache given} when forward_train was given a cache, else None).

        out = out_proj(m)                       -> d m, d out_proj.weight
        m = sum_r g_r mimo_o[:, r]  (SISO g_0)  -> d g_r = d m mimo_o[:, r], d mimo_o = sum d m g_r
        g_r = gate(y_r, z_r)                    silu:    silu_gate_vjp -> d y = d g silu(z_r), d z_r
                                                outnorm: rmsnorm_vjp -> d y, d z_r, d norm.weight
        z_r = z mimo_z[:, r]  (SISO z)          -> d z = sum_r d z_r mimo_z[:, r], d mimo_z
        y, S_L, k_L, v_L = mamba3_scan(x, dt, A, trap, Bh, Ch, D, mimo_x, S_0, k_0, v_0)
                                                -> d x, d dt, d A, d trap, d Bh, d Ch, d D, d mimo_x,
                                                   d S_0, d k_0, d v_0
        Bh, Ch = apply_rope(Bb, Cb, phi)        -> d Bb, d Cb, d phi (the two summed)
        phi, angle_L = mamba3_angles(angles, dt, angle_0) -> d angles, d dt (added), d angle_0
        Bb = rmsnorm(Bm) -> G->H -> + B_bias    -> d Bm, d B_norm.weight, d B_bias (heads of a
                                                   group summed); the same for C
        trap = sigmoid(.), dt = softplus(dd_dt + dt_bias), A = -max(heavy_tail(dd_A), A_floor)
        zxbc = in_proj(u)                       -> du, d in_proj.weight
    The split of zxbc goes back as the concat of its pieces' gradients.
    """
    xp = be.xp
    u, zxbc = saved["u"], saved["zxbc"]
    dt, A, trap, phi = saved["dt"], saved["A"], saved["trap"], saved["phi"]
    Bsz, L = u.shape[0], u.shape[1]
    E, H, P, N, R, S = cfg.d_inner, cfg.nheads, cfg.headdim, cfg.d_state, cfg.mimo_rank, cfg.num_rope_angles
    wide = _wide(xp, zxbc.dtype)
    init = {k: saved[k] for k in CACHE_KEYS if k in saved}
    dcache = {k: v for k, v in (dcache or {}).items() if v is not None}
    z, x, Bm, Cm, dd_dt, dd_A, trap_in, angles = _split_in(cfg, zxbc)
    z = xp.reshape(z, (Bsz, L, H, P))
    y = saved["y_scan"]  # (B, L, R, H, P)
    dparams = {}

    # out = out_proj(m)
    if dy is None:
        dy = xp.zeros((Bsz, L, cfg.d_model), dtype=u.dtype)
    gr = be.ops.linear_vjp(dy, saved["y_gated"], params["out_proj.weight"])
    dparams["out_proj.weight"] = gr["weight"]
    dm = xp.expand_dims(xp.reshape(gr["x"], (Bsz, L, H, P)), axis=2)  # (B, L, 1, H, P)

    # m = sum_r g_r mimo_o[:, r]  (SISO: g_0)
    zr = _gate_z(be, params, cfg, z)
    if cfg.is_mimo:
        g = _gate(be, params, cfg, y, zr)  # the per-rank gated outputs, recomputed for d mimo_o
        dparams["mimo_o"] = xp.permute_dims(_sum_bl(xp, xp.astype(dm, g.dtype) * g), (1, 0, 2))
        dg = dm * xp.astype(xp.permute_dims(params["mimo_o"], (1, 0, 2)), dm.dtype)  # (B, L, R, H, P)
    else:
        dg = dm

    # g_r = gate(y_r, z_r)
    if cfg.is_outproj_norm:
        gr = be.ops.rmsnorm_vjp(xp.reshape(dg, (Bsz, L, R, E)), xp.reshape(y, (Bsz, L, R, E)),
                                params["norm.weight"], NORM_EPS, xp.reshape(zr, (Bsz, L, R, E)), P, True)
        dparams["norm.weight"] = gr["weight"]
        d_scan = xp.reshape(gr["x"], (Bsz, L, R, H, P))
        dzr = xp.reshape(gr["z"], (Bsz, L, R, H, P))
    else:
        gg = be.ops.silu_gate_vjp(xp.astype(dg, y.dtype), y, zr)
        d_scan, dzr = gg["x"], gg["z"]

    # z_r = z * mimo_z[:, r]  (SISO: z)
    if cfg.is_mimo:
        dparams["mimo_z"] = xp.permute_dims(_sum_bl(xp, dzr * xp.expand_dims(z, axis=2)), (1, 0, 2))
        dz = xp.sum(dzr * xp.astype(xp.permute_dims(params["mimo_z"], (1, 0, 2)), dzr.dtype), axis=2)
    else:
        dz = dzr[:, :, 0]

    # y, S_L, k_L, v_L = mamba3_scan(...), after Bh, Ch = apply_rope(Bb, phi), apply_rope(Cb, phi)
    # (or all of it as mamba3_rope_scan on the per-group Bn, Cn)
    xh = xp.reshape(x, (Bsz, L, H, P))

    def cot(k, like):  # a final-cache gradient, in the dtype of the op output it flows into
        return xp.astype(dcache[k], like.dtype) if k in dcache else None

    fused = "Bn" in saved
    k_like = saved["Bn"] if fused else saved["Bh"]
    cotangent = (xp.astype(d_scan, y.dtype), cot("ssm_state", dt), cot("k_state", k_like), cot("v_state", xh))
    scan_kw = dict(D=params["D"], mimo_x=params["mimo_x"] if cfg.is_mimo else None, chunk_size=cfg.chunk_size,
                   initial_state=init.get("ssm_state"), initial_k=init.get("k_state"),
                   initial_v=init.get("v_state"))
    if fused:
        gs = be.ops.vjp_saved(
            "mamba3_rope_scan", saved.get("scan_res"), cotangent, xh, dt, A, trap, saved["Bn"], saved["Cn"], phi,
            B_bias=xp.permute_dims(params["B_bias"], (1, 0, 2)), C_bias=xp.permute_dims(params["C_bias"], (1, 0, 2)),
            pairing=cfg.rope_pairing, **scan_kw)
        dphi = xp.astype(gs["phi"], wide)
    else:
        gs = be.ops.vjp_saved("mamba3_scan", saved.get("scan_res"), cotangent, xh, dt, A, trap,
                              saved["Bh"], saved["Ch"], **scan_kw)
        gb = be.ops.apply_rope_vjp(gs["B"], saved["Bb"], phi, pairing=cfg.rope_pairing)
        gc = be.ops.apply_rope_vjp(gs["C"], saved["Cb"], phi, pairing=cfg.rope_pairing)
        dphi = xp.reshape(xp.astype(gb["phi"], wide) + xp.astype(gc["phi"], wide), (Bsz, L, H, S))
    dparams["D"] = gs["D"]
    if cfg.is_mimo:
        dparams["mimo_x"] = gs["mimo_x"]

    # phi, angle_L = mamba3_angles(angles, dt, angle_0)
    ga = be.ops.mamba3_angles_vjp((dphi, cot("angle_state", dphi)), angles, dt, init.get("angle_state"))
    ddt = xp.astype(gs["dt"], wide) + xp.astype(ga["dt"], wide)

    # Bb, Cb = rmsnorm -> G->H -> + bias (mamba3_rope_scan_vjp has summed the heads and biases)
    if fused:
        dBm, dparams["B_norm.weight"] = _bc_norm_vjp(be, cfg, gs["B"], Bm, params["B_norm.weight"])
        dCm, dparams["C_norm.weight"] = _bc_norm_vjp(be, cfg, gs["C"], Cm, params["C_norm.weight"])
        dparams["B_bias"] = xp.permute_dims(gs["B_bias"], (1, 0, 2))
        dparams["C_bias"] = xp.permute_dims(gs["C_bias"], (1, 0, 2))
    else:
        dBm, dparams["B_norm.weight"], dparams["B_bias"] = _bc_heads_vjp(
            be, cfg, gb["x"], Bm, params["B_norm.weight"], params["B_bias"])
        dCm, dparams["C_norm.weight"], dparams["C_bias"] = _bc_heads_vjp(
            be, cfg, gc["x"], Cm, params["C_norm.weight"], params["C_bias"])

    # dt = softplus(dd_dt + dt_bias); trap = sigmoid(trap_in); A = -max(heavy_tail(dd_A), A_floor)
    d_pre = be.ops.softplus_vjp(ddt, xp.astype(dd_dt, wide) + xp.astype(params["dt_bias"], wide))["x"]
    dparams["dt_bias"] = _sum_bl(xp, d_pre)
    d_trap_in = be.ops.sigmoid_vjp(xp.astype(gs["trap"], wide), xp.astype(trap_in, wide))["x"]
    d_dd_A = xp.astype(gs["A"], wide) * decay_rate_grad(xp, xp.astype(dd_A, wide), cfg.A_floor)

    # zxbc = in_proj(u), split into [z, x, Bm, Cm, dd_dt, dd_A, trap, angles]
    pieces = [xp.reshape(dz, (Bsz, L, E)), xp.reshape(gs["x"], (Bsz, L, E)), dBm, dCm, d_pre, d_dd_A,
              d_trap_in, ga["angles"]]
    d_zxbc = xp.concat([xp.astype(p, zxbc.dtype) for p in pieces], axis=-1)
    gr = be.ops.linear_vjp(d_zxbc, u, params["in_proj.weight"])
    dparams["in_proj.weight"] = gr["weight"]

    dparams = {k: xp.astype(xp.reshape(dparams[k], tuple(params[k].shape)), params[k].dtype) for k in params}
    dcache_in = None
    if init:
        src = {"angle_state": ga.get("initial_angle"), "ssm_state": gs.get("initial_state"),
               "k_state": gs.get("initial_k"), "v_state": gs.get("initial_v")}
        dcache_in = {k: xp.astype(src[k], init[k].dtype) for k in init}
    return dparams, xp.astype(gr["x"], u.dtype), dcache_in
