"""Optimisers of the paper's settings: SGD (small-scale, MoCo-v2), LARS (MoCo-v3 ResNet), AdamW (ViT)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipelines.core.config_schema import OptimizerConfig, with_defaults


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al.), as MoCo v3 uses it.

    For every parameter with more than one dimension::

        g ← g + wd·p;  g ← g · (η·‖p‖ / ‖g‖)   (when both norms are > 0)

    Biases and normalisation parameters (≤ 1-D) get neither weight decay nor the trust ratio.
    Then ``buf ← μ·buf + g`` and ``p ← p − lr·buf``.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        """Build it (``lr`` is overwritten every step by the schedule)."""
        super().__init__(
            params,
            dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient),
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One update of every parameter with a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    g = g.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.norm(p), torch.norm(g)
                    ratio = torch.where(
                        (p_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * p_norm / g_norm,
                        torch.ones_like(p_norm),
                    )
                    g = g.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(module: nn.Module, spec: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """Build ``trainer.optimizer`` over the trainable parameters of ``module``.

    Args:
        module: the online encoder.
        spec: ``name`` (sgd | lars | adamw), ``momentum``, ``weight_decay``, ``betas`` (adamw);
            keys left out take the schema's defaults.
        lr: the peak learning rate.

    Returns:
        The optimizer.
    """
    spec = with_defaults(OptimizerConfig, spec)
    params = [p for p in module.parameters() if p.requires_grad]
    wd = float(spec["weight_decay"])
    name = spec["name"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(spec["momentum"]), weight_decay=wd)
    if name == "lars":
        return LARS(params, lr=lr, weight_decay=wd, momentum=float(spec["momentum"]))
    if name == "adamw":
        betas = tuple(spec["betas"])
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)  # type: ignore[arg-type]
    raise ValueError(f"trainer.optimizer.name={name!r}: choose sgd, lars or adamw")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
