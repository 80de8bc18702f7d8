"""Shards of encoded images: Parquet (``image``/``label``/``key`` columns) or WebDataset tars.

``shards`` reads what ``prepare`` writes: ``manifest.json`` plus the shard files, from a local
folder or a filesystem URI. ``cifar10_jpeg`` reads a folder of CIFAR-10 JPEG Parquet shards
(``train-*.parquet``, ``test-*.parquet``, ``classes.txt``; ``data/cifar10-sample`` is one).
Without a manifest, ``<split>-*.parquet`` or ``<split>-*.tar`` files and ``classes.txt`` are used.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.data.decode import UNLABELED, UNLABELED_SPLITS
from pipelines.data.sources.base import Chunk, Record, Source, record

MANIFEST = "manifest.json"
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "image")


def read_manifest(source: Source) -> dict[str, Any] | None:
    """The parsed ``manifest.json`` under the source's root, or ``None``."""
    data = source.store.read(MANIFEST)
    return None if data is None else json.loads(data)


class Shards(Source):
    """Parquet or WebDataset shards with (or without) a manifest."""

    name = "shards"

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        if not self.store.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset.root {root!r} is not a folder")
        self.manifest = read_manifest(self)
        if self.manifest is not None:
            self.splits = tuple(self.manifest["splits"])
        else:
            names = [i.base_name for i in self.store.listdir() if i.type == pafs.FileType.File]
            found = sorted(
                {n.split("-", 1)[0] for n in names if n.endswith((".parquet", ".tar")) and "-" in n}
            )
            if not found:
                raise FileNotFoundError(
                    f"{self.name}: no {MANIFEST} and no <split>-*.parquet/.tar under {root!r}; raw "
                    "images or a raw dataset are written into shards first: python pipelines/prepare.py "
                    "dataset=<its format, e.g. imagefolder> dataset.root=<raw folder> out=<shards folder>"
                )
            self.splits = tuple(found)

    def classes(self) -> list[str]:
        if self.manifest is not None:
            return list(self.manifest["classes"])
        if not self.store.exists("classes.txt"):
            raise FileNotFoundError(
                f"{self.name}: {self.root} has no {MANIFEST} and no classes.txt: shards without a manifest "
                "need classes.txt beside them, one class name a line (label i is line i + 1)"
            )
        return [c.strip() for c in self.store.read_text("classes.txt").splitlines() if c.strip()]

    def chunks(self, split: str) -> list[Chunk]:
        self.check_split(split)
        if self.manifest is not None:
            shards = self.manifest["splits"][split]["shards"]
            return [Chunk(split, s["file"].replace("/", "_"), (s["file"],), s.get("rows")) for s in shards]
        files = [
            i.base_name
            for i in self.store.listdir()
            if i.base_name.startswith(f"{split}-") and i.base_name.endswith((".parquet", ".tar"))
        ]
        return [Chunk(split, f, (f,)) for f in files]

    def read(self, chunk: Chunk) -> Iterator[Record]:
        (file,) = chunk.args
        if file.endswith(".parquet"):
            yield from read_parquet_shard(self.store.fs, self.store.path(file), file)
        else:
            unlabeled = chunk.split in UNLABELED_SPLITS
            yield from read_webdataset_shard(self.store.fs, self.store.path(file), file, unlabeled)


def key_column(names: list[str]) -> str | None:
    """The column that names a Parquet shard's rows: ``key``, else ``source_path``, else none."""
    return "key" if "key" in names else "source_path" if "source_path" in names else None


def read_parquet_shard(fs: pafs.FileSystem, path: str, name: str) -> Iterator[Record]:
    """Records of a Parquet shard; keys come from ``key`` or ``source_path``, else the row."""
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        cols = pf.schema_arrow.names
        key_col = key_column(cols)
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=[c for c in ("image", "label", key_col) if c]):
            data = batch.to_pydict()
            for i, (image, label) in enumerate(zip(data["image"], data["label"], strict=True)):
                key = data[key_col][i] if key_col else f"{name}#{row + i}"
                yield record(key, label, image=image)
            row += batch.num_rows


def read_webdataset_shard(
    fs: pafs.FileSystem, path: str, name: str, unlabeled: bool = False
) -> Iterator[Record]:
    """Records of a WebDataset tar: members grouped by key (name up to the first dot).

    A sample without a ``.cls`` member is unlabelled where ``unlabeled`` allows it, else listed
    as bad. A tar that ends early raises (after the samples read whole), naming how many.
    """
    key, fields, count = None, {}, 0
    opener, whole = _tar_kind(fs, path)
    try:
        with fs.open_input_stream(path, compression=None) as raw:
            stream = opener(raw) if opener else raw  # a decompressor raises on a stream cut short
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    folder, _, base = m.name.rpartition("/")
                    stem, _, field = base.partition(".")
                    k = f"{folder}/{stem}" if folder else stem
                    if key is not None and k != key:
                        yield _sample(name, key, fields, unlabeled)
                        fields, count = {}, count + 1
                    key = k
                    fields[field.lower()] = tf.extractfile(m).read()
    except (
        tarfile.TarError,
        EOFError,
        OSError,
        zlib.error,
        lzma.LZMAError,
    ) as err:  # partial sample: not kept
        raise OSError(f"the tar ends early or is corrupt after {count} whole sample(s): {err}") from err
    if key is not None and not whole:  # cut at a member boundary: the last sample may be partial
        raise OSError(f"the tar lacks its end-of-archive blocks (cut short?) after {count} whole sample(s)")
    if key is not None:
        yield _sample(name, key, fields, unlabeled)


DECOMPRESSORS: dict[bytes, Any] = {  # by magic bytes: a WebDataset tar may be compressed under any name
    b"\x1f\x8b": lambda f: gzip.GzipFile(fileobj=f),
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ": lzma.LZMAFile,
}


def _tar_kind(fs: pafs.FileSystem, path: str) -> tuple[Any, bool]:
    """The decompressor a tar needs (by its magic bytes; ``None``: plain) and whether it looks whole.

    A plain tar is whole when it ends with the two zero blocks every tar writer closes it with; a
    compressed one is taken as whole here, as its decompressor raises on a stream cut short.
    """
    with fs.open_input_file(path) as f:
        magic = f.read(6)
        opener = next((o for m, o in DECOMPRESSORS.items() if magic.startswith(m)), None)
        if opener is not None:
            return opener, True
        size = f.size()
        if size < 1024:
            return None, False
        f.seek(size - 1024)
        return None, f.read(1024) == bytes(1024)


def _sample(shard: str, key: str, fields: dict[str, bytes], unlabeled: bool) -> Record:
    image = next((fields[f] for f in IMAGE_FIELDS if f in fields), None)
    if "cls" not in fields:
        problem = None if unlabeled else "no .cls member (the label) in this sample"
        return record(f"{shard}/{key}", UNLABELED, image=image, problem=problem)
    label = fields["cls"].decode("ascii", "replace").strip()
    return record(f"{shard}/{key}", label, image=image)


class Cifar10Jpeg(Shards):
    """The CIFAR-10 JPEG Parquet shards (``train`` 50,000, ``test`` 10,000)."""

    name = "cifar10_jpeg"
