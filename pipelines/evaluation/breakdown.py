"""Imbalance-aware accuracy: per class, many / medium / few-shot groups, and blocks of classes.

The groups follow the long-tail convention with the *pretraining* set's class counts: many-shot
classes have more than ``many`` images (default 100), few-shot fewer than ``few`` (default 20),
medium-shot the rest (``few`` to ``many`` inclusive). A group's accuracy is the mean of its
classes' accuracies (classes without test images are left out). The official CIFAR-100 script
also averages per block of 10 consecutive classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy (percent) of each class over its test rows; ``None`` for a class without any."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out: list[float | None] = []
    for c in range(num_classes):
        rows = labels == c
        out.append(100.0 * float((predictions[rows] == c).mean()) if rows.any() else None)
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def shot_groups(
    per_class: list[float | None], train_counts: list[int], many: int = 100, few: int = 20
) -> dict[str, dict[str, Any]]:
    """Mean accuracy of the many / medium / few-shot classes (by pretraining image count).

    Returns:
        ``{"many"|"medium"|"few": {"top1": mean or None, "classes": n, "untested": m, "rule": text}}``:
        ``n`` classes fall in the group by their count, ``m`` of them have no test image (left out
        of the mean).
    """
    if few > many:
        raise ValueError(f"eval.few_shot_below={few} must be <= eval.many_shot_above={many}")
    groups: dict[str, list[float]] = {"many": [], "medium": [], "few": []}
    sizes = {k: 0 for k in groups}
    for acc, n in zip(per_class, train_counts, strict=True):
        key = "many" if n > many else ("few" if n < few else "medium")
        sizes[key] += 1
        if acc is not None:
            groups[key].append(acc)
    rules = {"many": f"> {many} images", "medium": f"{few}..{many} images", "few": f"< {few} images"}
    return {
        k: {"top1": _mean(v), "classes": sizes[k], "untested": sizes[k] - len(v), "rule": rules[k]}
        for k, v in groups.items()
    }


def block_averages(per_class: list[float | None], block: int = 10) -> list[float | None]:
    """Mean accuracy of each block of ``block`` consecutive classes (CIFAR-100: 10 blocks of 10)."""
    return [
        _mean([a for a in per_class[i : i + block] if a is not None]) for i in range(0, len(per_class), block)
    ]


def breakdown(
    predictions: np.ndarray,
    labels: np.ndarray,
    train_counts: list[int],
    many: int = 100,
    few: int = 20,
) -> dict[str, Any]:
    """Per-class accuracy, shot groups and (for 100 classes) block-of-10 averages, as one dict."""
    per_class = per_class_accuracy(predictions, labels, len(train_counts))
    out: dict[str, Any] = {"per_class": per_class, "shots": shot_groups(per_class, train_counts, many, few)}
    if len(train_counts) == 100:
        out["blocks_of_10"] = block_averages(per_class, 10)
    return out


def is_imbalanced(train_counts: list[int], tolerance: float = 1.5) -> bool:
    """Whether the largest class exceeds the smallest by more than ``tolerance`` times.

    An empty class counts as imbalanced.
    """
    counts = [int(c) for c in train_counts]
    return bool(counts) and (min(counts) == 0 or max(counts) > tolerance * min(counts))
