r"""Alignment + uniformity with in-batch pairs (Wang & Isola; the AU-CL baseline).

Input ``views`` ``[2, B, D]`` (``z1``, ``z2``), L2-normalised inside unless ``normalize=False``::

    align      = mean_b ||z1_b - z2_b||^align_alpha
    unif(Z)    = log mean_{i<j} exp(-unif_t * ||Z_i - Z_j||^2)
    uniform    = (unif(z1) + unif(z2)) / 2
    L          = align_w * align + unif_w * uniform

Terms ``align`` and ``uniform`` are the raw (unweighted) values. With ``gather=True`` under DDP
``unif`` runs over the global batch (every rank computes the same value) and ``align`` over the
local one, so the mean over ranks equals the single-process loss on the global batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from objectives._common import (
    LossOutput,
    check_finite,
    check_positive,
    check_views,
    full_precision,
    working,
)
from objectives.cacr_inbatch import row_sq_dist
from objectives.distributed import maybe_gather


def log_mean_exp(x: Tensor) -> Tensor:
    """``log(mean(exp(x)))`` over all elements, computed stably."""
    return torch.logsumexp(x.reshape(-1), dim=0) - math.log(x.numel())


def pair_sq_dists(z: Tensor) -> Tensor:
    """Squared distances ``||z_i - z_j||^2`` of the unordered pairs ``i < j`` of ``z [..., N, D]``."""
    n = z.shape[-2]
    dist = row_sq_dist(z, z, z @ z.transpose(-1, -2))
    i, j = torch.triu_indices(n, n, 1, device=z.device)
    return dist[..., i, j]


class AlignUniformInBatch(nn.Module):
    """Wang & Isola's alignment and uniformity losses on two in-batch views."""

    def __init__(
        self,
        align_alpha: float = 2.0,
        unif_t: float = 2.0,
        align_w: float = 1.0,
        unif_w: float = 1.0,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        """Build the objective.

        Args:
            align_alpha: exponent of the alignment distance, > 0.
            unif_t: uniformity temperature ``t``, > 0.
            align_w: weight of the alignment term.
            unif_w: weight of the uniformity term.
            normalize: L2-normalise the views inside.
            gather: under DDP, compute uniformity over the global batch.

        """
        super().__init__()
        self.align_alpha = check_positive("align_alpha", align_alpha)
        self.unif_t = check_positive("unif_t", unif_t)
        self.align_w = check_finite("align_w", align_w)
        self.unif_w = check_finite("unif_w", unif_w)
        self.normalize = bool(normalize)
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return (
            f"align_alpha={self.align_alpha}, unif_t={self.unif_t}, align_w={self.align_w}, "
            f"unif_w={self.unif_w}, gather={self.gather}"
        )

    def forward(self, views: Tensor) -> LossOutput:
        """Compute the loss from ``views [2, B, D]``; terms ``align`` and ``uniform``."""
        check_views("views", views, exact_views=2)
        with full_precision(views.device):
            z = working(views, self.normalize)
            # ||.||^alpha via the norm: a finite (zero) gradient for identical pairs when alpha < 2
            align = torch.linalg.vector_norm(z[0] - z[1], dim=-1).pow(self.align_alpha).mean()
            zg, _ = maybe_gather(z, self.gather, dim=1)
            d = pair_sq_dists(zg)  # [2, pairs]
            uniform = (log_mean_exp(-self.unif_t * d[0]) + log_mean_exp(-self.unif_t * d[1])) / 2
            loss = self.align_w * align + self.unif_w * uniform
        return LossOutput(loss, {"align": align, "uniform": uniform})
