"""A linear classifier trained on cached frozen features.

The small-scale protocol's optimiser and schedule (Adam, lr 1e-3, betas (0.5, 0.999), lr x0.2
at 60 % and 80 % of the epochs), on features computed once without augmentation. Reports the
final-epoch test accuracy and the best test accuracy over epochs (what the official small-scale
script prints), labelled as such. Features are standardised with the training set's per-dimension
mean and deviation first (an affine change that a linear classifier absorbs, so the family of
classifiers is unchanged; Adam at 1e-3 then converges on features of any scale).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def train_linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``nn.Linear(F, num_classes)`` on ``train_x`` and evaluate on ``test_x`` every epoch.

    Args:
        train_x: ``[N, F]`` training features.
        train_y: ``[N]`` labels.
        test_x: ``[M, F]`` test features.
        test_y: ``[M]`` labels.
        num_classes: number of classes.
        epochs: passes over the training features.
        lr: Adam learning rate.
        batch_size: rows per step.
        seed: seeds the initialisation and the shuffling.

    Returns:
        ``final_top1`` and ``best_top1`` (percent), ``best_epoch`` (1-based) and ``history``.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)  # standardise with train statistics:
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd  # same linear family, better conditioned
    head = nn.Linear(train_x.shape[1], num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.6 * epochs), int(0.8 * epochs)], gamma=0.2)
    history: list[float] = []
    for _ in range(epochs):
        head.train()
        for idx in torch.randperm(len(train_x), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            history.append(100.0 * float((head(test_x).argmax(1) == test_y).float().mean()))
    best = max(range(len(history)), key=history.__getitem__) if history else 0
    return {
        "final_top1": history[-1] if history else 0.0,
        "best_top1": history[best] if history else 0.0,
        "best_epoch": best + 1,
        "history": history,
    }
