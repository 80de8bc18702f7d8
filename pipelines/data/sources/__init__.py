"""The dataset sources, one registry: ``dataset=<name>`` selects a class here."""

from __future__ import annotations

from typing import Any

from pipelines.data.sources.base import Chunk, Record, Source, record
from pipelines.data.sources.cifar import Cifar10, Cifar100
from pipelines.data.sources.folders import ImageFolder, ImageNet1k, ImageNet100
from pipelines.data.sources.imagenet22k import ImageNet22k
from pipelines.data.sources.shards import Cifar10Jpeg, Shards
from pipelines.data.sources.stl10 import Stl10
from pipelines.data.sources.webvision import WebVision

SOURCES: dict[str, type[Source]] = {
    cls.name: cls
    for cls in (
        Cifar10,
        Cifar100,
        Stl10,
        Cifar10Jpeg,
        ImageFolder,
        ImageNet1k,
        ImageNet100,
        WebVision,
        ImageNet22k,
        Shards,
    )
}


def open_source(name: str, root: str, **options: Any) -> Source:
    """Open dataset ``name`` at ``root``.

    Raises:
        ValueError: for an unknown name (listing the known ones).
        FileNotFoundError: when the root does not hold that dataset's files.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(SOURCES))}")
    if not root:
        raise ValueError(f"dataset.root is not set; point it at the {name} files")
    return SOURCES[name](str(root), **options)


__all__ = ["SOURCES", "Chunk", "Record", "Source", "open_source", "record"]
