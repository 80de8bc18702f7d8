r"""Alignment + uniformity against a MoCo queue (the moco_align_uniform AU-CL baseline).

Inputs: queries ``q`` ``[B, D]``, keys ``k`` ``[B, D]`` and the queue ``[Q, D]`` of unit keys.
``q`` and ``k`` are L2-normalised inside unless ``normalize=False``; the queue is used as given
and is a constant (no gradient).
All negatives are pooled in one log-mean-exp::

    align   = mean_b (2 - 2 q_b . k_b)^(align_alpha / 2)
    uniform = log( ( sum_{b,m} exp(-unif_t (2 - 2 q_b . queue_m))
                     + sum_{i<j} exp(-unif_t ||q_i - q_j||^2) ) / (B Q + B (B - 1) / 2) )
    L       = align_w * align + unif_w * uniform

Without ``intra_batch`` only the ``B Q`` queue terms enter. Defaults are the official
moco_align_uniform ones (3 * align with alpha 2, 1 * uniform with t 3, intra-batch on). With
``gather=True`` under DDP, ``uniform`` runs over the global batch of queries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from objectives._common import (
    LossOutput,
    check_finite,
    check_positive,
    check_query_key_queue,
    full_precision,
    prepare,
    sq_dist_from_dot,
)
from objectives.align_uniform_inbatch import pair_sq_dists
from objectives.distributed import maybe_gather


class AlignUniformQueue(nn.Module):
    """Alignment with the momentum key, uniformity over the queue and the batch."""

    def __init__(
        self,
        align_w: float = 3.0,
        align_alpha: float = 2.0,
        unif_w: float = 1.0,
        unif_t: float = 3.0,
        intra_batch: bool = True,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        """Build the objective.

        Args:
            align_w: weight of the alignment term.
            align_alpha: exponent of the alignment distance, > 0.
            unif_w: weight of the uniformity term.
            unif_t: uniformity temperature ``t``, > 0.
            intra_batch: also pool the pairs of queries of the batch.
            normalize: L2-normalise ``q`` and ``k`` inside.
            gather: under DDP, compute uniformity over the global batch of queries.

        """
        super().__init__()
        self.align_w = check_finite("align_w", align_w)
        self.align_alpha = check_positive("align_alpha", align_alpha)
        self.unif_w = check_finite("unif_w", unif_w)
        self.unif_t = check_positive("unif_t", unif_t)
        self.intra_batch = bool(intra_batch)
        self.normalize = bool(normalize)
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return (
            f"align_w={self.align_w}, align_alpha={self.align_alpha}, unif_w={self.unif_w}, "
            f"unif_t={self.unif_t}, intra_batch={self.intra_batch}, gather={self.gather}"
        )

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> LossOutput:
        """Compute the loss; terms ``align`` and ``uniform``."""
        check_query_key_queue(q, k, queue, min_batch=2 if self.intra_batch else 1)
        with full_precision(q.device):
            q, k, queue = prepare((q, self.normalize), (k, self.normalize), (queue.detach(), False))
            align_d = sq_dist_from_dot((q * k).sum(-1)).clamp_min(0.0)
            align = align_d.pow(self.align_alpha / 2).mean()
            qg, _ = maybe_gather(q, self.gather, dim=0)
            lse = torch.logsumexp((-self.unif_t * sq_dist_from_dot(qg @ queue.t())).reshape(-1), 0)
            count = qg.shape[0] * queue.shape[0]
            if self.intra_batch:
                d = pair_sq_dists(qg)
                lse = torch.logaddexp(lse, torch.logsumexp(-self.unif_t * d, dim=0))
                count += d.numel()
            uniform = lse - math.log(count)
            loss = self.align_w * align + self.unif_w * uniform
        return LossOutput(loss, {"align": align, "uniform": uniform})
