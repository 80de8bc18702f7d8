r"""CACR, small-scale in-batch variant (the official CIFAR-10/100 and STL-10 code).

Input ``views`` ``[V, B, D]``: ``V = K + 1`` augmentations of the same ``B`` images, all with
gradient (no momentum encoder, no queue). Rows are L2-normalised inside unless
``normalize=False``; ``d(a, b) = ||a - b||^2``.

Attraction (each view ``v`` in turn is the anchor; its positives are the other ``K`` views of
the same image; the weights are *not* detached)::

    W+[v, b, u] = softmax_u( t_pos * d(z_v[b], z_u[b]) )          u != v
    attraction  = mean_{v, b} sum_u W+[v, b, u] * alpha * d(z_v[b], z_u[b])

Repulsion (over the ``V (V - 1) / 2`` unordered view pairs ``x < y``; the anchor is row ``i`` of
view ``x``, its negatives the other images ``j != i`` of view ``y``; weights not detached)::

    W-[x, y, i, j] = softmax_j( -t_neg * d(z_x[i], z_y[j]) )        j != i
    r[x, y, i]     = sum_j W-[x, y, i, j] * (-beta) * d(z_x[i], z_y[j])
    repulsion      = mean_{x<y, i} r[x, y, i]

Debiased (``tau_plus`` set): ``r <- (-tau_plus * d(z_x[i], z_y[i]) + r) / (1 - tau_plus)``
(``tau_plus`` is not multiplied by ``beta``, as in the official code).

``weighting`` replaces softmax weights by uniform ones: ``uniform_attraction`` (1/K),
``uniform_repulsion`` (1/(B-1)), ``uniform`` (both); ``full`` keeps both softmaxes.

``loss = attraction + repulsion``. With ``gather=True`` under DDP the negatives ``z_y[j]`` run
over the global batch (``j`` over ``W * B - 1`` images); the mean over ranks of the per-rank loss
then equals the single-process loss on the global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from objectives._common import (
    LossOutput,
    check_choice,
    check_finite,
    check_positive,
    check_tau_plus,
    check_views,
    entropy_and_max,
    eye_mask,
    full_precision,
    working,
)
from objectives.distributed import maybe_gather

WEIGHTINGS = ("full", "uniform_attraction", "uniform_repulsion", "uniform")


def other_views(V: int, device: torch.device) -> Tensor:
    """``[V, V - 1]`` index of the views other than ``v`` for every ``v`` (in increasing order)."""
    idx = torch.arange(V, device=device).expand(V, V)
    keep = ~torch.eye(V, dtype=torch.bool, device=device)
    return idx[keep].view(V, V - 1)


def row_sq_dist(a: Tensor, b: Tensor, dots: Tensor) -> Tensor:
    """``||a_i - b_j||^2`` from row norms and the given dot products (works for any norms)."""
    return (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * dots


class CACRInBatch(nn.Module):
    """Contrastive attraction + contrastive repulsion with in-batch, cross-view negatives."""

    def __init__(
        self,
        t_pos: float,
        t_neg: float,
        alpha: float = 1.0,
        beta: float = 1.0,
        weighting: str = "full",
        tau_plus: float | None = None,
        normalize: bool = True,
        gather: bool = False,
    ) -> None:
        """Build the objective.

        Args:
            t_pos: attraction inverse temperature (multiplies distances), > 0.
            t_neg: repulsion inverse temperature, > 0.
            alpha: attraction scale.
            beta: repulsion scale.
            weighting: ``full``, ``uniform_attraction``, ``uniform_repulsion`` or ``uniform``.
            tau_plus: class prior of the debiased variant in (0, 1), or ``None`` (off).
            normalize: L2-normalise the views inside.
            gather: under DDP, take negatives from every rank's batch.

        """
        super().__init__()
        self.t_pos = check_positive("t_pos", t_pos)
        self.t_neg = check_positive("t_neg", t_neg)
        self.alpha = check_finite("alpha", alpha)
        self.beta = check_finite("beta", beta)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.tau_plus = check_tau_plus(tau_plus)
        self.normalize = bool(normalize)
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return (
            f"t_pos={self.t_pos}, t_neg={self.t_neg}, alpha={self.alpha}, beta={self.beta}, "
            f"weighting={self.weighting!r}, tau_plus={self.tau_plus}, gather={self.gather}"
        )

    def _attraction(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Weights ``[B, V, K]`` and distances ``[B, V, K]`` of every anchor to its positives."""
        V = z.shape[0]
        dots = torch.einsum("vbd,ubd->bvu", z, z)
        sq = (z * z).sum(-1).t()  # [B, V]
        dist = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * dots  # [B, V, V]
        others = other_views(V, z.device)
        dist = dist[:, torch.arange(V, device=z.device).unsqueeze(-1), others]  # [B, V, K]
        if self.weighting in ("uniform_attraction", "uniform"):
            weights = torch.full_like(dist, 1.0 / (V - 1))
        else:
            weights = torch.softmax(self.t_pos * dist, dim=-1)
        return weights, dist

    def _repulsion(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Weights and distances ``[P, B, N]`` of each pair's anchors to all candidates.

        Also returns the mask of each anchor's own column and its positive distance ``[P, B]``.
        """
        V, B, _ = z.shape
        zg, offset = maybe_gather(z, self.gather, dim=1)
        xs, ys = torch.triu_indices(V, V, 1, device=z.device)
        anchors, cands = z[xs], zg[ys]  # [P, B, D], [P, N, D]
        dist = row_sq_dist(anchors, cands, torch.bmm(anchors, cands.transpose(1, 2)))
        N = cands.shape[1]
        own = eye_mask(B, N, offset, z.device)
        if self.weighting in ("uniform_repulsion", "uniform"):
            weights = (~own).to(dist.dtype).div(N - 1).expand_as(dist)
        else:
            logits = (-self.t_neg * dist).masked_fill(own, float("-inf"))
            weights = torch.softmax(logits, dim=-1)
        d_pos = dist[:, own]  # [P, B]: d(z_x[i], z_y[i])
        return weights, dist, own, d_pos

    def forward(self, views: Tensor) -> LossOutput:
        """Compute the loss.

        Args:
            views: ``[V, B, D]`` embeddings, ``V >= 2``, ``B >= 2``.

        Returns:
            ``LossOutput`` with terms ``attraction`` and ``repulsion``.

        """
        check_views("views", views)
        with full_precision(views.device):
            z = working(views, self.normalize)
            w_pos, d_att = self._attraction(z)
            attraction = self.alpha * (w_pos * d_att).sum(-1).mean()
            w_neg, d_rep, own, d_pos = self._repulsion(z)
            per_anchor = -self.beta * (w_neg * d_rep.masked_fill(own, 0.0)).sum(-1)  # [P, B]
            if self.tau_plus is not None:
                per_anchor = (per_anchor - self.tau_plus * d_pos) / (1.0 - self.tau_plus)
            repulsion = per_anchor.mean()
        return LossOutput(attraction + repulsion, {"attraction": attraction, "repulsion": repulsion})

    @torch.no_grad()
    def diagnostics(self, views: Tensor) -> dict[str, Tensor]:
        """Mean entropy and mean largest value of the attraction and repulsion weights.

        With ``K = 1`` the attraction weight is always 1 (entropy 0).
        """
        check_views("views", views)
        with full_precision(views.device):
            z = working(views, self.normalize)
            w_pos, _ = self._attraction(z)
            w_neg = self._repulsion(z)[0]
            a_ent, a_max = entropy_and_max(w_pos)
            r_ent, r_max = entropy_and_max(w_neg)
        return {
            "attraction_entropy": a_ent,
            "attraction_max_weight": a_max,
            "repulsion_entropy": r_ent,
            "repulsion_max_weight": r_max,
        }
