"""The one checkpoint format: a directory with the full training state and a plain backbone.

``state.pt``     model (framework: online encoder, momentum encoder, queue), optimizer, epoch,
                 step, step within the epoch, RNG states, the resolved config
``backbone.pt``  the online backbone's state dict (torchvision / ViT keys) for transfer
``COMPLETE``     written last: a JSON line with epoch and step. A directory without it is torn
                 and is never loaded.

Files are written under a temporary name and renamed, and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch

STATE, BACKBONE, COMPLETE = "state.pt", "backbone.pt", "COMPLETE"


class IncompleteCheckpointError(RuntimeError):
    """A checkpoint directory whose writing never finished."""


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA) and Python RNG states."""
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def write_checkpoint(directory: str | os.PathLike, state: dict[str, Any], backbone: dict[str, Any]) -> Path:
    """Write a complete checkpoint into ``directory`` (created if needed).

    Args:
        directory: the checkpoint folder.
        state: the training state (see the module docstring); must hold ``epoch`` and ``step``.
        backbone: the backbone's state dict.

    Returns:
        The directory.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _save(state, d / STATE)
    _save(backbone, d / BACKBONE)
    marker = d / (COMPLETE + ".tmp")
    marker.write_text(json.dumps({"epoch": int(state["epoch"]), "step": int(state["step"])}) + "\n")
    os.replace(marker, d / COMPLETE)
    return d


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint whose writing finished."""
    d = Path(directory)
    return (d / COMPLETE).is_file() and (d / STATE).is_file() and (d / BACKBONE).is_file()


def read_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``state.pt`` of a complete checkpoint.

    Raises:
        IncompleteCheckpointError: when the ``COMPLETE`` marker or a file is missing.
    """
    d = Path(directory)
    if not is_complete(d):
        raise IncompleteCheckpointError(f"{d} is not a complete checkpoint (no {COMPLETE} marker)")
    return torch.load(d / STATE, map_location=map_location, weights_only=True)


def read_backbone(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load ``backbone.pt`` of a complete checkpoint (on the CPU)."""
    d = Path(directory)
    if not is_complete(d):
        raise IncompleteCheckpointError(f"{d} is not a complete checkpoint (no {COMPLETE} marker)")
    return torch.load(d / BACKBONE, map_location="cpu", weights_only=True)


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter and floating buffer of ``module`` is finite."""
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)
