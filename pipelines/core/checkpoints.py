"""The one checkpoint format: a directory with the full training state and a plain backbone.

``state.pt``     model (framework: online encoder, momentum encoder, queue), optimizer, epoch,
                 step, step within the epoch, RNG states, the resolved config
``backbone.pt``  the online backbone's state dict (torchvision / ViT keys) for transfer
``COMPLETE``     written last: a JSON line with epoch, step and the byte size of each file. A
                 directory without it, or whose files differ from those sizes (a copy to storage
                 cut short), is torn and is never loaded.

Files are written under a temporary name and renamed, and loaded with ``weights_only=True``: a
file holding anything but tensors and plain containers is refused, never executed.
``newest_complete`` finds the latest complete checkpoint of a run in its storage (a folder or a
``pyarrow`` URI), which is how a restart recovers a checkpoint Ray Train never registered.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from pipelines.core.storage import atomic_path, is_uri, write_atomic

STATE, BACKBONE, COMPLETE = "state.pt", "backbone.pt", "COMPLETE"
NAME = re.compile(r"^checkpoint_e(\d+)_s(\d+)$")


class IncompleteCheckpointError(RuntimeError):
    """A checkpoint directory whose writing never finished."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file that holds more than tensors and plain containers (tampered or foreign)."""


def _save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
    sizes = {name: (d / name).stat().st_size for name in (STATE, BACKBONE)}
    marker = {"epoch": int(state["epoch"]), "step": int(state["step"]), "files": sizes}
    write_atomic(d / COMPLETE, json.dumps(marker) + "\n")
    return d


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint whose writing (and copying) finished."""
    return not checkpoint_problem(directory)


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, no code run.

    Raises:
        UnsafeCheckpointError: when the file holds anything else (a tampered or foreign file).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe globals, RuntimeError for broken archives
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it is not a plain file of tensors ({_why(err)}). It may have "
            "been tampered with, cut short or written by other software; nothing in it was executed. "
            "Use a file written by this platform or the official code: restore it from a copy you trust "
            "(a run's checkpoint: or start a new run with another trainer.name)."
        ) from err


def _why(err: BaseException) -> str:
    """The telling line of torch's refusal (``Unsupported global: ...``), without terminal colours."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(err).splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        if "Unsupported " in ln:  # "Unsupported global: GLOBAL x.y was not ...", "Unsupported operand"
            return ln[ln.index("Unsupported ") :].split(" by default", 1)[0]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def checkpoint_problem(directory: str | os.PathLike) -> str:
    """What makes ``directory`` an incomplete checkpoint, in words (``""``: it is complete)."""
    d = Path(directory)
    if not (d / COMPLETE).is_file():
        return f"no {COMPLETE} marker: its writing never finished"
    sizes = {n: (d / n).stat().st_size if (d / n).is_file() else None for n in (STATE, BACKBONE)}
    return _sizes_problem((d / COMPLETE).read_text(), sizes)


def _check(d: Path) -> None:
    problem = checkpoint_problem(d)
    if problem:
        raise IncompleteCheckpointError(f"{d} is not a complete checkpoint ({problem})")


def read_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``state.pt`` of a complete checkpoint.

    Raises:
        IncompleteCheckpointError: when the ``COMPLETE`` marker or a file is missing or cut short.
        UnsafeCheckpointError: when ``state.pt`` holds more than tensors and plain containers.
    """
    d = Path(directory)
    _check(d)
    return safe_load(d / STATE, map_location)


def read_backbone(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load ``backbone.pt`` of a complete checkpoint (on the CPU).

    Raises:
        IncompleteCheckpointError: when the ``COMPLETE`` marker or a file is missing or cut short.
        UnsafeCheckpointError: when ``backbone.pt`` holds more than tensors and plain containers.
    """
    d = Path(directory)
    _check(d)
    return safe_load(d / BACKBONE)


@dataclass(frozen=True)
class Found:
    """A complete checkpoint found in storage.

    Attributes:
        path: its folder (a local path, or a path inside ``filesystem``).
        epoch: epochs finished when it was written.
        step: optimizer steps taken when it was written.
        uri: the location to hand to ``ray.train.Checkpoint`` (``path`` with the URI's scheme).
    """

    path: str
    epoch: int
    step: int
    uri: str


@dataclass(frozen=True)
class Torn:
    """A ``checkpoint_e*_s*`` folder that cannot be loaded.

    Attributes:
        path: its folder.
        problem: what is wrong with it, in words.
        was_complete: its ``COMPLETE`` marker is there, so it was whole once (a file was cut or
            replaced later), unlike a folder whose writing never finished.
    """

    path: str
    problem: str
    was_complete: bool


def _sizes_problem(marker_text: str, sizes: dict[str, int | None]) -> str:
    """What differs between the files and their ``COMPLETE`` marker (``""``: nothing)."""
    try:
        expected = json.loads(marker_text).get("files") or {STATE: None, BACKBONE: None}
    except (ValueError, AttributeError):
        return f"its {COMPLETE} marker is not valid JSON"
    for name, want in expected.items():
        if sizes.get(name) is None:
            return f"{name} is missing"
        if want is not None and sizes[name] != want:
            return (
                f"{name} has {sizes[name]:,} bytes where {COMPLETE} recorded {int(want):,}: cut short "
                "or replaced since it was written"
            )
    return ""


def scan_checkpoints(storage: str, name: str) -> tuple[list[Found], list[Torn]]:
    """The complete and the torn ``checkpoint_e*_s*`` folders of run ``name`` under ``storage``.

    ``storage`` is a folder or a ``pyarrow`` URI; a folder that vanishes meanwhile (``num_to_keep``)
    or cannot be read is left out of both lists.
    """
    if is_uri(storage):
        fs, root = pafs.FileSystem.from_uri(storage)
        prefix, _, query = storage.partition("?")
        prefix, query = prefix.rstrip("/"), "?" + query if query else ""
    else:
        fs, root, prefix, query = pafs.LocalFileSystem(), os.path.abspath(storage), "", ""
    root = root.rstrip("/")
    try:
        entries = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", allow_not_found=True))
    except OSError:
        return [], []
    found: list[Found] = []
    torn: list[Torn] = []
    for entry in entries:
        m = NAME.match(entry.base_name)
        if not m or entry.type != pafs.FileType.Directory:
            continue
        try:
            files = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(entry.path))}
            if COMPLETE not in files:
                torn.append(Torn(entry.path, f"no {COMPLETE} marker (its writing never finished)", False))
                continue
            with fs.open_input_stream(files[COMPLETE].path) as f:
                text = f.read().decode(errors="replace")
            problem = _sizes_problem(
                text, {n: files[n].size if n in files else None for n in (STATE, BACKBONE)}
            )
            if problem:
                torn.append(Torn(entry.path, problem, True))
                continue
            info = json.loads(text)
            epoch, step = int(info.get("epoch", m[1])), int(info.get("step", m[2]))
        except (OSError, ValueError, TypeError):
            continue
        # the URI as the user wrote it (scheme, host, query) with this folder's path
        uri = f"{prefix}{entry.path[len(root) :]}{query}" if prefix else entry.path
        found.append(Found(entry.path, epoch, step, uri))
    return found, sorted(torn, key=lambda t: t.path)


def newest_complete(storage: str, name: str) -> Found | None:
    """The latest complete ``checkpoint_e*_s*`` of run ``name`` under ``storage`` (folder or URI).

    Latest as :func:`newest` says; torn folders are skipped.
    """
    return newest(scan_checkpoints(storage, name)[0])


def newest(found: list[Found]) -> Found | None:
    """The latest of ``found``: the most steps, then the most epochs.

    An epoch-end checkpoint follows a step checkpoint taken at the same step.
    """
    return max(found, key=lambda c: (c.step, c.epoch), default=None)


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter and floating buffer of ``module`` is finite."""
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)
