"""Class-per-folder trees: ``imagefolder``, ``imagenet1k`` (ILSVRC2012) and ``imagenet100``.

Labels are the positions of the class folder names in sorted order (torchvision's ImageFolder
convention; for ImageNet the sorted-WNID index 0 = n01440764 ... 999 = n15075141). Each class
folder is one chunk, listed inside its Ray task, so the driver never lists the images.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import pyarrow.fs as pafs

from pipelines.core.storage import Store, is_uri
from pipelines.data.sources.base import Chunk, Record, Source, record

# torchvision's IMG_EXTENSIONS and five more Pillow reads (JPEG's .jfif and .jpe are common in
# web crawls); not imported from torchvision because the data plan is unpickled in Ray's own
# processes, where torchvision would cost ~1.5 CPU-s.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".jpe",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
VAL_CHUNK = 5000
FLAT_VAL = "__flat_val__"  # marks chunks of a flat ILSVRC2012 val folder
VAL_TRUTH = "ILSVRC2012_validation_ground_truth.txt"  # the devkit's labels of the flat val images

IMAGENET100_FILE = "imagenet100_classes.txt"  # CMC's ImageNet-100 subset, one WNID per line


def imagenet100_wnids() -> tuple[str, ...]:
    """The 100 WNIDs of CMC's ImageNet-100 subset (the list the official CACR code trains on)."""
    text = resources.files("pipelines.data.sources").joinpath(IMAGENET100_FILE).read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (case-insensitive; content is checked later)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def file_extension(name: str) -> str:
    """A file name's extension in lower case (``"(none)"`` without one)."""
    stem, dot, ext = name.rpartition(".")
    return f".{ext.lower()}" if dot and stem else "(none)"


class ImageFolder(Source):
    """Any ``<root>/<class>/<image>`` tree.

    With ``train/``, ``val/`` or ``test/`` folders under the root those are the splits, otherwise
    the root itself is the single split ``all``. Images in sub-folders of a class folder belong to
    that class (torchvision's ImageFolder reads them too); hidden files and folders are left out.
    """

    name = "imagefolder"
    split_dirs = ("train", "val", "test")

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        if not self.store.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset.root {root!r} is not a folder")
        present = tuple(s for s in self.split_dirs if self.store.is_dir(s))
        self.splits = present or ("all",)

    def _split_dir(self, split: str) -> str:
        return "" if split == "all" else split

    def unread_entries(self) -> list[str]:
        """Folders (``name/``) and image files beside the split folders: not read.

        For example a class folder, or photos, put next to ``train/``.
        """
        if self.splits == ("all",):
            return []
        out = []
        for i in self.store.listdir(""):
            if i.base_name.startswith("."):
                continue
            if i.type == pafs.FileType.Directory and i.base_name not in (
                *self.split_dirs,
                *self._own_folders(),
            ):
                out.append(f"{i.base_name}/")
            elif i.type == pafs.FileType.File and is_image_name(i.base_name):
                out.append(i.base_name)
        return sorted(out)

    def _own_folders(self) -> tuple[str, ...]:
        """Folders under the root the source reads for other purposes (ImageNet's devkit)."""
        return ()

    def _class_dirs(self, split: str) -> list[str]:
        return [
            i.base_name
            for i in self.store.listdir(self._split_dir(split))
            if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")
        ]

    def _required_class_dirs(self, split: str) -> list[str]:
        """The class folders of ``split``; none is an error (images there would prepare to nothing)."""
        dirs = self._class_dirs(split)
        if not dirs:
            folder = self._split_dir(split)
            images = sum(
                1
                for i in self.store.listdir(folder)
                if i.type == pafs.FileType.File and is_image_name(i.base_name)
            )
            where = "/".join(p for p in (self.root.rstrip("/"), folder) if p)
            found = f"{images} image files directly in it" if images else "nothing in it"
            raise ValueError(
                f"{self.name}: no class folders in {where} ({found}); the layout is "
                "<root>/<class>/<image> or <root>/<split>/<class>/<image> (splits train, val, test): "
                "put each class's images in a folder named after the class"
            )
        return dirs

    def classes(self) -> list[str]:
        return self._required_class_dirs(self.splits[0])

    def chunks(self, split: str) -> list[Chunk]:
        self.check_split(split)
        index = {c: i for i, c in enumerate(self.classes())}
        out = []
        for cls in self._required_class_dirs(split):
            if cls not in index:
                raise ValueError(
                    f"{self.name}: class folder {split}/{cls} is not a class of the {self.splits[0]} split"
                )
            out.append(Chunk(split, cls, (self._split_dir(split), cls, index[cls])))
        return out

    def read(self, chunk: Chunk) -> Iterator[Record]:
        return self.read_selected(chunk, lambda key: True)

    def read_selected(self, chunk: Chunk, keep: Callable[[str], bool]) -> Iterator[Record]:
        folder, cls, label = chunk.args
        sub = [p for p in (folder, cls) if p]
        for relative, info in self.store.walk_files(*sub):  # sub-folders too, as torchvision's ImageFolder
            if info.base_name.startswith("."):
                continue
            key = "/".join([*sub, relative])
            if not keep(key):  # the key is known before the file is read
                continue
            if is_image_name(info.base_name):
                yield record(key, label, image=self.store.read(key))
            else:  # counted, so that images under an unlisted extension do not vanish unseen
                yield record(key, label, skipped=file_extension(info.base_name))


class ImageNet1k(ImageFolder):
    """ILSVRC2012: ``train/<wnid>/`` and either ``val/<wnid>/`` or a flat ``val/``.

    The flat ``val/ILSVRC2012_val_XXXXXXXX.JPEG`` files are labelled by the devkit
    (``data/ILSVRC2012_validation_ground_truth.txt`` + ``data/meta.mat``, mapped ID -> WNID ->
    sorted index; ``dataset.devkit`` names the devkit folder, default
    ``<root>/ILSVRC2012_devkit_t12``).
    """

    name = "imagenet1k"
    split_dirs = ("train", "val")
    wnids: tuple[str, ...] | None = None

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        if "train" not in self.splits:
            raise FileNotFoundError(
                f"{self.name}: no train/ folder in {root}; set dataset.root to the ILSVRC2012 root, the "
                "folder that holds train/<wnid>/ and val/"
            )

    def classes(self) -> list[str]:
        present = self._class_dirs("train")
        if self.wnids is None:
            return present
        missing = sorted(set(self.wnids) - set(present))
        if missing:
            raise FileNotFoundError(
                f"{self.name}: {len(missing)} class folders missing under train/, e.g. {missing[:3]}"
            )
        return sorted(self.wnids)

    def _class_dirs(self, split: str) -> list[str]:
        dirs = super()._class_dirs(split)
        return dirs if self.wnids is None else [d for d in dirs if d in set(self.wnids)]

    def chunks(self, split: str) -> list[Chunk]:
        self.check_split(split)
        if split == "val" and not super()._class_dirs("val"):
            return self._flat_val_chunks()
        return super().chunks(split)

    def _flat_val_chunks(self) -> list[Chunk]:
        truth = self._val_wnids()
        self._check_flat_val(truth)
        return [
            Chunk(
                "val",
                f"val-{s:05d}",
                (FLAT_VAL, s, min(s + VAL_CHUNK, len(truth))),
                min(VAL_CHUNK, len(truth) - s),
            )
            for s in range(0, len(truth), VAL_CHUNK)
        ]

    def _own_folders(self) -> tuple[str, ...]:
        return (self._devkit_option().rstrip("/"),)

    def _devkit_option(self) -> str:
        return str(self.options.get("devkit") or "ILSVRC2012_devkit_t12")

    def _devkit(self) -> Store:
        devkit = self._devkit_option()
        if is_uri(devkit) or os.path.isabs(devkit):
            return Store.open(devkit)
        return Store(self.store.fs, self.store.path(devkit))

    def _val_wnids(self) -> list[str]:
        """WNID of every flat val image, in file-number order.

        Raises:
            ValueError: for a ground-truth line that is not an ID of ``meta.mat``, or an empty file.
        """
        base = self._devkit()
        where = f"{base.base}/data/{VAL_TRUTH}"
        try:
            text = base.read_text("data", VAL_TRUTH)
            id_to_wnid = read_meta_mat(base.read("data", "meta.mat"))
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{self.name}: the flat val/ images are labelled by the ILSVRC2012 devkit, and {err}: "
                "extract ILSVRC2012_devkit_t12 into dataset.root, or set dataset.options.devkit=<its folder>"
            ) from err
        lines = [(n, t.strip()) for n, t in enumerate(text.splitlines(), 1)]
        lines = [(n, t) for n, t in lines if t]
        if not lines:
            raise ValueError(f"{self.name}: {where} is empty: it labels the flat val/ images, one ID a line")
        wnids = []
        for n, text in lines:
            wnid = id_to_wnid.get(int(text)) if text.isdigit() else None
            if wnid is None:
                raise ValueError(
                    f"{self.name}: {where} line {n}: {text!r} is not an ILSVRC2012_ID of data/meta.mat: "
                    "use the devkit that belongs to these images"
                )
            wnids.append(wnid)
        return wnids

    def _check_flat_val(self, truth: list[str]) -> None:
        """Refuse a devkit that labels fewer images than ``val/`` holds, or classes that have no folder."""
        files = sum(1 for i in self.store.listdir("val") if i.base_name.startswith("ILSVRC2012_val_"))
        where = f"{self._devkit().base}/data/{VAL_TRUTH}"
        if files > len(truth):
            raise ValueError(
                f"{self.name}: {self.root}/val holds {files:,} ILSVRC2012_val_* images but {where} labels "
                f"{len(truth):,}: the rest would be left out; use the devkit that belongs to these images"
            )
        if self.wnids is None:  # ImageNet-100 keeps its own classes and leaves the others out
            unknown = sorted(set(truth) - set(self.classes()))
            if unknown:
                raise ValueError(
                    f"{self.name}: {where} labels val images with {len(unknown)} class(es) that have no "
                    f"folder under train/, e.g. {unknown[:3]}: the devkit's meta.mat or the train tree "
                    "is not the one for these images"
                )

    def read_selected(self, chunk: Chunk, keep: Callable[[str], bool]) -> Iterator[Record]:
        if chunk.args[0] != FLAT_VAL:
            yield from super().read_selected(chunk, keep)
            return
        _, start, stop = chunk.args
        index = {c: i for i, c in enumerate(self.classes())}
        wnids = self._val_wnids()
        for n in range(start, stop):
            if wnids[n] not in index:  # ImageNet-100: other classes' images
                continue
            key = f"val/ILSVRC2012_val_{n + 1:08d}.JPEG"
            if keep(key):
                yield record(key, index[wnids[n]], image=self.store.read(key))


def read_meta_mat(data: bytes | None) -> dict[int, str]:
    """``ILSVRC2012_ID -> WNID`` from the devkit's ``meta.mat``."""
    if data is None:
        raise FileNotFoundError("the devkit's data/meta.mat is missing")
    from scipy.io import loadmat

    synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}


class ImageNet100(ImageNet1k):
    """The CMC ImageNet-100 subset of an ILSVRC2012 tree (labels: sorted subset WNIDs)."""

    name = "imagenet100"
    wnids = imagenet100_wnids()
