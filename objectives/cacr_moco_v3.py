r"""CACR in the MoCo-v3 style (the official ImageNet-1K ResNet-50 / ViT code).

Inputs: queries ``q`` ``[V, B, D]`` (predictor outputs; views 0 and 1 are the global views,
2.. the local crops) and momentum keys ``k`` ``[V, B, D]``. Both are L2-normalised inside unless
``normalize=False`` (then they must already be unit rows). ``T`` is ``temperature``.

Key views: ``{0, 1}`` (light mode) or all ``V`` views (``full_mode=True``). For key view ``i``
the queries are every other view ``j != i`` and the keys the batch ``k_i[m]`` (the global batch
with ``gather=True``); ``n`` indexes anchors, ``m`` keys, and ``k_i[n]`` is ``n``'s positive::

    p[j, n] = sg( softmax_j( ||q_j[n] - k_i[n]||^2 / T ) )          over the query views j != i

RBF cost (default)::

    loss_i = sum_j mean_n p[j, n] * 2T * CE(q_j[n] . k_i / T, label n)
           = sum_j mean_n p[j, n] * ( ||q_j[n] - k_i[n]||^2 + 2T log sum_m RBF(q_j[n], k_i[m]) )
    RBF(a, b) = exp(-||a - b||^2 / (2T))

(attraction = the first summand, repulsion = the second). Euclidean cost, a *sum* over the batch::

    cost[n, m] = 1 - q_j[n] . k_i[m]
    loss_i = sum_j sum_n p[j, n] * ( cost[n, n] + sum_{m != n} sg(softmax_m(-cost[n, :] / T)) * -cost[n, m] )

``loss = mean_i loss_i`` over the key views, and so are the terms. With two crops and no local
crops ``p = 1`` and the RBF loss is the MoCo-v3 loss divided by 2.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from objectives._common import (
    LossOutput,
    check_choice,
    check_positive,
    check_same_shape,
    check_views,
    entropy_and_max,
    eye_mask,
    full_precision,
    prepare,
    weight_stats,
)
from objectives.distributed import maybe_gather

COSTS = ("rbf", "euclidean")


@functools.lru_cache(maxsize=64)
def _layout(V: int, n_keys: int, B: int, M: int, offset: int, device: torch.device) -> tuple[Tensor, ...]:
    """Index layout for one shape, built once.

    Returns the key-view and query-view index of every (key i, query j != i) pair, keys
    outermost, and the ``[B, M]`` mask of each anchor's positive key.
    """
    keys = torch.arange(n_keys, device=device).repeat_interleave(V - 1)
    queries = torch.arange(V, device=device).expand(n_keys, V)
    queries = queries[queries != torch.arange(n_keys, device=device).unsqueeze(-1)]
    return keys, queries, eye_mask(B, M, offset, device)


class CACRMoCoV3(nn.Module):
    """CACR with MoCo-v3 keys: positive re-weighting across query views, batch negatives."""

    def __init__(
        self,
        temperature: float,
        cost: str = "rbf",
        full_mode: bool = False,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        """Build the objective.

        Args:
            temperature: ``T`` (the official ``--moco-t``), > 0.
            cost: ``rbf`` (default, the official default) or ``euclidean``.
            full_mode: every view acts as a key view, not only the two global views.
            normalize: L2-normalise ``q`` and ``k`` inside.
            gather: under DDP, take the keys of every rank as negatives.

        """
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.cost = check_choice("cost", cost, COSTS)
        self.full_mode = bool(full_mode)
        self.normalize = bool(normalize)
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return f"temperature={self.temperature}, cost={self.cost!r}, full_mode={self.full_mode}"

    def _parts(self, q: Tensor, k: Tensor) -> dict[str, Tensor]:
        """Dot products of every pair's queries with the (gathered) keys, and the weights ``p``."""
        V, B, _ = q.shape
        n_keys = V if self.full_mode else 2
        kg, offset = maybe_gather(k, self.gather, dim=1)
        key_idx, query_idx, own = _layout(V, n_keys, B, kg.shape[1], offset, q.device)
        queries = q.index_select(0, query_idx)  # [P, B, D]
        dots = torch.bmm(queries, kg.index_select(0, key_idx).transpose(1, 2))  # [P, B, M]
        pos = dots[..., offset : offset + B].diagonal(dim1=1, dim2=2)  # [P, B]: q_j[n] . k_i[n]
        with torch.no_grad():
            if self.normalize:  # unit rows
                d_pos = 2.0 - 2.0 * pos
            else:
                d_pos = (queries - k.index_select(0, key_idx)).pow(2).sum(-1)
            p = torch.softmax(d_pos.view(n_keys, V - 1, B) / self.temperature, dim=1)
        return {"dots": dots, "own": own, "pos": pos, "p": p.view(-1, B), "n_keys": n_keys}

    def _prepared(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Check the inputs, bring them to the working dtype and compute the shared parts."""
        check_views("q", q)
        check_same_shape("q", q, "k", k)
        q, k = prepare((q, self.normalize), (k, self.normalize))
        return q, k, self._parts(q, k)

    def _terms(self, parts: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-anchor attraction and repulsion ``[P, B]`` and the repulsion weights."""
        T, dots, own, pos = self.temperature, parts["dots"], parts["own"], parts["pos"]
        if self.cost == "rbf":
            attraction = 2.0 - 2.0 * pos
            repulsion = 2.0 * T * torch.logsumexp(dots / T, dim=-1) - 2.0
            weights = torch.softmax(dots.detach() / T, dim=-1)
            return attraction, repulsion, weights
        neg_cost = dots - 1.0  # -cost
        logits = (neg_cost.detach() / T).masked_fill(own, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        repulsion = (weights * neg_cost.masked_fill(own, 0.0)).sum(-1)
        return 1.0 - pos, repulsion, weights

    def forward(self, q: Tensor, k: Tensor) -> LossOutput:
        """Compute the loss.

        Args:
            q: ``[V, B, D]`` queries, ``V >= 2`` (2 global views, then local crops).
            k: ``[V, B, D]`` momentum keys (not detached here: compute them under no_grad).

        Returns:
            ``LossOutput`` with terms ``attraction`` and ``repulsion``, averaged over key views.

        """
        with full_precision(q.device):
            q, k, parts = self._prepared(q, k)
            att, rep, _ = self._terms(parts)
            p, n_keys = parts["p"], parts["n_keys"]
            reduce = (lambda x: x.mean(-1)) if self.cost == "rbf" else (lambda x: x.sum(-1))
            attraction = reduce(p * att).sum() / n_keys
            repulsion = reduce(p * rep).sum() / n_keys
        return LossOutput(attraction + repulsion, {"attraction": attraction, "repulsion": repulsion})

    @torch.no_grad()
    def diagnostics(self, q: Tensor, k: Tensor) -> dict[str, Tensor]:
        """Entropy / largest value of the positive weights ``p`` and of the repulsion weights.

        The repulsion weights are the detached softmax over the negatives (Euclidean cost) or,
        for the RBF cost, the InfoNCE softmax over all keys that the log-sum-exp's gradient uses.
        """
        with full_precision(q.device):
            q, k, parts = self._prepared(q, k)
            _, _, weights = self._terms(parts)
            n_keys, V = parts["n_keys"], q.shape[0]
            p = parts["p"].view(n_keys, V - 1, -1).transpose(1, 2)  # [keys, B, J]
            return weight_stats(*entropy_and_max(p), *entropy_and_max(weights))
