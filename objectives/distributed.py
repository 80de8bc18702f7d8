"""Gathering in-batch negatives across data-parallel ranks, with gradients.

Under DDP each rank holds ``B`` images of a global batch of ``W * B``. An objective built with
``gather=True`` keeps its anchors local and compares them with the negatives of the whole global
batch. The gather is differentiable (``torch.distributed.nn.functional.all_gather``): in the backward
pass the gradient reaching every gathered row is summed over all ranks and handed back to the
rank that owns the row. Because DDP then
averages parameter gradients over ranks, training sees the gradient of the mean over ranks of
the per-rank losses, which equals the single-process loss on the global batch for every
objective that averages over anchors (see each objective's docstring).

With no process group initialised, or a world of one, gathering is the identity.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor


def world() -> tuple[int, int]:
    """Return ``(rank, world_size)`` of the default process group, or ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
    with warnings.catch_warnings():
        # torch 2.14 marks this public call deprecated in favour of a private module
        # (torch.distributed._functional_collectives); the public one stays until it is removed
        warnings.filterwarnings(
            "ignore", message=".*nn.functional.all_gather is deprecated", category=FutureWarning
        )
        parts = dist_nn.all_gather(x.contiguous())  # backward: summed over ranks, local part kept
    return torch.cat(parts, dim=dim), rank * x.shape[dim]


def maybe_gather(x: Tensor, enabled: bool, dim: int = 0) -> tuple[Tensor, int]:
    """``gather_rows(x, dim)`` when ``enabled``, else ``(x, 0)``."""
    return gather_rows(x, dim) if enabled else (x, 0)
