"""Worker of the 2-process gloo test (importable by spawned processes, hence not a test module)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import objectives


def local_part(x: torch.Tensor, batch_dim: int | None, rank: int, world: int) -> torch.Tensor:
    """This rank's equal share of ``x`` along ``batch_dim`` (``None``: shared, e.g. a queue)."""
    if batch_dim is None:
        return x.clone()
    return x.chunk(world, dim=batch_dim)[rank].clone()


def run(rank: int, world: int, init_file: str, cases_path: str, out_pattern: str) -> None:
    """Compute every case's loss with ``gather=True`` on this rank's share and save loss and grads."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = []
        for case in torch.load(cases_path):
            inputs = [
                local_part(x, d, rank, world).requires_grad_(d is not None)
                for x, d in zip(case["inputs"], case["batch_dims"], strict=True)
            ]
            out = objectives.build(case["name"], gather=True, **case["hp"])(*inputs)
            out.loss.backward()
            results.append({"loss": out.loss.detach(), "grads": [x.grad for x in inputs]})
        torch.save(results, out_pattern.format(rank=rank))
    finally:
        dist.destroy_process_group()


def run_framework_gathers(rank: int, world: int, init_file: str, cases_path: str, out_pattern: str) -> None:
    """Shuffle-BN keys and the MoCo-v2 queue update on this rank's share; save what they produced."""
    from pipelines.models.build import build_framework
    from pipelines.models.frameworks import _shuffled_keys

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        case = torch.load(cases_path)
        x = local_part(case["x"], 0, rank, world)
        encoder = torch.nn.BatchNorm1d(x.shape[1], affine=False).train()
        torch.manual_seed(case["perm_seed"])  # the permutation is drawn on rank 0 and broadcast
        with torch.no_grad():
            keys = _shuffled_keys(encoder, x)
        fw = build_framework(case["config"], seed=case["framework_seed"])
        fw._pending = local_part(case["pending"], 0, rank, world)
        fw.after_step()
        torch.save(
            {"keys": keys, "queue": fw.queue.clone(), "ptr": int(fw.queue_ptr)}, out_pattern.format(rank=rank)
        )
    finally:
        dist.destroy_process_group()


def spawn(worker: Callable[..., None], world: int, folder: Path, cases: object) -> list[dict]:
    """Save ``cases``, run ``worker`` on ``world`` gloo processes over them; each rank's saved output."""
    torch.save(cases, folder / "cases.pt")
    args = (world, str(folder / "init"), str(folder / "cases.pt"), str(folder / "out{rank}.pt"))
    mp.spawn(worker, args=args, nprocs=world, join=True)
    return [torch.load(folder / f"out{r}.pt") for r in range(world)]
