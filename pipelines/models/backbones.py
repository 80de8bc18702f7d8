"""Encoder backbones: each maps float images ``[N, 3, S, S]`` to features ``[N, feature_dim]``.

Choices:

* ``small_alexnet`` is the SmallAlexNet of the small-scale experiments of CACR (itself taken
  from Wang & Isola's alignment/uniformity code) without its last layer: the final ``fc -> 128``
  is the projector, built by :mod:`pipelines.models.heads`. It is written here layer by layer so
  that ``width`` can scale it and ``norm="none"`` can drop every BatchNorm, which the exact
  DDP-equivalence tests need (BatchNorm statistics are per-replica).
* ``resnet18`` / ``resnet50`` are torchvision's ResNets with ``fc`` replaced by an identity, so a
  backbone's ``state_dict`` loads straight into ``torchvision.models.resnet*`` (missing only
  ``fc.*``). ``stem="cifar"`` is the usual small-image stem: a 3x3 stride-1 ``conv1`` and no max
  pool, so 32-px inputs are not downsampled 4x before the first stage.
* ``vit_s16`` / ``vit_b16`` use torchvision's ``VisionTransformer`` rather than timm: torchvision
  is already a dependency, and exported weights load into ``torchvision.models.vit_b_16``. The
  feature is the class token (``heads`` is an identity).
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONES: tuple[str, ...] = ("small_alexnet", "resnet18", "resnet50", "vit_s16", "vit_b16")
STEMS: tuple[str, ...] = ("imagenet", "cifar")
NORMS: tuple[str, ...] = ("batch", "none")

# SmallAlexNet: input size -> spatial side after the three 3x3/stride-2 max pools
_ALEXNET_POOLED_SIDE: dict[int, int] = {32: 3, 64: 7}
# name -> feature dim; the constructor is ``torchvision.models.<name>``. torchvision is imported only
# when one of its networks is built: importing it costs ~1.5 CPU-seconds (it pulls in torch._dynamo),
# paid by every Ray process that imports this module (each trial's driver and workers).
_RESNETS: dict[str, int] = {"resnet18": 512, "resnet50": 2048}
# name -> (num_heads, hidden_dim, mlp_dim)
_VITS: dict[str, tuple[int, int, int]] = {"vit_s16": (6, 384, 1536), "vit_b16": (12, 768, 3072)}


class SmallAlexNet(nn.Module):
    """SmallAlexNet up to and including ``fc7`` (the 128-d output layer is the projector).

    Args:
        image_size: 32 or 64 (the size of the input images).
        width: multiplier of every channel count and of the 4096-wide fully connected layers.
        batch_norm: BatchNorm after every conv/linear layer (their biases are then dropped);
            without it the same network has biases and no normalisation.
    """

    def __init__(self, image_size: int = 32, width: float = 1.0, batch_norm: bool = True) -> None:
        super().__init__()
        c1, c2, c3, c4, c5, fc = (max(8, round(c * width)) for c in (96, 192, 384, 384, 192, 4096))
        side = _ALEXNET_POOLED_SIDE[image_size]
        self.feature_dim: int = fc

        def norm(layer: type[nn.Module], dim: int) -> list[nn.Module]:
            return [layer(dim)] if batch_norm else []

        def conv(cin: int, cout: int, pool: bool) -> nn.Sequential:
            layers = [
                nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm),
                *norm(nn.BatchNorm2d, cout),
                nn.ReLU(inplace=True),
            ]
            return nn.Sequential(*layers, *([nn.MaxPool2d(3, 2)] if pool else []))

        def linear(din: int, dout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(din, dout, bias=not batch_norm), *norm(nn.BatchNorm1d, dout), nn.ReLU(inplace=True)
            )

        self.conv1 = conv(3, c1, pool=True)
        self.conv2 = conv(c1, c2, pool=True)
        self.conv3 = conv(c2, c3, pool=False)
        self.conv4 = conv(c3, c4, pool=False)
        self.conv5 = conv(c4, c5, pool=True)
        self.fc6 = nn.Sequential(nn.Flatten(), *linear(c5 * side * side, fc))
        self.fc7 = linear(fc, fc)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[N, 3, S, S]`` to features ``[N, feature_dim]``."""
        for block in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.fc6, self.fc7):
            x = block(x)
        return x


def _require(ok: bool, key: str, allowed: str, got: object) -> None:
    if not ok:
        raise ValueError(f"{key} must be {allowed}, got {got!r}")


def _resnet(name: str, stem: str, zero_init_residual: bool) -> nn.Module:
    import torchvision

    feature_dim = _RESNETS[name]
    model = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
    model.fc = nn.Identity()
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    model.feature_dim = feature_dim
    return model


def _vit(name: str, image_size: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    num_heads, hidden_dim, mlp_dim = _VITS[name]
    model = VisionTransformer(
        image_size=image_size,
        patch_size=16,
        num_layers=12,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
    )
    model.heads = nn.Identity()
    model.feature_dim = hidden_dim
    return model


def build_backbone(
    name: str,
    *,
    image_size: int,
    stem: str = "imagenet",
    width: float = 1.0,
    norm: str = "batch",
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build a backbone without classifier; the result has an int attribute ``feature_dim``.

    Args:
        name: one of :data:`BACKBONES` (config ``model.name``).
        image_size: input side in pixels (``model.image_size``): 32 or 64 for ``small_alexnet``, a
            multiple of 16 for the ViTs, any positive size for the ResNets.
        stem: ``"imagenet"`` or ``"cifar"`` (``model.stem``); the CIFAR stem applies to ResNets only,
            SmallAlexNet has a single form and accepts either, the ViTs need ``"imagenet"``.
        width: channel multiplier (``model.width``), SmallAlexNet only; others need 1.0.
        norm: ``"batch"`` or ``"none"`` (``model.norm``); ``"none"`` for SmallAlexNet only.
        zero_init_residual: zero the last BatchNorm weight of each residual block (ResNets).

    Returns:
        A module mapping float ``[N, 3, S, S]`` to ``[N, feature_dim]``.

    Raises:
        ValueError: naming the config key of an unknown or unsupported argument.
    """
    _require(name in BACKBONES, "model.name", f"one of {BACKBONES}", name)
    _require(stem in STEMS, "model.stem", f"one of {STEMS}", stem)
    _require(norm in NORMS, "model.norm", f"one of {NORMS}", norm)
    _require(isinstance(image_size, int) and image_size > 0, "model.image_size", "a positive int", image_size)
    if name == "small_alexnet":
        _require(
            image_size in _ALEXNET_POOLED_SIDE, "model.image_size", "32 or 64 for small_alexnet", image_size
        )
        _require(width > 0, "model.width", "positive for small_alexnet", width)
        return SmallAlexNet(image_size=image_size, width=width, batch_norm=norm == "batch")
    _require(width == 1.0, "model.width", f"1.0 for {name} (width scaling is small_alexnet only)", width)
    _require(norm == "batch", "model.norm", f"'batch' for {name} ('none' is small_alexnet only)", norm)
    if name in _RESNETS:
        return _resnet(name, stem, zero_init_residual)
    _require(stem == "imagenet", "model.stem", f"'imagenet' for {name} (no CIFAR stem for ViTs)", stem)
    _require(
        image_size % 16 == 0, "model.image_size", f"a multiple of 16 (the patch size) for {name}", image_size
    )
    return _vit(name, image_size)
