r"""InfoNCE against a MoCo queue (the MoCo v1/v2 CL baseline).

Inputs: queries ``q`` ``[B, D]``, keys ``k`` ``[B, D]`` (one positive per query) and the queue
``[Q, D]`` of unit keys, one per row. ``q`` and ``k`` are L2-normalised inside unless
``normalize=False``; the queue is used as given and is a constant (no gradient)::

    logits[b] = [q_b . k_b, q_b . queue_1, ..., q_b . queue_Q] / tau
    L = mean_b CE(logits[b], label 0) = mean_b ( logsumexp(logits[b]) - logits[b, 0] )

Returns no terms.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from objectives._common import (
    LossOutput,
    check_positive,
    check_query_key_queue,
    full_precision,
    prepare,
)


class InfoNCEQueue(nn.Module):
    """MoCo-style InfoNCE: one positive key per query, negatives from the queue."""

    def __init__(self, tau: float, normalize: bool = True) -> None:
        """Build the objective.

        Args:
            tau: temperature, > 0 (MoCo v1 0.07, MoCo v2 0.2).
            normalize: L2-normalise ``q`` and ``k`` inside.

        """
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.normalize = bool(normalize)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return f"tau={self.tau}"

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> LossOutput:
        """Compute the loss from ``q [B, D]``, ``k [B, D]`` and ``queue [Q, D]``."""
        check_query_key_queue(q, k, queue, min_batch=1)
        with full_precision(q.device):
            q, k, queue = prepare((q, self.normalize), (k, self.normalize), (queue.detach(), False))
            pos = (q * k).sum(-1) / self.tau
            lse = torch.logaddexp(pos, torch.logsumexp(q @ queue.t() / self.tau, dim=-1))
            loss = (lse - pos).mean()
        return LossOutput(loss)
