"""The frameworks produce exactly the objective's inputs; queue and momentum rules (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import objectives
from pipelines.models.build import build_framework, check_combination
from pipelines.models.frameworks import MoCoV2, MoCoV3


def config(framework: str = "inbatch", objective: str = "cacr_inbatch", K: int = 2, **fw) -> dict:
    hparams = {
        "cacr_inbatch": {"t_pos": 1.0, "t_neg": 0.9},
        "cacr_moco_v2": {"t_pos": 1.0, "t_neg": 2.0},
        "infonce_queue": {"tau": 0.2},
        "cacr_moco_v3": {"temperature": 1.0},
    }[objective]
    model = {
        "name": "small_alexnet",
        "image_size": 32,
        "width": 0.125,
        "norm": "none",
        "projector": {"layers": 1, "hidden": 0, "out": 16},
        "predictor": None,
    }
    if framework == "moco_v3":
        model["predictor"] = {"layers": 2, "hidden": 32, "out": 16, "batch_norm": True}
    return {
        "model": model,
        "framework": {"name": framework, **fw},
        "objective": {"name": objective, "K": K, "hparams": hparams},
    }


def views(B: int = 4, V: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, V, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_inbatch_feeds_view_major_embeddings_to_the_objective() -> None:
    torch.manual_seed(0)
    fw = build_framework(config())
    x = views()
    out = fw(x)
    z = torch.stack([fw.online(x[:, v]) for v in range(3)])  # [V, B, D], one view at a time
    ref = objectives.build("cacr_inbatch", t_pos=1.0, t_neg=0.9)(z)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(fw.last_inputs[0], z.detach())
    assert fw.backbone is fw.online.backbone


def test_moco_v2_keys_queue_and_momentum() -> None:
    torch.manual_seed(0)
    fw = build_framework(config("moco_v2", "cacr_moco_v2", momentum=0.9, queue_size=10), seed=3)
    assert isinstance(fw, MoCoV2)
    queue0 = fw.queue.clone()
    torch.testing.assert_close(queue0.norm(dim=1), torch.ones(10))
    before_q = [p.detach().double().clone() for p in fw.online.parameters()]
    before_k = [p.detach().double().clone() for p in fw.momentum_encoder.parameters()]
    x = views(B=4, V=3)
    out = fw(x)
    for pk, k0, q0 in zip(fw.momentum_encoder.parameters(), before_k, before_q, strict=True):
        torch.testing.assert_close(pk.double(), 0.9 * k0 + 0.1 * q0)  # update before computing keys
    q = torch.stack([fw.online(x[:, v]) for v in range(3)])
    k = torch.stack([F.normalize(fw.momentum_encoder(x[:, v]), dim=-1) for v in range(3)])
    ref = objectives.build("cacr_moco_v2", t_pos=1.0, t_neg=2.0)(q, k, queue0)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in fw.momentum_encoder.parameters())
    fw.after_step()  # the last view's keys go in at positions 0..3
    torch.testing.assert_close(fw.queue[:4], k[-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fw.queue[4:], queue0[4:])
    assert int(fw.queue_ptr) == 4
    fw(views(B=4, V=3, seed=8))  # 4 more keys at 4..7
    fw.after_step()
    x3 = views(B=4, V=3, seed=9)
    fw(x3)
    k3 = F.normalize(fw.momentum_encoder(x3[:, -1]), dim=-1)
    fw.after_step()  # 4 more wrap around: 8, 9, 0, 1
    assert int(fw.queue_ptr) == 2
    torch.testing.assert_close(fw.queue[[8, 9, 0, 1]], k3, rtol=1e-5, atol=1e-6)


def test_moco_v2_two_view_baseline_uses_view0_queries_and_view1_keys() -> None:
    torch.manual_seed(0)
    fw = build_framework(config("moco_v2", "infonce_queue", K=1, momentum=0.0, queue_size=8))
    queue0 = fw.queue.clone()
    x = views(B=4, V=2)
    out = fw(x)
    q = fw.online(x[:, 0])
    k = F.normalize(fw.momentum_encoder(x[:, 1]), dim=-1)
    torch.testing.assert_close(out.loss, objectives.build("infonce_queue", tau=0.2)(q, k, queue0).loss)
    fw.after_step()
    torch.testing.assert_close(fw.queue[:4], k)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_moco_v3_momentum_follows_the_cosine_schedule(fraction: float) -> None:
    fw = build_framework(config("moco_v3", "cacr_moco_v3", K=1, momentum=0.996, momentum_cosine=True))
    assert isinstance(fw, MoCoV3)
    fw.set_progress(fraction)
    assert fw.momentum == pytest.approx(1 - 0.004 * (math.cos(math.pi * fraction) + 1) / 2)


def test_moco_v3_queries_go_through_the_predictor_and_keys_do_not() -> None:
    torch.manual_seed(0)
    fw = build_framework(config("moco_v3", "cacr_moco_v3", K=1, momentum=0.99))
    fw.eval()  # the predictor's BatchNorm in eval mode, so one image at a time gives the same numbers
    x = views(B=4, V=2)
    out = fw(x)
    q = torch.stack([fw.online(x[:, v]) for v in range(2)])
    k = torch.stack([fw.momentum_encoder(x[:, v]) for v in range(2)])
    torch.testing.assert_close(out.loss, objectives.build("cacr_moco_v3", temperature=1.0)(q, k).loss)
    assert q.shape[-1] == 16 and not hasattr(fw.momentum_encoder, "predictor")


@pytest.mark.parametrize(
    ("framework", "objective", "views_", "message"),
    [
        ("inbatch", "cacr_moco_v2", 5, "use framework=moco_v2"),
        ("moco_v2", "hard_negative_inbatch", 2, "use framework=inbatch"),
        ("moco_v3", "cacr_moco_v3", 5, "objective.K=4"),
        ("inbatch", "infonce_inbatch", 3, "exactly 2 views"),
        ("simclr", "cacr_inbatch", 2, "framework.name must be one of"),
    ],
)
def test_impossible_combinations_are_rejected(framework, objective, views_, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_combination(framework, objective, views_)
