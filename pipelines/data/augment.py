"""Multi-view augmentation: the paper's recipes, vectorised over the batch.

Split in two so each part runs where it is cheapest:

* :func:`crop_views` (CPU, inside Ray Data's ``map_batches``): random-resized crops and flips
  of every image, ``V`` times (boxes drawn for the batch at once, uint8 antialiased resampling
  per view), or an evaluation image's resize + centre crop; returns uint8 tensors
  ``[B, V, 3, S, S]``.
* :class:`Photometric` (the training device): colour jitter in a random order per image,
  grayscale, Gaussian blur, solarisation and normalisation, with per-image random parameters.

Recipes (``augment=<name>``, defined in :mod:`pipelines.data.recipes`; the paper's and the official
code's augmentations):

* ``cifar``: RRC 32 px, scale (0.2, 1), flip, ColorJitter(0.4, 0.4, 0.4, 0.4) always,
  grayscale 0.2 (the official small-scale code; K + 1 identical draws).
* ``stl10``: the same at 64 px, scale (0.08, 1).
* ``imagenet_moco_v2``: RRC 224, scale (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) with p 0.8,
  grayscale 0.2, blur sigma in [0.1, 2] with p 0.5, flip.
* ``imagenet_moco_v3``: two asymmetric global views (RRC 224 scale (0.08, 1), jitter
  (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2; blur p 1.0 / p 0.1 and solarise p 0 / 0.2) plus
  optional local crops (RRC 96, scale (0.05, 0.4), resized bicubically as in the original, jitter
  p 0.8, grayscale 0.2, blur p 0.5).

Evaluation images get one view without randomness: torchvision's ``Resize`` + ``CenterCrop``
(:func:`pipelines.data.recipes.eval_view`; 32 -> 32 for CIFAR, 70 -> 64 for STL-10, 256 -> 224 for
ImageNet, as the official test transforms).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.data.recipes import GREY, ViewRecipe

# ------------------------------------------------------------------ geometry (CPU, uint8)


def crop_boxes(
    heights: np.ndarray,
    widths: np.ndarray,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Torchvision's RandomResizedCrop box sampling, vectorised: ``[N, 4]`` (x1, y1, x2, y2).

    Ten attempts per image at once (area share from ``scale``, aspect ratio log-uniform in
    ``ratio``); the first that fits wins, else a centre crop with the aspect ratio clamped to
    ``ratio``.
    """
    n, tries = len(heights), 10
    area = (heights * widths)[:, None] * rng.uniform(*scale, size=(n, tries))
    log_r = np.log(ratio)
    aspect = np.exp(rng.uniform(log_r[0], log_r[1], size=(n, tries)))
    w = np.rint(np.sqrt(area * aspect))
    h = np.rint(np.sqrt(area / aspect))
    ok = (w > 0) & (h > 0) & (w <= widths[:, None]) & (h <= heights[:, None])
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(n), first]
    w, h = w[np.arange(n), first], h[np.arange(n), first]
    # fallback: the whole image, ratio clamped
    in_ratio = widths / heights
    fw = np.where(
        in_ratio < ratio[0],
        widths,
        np.where(in_ratio > ratio[1], np.rint(heights * ratio[1]), widths),
    )
    fh = np.where(in_ratio < ratio[0], np.rint(widths / ratio[0]), heights)
    w, h = np.where(found, w, fw), np.where(found, h, fh)
    y = np.where(found, np.floor(rng.uniform(size=n) * (heights - h + 1)), (heights - h) // 2)
    x = np.where(found, np.floor(rng.uniform(size=n) * (widths - w + 1)), (widths - w) // 2)
    return np.stack([x, y, x + w, y + h], axis=1).astype(np.float32)


def crop_views(
    images: list[np.ndarray] | np.ndarray,
    recipes: list[ViewRecipe],
    rng: np.random.Generator,
) -> dict[str, Tensor]:
    """Random-resized crops and flips of every image for every recipe (evaluation ones: :func:`centre_view`).

    The boxes and flips of the whole batch are drawn at once (:func:`crop_boxes`); each view is
    then resampled with torch's uint8 antialiased kernel of its recipe's ``interpolation``
    (bilinear; bicubic for MoCo-v3's local crops), which is what
    ``torchvision.transforms.v2.functional.resized_crop(..., antialias=True)`` computes on a
    uint8 tensor (a test holds them equal). There is no batched op for crops of different sizes:
    ``roi_align`` over a padded float batch was measured 11x slower on 500x375 photos (24.9 vs
    2.0 ms per image for 5 views of 224 px; 0.22 vs 0.19 ms for CIFAR), so the loop is per view.

    Args:
        images: ``[B, H, W, 3]`` uint8, or a list of ``[H_i, W_i, 3]`` uint8 arrays.
        recipes: one per view; views of equal size are stacked together.
        rng: the random generator (seed it per epoch and worker).

    Returns:
        ``{"views": uint8 [B, V, 3, S, S]}`` for the views of the first recipe's size and, when
        other sizes exist (local crops), ``{"local_views": uint8 [B, L, 3, s, s]}``.
    """
    arrays = list(images)
    B = len(arrays)
    out, slots = _outputs(B, recipes)
    if B == 0:  # e.g. a batch whose images were all bad: same keys, zero rows
        return out
    heights = np.array([a.shape[0] for a in arrays], dtype=np.float64)
    widths = np.array([a.shape[1] for a in arrays], dtype=np.float64)
    boxes = [
        None
        if r.resize is not None
        else crop_boxes(heights, widths, r.scale, r.ratio, rng).astype(np.int64).tolist()
        for r in recipes
    ]  # per view; evaluation views draw nothing
    flips = [None if r.resize is not None else (rng.uniform(size=B) < r.flip).tolist() for r in recipes]
    for i, a in enumerate(arrays):
        image = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0)  # channels-last
        for v, r in enumerate(recipes):
            key, j = slots[v]
            if r.resize is not None:
                out[key][i, j] = centre_view(image, r.resize, r.size, r.interpolation)
            else:
                out[key][i, j] = resized_crop(image, boxes[v][i], r.size, flips[v][i], r.interpolation)
    return out


def resized_crop(
    image: Tensor, box: list[int], size: int, flip: bool, interpolation: str = "bilinear"
) -> Tensor:
    """The ``(x1, y1, x2, y2)`` box of a uint8 ``[1, 3, H, W]`` image at ``size`` px, mirrored if asked.

    ``interpolation`` is ``bilinear`` or ``bicubic``, antialiased either way.
    """
    x1, y1, x2, y2 = box
    crop = image[:, :, y1:y2, x1:x2]
    if (y2 - y1, x2 - x1) != (size, size):
        crop = F.interpolate(crop, size=(size, size), mode=interpolation, antialias=True, align_corners=False)
    return (crop.flip(-1) if flip else crop)[0]


MAX_CENTRE_ASPECT = 16  # longest side / shortest side a centre view resizes whole


def centre_view(image: Tensor, resize: int, size: int, interpolation: str = "bilinear") -> Tensor:
    """``Resize(resize)`` then ``CenterCrop(size)`` of a uint8 ``[1, 3, H, W]`` image, as torchvision's.

    The shorter side becomes ``resize`` and the longer ``int(resize * long / short)``; the crop's
    corner is ``round((side - size) / 2)`` (torchvision's rounding, so a test holds them equal).
    ``size <= resize``. An image longer than ``MAX_CENTRE_ASPECT`` times its width (a banner, a
    1-pixel spacer) first loses the ends of its long side down to that ratio: the crop comes from
    the middle either way, and resizing the whole of a 1 x 20,000 strip would take gigabytes.
    """
    height, width = image.shape[-2:]
    if max(height, width) > MAX_CENTRE_ASPECT * min(height, width):
        keep = MAX_CENTRE_ASPECT * min(height, width)
        if height > width:
            image = image[..., (height - keep) // 2 : (height - keep) // 2 + keep, :]
        else:
            image = image[..., (width - keep) // 2 : (width - keep) // 2 + keep]
        height, width = image.shape[-2:]
    if height <= width:
        new_h, new_w = resize, int(resize * width / height)
    else:
        new_h, new_w = int(resize * height / width), resize
    if (new_h, new_w) != (height, width):
        image = F.interpolate(
            image, size=(new_h, new_w), mode=interpolation, antialias=True, align_corners=False
        )
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return image[0, :, top : top + size, left : left + size]


def _outputs(B: int, recipes: list[ViewRecipe]) -> tuple[dict[str, Tensor], list[tuple[str, int]]]:
    """Empty outputs for ``B`` images and, per recipe, where its view goes: ``(key, index)``.

    Views of the first recipe's size go to ``views`` ``[B, V, 3, S, S]``, the others (local crops)
    to ``local_views`` ``[B, L, 3, s, s]``; each crop is written straight into its slot, so no
    stacking copy follows.
    """
    groups: dict[str, list[int]] = {}
    slots = []
    for r in recipes:
        key = "views" if r.size == recipes[0].size else "local_views"
        groups.setdefault(key, []).append(r.size)
        slots.append((key, len(groups[key]) - 1))
    out = {
        key: torch.empty(B, len(sizes), 3, sizes[0], sizes[0], dtype=torch.uint8)
        for key, sizes in groups.items()
    }
    return out, slots


# ------------------------------------------------------------------ photometry (device, float)


def grey(x: Tensor) -> Tensor:
    """Luma ``[N, 1, H, W]`` of RGB ``[N, 3, H, W]`` in [0, 1]."""
    w = torch.tensor(GREY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """``factor * a + (1 - factor) * b`` clamped to [0, 1], with a per-image ``factor``."""
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp_(0, 1)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    """Scale intensities by ``f`` (per image)."""
    return blend(x, torch.zeros_like(x), f)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    """Blend with the image's mean grey level."""
    return blend(x, grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    """Blend with the image's grayscale version."""
    return blend(x, grey(x).expand_as(x), f)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` (a fraction of the colour circle, per image) in HSV space."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)  # elementwise: 3x faster than x.max(1) on NCHW
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    s = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    h6 = ((h + shift.view(-1, 1, 1)) % 1.0).unsqueeze(1) * 6  # [N, 1, H, W], in [0, 6)
    # HSV -> RGB without branches: channel c = v - v s clamp(min(k, 4 - k), 0, 1) with
    # k = (n_c + 6 h) mod 6 and n = (5, 3, 1) for (R, G, B); the same values as the six-sector table
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) + h6) % 6
    v = maxc.unsqueeze(1)
    return v - (v * s.unsqueeze(1)) * torch.minimum(k, 4 - k).clamp_(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-image sigma (kernel radius ``ceil(3 * max sigma)``)."""
    n, c, H, W = x.shape
    radius = max(math.ceil(3 * float(sigma.max())), 1)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, k]
    flat = x.reshape(1, n * c, H, W)
    pad = min(radius, H - 1, W - 1)
    flat = F.pad(flat, (pad, pad, pad, pad), mode="reflect") if pad > 0 else flat
    if pad < radius:
        flat = F.pad(flat, (radius - pad,) * 4, mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    return flat.view(n, c, H, W)


class Photometric(torch.nn.Module):
    """The photometric part of each view's recipe plus normalisation, on the training device."""

    def __init__(self, recipes: list[ViewRecipe], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Build it.

        Args:
            recipes: one per view, in the order of the ``views`` (then ``local_views``) tensor.
            mean: per-channel mean for normalisation.
            std: per-channel standard deviation.
        """
        super().__init__()
        self.recipes = list(recipes)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def view(self, x: Tensor, recipe: ViewRecipe, gen: torch.Generator) -> Tensor:
        """Augment one view: uint8 ``[N, 3, H, W]`` -> normalised float ``[N, 3, H, W]``."""
        x = x.float().div_(255)
        n = x.shape[0]

        def draw(p: float) -> Tensor:
            return torch.rand(n, generator=gen, device=x.device) < p

        def uniform(lo: float, hi: float) -> Tensor:
            return torch.rand(n, generator=gen, device=x.device) * (hi - lo) + lo

        b, c, s, h = recipe.jitter
        apply = draw(recipe.jitter_p)
        factors = [
            uniform(max(0.0, 1 - b), 1 + b),
            uniform(max(0.0, 1 - c), 1 + c),
            uniform(max(0.0, 1 - s), 1 + s),
            uniform(-h, h),
        ]
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        order = torch.argsort(torch.rand(n, 4, generator=gen, device=x.device), dim=1)
        for slot in range(4):
            for k, op in enumerate(ops):
                sel = torch.nonzero(apply & (order[:, slot] == k)).flatten()
                if len(sel):
                    x[sel] = op(x[sel], factors[k][sel])
        gray = draw(recipe.grayscale_p).view(-1, 1, 1, 1)
        x = torch.where(gray, grey(x).expand_as(x), x)
        if recipe.blur_p > 0:
            sel = torch.nonzero(draw(recipe.blur_p)).flatten()
            if len(sel):
                x[sel] = gaussian_blur(x[sel], uniform(*recipe.blur_sigma)[sel])
        if recipe.solarize_p > 0:
            sol = draw(recipe.solarize_p).view(-1, 1, 1, 1)
            x = torch.where(sol & (x >= 128 / 255), 1 - x, x)
        return (x - self.mean) / self.std

    def forward(
        self, views: Tensor, gen: torch.Generator, local_views: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Augment ``views`` ``[B, V, 3, S, S]`` (and ``local_views``).

        Views that share a recipe (all ``K + 1`` of the CIFAR and MoCo-v2 recipes, MoCo-v3's local
        crops) are augmented together as one ``[B * n, 3, S, S]`` batch: every image still draws its
        own parameters, but the per-op cost is paid once per recipe instead of once per view
        (5 views of 64 CIFAR images: 0.73x the time on one CPU thread, ``benchmarks/train_step.py``).
        """
        V = views.shape[1]
        out = self._grouped(views, self.recipes[:V], gen)
        local = None
        if local_views is not None:
            local = self._grouped(local_views, self.recipes[V : V + local_views.shape[1]], gen)
        return out, local

    def _grouped(self, views: Tensor, recipes: list[ViewRecipe], gen: torch.Generator) -> Tensor:
        """``views`` ``[B, V, 3, S, S]`` augmented with one :meth:`view` call per distinct recipe."""
        B, V = views.shape[:2]
        out: Tensor | None = None
        for recipe in dict.fromkeys(recipes):  # distinct recipes, in order of first use
            idx = [v for v in range(V) if recipes[v] == recipe]
            chosen = views if len(idx) == V else views[:, idx]  # all views: no copy
            batch = chosen.reshape(B * len(idx), *views.shape[2:])
            done = self.view(batch, recipe, gen).view(B, len(idx), *views.shape[2:])
            if len(idx) == V:
                return done
            if out is None:
                out = torch.empty(views.shape, dtype=done.dtype, device=done.device)
            out[:, idx] = done
        assert out is not None
        return out
