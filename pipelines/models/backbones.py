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
* ``vit_s16_moco_v3`` / ``vit_b16_moco_v3`` are the same torchvision module set up as MoCo-v3's
  ``vits.py`` sets up its timm ViT: 12 heads for ViT-S as well (``vit_small``), a fixed 2-D sin-cos
  position embedding (:func:`sincos_position_embedding`, not trained), a frozen patch projection
  (``--stop-grad-conv1``: ``conv_proj`` weight and bias never receive a gradient) and its
  initialisation: Xavier-uniform Linear weights with Q, K and V treated as three matrices, zero
  biases, a class token drawn from N(0, 1e-6²) and a Xavier-uniform patch projection.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BACKBONES: tuple[str, ...] = (
    "small_alexnet",
    "resnet18",
    "resnet50",
    "vit_s16",
    "vit_b16",
    "vit_s16_moco_v3",
    "vit_b16_moco_v3",
)
STEMS: tuple[str, ...] = ("imagenet", "cifar")
NORMS: tuple[str, ...] = ("batch", "none")

# SmallAlexNet: input size -> spatial side after the three 3x3/stride-2 max pools
_ALEXNET_POOLED_SIDE: dict[int, int] = {32: 3, 64: 7}
# name -> feature dim; the constructor is ``torchvision.models.<name>``. torchvision is imported only
# when one of its networks is built: importing it costs ~1.5 CPU-seconds (it pulls in torch._dynamo),
# paid by every Ray process that imports this module (each trial's driver and workers).
_RESNETS: dict[str, int] = {"resnet18": 512, "resnet50": 2048}
# name -> (num_heads, hidden_dim, mlp_dim); vit_s16 has DeiT-S's 6 heads, MoCo-v3's vit_small has 12
_VITS: dict[str, tuple[int, int, int]] = {
    "vit_s16": (6, 384, 1536),
    "vit_b16": (12, 768, 3072),
    "vit_s16_moco_v3": (12, 384, 1536),
    "vit_b16_moco_v3": (12, 768, 3072),
}
PATCH = 16


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


def sincos_position_embedding(grid: int, dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """MoCo-v3's fixed 2-D sin-cos position embedding, ``[1, 1 + grid², dim]`` (float32).

    Row 0 (the class token) is zero. With ``ω_k = temperature^(-k / (dim/4))``, ``k < dim/4``, the
    patch token ``m`` (row-major over the ``grid × grid`` patches, as the patch projection flattens
    them) gets ``[sin(a·ω), cos(a·ω), sin(b·ω), cos(b·ω)]`` with ``a = m // grid`` and
    ``b = m % grid``: the official code takes ``torch.meshgrid(grid_w, grid_h)`` (``ij`` indexing),
    so its first ("w") half follows the patch's row.

    Args:
        grid: patches per side (image size / patch size).
        dim: the token width, a multiple of 4.
        temperature: the frequency base.

    Raises:
        ValueError: when ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = temperature ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    index = torch.arange(grid * grid, dtype=torch.int64)
    a = torch.div(index, grid, rounding_mode="floor").to(torch.float64)[:, None] * omega
    b = (index % grid).to(torch.float64)[:, None] * omega
    patches = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), patches]).float()[None]


def _moco_v3_vit(model: nn.Module, hidden_dim: int, grid: int) -> None:
    """Set up a torchvision ``VisionTransformer`` as MoCo-v3's ``VisionTransformerMoCo`` (in place)."""
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):  # timm's qkv Linear: Q, K, V as three matrices
            bound = math.sqrt(6.0 / (module.in_proj_weight.shape[0] // 3 + module.in_proj_weight.shape[1]))
            nn.init.uniform_(module.in_proj_weight, -bound, bound)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.Linear):  # attention output and MLP layers
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.normal_(model.class_token, std=1e-6)
    proj = model.conv_proj
    bound = math.sqrt(6.0 / (3 * PATCH * PATCH + hidden_dim))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    proj.weight.requires_grad_(False)
    proj.bias.requires_grad_(False)
    with torch.no_grad():
        model.encoder.pos_embedding.copy_(sincos_position_embedding(grid, hidden_dim))
    model.encoder.pos_embedding.requires_grad_(False)


def _vit(name: str, image_size: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    num_heads, hidden_dim, mlp_dim = _VITS[name]
    model = VisionTransformer(
        image_size=image_size,
        patch_size=PATCH,
        num_layers=12,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
    )
    model.heads = nn.Identity()
    model.feature_dim = hidden_dim
    if name.endswith("_moco_v3"):
        _moco_v3_vit(model, hidden_dim, image_size // PATCH)
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
    check_backbone(name, image_size=image_size, stem=stem, width=width, norm=norm)
    if name == "small_alexnet":
        return SmallAlexNet(image_size=image_size, width=width, batch_norm=norm == "batch")
    if name in _RESNETS:
        return _resnet(name, stem, zero_init_residual)
    return _vit(name, image_size)


def check_backbone(name: str, *, image_size: int, stem: str, width: float, norm: str) -> None:
    """Refuse arguments :func:`build_backbone` cannot build with (run before any cluster time).

    Raises:
        ValueError: naming the config key, what it must be and what it is.
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
        return
    _require(width == 1.0, "model.width", f"1.0 for {name} (width scaling is small_alexnet only)", width)
    _require(norm == "batch", "model.norm", f"'batch' for {name} ('none' is small_alexnet only)", norm)
    if name not in _RESNETS:
        _require(stem == "imagenet", "model.stem", f"'imagenet' for {name} (no CIFAR stem for ViTs)", stem)
        _require(
            image_size % 16 == 0,
            "model.image_size",
            f"a multiple of 16 (the patch size) for {name}",
            image_size,
        )
