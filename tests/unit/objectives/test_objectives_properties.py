"""Properties of the objectives beyond the reference comparison.

Closed-form values, invariances, stop-gradients, gradcheck, optimisation, precision (float32,
bf16 autocast at extreme temperatures), devices, and input validation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import objectives
from tests.helpers import reference
from tests.helpers.inputs import make_inputs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

DEFAULT_HP = {
    "cacr_inbatch": dict(t_pos=1.0, t_neg=0.9),
    "cacr_moco_v2": dict(t_pos=1.0, t_neg=2.0),
    "cacr_moco_v3": dict(temperature=0.2),
    "infonce_inbatch": dict(tau=0.19),
    "infonce_queue": dict(tau=0.2),
    "align_uniform_inbatch": dict(),
    "align_uniform_queue": dict(),
    "hard_negative_inbatch": dict(tau=0.5, tau_plus=0.1, beta=1.0),
}
EXTREME_HP = {
    "cacr_inbatch": dict(t_pos=10.0, t_neg=10.0),
    "cacr_moco_v2": dict(t_pos=10.0, t_neg=10.0),
    "cacr_moco_v3": dict(temperature=0.05),
    "infonce_inbatch": dict(tau=0.05),
    "infonce_queue": dict(tau=0.05),
    "align_uniform_inbatch": dict(unif_t=10.0),
    "align_uniform_queue": dict(unif_t=10.0),
    "hard_negative_inbatch": dict(tau=0.05, tau_plus=0.1, beta=3.0),
}
NAMES = sorted(DEFAULT_HP)


def eye_views(V: int, B: int, D: int | None = None) -> torch.Tensor:
    """``[V, B, D]`` of mutually orthogonal unit rows."""
    D = D or V * B
    return torch.eye(D, dtype=torch.float64)[: V * B].reshape(V, B, D)


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("tau_plus", [None, 0.2])
def test_cacr_inbatch_orthogonal(tau_plus):
    loss_fn = objectives.build("cacr_inbatch", t_pos=1.0, t_neg=0.9, alpha=1.5, beta=0.5, tau_plus=tau_plus)
    out = loss_fn(eye_views(3, 4))
    rep = -0.5 * 2 if tau_plus is None else (-tau_plus * 2 - 0.5 * 2) / (1 - tau_plus)
    assert out.terms["attraction"].item() == pytest.approx(1.5 * 2, rel=1e-12)
    assert out.terms["repulsion"].item() == pytest.approx(rep, rel=1e-12)


def test_cacr_moco_v2_orthogonal_and_aligned():
    V, B, Q = 3, 4, 5
    basis = torch.eye(2 * V * B + Q, dtype=torch.float64)
    q = basis[: V * B].reshape(V, B, -1)
    k = basis[V * B : 2 * V * B].reshape(V, B, -1)
    queue = basis[2 * V * B :]
    out = objectives.build("cacr_moco_v2", t_pos=1.0, t_neg=2.0, alpha=2.0, beta=3.0)(q, k, queue)
    assert out.terms["attraction"].item() == pytest.approx(2.0 * 2, rel=1e-12)
    assert out.terms["repulsion"].item() == pytest.approx(-3.0 * 2, rel=1e-12)
    # keys equal to the queries of every view: nothing left to attract
    same = basis[:B].expand(V, B, -1)
    out = objectives.build("cacr_moco_v2", t_pos=1.0, t_neg=2.0, intra_batch=False)(same, same, queue)
    assert out.terms["attraction"].item() == pytest.approx(0.0, abs=1e-12)


def test_cacr_moco_v3_closed_forms():
    V, B, T = 3, 4, 0.5
    orth_q, orth_k = eye_views(2 * V, B)[:V], eye_views(2 * V, B)[V:]
    rbf = objectives.build("cacr_moco_v3", temperature=T)
    euc = objectives.build("cacr_moco_v3", temperature=T, cost="euclidean")
    assert rbf(orth_q, orth_k).loss.item() == pytest.approx(2 * T * math.log(B), rel=1e-12)
    assert euc(orth_q, orth_k).loss.item() == pytest.approx(0.0, abs=1e-12)
    aligned = eye_views(1, B).expand(V, B, B)  # every view of image n is e_n, keys too
    ce = math.log(math.exp(1 / T) + B - 1) - 1 / T
    assert rbf(aligned, aligned).loss.item() == pytest.approx(2 * T * ce, rel=1e-12)
    # the Euclidean cost sums over the batch: -1 per anchor
    assert euc(aligned, aligned).loss.item() == pytest.approx(-B, rel=1e-12)


@pytest.mark.parametrize("name", ["infonce_inbatch", "hard_negative_inbatch"])
def test_two_view_ce_orthogonal(name):
    B = 5
    out = objectives.build(name, **DEFAULT_HP[name])(eye_views(2, B))
    assert out.loss.item() == pytest.approx(math.log(2 * B - 1), rel=1e-12)


def test_infonce_queue_orthogonal():
    basis = torch.eye(20, dtype=torch.float64)
    out = objectives.build("infonce_queue", tau=0.2)(basis[:4], basis[4:8], basis[8:15])
    assert out.loss.item() == pytest.approx(math.log(7 + 1), rel=1e-12)


@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.0])
def test_align_uniform_orthogonal(alpha):
    t = 1.5
    out = objectives.build("align_uniform_inbatch", align_alpha=alpha, unif_t=t, align_w=2.0, unif_w=0.5)(
        eye_views(2, 4)
    )
    assert out.terms["align"].item() == pytest.approx(2 ** (alpha / 2), rel=1e-12)
    assert out.terms["uniform"].item() == pytest.approx(-2 * t, rel=1e-12)
    assert out.loss.item() == pytest.approx(2.0 * 2 ** (alpha / 2) - 0.5 * 2 * t, rel=1e-12)
    basis = torch.eye(16, dtype=torch.float64)
    out = objectives.build("align_uniform_queue", align_alpha=alpha, unif_t=t)(
        basis[:4], basis[4:8], basis[8:14]
    )
    assert out.terms["align"].item() == pytest.approx(2 ** (alpha / 2), rel=1e-12)
    assert out.terms["uniform"].item() == pytest.approx(-2 * t, rel=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_align_gradient_is_finite_for_identical_pairs(alpha):
    views = make_inputs("align_uniform_inbatch", B=4, D=5, grad=False)[0].clone()
    views[1, 0] = views[0, 0]  # one pair is perfectly aligned
    views.requires_grad_(True)
    objectives.build("align_uniform_inbatch", align_alpha=alpha)(views).loss.backward()
    assert torch.isfinite(views.grad).all()


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("name", NAMES)
def test_permuting_the_batch_or_queue_leaves_the_loss_unchanged(name):
    inputs = make_inputs(name, V=3, B=6, D=5, Q=8, seed=3, grad=False)
    loss_fn = objectives.build(name, **DEFAULT_HP[name])
    base = loss_fn(*inputs).loss
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    if name in ("infonce_queue", "align_uniform_queue"):
        permuted = [inputs[0][perm], inputs[1][perm], inputs[2].flip(0)]
    elif name == "cacr_moco_v2":
        permuted = [inputs[0][:, perm], inputs[1][:, perm], inputs[2].flip(0)]
    else:
        permuted = [x[:, perm] for x in inputs]
    torch.testing.assert_close(loss_fn(*permuted).loss, base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name,args",
    [
        ("cacr_inbatch", lambda: make_inputs("cacr_inbatch", V=2, grad=False)),
        ("cacr_moco_v2", lambda: make_inputs("cacr_moco_v2", V=2, grad=False)),
        ("cacr_moco_v3", lambda: make_inputs("cacr_moco_v3", V=2, grad=False)),
    ],
)
def test_with_one_positive_the_attraction_weight_is_one(name, args):
    diag = objectives.build(name, **DEFAULT_HP[name]).diagnostics(*args())
    assert diag["attraction_max_weight"].item() == pytest.approx(1.0, abs=1e-12)
    assert diag["attraction_entropy"].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["cacr_inbatch", "cacr_moco_v2", "cacr_moco_v3"])
def test_diagnostics_match_hand_computed_weights(name):
    """With K = 4 and t -> tiny, weights are uniform: entropy log K, max 1 / K."""
    inputs = make_inputs(name, V=5, B=4, D=6, Q=3, grad=False)
    hp = dict(temperature=1e6) if name == "cacr_moco_v3" else dict(t_pos=1e-9, t_neg=1e-9)
    diag = objectives.build(name, **hp).diagnostics(*inputs)
    assert diag["attraction_entropy"].item() == pytest.approx(math.log(4), rel=1e-6)
    assert diag["attraction_max_weight"].item() == pytest.approx(1 / 4, rel=1e-6)
    n_neg = {"cacr_inbatch": 3, "cacr_moco_v2": 3 + 3, "cacr_moco_v3": 3}[name]
    if name != "cacr_moco_v3":  # v3 RBF repulsion weights run over all keys
        assert diag["repulsion_entropy"].item() == pytest.approx(math.log(n_neg), rel=1e-6)
        assert diag["repulsion_max_weight"].item() == pytest.approx(1 / n_neg, rel=1e-6)


# ---------------------------------------------------------------- stop-gradients


@pytest.mark.parametrize("cache", [True, False])
def test_official_queue_cache_sends_queue_gradient_to_view_zero_only(cache):
    q, k, queue = make_inputs("cacr_moco_v2", V=3, B=4, D=5, Q=6)
    loss_fn = objectives.build(
        "cacr_moco_v2", t_pos=1.0, t_neg=2.0, alpha=0.0, intra_batch=False, official_queue_cache=cache
    )
    loss_fn(q, k, queue).loss.backward()
    assert q.grad[0].abs().max() > 1e-3
    later = q.grad[1:].abs().max().item()
    if cache:
        assert later == 0.0
    else:
        assert later > 1e-3


def test_moco_v2_attraction_weights_are_detached():
    """With K = 2 the gradient is sum_u sg(w_u) dc_u/dq, by hand; with live weights it would differ."""
    V, B = 3, 4
    q, k, queue = make_inputs("cacr_moco_v2", V=V, B=B, D=5, Q=2)
    out = objectives.build("cacr_moco_v2", t_pos=3.0, t_neg=1.0, beta=0.0)(q, k, queue)
    out.loss.backward()
    qn, kn = F.normalize(q.detach(), dim=-1), F.normalize(k.detach(), dim=-1)
    g_qn = torch.zeros_like(qn)
    for v in range(V):
        others = [u for u in range(V) if u != v]
        c = torch.stack([((qn[v] - kn[u]) ** 2).sum(-1) for u in others])  # [K, B]
        w = torch.softmax(3.0 * c, dim=0)  # constants
        g_qn[v] = sum(w[i, :, None] * 2 * (qn[v] - kn[u]) for i, u in enumerate(others)) / (V * B)
    norm = q.detach().norm(dim=-1, keepdim=True)  # chain through the normalisation
    expected = (g_qn - (g_qn * qn).sum(-1, keepdim=True) * qn) / norm
    torch.testing.assert_close(q.grad, expected, rtol=1e-10, atol=1e-12)
    # the weights vary here, so a gradient through them would show
    live = q.detach().clone().requires_grad_(True)
    qn_live = F.normalize(live, dim=-1)
    total = 0
    for v in range(V):
        c = torch.stack([((qn_live[v] - kn[u]) ** 2).sum(-1) for u in range(V) if u != v])
        total = total + (torch.softmax(3.0 * c, dim=0) * c).sum(0).mean() / V
    total.backward()
    assert (live.grad - q.grad).abs().max() > 1e-4


# ---------------------------------------------------------------- autograd


# Stop-gradient weights make finite differences disagree with autograd by design, so the
# variants that have them are checked where those weights are constant (K = 1, one queue entry
# without intra-batch negatives, one negative for the Euclidean softmax); the reference test
# covers their general case.
SMALL = dict(V=3, B=3, D=4, Q=4)
GRADCHECK_CASES = [
    ("cacr_inbatch", dict(t_pos=1.0, t_neg=0.9), SMALL),
    ("cacr_inbatch", dict(t_pos=2.0, t_neg=3.0, tau_plus=0.1, weighting="uniform_attraction"), SMALL),
    ("cacr_moco_v2", dict(t_pos=1.0, t_neg=2.0, intra_batch=False), dict(V=2, B=3, D=4, Q=1)),
    ("cacr_moco_v3", dict(temperature=0.5), dict(V=2, B=3, D=4)),
    ("cacr_moco_v3", dict(temperature=0.5, cost="euclidean"), dict(V=2, B=2, D=4)),
    ("infonce_inbatch", dict(tau=0.3), SMALL),
    ("infonce_queue", dict(tau=0.3), SMALL),
    ("align_uniform_inbatch", dict(align_alpha=1.5), SMALL),
    ("align_uniform_queue", dict(), SMALL),
    ("hard_negative_inbatch", dict(tau=0.5, tau_plus=0.1, beta=1.0), SMALL),
]


@pytest.mark.parametrize("name,hp,dims", GRADCHECK_CASES)
def test_gradcheck(name, hp, dims):
    inputs = make_inputs(name, seed=7, **dims)
    loss_fn = objectives.build(name, **hp)
    assert torch.autograd.gradcheck(lambda *x: loss_fn(*x).loss, inputs, eps=1e-6, atol=1e-6)


def test_gradcheck_detects_the_stop_gradient():
    """With varying detached weights finite differences must disagree (the weights are sg)."""
    inputs = make_inputs("cacr_moco_v2", V=3, B=3, D=4, Q=4, seed=7)
    loss_fn = objectives.build("cacr_moco_v2", t_pos=3.0, t_neg=2.0)
    assert not torch.autograd.gradcheck(
        lambda *x: loss_fn(*x).loss, inputs, eps=1e-6, atol=1e-6, raise_exception=False
    )


@pytest.mark.parametrize("name", NAMES)
def test_a_few_sgd_steps_lower_the_loss(name):
    """Free embeddings as parameters; keys and queue fixed (as a momentum encoder would)."""
    inputs = make_inputs(name, V=3, B=8, D=8, Q=16, seed=11, dtype=torch.float32, grad=False)
    param = torch.nn.Parameter(inputs[0].clone())
    loss_fn = objectives.build(name, **DEFAULT_HP[name])
    opt = torch.optim.SGD([param], lr=0.5)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn(param, *inputs[1:]).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses


# ---------------------------------------------------------------- precision and devices


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_float32_agrees_with_float64_reference(name, device):
    inputs = make_inputs(name, V=3, B=6, D=8, Q=10, seed=5, grad=False)
    ref, _ = reference.REFERENCES[name](*inputs, **DEFAULT_HP[name])
    out = objectives.build(name, **DEFAULT_HP[name])(*[x.float().to(device) for x in inputs])
    assert out.loss.dtype == torch.float32 and out.loss.device.type == device
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_is_finite_at_extreme_temperatures(name, device):
    """Inputs come out of a bf16 linear layer; the loss math still runs in float32."""
    torch.manual_seed(0)
    dims = dict(V=3, B=16, D=32, Q=64)
    raw = make_inputs(name, seed=2, dtype=torch.float32, grad=False, **dims)
    layer = torch.nn.Linear(32, 32).to(device)
    loss_fn = objectives.build(name, **EXTREME_HP[name])
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        embedded = [layer(x.to(device)) for x in raw[:2]] + [x.to(device) for x in raw[2:]]
        if name in ("infonce_inbatch", "align_uniform_inbatch", "hard_negative_inbatch", "cacr_inbatch"):
            embedded = embedded[:1]
        assert embedded[0].dtype == torch.bfloat16
        out = loss_fn(*embedded)
    assert out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    # same numbers as float32 math on the same bf16 activations
    plain = loss_fn(*[x.detach().float() for x in embedded]).loss
    torch.testing.assert_close(out.loss.detach(), plain, rtol=1e-6, atol=1e-6)


def test_normalize_false_equals_normalize_true_on_unit_inputs():
    for name in NAMES:
        inputs = [F.normalize(x, dim=-1) for x in make_inputs(name, grad=False)]
        a = objectives.build(name, **DEFAULT_HP[name])(*inputs).loss
        b = objectives.build(name, normalize=False, **DEFAULT_HP[name])(*inputs).loss
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
