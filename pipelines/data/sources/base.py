"""What every dataset source provides: a class list, chunks of work, and the records in a chunk.

A *chunk* is a small picklable description of part of a split (a batch file, a line range of a
file list, one class folder, one inner tar); the driver enumerates chunks without listing the
images inside them, and Ray tasks read the chunks in parallel. A *record* is one image::

    {"key": "train/n01440764/n01440764_10026.JPEG",  # unique, readable path-like key
     "label": 0,                                      # class index, -1 for unlabelled images
     "image": b"...",                                 # encoded bytes; None if listed but missing
     "pixels": None}                                  # or an [H, W, 3] uint8 array (CIFAR, STL)

plus ``"problem"`` (a reason) for an entry the source already knows is unusable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.core.storage import Store

Record = dict[str, Any]


@dataclass(frozen=True)
class Chunk:
    """A unit of reading work.

    Attributes:
        split: the split it belongs to.
        name: a unique, file-name-safe id within the split (used for shard names).
        args: source-specific arguments (paths, offsets, line ranges).
        size: the number of images if known without reading (else ``None``).
    """

    split: str
    name: str
    args: tuple[Any, ...]
    size: int | None = None


class Source:
    """Base class of the dataset sources; subclasses set ``name`` and ``splits``."""

    name: str = ""
    splits: tuple[str, ...] = ()

    def __init__(self, root: str, **options: Any) -> None:
        """Bind the source to its root folder or URI.

        Args:
            root: the dataset's root (``dataset.root``).
            **options: source-specific options from the dataset config.
        """
        self.root = root
        self.store = Store.open(root)
        self.options = options

    def check_split(self, split: str, key: str | None = None) -> None:
        """Raise ``ValueError`` naming the valid splits for an unknown one.

        ``key``, the config key that chose the split, is named with the fix when given.
        """
        if split not in self.splits:
            fix = f"; set {key}=<one of them>" if key else ""
            raise ValueError(
                f"{key + '=' + split + ': ' if key else ''}dataset {self.name!r} at {self.root} has no "
                f"split {split!r}; choose one of {', '.join(self.splits)}{fix}"
            )

    def classes(self) -> list[str]:
        """Class names; label ``i`` is ``classes()[i]``."""
        raise NotImplementedError

    def chunks(self, split: str) -> list[Chunk]:
        """The chunks that make up ``split``."""
        raise NotImplementedError

    def read(self, chunk: Chunk) -> Iterator[Record]:
        """The records of one chunk, in a stable order."""
        raise NotImplementedError

    def unread_entries(self) -> list[str]:
        """Folders (``name/``) and images under the root that no split holds, so are not read (none here)."""
        return []

    def read_selected(self, chunk: Chunk, keep: Callable[[str], bool]) -> Iterator[Record]:
        """The records of one chunk whose key ``keep`` accepts.

        Sources that know a key before reading its image (a folder listing) skip the others' bytes.
        """
        return (r for r in self.read(chunk) if keep(str(r["key"])))


def record(
    key: str,
    label: Any,
    image: bytes | None = None,
    pixels: np.ndarray | None = None,
    problem: str | None = None,
    skipped: str | None = None,
) -> Record:
    """Build one record (a label that is not an integer is kept as is, for the guard to report).

    ``problem``: why the source already knows the entry is unusable (a malformed list line, a
    sample without its label); the guard lists it as the reason, as for a bad image.
    ``skipped``: a file the source does not take for an image (its extension, e.g. ``.txt``):
    counted by extension, neither written nor listed as bad.
    """
    if isinstance(label, int | np.integer) or (
        isinstance(label, str) and label.strip().lstrip("-").isdigit()
    ):
        label = int(label)
    out = {"key": key, "label": label, "image": image, "pixels": pixels}
    if skipped:
        out["skipped"] = skipped
    return out | {"problem": problem} if problem else out
