"""Shared pieces of the objectives: the output type, input checks and small tensor helpers.

Everything here imports torch only, like the rest of the package.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from objectives.distributed import maybe_gather

WORKING_DTYPES = (torch.float32, torch.float64)


@dataclass
class LossOutput:
    """What every objective returns.

    Attributes:
        loss: the 0-dimensional loss to back-propagate.
        terms: named summands of ``loss`` (for logging); empty where an objective has none.

    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------- hyper-parameter checks


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it is not a finite positive number."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_finite(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it is not finite."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_tau_plus(value: float | None) -> float | None:
    """Check the debiasing class prior: ``None`` (off) or a number in (0, 1)."""
    if value is None:
        return None
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"tau_plus must be None (not debiased) or in (0, 1), got {value!r}")
    return value


# ---------------------------------------------------------------- tensor checks


def check_views(name: str, views: Tensor, *, exact_views: int | None = None, min_batch: int = 2) -> None:
    """Check a ``[V, B, D]`` tensor of views.

    Args:
        name: the argument's name, for the error message.
        views: the tensor to check.
        exact_views: the required ``V``, or ``None`` for any ``V >= 2``.
        min_batch: the smallest batch ``B`` that leaves every anchor a negative.

    Raises:
        ValueError: on a wrong rank, dtype, ``V`` or ``B``.

    """
    check_float(name, views)
    if views.dim() != 3:
        raise ValueError(f"{name} must be [V, B, D] (views, batch, dim); got shape {tuple(views.shape)}")
    V, B, D = views.shape
    if exact_views is not None and exact_views != V:
        raise ValueError(f"{name} must hold exactly {exact_views} views ([{exact_views}, B, D]); got V = {V}")
    if V < 2:
        raise ValueError(f"{name} needs V >= 2 views (K = V - 1 >= 1 positives); got V = {V}")
    if min_batch > B:
        raise ValueError(f"{name} needs a batch of at least {min_batch} images; got B = {B}")
    if D < 1:
        raise ValueError(f"{name} has embedding dimension D = 0")


def check_rows(name: str, x: Tensor, *, min_rows: int = 1) -> None:
    """Check a ``[N, D]`` matrix of embeddings (a batch of queries/keys or a queue)."""
    check_float(name, x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be [N, D]; got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows; got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has embedding dimension D = 0")


def check_query_key_queue(q: Tensor, k: Tensor, queue: Tensor, *, min_batch: int) -> None:
    """Check the ``q [B, D]``, ``k [B, D]``, ``queue [Q, D]`` inputs of a queue objective."""
    check_rows("q", q, min_rows=min_batch)
    check_rows("k", k)
    check_same_shape("q", q, "k", k)
    check_rows("queue", queue)
    check_same_dim("q", q, "queue", queue)


def check_float(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape (no broadcasting)."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_same_dim(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise ``ValueError`` unless the last (embedding) dimensions of ``a`` and ``b`` agree."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must share the embedding dimension D; got {a.shape[-1]} and {b.shape[-1]}"
        )


# ---------------------------------------------------------------- numerics


@contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Turn autocast off for ``device`` so the loss math runs in float32 or float64."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def working(x: Tensor, normalize: bool) -> Tensor:
    """Upcast half-precision inputs to float32 and L2-normalise the last dimension if asked."""
    if x.dtype not in WORKING_DTYPES:
        x = x.float()
    return F.normalize(x, dim=-1) if normalize else x


def prepare(*inputs: tuple[Tensor, bool]) -> list[Tensor]:
    """Bring several inputs to one working dtype, normalising those flagged ``True``.

    The dtype is float64 if any input is float64, else float32 (half precision is upcast).

    Args:
        inputs: ``(tensor, normalize)`` pairs.

    Returns:
        The prepared tensors, in order.

    """
    dtype = torch.float64 if any(x.dtype == torch.float64 for x, _ in inputs) else torch.float32
    return [working(x, norm).to(dtype) for x, norm in inputs]


def sq_dist_from_dot(dot: Tensor) -> Tensor:
    """Squared Euclidean distance of unit vectors from their dot product: ``2 - 2 a.b``."""
    return 2.0 - 2.0 * dot


@torch.no_grad()
def softmax_against_rows(scaled: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax statistics of the logits ``A = scaled @ rows.T`` without keeping ``A``.

    Args:
        scaled: ``[..., D]`` queries, already multiplied by the logit scale.
        rows: ``[Q, D]`` keys (a queue).

    Returns:
        ``logsumexp(A)`` and ``max(A)`` (``[...]`` each) and ``softmax(A) @ rows`` (``[..., D]``).
        No gradient flows; the ``[..., Q]`` buffer is reused in place.

    """
    logits = scaled @ rows.t()
    top = logits.amax(-1, keepdim=True)
    weights = logits.sub_(top).exp_()
    total = weights.sum(-1, keepdim=True)
    mixed = (weights @ rows).div_(total)
    return (top + total.log()).squeeze(-1), top.squeeze(-1), mixed


def entropy_and_max(weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mean entropy (nats) and mean largest weight of the distributions in the last dimension."""
    return torch.special.entr(weights).sum(-1).mean(), weights.amax(-1).mean()


def two_view_logits(z: Tensor, gather: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Dot products of the ``2B`` local anchors of ``[2, B, D]`` views with all ``2N`` candidates.

    Anchors are ordered view 0 then view 1; so are the candidates, which are the global batch
    (``N = W * B``) when ``gather`` is set under DDP.

    Args:
        z: ``[2, B, D]`` working embeddings.
        gather: gather the candidates across DDP ranks.

    Returns:
        ``dots [2B, 2N]``, the mask of each anchor's own column, and the column of its positive.

    """
    B = z.shape[1]
    zg, offset = maybe_gather(z, gather, dim=1)
    N = zg.shape[1]
    dots = z.reshape(2 * B, -1) @ zg.reshape(2 * N, -1).t()
    rows = torch.arange(2 * B, device=z.device)
    view, local = rows // B, rows % B
    own = torch.zeros_like(dots, dtype=torch.bool)
    own[rows, view * N + offset + local] = True
    return dots, own, (1 - view) * N + offset + local


def weight_stats(a_entropy: Tensor, a_max: Tensor, r_entropy: Tensor, r_max: Tensor) -> dict[str, Tensor]:
    """The diagnostics dict every CACR variant returns."""
    return {
        "attraction_entropy": a_entropy,
        "attraction_max_weight": a_max,
        "repulsion_entropy": r_entropy,
        "repulsion_max_weight": r_max,
    }


def eye_mask(rows: int, cols: int, offset: int, device: torch.device) -> Tensor:
    """Boolean ``[rows, cols]`` mask that is True at ``(i, offset + i)``.

    Marks each local anchor's own column in a matrix against a (possibly gathered) batch whose
    local rows start at column ``offset``.
    """
    r = torch.arange(rows, device=device)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    mask[r, offset + r] = True
    return mask
