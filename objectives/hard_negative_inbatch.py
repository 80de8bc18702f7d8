r"""Hard-negative contrastive loss with in-batch negatives (Robinson et al. HCL; HN-CL baseline).

Input ``views`` ``[2, B, D]``, L2-normalised inside unless ``normalize=False``. As in InfoNCE,
the ``2B`` embeddings are anchors with ``N = 2B - 2`` negatives each::

    pos   = exp(z_a . z_a+ / tau)                neg_n = exp(z_a . z_n / tau)
    imp_n = neg_n^beta                           reweight = sum_n imp_n neg_n / mean_n imp_n
    Ng    = max( (-tau_plus N pos + reweight) / (1 - tau_plus),  N e^(-1/tau) )
    L     = mean_a -log( pos / (pos + Ng) )

Everything is evaluated in log space (log-sum-exp for the sums, the per-anchor combination in
float64), so no ``exp`` overflows at small ``tau`` or large ``beta``. With ``gather=True`` under
DDP the negatives (and ``N = 2 W B - 2``) come from the global batch. Returns no terms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from objectives._common import (
    LossOutput,
    check_finite,
    check_positive,
    check_views,
    full_precision,
    two_view_logits,
    working,
)


class HardNegativeInBatch(nn.Module):
    """HCL's hard-negative estimator (``estimator='hard'``) with optional debiasing."""

    def __init__(
        self,
        tau: float = 0.5,
        tau_plus: float = 0.1,
        beta: float = 1.0,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        """Build the objective.

        Args:
            tau: temperature, > 0.
            tau_plus: class prior in [0, 1) (0 turns the debiasing off).
            beta: hardness concentration, >= 0 (0 gives the plain debiased estimator).
            normalize: L2-normalise the views inside.
            gather: under DDP, take negatives from every rank's batch.

        """
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.tau_plus = float(tau_plus)
        if not 0.0 <= self.tau_plus < 1.0:
            raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus!r}")
        self.beta = check_finite("beta", beta)
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.normalize = bool(normalize)
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return f"tau={self.tau}, tau_plus={self.tau_plus}, beta={self.beta}, gather={self.gather}"

    def forward(self, views: Tensor) -> LossOutput:
        """Compute the loss from ``views [2, B, D]``."""
        check_views("views", views, exact_views=2)
        with full_precision(views.device):
            z = working(views, self.normalize)
            dots, own, pos_col = two_view_logits(z, self.gather)
            rows = torch.arange(dots.shape[0], device=dots.device)
            s = dots / self.tau
            log_pos = s[rows, pos_col]
            not_neg = own.clone()
            not_neg[rows, pos_col] = True
            n_neg = dots.shape[1] - 2
            log_reweight = (
                torch.logsumexp(((1.0 + self.beta) * s).masked_fill(not_neg, float("-inf")), -1)
                - torch.logsumexp((self.beta * s).masked_fill(not_neg, float("-inf")), -1)
                + math.log(n_neg)
            )
            log_ng = self._log_ng(log_reweight.double(), log_pos.double(), n_neg)
            loss = F.softplus(log_ng - log_pos.double()).mean().to(z.dtype)
        return LossOutput(loss)

    def _log_ng(self, log_reweight: Tensor, log_pos: Tensor, n_neg: int) -> Tensor:
        """``log Ng`` from ``log reweight`` and ``log pos`` (float64), clamp included."""
        log_floor = math.log(n_neg) - 1.0 / self.tau
        if self.tau_plus == 0.0:
            return torch.maximum(log_reweight, torch.full_like(log_reweight, log_floor))
        log_sub = math.log(self.tau_plus * n_neg) + log_pos
        shift = torch.maximum(log_reweight, log_sub).detach()
        debiased = (torch.exp(log_reweight - shift) - torch.exp(log_sub - shift)) / (1.0 - self.tau_plus)
        floor = torch.exp(log_floor - shift)
        return torch.log(torch.maximum(debiased, floor)) + shift
