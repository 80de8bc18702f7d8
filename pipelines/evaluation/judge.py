"""Judge a frozen backbone: kNN, a linear probe by protocol, and the imbalance-aware breakdown.

One place for what the end of a pretraining run and ``pipelines/linear_probe.py`` both do. The
images come from two named streams of uint8 centre crops: ``bank`` (the training split; the
probe trains on it, the kNN votes with it) and ``eval`` (the held-out split). Small streams stay
in memory after their first pass (:class:`BatchCache`), so later passes run the encoder only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipelines.core.config_schema import with_defaults
from pipelines.evaluation.breakdown import breakdown
from pipelines.evaluation.crops import random_resized_crop_flip
from pipelines.evaluation.features import extract_features, normalise
from pipelines.evaluation.knn import knn_predict_at
from pipelines.evaluation.linear import fit_probe, split_validation, train_linear_probe
from pipelines.evaluation.protocols import Protocol

Batch = dict[str, Tensor]


class BatchCache:
    """Named batch streams, kept in memory after the first full pass while within ``budget_bytes``."""

    def __init__(self, open_stream: Callable[[str], Iterable[Batch]], budget_bytes: int) -> None:
        self.open_stream, self.budget = open_stream, budget_bytes
        self.kept: dict[str, list[Batch]] = {}

    def __call__(self, name: str) -> Iterable[Batch]:
        """The batches of stream ``name`` (from memory when a previous pass kept them)."""
        if name in self.kept:
            return self.kept[name]
        return self._caching(name)

    def _caching(self, name: str) -> Iterator[Batch]:
        kept: list[Batch] | None = []
        used = 0
        for batch in self.open_stream(name):
            used += batch["views"].numel()
            if kept is not None and used <= self.budget:
                kept.append({"views": batch["views"].cpu(), "label": batch["label"].cpu()})
            else:
                kept = None
            yield batch
        if kept is not None:
            self.kept[name] = kept


def _first_view(views: Tensor) -> Tensor:
    return views[:, 0] if views.ndim == 5 else views


class Judge:
    """Evaluates backbones on the ``bank`` / ``eval`` streams of one dataset.

    Args:
        batches: ``name -> batches`` (dicts with uint8 ``views`` and ``label``).
        num_classes: classes of the dataset.
        mean: per-channel mean on ``device``; std: per-channel std on ``device``.
        device: where to run the encoder.
        train_counts: the pretraining set's images per class (for the many/medium/few groups).
        eval_cfg: the ``eval`` config (``knn_k``, ``knn_temperature``, ``knn_report_k``,
            ``many_shot_above``, ``few_shot_below``; keys left out take the schema's defaults).
        seed: seeds the probe.
    """

    def __init__(
        self,
        batches: Callable[[str], Iterable[Batch]],
        num_classes: int,
        mean: Tensor,
        std: Tensor,
        device: torch.device,
        train_counts: list[int],
        eval_cfg: dict[str, Any],
        seed: int = 0,
    ) -> None:
        self.batches, self.num_classes = batches, num_classes
        self.mean, self.std, self.device = mean, std, device
        self.train_counts, self.seed = list(train_counts), seed
        self.ev = with_defaults("eval", eval_cfg)  # keys left out: the schema's defaults

    def features(self, backbone: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(bank features, bank labels, eval features, eval labels)`` from centre crops."""
        args = (self.mean, self.std, self.device)
        bx, by = extract_features(backbone, self.batches("bank"), *args)
        tx, ty = extract_features(backbone, self.batches("eval"), *args)
        return bx, by, tx, ty

    def knn(self, feats: tuple[Tensor, ...]) -> tuple[float, Tensor]:
        """KNN top-1 (percent) at ``eval.knn_k`` on the eval split and its predictions."""
        k = int(self.ev["knn_k"])
        top1, preds = self.knn_at(feats, [k])
        return top1[k], preds[k]

    def knn_at(self, feats: tuple[Tensor, ...], ks: list[int]) -> tuple[dict[int, float], dict[int, Tensor]]:
        """KNN top-1 (percent) on the eval split at every ``k`` of ``ks``, and the predictions."""
        bx, by, tx, ty = feats
        preds = knn_predict_at(tx, bx, by, self.num_classes, ks, float(self.ev["knn_temperature"]))
        preds = {k: p.cpu() for k, p in preds.items()}
        top1 = {k: 100.0 * float((p == ty).float().mean()) if len(ty) else 0.0 for k, p in preds.items()}
        return top1, preds

    def _augmented_probe(
        self, backbone: nn.Module, feats: tuple[Tensor, ...], protocol: Protocol, progress: Any = None
    ) -> dict:
        """The probe on fresh random-resized crops of the bank every epoch (the encoder stays frozen)."""
        bx, by, tx, ty = feats
        held = split_validation(by, protocol.val_fraction, self.seed)
        fit = ~held
        evaluate = {"test": (tx, ty)}
        if held.any():
            evaluate["val"] = (bx[held], by[held])
        stats = (bx[fit].mean(0), bx[fit].std(0).clamp_min(1e-6)) if protocol.standardize else None
        backbone.eval()

        @torch.no_grad()
        def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            pending_x: list[Tensor] = []
            pending_y: list[Tensor] = []
            start = 0
            for batch in self.batches("bank"):
                views = _first_view(torch.as_tensor(batch["views"])).to(self.device)
                keep = fit[start : start + len(views)].to(self.device)
                start += len(views)
                views = views[keep]
                if not len(views):
                    continue
                crops = random_resized_crop_flip(views.float(), protocol.crop_scale, gen)
                pending_x.append(backbone(normalise(crops, self.mean, self.std)).float())
                pending_y.append(torch.as_tensor(batch["label"]).to(self.device)[keep].long())
                while sum(len(y) for y in pending_y) >= protocol.batch_size:
                    x, y = torch.cat(pending_x), torch.cat(pending_y)
                    yield x[: protocol.batch_size], y[: protocol.batch_size]
                    pending_x, pending_y = [x[protocol.batch_size :]], [y[protocol.batch_size :]]
            if pending_y and sum(len(y) for y in pending_y):
                yield torch.cat(pending_x), torch.cat(pending_y)

        return fit_probe(
            epoch_batches,
            bx.shape[1],
            self.num_classes,
            protocol,
            evaluate,
            seed=self.seed,
            stats=stats,
            device=self.device,
            progress=progress,
        )

    def judge(
        self,
        backbone: nn.Module,
        protocol: Protocol | None,
        progress: Callable[[int, dict[str, float]], None] | None = None,
        feats: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    ) -> dict[str, Any]:
        """kNN, the linear probe (``protocol``; ``None`` skips it) and the per-class breakdown.

        The breakdown uses the final-epoch probe's test predictions, or the kNN's without a probe.
        ``progress`` is called after each probe epoch (see :func:`~pipelines.evaluation.linear.fit_probe`).
        ``feats``: :meth:`features` of this ``backbone`` already computed (no second pass).
        """
        feats = feats if feats is not None else self.features(backbone)
        k = int(self.ev["knn_k"])
        ks = sorted({k, *(int(x) for x in self.ev["knn_report_k"] or [])})
        top1, by_k = self.knn_at(feats, ks)
        preds = by_k[k]
        out: dict[str, Any] = {"knn_top1": top1[k], "knn_k": k, "knn_bank": len(feats[1])}
        out["knn_top1_at_k"] = {str(x): top1[x] for x in ks}
        source = "knn"
        if protocol is not None:
            if protocol.augment:
                probe = self._augmented_probe(backbone, feats, protocol, progress)
            else:
                probe = train_linear_probe(
                    *feats, self.num_classes, protocol, seed=self.seed, device=self.device, progress=progress
                )
            preds, source = probe.pop("test_predictions"), "linear"
            out["linear"] = probe
        out["breakdown"] = breakdown(
            np.asarray(preds),
            np.asarray(feats[3]),
            self.train_counts,
            many=int(self.ev["many_shot_above"]),
            few=int(self.ev["few_shot_below"]),
        )
        out["breakdown_source"] = source
        return out
