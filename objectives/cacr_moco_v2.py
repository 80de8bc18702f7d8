r"""CACR with a MoCo-v2 queue (the official ImageNet-100 / WebVision / ImageNet-22K code).

Inputs: queries ``q`` ``[V, B, D]`` (with gradient), momentum keys ``k`` ``[V, B, D]`` and the
queue ``[Q, D]`` of unit keys, one per row. ``q`` and ``k`` are L2-normalised inside unless
``normalize=False``; the queue is used as given (it holds normalised keys already).

For every view ``v`` (``V = K + 1``):

Attraction (weights detached)::

    c[b, u]  = ||q_v[b] - k_u[b]||^2                                  u != v
    A_v      = alpha * mean_b sum_u sg(softmax_u(t_pos * c[b, :]))[u] * c[b, u]

Repulsion over the queue and (``intra_batch``) the other queries of the same view::

    dQ[b, m] = 2 - 2 q_v[b] . queue[m]                                 [B, Q]
    dI[b, j] = ||q_v[b] - q_v[j]||^2                                   j != b
    w[b, :]  = softmax( -t_neg * [sg(dQ[b, :]), dI[b, :]] )            queue part detached
    R_v      = beta * mean_b sum_m w[b, m] * (-[dQ, dI][b, m])

``attraction = mean_v A_v``, ``repulsion = mean_v R_v``, ``loss = attraction + repulsion``.

``official_queue_cache=True`` reproduces the released code, which computes ``q . queue`` once
per forward call and re-uses view 0's products for every view (cost and weights); only the
intra-batch part then uses the current view. ``gather=True`` under DDP takes the intra-batch
negatives ``q_v[j]`` from every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from objectives._common import (
    LossOutput,
    check_finite,
    check_positive,
    check_rows,
    check_same_dim,
    check_same_shape,
    check_views,
    entropy_and_max,
    eye_mask,
    full_precision,
    prepare,
    sq_dist_from_dot,
)
from objectives.cacr_inbatch import other_views, row_sq_dist
from objectives.distributed import maybe_gather


class CACRMoCoV2(nn.Module):
    """CACR against a MoCo-v2 queue of momentum keys (plus optional intra-batch negatives)."""

    def __init__(
        self,
        t_pos: float,
        t_neg: float,
        alpha: float = 1.0,
        beta: float = 1.0,
        intra_batch: bool = True,
        official_queue_cache: bool = False,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        """Build the objective.

        Args:
            t_pos: attraction inverse temperature, > 0.
            t_neg: repulsion inverse temperature, > 0.
            alpha: attraction scale.
            beta: repulsion scale.
            intra_batch: also repel the other queries of the same view.
            official_queue_cache: re-use view 0's queue products for every view, as the
                released code does.
            normalize: L2-normalise ``q`` and ``k`` inside.
            gather: under DDP, take intra-batch negatives from every rank.

        """
        super().__init__()
        self.t_pos = check_positive("t_pos", t_pos)
        self.t_neg = check_positive("t_neg", t_neg)
        self.alpha = check_finite("alpha", alpha)
        self.beta = check_finite("beta", beta)
        self.intra_batch = bool(intra_batch)
        self.official_queue_cache = bool(official_queue_cache)
        self.normalize = bool(normalize)
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return (
            f"t_pos={self.t_pos}, t_neg={self.t_neg}, alpha={self.alpha}, beta={self.beta}, "
            f"intra_batch={self.intra_batch}, official_queue_cache={self.official_queue_cache}"
        )

    def _check(self, q: Tensor, k: Tensor, queue: Tensor) -> None:
        check_views("q", q, min_batch=2 if self.intra_batch else 1)
        check_same_shape("q", q, "k", k)
        check_rows("queue", queue)
        check_same_dim("q", q, "queue", queue)

    def _attraction(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Detached weights and costs ``[B, V, K]`` of each query to the other views' keys."""
        V = q.shape[0]
        dots = torch.einsum("vbd,ubd->bvu", q, k)
        cost = row_sq_dist(q.transpose(0, 1), k.transpose(0, 1), dots)  # [B, V(q), V(k)]
        others = other_views(V, q.device)
        cost = cost[:, torch.arange(V, device=q.device).unsqueeze(-1), others]
        weights = torch.softmax(self.t_pos * cost.detach(), dim=-1)
        return weights, cost

    def _queue_dist(self, q: Tensor, queue: Tensor) -> Tensor:
        """``[V, B, Q]`` (or ``[1, B, Q]`` with the official cache) queue distances."""
        source = q[:1] if self.official_queue_cache else q
        return sq_dist_from_dot(torch.matmul(source, queue.t()))

    def _intra_dist(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """``[V, B, N]`` distances to the (gathered) same-view queries and the own-row mask."""
        qg, offset = maybe_gather(q, self.gather, dim=1)
        dist = row_sq_dist(q, qg, torch.bmm(q, qg.transpose(1, 2)))
        return dist, eye_mask(q.shape[1], qg.shape[1], offset, q.device)

    def _repulsion_parts(
        self, q: Tensor, queue: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor]:
        """Queue distances, their log-weights, intra distances, their log-weights, the normaliser.

        The softmax runs over the queue and intra-batch parts together without concatenating
        them: each part's log-weights are ``logits - logsumexp(all logits)``.
        """
        d_q = self._queue_dist(q, queue)
        logits_q = -self.t_neg * d_q.detach()
        lse = torch.logsumexp(logits_q, dim=-1)
        d_i = logits_i = None
        if self.intra_batch:
            d_i, own = self._intra_dist(q)
            logits_i = (-self.t_neg * d_i).masked_fill(own, float("-inf"))
            d_i = d_i.masked_fill(own, 0.0)
            lse = torch.logaddexp(lse, torch.logsumexp(logits_i, dim=-1))
        lse = lse.unsqueeze(-1)
        log_w_i = None if logits_i is None else logits_i - lse
        return d_q, logits_q - lse, d_i, log_w_i, lse

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> LossOutput:
        """Compute the loss.

        Args:
            q: ``[V, B, D]`` queries (gradient).
            k: ``[V, B, D]`` momentum keys.
            queue: ``[Q, D]`` unit keys, ``Q >= 1``.

        Returns:
            ``LossOutput`` with terms ``attraction`` and ``repulsion`` (both already divided by V).

        """
        self._check(q, k, queue)
        with full_precision(q.device):
            q, k, queue = prepare((q, self.normalize), (k, self.normalize), (queue, False))
            w_pos, cost = self._attraction(q, k)
            attraction = self.alpha * (w_pos * cost).sum(-1).mean()
            d_q, log_w_q, d_i, log_w_i, _ = self._repulsion_parts(q, queue)
            pushed = (log_w_q.exp() * d_q).sum(-1)  # [V or 1, B]
            if d_i is not None:
                pushed = pushed + (log_w_i.exp() * d_i).sum(-1)
            # mean over views; with the official cache and no intra part all views are equal
            repulsion = -self.beta * pushed.mean()
        return LossOutput(attraction + repulsion, {"attraction": attraction, "repulsion": repulsion})

    @torch.no_grad()
    def diagnostics(self, q: Tensor, k: Tensor, queue: Tensor) -> dict[str, Tensor]:
        """Mean entropy and mean largest value of the attraction and repulsion weights."""
        self._check(q, k, queue)
        with full_precision(q.device):
            q, k, queue = prepare((q, self.normalize), (k, self.normalize), (queue, False))
            w_pos, _ = self._attraction(q, k)
            _, log_w_q, _, log_w_i, _ = self._repulsion_parts(q, queue)
            w_q = log_w_q.exp().expand(q.shape[0], -1, -1)
            w_neg = w_q if log_w_i is None else torch.cat([w_q, log_w_i.exp()], dim=-1)
            a_ent, a_max = entropy_and_max(w_pos)
            r_ent, r_max = entropy_and_max(w_neg)
        return {
            "attraction_entropy": a_ent,
            "attraction_max_weight": a_max,
            "repulsion_entropy": r_ent,
            "repulsion_max_weight": r_max,
        }
