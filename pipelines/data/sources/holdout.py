"""Dividing one split of a source in two: a held-out split for judging, the rest for training.

A flat image folder has the single split ``all``; an ImageNet-22K tar has only ``train``. Judging
a run on the images it trained on measures memory, not representations, so ``prepare`` can hold
out a share of such a split (``holdout.*`` in ``configs/prepare.yaml``). Each image goes to the
held-out split when a seeded hash of its key falls below ``fraction``: the choice needs no list of
the split, is the same on every re-run and every machine, and takes about ``fraction`` of every
class (each image independently, so a class of n images gives about n * fraction, at random).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.core.errors import settings_from
from pipelines.data.sources.base import Chunk, Record, Source

TRAIN = "train"


@dataclass(frozen=True)
class HoldOutSettings:
    """The ``holdout`` group of ``configs/prepare.yaml``.

    Attributes:
        fraction: the share of ``split`` held out; 0 holds out nothing.
        split: the split to divide; ``None``: the source's only split.
        to: the held-out split's name (the rest of ``split`` becomes ``train``).
        seed: the hash's seed: another seed holds out other images.
    """

    fraction: float = 0.0
    split: str | None = None
    to: str = "val"
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> HoldOutSettings:
        """Settings from the ``holdout`` config group.

        Raises:
            ValueError: naming an unknown key or a value out of range.
        """
        settings = settings_from(cls, cfg, "holdout")
        if not 0.0 <= float(settings.fraction) < 1.0:
            raise ValueError(f"holdout.fraction={settings.fraction} must be in [0, 1), e.g. 0.02")
        if not str(settings.to) or str(settings.to) == TRAIN or "/" in str(settings.to):
            raise ValueError(f"holdout.to={settings.to!r}: name the held-out split, e.g. val or test")
        return settings

    @property
    def enabled(self) -> bool:
        """Whether anything is held out."""
        return float(self.fraction) > 0.0


def held_out(key: str, fraction: float, seed: int) -> bool:
    """Whether the image ``key`` falls in the held-out share (a seeded 64-bit hash below ``fraction``)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=str(int(seed)).encode()).digest()
    return int.from_bytes(digest, "big") < float(fraction) * 2**64


class HoldOut(Source):
    """``base`` with its split ``settings.split`` replaced by ``train`` and ``settings.to``.

    Both new splits go through the divided split's chunks and keep their own share of the records:
    a folder source skips the other share's files; a tar or file-list source reads them and drops
    them (decoding happens later, once per kept image).
    """

    def __init__(self, base: Source, settings: HoldOutSettings) -> None:
        """Wrap ``base``.

        Raises:
            ValueError: when the split to divide is missing or not given where the source has
                several, or the new split names clash with the source's other splits.
        """
        split = settings.split
        if split is None:
            if len(base.splits) != 1:
                raise ValueError(
                    f"holdout.split is not set and dataset {base.name!r} at {base.root} has the splits "
                    f"{', '.join(base.splits)}: set holdout.split=<the one to divide>"
                )
            split = base.splits[0]
        base.check_split(split, key="holdout.split")
        if settings.to == split:
            raise ValueError(
                f"holdout.to={settings.to}: the held-out images would keep the name of the split they "
                f"are taken from ({split}, which becomes {TRAIN} and the held-out split): name it e.g. "
                "holdout.to=val"
            )
        others = [s for s in base.splits if s != split]
        clash = sorted({TRAIN, settings.to} & set(others))
        if clash:
            raise ValueError(
                f"holdout.split={split} would write the splits {TRAIN} and {settings.to}, but dataset "
                f"{base.name!r} at {base.root} already has {', '.join(clash)}: divide that split "
                f"instead, or choose another holdout.to"
            )
        self.base, self.divided, self.settings = base, split, settings
        self.name, self.root, self.store, self.options = base.name, base.root, base.store, base.options
        at = base.splits.index(split)
        self.splits = (*base.splits[:at], TRAIN, settings.to, *base.splits[at + 1 :])

    def classes(self) -> list[str]:
        return self.base.classes()

    def unread_entries(self) -> list[str]:
        return self.base.unread_entries()

    def chunks(self, split: str) -> list[Chunk]:
        self.check_split(split)
        if split not in (TRAIN, self.settings.to):
            return self.base.chunks(split)
        share = self.settings.fraction if split == self.settings.to else 1.0 - self.settings.fraction
        return [
            Chunk(split, c.name, (c,), None if c.size is None else max(1, round(c.size * share)))
            for c in self.base.chunks(self.divided)
        ]

    def read(self, chunk: Chunk) -> Iterator[Record]:
        if chunk.split not in (TRAIN, self.settings.to):
            yield from self.base.read(chunk)
            return
        want = chunk.split == self.settings.to
        fraction, seed = self.settings.fraction, self.settings.seed
        yield from self.base.read_selected(chunk.args[0], lambda key: held_out(key, fraction, seed) == want)
