r"""InfoNCE / NT-Xent with in-batch negatives (the SimCLR-style CL baseline).

Input ``views`` ``[2, B, D]``, L2-normalised inside unless ``normalize=False``. All ``2B``
embeddings ``z`` act as anchors; each anchor's positive is the same image's other view and its
negatives are the other ``2B - 2`` embeddings (itself and its positive removed)::

    s(a, b) = z_a . z_b / tau
    L = mean_a -log( exp(s(a, a+)) / (exp(s(a, a+)) + sum_{n != a, a+} exp(s(a, n))) )

computed as a cross-entropy with the anchor's own column masked out. With ``gather=True`` under
DDP the negatives run over the ``2 W B - 2`` embeddings of the global batch. Returns no terms.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from objectives._common import (
    LossOutput,
    check_positive,
    check_views,
    full_precision,
    two_view_logits,
    working,
)


class InfoNCEInBatch(nn.Module):
    """Two-view InfoNCE (NT-Xent) with in-batch negatives."""

    def __init__(self, tau: float, normalize: bool = True, gather: bool = False) -> None:
        """Build the objective.

        Args:
            tau: temperature, > 0 (divides the cosine similarities).
            normalize: L2-normalise the views inside.
            gather: under DDP, take negatives from every rank's batch.

        """
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.normalize = bool(normalize)
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return f"tau={self.tau}, gather={self.gather}"

    def forward(self, views: Tensor) -> LossOutput:
        """Compute the loss from ``views [2, B, D]``."""
        check_views("views", views, exact_views=2)
        with full_precision(views.device):
            z = working(views, self.normalize)
            dots, own, pos_col = two_view_logits(z, self.gather)
            logits = (dots / self.tau).masked_fill(own, float("-inf"))
            loss = F.cross_entropy(logits, pos_col)
        return LossOutput(loss)
