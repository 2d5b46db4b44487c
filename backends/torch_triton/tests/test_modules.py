"""torch.nn.Module wrappers: autograd through mamba-core's backward, on CPU tensors under the
Triton interpreter (TRITON_INTERPRET=1) at tiny shapes.

loss.backward() must give, for the input and every parameter, the gradients of the core's
``backward`` run on the float64 reference backend (relative max error < 2e-4 in float32); the
parameter names must be the core's (= mamba_ssm's) keys; a torch optimizer step must work.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the torch_triton modules need it")
pytest.importorskip("triton", reason="triton is not installed: the torch_triton kernels need it")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

from mamba_backend_torch_triton.modules import Mamba1, Mamba2, Mamba3, MambaLM  # noqa: E402
from mamba_core.models import lm  # noqa: E402
from mamba_core.registry import get_backend  # noqa: E402

REF = get_backend("reference")


def rel(got, want):
    got = got.detach().to("cpu", torch.float64).numpy()
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)


MIXERS = {
    "mamba1": (Mamba1, dict(d_state=4, d_conv=3)),
    "mamba2": (Mamba2, dict(d_state=8, headdim=4, chunk_size=4)),
    "mamba3": (Mamba3, dict(d_state=8, headdim=4, chunk_size=4)),
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_mixer_autograd_matches_core_backward(name):
    cls, kw = MIXERS[name]
    torch.manual_seed(0)
    try:
        m = cls(8, seed=1, **kw)
    except Exception as exc:  # a config field this mixer does not have
        pytest.skip(f"{name}: {exc}")
    names = [n for n, _ in m.named_parameters()]
    assert set(names) == set(m._mixer.param_shapes(m.cfg)), "parameter names must be the core's keys"
    u = torch.randn(2, 6, 8, requires_grad=True)
    y = m(u)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    # the core's backward, float64, on the reference backend
    p64 = {k: v.detach().double().numpy() for k, v in m.core_params().items()}
    y_ref, _, saved = m._mixer.forward_train(REF, p64, m.cfg, u.detach().double().numpy())
    dp, du, _ = m._mixer.backward(REF, p64, m.cfg, saved, w.double().numpy())
    assert rel(y, y_ref) < 2e-4
    assert rel(u.grad, du) < 2e-4, "input gradient"
    for k, prm in m.named_parameters():
        assert prm.grad is not None, k
        assert rel(prm.grad, dp[k]) < 2e-4, f"gradient of {k}: {rel(prm.grad, dp[k]):.2e}"
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    opt.step()
    assert all(not torch.equal(before[k], v) for k, v in m.named_parameters()), "every parameter moves"


def test_inference_runs_the_forward_that_saves_nothing(monkeypatch):
    """Under torch.no_grad() (or with nothing requiring grad) a module runs the core's forward:
    no saving form runs, and the output is the training forward's."""
    from mamba_backend_torch_triton.modules import _backend

    m = Mamba3(8, seed=1, d_state=8, headdim=4, chunk_size=4)
    u = torch.randn(2, 6, 8)
    y_train = m(u)
    assert y_train.requires_grad
    calls = []
    ops = type(_backend().ops)
    monkeypatch.setattr(ops, "forward_saving", lambda self, *a, **k: calls.append(a[0]))
    with torch.no_grad():
        y = m(u)
    assert calls == [] and not y.requires_grad
    assert torch.equal(y, y_train.detach())
    for p in m.parameters():
        p.requires_grad_(False)
    assert torch.equal(m(u), y) and calls == []
    logits = MambaLM(dict(d_model=8, n_layer=1, vocab_size=7, ssm_cfg={"layer": "Mamba1", "d_state": 4}))
    with torch.no_grad():
        assert logits(torch.randint(0, 7, (1, 3))).shape[:2] == (1, 3) and calls == []


def test_mixer_in_a_torch_model_and_state_dict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), Mamba1(8, d_state=4, seed=2), torch.nn.Linear(8, 2))
    keys = set(model.state_dict())
    assert {"1.in_proj.weight", "1.A_log", "1.dt_proj.bias"} <= keys
    x = torch.randn(2, 5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    m2 = Mamba1(8, d_state=4, seed=5)
    m2.load_state_dict({k[2:]: v for k, v in model.state_dict().items() if k.startswith("1.")})
    assert torch.equal(m2.A_log, model[1].A_log)


def test_lm_autograd_matches_core_backward():
    cfg = dict(d_model=8, n_layer=2, vocab_size=13, ssm_cfg={"layer": "Mamba1", "d_state": 4})
    m = MambaLM(cfg, seed=3)
    assert set(n for n, _ in m.named_parameters()) == set(lm.param_shapes(m.cfg))
    ids = torch.randint(0, 13, (2, 5))
    logits = m(ids)
    w = torch.randn_like(logits)
    (logits * w).sum().backward()
    p64 = {k: v.detach().double().numpy() for k, v in m.core_params().items()}
    ref_logits, _, saved = lm.forward_train(REF, p64, m.cfg, ids.numpy())
    grads, _ = lm.backward(REF, p64, m.cfg, saved, w.double().numpy())
    assert rel(logits, ref_logits) < 2e-4
    for k, prm in m.named_parameters():
        assert rel(prm.grad, grads[k]) < 2e-4, k
    # decode through the module's step agrees with the parallel forward
    cache = m.init_cache(2)
    steps = []
    for t in range(ids.shape[1]):
        lg, cache = m.step(ids[:, t], cache)
        steps.append(lg)
    assert rel(torch.stack(steps, 1), ref_logits) < 2e-4


def test_cuda_graph_decoder_falls_back_off_cuda():
    from mamba_backend_torch_triton.graphs import CudaGraphDecoder

    cfg = lm.LMConfig(d_model=8, n_layer=1, vocab_size=11, ssm_cfg={"layer": "Mamba1", "d_state": 4})
    be = get_backend("torch_triton")
    params = lm.to_backend(be, lm.init_params(cfg, np.random.default_rng(0)))
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device"):
        dec = CudaGraphDecoder(be, params, cfg)
    assert not dec.enabled and not be.capabilities.cuda_graphs
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    want, _ = lm.forward(be, params, cfg, ids)
    got = torch.stack([dec.step(ids[:, t]).clone() for t in range(3)], 1)
    assert rel(got, want.numpy()) < 2e-4
