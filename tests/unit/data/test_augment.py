"""Multi-view augmentation: geometry against exact expectations, photometry against closed forms."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines.data import augment as A
from pipelines.data import recipes as R

RNG = np.random.default_rng


def images(n=8, h=32, w=32, seed=0):
    return RNG(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_shapes_dtype_and_views_differ():
    out = A.crop_views(images(), R.view_recipes("cifar", 5), RNG(1))
    v = out["views"]
    assert v.shape == (8, 5, 3, 32, 32) and v.dtype == torch.uint8 and "local_views" not in out
    for a in range(5):
        for b in range(a + 1, 5):
            assert not torch.equal(v[:, a], v[:, b])


def test_same_seed_same_views_other_seed_other_views():
    r = R.view_recipes("stl10", 3)
    imgs = images(4, 96, 96)
    a = A.crop_views(imgs, r, RNG(7))["views"]
    assert torch.equal(a, A.crop_views(imgs, r, RNG(7))["views"])
    assert not torch.equal(a, A.crop_views(imgs, r, RNG(8))["views"])
    assert a.shape == (4, 3, 3, 64, 64)


def test_seed_for_is_stable_across_processes():
    import subprocess
    import sys

    code = "from pipelines.data.recipes import seed_for; print(seed_for(3, 7, 'train/a.jpg', 256))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": str(h)},
        ).stdout
        for h in (1, 2)
    }
    assert outs == {f"{R.seed_for(3, 7, 'train/a.jpg', 256)}\n"}
    assert R.seed_for(3, 7, "x") != R.seed_for(3, 8, "x")


def test_full_box_without_flip_is_the_identity_and_flip_mirrors():
    imgs = images(3, 20, 20)
    same = R.ViewRecipe(20, (1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)
    out = A.crop_views(imgs, [same, replace(same, flip=1.0)], RNG(0))["views"]
    expected = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    assert torch.equal(out[:, 0], expected)
    assert torch.equal(out[:, 1], expected.flip(-1))


def test_crop_boxes_follow_torchvision_rules():
    recipe = R.ViewRecipe(32, (0.2, 1.0))
    h = np.full(4000, 40.0)
    w = np.full(4000, 60.0)
    boxes = A.crop_boxes(h, w, recipe.scale, recipe.ratio, RNG(3))
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 60).all() and (boxes[:, 3] <= 40).all()
    frac = bw * bh / (40 * 60)
    assert frac.min() >= 0.2 - 0.05 and frac.max() <= 1.0
    assert (bw / bh).min() >= 3 / 4 - 0.1 and (bw / bh).max() <= 4 / 3 + 0.1
    assert frac.std() > 0.1  # really random


def test_fallback_is_a_centre_crop_with_clamped_ratio():
    recipe = R.ViewRecipe(8, (1.0, 1.0), ratio=(1.0, 1.0))
    boxes = A.crop_boxes(np.array([10.0]), np.array([30.0]), recipe.scale, recipe.ratio, RNG(0))
    assert boxes.tolist() == [[10.0, 0.0, 20.0, 10.0]]


def test_variable_size_images_and_local_crops():
    rng = RNG(0)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (64, 40), (33, 33))]
    out = A.crop_views(imgs, R.view_recipes("imagenet_moco_v3", 2, local_crops=3), RNG(1))
    assert out["views"].shape == (3, 2, 3, 224, 224) and out["local_views"].shape == (3, 3, 3, 96, 96)


def test_an_empty_batch_keeps_the_output_layout():
    out = A.crop_views([], R.view_recipes("imagenet_moco_v3", 2, local_crops=2), RNG(0))
    assert out["views"].shape == (0, 2, 3, 224, 224) and out["local_views"].shape == (0, 2, 3, 96, 96)


def replay_draws(photos: list, recipes: list, seed: int) -> tuple[list, list]:
    """The boxes and flips ``crop_views`` drew with ``RNG(seed)``: boxes per recipe, then flips per recipe."""
    rng = RNG(seed)
    h = np.array([p.shape[0] for p in photos], float)
    w = np.array([p.shape[1] for p in photos], float)
    boxes = [A.crop_boxes(h, w, r.scale, r.ratio, rng) for r in recipes]
    return boxes, [rng.uniform(size=len(photos)) < r.flip for r in recipes]


def test_crops_equal_torchvision_resized_crop_of_the_same_boxes():
    """Every view is torchvision's own ``resized_crop`` (uint8, antialiased; bilinear, bicubic for the
    local crops) of the box the batch drew, mirrored when its flip was drawn: photos of two sizes,
    global and local views."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    photos = [images(1, 375, 500, seed=3)[0], images(1, 500, 375, seed=4)[0], images(1, 32, 32, seed=5)[0]]
    recipes = R.view_recipes("imagenet_moco_v3", 2, local_crops=1)
    out = A.crop_views(photos, recipes, RNG(11))
    boxes, flips = replay_draws(photos, recipes, 11)
    got = [out["views"][:, 0], out["views"][:, 1], out["local_views"][:, 0]]
    mirrored = 0
    for v, r in enumerate(recipes):
        for i, p in enumerate(photos):
            x1, y1, x2, y2 = boxes[v][i].astype(int)
            ref = TF.resized_crop(
                torch.from_numpy(p).permute(2, 0, 1).contiguous(),
                int(y1),
                int(x1),
                int(y2 - y1),
                int(x2 - x1),
                [r.size, r.size],
                InterpolationMode(r.interpolation),
                antialias=True,
            )
            if flips[v][i]:
                ref, mirrored = ref.flip(-1), mirrored + 1
            assert torch.equal(got[v][i], ref), (v, i)
    assert 0 < mirrored < len(recipes) * len(photos)  # both branches were checked


@pytest.mark.parametrize(
    "name,views,local,match",
    [
        ("simclr", 2, 0, "augment.name must be one of"),
        ("cifar", 1, 0, "at least 2 views"),
        ("cifar", 2, 2, "only defined for imagenet_moco_v3"),
        ("imagenet_moco_v3", 5, 0, "exactly 2 global views"),
    ],
)
def test_bad_recipe_requests(name, views, local, match):
    with pytest.raises(ValueError, match=match):
        R.view_recipes(name, views, local)


def test_recipes_match_the_spec():
    assert R.view_recipes("cifar", 5) == [R.CIFAR] * 5 and R.CIFAR.jitter_p == 1.0
    assert (R.STL10.size, R.STL10.scale) == (64, (0.08, 1.0))
    assert (R.MOCOV2.jitter, R.MOCOV2.jitter_p, R.MOCOV2.blur_p) == ((0.4, 0.4, 0.4, 0.1), 0.8, 0.5)
    v1, v2 = R.view_recipes("imagenet_moco_v3", 2)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)


# ------------------------------------------------------------------ photometry


def rgb(n=4, h=6, w=5, seed=0):
    return torch.from_numpy(RNG(seed).uniform(size=(n, 3, h, w))).float()


def test_brightness_contrast_saturation_closed_forms():
    x = rgb()
    f = torch.tensor([0.5, 1.0, 1.5, 0.0])
    torch.testing.assert_close(A.adjust_brightness(x, f), (x * f.view(-1, 1, 1, 1)).clamp(0, 1))
    g = (x * torch.tensor(R.GREY).view(1, 3, 1, 1)).sum(1, keepdim=True)
    m = g.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(
        A.adjust_contrast(x, f), (f.view(-1, 1, 1, 1) * x + (1 - f.view(-1, 1, 1, 1)) * m).clamp(0, 1)
    )
    sat = A.adjust_saturation(x, torch.zeros(4))
    torch.testing.assert_close(sat, g.expand_as(x))


def test_hue_shift():
    x = rgb()
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(4)), x, atol=1e-6, rtol=0)
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    torch.testing.assert_close(
        A.adjust_hue(red, torch.tensor([1 / 3])).flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0
    )
    grey_px = torch.full((1, 3, 2, 2), 0.3)
    torch.testing.assert_close(A.adjust_hue(grey_px, torch.tensor([0.25])), grey_px)  # no hue to turn


def test_hue_shift_equals_torchvision_on_random_images():
    import torchvision.transforms.v2.functional as TF

    x = rgb(n=40, h=7, w=6, seed=5)
    x[:8] = x[:8].round()  # pure and saturated colours: the sector boundaries
    x[8:12] = x[8:12, :1].expand(-1, 3, -1, -1)  # greys: no hue
    shift = torch.from_numpy(RNG(6).uniform(-0.5, 0.5, size=40)).float()
    expected = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(40)])
    torch.testing.assert_close(A.adjust_hue(x, shift), expected, atol=5e-6, rtol=0)


def test_gaussian_blur_per_image_sigma():
    x = torch.zeros(2, 3, 41, 41)
    x[:, :, 20, 20] = 1.0
    sig = torch.tensor([0.5, 2.0])
    out = A.gaussian_blur(x, sig)
    torch.testing.assert_close(out.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-5, rtol=0)
    coords = torch.arange(41.0) - 20
    var = (out[:, 0, :, 20] / out[:, 0, :, 20].sum(1, keepdim=True) * coords**2).sum(1)
    k = torch.arange(-6.0, 7.0)  # radius ceil(3 * 2.0): the sampled, normalised Gaussian's variance
    weights = torch.exp(-0.5 * (k / sig.view(-1, 1)) ** 2)
    torch.testing.assert_close(var, (weights * k**2).sum(1) / weights.sum(1), rtol=1e-4, atol=1e-5)
    assert var[1] > 3.5 and var[0] < 0.3
    const = torch.full((1, 3, 8, 8), 0.7)
    torch.testing.assert_close(A.gaussian_blur(const, torch.tensor([1.5])), const)


def test_photometric_without_randomness_only_normalises():
    plain = R.ViewRecipe(8, (1, 1), jitter=(0, 0, 0, 0), jitter_p=0.0, grayscale_p=0.0)
    mean, std = R.MEAN_STD["cifar10"]
    views = torch.randint(0, 256, (5, 2, 3, 8, 8), dtype=torch.uint8)
    out, _ = A.Photometric([plain, plain], mean, std)(views, torch.Generator().manual_seed(0))
    expected = (views.float() / 255 - torch.tensor(mean).view(1, 1, 3, 1, 1)) / torch.tensor(std).view(
        1, 1, 3, 1, 1
    )
    torch.testing.assert_close(out, expected)


def test_photometric_probabilities_and_determinism():
    recipe = R.ViewRecipe(8, (1, 1), jitter=(0.4, 0, 0, 0), jitter_p=0.8, grayscale_p=0.2)
    ph = A.Photometric([recipe], (0, 0, 0), (1, 1, 1))
    views = torch.randint(30, 220, (4000, 1, 3, 8, 8), dtype=torch.uint8)
    out, _ = ph(views, torch.Generator().manual_seed(1))
    again, _ = ph(views, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    x = views[:, 0].float() / 255
    changed = ~torch.isclose(out[:, 0], x, atol=1e-6).flatten(1).all(1)
    greyed = (out[:, 0, 0] == out[:, 0, 1]).flatten(1).all(1) & (out[:, 0, 1] == out[:, 0, 2]).flatten(1).all(
        1
    )
    p_change = 1 - (1 - 0.8) * (1 - 0.2)
    assert abs(changed.float().mean().item() - p_change) < 4 * math.sqrt(p_change * (1 - p_change) / 4000)
    assert abs(greyed.float().mean().item() - 0.2) < 4 * math.sqrt(0.16 / 4000)


def test_photometric_gives_each_view_its_own_recipe_and_each_image_its_own_draw():
    # views of one recipe go through in one batch; the others must still get their own recipe
    plain = R.ViewRecipe(4, (1, 1), jitter=(0, 0, 0, 0), jitter_p=0.0, grayscale_p=0.0)
    solar = replace(plain, solarize_p=1.0)
    jitter = replace(plain, jitter=(0.4, 0, 0, 0), jitter_p=1.0)
    views = torch.randint(0, 256, (6, 5, 3, 4, 4), dtype=torch.uint8)
    out, _ = A.Photometric([plain, solar, jitter, plain, jitter], (0, 0, 0), (1, 1, 1))(
        views, torch.Generator().manual_seed(3)
    )
    x = views.double() / 255
    for v in (0, 3):
        torch.testing.assert_close(out[:, v].double(), x[:, v])
    torch.testing.assert_close(out[:, 1].double(), torch.where(x[:, 1] >= 128 / 255, 1 - x[:, 1], x[:, 1]))
    factors = []
    for v in (2, 4):  # brightness: one factor in [0.6, 1.4] per image and view, drawn independently
        bright = x[:, v] > 0.02
        ratio = torch.where(bright, out[:, v].double() / x[:, v].clamp_min(1e-9), torch.nan)
        unclipped = bright & (out[:, v] < 1)
        f = torch.stack([ratio[i][unclipped[i]].median() for i in range(6)])
        assert ((f >= 0.6 - 1e-6) & (f <= 1.4 + 1e-6)).all()
        for i in range(6):
            torch.testing.assert_close(
                ratio[i][unclipped[i]], f[i].expand(int(unclipped[i].sum())), rtol=1e-5, atol=0
            )
        assert len(set(f.tolist())) == 6
        factors.append(f)
    assert (factors[0] != factors[1]).all()  # the two views of one recipe: their own draws


def test_solarize_inverts_bright_pixels_only():
    recipe = R.ViewRecipe(2, (1, 1), jitter=(0, 0, 0, 0), jitter_p=0.0, grayscale_p=0.0, solarize_p=1.0)
    views = torch.tensor([0, 100, 128, 255], dtype=torch.uint8).view(1, 1, 1, 2, 2).expand(1, 1, 3, 2, 2)
    out, _ = A.Photometric([recipe], (0, 0, 0), (1, 1, 1))(views.contiguous(), torch.Generator())
    torch.testing.assert_close(out[0, 0, 0].flatten(), torch.tensor([0, 100 / 255, 1 - 128 / 255, 0.0]))


def test_augment_size_sets_the_global_views_and_scales_the_local_crops():
    r = R.view_recipes("imagenet_moco_v3", 2, local_crops=2, size=64)
    assert [x.size for x in r] == [64, 64, 27, 27]  # 96/224 of 64 is 27.4
    assert r[0].scale == R.MOCOV3_1.scale and r[1].solarize_p == R.MOCOV3_2.solarize_p  # only the size
    out = A.crop_views(images(3, 80, 100), r, RNG(0))
    assert out["views"].shape == (3, 2, 3, 64, 64) and out["local_views"].shape == (3, 2, 3, 27, 27)
    assert [x.size for x in R.view_recipes("imagenet_moco_v2", 3)] == [224] * 3  # null: the recipe's own
    with pytest.raises(ValueError, match=r"augment\.size must be an integer >= 8"):
        R.view_recipes("cifar", 2, size=4)
