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
``uniform_repulsion`` (1/(B-1)), ``uniform`` (both); ``full`` keeps both softmaxes. The official
code's names are accepted too: ``without_w1``, ``without_w2`` and ``none``.

``loss = attraction + repulsion``. With ``gather=True`` under DDP the negatives ``z_y[j]`` run
over the global batch (``j`` over ``W * B - 1`` images); the mean over ranks of the per-rank loss
then equals the single-process loss on the global batch.
"""

from __future__ import annotations

import functools

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
    weight_stats,
    working,
)
from objectives.distributed import maybe_gather

WEIGHTINGS = ("full", "uniform_attraction", "uniform_repulsion", "uniform")
# the official code's names for the same ablations (its ``choice`` argument)
OFFICIAL_WEIGHTINGS = {
    "without_w1": "uniform_attraction",
    "without_w2": "uniform_repulsion",
    "none": "uniform",
}


def row_sq_dist(a: Tensor, b: Tensor, dots: Tensor) -> Tensor:
    """``||a_i - b_j||^2`` from row norms and the given dot products (works for any norms)."""
    return (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * dots


@functools.lru_cache(maxsize=64)
def _layout(V: int, B: int, N: int, offset: int, device: torch.device) -> tuple[Tensor, ...]:
    """Index tensors and masks that depend only on the shapes (built once per shape)."""
    same_view = torch.eye(V, dtype=torch.bool, device=device).unsqueeze(-1)  # [V, V, 1]
    xs, ys = torch.triu_indices(V, V, 1, device=device)
    pair_of = torch.full((V, V), len(xs), dtype=torch.long, device=device)  # v == u: padding row
    pair_of[xs, ys] = pair_of[ys, xs] = torch.arange(len(xs), device=device)
    return same_view, xs, ys, pair_of.view(-1), eye_mask(B, N, offset, device)


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
        weighting = OFFICIAL_WEIGHTINGS.get(weighting, weighting)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS + tuple(OFFICIAL_WEIGHTINGS))
        self.tau_plus = check_tau_plus(tau_plus)
        self.normalize = bool(normalize)
        self.gather = bool(gather)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``repr``."""
        return (
            f"t_pos={self.t_pos}, t_neg={self.t_neg}, alpha={self.alpha}, beta={self.beta}, "
            f"weighting={self.weighting!r}, tau_plus={self.tau_plus}, gather={self.gather}"
        )

    def _pieces(self, z: Tensor) -> dict[str, Tensor]:
        """Distances and weights of every anchor, from one batched product over the view pairs.

        Keys: ``pos_d``/``w_pos`` ``[V, V, B]`` (anchor view, positive view, image; zero weight on
        the anchor's own view), ``neg_d`` ``[P, B, N]`` (view pair, anchor, candidate), ``w_neg``
        (same shape, zero on the anchor's own image), ``d_pos`` ``[P, B]``.
        """
        V, B, _ = z.shape
        zg, offset = maybe_gather(z, self.gather, dim=1)
        N = zg.shape[1]
        same_view, xs, ys, pair_of, own = _layout(V, B, N, offset, z.device)
        anchors, cands = z.index_select(0, xs), zg.index_select(0, ys)  # [P, B, D], [P, N, D]
        neg_dots = torch.bmm(anchors, cands.transpose(1, 2))  # [P, B, N]: only the pairs x < y
        if self.normalize:  # unit rows: ||a - b||^2 = 2 - 2 a.b
            neg_d = torch.rsub(neg_dots, 2.0, alpha=2.0)
        else:
            neg_d = row_sq_dist(anchors, cands, neg_dots)
        # the positives of pair (x, y) sit on the diagonal of its block (at this rank's offset);
        # spread them to [V, V, B] for both orders, with a zero distance for v == u
        d_pos = neg_d[..., offset : offset + B].diagonal(dim1=1, dim2=2)  # [P, B]
        padded = torch.cat([d_pos, d_pos.new_zeros(1, B)])
        pos_d = padded.index_select(0, pair_of).view(V, V, B)
        if self.weighting in ("uniform_attraction", "uniform"):
            w_pos = (~same_view).to(pos_d.dtype).div(V - 1).expand_as(pos_d)
        else:
            w_pos = torch.softmax((self.t_pos * pos_d).masked_fill(same_view, float("-inf")), dim=1)
        pieces = {"pos_d": pos_d, "w_pos": w_pos, "neg_d": neg_d, "d_pos": d_pos}
        if self.weighting in ("uniform_repulsion", "uniform"):
            pieces["w_neg"] = (~own).to(neg_d.dtype).div(N - 1).expand_as(neg_d)
        else:
            pieces["w_neg"] = torch.softmax((-self.t_neg * neg_d).masked_fill(own, float("-inf")), -1)
        return pieces

    def forward(self, views: Tensor) -> LossOutput:
        """Compute the loss.

        Args:
            views: ``[V, B, D]`` embeddings, ``V >= 2``, ``B >= 2``.

        Returns:
            ``LossOutput`` with terms ``attraction`` and ``repulsion``.

        """
        check_views("views", views)
        with full_precision(views.device):
            p = self._pieces(working(views, self.normalize))
            # the anchor's own view / own image carries zero weight, so full sums are exact
            attraction = self.alpha * (p["w_pos"] * p["pos_d"]).sum(1).mean()
            per_anchor = -self.beta * (p["w_neg"] * p["neg_d"]).sum(-1)  # [P, B]
            if self.tau_plus is not None:
                per_anchor = (per_anchor - self.tau_plus * p["d_pos"]) / (1.0 - self.tau_plus)
            repulsion = per_anchor.mean()
        return LossOutput(attraction + repulsion, {"attraction": attraction, "repulsion": repulsion})

    @torch.no_grad()
    def diagnostics(self, views: Tensor) -> dict[str, Tensor]:
        """Mean entropy and mean largest value of the attraction and repulsion weights.

        With ``K = 1`` the attraction weight is always 1 (entropy 0).
        """
        check_views("views", views)
        with full_precision(views.device):
            p = self._pieces(working(views, self.normalize))
            attraction = entropy_and_max(p["w_pos"].transpose(1, 2))  # over the positives
            return weight_stats(*attraction, *entropy_and_max(p["w_neg"]))
