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

# ``augment.mean_std``: the official code's per-channel statistics (docs/data.md#normalisation).
# The official CIFAR-10 std is the mean of each image's own std; ``cifar10_exact`` is the pixel std.
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar10_exact": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "stl10": (
        (0.44087801806139126, 0.42790631331699347, 0.3867879370752931),
        (0.26826768628079806, 0.2610450402318512, 0.26866836876860795),
    ),
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
        interpolation: the resampling filter, ``bilinear`` or ``bicubic`` (both antialiased).
        resize: set for an evaluation view (:func:`eval_view`): no random crop or flip, but the
            shorter side resized to ``resize`` px and the centre ``size`` x ``size`` kept
            (torchvision's ``Resize(resize)`` + ``CenterCrop(size)``).
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
    interpolation: str = "bilinear"
    resize: int | None = None


CIFAR = ViewRecipe(32, (0.2, 1.0))
STL10 = ViewRecipe(64, (0.08, 1.0))
MOCOV2 = ViewRecipe(224, (0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, blur_p=0.5)
MOCOV3_1 = ViewRecipe(224, (0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, blur_p=1.0)
MOCOV3_2 = replace(MOCOV3_1, blur_p=0.1, solarize_p=0.2)
MOCOV3_LOCAL = ViewRecipe(
    96, (0.05, 0.4), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, blur_p=0.5, interpolation="bicubic"
)
RECIPES = ("cifar", "stl10", "imagenet_moco_v2", "imagenet_moco_v3")
# Evaluation images (kNN bank, probe features, probe test images): the centre crop's side as a share
# of the resized shorter side, as the official test transforms: CIFAR Resize(32) + CenterCrop(32),
# STL-10 Resize(70) + CenterCrop(64), ImageNet Resize(256) + CenterCrop(224). eval.centre_crop overrides.
EVAL_CROP = {"cifar": 1.0, "stl10": 64 / 70, "imagenet_moco_v2": 224 / 256, "imagenet_moco_v3": 224 / 256}


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


def eval_view(size: int, centre_crop: float) -> ViewRecipe:
    """The one view of an evaluation image: ``Resize(round(size / centre_crop))`` + ``CenterCrop(size)``.

    Args:
        size: the view's side in pixels.
        centre_crop: the centre crop's side as a share of the resized shorter side, in (0, 1].

    Raises:
        ValueError: for a share outside (0, 1].
    """
    if not 0 < centre_crop <= 1:
        raise ValueError(f"eval.centre_crop must be in (0, 1] (or null: the recipe's own); got {centre_crop}")
    return ViewRecipe(
        size, (1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, resize=max(size, round(size / centre_crop))
    )


def eval_crop_for(augment: dict[str, Any], eval_cfg: dict[str, Any]) -> float:
    """A run's ``eval.centre_crop``, or when null the share of its ``augment`` recipe (:data:`EVAL_CROP`)."""
    share = eval_cfg.get("centre_crop")
    return EVAL_CROP[augment["name"]] if share is None else float(share)


def eval_view_for(augment: dict[str, Any], eval_cfg: dict[str, Any]) -> ViewRecipe:
    """A run's evaluation view: the side of its global views, cut by :func:`eval_crop_for`.

    Raises:
        ValueError: for a bad ``augment`` group or ``eval.centre_crop``.
    """
    return eval_view(recipes_for(augment, 2)[0].size, eval_crop_for(augment, eval_cfg))


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
