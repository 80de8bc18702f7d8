"""Gathering in-batch negatives across data-parallel ranks, with gradients.

Under DDP each rank holds ``B`` images of a global batch of ``W * B``. An objective built with
``gather=True`` keeps its anchors local and compares them with the negatives of the whole global
batch. The gather is differentiable: in the backward pass the gradient reaching every gathered
row is summed over all ranks and handed back to the rank that owns the row. Because DDP then
averages parameter gradients over ranks, training sees the gradient of the mean over ranks of
the per-rank losses, which equals the single-process loss on the global batch for every
objective that averages over anchors (see each objective's docstring).

With no process group initialised, or a world of one, gathering is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """Return ``(rank, world_size)`` of the default process group, or ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherRows(torch.autograd.Function):
    """All-gather along ``dim``; backward sums the gradient over ranks and keeps the local part."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        rank, size = world()
        ctx.dim, ctx.rank, ctx.rows = dim, rank, x.shape[dim]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(ctx.dim, ctx.rank * ctx.rows, ctx.rows), None


def gather_rows(x: Tensor, dim: int = 0) -> tuple[Tensor, int]:
    """Concatenate ``x`` from every rank along ``dim``, differentiably.

    Every rank must pass a tensor of the same shape.

    Args:
        x: this rank's part of the batch.
        dim: the batch dimension.

    Returns:
        The global tensor (rank order) and the offset of this rank's rows in it.

    """
    rank, size = world()
    if size == 1:
        return x, 0
    if x.requires_grad:
        gathered = _GatherRows.apply(x, dim)
    else:
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        gathered = torch.cat(parts, dim=dim)
    return gathered, rank * x.shape[dim]


def maybe_gather(x: Tensor, enabled: bool, dim: int = 0) -> tuple[Tensor, int]:
    """``gather_rows(x, dim)`` when ``enabled``, else ``(x, 0)``."""
    return gather_rows(x, dim) if enabled else (x, 0)
