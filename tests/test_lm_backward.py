"""Language-model gradients (block, MLP, norms, tied/untied head) against finite differences."""

import numpy as np
import pytest

from mamba_core.models import lm
from mamba_core.models.config import LMConfig
from mamba_core.ops.cross_entropy import cross_entropy_ref
from mamba_core.registry import get_backend

MIXERS = {
    "Mamba1": {"layer": "Mamba1", "d_state": 4},
    "Mamba2": {"layer": "Mamba2", "d_state": 4, "headdim": 4, "chunk_size": 3, "ngroups": 2},
    "Mamba3": {"layer": "Mamba3", "d_state": 4, "headdim": 4, "chunk_size": 3},
    "Mamba3-MIMO": {"layer": "Mamba3", "d_state": 4, "headdim": 4, "chunk_size": 3, "is_mimo": True, "mimo_rank": 2},
}


def _loss(be, params, cfg, ids, targets):
    logits, _ = lm.forward(be, params, cfg, ids)
    return float(cross_entropy_ref(be.to_numpy(logits), targets))


@pytest.mark.parametrize("layer", list(MIXERS))
@pytest.mark.parametrize("variant", ["tied", "mlp,untied"])
def test_loss_and_grad_matches_finite_differences(layer, variant):
    be = get_backend("reference")
    cfg = LMConfig(d_model=8, n_layer=2, vocab_size=11, ssm_cfg=dict(MIXERS[layer]),
                   d_intermediate=4 if "mlp" in variant else 0, tie_embeddings=variant == "tied")
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) for k, v in lm.init_params(cfg, rng).items()}
    for k in params:  # make constant inits (norm weights, D) non-constant
        if params[k].size > 1 and np.all(params[k] == params[k].flat[0]):
            params[k] = params[k] + 0.2 * rng.standard_normal(params[k].shape)
    ids = rng.integers(0, 11, size=(2, 5))
    targets = rng.integers(0, 11, size=(2, 5))
    targets[0, 0] = -100
    loss, grads = lm.loss_and_grad(be, params, cfg, ids, targets)
    assert abs(loss - _loss(be, params, cfg, ids, targets)) < 1e-12
    assert set(grads) == set(params)
    eps = 1e-6
    worst = 0.0
    for k, g in grads.items():
        assert g.shape == params[k].shape, k
        flat = np.abs(g).ravel()
        picks = {int(np.argmax(flat))} | set(rng.choice(flat.size, size=min(3, flat.size), replace=False).tolist())
        for i in picks:
            idx = np.unravel_index(i, g.shape)
            plus, minus = dict(params), dict(params)
            plus[k] = params[k].copy(); plus[k][idx] += eps
            minus[k] = params[k].copy(); minus[k][idx] -= eps
            fd = (_loss(be, plus, cfg, ids, targets) - _loss(be, minus, cfg, ids, targets)) / (2 * eps)
            # FD noise is ~1e-10 absolute (loss ~2, eps 1e-6): floor the scale so tensors whose
            # gradients are ~1e-7 (dt paths at init) are judged on absolute error
            err = abs(fd - g[idx]) / max(np.abs(g).max(), 1e-3)
            worst = max(worst, err)
            assert err < 1e-5, (k, idx, fd, g[idx])
    assert worst < 1e-5
