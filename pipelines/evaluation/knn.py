"""Weighted k-nearest-neighbour classification on frozen features (the DINO / MoCo-v3 monitor).

For a test feature ``x`` and a bank of training features (all L2-normalised), take the ``k``
bank entries with the largest cosine similarity ``s``; each votes for its label with weight
``exp(s / T)``; the prediction is the label with the largest total vote.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    test: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Predict a label for each row of ``test`` (:func:`knn_predict_at` with one ``k``)."""
    return knn_predict_at(test, bank, bank_labels, num_classes, [k], temperature, chunk)[k]


@torch.no_grad()
def knn_predict_at(
    test: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    ks: list[int],
    temperature: float = 0.07,
    chunk: int = 1024,
) -> dict[int, Tensor]:
    """Predict a label for each row of ``test`` at every ``k`` of ``ks``, from one similarity pass.

    Args:
        test: ``[N, F]`` features (normalised here).
        bank: ``[M, F]`` training features (normalised here).
        bank_labels: ``[M]`` their labels.
        num_classes: number of classes.
        ks: neighbour counts, each >= 1 (capped at ``M``).
        temperature: ``T`` of the vote weights, > 0.
        chunk: test rows per similarity block (bounds memory at ``chunk x M``).

    Returns:
        ``{k: [N] predicted labels}``.
    """
    if temperature <= 0:
        raise ValueError(f"eval.knn_temperature must be > 0; got {temperature}")
    if not ks or min(ks) < 1:
        raise ValueError(f"eval.knn_k must be >= 1; got {ks}")
    test = F.normalize(test.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    most = min(max(ks), bank.shape[0])
    preds: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ bank.T
        top, idx = sim.topk(most, dim=1)  # sorted: the first k columns are the k nearest
        weights, labels = torch.exp(top / temperature), bank_labels[idx].long()
        for k in ks:
            n = min(k, most)
            votes = torch.zeros(sim.shape[0], num_classes, dtype=sim.dtype, device=sim.device)
            votes.scatter_add_(1, labels[:, :n], weights[:, :n])
            preds[k].append(votes.argmax(dim=1))
    empty = torch.zeros(0, dtype=torch.long)
    return {k: torch.cat(p) if p else empty for k, p in preds.items()}


def knn_top1(
    test: Tensor,
    test_labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy (percent) of :func:`knn_predict` on labelled test features."""
    preds = knn_predict(test, bank, bank_labels, num_classes, k=k, temperature=temperature)
    return 100.0 * float((preds.cpu() == test_labels.cpu()).float().mean()) if len(preds) else 0.0
