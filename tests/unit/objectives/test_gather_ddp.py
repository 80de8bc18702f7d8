"""Cross-rank in-batch negatives with a real 2-process gloo group on CPU.

Each rank holds half of a global batch and builds its objective with ``gather=True``. Under DDP
the trained gradient is the mean over ranks of each rank's gradient, so the mean (for the
Euclidean MoCo-v3 cost, which sums over the batch: the sum) of the per-rank losses, and each
rank's gradient divided by the world size (sum cost: undivided), must equal the float64
reference loss on the whole global batch and its gradient.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import reference
from tests.helpers.ddp_worker import local_part, run, spawn
from tests.helpers.inputs import make_inputs

WORLD = 2
CASES = [
    ("cacr_inbatch", dict(t_pos=1.0, t_neg=0.9), dict(V=3, B=6, D=5)),
    (
        "cacr_inbatch",
        dict(t_pos=2.0, t_neg=2.0, weighting="uniform_repulsion", tau_plus=0.1),
        dict(V=2, B=4, D=5),
    ),
    ("cacr_moco_v2", dict(t_pos=1.0, t_neg=2.0), dict(V=3, B=4, D=5, Q=6)),
    ("cacr_moco_v2", dict(t_pos=1.0, t_neg=2.0, official_queue_cache=True), dict(V=2, B=4, D=5, Q=6)),
    ("cacr_moco_v3", dict(temperature=0.5, full_mode=True), dict(V=3, B=4, D=5)),
    ("cacr_moco_v3", dict(temperature=0.5, cost="euclidean"), dict(V=3, B=4, D=5)),
    ("infonce_inbatch", dict(tau=0.2), dict(B=6, D=5)),
    ("align_uniform_inbatch", dict(), dict(B=6, D=5)),
    ("align_uniform_queue", dict(), dict(B=6, D=5, Q=7)),
    ("hard_negative_inbatch", dict(tau=0.5, tau_plus=0.1, beta=1.0), dict(B=6, D=5)),
]


def batch_dims(name: str) -> list[int | None]:
    return {
        "cacr_moco_v2": [1, 1, None],
        "cacr_moco_v3": [1, 1],
        "align_uniform_queue": [0, 0, None],
    }.get(name, [1])


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    payload = []
    for i, (name, hp, dims) in enumerate(CASES):
        inputs = [x.detach() for x in make_inputs(name, seed=100 + i, grad=False, **dims)]
        payload.append({"name": name, "hp": hp, "inputs": inputs, "batch_dims": batch_dims(name)})
    return payload, spawn(run, WORLD, tmp, payload)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_gathered_loss_and_gradients_equal_the_global_batch(ddp_results, index):
    payload, per_rank = ddp_results
    case = payload[index]
    summed = case["name"] == "cacr_moco_v3" and case["hp"].get("cost") == "euclidean"
    inputs = [
        x.clone().requires_grad_(d is not None)
        for x, d in zip(case["inputs"], case["batch_dims"], strict=True)
    ]
    ref_loss, _ = reference.REFERENCES[case["name"]](*inputs, **case["hp"])
    ref_loss.backward()

    losses = torch.stack([per_rank[r][index]["loss"] for r in range(WORLD)])
    combined = losses.sum() if summed else losses.mean()
    torch.testing.assert_close(combined, ref_loss.detach(), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(losses[0], losses[1])  # the ranks really saw different anchors

    for slot, dim in enumerate(case["batch_dims"]):
        if dim is None:
            continue
        for r in range(WORLD):
            expected = local_part(inputs[slot].grad, dim, r, WORLD)
            got = per_rank[r][index]["grads"][slot] / (1 if summed else WORLD)
            torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


def test_without_gather_each_rank_would_see_a_different_loss(ddp_results):
    """Sanity check that the test can fail: local-only negatives do not give the global loss."""
    import objectives

    payload, per_rank = ddp_results
    case = payload[0]
    local = [local_part(x, d, 0, WORLD) for x, d in zip(case["inputs"], case["batch_dims"], strict=True)]
    alone = objectives.build(case["name"], **case["hp"])(*local).loss
    assert not torch.allclose(alone, per_rank[0][0]["loss"])
