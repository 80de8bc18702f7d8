"""The paper's view recipes and per-batch seeds, without torch.

Kept apart from :mod:`pipelines.data.augment` (which needs torch) because the recipes travel
inside the Ray Data pipeline's plan: every process that unpickles that plan (Ray Train's
``DatasetManager`` and ``SplitCoordinator``, one of each per run or Tune trial) imports this
module, and importing torch costs each of them ~1.6 CPU-seconds it never uses. The recipes
themselves are documented in :mod:`pipelines.data.augment`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4409, 0.4279, 0.3868), (0.2683, 0.2610, 0.2687)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation.

    Attributes:
        size: output side in pixels.
        scale: random-resized-crop area range (fraction of the image).
        ratio: aspect-ratio range.
        flip: probability of a horizontal flip.
        jitter: ColorJitter strengths (brightness, contrast, saturation, hue).
        jitter_p: probability of applying the jitter.
        grayscale_p: probability of grayscale.
        blur_p: probability of Gaussian blur.
        blur_sigma: blur sigma range.
        solarize_p: probability of solarisation (threshold 128/255).
    """

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.4)
    jitter_p: float = 1.0
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


CIFAR = ViewRecipe(32, (0.2, 1.0))
STL10 = ViewRecipe(64, (0.08, 1.0))
MOCOV2 = ViewRecipe(224, (0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, blur_p=0.5)
MOCOV3_1 = ViewRecipe(224, (0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, blur_p=1.0)
MOCOV3_2 = replace(MOCOV3_1, blur_p=0.1, solarize_p=0.2)
MOCOV3_LOCAL = ViewRecipe(96, (0.05, 0.4), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, blur_p=0.5)
RECIPES = ("cifar", "stl10", "imagenet_moco_v2", "imagenet_moco_v3")


def view_recipes(
    name: str, num_views: int, local_crops: int = 0, crop_min: float | None = None, size: int | None = None
) -> list[ViewRecipe]:
    """The per-view recipes of augmentation ``name`` for ``num_views`` (= K + 1) views.

    Args:
        name: one of ``RECIPES``.
        num_views: the number of (global) views, ``>= 2``.
        local_crops: extra 96-px local crops (``imagenet_moco_v3`` only).
        crop_min: the smallest crop area of the global views (``augment.crop_min``; default: the
            recipe's own, e.g. MoCo-v3 ResNet-50 uses 0.2, ViT 0.08).
        size: the global views' side (``augment.size``; default: the recipe's own, e.g. 224);
            local crops keep their share of it (96/224).

    Raises:
        ValueError: for an unknown name or an impossible combination.
    """
    if name not in RECIPES:
        raise ValueError(f"augment.name must be one of {', '.join(RECIPES)}; got {name!r}")
    if num_views < 2:
        raise ValueError(f"need at least 2 views (K >= 1); got {num_views}")
    if local_crops and name != "imagenet_moco_v3":
        raise ValueError("augment.local_crops is only defined for imagenet_moco_v3")
    if crop_min is not None and not 0 < crop_min <= 1:
        raise ValueError(f"augment.crop_min must be in (0, 1]; got {crop_min}")
    if size is not None and not (isinstance(size, int) and size >= 8):
        raise ValueError(f"augment.size must be an integer >= 8 (pixels), or null; got {size!r}")

    def sized(r: ViewRecipe) -> ViewRecipe:
        r = r if crop_min is None else replace(r, scale=(float(crop_min), r.scale[1]))
        return r if size is None else replace(r, size=int(size))

    if name == "imagenet_moco_v3":
        if num_views != 2:
            raise ValueError("imagenet_moco_v3 has exactly 2 global views (add local crops instead)")
        local = MOCOV3_LOCAL if size is None else replace(MOCOV3_LOCAL, size=max(8, round(size * 96 / 224)))
        return [sized(MOCOV3_1), sized(MOCOV3_2)] + [local] * local_crops
    base = {"cifar": CIFAR, "stl10": STL10, "imagenet_moco_v2": MOCOV2}[name]
    return [sized(base)] * num_views


def seed_for(seed: int, epoch: int, *parts: object) -> int:
    """A 63-bit seed from the run seed, the epoch and anything that names the batch or worker."""
    mix = np.random.SeedSequence([seed, epoch, *[zlib.crc32(str(p).encode()) for p in parts]])
    return int(mix.generate_state(1, dtype=np.uint64)[0] >> 1)


def recipes_for(augment: dict[str, Any], num_views: int) -> list[ViewRecipe]:
    """The view recipes of the ``augment`` config group for ``num_views`` global views."""
    crop_min = augment.get("crop_min")
    return view_recipes(
        augment["name"],
        num_views,
        int(augment.get("local_crops") or 0),
        None if crop_min is None else float(crop_min),
        augment.get("size"),
    )
