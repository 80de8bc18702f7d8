"""Shuffle-BN keys and the MoCo-v2 queue update across a real 2-process gloo group, against NumPy."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.models.build import build_framework
from tests.helpers.ddp_worker import run_framework_gathers, spawn
from tests.unit.models.test_frameworks import config

WORLD, N, D, Q = 2, 4, 3, 10


def batchnorm(rows: np.ndarray) -> np.ndarray:
    return (rows - rows.mean(0)) / np.sqrt(rows.var(0) + 1e-5)


def test_shuffle_bn_keys_and_the_queue_take_every_ranks_rows(tmp_path):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(WORLD * N, D, generator=gen)
    pending = torch.nn.functional.normalize(torch.randn(WORLD * N, 16, generator=gen), dim=1)
    cfg = config("moco_v2", "cacr_moco_v2", momentum=0.9, queue_size=Q)
    queue0 = build_framework(cfg, seed=3).queue.clone()
    case = {"x": x, "perm_seed": 11, "pending": pending, "config": cfg, "framework_seed": 3}
    outs = spawn(run_framework_gathers, WORLD, tmp_path, case)

    # shuffle-BN: every rank normalises a slice of the permuted global batch; rows go back home
    torch.manual_seed(11)
    perm = torch.randperm(WORLD * N).numpy()
    shuffled = x.double().numpy()[perm]
    encoded = np.concatenate([batchnorm(shuffled[r * N : (r + 1) * N]) for r in range(WORLD)])
    home = np.empty_like(encoded)
    home[perm] = encoded
    for r, out in enumerate(outs):
        np.testing.assert_allclose(
            out["keys"].double().numpy(), home[r * N : (r + 1) * N], rtol=1e-4, atol=1e-5
        )
    assert not np.allclose(home[:N], batchnorm(x.double().numpy()[:N]), atol=1e-3)  # the shuffle mattered

    # the queue: rank 0's keys then rank 1's, from position 0; the same queue on every rank
    expected = queue0.clone()
    expected[: WORLD * N] = pending
    for out in outs:
        torch.testing.assert_close(out["queue"], expected)
        assert out["ptr"] == WORLD * N
