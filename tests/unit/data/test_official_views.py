"""Normalisation, evaluation crops and local crops against the official CACR code's transforms.

The official code (JegZheng/CACR-SSL) runs torchvision transforms on PIL images; each test runs
those transforms (or PIL itself) on the same image and compares pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.data import augment as A
from pipelines.data import recipes as R
from tests.unit.data.test_augment import replay_draws

ROOT = Path(__file__).resolve().parents[3]
RNG = np.random.default_rng


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A uint8 ``[h, w, 3]`` image of uniform noise (every pixel differs from its neighbours)."""
    return RNG(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def chw(a: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` uint8 tensor."""
    return torch.from_numpy(np.array(a)).permute(2, 0, 1).contiguous()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int((a.int() - b.int()).abs().max())


# ------------------------------------------------------------------ normalisation

OFFICIAL_MEAN_STD = {
    # small_scale_experiments/cifar10/main_ours.py:86-89 (and linear_eval.py)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # small_scale_experiments/cifar100/main_ours.py:89-92 (and linear_eval.py)
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    # small_scale_experiments/stl10/main_ours.py:87-90 (and linear_eval.py)
    "stl10": (
        (0.44087801806139126, 0.42790631331699347, 0.3867879370752931),
        (0.26826768628079806, 0.2610450402318512, 0.26866836876860795),
    ),
    # imagenet_pretraining/main_pretrain.py:278-279, main_lincls.py:269-270
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_MEAN_STD))
def test_each_named_normalisation_is_the_official_codes(name):
    assert R.MEAN_STD[name] == OFFICIAL_MEAN_STD[name]


def test_cifar10_exact_is_the_pixel_std_and_the_official_std_the_mean_per_image_std():
    """On the bundled sample of real CIFAR-10 training images: ``cifar10_exact`` is the pixel
    standard deviation over the split, the official (0.2023, 0.1994, 0.2010) the mean of each
    image's own standard deviation (so the official values are not a typo of the exact ones)."""
    table = pq.read_table(ROOT / "data/cifar10-sample/train-00000-of-00001.parquet", columns=["image"])
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table["image"].to_pylist()])
    x = x.astype(np.float64) / 255
    pixel_std, per_image_std = x.std(axis=(0, 1, 2)), x.std(axis=(1, 2)).mean(axis=0)
    mean, exact_std = R.MEAN_STD["cifar10_exact"]
    assert mean == R.MEAN_STD["cifar10"][0]
    np.testing.assert_allclose(exact_std, pixel_std, atol=0.003)  # the sample is JPEG: not exact
    np.testing.assert_allclose(R.MEAN_STD["cifar10"][1], per_image_std, atol=0.003)
    assert np.abs(np.subtract(exact_std, R.MEAN_STD["cifar10"][1])).min() > 0.04


# ------------------------------------------------------------------ evaluation crops


@pytest.mark.parametrize(
    ("recipe", "size", "resize"),
    [
        ("cifar", 32, 32),  # small_scale_experiments/cifar10/linear_eval.py:57-58
        ("stl10", 64, 70),  # small_scale_experiments/stl10/linear_eval.py:57-58
        ("imagenet_moco_v2", 224, 256),  # large_scale_shift_experiments/imagenet/main_lincls.py:345-346
        ("imagenet_moco_v3", 224, 256),  # imagenet_pretraining/main_lincls.py:292-293
    ],
)
def test_each_recipes_evaluation_view_is_the_official_resize_and_centre_crop(recipe, size, resize):
    view = R.eval_view_for({"name": recipe}, {})
    assert (view.size, view.resize, view.flip, view.interpolation) == (size, resize, 0.0, "bilinear")


def test_eval_centre_crop_overrides_the_recipes_share_and_follows_augment_size():
    assert R.eval_view_for({"name": "imagenet_moco_v2"}, {"centre_crop": 1.0}).resize == 224
    assert R.eval_view_for({"name": "cifar"}, {"centre_crop": 0.5}).resize == 64
    assert R.eval_view_for({"name": "imagenet_moco_v2", "size": 112}, {}).resize == 128  # 112 / 0.875
    with pytest.raises(ValueError, match=r"eval\.centre_crop"):
        R.eval_view_for({"name": "cifar"}, {"centre_crop": 1.5})


def _official_eval(photo: np.ndarray, resize: int, size: int) -> torch.Tensor:
    """The official test transform (``Resize(resize)``, ``CenterCrop(size)``) on a PIL image."""
    import torchvision.transforms as T

    pil = T.Compose([T.Resize(resize), T.CenterCrop(size)])(Image.fromarray(photo))
    return chw(np.asarray(pil))


@pytest.mark.parametrize(
    ("recipe", "shape", "resize", "size"),
    [
        ("imagenet_moco_v2", (375, 500), 256, 224),  # landscape: the width becomes int(256 * 500 / 375)
        ("imagenet_moco_v3", (500, 333), 256, 224),  # portrait, odd margins
        ("imagenet_moco_v2", (240, 320), 256, 224),  # upsampled: the shorter side 240 < 256
        ("stl10", (96, 96), 70, 64),
        ("cifar", (32, 32), 32, 32),
    ],
)
def test_evaluation_views_equal_torchvision_resize_then_centre_crop(recipe, shape, resize, size):
    """Our evaluation view of a non-square noise image is torchvision's ``Resize`` + ``CenterCrop``:
    within 1 grey level of it on a PIL image (the official code's path; PIL's and torch's
    antialiased bilinear kernels round differently) and equal to it on a uint8 tensor."""
    import torchvision.transforms.v2 as T2

    view = R.eval_view_for({"name": recipe}, {})
    photo = noise(*shape, seed=sum(shape))
    ours = A.crop_views([photo], [view], RNG(0))["views"][0, 0]
    assert max_diff(ours, _official_eval(photo, resize, size)) <= 1
    tensor_path = T2.Compose([T2.Resize(resize, antialias=True), T2.CenterCrop(size)])(chw(photo))
    assert torch.equal(ours, tensor_path)
    if shape == (32, 32):
        assert torch.equal(ours, chw(photo))  # CIFAR: Resize(32) + CenterCrop(32) is the identity


def _smooth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    planes = (128 + 100 * np.sin(x / 37 + y / 5), 128 + 100 * np.cos(x / 53), x * 255 // max(w - 1, 1))
    return np.stack(planes, -1).astype(np.uint8)


@pytest.mark.parametrize(
    ("shape", "within"), [((20, 2000), 0), ((2000, 20), 0), ((1, 3000), 0), ((33, 1999), 3)]
)
def test_a_banner_keeps_torchvisions_centre_view_without_resizing_its_whole_length(shape, within):
    """A 1 x 2,000 strip took 0.9 s and 800 MB (resized whole to 256 x 512,000 before the crop).

    Its ends are cut to 16 x its short side first; the view is torchvision's Resize + CenterCrop
    of the whole strip (equal where the scales line up, within a few grey levels otherwise).
    """
    import torchvision.transforms.v2 as T2

    strip = chw(_smooth(*shape))
    ours = A.centre_view(strip[None], 256, 224)
    assert max_diff(ours, T2.Compose([T2.Resize(256, antialias=True), T2.CenterCrop(224)])(strip)) <= within
    huge = torch.zeros(1, 3, 1, 200_000, dtype=torch.uint8)  # whole: 256 x 51,200,000 x 3 values
    assert A.centre_view(huge, 256, 224).shape == (3, 224, 224)


def test_evaluation_views_are_not_the_whole_centre_square_any_more():
    """The view before this change (the whole centre square resized to 224) is far from the official one."""
    photo = noise(375, 500, seed=1)
    square = chw(np.asarray(Image.fromarray(photo[:, 62:437]).resize((224, 224), Image.BILINEAR)))
    ours = A.crop_views([photo], [R.eval_view_for({"name": "imagenet_moco_v2"}, {})], RNG(0))["views"][0, 0]
    assert max_diff(ours, square) > 50


# ------------------------------------------------------------------ local crops


def test_local_crops_are_resized_bicubically_as_the_official_code_does():
    """MoCo-v3's local crops (imagenet_pretraining/main_pretrain.py:317, RandomResizedCrop(96, ...,
    interpolation=Image.BICUBIC)) equal torchvision's antialiased bicubic ``resized_crop`` of the same
    box, are within 1 grey level of PIL's bicubic resize of it, and differ from the bilinear one."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    photos = [noise(375, 500, seed=3), noise(500, 375, seed=4)]
    recipes = R.view_recipes("imagenet_moco_v3", 2, local_crops=2)
    out = A.crop_views(photos, recipes, RNG(5))
    boxes, flips = replay_draws(photos, recipes, 5)
    for v in (2, 3):
        for i, photo in enumerate(photos):
            x1, y1, x2, y2 = (int(c) for c in boxes[v][i])
            got = out["local_views"][i, v - 2]
            got = got.flip(-1) if flips[v][i] else got
            bicubic = TF.resized_crop(
                chw(photo), y1, x1, y2 - y1, x2 - x1, [96, 96], InterpolationMode.BICUBIC, antialias=True
            )
            bilinear = TF.resized_crop(chw(photo), y1, x1, y2 - y1, x2 - x1, [96, 96], antialias=True)
            pil = Image.fromarray(photo).crop((x1, y1, x2, y2)).resize((96, 96), Image.BICUBIC)
            assert torch.equal(got, bicubic), (v, i)
            assert max_diff(got, chw(np.asarray(pil))) <= 1
            assert max_diff(got, bilinear) > 10
    assert R.MOCOV3_1.interpolation == R.MOCOV3_2.interpolation == "bilinear"  # the global views
