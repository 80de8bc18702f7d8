"""WebVision 1.0 (full or resized-256 release) read through its file lists.

Train = ``info/train_filelist_google.txt`` + ``info/train_filelist_flickr.txt`` (lines
``<path relative to root> <label>``), val = ``info/val_filelist.txt`` (``<file> <label>``, files
under ``val_images_256/`` or ``val_images/``). Class names come from ``info/synsets.txt``
(line i = label i, the ILSVRC2012 classes in sorted-WNID order). Chunks are line ranges of the
lists, so the driver never touches the image folders.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.data.sources.base import Chunk, Record, Source, record

LINES_PER_CHUNK = 5000
TRAIN_LISTS = ("info/train_filelist_google.txt", "info/train_filelist_flickr.txt")


class WebVision(Source):
    """WebVision 1.0: ``train`` (Google + Flickr, ~2.4M) and ``val`` (50,000)."""

    name = "webvision"
    splits = ("train", "val")

    def classes(self) -> list[str]:
        lines = self.store.read_text("info", "synsets.txt").splitlines()
        return [line.split(maxsplit=1)[0] for line in lines if line.strip()]

    def _lists(self, split: str) -> tuple[str, ...]:
        return TRAIN_LISTS if split == "train" else ("info/val_filelist.txt",)

    def _val_dir(self) -> str:
        return "val_images_256" if self.store.is_dir("val_images_256") else "val_images"

    def chunks(self, split: str) -> list[Chunk]:
        self.check_split(split)
        out = []
        for lst in self._lists(split):
            n = sum(1 for line in self.store.read_text(lst).splitlines() if line.strip())
            tag = lst.rsplit("/", 1)[-1].removesuffix(".txt")
            for start in range(0, n, LINES_PER_CHUNK):
                stop = min(start + LINES_PER_CHUNK, n)
                out.append(Chunk(split, f"{tag}-{start:07d}", (lst, start, stop), stop - start))
        return out

    def read(self, chunk: Chunk) -> Iterator[Record]:
        lst, start, stop = chunk.args
        lines = [line for line in self.store.read_text(lst).splitlines() if line.strip()][start:stop]
        prefix = self._val_dir() + "/" if chunk.split == "val" else ""
        for line in lines:
            path, label = line.rsplit(maxsplit=1)
            key = prefix + path
            yield record(key, label, image=self.store.read(key))

    def class_histogram(self) -> list[int]:
        """Per-class training counts from the two lists alone (no image is opened)."""
        counts = [0] * len(self.classes())
        for lst in TRAIN_LISTS:
            for line in self.store.read_text(lst).splitlines():
                if line.strip():
                    counts[int(line.rsplit(maxsplit=1)[1])] += 1
        return counts
