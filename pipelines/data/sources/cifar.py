"""CIFAR-10 and CIFAR-100 in the original python pickle batches.

``dataset.root`` is the extracted ``cifar-10-batches-py/`` (``cifar-100-python/``) folder or
the folder that contains it. Rows are 1024 R, 1024 G, 1024 B bytes of a 32x32 image.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from pipelines.data.sources.base import Chunk, Record, Source, record


def load_batch(data: bytes) -> dict[str, Any]:
    """Unpickle a CIFAR batch (a Python 2 pickle) with string keys."""
    return pickle.load(io.BytesIO(data), encoding="latin1")


def rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """``[N, 3072]`` CIFAR rows to ``[N, 32, 32, 3]`` uint8 images."""
    return np.asarray(rows, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


class _CifarPickle(Source):
    folder = ""
    meta_file = ""
    names_key = ""
    labels_key = ""
    files: ClassVar[dict[str, tuple[str, ...]]] = {}
    splits = ("train", "test")

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        if self.store.exists(self.folder):
            self.store = type(self.store)(self.store.fs, self.store.path(self.folder))
        if not self.store.exists(self.meta_file):
            raise FileNotFoundError(
                f"{self.name}: no {self.meta_file} under {root!r}; set dataset.root to the extracted "
                f"{self.folder}/ folder (or its parent)"
            )

    def classes(self) -> list[str]:
        return list(load_batch(self.store.read(self.meta_file))[self.names_key])

    def chunks(self, split: str) -> list[Chunk]:
        """One chunk per batch file.

        Raises:
            FileNotFoundError: naming every batch file of ``split`` that is missing (each holds
                10,000 images or more: leaving one out is not a bad image).
        """
        self.check_split(split)
        missing = [f for f in self.files[split] if not self.store.exists(f)]
        if missing:
            raise FileNotFoundError(
                f"{self.name}: {split} batch file(s) missing under {self.store.base}: {', '.join(missing)}; "
                f"extract the whole {self.folder} archive again"
            )
        return [Chunk(split, f, (f,)) for f in self.files[split]]

    def read(self, chunk: Chunk) -> Iterator[Record]:
        (file,) = chunk.args
        data = self.store.read(file)
        if data is None:
            raise FileNotFoundError(f"{self.name}: missing batch file {self.store.path(file)}")
        batch = load_batch(data)
        images = rows_to_hwc(batch["data"])
        for i, (name, label) in enumerate(zip(batch["filenames"], batch[self.labels_key], strict=True)):
            yield record(f"{file}/{i:05d}/{name}", label, pixels=images[i])


class Cifar10(_CifarPickle):
    """CIFAR-10: ``data_batch_1..5`` (train, 50,000) and ``test_batch`` (10,000)."""

    name = "cifar10"
    folder = "cifar-10-batches-py"
    meta_file = "batches.meta"
    names_key = "label_names"
    labels_key = "labels"
    files: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    }


class Cifar100(_CifarPickle):
    """CIFAR-100: ``train`` (50,000) and ``test`` (10,000), fine labels."""

    name = "cifar100"
    folder = "cifar-100-python"
    meta_file = "meta"
    names_key = "fine_label_names"
    labels_key = "fine_labels"
    files: ClassVar[dict[str, tuple[str, ...]]] = {"train": ("train",), "test": ("test",)}
