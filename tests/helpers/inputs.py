"""Random inputs of the right layout for each objective (shared by the tests)."""

from __future__ import annotations

import torch
from torch import Tensor

VIEW_INPUT = {"cacr_inbatch", "infonce_inbatch", "align_uniform_inbatch", "hard_negative_inbatch"}
QUEUE_INPUT = {"infonce_queue", "align_uniform_queue"}
TWO_VIEW = {"infonce_inbatch", "align_uniform_inbatch", "hard_negative_inbatch"}


def make_inputs(
    name: str,
    *,
    V: int = 3,
    B: int = 5,
    D: int = 6,
    Q: int = 7,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    grad: bool = True,
) -> list[Tensor]:
    """Un-normalised ``q``/``views``/``k`` (the objectives normalise) and a unit-row queue."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(grad)

    def queue() -> Tensor:  # a buffer of momentum keys: never requires grad
        x = torch.randn(Q, D, generator=g, dtype=torch.float64)
        return (x / x.norm(dim=-1, keepdim=True)).to(dtype)

    if name in TWO_VIEW:
        return [rand(2, B, D)]
    if name in VIEW_INPUT:
        return [rand(V, B, D)]
    if name in QUEUE_INPUT:
        return [rand(B, D), rand(B, D), queue()]
    if name == "cacr_moco_v2":
        return [rand(V, B, D), rand(V, B, D), queue()]
    if name == "cacr_moco_v3":
        return [rand(V, B, D), rand(V, B, D)]
    raise KeyError(name)
