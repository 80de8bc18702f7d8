"""Schedules, LARS, checkpoints, kNN and BatchNorm recomputation (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.core import checkpoints as ckpt
from pipelines.core.schedules import learning_rate
from pipelines.evaluation.features import recompute_batchnorm
from pipelines.evaluation.knn import knn_predict, knn_predict_at, knn_top1
from pipelines.training.final_eval import node_threads
from pipelines.training.optim import LARS, build_optimizer

STEP = {"name": "step", "milestones": [155, 170, 185], "gamma": 0.1, "warmup_epochs": 0}


@pytest.mark.parametrize(
    ("epoch", "expected"), [(0, 0.06), (154, 0.06), (155, 0.006), (169, 0.006), (170, 0.0006), (199, 0.00006)]
)
def test_step_schedule_decays_at_the_papers_milestones(epoch: int, expected: float) -> None:
    assert learning_rate(epoch * 10 + 9, 10, 200, 0.06, STEP) == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_with_warmup_matches_the_closed_form() -> None:
    sched = {"name": "cosine", "warmup_epochs": 2}
    spe, epochs, lr = 10, 12, 4.8
    # warm-up: linear in (step + 1) over 2 epochs
    assert learning_rate(0, spe, epochs, lr, sched) == pytest.approx(lr * 1 / 20)
    assert learning_rate(19, spe, epochs, lr, sched) == pytest.approx(lr)
    # after it: half a cosine over the remaining 10 epochs, evaluated per step
    for step in (20, 45, 70, 119):
        t = (step / spe - 2) / 10
        assert learning_rate(step, spe, epochs, lr, sched) == pytest.approx(
            lr * 0.5 * (1 + math.cos(math.pi * t))
        )


def test_lars_step_matches_a_float64_reference() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    gw, gb = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    pw, pb = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    pw.grad, pb.grad = gw.clone(), gb.clone()
    opt = LARS([pw, pb], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    opt.step()
    wn, gwd = np.asarray(w), np.asarray(gw) + 0.1 * np.asarray(w)
    ratio = 0.001 * np.linalg.norm(wn) / np.linalg.norm(gwd)
    np.testing.assert_allclose(pw.detach().numpy(), wn - 0.5 * ratio * gwd, rtol=1e-12)
    np.testing.assert_allclose(
        pb.detach().numpy(), np.asarray(b) - 0.5 * np.asarray(gb), rtol=1e-12
    )  # 1-D: plain
    pw.grad, pb.grad = gw.clone(), gb.clone()
    opt.step()  # second step: momentum buffer 0.9 * first + new
    w1 = wn - 0.5 * ratio * gwd
    g2 = np.asarray(gw) + 0.1 * w1
    r2 = 0.001 * np.linalg.norm(w1) / np.linalg.norm(g2)
    np.testing.assert_allclose(pw.detach().numpy(), w1 - 0.5 * (0.9 * ratio * gwd + r2 * g2), rtol=1e-12)


def test_build_optimizer_kinds_and_rates() -> None:
    m = nn.Linear(3, 2)
    sgd = build_optimizer(m, {"name": "sgd", "momentum": 0.9, "weight_decay": 1e-4}, 0.06)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.06
    assert sgd.param_groups[0]["weight_decay"] == 1e-4 and sgd.param_groups[0]["momentum"] == 0.9
    assert isinstance(build_optimizer(m, {"name": "lars"}, 4.8), LARS)
    assert isinstance(build_optimizer(m, {"name": "adamw", "weight_decay": 0.1}, 2.4e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match=r"trainer\.optimizer\.name"):
        build_optimizer(m, {"name": "adam"}, 0.1)


def test_checkpoint_round_trip_and_torn_checkpoints(tmp_path) -> None:
    model = nn.Linear(3, 2)
    state = {"model": model.state_dict(), "epoch": 3, "step": 42, "step_in_epoch": 0, "rng": ckpt.rng_state()}
    d = ckpt.write_checkpoint(tmp_path / "c", state, model.state_dict())
    loaded = ckpt.read_checkpoint(d)
    assert loaded["epoch"] == 3 and loaded["step"] == 42
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert not list(d.glob("*.tmp*"))
    (d / ckpt.COMPLETE).unlink()  # a writer killed before the marker: never loaded
    assert not ckpt.is_complete(d)
    with pytest.raises(ckpt.IncompleteCheckpointError, match="not a complete checkpoint"):
        ckpt.read_checkpoint(d)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    assert not ckpt.all_finite(model)


def _knn_reference(test, bank, labels, num_classes, k, t):
    test = np.asarray(test, np.float64)
    bank = np.asarray(bank, np.float64)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    out = []
    for x in test:
        sims = [(float(x @ b), j) for j, b in enumerate(bank)]
        top = sorted(sims, reverse=True)[:k]
        votes = [0.0] * num_classes
        for s, j in top:
            votes[int(labels[j])] += math.exp(s / t)
        out.append(int(np.argmax(votes)))
    return out


@pytest.mark.parametrize(("k", "t"), [(1, 0.07), (5, 0.07), (20, 0.5), (200, 0.07)])
def test_knn_equals_a_brute_force_float64_reference(k: int, t: float) -> None:
    gen = torch.Generator().manual_seed(k)
    bank, test = torch.randn(60, 8, generator=gen), torch.randn(25, 8, generator=gen)
    labels = torch.randint(0, 4, (60,), generator=gen)
    got = knn_predict(test, bank, labels, 4, k=k, temperature=t, chunk=7)
    assert got.tolist() == _knn_reference(test, bank, labels, 4, min(k, 60), t)
    acc = knn_top1(test, got, bank, labels, 4, k=k, temperature=t)
    assert acc == 100.0


def test_knn_at_several_k_from_one_pass_equals_the_reference_at_each() -> None:
    gen = torch.Generator().manual_seed(3)
    bank, test = torch.randn(150, 8, generator=gen), torch.randn(40, 8, generator=gen)
    labels = torch.randint(0, 5, (150,), generator=gen)
    ks = [10, 20, 100, 200]
    got = knn_predict_at(test, bank, labels, 5, ks, temperature=0.07, chunk=16)
    assert sorted(got) == ks
    for k in ks:
        assert got[k].tolist() == _knn_reference(test, bank, labels, 5, min(k, 150), 0.07), k
    assert len({tuple(p.tolist()) for p in got.values()}) > 1  # the k's really differ here


def test_recompute_batchnorm_gives_the_exact_mean_and_unbiased_variance() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 4), nn.BatchNorm1d(4))
    images = torch.randint(0, 256, (30, 3, 2, 2), dtype=torch.uint8)
    batches = [
        {"views": images[i : i + 8], "label": torch.zeros(len(images[i : i + 8]))} for i in range(0, 30, 8)
    ]
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    used = recompute_batchnorm(net, batches, mean, std, torch.device("cpu"))
    x = (images.double() / 255 - mean.double().view(1, 3, 1, 1)) / std.double().view(1, 3, 1, 1)
    h = x.flatten(1) @ net[1].weight.double().T + net[1].bias.double()
    # momentum=None averages the per-batch statistics, weighted equally per batch (PyTorch's rule)
    per_batch = [h[i : i + 8] for i in range(0, 30, 8)]
    exp_mean = torch.stack([b.mean(0) for b in per_batch]).mean(0)
    exp_var = torch.stack([b.var(0, unbiased=True) for b in per_batch]).mean(0)
    assert used == 30
    torch.testing.assert_close(net[2].running_mean.double(), exp_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[2].running_var.double(), exp_var, rtol=1e-5, atol=1e-6)
    assert net[2].momentum == 0.1 and net.training


def test_rank_zero_judges_with_the_threads_of_every_worker_on_its_node_then_gives_them_back() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with node_threads(3) as inside:
            assert inside == torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError), node_threads(2):
            assert torch.get_num_threads() == 4
            raise RuntimeError("the evaluation failed")
        assert torch.get_num_threads() == 2  # given back on failure too
        with node_threads(0):  # a local world size of 0 (never from Ray) keeps the count
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
