"""Random-resized crops with horizontal flips on a batch of images, in one ``grid_sample`` call.

Used by the augmented linear probe: each image gets its own crop box (area share drawn from
``scale``, aspect ratio log-uniform in 3/4..4/3, position uniform) resampled bilinearly to the
input size, and is mirrored with probability 1/2. Runs on whatever device the batch is on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_boxes(
    n: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """``[n, 4]`` crop boxes ``(cx, cy, w, h)`` in units of the image side (centre in [0, 1]).

    Width and height never exceed the image; the box always lies inside it.
    """
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = w / 2 + torch.rand(n, generator=generator) * (1 - w)
    cy = h / 2 + torch.rand(n, generator=generator) * (1 - h)
    return torch.stack([cx, cy, w, h], dim=1)


def random_resized_crop_flip(
    images: Tensor, scale: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """Crop, resize back to the input size and randomly mirror each image of ``images``.

    Args:
        images: float ``[B, C, H, W]``.
        scale: range of the crop's share of the image area.
        generator: a CPU generator (seeded by the caller for reproducible crops).

    Returns:
        Float ``[B, C, H, W]`` on the same device.
    """
    b = images.shape[0]
    box = crop_boxes(b, scale, generator)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = box[:, 2] * flip  # x scale (negative: mirrored)
    theta[:, 0, 2] = 2 * box[:, 0] - 1  # x centre in [-1, 1]
    theta[:, 1, 1] = box[:, 3]
    theta[:, 1, 2] = 2 * box[:, 1] - 1
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
