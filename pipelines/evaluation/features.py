"""Frozen features of an encoder over a stream of batches, and BatchNorm recomputation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn


def normalise(views: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``[B, 3, H, W]`` -> float, scaled to [0, 1] and normalised per channel."""
    return (views.float().div_(255) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _first_view(batch: dict[str, Any], device: torch.device) -> Tensor:
    views = torch.as_tensor(batch["views"]).to(device, non_blocking=True)
    return views[:, 0] if views.ndim == 5 else views


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    batches: Iterable[dict[str, Any]],
    mean: Tensor,
    std: Tensor,
    device: torch.device,
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Features (eval mode) and labels of every image in ``batches``, on the CPU.

    Args:
        backbone: maps normalised ``[B, 3, S, S]`` to ``[B, F]``.
        batches: dicts with ``views`` (uint8 ``[B, 1, 3, S, S]`` or ``[B, 3, S, S]``) and ``label``.
        mean: per-channel mean (on ``device``).
        std: per-channel std (on ``device``).
        device: where to compute.
        limit: stop after this many images.

    Returns:
        ``([N, F] float32, [N] int64)``.
    """
    was_training = backbone.training
    backbone.eval()
    feats, labels, seen = [], [], 0
    for batch in batches:
        x = normalise(_first_view(batch, device), mean, std)
        feats.append(backbone(x).float().cpu())
        labels.append(torch.as_tensor(batch["label"]).long().cpu())
        seen += len(x)
        if limit is not None and seen >= limit:
            break
    backbone.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    f, y = torch.cat(feats), torch.cat(labels)
    return (f[:limit], y[:limit]) if limit is not None else (f, y)


@torch.no_grad()
def recompute_batchnorm(
    backbone: nn.Module,
    batches: Iterable[dict[str, Any]],
    mean: Tensor,
    std: Tensor,
    device: torch.device,
    limit: int | None = None,
) -> int:
    """Replace every BatchNorm's running statistics by their exact average over ``batches``.

    The fair baseline for a randomly initialised encoder: its default statistics (mean 0, var 1)
    do not match its activations. Returns the number of images used.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    was_training = backbone.training
    backbone.train()
    seen = 0
    for batch in batches:
        backbone(normalise(_first_view(batch, device), mean, std))
        seen += len(batch["label"])
        if limit is not None and seen >= limit:
            break
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    backbone.train(was_training)
    return seen
