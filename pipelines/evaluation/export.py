"""Backbone export: torchvision-compatible state dicts and detectron2's ResNet format.

``backbone.pt`` in every checkpoint is the online backbone's state dict with torchvision's own
names (``conv1``, ``layer1.0.bn1``, ... for ResNets; ``conv_proj``, ``encoder.layers...`` for ViTs),
so it loads with ``strict=True`` into ``torchvision.models.resnet50()`` / ``resnet18()`` /
``vit_b_16()`` once the classifier (``fc`` / ``heads``) is set aside. :func:`to_detectron2` renames
a ResNet's keys to detectron2's (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut`` ...), the
layout detectron2's ``DetectionCheckpointer`` reads from a ``.pkl`` file.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pipelines.core.checkpoints import UnsafeCheckpointError, safe_load

CLASSIFIER = {"resnet": "fc", "vit": "heads"}


def load_state(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict without executing pickled code (``weights_only=True``).

    Raises:
        ValueError: when the file is not a plain state dict of tensors (tampered or foreign).
    """
    try:
        state = safe_load(path)
    except UnsafeCheckpointError as err:
        raise ValueError(str(err)) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def torchvision_model(name: str, image_size: int = 224) -> nn.Module:
    """The torchvision model a backbone of ``model.name`` loads into, classifier replaced by identity."""
    import torchvision

    if name in ("resnet18", "resnet50"):
        model = getattr(torchvision.models, name)()
        model.fc = nn.Identity()
        return model
    if name == "vit_b16":
        model = torchvision.models.vit_b_16(image_size=image_size)
    elif name == "vit_s16":  # ViT-S/16 (DeiT-S sizes); torchvision has the class but no builder
        model = torchvision.models.vision_transformer.VisionTransformer(
            image_size=image_size, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536
        )
    else:
        model = None
    if model is not None:
        model.heads = nn.Identity()
        return model
    raise ValueError(f"model.name={name!r} has no torchvision counterpart (small_alexnet is our own)")


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
