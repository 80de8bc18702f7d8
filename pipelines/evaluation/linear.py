"""A linear classifier on a frozen encoder's features, trained by a :class:`Protocol`.

:func:`fit_probe` trains ``nn.Linear(F, C)`` on feature batches that a callable hands it each
epoch (cached features shuffled, or features of fresh random crops), evaluates on fixed splits
after every epoch, and reports the final-epoch test accuracy, the best test accuracy over epochs
(what the official small-scale script prints; labelled as such) and, when a validation split is
held out of train, the test accuracy at the epoch that validation picked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from pipelines.evaluation.protocols import Protocol

EpochBatches = Callable[[int], Iterable[tuple[Tensor, Tensor]]]


def split_validation(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """A per-class held-out mask chosen by a seeded permutation.

    Each class gives ``round(fraction * n_c)`` rows (at least one where it has two or more, never all).

    Returns:
        Boolean ``[N]``; ``True`` marks a validation row.
    """
    mask = torch.zeros(len(labels), dtype=torch.bool)
    if fraction <= 0:
        return mask
    gen = torch.Generator().manual_seed(seed)
    for c in torch.unique(labels):
        rows = torch.nonzero(labels == c).flatten()
        take = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
        mask[rows[torch.randperm(len(rows), generator=gen)[:take]]] = True
    return mask


GATHER_BATCHES = 64  # mini-batches gathered in one indexing call (one small gather per batch cost more)


def cached_batches(x: Tensor, y: Tensor, batch_size: int, seed: int = 0) -> EpochBatches:
    """Epoch ``e``'s shuffled mini-batches of fixed features (the shuffle seeded by ``seed`` and ``e``).

    Rows are gathered ``GATHER_BATCHES`` mini-batches at a time (memory: that many batches, not a
    shuffled copy of ``x``) and handed out as slices.
    """

    def batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for block in order.split(batch_size * GATHER_BATCHES):
            bx, by = x[block], y[block]
            for start in range(0, len(block), batch_size):
                yield bx[start : start + batch_size], by[start : start + batch_size]

    return batches


def _build_head(dim: int, num_classes: int, protocol: Protocol) -> nn.Linear:
    head = nn.Linear(dim, num_classes)
    if protocol.init_std is not None:
        nn.init.normal_(head.weight, 0.0, protocol.init_std)
        nn.init.zeros_(head.bias)
    return head


def _build_optimizer(head: nn.Module, protocol: Protocol) -> torch.optim.Optimizer:
    if protocol.optimizer == "adam":
        return torch.optim.Adam(
            head.parameters(), lr=protocol.lr, betas=protocol.betas, weight_decay=protocol.weight_decay
        )
    return torch.optim.SGD(
        head.parameters(), lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
    )


@torch.no_grad()
def _predict(head: nn.Module, x: Tensor, chunk: int = 8192) -> Tensor:
    return (
        torch.cat([head(x[i : i + chunk]).argmax(1) for i in range(0, len(x), chunk)])
        if len(x)
        else (torch.zeros(0, dtype=torch.long))
    )


def _top1(pred: Tensor, y: Tensor) -> float:
    return 100.0 * float((pred.cpu() == y.cpu()).float().mean()) if len(y) else 0.0


def fit_probe(
    epoch_batches: EpochBatches,
    feature_dim: int,
    num_classes: int,
    protocol: Protocol,
    evaluate: dict[str, tuple[Tensor, Tensor]],
    *,
    seed: int = 0,
    stats: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train a linear layer by ``protocol`` and evaluate it after every epoch.

    Args:
        epoch_batches: ``epoch -> (features [b, F], labels [b])`` batches of the training split.
        feature_dim: ``F``.
        num_classes: ``C``.
        protocol: optimiser, schedule, epochs and initialisation.
        evaluate: fixed splits by name; ``"test"`` is required, ``"val"`` (if present) selects the epoch.
        seed: seeds the initialisation.
        stats: ``(mean, std)`` to standardise every feature with (``protocol.standardize``).
        device: where to train.
        progress: called after each epoch with its 1-based number and the accuracies by split.

    Returns:
        ``final_top1`` and ``best_top1`` (percent, on test), ``best_epoch`` (1-based), with a
        validation split ``selected_top1`` (test accuracy at the best validation epoch) and
        ``selected_epoch``; ``history`` per split and ``test_predictions`` of the final epoch.
    """
    torch.manual_seed(seed)
    head = _build_head(feature_dim, num_classes, protocol).to(device)
    opt = _build_optimizer(head, protocol)
    mu, sd = (s.to(device) for s in stats) if stats is not None else (None, None)

    def prep(x: Tensor) -> Tensor:
        x = x.to(device, torch.float32)
        return (x - mu) / sd if mu is not None else x

    fixed = {name: (prep(x), y.to(device)) for name, (x, y) in evaluate.items()}
    history: dict[str, list[float]] = {name: [] for name in fixed}
    preds = torch.zeros(0, dtype=torch.long)
    for epoch in range(protocol.epochs):
        for group in opt.param_groups:
            group["lr"] = protocol.lr_at(epoch)
        head.train()
        for x, y in epoch_batches(epoch):
            loss = nn.functional.cross_entropy(head(prep(x)), y.to(device).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        for name, (x, y) in fixed.items():
            p = _predict(head, x)
            history[name].append(_top1(p, y))
            if name == "test":
                preds = p.cpu()
        if progress is not None:
            progress(epoch + 1, {name: acc[-1] for name, acc in history.items()})
    test = history["test"]
    best = max(range(len(test)), key=test.__getitem__)
    out: dict[str, Any] = {
        "protocol": protocol.name,
        "augment": protocol.augment,
        "epochs": protocol.epochs,
        "final_top1": test[-1],
        "best_top1": test[best],
        "best_epoch": best + 1,
        "history": history,
        "test_predictions": preds,
    }
    if history.get("val"):
        val = history["val"]
        chosen = max(range(len(val)), key=val.__getitem__)
        out.update(selected_top1=test[chosen], selected_epoch=chosen + 1, val_top1=val[chosen])
    return out


def train_linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    protocol: Protocol,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """:func:`fit_probe` on cached features, holding out ``protocol.val_fraction`` of train.

    Args:
        train_x: ``[N, F]`` training features.
        train_y: ``[N]`` their labels.
        test_x: ``[M, F]`` test features.
        test_y: ``[M]`` their labels.
        num_classes: number of classes.
        protocol: the protocol (its ``augment`` is ignored: these features are fixed).
        seed: seeds the split, the initialisation and the shuffling.
        device: where to train.
        progress: see :func:`fit_probe`.

    Returns:
        What :func:`fit_probe` returns.
    """
    held = split_validation(train_y, protocol.val_fraction, seed)
    evaluate = {"test": (test_x, test_y)}
    if held.any():
        evaluate["val"] = (train_x[held], train_y[held])
    fit_x, fit_y = train_x[~held], train_y[~held]
    stats = (fit_x.mean(0), fit_x.std(0).clamp_min(1e-6)) if protocol.standardize else None
    return fit_probe(
        cached_batches(fit_x, fit_y, protocol.batch_size, seed),
        train_x.shape[1],
        num_classes,
        protocol.cached(),
        evaluate,
        seed=seed,
        stats=stats,
        device=device,
        progress=progress,
    )


def final_numbers(probe: dict[str, Any] | None) -> dict[str, float]:
    """The headline numbers of a probe result, flat (for logs and tables); ``{}`` without a probe."""
    if not probe:
        return {}
    out = {"linear_final_top1": probe["final_top1"], "linear_best_top1": probe["best_top1"]}
    if "selected_top1" in probe:
        out["linear_selected_top1"] = probe["selected_top1"]
    return out
