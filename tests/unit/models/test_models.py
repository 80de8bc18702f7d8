"""Backbones and heads against published parameter counts, torchvision's own models and closed forms."""

from __future__ import annotations

import functools
import math
import pathlib

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch import nn

from pipelines.models.backbones import BACKBONES, build_backbone
from pipelines.models.build import build_framework
from pipelines.models.heads import build_mlp

ROOT = pathlib.Path(__file__).resolve().parents[3]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.cache
def default(name: str, image_size: int) -> nn.Module:
    """A backbone with default arguments, built once per run (the large ones take a second)."""
    return build_backbone(name, image_size=image_size)


def imagenet_head(dim: int) -> int:
    """Parameters of the 1000-way classifier the published counts include."""
    return dim * 1000 + 1000


# ---------------------------------------------------------------- parameter counts

# SmallAlexNet at 32 px, width 1, BatchNorm (conv/linear without bias, BN = 2 params per channel);
# 32 -> pool 15 -> pool 7 -> pool 3, so fc6 reads 192 * 3 * 3
SMALL_ALEXNET_32 = (
    3 * 96 * 9
    + 2 * 96  # conv1 + BN
    + 96 * 192 * 9
    + 2 * 192  # conv2 + BN
    + 192 * 384 * 9
    + 2 * 384  # conv3 + BN
    + 384 * 384 * 9
    + 2 * 384  # conv4 + BN
    + 384 * 192 * 9
    + 2 * 192  # conv5 + BN
    + 192 * 3 * 3 * 4096
    + 2 * 4096  # fc6 + BN1d
    + 4096 * 4096
    + 2 * 4096  # fc7 + BN1d
)
# = 2,784 + 166,272 + 664,320 + 1,327,872 + 663,936 + 7,086,080 + 16,785,408
assert SMALL_ALEXNET_32 == 26_696_672

# ViT-S/16 at 224 (DeiT-S): 22,050,664 with its 1000-way head. By hand, with D = 384, 197 tokens:
#   patch embed 3*16*16*384 + 384          =    295,296
#   class token 384 + position 197*384     =     76,032
#   12 blocks x (LN 2*384*2 = 1,536; qkv 384*1152 + 1152 = 443,520; proj 384*384 + 384 = 147,840;
#                mlp 384*1536 + 1536 + 1536*384 + 384 = 1,181,568) = 12 x 1,774,464 = 21,293,568
#   final LN 2*384                         =        768
#   total                                  = 21,665,664  (+ head 385,000 = 22,050,664)
VIT_S16_224 = (
    3 * 16 * 16 * 384
    + 384
    + 384
    + 197 * 384
    + 12 * (2 * 2 * 384 + (384 * 1152 + 1152) + (384 * 384 + 384) + (384 * 1536 + 1536 + 1536 * 384 + 384))
    + 2 * 384
)
assert VIT_S16_224 == 22_050_664 - imagenet_head(384) == 21_665_664


@pytest.mark.parametrize(
    "name,image_size,expected",
    [
        ("small_alexnet", 32, SMALL_ALEXNET_32),
        ("resnet18", 224, 11_689_512 - imagenet_head(512)),
        ("resnet50", 224, 25_557_032 - imagenet_head(2048)),
        ("vit_s16", 224, VIT_S16_224),
        ("vit_b16", 224, 86_567_656 - imagenet_head(768)),
        ("vit_s16_moco_v3", 224, VIT_S16_224),  # 12 heads instead of 6: the same parameters
        ("vit_b16_moco_v3", 224, 86_567_656 - imagenet_head(768)),
    ],
)
def test_parameter_counts_match_published_numbers(name, image_size, expected):
    assert n_params(default(name, image_size)) == expected


# ---------------------------------------------------------------- output shapes


@pytest.mark.parametrize(
    "name,kwargs,feature_dim",
    [
        ("small_alexnet", dict(image_size=32), 4096),
        ("small_alexnet", dict(image_size=32, width=0.5, norm="none"), 2048),
        ("resnet18", dict(image_size=32, stem="cifar"), 512),
        ("resnet18", dict(image_size=64), 512),
        ("resnet50", dict(image_size=32, stem="cifar"), 2048),
        ("vit_s16", dict(image_size=32), 384),
        ("vit_b16", dict(image_size=224), 768),
    ],
)
def test_output_is_n_by_feature_dim(name, kwargs, feature_dim):
    backbone = default(name, kwargs["image_size"]) if len(kwargs) == 1 else build_backbone(name, **kwargs)
    assert backbone.feature_dim == feature_dim and isinstance(backbone.feature_dim, int)
    size = kwargs["image_size"]
    out = backbone(torch.randn(2, 3, size, size))
    assert out.shape == (2, feature_dim)
    assert out.dtype == torch.float32


def test_vit_s16_forward_at_224():
    backbone = build_backbone("vit_s16", image_size=224).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, 384)


def test_backbone_names():
    assert BACKBONES == (
        "small_alexnet",
        "resnet18",
        "resnet50",
        "vit_s16",
        "vit_b16",
        "vit_s16_moco_v3",
        "vit_b16_moco_v3",
    )


# ---------------------------------------------------------------- ResNets


def test_resnet50_state_dict_loads_into_torchvision_missing_only_fc():
    backbone = default("resnet50", 224)
    result = torchvision.models.resnet50().load_state_dict(backbone.state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
    assert result.unexpected_keys == []


def test_resnet18_features_equal_torchvision_pooled_features():
    backbone = build_backbone("resnet18", image_size=64).eval()
    reference = torchvision.models.resnet18()
    reference.load_state_dict(backbone.state_dict(), strict=False)
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference.eval()(x))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_cifar_stem(name):
    backbone = build_backbone(name, image_size=32, stem="cifar")
    assert isinstance(backbone.conv1, nn.Conv2d)
    assert backbone.conv1.weight.shape == (64, 3, 3, 3)
    assert backbone.conv1.stride == (1, 1) and backbone.conv1.padding == (1, 1)
    assert backbone.conv1.bias is None
    assert isinstance(backbone.maxpool, nn.Identity)
    imagenet = default(name, 224)
    assert imagenet.conv1.weight.shape == (64, 3, 7, 7)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name,last_bn,blocks", [("resnet18", "bn2", 8), ("resnet50", "bn3", 16)])
@pytest.mark.parametrize("zero", [True, False])
def test_zero_init_residual_zeros_the_last_bn_of_every_block(name, last_bn, blocks, zero):
    backbone = build_backbone(name, image_size=224, zero_init_residual=True) if zero else default(name, 224)
    found = [
        getattr(block, last_bn).weight
        for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
        for block in layer
    ]
    assert len(found) == blocks
    for weight in found:
        assert bool((weight == 0).all()) is zero
        if not zero:
            assert bool((weight == 1).all())


# ---------------------------------------------------------------- ViTs


def test_vit_b16_keys_are_torchvision_vit_b_16_minus_heads():
    ours = set(default("vit_b16", 224).state_dict())
    theirs = set(torchvision.models.vit_b_16().state_dict())
    assert any(k.startswith("heads.") for k in theirs)
    assert ours == {k for k in theirs if not k.startswith("heads.")}


def numpy_sincos(grid: int, dim: int) -> np.ndarray:
    """MoCo-v3's build_2d_sincos_position_embedding (vits.py) in NumPy float64, class-token row first.

    The official code builds ``meshgrid(grid_w, grid_h)`` with ``ij`` indexing, flattens both and
    concatenates sin/cos of the first, then sin/cos of the second, each times ω = 1 / 10000^(k/(dim/4)).
    """
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    first, second = np.meshgrid(
        np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij"
    )
    out_first = np.einsum("m,d->md", first.ravel(), omega)
    out_second = np.einsum("m,d->md", second.ravel(), omega)
    patches = np.concatenate(
        [np.sin(out_first), np.cos(out_first), np.sin(out_second), np.cos(out_second)], 1
    )
    return np.concatenate([np.zeros((1, dim)), patches])[None]


@pytest.mark.parametrize(("name", "image_size"), [("vit_s16_moco_v3", 224), ("vit_b16_moco_v3", 64)])
def test_moco_v3_vit_position_embedding_is_the_fixed_2d_sincos(name, image_size):
    backbone = default(name, image_size)
    pos = backbone.encoder.pos_embedding
    grid, dim = image_size // 16, backbone.feature_dim
    expected = torch.from_numpy(numpy_sincos(grid, dim)).float()
    assert pos.shape == (1, grid * grid + 1, dim)
    torch.testing.assert_close(pos.detach(), expected, rtol=0, atol=1e-6)
    assert bool((pos[0, 0] == 0).all())
    assert not pos.requires_grad
    # the torchvision ViT's own embedding is trained and random
    assert default("vit_s16", 224).encoder.pos_embedding.requires_grad


def test_moco_v3_vit_trains_neither_the_position_embedding_nor_the_patch_projection():
    from pipelines.training.optim import build_optimizer

    torch.manual_seed(0)
    backbone = build_backbone("vit_s16_moco_v3", image_size=224)
    frozen = {
        "encoder.pos_embedding": backbone.encoder.pos_embedding,
        "conv_proj.weight": backbone.conv_proj.weight,
        "conv_proj.bias": backbone.conv_proj.bias,
    }
    before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    optimizer = build_optimizer(backbone, {"name": "adamw"}, lr=1e-3)
    out = backbone(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 384) and bool(torch.isfinite(out).all())
    out.square().sum().backward()
    assert all(p.grad is None for p in frozen.values())
    assert backbone.class_token.grad is not None and backbone.encoder.ln.weight.grad is not None
    optimizer.step()
    after = backbone.state_dict()
    for key in frozen:
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["encoder.ln.weight"], before["encoder.ln.weight"])


def test_moco_v3_vit_initialisation_follows_vits_py():
    torch.manual_seed(0)
    backbone = default("vit_b16_moco_v3", 64)
    dim = 768
    layer = backbone.encoder.layers[0]
    assert (
        layer.self_attention.num_heads == 12
        and default("vit_s16_moco_v3", 224).encoder.layers[0].self_attention.num_heads == 12
    )
    assert default("vit_s16", 224).encoder.layers[0].self_attention.num_heads == 6  # DeiT-S

    def uniform(tensor: torch.Tensor, bound: float) -> None:
        # U(-b, b): every value inside, the extremes near b, the std b / sqrt(3)
        t = tensor.detach().double()
        assert t.abs().max() <= bound and t.abs().max() > 0.99 * bound
        assert abs(t.std().item() - bound / math.sqrt(3)) < 0.01 * bound

    uniform(layer.self_attention.in_proj_weight, math.sqrt(6 / (dim + dim)))  # Q, K, V each D x D
    uniform(layer.self_attention.out_proj.weight, math.sqrt(6 / (dim + dim)))
    uniform(layer.mlp[0].weight, math.sqrt(6 / (dim + 3072)))
    uniform(layer.mlp[3].weight, math.sqrt(6 / (3072 + dim)))
    uniform(backbone.conv_proj.weight, math.sqrt(6 / (3 * 16 * 16 + dim)))
    for bias in (
        layer.self_attention.in_proj_bias,
        layer.self_attention.out_proj.bias,
        layer.mlp[0].bias,
        layer.mlp[3].bias,
        backbone.conv_proj.bias,
    ):
        assert bool((bias == 0).all())
    token = backbone.class_token.detach().double()
    assert 0.8e-6 < token.std().item() < 1.2e-6


# ---------------------------------------------------------------- SmallAlexNet


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_small_alexnet_layer_names_and_widths():
    backbone = default("small_alexnet", 32)
    names = [name for name, _ in backbone.named_children()]
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert [c.out_channels for c in _convs(backbone)] == [96, 192, 384, 384, 192]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in _convs(backbone))
    assert [(lin.in_features, lin.out_features) for lin in _linears(backbone)] == [
        (192 * 9, 4096),
        (4096, 4096),
    ]
    assert all(lin.bias is None for lin in _linears(backbone))
    pools = [m for m in backbone.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)


def test_small_alexnet_half_width():
    backbone = build_backbone("small_alexnet", image_size=32, width=0.5)
    assert [c.out_channels for c in _convs(backbone)] == [48, 96, 192, 192, 96]
    assert [(lin.in_features, lin.out_features) for lin in _linears(backbone)] == [
        (96 * 9, 2048),
        (2048, 2048),
    ]
    assert backbone.feature_dim == 2048


def test_small_alexnet_without_norm_has_biases_and_no_batchnorm():
    backbone = build_backbone("small_alexnet", image_size=32, norm="none")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    layers = _convs(backbone) + _linears(backbone)
    assert len(layers) == 7
    assert all(layer.bias is not None and bool((layer.bias == 0).all()) for layer in layers)
    # the BN-free network is the BN one minus 2 params per BN channel plus 1 bias per channel
    channels = 96 + 192 + 384 + 384 + 192 + 4096 + 4096
    assert n_params(backbone) == SMALL_ALEXNET_32 - 2 * channels + channels


def test_small_alexnet_init():
    torch.manual_seed(0)
    backbone = build_backbone("small_alexnet", image_size=32)
    fc6 = _linears(backbone)[0].weight
    assert abs(fc6.std().item() - 0.02) < 0.05 * 0.02
    assert abs(fc6.mean().item()) < 0.001
    for layer in _convs(backbone) + _linears(backbone):
        assert abs(layer.weight.std().item() - 0.02) < 0.05 * 0.02
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 7
    assert all(bool((bn.weight == 1).all()) and bool((bn.bias == 0).all()) for bn in bns)


def test_small_alexnet_64px_reads_7_by_7():
    backbone = build_backbone("small_alexnet", image_size=64)
    assert _linears(backbone)[0].in_features == 192 * 7 * 7
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 4096)


# ---------------------------------------------------------------- heads


def describe(head: nn.Sequential) -> list[tuple]:
    out = []
    for m in head:
        if isinstance(m, nn.Linear):
            out.append(("linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("bn", m.num_features, m.affine))
        elif isinstance(m, nn.ReLU):
            out.append(("relu",))
        else:
            out.append((type(m).__name__,))
    return out


@pytest.mark.parametrize(
    "args,kwargs,expected",
    [
        # small-scale projector (Wang & Isola / CACR): one biased Linear
        ((4096, 0, 128, 1), dict(batch_norm=False), [("linear", 4096, 128, True)]),
        # MoCo-v2 --mlp
        (
            (2048, 2048, 128, 2),
            dict(batch_norm=False),
            [("linear", 2048, 2048, True), ("relu",), ("linear", 2048, 128, True)],
        ),
        # MoCo-v3 ResNet projector
        (
            (2048, 4096, 256, 2),
            dict(batch_norm=True, last_batch_norm=True),
            [
                ("linear", 2048, 4096, False),
                ("bn", 4096, True),
                ("relu",),
                ("linear", 4096, 256, False),
                ("bn", 256, False),
            ],
        ),
        # MoCo-v3 ResNet predictor: no BN after the output layer, and no bias either (official _build_mlp)
        (
            (256, 4096, 256, 2),
            dict(batch_norm=True, last_batch_norm=False, output_bias=False),
            [("linear", 256, 4096, False), ("bn", 4096, True), ("relu",), ("linear", 4096, 256, False)],
        ),
        # a BN-hidden head whose output layer keeps its bias (the default)
        (
            (256, 4096, 256, 2),
            dict(batch_norm=True, last_batch_norm=False),
            [("linear", 256, 4096, False), ("bn", 4096, True), ("relu",), ("linear", 4096, 256, True)],
        ),
        # MoCo-v3 ViT predictor: the official last BN (affine-free) after a bias-free output layer
        (
            (256, 4096, 256, 2),
            dict(batch_norm=True, last_batch_norm=True),
            [
                ("linear", 256, 4096, False),
                ("bn", 4096, True),
                ("relu",),
                ("linear", 4096, 256, False),
                ("bn", 256, False),
            ],
        ),
        # MoCo-v3 ViT projector (ViT-B features)
        (
            (768, 4096, 256, 3),
            dict(batch_norm=True, last_batch_norm=True),
            [
                ("linear", 768, 4096, False),
                ("bn", 4096, True),
                ("relu",),
                ("linear", 4096, 4096, False),
                ("bn", 4096, True),
                ("relu",),
                ("linear", 4096, 256, False),
                ("bn", 256, False),
            ],
        ),
    ],
)
def test_mlp_structure(args, kwargs, expected):
    assert describe(build_mlp(*args, **kwargs)) == expected


def official_moco_v3_mlp(num_layers: int, input_dim: int, output_dim: int, last_bn: bool) -> list[tuple]:
    """moco-v3's ``_build_mlp`` (moco/builder.py) in ``describe`` form, written from its text.

    Every Linear has ``bias=False``; each hidden one is followed by an affine BatchNorm and a ReLU;
    the output one by an affine-free BatchNorm when ``last_bn``. The hidden width is 4096
    (``--moco-mlp-dim``), the output 256 (``--moco-dim``).
    """
    out, prev = [], input_dim
    for _ in range(num_layers - 1):
        out += [("linear", prev, 4096, False), ("bn", 4096, True), ("relu",)]
        prev = 4096
    out.append(("linear", prev, output_dim, False))
    return out + ([("bn", output_dim, False)] if last_bn else [])


# model file -> (feature dim, projector layers, last BN on the predictor): MoCo_ResNet builds a 2-layer
# projector and the predictor with last_bn=False; MoCo_ViT a 3-layer projector and the default last_bn=True
MOCO_V3_MODELS = {
    "resnet50_moco_v3": (2048, 2, False),
    "vit_s16": (384, 3, True),
    "vit_b16": (768, 3, True),
    "vit_s16_moco_v3": (384, 3, True),
    "vit_b16_moco_v3": (768, 3, True),
}


@pytest.mark.parametrize("name", sorted(MOCO_V3_MODELS))
def test_shipped_moco_v3_heads_are_the_official_ones(name):
    feature_dim, projector_layers, predictor_last_bn = MOCO_V3_MODELS[name]
    data = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    model = {k: v for k, v in data.items() if k != "defaults"}
    model["image_size"] = 32 if "vit" in name else 64  # small inputs: the heads do not depend on them
    cfg = {
        "model": model,
        "framework": {"name": "moco_v3"},
        "objective": {"name": "cacr_moco_v3", "K": 1, "hparams": {"temperature": 1.0}},
    }
    online = build_framework(cfg).online
    assert describe(online.base.projector) == official_moco_v3_mlp(projector_layers, feature_dim, 256, True)
    assert describe(online.predictor) == official_moco_v3_mlp(2, 256, 256, predictor_last_bn)


def test_one_layer_head_is_affine_map():
    torch.manual_seed(0)
    head = build_mlp(64, 0, 16, 1, batch_norm=False)
    nn.init.normal_(head[0].bias)
    x = torch.randn(5, 64)
    W, b = head[0].weight.detach().double(), head[0].bias.detach().double()
    expected = x.double() @ W.T + b
    torch.testing.assert_close(head(x).double(), expected, rtol=1e-5, atol=1e-6)


def test_mlp_rejects_zero_layers():
    with pytest.raises(ValueError, match="num_layers"):
        build_mlp(8, 8, 8, 0)


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "name,kwargs,key,allowed",
    [
        ("resnet34", dict(image_size=32), "model.name", "small_alexnet"),
        ("resnet18", dict(image_size=32, stem="tiny"), "model.stem", "cifar"),
        ("vit_s16", dict(image_size=32, stem="cifar"), "model.stem", "imagenet"),
        ("resnet18", dict(image_size=32, width=0.5), "model.width", "1.0"),
        ("vit_b16", dict(image_size=32, width=2.0), "model.width", "1.0"),
        ("small_alexnet", dict(image_size=32, width=0.0), "model.width", "positive"),
        ("small_alexnet", dict(image_size=32, norm="group"), "model.norm", "batch"),
        ("resnet50", dict(image_size=32, norm="none"), "model.norm", "batch"),
        ("vit_s16", dict(image_size=32, norm="none"), "model.norm", "batch"),
        ("small_alexnet", dict(image_size=48), "model.image_size", "32 or 64"),
        ("vit_b16", dict(image_size=100), "model.image_size", "16"),
        ("resnet18", dict(image_size=0), "model.image_size", "positive"),
    ],
)
def test_bad_arguments_name_the_config_key(name, kwargs, key, allowed):
    with pytest.raises(ValueError, match=key) as info:
        build_backbone(name, **kwargs)
    assert allowed in str(info.value)
