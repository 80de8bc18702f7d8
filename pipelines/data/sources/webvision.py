"""WebVision 1.0 (full or resized-256 release) read through its file lists.

Train = ``info/train_filelist_google.txt`` + ``info/train_filelist_flickr.txt`` (lines
``<path relative to root> <label>``), val = ``info/val_filelist.txt`` (``<file> <label>``, files
under ``val_images_256/`` or ``val_images/``). Class names come from ``info/synsets.txt``
(line i = label i, the ILSVRC2012 classes in sorted-WNID order). Chunks are line ranges of the
lists (byte ranges found in one pass over each list), so the driver never touches the image
folders and each task reads only its own lines.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipelines.data.sources.base import Chunk, Record, Source, record

LINES_PER_CHUNK = 5000  # lines (images) per chunk
TRAIN_LISTS = ("info/train_filelist_google.txt", "info/train_filelist_flickr.txt")


class WebVision(Source):
    """WebVision 1.0: ``train`` (Google + Flickr, ~2.4M) and ``val`` (50,000).

    Option ``lines_per_chunk`` (default 5,000) sets the images per chunk.
    """

    name = "webvision"
    splits = ("train", "val")

    def classes(self) -> list[str]:
        if not self.store.exists("info", "synsets.txt"):
            raise FileNotFoundError(
                f"{self.store.path('info', 'synsets.txt')} is missing: set dataset.root to the WebVision 1.0 "
                "root, the folder that holds info/ (synsets.txt, train_filelist_*.txt, val_filelist.txt)"
            )
        lines = self.store.read_text("info", "synsets.txt").splitlines()
        return [line.split(maxsplit=1)[0] for line in lines if line.strip()]

    def _lists(self, split: str) -> tuple[str, ...]:
        return TRAIN_LISTS if split == "train" else ("info/val_filelist.txt",)

    def _val_dir(self) -> str:
        return "val_images_256" if self.store.is_dir("val_images_256") else "val_images"

    def chunks(self, split: str) -> list[Chunk]:
        self.check_split(split)
        per_chunk = int(self.options.get("lines_per_chunk") or LINES_PER_CHUNK)
        out = []
        for lst in self._lists(split):
            tag = lst.rsplit("/", 1)[-1].removesuffix(".txt")
            data = self.store.read(lst)
            if data is None:
                raise FileNotFoundError(f"webvision: missing {self.store.path(lst)}")
            # byte ranges of LINES_PER_CHUNK lines each, so a task reads only its own lines
            ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A) + 1
            if len(data) and data[-1:] != b"\n":
                ends = np.append(ends, len(data))
            for i, first in enumerate(range(0, len(ends), per_chunk)):
                begin = 0 if first == 0 else int(ends[first - 1])
                stop = int(ends[min(first + per_chunk, len(ends)) - 1])
                n = min(per_chunk, len(ends) - first)
                out.append(Chunk(split, f"{tag}-{i:05d}", (lst, begin, stop, first + 1), n))
        return out

    def read(self, chunk: Chunk) -> Iterator[Record]:
        lst, begin, stop, first_line = chunk.args
        with self.store.fs.open_input_file(self.store.path(lst)) as f:
            f.seek(begin)
            lines = f.read(stop - begin).decode("utf-8").split("\n")  # as chunks() counts lines
        if lines and not lines[-1]:
            lines.pop()
        prefix = self._val_dir() + "/" if chunk.split == "val" else ""
        for n, line in enumerate(lines, first_line):
            parts = line.removesuffix("\r").rsplit(maxsplit=1)
            if len(parts) < 2:  # a line without "<path> <label>": listed, the next lines still read
                if line.strip():
                    problem = f"list line {n} is not '<path> <label>': {line!r}"
                    yield record(f"{lst}:{n}", None, problem=problem)
                continue
            key = prefix + parts[0]
            yield record(key, parts[1], image=self.store.read(key))

    def class_histogram(self) -> list[int]:
        """Per-class training counts from the two lists alone (no image is opened)."""
        counts = [0] * len(self.classes())
        for lst in TRAIN_LISTS:
            for line in self.store.read_text(lst).splitlines():
                parts = line.rsplit(maxsplit=1)
                if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) < len(counts):
                    counts[int(parts[1])] += 1
        return counts
