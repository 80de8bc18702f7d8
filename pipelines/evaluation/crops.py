"""Random-resized crops with horizontal flips on a batch of images, in one ``grid_sample`` call.

Used by the augmented linear probe. Each image's box is drawn exactly as torchvision's
``RandomResizedCrop`` draws it (the pretraining crops' sampler,
:func:`pipelines.data.augment.crop_boxes`), then resampled bilinearly to the input size, and
the image is mirrored with probability 1/2. Runs on whatever device the batch is on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.data.augment import crop_boxes

RATIO = (3 / 4, 4 / 3)


def random_resized_crop_flip(
    images: Tensor, scale: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """Crop, resize back to the input size and randomly mirror each image of ``images``.

    Args:
        images: float ``[B, C, H, W]``.
        scale: range of the crop's share of the image area.
        generator: a CPU generator (seeded by the caller for reproducible crops); the boxes are
            drawn first, from a NumPy generator seeded by one draw of it, then the flips.

    Returns:
        Float ``[B, C, H, W]`` on the same device.
    """
    b, _, height, width = images.shape
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    sides = np.full(b, float(height)), np.full(b, float(width))
    x1, y1, x2, y2 = torch.from_numpy(crop_boxes(sides[0], sides[1], scale, RATIO, rng)).double().T
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = (x2 - x1) / width * flip  # x scale (negative: mirrored)
    theta[:, 0, 2] = (x1 + x2) / width - 1  # x centre in [-1, 1]
    theta[:, 1, 1] = (y2 - y1) / height
    theta[:, 1, 2] = (y1 + y2) / height - 1
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
