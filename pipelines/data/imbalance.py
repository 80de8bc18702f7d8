"""Class-imbalanced subsets: the paper's exact rules, standard long-tail profiles, rebalancing.

Every function works on per-class counts or integer label arrays only, so imbalance statistics
never need to open an image.

Rules (``rule`` argument), with ``n_c`` the number of images class ``c`` has and ``C`` classes:

* ``none``: keep everything.
* ``cacr_cifar10_linear`` (the official CACR CIFAR-10 rule): ``int((c + 1) / C * n_c)`` →
  500, 1000, ..., 5000 on CIFAR-10 (27,500 images).
* ``cacr_cifar100_exp`` (the official CACR CIFAR-100 rule): blocks of ``C / 10`` classes,
  ``int(exp(g + 1) / exp(10) * n_c)`` for block ``g`` → 0, 0, 0, 1, 3, 9, 24, 67, 183, 500 per
  class; 30 of CIFAR-100's classes get no image, exactly as the official code leaves them.
* ``cacr_cifar10_exp``, ``cacr_cifar100_linear``: the alternatives left commented out in the
  official code (``int(exp(c + 1) / exp(10) * n_c)``; per block ``int((g + 1) / 10 * n_c)``).
* ``exponential`` (CIFAR-LT, Cao et al. 2019): ``int(n_max * (1 / ratio) ** (c / (C - 1)))``.
* ``step`` (Buda et al. 2018): the last ``round(mu * C)`` classes keep ``int(n_max / ratio)``,
  the others ``n_max``.

Selection order (``order``): ``cacr`` shuffles each class's images (in dataset order) with a
fresh ``RandomState(seed)`` (the official code's ``sklearn.utils.shuffle(random_state=2021)``)
and keeps a prefix; ``ldam`` seeds one ``RandomState(seed)`` and shuffles the classes in label
order (``np.random.seed(0)`` in LDAM-DRW). ``default_order`` pairs each rule with its source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RULES = (
    "none",
    "cacr_cifar10_linear",
    "cacr_cifar100_exp",
    "cacr_cifar10_exp",
    "cacr_cifar100_linear",
    "exponential",
    "step",
)
ORDERS = ("cacr", "ldam")


def default_order(rule: str) -> tuple[str, int]:
    """The selection order and seed the rule's source code uses."""
    return ("cacr", 2021) if rule.startswith("cacr_") else ("ldam", 0)


def target_counts(
    rule: str, class_sizes: Sequence[int], ratio: float | None = None, mu: float = 0.5
) -> list[int]:
    """Number of images each class keeps under ``rule``.

    Args:
        rule: one of ``RULES``.
        class_sizes: images available per class, in label order.
        ratio: imbalance ratio (largest / smallest class) for ``exponential`` and ``step``.
        mu: fraction of minority classes for ``step``.

    Returns:
        Per-class counts, never more than a class has.

    Raises:
        ValueError: for an unknown rule or a missing / invalid ``ratio`` or ``mu``.
    """
    sizes = [int(n) for n in class_sizes]
    C = len(sizes)
    if rule not in RULES:
        raise ValueError(f"dataset.imbalance.rule must be one of {', '.join(RULES)}; got {rule!r}")
    if rule in ("exponential", "step") and (ratio is None or not ratio >= 1):
        raise ValueError(f"dataset.imbalance.ratio must be a number >= 1 for rule {rule!r}; got {ratio!r}")
    if rule == "step" and not 0 < mu < 1:
        raise ValueError(f"dataset.imbalance.mu must be in (0, 1); got {mu!r}")
    if rule in ("cacr_cifar100_exp", "cacr_cifar100_linear") and C % 10:
        raise ValueError(f"rule {rule!r} groups classes in 10 blocks; {C} classes do not divide")
    n_max = max(sizes) if sizes else 0
    block = max(C // 10, 1)
    if rule == "none":
        counts = sizes
    elif rule == "cacr_cifar10_linear":
        counts = [int((c + 1) / C * n) for c, n in enumerate(sizes)]
    elif rule == "cacr_cifar10_exp":
        counts = [int(math.exp(c + 1) / math.exp(10) * n) for c, n in enumerate(sizes)]
    elif rule == "cacr_cifar100_exp":
        counts = [int(math.exp(c // block + 1) / math.exp(10) * n) for c, n in enumerate(sizes)]
    elif rule == "cacr_cifar100_linear":
        counts = [int((c // block + 1) / 10 * n) for c, n in enumerate(sizes)]
    elif rule == "exponential":
        counts = [int(n_max * (1 / ratio) ** (c / max(C - 1, 1))) for c in range(C)]
    else:  # step
        minority = round(mu * C)
        counts = [n_max if c < C - minority else int(n_max / ratio) for c in range(C)]
    return [min(k, n) for k, n in zip(counts, sizes, strict=True)]


def select(labels: np.ndarray, counts: Sequence[int], order: str = "cacr", seed: int = 2021) -> np.ndarray:
    """Positions of the images kept so that class ``c`` keeps ``counts[c]`` of its images.

    Args:
        labels: integer label of every image, in dataset order.
        counts: images to keep per class (e.g. from :func:`target_counts`).
        order: ``cacr`` (a fresh ``RandomState(seed)`` per class) or ``ldam`` (one for all).
        seed: the random seed.

    Returns:
        Sorted positions into ``labels``.
    """
    if order not in ORDERS:
        raise ValueError(f"dataset.imbalance.order must be one of {', '.join(ORDERS)}; got {order!r}")
    labels = np.asarray(labels)
    shared = np.random.RandomState(seed)
    kept = []
    for c, k in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        rng = np.random.RandomState(seed) if order == "cacr" else shared
        rng.shuffle(idx)
        kept.append(idx[: int(k)])
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Number of images per class (``num_classes`` entries, zeros included).

    Labels outside ``[0, num_classes)`` (unlabelled rows, or labels a shard holds beyond its class
    list, which the reader reports as bad rows) are not counted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes).tolist()


def summary(counts: Sequence[int]) -> dict[str, object]:
    """Per-class counts with totals and the imbalance ratio over the non-empty classes."""
    present = [n for n in counts if n > 0]
    return {
        "per_class": list(map(int, counts)),
        "total": int(sum(counts)),
        "classes_present": len(present),
        "classes_empty": len(counts) - len(present),
        "imbalance_ratio": (max(present) / min(present)) if present else None,
    }


def balanced_indices(labels: np.ndarray, seed: int, num_samples: int | None = None) -> np.ndarray:
    """Class-balanced resampling: every present class is drawn equally often, with replacement.

    Args:
        labels: integer labels of the (possibly imbalanced) set.
        seed: random seed (use a different one per epoch).
        num_samples: how many draws (default: ``len(labels)``).

    Returns:
        Positions into ``labels``; class ``c`` appears ``num_samples / classes_present`` times
        (the remainder spread over the first classes).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    total = len(labels) if num_samples is None else int(num_samples)
    per, extra = divmod(total, len(classes))
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=per + (i < extra), replace=True)
        for i, c in enumerate(classes)
    ]
    out = np.concatenate(picks)
    rng.shuffle(out)
    return out


def ratio_text(ratio: float | None) -> str:
    """An imbalance ratio for people: ``10.00``, or ``n/a`` when no class has images."""
    return "n/a" if ratio is None else f"{ratio:.2f}"
