"""Projector and predictor heads: a stack of Linear layers with optional BatchNorm.

One builder covers the heads of the frameworks:

* small-scale projector (CACR / Wang & Isola): ``build_mlp(4096, 0, 128, 1, batch_norm=False)``;
* MoCo-v2 ``--mlp`` head: ``build_mlp(2048, 2048, 128, 2, batch_norm=False)``;
* MoCo-v3 ResNet projector: ``build_mlp(2048, 4096, 256, 2, last_batch_norm=True)``;
* MoCo-v3 ViT projector: the same with ``num_layers=3``;
* MoCo-v3 ResNet predictor: ``build_mlp(256, 4096, 256, 2, output_bias=False)``;
* MoCo-v3 ViT predictor: ``build_mlp(256, 4096, 256, 2, last_batch_norm=True)``.

MoCo-v3's ``_build_mlp`` (``moco/builder.py``) gives every Linear ``bias=False``, ends with an
affine-free BatchNorm unless ``last_bn=False`` (only the ResNet predictor), and ``MoCo_ViT`` keeps
that last BatchNorm on its predictor.
"""

from __future__ import annotations

from torch import nn


def build_mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int,
    *,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    output_bias: bool = True,
) -> nn.Sequential:
    """Build ``num_layers`` Linear layers: hidden ones with BatchNorm and ReLU, then the output layer.

    Each hidden layer is ``Linear(prev, hidden_dim, bias=not batch_norm)``, then
    ``BatchNorm1d(hidden_dim)`` when ``batch_norm``, then ``ReLU``. The output layer is
    ``Linear(prev, out_dim, bias=output_bias and not last_batch_norm)``, then
    ``BatchNorm1d(out_dim, affine=False)`` when ``last_batch_norm``.

    Args:
        in_dim: input feature size.
        hidden_dim: width of the hidden layers (unused when ``num_layers == 1``).
        out_dim: output size.
        num_layers: number of Linear layers, at least 1.
        batch_norm: BatchNorm after each hidden Linear (which then has no bias).
        last_batch_norm: non-affine BatchNorm after the output Linear (which then has no bias).
        output_bias: a bias on the output Linear when no BatchNorm follows it (MoCo-v3: none).

    Returns:
        The head as an ``nn.Sequential``.

    Raises:
        ValueError: if ``num_layers`` is below 1.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers!r}")
    layers: list[nn.Module] = []
    prev = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(prev, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        prev = hidden_dim
    layers.append(nn.Linear(prev, out_dim, bias=output_bias and not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
