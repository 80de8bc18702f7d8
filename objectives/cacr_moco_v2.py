r"""CACR with a MoCo-v2 queue (the official ImageNet-100 / WebVision / ImageNet-22K code).

Inputs: queries ``q`` ``[V, B, D]`` (with gradient), momentum keys ``k`` ``[V, B, D]`` and the
queue ``[Q, D]`` of unit keys, one per row. ``q`` and ``k`` are L2-normalised inside unless
``normalize=False``; the queue is used as given (it holds normalised keys already) and is a
constant: it gets no gradient.

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
    softmax_against_rows,
    weight_stats,
)
from objectives.cacr_inbatch import row_sq_dist
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
        """Detached weights and costs ``[V, V, B]`` (query view, key view, image).

        The query's own view gets weight zero, so sums over the key views are exact.
        """
        V = q.shape[0]
        cost = (q.unsqueeze(1) - k.unsqueeze(0)).pow(2).sum(-1)  # ||q_v[b] - k_u[b]||^2
        same_view = torch.eye(V, dtype=torch.bool, device=q.device).unsqueeze(-1)
        logits = (self.t_pos * cost.detach()).masked_fill(same_view, float("-inf"))
        return torch.softmax(logits, dim=1), cost

    def _repulsion(self, q: Tensor, queue: Tensor) -> dict[str, Tensor]:
        """Per-anchor repulsion pieces, ``[V, B]`` each (``[1, B]`` for cached queue parts).

        The queue weights are detached, so the queue part of ``sum_m w_m d_m`` needs only
        ``p = softmax(2 t_neg q . queue)`` and ``r = p @ queue``: with ``lse_q`` the log of the
        queue part's softmax normaliser and ``L`` the joint one (queue + intra-batch),
        ``sum_m w_m dQ_m = exp(lse_q - L) * (2 - 2 q . r)``, whose gradient is
        ``-2 exp(lse_q - L) r`` plus the path through ``L``. Nothing of size ``[B, Q]`` is
        kept for the backward pass.
        """
        source = q[:1] if self.official_queue_cache else q
        lse_a, top_a, r = softmax_against_rows((2.0 * self.t_neg) * source.detach(), queue)
        lse_q = lse_a - 2.0 * self.t_neg  # log sum_m exp(-t_neg * dQ_m)
        s_bar = (source * r).sum(-1)  # sum_m p_m q . queue_m, gradient to q only
        parts = {"lse_a": lse_a, "top_a": top_a, "s_bar": s_bar, "queue_cost": 2.0 - 2.0 * s_bar}
        if not self.intra_batch:
            parts["mass_q"] = torch.ones_like(lse_q)
            return parts
        qg, offset = maybe_gather(q, self.gather, dim=1)
        d_i = row_sq_dist(q, qg, torch.bmm(q, qg.transpose(1, 2)))
        own = eye_mask(q.shape[1], qg.shape[1], offset, q.device)
        logits_i = (-self.t_neg * d_i).masked_fill(own, float("-inf"))
        joint = torch.logaddexp(lse_q, torch.logsumexp(logits_i, dim=-1))  # [V, B]
        parts["mass_q"] = torch.exp(lse_q - joint)
        parts["w_i"] = torch.exp(logits_i - joint.unsqueeze(-1))
        parts["intra_cost"] = (parts["w_i"] * d_i.masked_fill(own, 0.0)).sum(-1)
        return parts

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> LossOutput:
        """Compute the loss.

        Args:
            q: ``[V, B, D]`` queries (gradient).
            k: ``[V, B, D]`` momentum keys (not detached here: compute them under no_grad).
            queue: ``[Q, D]`` unit keys, ``Q >= 1``; a constant (it gets no gradient).

        Returns:
            ``LossOutput`` with terms ``attraction`` and ``repulsion`` (both already divided by V).

        """
        self._check(q, k, queue)
        with full_precision(q.device):
            q, k, queue = prepare((q, self.normalize), (k, self.normalize), (queue.detach(), False))
            w_pos, cost = self._attraction(q, k)
            attraction = self.alpha * (w_pos * cost).sum(1).mean()
            parts = self._repulsion(q, queue)
            pushed = parts["mass_q"] * parts["queue_cost"]  # [V, B] (cache: broadcast of [1, B])
            if self.intra_batch:
                pushed = pushed + parts["intra_cost"]
            # mean over views; with the official cache and no intra part all views are equal
            repulsion = -self.beta * pushed.mean()
        return LossOutput(attraction + repulsion, {"attraction": attraction, "repulsion": repulsion})

    @torch.no_grad()
    def diagnostics(self, q: Tensor, k: Tensor, queue: Tensor) -> dict[str, Tensor]:
        """Mean entropy and mean largest value of the attraction and repulsion weights.

        The repulsion distribution runs over the queue and the intra-batch negatives together;
        its entropy is assembled from the queue softmax's ``logsumexp`` and ``sum p A`` without
        materialising the ``[B, Q]`` weights.
        """
        self._check(q, k, queue)
        with full_precision(q.device):
            q, k, queue = prepare((q, self.normalize), (k, self.normalize), (queue, False))
            w_pos, _ = self._attraction(q, k)
            parts = self._repulsion(q, queue)
            mass = parts["mass_q"]
            entropy_p = parts["lse_a"] - 2.0 * self.t_neg * parts["s_bar"]  # H(softmax(A))
            entropy = mass * (entropy_p - torch.log(mass))
            top = mass * torch.exp(parts["top_a"] - parts["lse_a"])
            if self.intra_batch:
                entropy = entropy + torch.special.entr(parts["w_i"]).sum(-1)
                top = torch.maximum(top, parts["w_i"].amax(-1))
            shape = (q.shape[0], q.shape[1])
            attraction = entropy_and_max(w_pos.transpose(1, 2))
            return weight_stats(*attraction, entropy.expand(shape).mean(), top.expand(shape).mean())
