"""Backbone export (torchvision, timm and detectron2 layouts) and reading official checkpoints.

``backbone.pt`` in every checkpoint is the online backbone's state dict with torchvision's own
names (``conv1``, ``layer1.0.bn1``, ... for ResNets; ``conv_proj``, ``encoder.layers...`` for ViTs),
so it loads with ``strict=True`` into ``torchvision.models.resnet50()`` / ``resnet18()`` /
``vit_b_16()`` once the classifier (``fc`` / ``heads``) is set aside. :func:`to_timm` renames a
ViT's keys to timm's (``patch_embed.proj``, ``blocks.0.attn.qkv`` ...; a ResNet's are timm's
already), :func:`to_detectron2` a ResNet's to detectron2's (``stem.conv1``, ``res2.0.conv1.norm``,
``res2.0.shortcut`` ...), the layout detectron2's ``DetectionCheckpointer`` reads from a ``.pkl``.

:func:`load_state` also reads the checkpoints the official code writes (CACR-SSL and MoCo-v2:
``state_dict`` keys ``module.encoder_q.*``; CACR-SSL's ImageNet code and MoCo-v3:
``module.base_encoder.*``), keeping the online encoder without its head, in torchvision's names.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pipelines.core.checkpoints import UnsafeCheckpointError, safe_load

CLASSIFIER = {"resnet": "fc", "vit": "heads"}
# the online encoder's prefix in the official checkpoints' ``state_dict`` (DDP adds ``module.``):
# MoCo-v2 / CACR-SSL large-scale ``encoder_q``, MoCo-v3 / CACR-SSL ImageNet ``base_encoder``
OFFICIAL_PREFIXES = ("module.encoder_q.", "module.base_encoder.", "base_encoder.")
OFFICIAL_HEADS = ("fc.", "head.")  # the projector took the classifier's place: not part of the backbone
# our model.name -> timm's model name; timm.create_model(name, num_classes=0) takes the state dict
TIMM_NAMES = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "vit_s16": "vit_small_patch16_224",
    "vit_b16": "vit_base_patch16_224",
    "vit_s16_moco_v3": "vit_small_patch16_224",  # with num_heads=12 (MoCo-v3's vit_small)
    "vit_b16_moco_v3": "vit_base_patch16_224",
}
# torchvision ViT key <-> timm ViT key: {i} is a block's index, {p} weight or bias, a final $ a
# whole key (else a prefix); the MLP's Linears are 0 and 3 of torchvision's Sequential
_VIT_NAMES = (
    ("class_token$", "cls_token$"),
    ("conv_proj.", "patch_embed.proj."),
    ("encoder.pos_embedding$", "pos_embed$"),
    ("encoder.ln.", "norm."),
    ("encoder.layers.encoder_layer_{i}.ln_1.", "blocks.{i}.norm1."),
    ("encoder.layers.encoder_layer_{i}.ln_2.", "blocks.{i}.norm2."),
    ("encoder.layers.encoder_layer_{i}.self_attention.in_proj_{p}$", "blocks.{i}.attn.qkv.{p}$"),
    ("encoder.layers.encoder_layer_{i}.self_attention.out_proj.", "blocks.{i}.attn.proj."),
    ("encoder.layers.encoder_layer_{i}.mlp.0.", "blocks.{i}.mlp.fc1."),
    ("encoder.layers.encoder_layer_{i}.mlp.3.", "blocks.{i}.mlp.fc2."),
)


def _rules(source: int) -> tuple[tuple[str, str], ...]:
    """Regex rules renaming keys from ``_VIT_NAMES`` column ``source`` (0: torchvision, 1: timm)."""
    rules = []
    for names in _VIT_NAMES:
        a, b = names[source], names[1 - source]
        pattern = "^" + re.escape(a).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
        rules.append(
            (pattern.replace(r"\$", "$"), b.rstrip("$").replace("{i}", r"\g<i>").replace("{p}", r"\g<p>"))
        )
    return tuple(rules)


_VIT_TO_TIMM, _TIMM_TO_VIT = _rules(0), _rules(1)


def _rename(state: dict[str, Tensor], rules: tuple[tuple[str, str], ...], what: str) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            new, n = re.subn(pattern, replacement, key)
            if n:
                out[new] = value
                break
        else:
            raise ValueError(f"{what}: no counterpart for the key {key!r}")
    return out


def load_state(path: str | Path) -> dict[str, Tensor]:
    """Load a backbone's state dict without executing pickled code (``weights_only=True``).

    Reads a plain state dict of tensors (``backbone.pt``, an export) as it is, and an official
    CACR-SSL / MoCo checkpoint (a dict whose ``state_dict`` holds the training model's tensors) as
    its online encoder: the keys under the first of :data:`OFFICIAL_PREFIXES` found, without that
    prefix and without the head (``fc.*`` / ``head.*``); a timm ViT's names become torchvision's.

    Raises:
        ValueError: in one line naming the file, when it holds more than tensors and plain
            containers (tampered or foreign), or neither a state dict nor such a checkpoint.
    """
    try:
        saved = safe_load(path)
    except UnsafeCheckpointError as err:
        raise ValueError(str(err)) from err
    wrapped = isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict)
    state = saved["state_dict"] if wrapped else saved
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{path} holds neither a state dict of tensors nor an official checkpoint (a dict whose "
            "'state_dict' holds tensors)"
        )
    prefix = next((p for p in OFFICIAL_PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        if not wrapped:
            return state
        raise ValueError(
            f"{path}: an unknown checkpoint layout: its state_dict has no keys under "
            f"{', '.join(p + '*' for p in OFFICIAL_PREFIXES)} (first key: {next(iter(state))!r})"
        )
    backbone = {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix) and not key[len(prefix) :].startswith(OFFICIAL_HEADS)
    }
    if "patch_embed.proj.weight" in backbone:  # MoCo-v3's ViTs are timm's
        backbone = from_timm(backbone, what=str(path))
    return backbone


def to_timm(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """The state dict a backbone of ``model.name`` has in timm's ``TIMM_NAMES[name]`` model.

    ResNets keep their names (timm's are torchvision's); ViTs are renamed key by key.

    Raises:
        ValueError: for a model without a timm counterpart, or a key the renaming does not know.
    """
    if name not in TIMM_NAMES:
        raise ValueError(f"model.name={name!r} has no timm counterpart (one of {', '.join(TIMM_NAMES)})")
    if name.startswith("resnet"):
        return dict(state)
    return _rename(state, _VIT_TO_TIMM, f"timm export of {name}")


def from_timm(state: dict[str, Tensor], what: str = "timm state dict") -> dict[str, Tensor]:
    """A timm ViT's state dict in torchvision's ``VisionTransformer`` names (the inverse of :func:`to_timm`).

    Raises:
        ValueError: naming ``what`` and the first key with no torchvision counterpart.
    """
    return _rename(state, _TIMM_TO_VIT, what)


def fit_problem(state: dict[str, Tensor], expected: dict[str, Tensor]) -> str:
    """How ``state`` differs from a model's ``expected`` state dict, in one line (``""``: it fits)."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = (
        f"missing {missing[:3]}" if missing else "",
        f"unexpected {extra[:3]}" if extra else "",
        f"shapes {shapes[:2]}" if shapes else "",
    )
    return "; ".join(x for x in parts if x)


TORCHVISION_NAMES = ("resnet18", "resnet50", "vit_s16", "vit_b16", "vit_s16_moco_v3", "vit_b16_moco_v3")


def torchvision_model(name: str, image_size: int = 224) -> nn.Module:
    """The torchvision model a backbone of ``model.name`` loads into, classifier replaced by identity.

    A ``*_moco_v3`` ViT loads into the plain torchvision ViT of its size (its fixed position
    embedding and frozen patch projection are values, not layers).
    """
    import torchvision

    if name in ("resnet18", "resnet50"):
        model = getattr(torchvision.models, name)()
        model.fc = nn.Identity()
        return model
    if name in ("vit_b16", "vit_b16_moco_v3"):
        model = torchvision.models.vit_b_16(image_size=image_size)
    elif name in ("vit_s16", "vit_s16_moco_v3"):  # torchvision has the class but no ViT-S builder
        model = torchvision.models.vision_transformer.VisionTransformer(
            image_size=image_size,
            patch_size=16,
            num_layers=12,
            num_heads=6 if name == "vit_s16" else 12,  # DeiT-S; MoCo-v3's vit_small has 12
            hidden_dim=384,
            mlp_dim=1536,
        )
    else:
        model = None
    if model is not None:
        model.heads = nn.Identity()
        return model
    raise ValueError(
        f"model.name={name!r} has no torchvision counterpart: use one of {', '.join(TORCHVISION_NAMES)} "
        "(small_alexnet is the project's own network)"
    )


def _detectron2_name(key: str) -> str | None:
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
        return None
    if not key.startswith("layer"):
        key = "stem." + key  # conv1, bn1
    key = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"\bbn(\d)\b", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def to_detectron2(state: dict[str, Tensor]) -> dict[str, Any]:
    """detectron2's checkpoint dict for a torchvision-named ResNet state dict.

    Returns:
        ``{"model": {detectron2 name: numpy array}, "__author__": ..., "matching_heuristics": True}``.
    """
    if "conv1.weight" not in state or not any(k.startswith("layer4.") for k in state):
        raise ValueError("detectron2 export needs a ResNet backbone (no conv1 / layer4 keys found)")
    model = {}
    for key, value in state.items():
        name = _detectron2_name(key)
        if name is not None:
            model[name] = value.detach().cpu().numpy()
    return {"model": model, "__author__": "cacr-platform", "matching_heuristics": True}


def write_detectron2(state: dict[str, Tensor], out: str | Path) -> Path:
    """Write :func:`to_detectron2` of ``state`` as a ``.pkl`` file detectron2 reads."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        pickle.dump(to_detectron2(state), f)
    return out
