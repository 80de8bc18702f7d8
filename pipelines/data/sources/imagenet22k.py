"""ImageNet-21K/22K (fall11 or winter21): a tar of per-synset tars, or one folder per synset.

``dataset.root`` is either the outer tar (``winter21_whole.tar``; ``.tar.gz`` works but is read
in one sequential pass) or the extracted folder of ``<wnid>.tar`` files or ``<wnid>/`` folders.
Every synset (inner tar or folder) is one chunk; labels are positions in the sorted WNID list.

``dataset.variant``: ``full`` (all images) or the ImageNet-21K-P split rule of Ridnik et al.:
classes with at most 500 images are dropped, the first 50 files of each remaining class (in
name order) form ``val`` and the rest ``train``; labels then index the kept classes. Finding
the kept classes reads every inner tar's member list (no image data).
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from pipelines.core.storage import join_location
from pipelines.data.sources.base import Chunk, Record, Source, record
from pipelines.data.sources.folders import is_image_name

SMALL_CLASS_MAX = 500
VAL_PER_CLASS = 50
VARIANTS = ("full", "21k_p")
WNID = re.compile(r"n\d{8}")


class Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes at ``offset`` of a seekable file."""

    def __init__(self, f: Any, offset: int, size: int) -> None:
        super().__init__()
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(base + pos, self.size))
        return self.pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


TAR_ERRORS = (tarfile.TarError, EOFError, OSError)


def _listed_members(tf: tarfile.TarFile, fileobj: Any) -> tuple[list[tarfile.TarInfo], Exception | None]:
    """The members of a seekable tar up to where it can be read, and why it ends early (or ``None``).

    ``tarfile`` ends the listing without a word at a header cut short, so a tar whose last
    headers were cut off looked complete: past the last member there must be the zero end blocks
    (or nothing, for a writer that leaves them out).
    """
    members: list[tarfile.TarInfo] = []
    try:
        for member in tf:
            members.append(member)
    except TAR_ERRORS as err:
        return members, err
    fileobj.seek(tf.offset)
    tail = fileobj.read(2 * tarfile.BLOCKSIZE)
    if tail.strip(b"\0"):
        return members, tarfile.ReadError(f"cut off inside a header after {len(members)} members (truncated)")
    return members, None


def _count_images(fileobj: Any) -> int:
    """The images a seekable synset tar lists, up to where it can be read."""
    with tarfile.open(fileobj=fileobj, mode="r:") as tf:
        return len(_sorted_members(_listed_members(tf, fileobj)[0]))


def _sorted_members(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    return sorted(
        (m for m in members if m.isfile() and is_image_name(m.name.rsplit("/", 1)[-1])), key=lambda m: m.name
    )


class ImageNet22k(Source):
    """ImageNet-21K/22K; ``train`` (all, or 21K-P train) and, for ``variant=21k_p``, ``val``."""

    name = "imagenet22k"

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        self.variant = str(options.get("variant") or "full")
        if self.variant not in VARIANTS:
            raise ValueError(f"dataset.variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}")
        self.splits = ("train", "val") if self.variant == "21k_p" else ("train",)
        info = self.store.fs.get_file_info(self.store.base)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"imagenet22k: dataset.root {root!r} does not exist")
        self.layout = (
            "folder"
            if info.type == pafs.FileType.Directory
            else ("stream" if self.store.base.endswith((".tar.gz", ".tgz")) else "outer_tar")
        )
        self._synsets: list[tuple[str, tuple[Any, ...]]] | None = None
        self._kept_synsets: list[tuple[str, tuple[Any, ...]]] | None = None

    # ------------------------------------------------------------------ listing synsets
    def synsets(self) -> list[tuple[str, tuple[Any, ...]]]:
        """``(wnid, where)`` for every synset, sorted by WNID.

        Raises:
            ValueError: for a root that holds no synsets, an outer tar given by its folder, or an
                outer tar that cannot be read to its end (truncated or corrupt), naming the file.
        """
        if self._synsets is None:
            try:
                found = sorted(self._list_synsets())
            except TAR_ERRORS as err:
                raise ValueError(
                    f"imagenet22k: dataset.root {self.root} cannot be read as a tar to its end "
                    f"({type(err).__name__}: {err}); it is truncated or corrupt: download it again"
                ) from err
            if self.layout == "folder":
                self._check_folder(found)
            self._synsets = found
        return self._synsets

    def _check_folder(self, found: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Refuse a folder that holds the outer tar itself, or nothing of ImageNet-22K."""
        for wnid, where in found:  # a synset tar is named by its WNID; an outer tar is not
            if where[0] == "tar" and not WNID.fullmatch(wnid) and self._is_outer_tar(where[1]):
                raise ValueError(
                    f"imagenet22k: {self.root} holds {where[1]}, a tar of per-synset tars: set "
                    f"dataset.root={join_location(self.root, where[1])}"
                )
        if not found:
            packed = [i.base_name for i in self.store.listdir() if i.base_name.endswith((".tar.gz", ".tgz"))]
            fix = "dataset.root to the outer tar"
            if packed:
                fix = f"dataset.root={join_location(self.root, packed[0])}"
            raise ValueError(
                f"imagenet22k: no <wnid>.tar files or <wnid>/ folders in {self.root}: set {fix} "
                "(winter21_whole.tar) or the folder it was extracted into"
            )

    def _is_outer_tar(self, name: str) -> bool:
        """Whether the tar ``name`` in the root folder holds tars (the outer tar), from its first member."""
        try:
            with (
                self.store.fs.open_input_file(self.store.path(name)) as f,
                tarfile.open(fileobj=f, mode="r:") as tf,
            ):
                first = tf.next()
        except TAR_ERRORS as err:
            raise ValueError(
                f"imagenet22k: {join_location(self.root, name)} cannot be read as a tar ({err}): "
                "it is truncated or corrupt: download it again"
            ) from err
        return first is not None and first.name.endswith(".tar")

    def _list_synsets(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        if self.layout == "folder":
            for info in self.store.listdir():
                name = info.base_name
                if name.startswith(".") or name == "lost+found":
                    continue
                if info.type == pafs.FileType.Directory:
                    yield name, ("dir", name)
                elif name.endswith(".tar"):
                    yield name[: -len(".tar")], ("tar", name)
        elif self.layout == "outer_tar":
            with (
                self.store.fs.open_input_file(self.store.base) as f,
                tarfile.open(fileobj=f, mode="r:") as tf,
            ):
                for m in tf:
                    if m.isfile() and m.name.endswith(".tar"):
                        wnid = m.name.rsplit("/", 1)[-1][: -len(".tar")]
                        yield wnid, ("member", m.offset_data, m.size)
        else:
            with (
                self.store.fs.open_input_stream(self.store.base, compression=None) as f,
                tarfile.open(fileobj=f, mode="r|gz") as tf,
            ):
                for m in tf:
                    if m.isfile() and m.name.endswith(".tar"):
                        yield m.name.rsplit("/", 1)[-1][: -len(".tar")], ("stream", m.name)

    def _members(self, where: tuple[Any, ...]) -> Iterator[tuple[str, bytes | None]]:
        """``(file name, bytes)`` of one synset's images, in name order."""
        kind = where[0]
        if kind == "dir":
            for info in self.store.listdir(where[1]):
                if info.type == pafs.FileType.File and is_image_name(info.base_name):
                    yield info.base_name, self.store.read(where[1], info.base_name)
            return
        if kind == "stream":  # a .tar.gz outer tar: one sequential pass to the member
            with (
                self.store.fs.open_input_stream(self.store.base, compression=None) as f,
                tarfile.open(fileobj=f, mode="r|gz") as tf,
            ):
                for m in tf:
                    if m.name == where[1]:
                        yield from self._inner(io.BytesIO(tf.extractfile(m).read()))
                        return
            return
        if kind == "tar":
            with self.store.fs.open_input_file(self.store.path(where[1])) as f:
                yield from self._inner(f)
            return
        _, offset, size = where
        with self.store.fs.open_input_file(self.store.base) as f:
            yield from self._inner(io.BufferedReader(Window(f, offset, size)))

    @staticmethod
    def _inner(fileobj: Any) -> Iterator[tuple[str, bytes | None]]:
        """A synset tar's images in name order.

        A truncated tar yields every complete image, then raises why it ended (the reader keeps
        the images and reports the tar as unreadable).
        """
        with tarfile.open(fileobj=fileobj, mode="r:") as tf:
            members, problem = _listed_members(tf, fileobj)
            for m in _sorted_members(members):
                try:
                    file = tf.extractfile(m)
                    data = None if file is None else file.read()
                except TAR_ERRORS as err:  # this member's data is cut short
                    problem = problem or err
                    continue
                yield m.name.rsplit("/", 1)[-1], data
            if problem is not None:
                raise problem

    def _count(self, where: tuple[Any, ...]) -> int:
        """A synset's images, from its tar's member list (no image read); a cut tar counts what it holds."""
        kind = where[0]
        if kind == "dir":
            return sum(1 for i in self.store.listdir(where[1]) if is_image_name(i.base_name))
        if kind == "stream":  # a .tar.gz outer tar: one sequential pass to the member
            with (
                self.store.fs.open_input_stream(self.store.base, compression=None) as f,
                tarfile.open(fileobj=f, mode="r|gz") as tf,
            ):
                member = next((m for m in tf if m.name == where[1]), None)
                return 0 if member is None else _count_images(io.BytesIO(tf.extractfile(member).read()))
        if kind == "tar":
            with self.store.fs.open_input_file(self.store.path(where[1])) as f:
                return _count_images(f)
        with self.store.fs.open_input_file(self.store.base) as f:
            return _count_images(io.BufferedReader(Window(f, where[1], where[2])))

    # ------------------------------------------------------------------ Source API
    def _kept(self) -> list[tuple[str, tuple[Any, ...]]]:
        if self.variant == "full":
            return self.synsets()
        if self._kept_synsets is None:  # reads every inner tar's member list: once
            self._kept_synsets = [
                (w, where) for w, where in self.synsets() if self._count(where) > SMALL_CLASS_MAX
            ]
        return self._kept_synsets

    def classes(self) -> list[str]:
        return [w for w, _ in self._kept()]

    def chunks(self, split: str) -> list[Chunk]:
        self.check_split(split)
        return [Chunk(split, wnid, (wnid, where, label)) for label, (wnid, where) in enumerate(self._kept())]

    def read(self, chunk: Chunk) -> Iterator[Record]:
        wnid, where, label = chunk.args
        for i, (name, data) in enumerate(self._members(where)):
            if self.variant == "21k_p" and (i < VAL_PER_CLASS) != (chunk.split == "val"):
                continue
            yield record(f"{wnid}/{name}", label, image=data)
