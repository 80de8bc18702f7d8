"""STL-10 in the original binary files (``stl10_binary/``).

Images are 3 x 96 x 96 bytes each, channel-planar and column-major inside each channel; labels
are bytes 1..10. ``train+unlabeled`` (105,000 images) is the paper's pretraining set;
unlabelled images get label -1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pipelines.data.sources.base import Chunk, Record, Source, record

IMAGE_BYTES = 3 * 96 * 96
CHUNK_IMAGES = 5000
FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}


def to_hwc(raw: bytes | np.ndarray) -> np.ndarray:
    """STL-10 records to ``[N, 96, 96, 3]`` uint8 (row-major, as the images look)."""
    arr = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes) else raw
    return arr.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)


class Stl10(Source):
    """STL-10: ``train`` (5,000), ``test`` (8,000), ``unlabeled`` (100,000), ``train+unlabeled``."""

    name = "stl10"
    splits = ("train", "test", "unlabeled", "train+unlabeled")

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        if self.store.exists("stl10_binary"):
            self.store = type(self.store)(self.store.fs, self.store.path("stl10_binary"))
        if not self.store.exists("class_names.txt"):
            raise FileNotFoundError(
                f"stl10: no class_names.txt under {root!r}; set dataset.root to stl10_binary/ (or its parent)"
            )

    def classes(self) -> list[str]:
        return [line.strip() for line in self.store.read_text("class_names.txt").splitlines() if line.strip()]

    def chunks(self, split: str) -> list[Chunk]:
        self.check_split(split)
        parts = ("train", "unlabeled") if split == "train+unlabeled" else (split,)
        out = []
        for part in parts:
            images, labels = FILES[part]
            n = self._images_in(images, labels)
            for start in range(0, n, CHUNK_IMAGES):
                stop = min(start + CHUNK_IMAGES, n)
                out.append(Chunk(split, f"{part}-{start:06d}", (images, labels, start, stop), stop - start))
        return out

    def _size(self, name: str) -> int:
        info = self.store.fs.get_file_info(self.store.path(name))
        if info.size is None:
            raise FileNotFoundError(f"stl10: missing {self.store.path(name)}")
        return int(info.size)

    def _images_in(self, images: str, labels: str | None) -> int:
        """Images in ``images``, checked against its size and its labels file's.

        Raises:
            ValueError: for a file cut short (a partial download), naming it and both sizes.
        """
        size = self._size(images)
        n, rest = divmod(size, IMAGE_BYTES)
        again = "download and extract stl10_binary again"
        if rest:
            raise ValueError(
                f"stl10: {self.store.path(images)} is {size:,} bytes, not a whole number of "
                f"{IMAGE_BYTES:,}-byte images (cut short?): {again}"
            )
        if labels is not None and self._size(labels) != n:
            raise ValueError(
                f"stl10: {self.store.path(labels)} holds {self._size(labels):,} labels for the {n:,} "
                f"images of {images}: {again}"
            )
        return n

    def read(self, chunk: Chunk) -> Iterator[Record]:
        images_file, labels_file, start, stop = chunk.args
        with self.store.fs.open_input_file(self.store.path(images_file)) as f:
            f.seek(start * IMAGE_BYTES)
            images = to_hwc(f.read((stop - start) * IMAGE_BYTES))
        if labels_file is None:
            labels = np.full(stop - start, -1)
        else:
            with self.store.fs.open_input_file(self.store.path(labels_file)) as f:
                f.seek(start)
                labels = np.frombuffer(f.read(stop - start), dtype=np.uint8).astype(np.int64) - 1
        classes = len(self.classes()) if labels_file is not None else 0
        for i in range(stop - start):
            key = f"{images_file}/{start + i:06d}"
            if labels_file is not None and not 0 <= labels[i] < classes:  # stored 1..10
                problem = f"{labels_file} byte {start + i}: label {labels[i] + 1} is not in 1..{classes}"
                yield record(key, labels[i], pixels=images[i], problem=problem)
                continue
            yield record(key, labels[i], pixels=images[i])

    def fold_indices(self) -> list[list[int]]:
        """The 10 predefined training folds (0-based indices into ``train``), parsed as ints."""
        return [
            [int(x) for x in line.split()]
            for line in self.store.read_text("fold_indices.txt").splitlines()
            if line.strip()
        ]
