"""The three ways of turning a batch of views into the tensors an objective takes.

* :class:`InBatch` — the paper's small-scale setting: one encoder (backbone + projector) encodes
  every view in one pass; negatives are the other images of the (global) batch.
* :class:`MoCoV2` — a query encoder and a momentum key encoder, a queue of keys filled from all
  ranks, shuffle-BN for the keys (implementation B of the spec).
* :class:`MoCoV3` — backbone + projector + predictor, a momentum encoder on a cosine momentum
  schedule, negatives from the keys of the global batch (implementation C).

Every framework takes normalised float views ``[B, V, 3, S, S]`` (plus local crops for MoCo-v3),
returns the objective's ``LossOutput`` and keeps the detached objective inputs of the last
forward in ``last_inputs`` for weight diagnostics. The trainable part is ``self.online``; the
training loop may wrap it (DDP) with :meth:`Framework.use_online`. Queue writes happen in
:meth:`Framework.after_step`, after the backward pass.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from objectives import LossOutput
from objectives.distributed import gather_rows, world

# which objectives each framework can feed, and how many views they take (None: any V >= 2)
COMPATIBLE: dict[str, dict[str, int | None]] = {
    "inbatch": {
        "cacr_inbatch": None,
        "infonce_inbatch": 2,
        "align_uniform_inbatch": 2,
        "hard_negative_inbatch": 2,
    },
    "moco_v2": {"cacr_moco_v2": None, "infonce_queue": 2, "align_uniform_queue": 2},
    "moco_v3": {"cacr_moco_v3": 2},
}


class Framework(nn.Module):
    """Common parts: the online encoder, a way to call it wrapped, and the last objective inputs."""

    def __init__(
        self, online: nn.Module, backbone: nn.Module, objective: nn.Module, per_view: bool = True
    ) -> None:
        """Hold the online encoder (``backbone`` is its first stage) and the objective.

        ``per_view``: encode each view in a pass of its own, so BatchNorm statistics span one
        view of the batch (the official code); else all views in one joint pass (statistics over
        every view; one larger pass, faster on a GPU).
        """
        super().__init__()
        self.per_view = per_view
        self.channels_last = False  # see use_channels_last: every encoder input in that layout
        self.online = online
        self.objective = objective
        self._backbone = [backbone]  # not registered twice: it lives inside ``online``
        self._call_online: Any = None
        self.last_inputs: tuple[Tensor, ...] = ()

    @property
    def backbone(self) -> nn.Module:
        """The online backbone (what is exported and evaluated)."""
        return self._backbone[0]

    def use_channels_last(self) -> None:
        """Lay out every weight channels-last and feed every encoder input that way (4-D batches)."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

    def use_online(self, wrapped: nn.Module) -> None:
        """Route the online encoder's forward through ``wrapped`` (e.g. its DDP wrapper)."""
        self._call_online = wrapped

    def encode(self, x: Tensor) -> Tensor:
        """Run the (possibly wrapped) online encoder."""
        return (self._call_online or self.online)(x)

    def encode_views(self, views: Tensor, encoder: Any = None) -> Tensor:
        """``[B, V, ...]`` -> ``[V, B, D]`` through ``encoder`` (default: online), per view or joint."""
        encoder = encoder or self.encode
        B, V = views.shape[:2]
        if self.per_view:
            return torch.stack([encoder(self._layout(views[:, v])) for v in range(V)])
        return encoder(self._layout(_view_major(views))).view(V, B, -1)

    def _layout(self, images: Tensor) -> Tensor:
        """``images [N, C, H, W]`` in the channels-last layout when asked (it is defined for 4-D only)."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def after_step(self) -> None:
        """Work after the optimizer step (queue writes); nothing by default."""

    def set_progress(self, fraction: float) -> None:
        """Tell the framework how far training is (0..1) for momentum schedules; unused by default."""


def _view_major(views: Tensor) -> Tensor:
    """``[B, V, C, H, W]`` -> ``[V * B, C, H, W]`` with the view index outermost."""
    B, V = views.shape[:2]
    return views.transpose(0, 1).reshape(V * B, *views.shape[2:])


class InBatch(Framework):
    """One encoder, every view encoded in one pass, in-batch negatives."""

    def forward(self, views: Tensor, local_views: Tensor | None = None) -> LossOutput:
        """Encode ``views [B, V, ...]`` and compute the objective on ``[V, B, D]``."""
        z = self.encode_views(views)
        self.last_inputs = (z.detach(),)
        return self.objective(z)


class _Momentum(Framework):
    """A framework with a momentum copy of (part of) the online encoder."""

    def __init__(
        self,
        online: nn.Module,
        backbone: nn.Module,
        objective: nn.Module,
        momentum_part: nn.Module,
        momentum: float,
        per_view: bool = True,
    ) -> None:
        super().__init__(online, backbone, objective, per_view)
        self.momentum_encoder = copy.deepcopy(momentum_part)
        for p in self.momentum_encoder.parameters():
            p.requires_grad_(False)
        self._source = [momentum_part]
        self.base_momentum = float(momentum)
        self.momentum = float(momentum)

    @torch.no_grad()
    def update_momentum_encoder(self) -> None:
        """``θ_k ← m·θ_k + (1 − m)·θ_q`` over parameters; BN statistics stay the key encoder's own."""
        for pk, pq in zip(self.momentum_encoder.parameters(), self._source[0].parameters(), strict=True):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1.0 - self.momentum)


def _shuffled_keys(encoder: nn.Module, x: Tensor) -> Tensor:
    """Encode ``x`` with batch statistics from a random mix of every rank's images (shuffle-BN).

    All ranks gather their inputs, apply one permutation (drawn on rank 0 and broadcast), encode
    their slice of the shuffled global batch, gather the outputs and undo the permutation. With one
    rank this is a plain forward.
    """
    rank, size = world()
    if size == 1:
        return encoder(x)
    n = x.shape[0]
    everyone, _ = gather_rows(x)
    perm = torch.randperm(n * size, device=x.device)
    dist.broadcast(perm, src=0)
    out, _ = gather_rows(encoder(everyone[perm[rank * n : (rank + 1) * n]]))
    unshuffled = torch.empty_like(out)
    unshuffled[perm] = out
    return unshuffled[rank * n : (rank + 1) * n]


class MoCoV2(_Momentum):
    """Query and momentum key encoders (backbone + projector), a queue, shuffle-BN keys."""

    def __init__(
        self,
        online: nn.Module,
        backbone: nn.Module,
        objective: nn.Module,
        *,
        momentum: float,
        queue_size: int,
        dim: int,
        shuffle_bn: bool = True,
        seed: int = 0,
        per_view: bool = True,
    ) -> None:
        """Build it; the queue starts as ``queue_size`` random unit vectors (seeded)."""
        super().__init__(online, backbone, objective, online, momentum, per_view)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim, generator=gen), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.shuffle_bn = shuffle_bn
        self._pending: Tensor | None = None
        self.multi_view = objective.__class__.__name__ == "CACRMoCoV2"

    def forward(self, views: Tensor, local_views: Tensor | None = None) -> LossOutput:
        """Queries of every view, momentum keys of every view, then the objective."""
        q = self.encode_views(views)
        with torch.no_grad():
            self.update_momentum_encoder()
            shuffle = _shuffled_keys if self.shuffle_bn else (lambda enc, t: enc(t))
            k = F.normalize(
                self.encode_views(views, lambda t: shuffle(self.momentum_encoder, t)).float(), dim=-1
            )
        queue = self.queue.clone()
        if self.multi_view:
            self.last_inputs = (q.detach(), k, queue)
            out = self.objective(q, k, queue)
            self._pending = k[-1]  # the official code enqueues the last view's keys
        else:  # two-view baselines: view 0 is the query, view 1 its key
            self.last_inputs = (q[0].detach(), k[1], queue)
            out = self.objective(q[0], k[1], queue)
            self._pending = k[1]
        return out

    @torch.no_grad()
    def after_step(self) -> None:
        """Enqueue the keys of the last forward from every rank (oldest keys are replaced)."""
        if self._pending is None:
            return
        keys = self._pending
        keys, _ = gather_rows(keys)
        n, Q = keys.shape[0], self.queue.shape[0]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % Q
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % Q)
        self._pending = None


class MoCoV3(_Momentum):
    """Backbone + projector + predictor; momentum backbone + projector on a cosine schedule."""

    def __init__(
        self,
        online: nn.Module,
        backbone: nn.Module,
        objective: nn.Module,
        *,
        momentum_part: nn.Module,
        momentum: float,
        cosine: bool = True,
        full_mode: bool = False,
        per_view: bool = True,
    ) -> None:
        """Build it; ``momentum_part`` is the backbone + projector inside ``online``."""
        super().__init__(online, backbone, objective, momentum_part, momentum, per_view)
        self.cosine = cosine
        self.full_mode = full_mode

    def set_progress(self, fraction: float) -> None:
        """``m = 1 − (1 − m₀)·(cos(π·fraction) + 1)/2`` when cosine, else ``m₀``."""
        if self.cosine:
            self.momentum = 1.0 - (1.0 - self.base_momentum) * (math.cos(math.pi * fraction) + 1.0) / 2.0

    def forward(self, views: Tensor, local_views: Tensor | None = None) -> LossOutput:
        """Queries of the 2 global views (and local crops), keys of the global views (all in full mode)."""
        B = views.shape[0]
        q = [self.encode_views(views)]
        if local_views is not None:
            L = local_views.shape[1]
            q.append(self.encode_views(local_views))
        with torch.no_grad():
            self.update_momentum_encoder()
            k = [self.encode_views(views, self.momentum_encoder).float()]
            if local_views is not None:
                if self.full_mode:
                    k.append(self.encode_views(local_views, self.momentum_encoder).float())
                else:  # light mode reads only the global keys; fill the local slots cheaply
                    k.append(k[0][:1].expand(L, B, k[0].shape[-1]))
        q_all, k_all = torch.cat(q), torch.cat(k)
        self.last_inputs = (q_all.detach(), k_all)
        return self.objective(q_all, k_all)
